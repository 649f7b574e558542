//! Maps transport failures and peer-reported Raft errors onto openraft's error kinds, as
//! described in the [`super`] module docs.

use openraft::BasicNode;
use openraft::errors::{Fatal, NetworkError, RPCError, RemoteError, Timeout, Unreachable};

use super::{RpcError, convert};
use crate::raft::types::{NodeId, TypeConfig};

/// Maps a tonic status to openraft's error kinds (see the module docs).
pub(super) fn status_to_rpc_error(
    status: tonic::Status,
    timeout: impl FnOnce() -> Timeout<TypeConfig>,
) -> RpcError {
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
        tonic::Code::DeadlineExceeded => RPCError::Timeout(timeout()),
        // tonic's client enforces the request's grpc-timeout itself and reports it as
        // CANCELLED caused by `TimeoutExpired`.
        tonic::Code::Cancelled if caused_by_timeout(&status) => RPCError::Timeout(timeout()),
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

fn caused_by_timeout(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// A peer's Raft error, as `Unreachable` (see the module docs for why not `RemoteError`).
pub(super) fn remote_unreachable(
    target: NodeId,
    node: &BasicNode,
    remote: convert::RemoteFatal,
) -> Unreachable<TypeConfig> {
    match remote.fatal {
        Some(fatal) => Unreachable::new(
            &RemoteError::<TypeConfig, Fatal<TypeConfig>>::new_with_node(
                target,
                node.clone(),
                fatal,
            ),
        ),
        None => Unreachable::from_string(format!(
            "raft error on remote peer {target}: {}",
            remote.message
        )),
    }
}

pub(super) fn network_error(e: convert::ConvertError) -> RpcError {
    RPCError::Network(NetworkError::new(&e))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::RPCTypes;

    use super::*;

    #[test]
    fn status_mapping() {
        let timeout = || Timeout {
            action: RPCTypes::Vote,
            id: 1,
            target: 2,
            timeout: Duration::from_millis(1),
        };
        let map = |status| status_to_rpc_error(status, timeout);
        assert!(matches!(
            map(tonic::Status::unavailable("x")),
            RPCError::Unreachable(_)
        ));
        assert!(matches!(
            map(tonic::Status::deadline_exceeded("x")),
            RPCError::Timeout(_)
        ));
        assert!(matches!(
            map(tonic::Status::cancelled("x")),
            RPCError::Network(_)
        ));
        assert!(matches!(
            map(tonic::Status::internal("x")),
            RPCError::Network(_)
        ));
        assert!(matches!(
            map(tonic::Status::invalid_argument("x")),
            RPCError::Network(_)
        ));
        let expired = tonic::Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(expired.code(), tonic::Code::Cancelled);
        assert!(matches!(map(expired), RPCError::Timeout(_)));
    }
}
