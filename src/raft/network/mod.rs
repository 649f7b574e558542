//! The client half of raftmq's Raft transport: openraft's network traits over tonic gRPC.
//!
//! Each broker group is a three-node openraft group. Nodes talk the `raftmq.RaftService`
//! protocol (`proto/raftmq/raft.proto`), served by [`super::grpc::RaftGrpcService`]:
//!
//! | RPC               | openraft call                      | used for                          |
//! |-------------------|------------------------------------|-----------------------------------|
//! | `StreamAppend`    | `Raft::stream_append`              | pipelined log replication (bidi)  |
//! | `AppendEntries`   | `Raft::append_entries`             | heartbeats (control lane)         |
//! | `Vote`/`PreVote`  | `Raft::vote` / `Raft::pre_vote`    | elections (pre-vote when enabled) |
//! | `InstallSnapshot` | `Raft::install_full_snapshot`      | catching up a purged follower     |
//! | `TransferLeader`  | `Raft::handle_transfer_leader`     | graceful leadership hand-off      |
//!
//! Entries travel as protobuf messages with the command payload as raw bytes; only rare
//! messages (membership, snapshot metadata, remote errors) embed JSON.
//!
//! # Connections ("lanes")
//!
//! [`GrpcNetworkFactory`] keeps up to three HTTP/2 connections per peer, each a tonic
//! [`Channel`] created with [`Endpoint::connect_lazy`] (creating a client never blocks, even if
//! the peer is down) and cached across `new_*_client` calls:
//!
//! * **replication** (`new_client`): the long-lived `StreamAppend` stream carrying entries;
//! * **control** (`new_heartbeat_client`, plus every vote, pre-vote and transfer-leader RPC):
//!   heartbeats and elections. HTTP/2 multiplexes streams, but all streams of one connection
//!   share one TCP byte stream and one connection-level flow-control window: a heartbeat queued
//!   behind megabytes of entries (or a stalled window) is delayed by them, the leader's lease
//!   is not renewed in time and followers start needless elections. A separate connection
//!   keeps these small, latency-critical RPCs independent of bulk traffic;
//! * **snapshot** (`new_snapshot_client`): snapshot transfers, for the same reason.
//!
//! # Timeouts and errors
//!
//! Unary RPCs are bounded by [`RPCOption::soft_ttl`] (and carry it as the gRPC deadline).
//! `StreamAppend` uses `soft_ttl` to set up the stream and as a per-response timeout while
//! requests are outstanding (overridable: [`GrpcNetworkConfig::stream_response_timeout`]),
//! plus the outstanding bytes' transfer time at
//! [`GrpcNetworkConfig::min_replication_bytes_per_sec`]; an idle stream does not time out
//! (HTTP/2 keepalive detects dead connections). When openraft abandons a stream (drops its
//! responses), the request stream it handed over is dropped with it, so a session's requests
//! never outlive the session. A snapshot
//! transfer uses `soft_ttl` per chunk and for the final install, where openraft derives the
//! ttl from `Config::install_snapshot_timeout` (200 ms by default: raise it if installing a
//! snapshot takes longer).
//!
//! Transport failures map onto openraft's error kinds so that its backoff works:
//! `UNAVAILABLE` (connect refused, DNS failure, connect timeout: tonic's "retry with backoff"
//! class) and unparsable peer addresses → [`Unreachable`] (openraft backs off); a local timeout or
//! `DEADLINE_EXCEEDED` → [`Timeout`]; anything else (bad response, `INVALID_ARGUMENT`, ...) →
//! [`NetworkError`]. A Raft error raised *on the peer* comes back as data in an OK response;
//! openraft 0.10's network traits use `RPCError<C, Infallible>`, which has no usable
//! `RemoteError` variant, so it is reported as [`Unreachable`] wrapping a
//! [`RemoteError`]`<Fatal>` (the only error a peer's Raft can return to these RPCs is `Fatal`:
//! stopped, panicked or storage failure — in all cases backing off is right).
//!
//! [`RemoteError`]: openraft::errors::RemoteError
//!
//! # Payload bounds
//!
//! Messages may be up to [`GrpcNetworkConfig::max_message_bytes`] (64 MiB by default, set on
//! both ends). An `AppendEntries` request larger than
//! [`GrpcNetworkConfig::max_append_bytes`] is split into consecutive requests (each with the
//! previous chunk's last log id as `prev_log_id`) and the responses are merged back, so one
//! openraft request always yields one response. A single entry larger than the message limit
//! cannot be sent; the broker must cap entry sizes well below it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::Stream;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, stream_append_sequential};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use tonic::transport::{Channel, Endpoint};

use super::types::{NodeId, SnapshotData, TypeConfig, Vote};
use crate::proto::raftmq as pb;
use errors::{network_error, remote_unreachable, status_to_rpc_error};
use pb::raft_service_client::RaftServiceClient;

pub(crate) mod convert;
mod errors;
mod snapshot;
mod stream;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;

/// Default limit on one encoded gRPC message, applied to both encoding and decoding.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Default size above which an `AppendEntries` request is split.
pub const DEFAULT_MAX_APPEND_BYTES: usize = 16 << 20;
/// Default snapshot chunk size when openraft does not suggest one.
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

type RpcError = RPCError<TypeConfig>;
type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Transport settings of a [`GrpcNetworkFactory`].
#[derive(Clone, Debug)]
pub struct GrpcNetworkConfig {
    /// TCP connect timeout. DNS names are re-resolved on every reconnect (pods that move keep
    /// their name); resolution itself is bounded only by the RPC timeout.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive PING interval; `None` disables keepalive.
    pub keepalive_interval: Option<Duration>,
    /// How long to wait for a keepalive PING ack before closing the connection.
    pub keepalive_timeout: Duration,
    /// Maximum encoded size of one gRPC message (sent or received).
    pub max_message_bytes: usize,
    /// `AppendEntries` requests whose encoding exceeds this are split into several requests.
    pub max_append_bytes: usize,
    /// Snapshot chunk size used when openraft does not suggest one.
    pub snapshot_chunk_bytes: usize,
    /// How long a `StreamAppend` stream may wait for the next response while requests are
    /// outstanding. `None` (the default) uses openraft's [`RPCOption::soft_ttl`], i.e. 3/4 of
    /// `Config::heartbeat_interval`; set it if follower appends (fsync included) can take
    /// longer than that, to avoid needlessly restarting replication streams.
    pub stream_response_timeout: Option<Duration>,
    /// Added to that timeout: the time the unanswered requests take to transfer and store at
    /// this many bytes per second (default 32 MiB/s), so a follower with a backlog of large
    /// entries is given the time to answer instead of having every stream abandoned.
    pub min_replication_bytes_per_sec: u64,
    /// Mutual TLS to the peers (`https://`, the cluster CA, this node's certificate as client
    /// identity); `None` = plaintext.
    pub tls: Option<crate::tls::TlsSettings>,
}

impl Default for GrpcNetworkConfig {
    fn default() -> Self {
        GrpcNetworkConfig {
            connect_timeout: Duration::from_secs(1),
            keepalive_interval: Some(Duration::from_secs(5)),
            keepalive_timeout: Duration::from_secs(5),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_append_bytes: DEFAULT_MAX_APPEND_BYTES,
            snapshot_chunk_bytes: DEFAULT_SNAPSHOT_CHUNK_BYTES,
            stream_response_timeout: None,
            min_replication_bytes_per_sec: 32 << 20,
            tls: None,
        }
    }
}

/// Which connection to a peer a client uses. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Log replication (`StreamAppend`).
    Replication,
    /// Heartbeats, votes, pre-votes, transfer-leader.
    Control,
    /// Snapshot transfer.
    Snapshot,
}

/// Turns a peer address into a URI: `host:port` (DNS name, IPv4 or `[IPv6]`) gets `http://`
/// prepended; an address that already has a scheme is kept as is.
///
/// The plaintext form only (kept for its callers' tests and display); channels are built by
/// [`crate::tls::endpoint`], which picks `http` or `https`.
pub fn peer_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Builds the tonic endpoint for a peer address with the configured transport settings
/// (scheme and TLS from [`crate::tls::endpoint`]).
pub fn peer_endpoint(
    addr: &str,
    config: &GrpcNetworkConfig,
) -> Result<Endpoint, crate::tls::TlsError> {
    let mut endpoint = crate::tls::endpoint(addr, config.tls.as_ref())?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_adaptive_window(true);
    if let Some(interval) = config.keepalive_interval {
        endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(config.keepalive_timeout)
            .keep_alive_while_idle(true);
    }
    Ok(endpoint)
}

struct CachedChannel {
    addr: String,
    channel: Result<Channel, String>,
}

/// openraft's [`RaftNetworkFactory`] over gRPC, with per-peer, per-[`Lane`] cached channels.
///
/// Cheap to clone; clones share the channel cache. Must be used inside a tokio runtime
/// (channels are created lazily with [`Endpoint::connect_lazy`], which spawns a task).
#[derive(Clone)]
pub struct GrpcNetworkFactory {
    local_id: NodeId,
    config: Arc<GrpcNetworkConfig>,
    channels: Arc<Mutex<HashMap<(NodeId, Lane), CachedChannel>>>,
    splits: Arc<AtomicU64>,
    stream_timeouts: Arc<AtomicU64>,
}

impl GrpcNetworkFactory {
    /// A factory for the node `local_id` (used in timeout errors).
    pub fn new(local_id: NodeId, config: GrpcNetworkConfig) -> Self {
        GrpcNetworkFactory {
            local_id,
            config: Arc::new(config),
            channels: Arc::new(Mutex::new(HashMap::new())),
            splits: Arc::new(AtomicU64::new(0)),
            stream_timeouts: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many `AppendEntries` requests, over all clients of this factory, were larger than
    /// [`GrpcNetworkConfig::max_append_bytes`] and had to be split.
    pub fn split_append_count(&self) -> u64 {
        self.splits.load(Ordering::Relaxed)
    }

    /// How many `StreamAppend` streams, over all clients of this factory, were abandoned
    /// because a response took longer than the per-response timeout (see
    /// [`GrpcNetworkConfig::stream_response_timeout`]).
    pub fn stream_timeout_count(&self) -> u64 {
        self.stream_timeouts.load(Ordering::Relaxed)
    }

    /// The transport settings.
    pub fn config(&self) -> &GrpcNetworkConfig {
        &self.config
    }

    /// A client for `target` at `node.addr` on the given lane. Never blocks: the connection is
    /// made by the first RPC. An unparsable address yields a client whose RPCs fail with
    /// `Unreachable`.
    pub fn network(&self, target: NodeId, node: &BasicNode, lane: Lane) -> GrpcNetwork {
        let data = self.client(target, &node.addr, lane);
        let control = if lane == Lane::Control {
            data.clone()
        } else {
            self.client(target, &node.addr, Lane::Control)
        };
        GrpcNetwork {
            local_id: self.local_id,
            target,
            node: node.clone(),
            lane,
            config: self.config.clone(),
            splits: self.splits.clone(),
            stream_timeouts: self.stream_timeouts.clone(),
            data,
            control,
        }
    }

    fn client(
        &self,
        target: NodeId,
        addr: &str,
        lane: Lane,
    ) -> Result<RaftServiceClient<Channel>, String> {
        let channel = self.channel(target, addr, lane)?;
        Ok(RaftServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_message_bytes)
            .max_encoding_message_size(self.config.max_message_bytes))
    }

    fn channel(&self, target: NodeId, addr: &str, lane: Lane) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = channels.get(&(target, lane)) {
            if cached.addr == addr {
                return cached.channel.clone();
            }
        }
        let channel = peer_endpoint(addr, &self.config)
            .map(|endpoint| endpoint.connect_lazy())
            .map_err(|e| format!("invalid address {addr:?} of node {target}: {e}"));
        channels.insert(
            (target, lane),
            CachedChannel {
                addr: addr.to_string(),
                channel: channel.clone(),
            },
        );
        channel
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GrpcNetwork {
        self.network(target, node, Lane::Replication)
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &BasicNode) -> GrpcNetwork {
        self.network(target, node, Lane::Control)
    }

    async fn new_snapshot_client(&mut self, target: NodeId, node: &BasicNode) -> GrpcNetwork {
        self.network(target, node, Lane::Snapshot)
    }
}

/// A connection to one peer: openraft's [`RaftNetworkV2`] over gRPC.
pub struct GrpcNetwork {
    local_id: NodeId,
    target: NodeId,
    node: BasicNode,
    lane: Lane,
    config: Arc<GrpcNetworkConfig>,
    /// Shared with the factory: see [`GrpcNetworkFactory::split_append_count`].
    splits: Arc<AtomicU64>,
    /// Shared with the factory: see [`GrpcNetworkFactory::stream_timeout_count`].
    stream_timeouts: Arc<AtomicU64>,
    /// The lane's own connection (`Err`: the address did not parse).
    data: Result<RaftServiceClient<Channel>, String>,
    /// The control connection used for votes and transfer-leader.
    control: Result<RaftServiceClient<Channel>, String>,
}

impl GrpcNetwork {
    /// The peer this client talks to.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// The lane this client was created for.
    pub fn lane(&self) -> Lane {
        self.lane
    }

    fn data_client(&self) -> Result<RaftServiceClient<Channel>, Unreachable<TypeConfig>> {
        self.data.clone().map_err(Unreachable::from_string)
    }

    fn control_client(&self) -> Result<RaftServiceClient<Channel>, Unreachable<TypeConfig>> {
        self.control.clone().map_err(Unreachable::from_string)
    }

    fn timeout_error(&self, action: RPCTypes, ttl: Duration) -> Timeout<TypeConfig> {
        Timeout {
            action,
            id: self.local_id,
            target: self.target,
            timeout: ttl,
        }
    }

    fn status_error(&self, action: RPCTypes, ttl: Duration, status: tonic::Status) -> RpcError {
        status_to_rpc_error(status, || self.timeout_error(action, ttl))
    }

    fn remote_error(&self, remote: convert::RemoteFatal) -> Unreachable<TypeConfig> {
        remote_unreachable(self.target, &self.node, remote)
    }

    /// Runs one unary call bounded by `ttl`.
    async fn unary<T>(
        &self,
        action: RPCTypes,
        ttl: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RpcError> {
        match tokio::time::timeout(ttl, call).await {
            Err(_elapsed) => Err(RPCError::Timeout(self.timeout_error(action, ttl))),
            Ok(Err(status)) => Err(self.status_error(action, ttl, status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// Sends a vote or pre-vote on the control connection.
    async fn send_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
        pre_vote: bool,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        let ttl = option.soft_ttl();
        let mut client = self.control_client()?;
        let request = with_deadline(convert::vote_request_to_pb(&rpc), ttl);
        let response = if pre_vote {
            self.unary(RPCTypes::Vote, ttl, client.pre_vote(request))
                .await?
        } else {
            self.unary(RPCTypes::Vote, ttl, client.vote(request))
                .await?
        };
        match convert::vote_response_from_pb(response).map_err(network_error)? {
            Ok(resp) => Ok(resp),
            Err(remote) => Err(RPCError::Unreachable(self.remote_error(remote))),
        }
    }
}

fn with_deadline<T>(message: T, ttl: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(ttl);
    request
}

impl RaftNetworkV2<TypeConfig> for GrpcNetwork {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcError> {
        let ttl = option.soft_ttl();
        let deadline = tokio::time::Instant::now() + ttl;
        let mut client = self.data_client()?;
        let request = convert::append_request_to_pb(rpc).map_err(network_error)?;
        let chunks = convert::split_append(request, self.config.max_append_bytes);
        let n = chunks.len();
        if n > 1 {
            self.splits.fetch_add(1, Ordering::Relaxed);
        }
        let mut last = Err(RPCError::Network(NetworkError::from_string(
            "empty AppendEntries",
        )));
        for (i, chunk) in chunks.into_iter().enumerate() {
            let chunk_prev = chunk.prev_log_id.map(convert::log_id_from_pb);
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let call = client.append_entries(with_deadline(chunk, remaining));
            let response = match tokio::time::timeout_at(deadline, call).await {
                Err(_elapsed) => {
                    return Err(RPCError::Timeout(
                        self.timeout_error(RPCTypes::AppendEntries, ttl),
                    ));
                }
                Ok(Err(status)) => {
                    return Err(self.status_error(RPCTypes::AppendEntries, ttl, status));
                }
                Ok(Ok(response)) => response.into_inner(),
            };
            let response =
                match convert::append_response_from_pb(response).map_err(network_error)? {
                    Ok(response) => response,
                    Err(remote) => return Err(RPCError::Unreachable(self.remote_error(remote))),
                };
            match response {
                AppendEntriesResponse::Success if i + 1 < n => {}
                // Earlier chunks were accepted, so this is partial progress, not a conflict
                // at the original `prev_log_id`.
                AppendEntriesResponse::Conflict if i > 0 => {
                    return Ok(AppendEntriesResponse::PartialSuccess(chunk_prev));
                }
                other => {
                    last = Ok(other);
                    break;
                }
            }
        }
        last
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RpcError>>, RpcError>,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        if self.lane == Lane::Control {
            // Heartbeats: one request per stream; a unary call is cheaper than a stream.
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            let stream = self.open_stream(input, option).await?;
            Ok(stream as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        self.send_vote(rpc, option, false).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        self.send_vote(rpc, option, true).await
    }

    // The transfer itself is `GrpcNetwork::send_snapshot` (snapshot.rs).
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        self.send_snapshot(vote, snapshot, cancel, option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcError> {
        let ttl = option.soft_ttl();
        let mut client = self.control_client()?;
        let request = with_deadline(convert::transfer_request_to_pb(&req), ttl);
        let response = self
            .unary(
                RPCTypes::TransferLeader,
                ttl,
                client.transfer_leader(request),
            )
            .await?;
        match convert::transfer_response_from_pb(response).map_err(network_error)? {
            Ok(response) => Ok(response),
            Err(remote) => Err(RPCError::Unreachable(self.remote_error(remote))),
        }
    }
}
