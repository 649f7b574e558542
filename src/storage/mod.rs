//! Storage: the CommitLog (the Raft log itself), its index, ConsumeQueues and the key index.
//!
//! This layer knows nothing of gRPC or of Raft RPCs. It stores records (see [`record`] for the
//! byte layout), hands them back as zero-copy `Bytes` views of mapped segments, and keeps the
//! derived per-queue structures that consumers read.
//!
//! ```text
//! <data-dir>/
//!   commitlog/<20-digit first byte offset>   fixed-size segments, mmap'd, records never straddle
//!   index/<20-digit first raft index>.idx    32-byte slot per Raft index: position, length, term
//!   consumequeue/<topic>/<queue>/...          fixed-width units (see consumequeue)
//!   keyindex/...                              message id / key -> position (see keyindex)
//! ```

pub mod commitlog;
pub mod consumequeue;
pub mod dispatch;
pub mod error;
pub mod fsutil;
pub mod index;
pub mod keyindex;
pub mod message;
pub mod record;
pub mod segment;

pub use commitlog::{CommitLog, CommitLogConfig, FlushMode};
pub use error::{Result, StoreError};
pub use record::{Record, RecordId, RecordKind};
