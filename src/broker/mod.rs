//! A broker node: wiring of storage, Raft and the gRPC services.
//!
//! * [`node`] starts a node: log store, state machine, openraft, one gRPC port.
//! * [`ops`] implements the requests: writes go through Raft on the leader (a follower
//!   forwards them), reads come from the applied state of the node asked. Concurrent
//!   writes on the leader share Raft entries: produce requests through [`batcher`],
//!   internal commands (deliveries, acks, ...) through [`command_batcher`].
//! * [`admin`] is the `raftmq.admin.Admin` gRPC service over [`ops`]; [`acl_ops`] are its
//!   user and policy commands.
//! * [`auth`] checks requests against the replicated users and policies (ACL).
//! * [`http`] is the optional HTTP port: health, readiness, Raft status, Prometheus metrics.
//! * [`leave`] is the graceful stop (SIGTERM): leadership transfer, deregistration, drain.

pub mod acl_ops;
pub mod admin;
pub mod auth;
pub mod batcher;
pub mod command_batcher;
pub mod error;
mod group_commit;
pub mod http;
pub mod leave;
pub mod messaging;
pub mod node;
pub mod ops;
pub mod pending_ops;
pub mod register;
pub mod sessions;

pub use error::BrokerError;
pub use node::{Node, NodeConfig};

/// Largest gRPC message a broker accepts or sends (above the largest message body).
pub const MAX_GRPC_MESSAGE: usize = 80 << 20;
