//! What a node does for each admin request: local Raft writes on the leader, forwarding from
//! followers, and reads of applied state.
//!
//! - `forward`: where a write goes (leader or this node), local proposals, and forwarding of
//!   whole requests to the leader.
//! - `produce`: message appends, broker-made copies and dead-lettering.
//! - `admin_writes`: topic, consumer group and offset writes.
//! - `reads`: node status and reads of applied messages (query, trace, queue).
//! - `cluster`: membership and leadership changes.

mod admin_writes;
mod cluster;
mod forward;
mod produce;
mod reads;

pub use forward::Forwarder;
pub(crate) use forward::{Fwd, Route};
pub use produce::{DELAY_LEVEL_PROPERTY, DELAY_LEVELS_MS};
