//! The Raft layer: openraft's type configuration, the log store over the CommitLog, and
//! (later) the state machine that dispatches committed entries and the network over tonic.
//!
//! openraft is pinned to `=0.10.0-alpha.37`; its API is unstable, so everything that names
//! openraft types lives in this module and the rest of the crate talks to our own types.

pub mod consume;
pub mod dedupe;
pub mod grpc;
pub mod log_store;
pub mod network;
pub mod pending;
pub mod state_machine;
pub mod types;

pub use types::{Command, CommandResponse, NodeId, TypeConfig};
