//! The server half of raftmq's Raft transport: `raftmq.RaftService` served by a local
//! openraft [`Raft`].
//!
//! [`RaftGrpcService`] decodes each RPC (see `proto/raftmq/raft.proto` and the table in
//! [`super::network`]), hands it to the local Raft and encodes the answer:
//!
//! * `AppendEntries` → [`Raft::append_entries`]; `StreamAppend` → [`Raft::stream_append`]
//!   (pipelined: one response per request, in order; the stream ends after the first
//!   conflict / higher vote / fatal error);
//! * `Vote` / `PreVote` → [`Raft::vote`] / [`Raft::pre_vote`];
//! * `InstallSnapshot` → reassembles the header (vote + JSON metadata) and data chunks into a
//!   [`SnapshotData`] buffer and calls [`Raft::install_full_snapshot`];
//! * `TransferLeader` → [`Raft::handle_transfer_leader`].
//!
//! A Raft error of the local node (openraft `Fatal`: stopped, panicked, storage failure) is
//! returned *inside an OK response* so the caller can tell it from a transport failure. A
//! malformed request is rejected with `INVALID_ARGUMENT`; nothing a peer sends can panic this
//! service. (openraft itself panics on a snapshot that contradicts the vote or committed logs,
//! which a protocol-following peer never sends; the Raft port must only be reachable by the
//! group's own nodes.)
//!
//! Mount it next to the node's other services on its single gRPC port:
//!
//! ```text
//! let raft_svc = RaftGrpcService::new(raft.clone()).into_server();
//! configure_server(tonic::transport::Server::builder())
//!     .add_service(raft_svc)
//!     .add_service(other_svc)
//!     .serve(addr)
//!     .await?;
//! ```

use std::io::Cursor;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::Raft;
use openraft::errors::{Fatal, RaftError};
use openraft::storage::RaftStateMachine;
use tonic::{Request, Response, Status, Streaming};

use super::network::DEFAULT_MAX_MESSAGE_BYTES;
use super::network::convert;
use super::types::{SnapshotData, TypeConfig};
use crate::proto::raftmq as pb;
use pb::raft_service_server::{RaftService, RaftServiceServer};

/// Default cap on a received snapshot (raftmq snapshots hold state, not messages).
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// Largest buffer reserved up front for a snapshot, whatever its header claims.
const MAX_SNAPSHOT_PREALLOC: usize = 64 << 20;

/// `raftmq.RaftService` backed by a local openraft node.
pub struct RaftGrpcService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    raft: Raft<TypeConfig, SM>,
    max_message_bytes: usize,
    max_snapshot_bytes: u64,
}

impl<SM> Clone for RaftGrpcService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    fn clone(&self) -> Self {
        RaftGrpcService {
            raft: self.raft.clone(),
            max_message_bytes: self.max_message_bytes,
            max_snapshot_bytes: self.max_snapshot_bytes,
        }
    }
}

impl<SM> RaftGrpcService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    /// Serves `raft` with the default limits ([`DEFAULT_MAX_MESSAGE_BYTES`],
    /// [`DEFAULT_MAX_SNAPSHOT_BYTES`]).
    pub fn new(raft: Raft<TypeConfig, SM>) -> Self {
        RaftGrpcService {
            raft,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
        }
    }

    /// Sets the largest gRPC message accepted or sent; must be at least the peers'
    /// [`super::network::GrpcNetworkConfig::max_message_bytes`].
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Sets the largest snapshot accepted by `InstallSnapshot`.
    pub fn with_max_snapshot_bytes(mut self, bytes: u64) -> Self {
        self.max_snapshot_bytes = bytes;
        self
    }

    /// The served Raft node.
    pub fn raft(&self) -> &Raft<TypeConfig, SM> {
        &self.raft
    }

    /// The tonic service to add to a `tonic::transport::Server`, with message size limits
    /// raised to [`Self::with_max_message_bytes`].
    pub fn into_server(self) -> RaftServiceServer<Self> {
        let limit = self.max_message_bytes;
        RaftServiceServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }
}

/// Applies the HTTP/2 settings the Raft transport wants to the node's server builder: large
/// flow-control windows so big appends and snapshots are not throttled by the 64 KiB HTTP/2
/// default, `TCP_NODELAY`, and keepalive to drop dead peers' connections. These settings apply
/// to every service on the port, which is harmless for the broker's other services.
pub fn configure_server(server: tonic::transport::Server) -> tonic::transport::Server {
    server
        .tcp_nodelay(true)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
}

fn invalid(e: convert::ConvertError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Raft API errors without an API part carry only `Fatal`.
fn into_fatal(e: RaftError<TypeConfig>) -> Fatal<TypeConfig> {
    match e {
        RaftError::Fatal(fatal) => fatal,
        RaftError::APIError(never) => match never {},
    }
}

/// Response stream of `StreamAppend`.
pub type StreamAppendStream =
    Pin<Box<dyn Stream<Item = Result<pb::StreamAppendResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<SM> RaftService for RaftGrpcService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = SnapshotData>,
{
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        let rpc = convert::append_request_from_pb(request.into_inner()).map_err(invalid)?;
        let result = self.raft.append_entries(rpc).await.map_err(into_fatal);
        Ok(Response::new(convert::append_response_to_pb(result)))
    }

    type StreamAppendStream = StreamAppendStream;

    async fn stream_append(
        &self,
        request: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let inbound = request.into_inner();
        // A malformed request ends the input; the responses to the requests before it are
        // still delivered, then the stream fails with INVALID_ARGUMENT.
        let rejected: Arc<Mutex<Option<Status>>> = Arc::default();
        let input_rejected = rejected.clone();
        let input = futures::stream::unfold(Some(inbound), move |inbound| {
            let rejected = input_rejected.clone();
            async move {
                let mut inbound = inbound?;
                match inbound.message().await {
                    Ok(Some(message)) => match convert::append_request_from_pb(message) {
                        Ok(rpc) => {
                            if let Some(e) = rpc.entries.last() {
                                crate::hops::mark(crate::hops::Hop::StreamReqIn, e.log_id.index);
                            }
                            Some((rpc, Some(inbound)))
                        }
                        Err(e) => {
                            *rejected.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some(invalid(e));
                            None
                        }
                    },
                    Ok(None) => None,
                    Err(status) => {
                        // E.g. the peer went away, or a request exceeded the size limit; report
                        // the latter to the peer if it is still listening.
                        tracing::debug!(%status, "StreamAppend request stream failed");
                        *rejected.lock().unwrap_or_else(PoisonError::into_inner) = Some(status);
                        None
                    }
                }
            }
        });
        let responses = self.raft.stream_append(input).map(|result| {
            if let Ok(Ok(Some(l))) = &result {
                crate::hops::mark(crate::hops::Hop::StreamRespOut, l.index);
            }
            Ok(convert::stream_result_to_pb(result))
        });
        let trailer = futures::stream::once(async move {
            rejected
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        })
        .filter_map(|status| futures::future::ready(status.map(Err)));
        Ok(Response::new(Box::pin(responses.chain(trailer))))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc = convert::vote_request_from_pb(request.into_inner()).map_err(invalid)?;
        let result = self.raft.vote(rpc).await.map_err(into_fatal);
        Ok(Response::new(convert::vote_response_to_pb(result)))
    }

    async fn pre_vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc = convert::vote_request_from_pb(request.into_inner()).map_err(invalid)?;
        let result = self.raft.pre_vote(rpc).await.map_err(into_fatal);
        Ok(Response::new(convert::vote_response_to_pb(result)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let mut inbound = request.into_inner();
        let header = match inbound.message().await? {
            Some(pb::SnapshotChunk {
                chunk: Some(pb::snapshot_chunk::Chunk::Header(header)),
            }) => header,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first snapshot chunk must be the header",
                ));
            }
            None => return Err(Status::invalid_argument("empty snapshot stream")),
        };
        let (vote, meta, total) = convert::snapshot_header_from_pb(header).map_err(invalid)?;
        if total > self.max_snapshot_bytes {
            return Err(Status::resource_exhausted(format!(
                "snapshot of {total} bytes exceeds the limit of {} bytes",
                self.max_snapshot_bytes
            )));
        }
        let total = usize::try_from(total)
            .map_err(|_| Status::resource_exhausted("snapshot too large for this platform"))?;
        let mut data = Vec::with_capacity(total.min(MAX_SNAPSHOT_PREALLOC));
        while let Some(chunk) = inbound.message().await? {
            let bytes = match chunk.chunk {
                Some(pb::snapshot_chunk::Chunk::Data(bytes)) => bytes,
                _ => {
                    return Err(Status::invalid_argument(
                        "expected a snapshot data chunk after the header",
                    ));
                }
            };
            if bytes.len() > total - data.len() {
                return Err(Status::invalid_argument(format!(
                    "snapshot data exceeds the announced {total} bytes"
                )));
            }
            data.extend_from_slice(&bytes);
        }
        if data.len() != total {
            return Err(Status::invalid_argument(format!(
                "snapshot truncated: {} of {total} bytes",
                data.len()
            )));
        }
        let snapshot = openraft::Snapshot {
            meta,
            snapshot: Cursor::new(data),
        };
        let result = self.raft.install_full_snapshot(vote, snapshot).await;
        Ok(Response::new(convert::snapshot_response_to_pb(result)))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let rpc = convert::transfer_request_from_pb(request.into_inner()).map_err(invalid)?;
        let result = self.raft.handle_transfer_leader(rpc).await;
        Ok(Response::new(convert::transfer_response_to_pb(result)))
    }
}

#[cfg(test)]
mod tests;
