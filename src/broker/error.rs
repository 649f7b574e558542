//! Broker errors and their one mapping onto gRPC status codes.

use tonic::{Code, Status};

use crate::acl::AclError;
use crate::storage::StoreError;

/// Everything a broker request can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The request is malformed (bad name, empty batch, oversize body, ...).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A delay message asks for a delivery time beyond the configured maximum.
    #[error("illegal delivery time: {0}")]
    IllegalDeliveryTime(String),
    /// EndTransaction names no transaction this broker knows, or one resolved otherwise.
    #[error("transaction: {0}")]
    Transaction(String),
    /// The topic does not exist.
    #[error("topic `{0}` does not exist")]
    TopicNotFound(String),
    /// The topic's permission forbids the operation.
    #[error("topic `{0}` is not {1}")]
    Forbidden(String, &'static str),
    /// No leader is known right now (election in progress): retry.
    #[error("no leader is known for group `{0}` right now; retry")]
    NoLeader(String),
    /// Forwarding to the leader failed.
    #[error("forwarding to leader {leader} at {addr} failed: {reason}")]
    Forward {
        /// Leader node id.
        leader: u64,
        /// Its address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// Raft refused or failed the write.
    #[error("raft: {0}")]
    Raft(String),
    /// The storage layer failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Invalid configuration at start.
    #[error("invalid config: {0}")]
    Config(String),
    /// Authentication, authorization, or bad user/policy input (ACL on).
    #[error(transparent)]
    Acl(#[from] crate::acl::AclError),
    /// Anything internal that should not happen.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Status {
        let code = match &e {
            BrokerError::BadRequest(_)
            | BrokerError::Config(_)
            | BrokerError::IllegalDeliveryTime(_) => Code::InvalidArgument,
            BrokerError::Transaction(_) => Code::FailedPrecondition,
            BrokerError::TopicNotFound(_) => Code::NotFound,
            BrokerError::Forbidden(..) => Code::PermissionDenied,
            BrokerError::NoLeader(_) | BrokerError::Forward { .. } => Code::Unavailable,
            BrokerError::Raft(_) => Code::Unavailable,
            BrokerError::Store(StoreError::Poisoned(_)) => Code::Unavailable,
            BrokerError::Store(_) | BrokerError::Internal(_) => Code::Internal,
            BrokerError::Acl(a) => match a {
                AclError::Unauthenticated(_) => Code::Unauthenticated,
                AclError::Forbidden(_) => Code::PermissionDenied,
                AclError::Invalid(_) => Code::InvalidArgument,
                AclError::Conflict(_) => Code::AlreadyExists,
                AclError::NotFound(_) => Code::NotFound,
            },
        };
        Status::new(code, e.to_string())
    }
}
