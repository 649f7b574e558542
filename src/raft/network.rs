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
//! requests are outstanding (overridable: [`GrpcNetworkConfig::stream_response_timeout`]); an
//! idle stream does not time out (HTTP/2 keepalive detects dead connections). A snapshot
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
//! # Payload bounds
//!
//! Messages may be up to [`GrpcNetworkConfig::max_message_bytes`] (64 MiB by default, set on
//! both ends). An `AppendEntries` request larger than
//! [`GrpcNetworkConfig::max_append_bytes`] is split into consecutive requests (each with the
//! previous chunk's last log id as `prev_log_id`) and the responses are merged back, so one
//! openraft request always yields one response. A single entry larger than the message limit
//! cannot be sent; the broker must cap entry sizes well below it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{
    Fatal, NetworkError, RPCError, RemoteError, ReplicationClosed, StreamingError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, stream_append_sequential};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError,
    StreamAppendResult, TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};

use super::types::{LogId, NodeId, SnapshotData, TypeConfig, Vote};
use crate::proto::raftmq as pb;
use pb::raft_service_client::RaftServiceClient;

/// Default limit on one encoded gRPC message, applied to both encoding and decoding.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Default size above which an `AppendEntries` request is split.
pub const DEFAULT_MAX_APPEND_BYTES: usize = 16 << 20;
/// Default snapshot chunk size when openraft does not suggest one.
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// Smallest snapshot chunk we send, whatever openraft suggests.
const MIN_SNAPSHOT_CHUNK_BYTES: usize = 64 << 10;

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
pub fn peer_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Builds the tonic endpoint for a peer address with the configured transport settings.
pub fn peer_endpoint(
    addr: &str,
    config: &GrpcNetworkConfig,
) -> Result<Endpoint, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(peer_uri(addr))?
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
}

impl GrpcNetworkFactory {
    /// A factory for the node `local_id` (used in timeout errors).
    pub fn new(local_id: NodeId, config: GrpcNetworkConfig) -> Self {
        GrpcNetworkFactory {
            local_id,
            config: Arc::new(config),
            channels: Arc::new(Mutex::new(HashMap::new())),
            splits: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many `AppendEntries` requests, over all clients of this factory, were larger than
    /// [`GrpcNetworkConfig::max_append_bytes`] and had to be split.
    pub fn split_append_count(&self) -> u64 {
        self.splits.load(Ordering::Relaxed)
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

    /// Pipelined replication over one `StreamAppend` bidi stream.
    async fn open_stream<S>(
        &self,
        input: S,
        option: RPCOption,
    ) -> Result<BoxStream<'static, Result<StreamAppendResult<TypeConfig>, RpcError>>, RpcError>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let ttl = option.soft_ttl();
        // openraft backs off from an unreachable peer inside the request stream: its generator
        // waits out the backoff before it yields a session's first request. Connecting before
        // that request exists would skip the wait, and a dead peer would be redialled in a hot
        // loop (thousands of attempts a second, a core burnt and as many log lines).
        let mut input = input;
        let Some(first) = input.next().await else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let input = futures::stream::iter([first]).chain(input);
        let mut client = self.data_client()?;
        let shared = Arc::new(StreamShared::default());
        let max_append_bytes = self.config.max_append_bytes;
        let splits = self.splits.clone();

        let outbound_shared = shared.clone();
        let outbound = input
            .scan((), move |_, req| {
                let chunks = convert::append_request_to_pb(req)
                    .map(|req| convert::split_append(req, max_append_bytes));
                let item = match chunks {
                    Ok(chunks) => {
                        if chunks.len() > 1 {
                            splits.fetch_add(1, Ordering::Relaxed);
                        }
                        outbound_shared.push_chunks(&chunks);
                        Some(futures::stream::iter(chunks))
                    }
                    Err(e) => {
                        *outbound_shared
                            .local_error
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = Some(e);
                        None
                    }
                };
                futures::future::ready(item)
            })
            .flatten();

        let inbound = match tokio::time::timeout(ttl, client.stream_append(outbound)).await {
            Err(_elapsed) => {
                return Err(RPCError::Timeout(
                    self.timeout_error(RPCTypes::AppendEntries, ttl),
                ));
            }
            Ok(Err(status)) => return Err(self.status_error(RPCTypes::AppendEntries, ttl, status)),
            Ok(Ok(response)) => response.into_inner(),
        };

        let response_ttl = self.config.stream_response_timeout.unwrap_or(ttl);
        let state = StreamState {
            inbound,
            shared,
            ttl: response_ttl,
            timeout: self.timeout_error(RPCTypes::AppendEntries, response_ttl),
            target: self.target,
            node: self.node.clone(),
        };
        let responses = futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            let (item, keep_going) = state.next_result().await?;
            Some((item, keep_going.then_some(state)))
        });
        Ok(Box::pin(responses))
    }
}

/// Maps a tonic status to openraft's error kinds (see the module docs).
fn status_to_rpc_error(
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
fn remote_unreachable(
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

fn network_error(e: convert::ConvertError) -> RpcError {
    RPCError::Network(NetworkError::new(&e))
}

fn with_deadline<T>(message: T, ttl: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(ttl);
    request
}

/// Where a request sent on a `StreamAppend` stream came from: openraft requests may be split
/// into several wire requests (see [`convert::split_append`]).
#[derive(Clone, Copy, Debug)]
struct ChunkInfo {
    /// First wire request of its openraft request.
    first: bool,
    /// Last wire request of its openraft request.
    last: bool,
    /// The wire request's `prev_log_id`.
    prev: Option<LogId>,
}

/// State shared by the outbound (request) and inbound (response) halves of a stream.
#[derive(Default)]
struct StreamShared {
    /// Requests handed to the transport and not yet answered, in order.
    pending: Mutex<VecDeque<ChunkInfo>>,
    /// Signalled when `pending` grows, to arm the per-response timeout.
    sent: Notify,
    /// A request that could not be encoded; the outbound stream ends there.
    local_error: Mutex<Option<convert::ConvertError>>,
}

impl StreamShared {
    fn push_chunks(&self, chunks: &[pb::AppendEntriesRequest]) {
        let n = chunks.len();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for (i, chunk) in chunks.iter().enumerate() {
                pending.push_back(ChunkInfo {
                    first: i == 0,
                    last: i + 1 == n,
                    prev: chunk.prev_log_id.map(convert::log_id_from_pb),
                });
            }
        }
        self.sent.notify_one();
    }

    fn has_pending(&self) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    fn pop_pending(&self) -> Option<ChunkInfo> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    fn take_local_error(&self) -> Option<convert::ConvertError> {
        self.local_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// The response half of a `StreamAppend` stream.
struct StreamState {
    inbound: tonic::Streaming<pb::StreamAppendResponse>,
    shared: Arc<StreamShared>,
    ttl: Duration,
    timeout: Timeout<TypeConfig>,
    target: NodeId,
    node: BasicNode,
}

impl StreamState {
    /// The next result for openraft and whether the stream continues after it; `None` at the
    /// clean end of the stream.
    async fn next_result(
        &mut self,
    ) -> Option<(Result<StreamAppendResult<TypeConfig>, RpcError>, bool)> {
        loop {
            let message = if self.shared.has_pending() {
                match tokio::time::timeout(self.ttl, self.inbound.message()).await {
                    Ok(message) => message,
                    Err(_elapsed) => {
                        return Some((Err(RPCError::Timeout(self.timeout.clone())), false));
                    }
                }
            } else {
                // Nothing outstanding: wait without a deadline, but re-check as soon as a
                // request goes out. `Streaming::message` is cancel-safe.
                tokio::select! {
                    message = self.inbound.message() => message,
                    _ = self.shared.sent.notified() => continue,
                }
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => {
                    if let Some(e) = self.shared.take_local_error() {
                        return Some((Err(network_error(e)), false));
                    }
                    if self.shared.has_pending() {
                        let e = NetworkError::from_string(format!(
                            "StreamAppend to node {} ended with unanswered requests",
                            self.target
                        ));
                        return Some((Err(RPCError::Network(e)), false));
                    }
                    return None;
                }
                Err(status) => {
                    let timeout = self.timeout.clone();
                    return Some((Err(status_to_rpc_error(status, || timeout)), false));
                }
            };
            let Some(info) = self.shared.pop_pending() else {
                let e = NetworkError::from_string("StreamAppend response without a request");
                return Some((Err(RPCError::Network(e)), false));
            };
            let result = match convert::stream_result_from_pb(response) {
                Err(e) => return Some((Err(network_error(e)), false)),
                Ok(Err(remote)) => {
                    let e = remote_unreachable(self.target, &self.node, remote);
                    return Some((Err(RPCError::Unreachable(e)), false));
                }
                Ok(Ok(result)) => result,
            };
            match result {
                // An intermediate wire request of a split openraft request: keep reading.
                Ok(_) if !info.last => continue,
                Ok(flushed) => return Some((Ok(Ok(flushed)), true)),
                // A later chunk conflicting means the earlier chunks were accepted: report
                // that partial progress; the follower ends the stream after an error.
                Err(StreamAppendError::Conflict(_)) if !info.first => {
                    return Some((Ok(Ok(info.prev)), false));
                }
                Err(e) => return Some((Ok(Err(e)), false)),
            }
        }
    }
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

    /// Streams a header (vote + JSON meta + size) and the snapshot buffer in chunks; the whole
    /// `Cursor` buffer is sent, whatever its position.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let ttl = option.soft_ttl();
        let timeout =
            || StreamingError::Timeout(self.timeout_error(RPCTypes::InstallSnapshot, ttl));
        let mut client = self.data_client()?;

        let chunk_bytes = option
            .snapshot_chunk_size()
            .unwrap_or(self.config.snapshot_chunk_bytes)
            .clamp(
                MIN_SNAPSHOT_CHUNK_BYTES,
                (self.config.max_message_bytes / 2).max(MIN_SNAPSHOT_CHUNK_BYTES),
            );
        let data = Bytes::from(snapshot.snapshot.into_inner());
        let header = convert::snapshot_header_to_pb(&vote, &snapshot.meta, data.len() as u64)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;

        let (mut tx, rx) = futures::channel::mpsc::channel::<pb::SnapshotChunk>(1);
        let mut call = pin!(client.install_snapshot(rx));
        let mut cancel = pin!(cancel);

        let send_all = async move {
            let header = pb::SnapshotChunk {
                chunk: Some(pb::snapshot_chunk::Chunk::Header(header)),
            };
            let chunks =
                std::iter::once(header).chain((0..data.len()).step_by(chunk_bytes).map(|start| {
                    pb::SnapshotChunk {
                        chunk: Some(pb::snapshot_chunk::Chunk::Data(
                            data.slice(start..(start + chunk_bytes).min(data.len())),
                        )),
                    }
                }));
            for chunk in chunks {
                match tokio::time::timeout(ttl, tx.send(chunk)).await {
                    Err(_elapsed) => return Err(timeout()),
                    Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
                    Ok(Ok(())) => {}
                }
            }
            // Dropping `tx` ends the request stream.
            Ok(())
        };

        // Phase 1: stream the chunks. The peer may answer early (e.g. with an error).
        let early = tokio::select! {
            biased;
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            response = &mut call => Some(response),
            sent = send_all => {
                sent?;
                None
            }
        };
        // Phase 2: wait for the peer to install the snapshot.
        let response = match early {
            Some(response) => response,
            None => tokio::select! {
                biased;
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                response = tokio::time::timeout(ttl, &mut call) => match response {
                    Ok(response) => response,
                    Err(_elapsed) => return Err(timeout()),
                },
            },
        };
        let response = response
            .map_err(|status| {
                StreamingError::from(self.status_error(RPCTypes::InstallSnapshot, ttl, status))
            })?
            .into_inner();
        match convert::snapshot_response_from_pb(response)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?
        {
            Ok(response) => Ok(response),
            Err(remote) => Err(StreamingError::Unreachable(self.remote_error(remote))),
        }
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

/// Conversions between openraft's types and the `raftmq` protobuf messages, used by both the
/// client ([`super::network`]) and the server ([`super::grpc`]).
///
/// `*_to_pb` functions are used by the sending side and cannot fail on well-formed openraft
/// values (except for JSON encoding, which does not fail for our types in practice);
/// `*_from_pb` functions validate what a peer sent and return [`convert::ConvertError`] on malformed
/// input.
pub(crate) mod convert {
    use super::*;
    use openraft::alias::LeaderIdOf;
    use openraft::raft::TransferLeaderError;
    use openraft::{EntryPayload, Membership};

    use crate::raft::types::{Command, CommittedLeaderId, Entry, SnapshotMeta};

    /// A message from a peer that does not decode into a valid openraft value.
    #[derive(Debug, thiserror::Error)]
    #[error("malformed raft message: {0}")]
    pub struct ConvertError(pub String);

    impl ConvertError {
        fn missing(field: &str) -> Self {
            ConvertError(format!("missing field `{field}`"))
        }
    }

    /// A Raft error reported by a peer (openraft `Fatal`).
    #[derive(Debug)]
    pub struct RemoteFatal {
        /// The peer's rendering of the error.
        pub message: String,
        /// The error itself, if its JSON decoded.
        pub fatal: Option<Fatal<TypeConfig>>,
    }

    /// Wire overhead allowance per split `AppendEntries` request (vote, prev, commit, framing).
    const REQUEST_OVERHEAD: usize = 256;

    pub fn log_id_to_pb(log_id: &LogId) -> pb::LogId {
        pb::LogId {
            term: log_id.leader_id.term,
            node_id: log_id.leader_id.node_id,
            index: log_id.index,
        }
    }

    pub fn log_id_from_pb(log_id: pb::LogId) -> LogId {
        LogId {
            leader_id: CommittedLeaderId {
                term: log_id.term,
                node_id: log_id.node_id,
            },
            index: log_id.index,
        }
    }

    fn opt_log_id_to_pb(log_id: Option<&LogId>) -> Option<pb::LogId> {
        log_id.map(log_id_to_pb)
    }

    fn opt_log_id_from_pb(log_id: Option<pb::LogId>) -> Option<LogId> {
        log_id.map(log_id_from_pb)
    }

    pub fn vote_to_pb(vote: &Vote) -> pb::Vote {
        pb::Vote {
            term: vote.leader_id.term,
            node_id: vote.leader_id.node_id,
            committed: vote.committed,
        }
    }

    pub fn vote_from_pb(vote: pb::Vote) -> Vote {
        Vote {
            leader_id: LeaderIdOf::<TypeConfig> {
                term: vote.term,
                node_id: vote.node_id,
            },
            committed: vote.committed,
        }
    }

    fn required_vote(vote: Option<pb::Vote>, field: &str) -> Result<Vote, ConvertError> {
        vote.map(vote_from_pb)
            .ok_or_else(|| ConvertError::missing(field))
    }

    fn json_error(what: &str, e: serde_json::Error) -> ConvertError {
        ConvertError(format!("bad {what} JSON: {e}"))
    }

    pub fn entry_to_pb(entry: Entry) -> Result<pb::Entry, ConvertError> {
        let payload = match entry.payload {
            EntryPayload::Blank => pb::entry::Payload::Blank(pb::Empty {}),
            EntryPayload::Normal(command) => pb::entry::Payload::Normal(pb::Normal {
                kind: u32::from(command.kind),
                data: command.data,
            }),
            EntryPayload::Membership(membership) => pb::entry::Payload::MembershipJson(
                serde_json::to_vec(&membership)
                    .map(Bytes::from)
                    .map_err(|e| json_error("membership", e))?,
            ),
        };
        Ok(pb::Entry {
            term: entry.log_id.leader_id.term,
            node_id: entry.log_id.leader_id.node_id,
            index: entry.log_id.index,
            payload: Some(payload),
        })
    }

    pub fn entry_from_pb(entry: pb::Entry) -> Result<Entry, ConvertError> {
        let log_id = LogId {
            leader_id: CommittedLeaderId {
                term: entry.term,
                node_id: entry.node_id,
            },
            index: entry.index,
        };
        let payload = match entry
            .payload
            .ok_or_else(|| ConvertError::missing("entry.payload"))?
        {
            pb::entry::Payload::Blank(_) => EntryPayload::Blank,
            pb::entry::Payload::Normal(normal) => {
                let kind = u8::try_from(normal.kind).map_err(|_| {
                    ConvertError(format!("entry kind {} out of range", normal.kind))
                })?;
                EntryPayload::Normal(Command {
                    kind,
                    data: normal.data,
                })
            }
            pb::entry::Payload::MembershipJson(json) => {
                let membership: Membership<NodeId, BasicNode> =
                    serde_json::from_slice(&json).map_err(|e| json_error("membership", e))?;
                // Re-check the invariants openraft relies on (voters are known nodes, no empty
                // config); deserialization alone does not.
                let nodes: BTreeMap<NodeId, BasicNode> = membership
                    .nodes()
                    .map(|(id, node)| (*id, node.clone()))
                    .collect();
                Membership::new(membership.get_joint_config().clone(), nodes)
                    .map_err(|e| ConvertError(format!("invalid membership: {e}")))?;
                EntryPayload::Membership(membership)
            }
        };
        Ok(Entry { log_id, payload })
    }

    pub fn append_request_to_pb(
        req: AppendEntriesRequest<TypeConfig>,
    ) -> Result<pb::AppendEntriesRequest, ConvertError> {
        Ok(pb::AppendEntriesRequest {
            vote: Some(vote_to_pb(&req.vote)),
            prev_log_id: opt_log_id_to_pb(req.prev_log_id.as_ref()),
            entries: req
                .entries
                .into_iter()
                .map(entry_to_pb)
                .collect::<Result<_, _>>()?,
            leader_commit: opt_log_id_to_pb(req.leader_commit.as_ref()),
        })
    }

    /// Decodes and validates an `AppendEntries` request: the vote is present and the entries
    /// are consecutive and follow `prev_log_id`.
    pub fn append_request_from_pb(
        req: pb::AppendEntriesRequest,
    ) -> Result<AppendEntriesRequest<TypeConfig>, ConvertError> {
        let vote = required_vote(req.vote, "vote")?;
        let prev_log_id = opt_log_id_from_pb(req.prev_log_id);
        let entries = req
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<Vec<_>, _>>()?;
        let mut expected = prev_log_id.as_ref().map(|prev| prev.index.checked_add(1));
        for entry in &entries {
            match expected {
                Some(Some(index)) if index == entry.log_id.index => {}
                None => {}
                _ => {
                    return Err(ConvertError(format!(
                        "entry index {} does not follow {:?}",
                        entry.log_id.index, expected
                    )));
                }
            }
            expected = Some(entry.log_id.index.checked_add(1));
        }
        Ok(AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit: opt_log_id_from_pb(req.leader_commit),
        })
    }

    /// Splits a request whose encoding exceeds `max_bytes` into consecutive requests of at most
    /// about `max_bytes` each (a single larger entry travels alone). Each piece after the first
    /// has the previous piece's last log id as `prev_log_id`; vote and leader commit are
    /// repeated. Always returns at least one request.
    pub fn split_append(
        req: pb::AppendEntriesRequest,
        max_bytes: usize,
    ) -> Vec<pb::AppendEntriesRequest> {
        use prost::Message;

        if req.entries.len() <= 1 || req.encoded_len() <= max_bytes {
            return vec![req];
        }
        let budget = max_bytes.saturating_sub(REQUEST_OVERHEAD).max(1);
        let pb::AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        } = req;

        let mut out = Vec::new();
        let mut prev = prev_log_id;
        let mut current: Vec<pb::Entry> = Vec::new();
        let mut current_bytes = 0usize;
        for entry in entries {
            let len = entry.encoded_len();
            let len = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
            if let Some(last) = current.last() {
                if current_bytes + len > budget {
                    let last = pb::LogId {
                        term: last.term,
                        node_id: last.node_id,
                        index: last.index,
                    };
                    out.push(pb::AppendEntriesRequest {
                        vote,
                        prev_log_id: prev.replace(last),
                        entries: std::mem::take(&mut current),
                        leader_commit,
                    });
                    current_bytes = 0;
                }
            }
            current_bytes += len;
            current.push(entry);
        }
        out.push(pb::AppendEntriesRequest {
            vote,
            prev_log_id: prev,
            entries: current,
            leader_commit,
        });
        out
    }

    pub fn raft_error_to_pb(fatal: &Fatal<TypeConfig>) -> pb::RaftError {
        pb::RaftError {
            message: fatal.to_string(),
            json: serde_json::to_vec(fatal)
                .map(Bytes::from)
                .unwrap_or_default(),
        }
    }

    pub fn raft_error_from_pb(error: pb::RaftError) -> RemoteFatal {
        RemoteFatal {
            fatal: serde_json::from_slice(&error.json).ok(),
            message: error.message,
        }
    }

    pub fn append_response_to_pb(
        result: Result<AppendEntriesResponse<TypeConfig>, Fatal<TypeConfig>>,
    ) -> pb::AppendEntriesResponse {
        use pb::append_entries_response::Outcome;
        let outcome = match result {
            Ok(AppendEntriesResponse::Success) => Outcome::Success(pb::Empty {}),
            Ok(AppendEntriesResponse::PartialSuccess(matching)) => {
                Outcome::PartialSuccess(pb::PartialSuccess {
                    matching: opt_log_id_to_pb(matching.as_ref()),
                })
            }
            Ok(AppendEntriesResponse::Conflict) => Outcome::Conflict(pb::Empty {}),
            Ok(AppendEntriesResponse::HigherVote(vote)) => Outcome::HigherVote(vote_to_pb(&vote)),
            Err(fatal) => Outcome::RaftError(raft_error_to_pb(&fatal)),
        };
        pb::AppendEntriesResponse {
            outcome: Some(outcome),
        }
    }

    pub fn append_response_from_pb(
        response: pb::AppendEntriesResponse,
    ) -> Result<Result<AppendEntriesResponse<TypeConfig>, RemoteFatal>, ConvertError> {
        use pb::append_entries_response::Outcome;
        Ok(
            match response
                .outcome
                .ok_or_else(|| ConvertError::missing("outcome"))?
            {
                Outcome::Success(_) => Ok(AppendEntriesResponse::Success),
                Outcome::PartialSuccess(p) => Ok(AppendEntriesResponse::PartialSuccess(
                    opt_log_id_from_pb(p.matching),
                )),
                Outcome::Conflict(_) => Ok(AppendEntriesResponse::Conflict),
                Outcome::HigherVote(vote) => {
                    Ok(AppendEntriesResponse::HigherVote(vote_from_pb(vote)))
                }
                Outcome::RaftError(e) => Err(raft_error_from_pb(e)),
            },
        )
    }

    pub fn stream_result_to_pb(
        result: Result<StreamAppendResult<TypeConfig>, Fatal<TypeConfig>>,
    ) -> pb::StreamAppendResponse {
        use pb::stream_append_response::Outcome;
        let outcome = match result {
            Ok(Ok(flushed)) => Outcome::Flushed(pb::Flushed {
                log_id: opt_log_id_to_pb(flushed.as_ref()),
            }),
            Ok(Err(StreamAppendError::Conflict(log_id))) => {
                Outcome::Conflict(log_id_to_pb(&log_id))
            }
            Ok(Err(StreamAppendError::HigherVote(vote))) => Outcome::HigherVote(vote_to_pb(&vote)),
            Err(fatal) => Outcome::RaftError(raft_error_to_pb(&fatal)),
        };
        pb::StreamAppendResponse {
            outcome: Some(outcome),
        }
    }

    pub fn stream_result_from_pb(
        response: pb::StreamAppendResponse,
    ) -> Result<Result<StreamAppendResult<TypeConfig>, RemoteFatal>, ConvertError> {
        use pb::stream_append_response::Outcome;
        Ok(
            match response
                .outcome
                .ok_or_else(|| ConvertError::missing("outcome"))?
            {
                Outcome::Flushed(f) => Ok(Ok(opt_log_id_from_pb(f.log_id))),
                Outcome::Conflict(log_id) => {
                    Ok(Err(StreamAppendError::Conflict(log_id_from_pb(log_id))))
                }
                Outcome::HigherVote(vote) => {
                    Ok(Err(StreamAppendError::HigherVote(vote_from_pb(vote))))
                }
                Outcome::RaftError(e) => Err(raft_error_from_pb(e)),
            },
        )
    }

    pub fn vote_request_to_pb(req: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
        pb::VoteRequest {
            vote: Some(vote_to_pb(&req.vote)),
            last_log_id: opt_log_id_to_pb(req.last_log_id.as_ref()),
            leadership_transfer: req.leadership_transfer,
        }
    }

    pub fn vote_request_from_pb(
        req: pb::VoteRequest,
    ) -> Result<VoteRequest<TypeConfig>, ConvertError> {
        let mut request = VoteRequest::new(
            required_vote(req.vote, "vote")?,
            opt_log_id_from_pb(req.last_log_id),
        );
        request.leadership_transfer = req.leadership_transfer;
        Ok(request)
    }

    pub fn vote_response_to_pb(
        result: Result<VoteResponse<TypeConfig>, Fatal<TypeConfig>>,
    ) -> pb::VoteResponse {
        match result {
            Ok(resp) => pb::VoteResponse {
                vote: Some(vote_to_pb(&resp.vote)),
                vote_granted: resp.vote_granted,
                last_log_id: opt_log_id_to_pb(resp.last_log_id.as_ref()),
                error: None,
            },
            Err(fatal) => pb::VoteResponse {
                error: Some(raft_error_to_pb(&fatal)),
                ..Default::default()
            },
        }
    }

    pub fn vote_response_from_pb(
        resp: pb::VoteResponse,
    ) -> Result<Result<VoteResponse<TypeConfig>, RemoteFatal>, ConvertError> {
        if let Some(error) = resp.error {
            return Ok(Err(raft_error_from_pb(error)));
        }
        Ok(Ok(VoteResponse {
            vote: required_vote(resp.vote, "vote")?,
            vote_granted: resp.vote_granted,
            last_log_id: opt_log_id_from_pb(resp.last_log_id),
        }))
    }

    pub fn snapshot_header_to_pb(
        vote: &Vote,
        meta: &SnapshotMeta,
        total_bytes: u64,
    ) -> Result<pb::SnapshotHeader, ConvertError> {
        Ok(pb::SnapshotHeader {
            vote: Some(vote_to_pb(vote)),
            meta_json: serde_json::to_vec(meta)
                .map(Bytes::from)
                .map_err(|e| json_error("snapshot meta", e))?,
            total_bytes,
        })
    }

    pub fn snapshot_header_from_pb(
        header: pb::SnapshotHeader,
    ) -> Result<(Vote, SnapshotMeta, u64), ConvertError> {
        let vote = required_vote(header.vote, "vote")?;
        let meta = serde_json::from_slice(&header.meta_json)
            .map_err(|e| json_error("snapshot meta", e))?;
        Ok((vote, meta, header.total_bytes))
    }

    pub fn snapshot_response_to_pb(
        result: Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>>,
    ) -> pb::SnapshotResponse {
        match result {
            Ok(resp) => pb::SnapshotResponse {
                vote: Some(vote_to_pb(&resp.vote)),
                error: None,
            },
            Err(fatal) => pb::SnapshotResponse {
                vote: None,
                error: Some(raft_error_to_pb(&fatal)),
            },
        }
    }

    pub fn snapshot_response_from_pb(
        resp: pb::SnapshotResponse,
    ) -> Result<Result<SnapshotResponse<TypeConfig>, RemoteFatal>, ConvertError> {
        if let Some(error) = resp.error {
            return Ok(Err(raft_error_from_pb(error)));
        }
        Ok(Ok(SnapshotResponse::new(required_vote(resp.vote, "vote")?)))
    }

    pub fn transfer_request_to_pb(
        req: &TransferLeaderRequest<TypeConfig>,
    ) -> pb::TransferLeaderRequest {
        pb::TransferLeaderRequest {
            from_leader: Some(vote_to_pb(req.from_leader())),
            to_node_id: *req.to_node_id(),
            last_log_id: opt_log_id_to_pb(req.last_log_id()),
        }
    }

    pub fn transfer_request_from_pb(
        req: pb::TransferLeaderRequest,
    ) -> Result<TransferLeaderRequest<TypeConfig>, ConvertError> {
        Ok(TransferLeaderRequest::new(
            required_vote(req.from_leader, "from_leader")?,
            req.to_node_id,
            opt_log_id_from_pb(req.last_log_id),
        ))
    }

    pub fn transfer_response_to_pb(
        result: Result<TransferLeaderResponse<TypeConfig>, Fatal<TypeConfig>>,
    ) -> pb::TransferLeaderResponse {
        use pb::transfer_leader_response::Outcome;
        let outcome = match result {
            Ok(Ok(())) => Outcome::Accepted(pb::Empty {}),
            Ok(Err(rejected)) => match serde_json::to_vec(&rejected) {
                Ok(json) => Outcome::RejectedJson(Bytes::from(json)),
                Err(e) => Outcome::RaftError(pb::RaftError {
                    message: format!("{rejected} (not serializable: {e})"),
                    json: Bytes::new(),
                }),
            },
            Err(fatal) => Outcome::RaftError(raft_error_to_pb(&fatal)),
        };
        pb::TransferLeaderResponse {
            outcome: Some(outcome),
        }
    }

    pub fn transfer_response_from_pb(
        resp: pb::TransferLeaderResponse,
    ) -> Result<Result<TransferLeaderResponse<TypeConfig>, RemoteFatal>, ConvertError> {
        use pb::transfer_leader_response::Outcome;
        Ok(
            match resp
                .outcome
                .ok_or_else(|| ConvertError::missing("outcome"))?
            {
                Outcome::Accepted(_) => Ok(Ok(())),
                Outcome::RejectedJson(json) => {
                    let rejected: TransferLeaderError<TypeConfig> =
                        serde_json::from_slice(&json)
                            .map_err(|e| json_error("transfer leader error", e))?;
                    Ok(Err(rejected))
                }
                Outcome::RaftError(e) => Err(raft_error_from_pb(e)),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::alias::LeaderIdOf;
    use openraft::raft::TransferLeaderError;
    use openraft::{EntryPayload, Membership, StoredMembership};

    use super::convert::*;
    use super::*;
    use crate::raft::types::{Command, CommittedLeaderId, Entry, SnapshotMeta};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn log_id(term: u64, node_id: u64, index: u64) -> LogId {
        LogId {
            leader_id: CommittedLeaderId { term, node_id },
            index,
        }
    }

    fn vote(term: u64, node_id: u64, committed: bool) -> Vote {
        Vote {
            leader_id: LeaderIdOf::<TypeConfig> { term, node_id },
            committed,
        }
    }

    fn membership() -> Membership<NodeId, BasicNode> {
        let nodes: BTreeMap<NodeId, BasicNode> = [
            (1, BasicNode::new("raftmq-0.raftmq.default.svc:8081")),
            (2, BasicNode::new("raftmq-1.raftmq.default.svc:8081")),
            (3, BasicNode::new("raftmq-2.raftmq.default.svc:8081")),
            (4, BasicNode::new("10.0.0.4:8081")),
        ]
        .into_iter()
        .collect();
        let voters: BTreeSet<NodeId> = [1, 2, 3].into_iter().collect();
        Membership::new(vec![voters], nodes).expect("valid membership")
    }

    fn normal(term: u64, index: u64, kind: u8, data: &'static [u8]) -> Entry {
        Entry {
            log_id: log_id(term, 2, index),
            payload: EntryPayload::Normal(Command {
                kind,
                data: Bytes::from_static(data),
            }),
        }
    }

    fn roundtrip(entry: Entry) -> Entry {
        entry_from_pb(entry_to_pb(entry).expect("encode")).expect("decode")
    }

    #[test]
    fn log_id_and_vote_roundtrip() {
        let id = log_id(7, 3, u64::MAX);
        assert_eq!(log_id_from_pb(log_id_to_pb(&id)), id);
        for committed in [false, true] {
            let v = vote(9, 2, committed);
            assert_eq!(vote_from_pb(vote_to_pb(&v)), v);
        }
    }

    #[test]
    fn entry_roundtrip_blank_normal_membership() {
        let blank = Entry {
            log_id: log_id(1, 1, 0),
            payload: EntryPayload::Blank,
        };
        assert_eq!(roundtrip(blank.clone()), blank);

        let n = normal(3, 42, 3, b"hello messages");
        assert_eq!(roundtrip(n.clone()), n);
        let n = normal(3, 43, 255, b"");
        assert_eq!(roundtrip(n.clone()), n);

        let m = Entry {
            log_id: log_id(2, 1, 5),
            payload: EntryPayload::Membership(membership()),
        };
        assert_eq!(roundtrip(m.clone()), m);
    }

    #[test]
    fn normal_payload_is_not_copied_or_json() {
        let data = Bytes::from(vec![0xAB; 4096]);
        let entry = Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Normal(Command {
                kind: 3,
                data: data.clone(),
            }),
        };
        let pb = entry_to_pb(entry).expect("encode");
        match &pb.payload {
            Some(pb::entry::Payload::Normal(n)) => {
                assert_eq!(n.kind, 3);
                // Same buffer, not a copy.
                assert_eq!(n.data.as_ptr(), data.as_ptr());
            }
            other => panic!("unexpected payload {other:?}"),
        }
    }

    #[test]
    fn malformed_entries_are_rejected() {
        let mut pb = entry_to_pb(normal(1, 1, 3, b"x")).expect("encode");
        pb.payload = None;
        assert!(entry_from_pb(pb).is_err());

        let pb = pb::Entry {
            term: 1,
            node_id: 1,
            index: 1,
            payload: Some(pb::entry::Payload::Normal(pb::Normal {
                kind: 256,
                data: Bytes::new(),
            })),
        };
        assert!(entry_from_pb(pb).is_err());

        let pb = pb::Entry {
            term: 1,
            node_id: 1,
            index: 1,
            payload: Some(pb::entry::Payload::MembershipJson(Bytes::from_static(
                b"{not json",
            ))),
        };
        assert!(entry_from_pb(pb).is_err());

        // A voter that is not among the nodes.
        let json = br#"{"configs":[[1,2]],"nodes":{"1":{"addr":"a:1"}}}"#;
        let pb = pb::Entry {
            term: 1,
            node_id: 1,
            index: 1,
            payload: Some(pb::entry::Payload::MembershipJson(Bytes::from_static(json))),
        };
        let err = entry_from_pb(pb).expect_err("voter 2 has no node");
        assert!(err.to_string().contains("invalid membership"), "{err}");
    }

    fn append_request(
        prev: Option<LogId>,
        entries: Vec<Entry>,
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: vote(3, 2, true),
            prev_log_id: prev,
            entries,
            leader_commit: Some(log_id(3, 2, 4)),
        }
    }

    #[test]
    fn append_request_roundtrip() {
        for req in [
            append_request(None, vec![]),
            append_request(Some(log_id(2, 1, 4)), vec![]),
            append_request(
                Some(log_id(2, 1, 4)),
                vec![
                    Entry {
                        log_id: log_id(3, 2, 5),
                        payload: EntryPayload::Blank,
                    },
                    normal(3, 6, 3, b"a"),
                    Entry {
                        log_id: log_id(3, 2, 7),
                        payload: EntryPayload::Membership(membership()),
                    },
                ],
            ),
        ] {
            let back = append_request_from_pb(append_request_to_pb(req.clone()).expect("encode"))
                .expect("decode");
            assert_eq!(back.vote, req.vote);
            assert_eq!(back.prev_log_id, req.prev_log_id);
            assert_eq!(back.leader_commit, req.leader_commit);
            assert_eq!(back.entries, req.entries);
        }
    }

    #[test]
    fn append_request_validation() {
        let mut pb = append_request_to_pb(append_request(None, vec![])).expect("encode");
        pb.vote = None;
        assert!(append_request_from_pb(pb).is_err(), "missing vote");

        // Gap after prev_log_id.
        let req = append_request(Some(log_id(2, 1, 4)), vec![normal(3, 6, 3, b"a")]);
        let pb = append_request_to_pb(req).expect("encode");
        assert!(append_request_from_pb(pb).is_err());

        // Non-consecutive entries.
        let req = append_request(None, vec![normal(3, 1, 3, b"a"), normal(3, 3, 3, b"b")]);
        let pb = append_request_to_pb(req).expect("encode");
        assert!(append_request_from_pb(pb).is_err());

        // Index overflow.
        let req = append_request(Some(log_id(2, 1, u64::MAX)), vec![normal(3, 0, 3, b"a")]);
        let pb = append_request_to_pb(req).expect("encode");
        assert!(append_request_from_pb(pb).is_err());
    }

    #[test]
    fn append_response_roundtrip() {
        for resp in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::PartialSuccess(Some(log_id(3, 1, 9))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(vote(5, 3, false)),
        ] {
            let back = append_response_from_pb(append_response_to_pb(Ok(resp.clone())))
                .expect("decode")
                .expect("not an error");
            assert_eq!(back, resp);
        }
        let remote = append_response_from_pb(append_response_to_pb(Err(Fatal::Stopped)))
            .expect("decode")
            .expect_err("remote error");
        assert_eq!(remote.fatal, Some(Fatal::Stopped));
        assert!(append_response_from_pb(pb::AppendEntriesResponse { outcome: None }).is_err());
    }

    #[test]
    fn stream_result_roundtrip() {
        let results: Vec<StreamAppendResult<TypeConfig>> = vec![
            Ok(None),
            Ok(Some(log_id(4, 2, 100))),
            Err(StreamAppendError::Conflict(log_id(4, 2, 50))),
            Err(StreamAppendError::HigherVote(vote(6, 1, true))),
        ];
        for result in results {
            let back = stream_result_from_pb(stream_result_to_pb(Ok(result.clone())))
                .expect("decode")
                .expect("not an error");
            assert_eq!(back, result);
        }
        let remote = stream_result_from_pb(stream_result_to_pb(Err(Fatal::Panicked)))
            .expect("decode")
            .expect_err("remote error");
        assert_eq!(remote.fatal, Some(Fatal::Panicked));
    }

    #[test]
    fn vote_roundtrip() {
        let mut req = VoteRequest::new(vote(4, 1, false), Some(log_id(3, 2, 10)));
        req.leadership_transfer = true;
        assert_eq!(
            vote_request_from_pb(vote_request_to_pb(&req)).expect("decode"),
            req
        );
        let req = VoteRequest::new(vote(1, 1, false), None);
        assert_eq!(
            vote_request_from_pb(vote_request_to_pb(&req)).expect("decode"),
            req
        );
        assert!(vote_request_from_pb(pb::VoteRequest::default()).is_err());

        for resp in [
            VoteResponse::new(vote(4, 1, false), Some(log_id(3, 2, 10)), true),
            VoteResponse::new(vote(5, 3, true), None, false),
        ] {
            let back = vote_response_from_pb(vote_response_to_pb(Ok(resp.clone())))
                .expect("decode")
                .expect("not an error");
            assert_eq!(back, resp);
        }
        assert!(
            vote_response_from_pb(vote_response_to_pb(Err(Fatal::Stopped)))
                .expect("decode")
                .is_err()
        );
    }

    #[test]
    fn snapshot_header_and_response_roundtrip() {
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(3, 1, 77)),
            last_membership: StoredMembership::new(Some(log_id(1, 1, 0)), membership()),
        };
        let v = vote(3, 1, true);
        let (v2, meta2, total) =
            snapshot_header_from_pb(snapshot_header_to_pb(&v, &meta, 12345).expect("encode"))
                .expect("decode");
        assert_eq!((v2, meta2, total), (v, meta, 12345));

        let back = snapshot_response_from_pb(snapshot_response_to_pb(Ok(SnapshotResponse::new(v))))
            .expect("decode")
            .expect("not an error");
        assert_eq!(back, SnapshotResponse::new(v));
        assert!(snapshot_response_from_pb(pb::SnapshotResponse::default()).is_err());
    }

    #[test]
    fn transfer_leader_roundtrip() {
        let req =
            TransferLeaderRequest::<TypeConfig>::new(vote(3, 1, true), 2, Some(log_id(3, 1, 9)));
        assert_eq!(
            transfer_request_from_pb(transfer_request_to_pb(&req)).expect("decode"),
            req
        );
        let rejected: TransferLeaderResponse<TypeConfig> = Err(TransferLeaderError::VoteChanged {
            expected: vote(3, 1, true),
            actual: vote(4, 2, true),
        });
        for resp in [Ok(()), rejected] {
            let back = transfer_response_from_pb(transfer_response_to_pb(Ok(resp.clone())))
                .expect("decode")
                .expect("not an error");
            assert_eq!(back, resp);
        }
    }

    fn big_request(n: u64, entry_bytes: usize) -> pb::AppendEntriesRequest {
        let entries = (1..=n)
            .map(|i| Entry {
                log_id: log_id(2, 1, 10 + i),
                payload: EntryPayload::Normal(Command {
                    kind: 3,
                    data: Bytes::from(vec![i as u8; entry_bytes]),
                }),
            })
            .collect();
        append_request_to_pb(append_request(Some(log_id(1, 1, 10)), entries)).expect("encode")
    }

    #[test]
    fn split_keeps_small_requests_whole() {
        let req = big_request(10, 100);
        assert_eq!(split_append(req.clone(), 1 << 20), vec![req]);
        // A single entry larger than the limit still travels (alone).
        let req = big_request(1, 4096);
        assert_eq!(split_append(req.clone(), 1024), vec![req]);
    }

    #[test]
    fn split_chains_prev_log_ids_and_bounds_size() {
        use prost::Message;

        let req = big_request(20, 10_000);
        let max = 35_000;
        let parts = split_append(req.clone(), max);
        assert!(parts.len() >= 6, "{} parts", parts.len());
        let mut expected_prev = req.prev_log_id;
        let mut all = Vec::new();
        for part in &parts {
            assert!(part.encoded_len() <= max, "{} > {max}", part.encoded_len());
            assert_eq!(part.vote, req.vote);
            assert_eq!(part.leader_commit, req.leader_commit);
            assert_eq!(part.prev_log_id, expected_prev);
            // Each part decodes as a valid request on its own.
            append_request_from_pb(part.clone()).expect("valid part");
            let last = part.entries.last().expect("non-empty part");
            expected_prev = Some(pb::LogId {
                term: last.term,
                node_id: last.node_id,
                index: last.index,
            });
            all.extend(part.entries.iter().cloned());
        }
        assert_eq!(all, req.entries);
    }

    #[test]
    fn peer_uris() {
        assert_eq!(
            peer_uri("raftmq-1.raftmq.default.svc:8081"),
            "http://raftmq-1.raftmq.default.svc:8081"
        );
        assert_eq!(peer_uri("10.1.2.3:8081"), "http://10.1.2.3:8081");
        assert_eq!(peer_uri("[::1]:8081"), "http://[::1]:8081");
        assert_eq!(peer_uri("http://a:1"), "http://a:1");
        let config = GrpcNetworkConfig::default();
        for addr in [
            "raftmq-1.raftmq.default.svc:8081",
            "10.1.2.3:8081",
            "[::1]:8081",
        ] {
            peer_endpoint(addr, &config).expect(addr);
        }
        assert!(peer_endpoint("not a uri", &config).is_err());
    }

    fn option(ms: u64) -> RPCOption {
        RPCOption::new(Duration::from_millis(ms))
    }

    /// A port nothing listens on (bound, then released).
    fn closed_port_addr() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        addr.to_string()
    }

    #[tokio::test]
    async fn dead_peer_is_unreachable() {
        let mut factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());
        let node = BasicNode::new(closed_port_addr());
        // Creating clients does not connect, so it does not block on a dead peer.
        let mut net = tokio::time::timeout(Duration::from_secs(5), factory.new_client(2, &node))
            .await
            .expect("new_client must not block");
        let req = VoteRequest::new(vote(2, 1, false), None);
        let err = RaftNetworkV2::vote(&mut net, req, option(5_000))
            .await
            .expect_err("nobody listens");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");

        let req = append_request(None, vec![]);
        let err = RaftNetworkV2::append_entries(&mut net, req, option(5_000))
            .await
            .expect_err("nobody listens");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn bad_address_is_unreachable() {
        let mut factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());
        let mut net = factory
            .new_heartbeat_client(2, &BasicNode::new("not a uri"))
            .await;
        let req = VoteRequest::new(vote(2, 1, false), None);
        let err = RaftNetworkV2::vote(&mut net, req, option(1_000))
            .await
            .expect_err("bad address");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn silent_peer_times_out() {
        // Accepts TCP connections (kernel backlog) but never speaks HTTP/2.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let node = BasicNode::new(listener.local_addr().expect("addr").to_string());
        let factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());

        let mut control = factory.network(2, &node, Lane::Control);
        let req = VoteRequest::new(vote(2, 1, false), None);
        let err = tokio::time::timeout(
            Duration::from_secs(5),
            RaftNetworkV2::vote(&mut control, req, option(400)),
        )
        .await
        .expect("bounded by soft_ttl")
        .expect_err("no answer");
        assert!(matches!(err, RPCError::Timeout(_)), "{err:?}");

        let mut replication = factory.network(2, &node, Lane::Replication);
        let input = futures::stream::iter(vec![append_request(None, vec![])]);
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            RaftNetworkV2::stream_append(&mut replication, input, option(400)),
        )
        .await
        .expect("bounded by soft_ttl");
        assert!(
            matches!(result, Err(RPCError::Timeout(_))),
            "{:?}",
            result.err()
        );
    }

    /// openraft's backoff from an unreachable peer is a wait in the request stream before its
    /// first request: the stream must not connect before that request exists, or a dead peer
    /// is redialled in a hot loop.
    #[tokio::test]
    async fn stream_connects_only_once_a_request_is_there() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let node = BasicNode::new(listener.local_addr().expect("addr").to_string());
        let factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());
        let mut net = factory.network(2, &node, Lane::Replication);
        let (tx, rx) = futures::channel::mpsc::unbounded::<AppendEntriesRequest<TypeConfig>>();
        let opening = tokio::spawn(async move {
            let _ = RaftNetworkV2::stream_append(&mut net, rx, option(400)).await;
        });
        // Nothing to send yet (openraft is backing off): no connection is attempted.
        let early = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(early.is_err(), "connected before any request was there");
        // The first request opens the connection.
        tx.unbounded_send(append_request(None, vec![]))
            .expect("send");
        tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("connects once a request is there")
            .expect("accept");
        opening.abort();
    }

    #[tokio::test]
    async fn channels_are_cached_per_peer_and_lane() {
        let factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());
        let count = || factory.channels.lock().expect("lock").len();
        let node = BasicNode::new("127.0.0.1:1");
        let _ = factory.network(2, &node, Lane::Replication);
        assert_eq!(count(), 2, "replication + control");
        let _ = factory.network(2, &node, Lane::Control);
        let _ = factory.network(2, &node, Lane::Replication);
        assert_eq!(count(), 2, "reused");
        let _ = factory.network(2, &node, Lane::Snapshot);
        assert_eq!(count(), 3);
        let _ = factory.network(3, &node, Lane::Control);
        assert_eq!(count(), 4);
        // A changed address replaces the cached channel.
        let moved = BasicNode::new("127.0.0.1:2");
        let _ = factory.network(2, &moved, Lane::Snapshot);
        assert_eq!(count(), 4);
        let cached = factory.channels.lock().expect("lock");
        assert_eq!(cached[&(2, Lane::Snapshot)].addr, "127.0.0.1:2");
    }

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

    /// A fake peer whose `StreamAppend` answers each request with `script(request)` (no answer
    /// if `None`) and counts the requests it received.
    type Script =
        dyn Fn(&pb::AppendEntriesRequest) -> Option<pb::StreamAppendResponse> + Send + Sync;

    struct ScriptedPeer {
        script: Arc<Script>,
        received: Arc<AtomicU64>,
    }

    #[tonic::async_trait]
    impl pb::raft_service_server::RaftService for ScriptedPeer {
        async fn append_entries(
            &self,
            _: tonic::Request<pb::AppendEntriesRequest>,
        ) -> Result<tonic::Response<pb::AppendEntriesResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("scripted"))
        }

        type StreamAppendStream = std::pin::Pin<
            Box<dyn Stream<Item = Result<pb::StreamAppendResponse, tonic::Status>> + Send>,
        >;

        async fn stream_append(
            &self,
            request: tonic::Request<tonic::Streaming<pb::AppendEntriesRequest>>,
        ) -> Result<tonic::Response<Self::StreamAppendStream>, tonic::Status> {
            let script = self.script.clone();
            let received = self.received.clone();
            let responses = request
                .into_inner()
                .take_while(|r| futures::future::ready(r.is_ok()))
                .filter_map(move |r| {
                    received.fetch_add(1, Ordering::SeqCst);
                    let response = r.ok().and_then(|req| script(&req));
                    futures::future::ready(response.map(Ok))
                });
            Ok(tonic::Response::new(Box::pin(responses)))
        }

        async fn vote(
            &self,
            _: tonic::Request<pb::VoteRequest>,
        ) -> Result<tonic::Response<pb::VoteResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("scripted"))
        }

        async fn pre_vote(
            &self,
            _: tonic::Request<pb::VoteRequest>,
        ) -> Result<tonic::Response<pb::VoteResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("scripted"))
        }

        async fn install_snapshot(
            &self,
            _: tonic::Request<tonic::Streaming<pb::SnapshotChunk>>,
        ) -> Result<tonic::Response<pb::SnapshotResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("scripted"))
        }

        async fn transfer_leader(
            &self,
            _: tonic::Request<pb::TransferLeaderRequest>,
        ) -> Result<tonic::Response<pb::TransferLeaderResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("scripted"))
        }
    }

    struct Peer {
        node: BasicNode,
        received: Arc<AtomicU64>,
        server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    async fn scripted_peer(
        script: impl Fn(&pb::AppendEntriesRequest) -> Option<pb::StreamAppendResponse>
        + Send
        + Sync
        + 'static,
    ) -> Peer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let node = BasicNode::new(listener.local_addr().expect("addr").to_string());
        let received = Arc::new(AtomicU64::new(0));
        let service = pb::raft_service_server::RaftServiceServer::new(ScriptedPeer {
            script: Arc::new(script),
            received: received.clone(),
        });
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        Peer {
            node,
            received,
            server,
        }
    }

    fn flushed(req: &pb::AppendEntriesRequest) -> Option<pb::StreamAppendResponse> {
        let last = req
            .entries
            .last()
            .map(|e| pb::LogId {
                term: e.term,
                node_id: e.node_id,
                index: e.index,
            })
            .or(req.prev_log_id);
        Some(stream_result_to_pb(Ok(Ok(last.map(log_id_from_pb)))))
    }

    /// 3 entries of 10 KB each with a 16 KB budget: 3 wire requests (prev 10, 11, 12).
    fn three_chunk_request() -> AppendEntriesRequest<TypeConfig> {
        let entries = (11..=13)
            .map(|i| Entry {
                log_id: log_id(2, 1, i),
                payload: EntryPayload::Normal(Command {
                    kind: 3,
                    data: Bytes::from(vec![0; 10_000]),
                }),
            })
            .collect();
        append_request(Some(log_id(1, 1, 10)), entries)
    }

    fn small_append_config() -> GrpcNetworkConfig {
        GrpcNetworkConfig {
            max_append_bytes: 16 << 10,
            ..Default::default()
        }
    }

    async fn collect_stream(
        net: &mut GrpcNetwork,
        input: impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    ) -> Vec<Result<StreamAppendResult<TypeConfig>, RpcError>> {
        let stream = RaftNetworkV2::stream_append(net, input, option(4_000))
            .await
            .expect("stream opened");
        tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
            .await
            .expect("stream ends")
    }

    #[tokio::test]
    async fn stream_merges_split_requests() {
        let peer = scripted_peer(flushed).await;
        let factory = GrpcNetworkFactory::new(1, small_append_config());
        let mut net = factory.network(2, &peer.node, Lane::Replication);
        let input = futures::stream::iter(vec![
            three_chunk_request(),
            append_request(Some(log_id(2, 1, 13)), vec![]),
        ]);
        let results = collect_stream(&mut net, input).await;
        let results: Vec<_> = results
            .into_iter()
            .map(|r| r.expect("no rpc error"))
            .collect();
        assert_eq!(
            results,
            vec![Ok(Some(log_id(2, 1, 13))), Ok(Some(log_id(2, 1, 13)))],
            "one result per openraft request"
        );
        assert_eq!(
            peer.received.load(Ordering::SeqCst),
            4,
            "3 chunks + 1 heartbeat"
        );
        assert_eq!(factory.split_append_count(), 1);
    }

    #[tokio::test]
    async fn stream_reports_conflict_in_later_chunk_as_partial_progress() {
        // Accept the first chunk (prev 10), conflict on the second (prev 11).
        let peer = scripted_peer(|req| match req.prev_log_id.map(|p| p.index) {
            Some(10) => flushed(req),
            Some(_) => Some(stream_result_to_pb(Ok(Err(StreamAppendError::Conflict(
                log_id_from_pb(req.prev_log_id.unwrap_or_default()),
            ))))),
            None => None,
        })
        .await;
        let factory = GrpcNetworkFactory::new(1, small_append_config());
        let mut net = factory.network(2, &peer.node, Lane::Replication);
        let input = futures::stream::iter(vec![three_chunk_request()]);
        let results = collect_stream(&mut net, input).await;
        let results: Vec<_> = results
            .into_iter()
            .map(|r| r.expect("no rpc error"))
            .collect();
        assert_eq!(results, vec![Ok(Some(log_id(2, 1, 11)))]);
    }

    #[tokio::test]
    async fn stream_passes_through_first_chunk_errors_and_remote_fatal() {
        let higher = vote(9, 3, true);
        let peer = scripted_peer(move |_| {
            Some(stream_result_to_pb(Ok(Err(StreamAppendError::HigherVote(
                higher,
            )))))
        })
        .await;
        let factory = GrpcNetworkFactory::new(1, small_append_config());
        let mut net = factory.network(2, &peer.node, Lane::Replication);
        let results =
            collect_stream(&mut net, futures::stream::iter(vec![three_chunk_request()])).await;
        let results: Vec<_> = results
            .into_iter()
            .map(|r| r.expect("no rpc error"))
            .collect();
        assert_eq!(results, vec![Err(StreamAppendError::HigherVote(higher))]);

        let peer = scripted_peer(|_| Some(stream_result_to_pb(Err(Fatal::Stopped)))).await;
        let mut net = factory.network(3, &peer.node, Lane::Replication);
        let results =
            collect_stream(&mut net, futures::stream::iter(vec![three_chunk_request()])).await;
        assert_eq!(results.len(), 1);
        assert!(
            matches!(&results[0], Err(RPCError::Unreachable(_))),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn stream_times_out_only_while_requests_are_outstanding() {
        let ttl_option = option(400);
        let soft_ttl = ttl_option.soft_ttl();
        let peer = scripted_peer(|_| None).await;
        let factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());

        // Idle: no request sent, nothing outstanding, no timeout.
        let mut net = factory.network(2, &peer.node, Lane::Replication);
        let input = futures::stream::pending::<AppendEntriesRequest<TypeConfig>>();
        assert!(
            tokio::time::timeout(
                soft_ttl * 3,
                RaftNetworkV2::stream_append(&mut net, input, ttl_option.clone())
            )
            .await
            .is_err(),
            "an idle stream must not time out"
        );

        // A request the peer never answers: Timeout after about soft_ttl.
        let mut net = factory.network(2, &peer.node, Lane::Replication);
        let input = futures::stream::iter(vec![append_request(None, vec![])])
            .chain(futures::stream::pending());
        let mut stream = RaftNetworkV2::stream_append(&mut net, input, ttl_option)
            .await
            .expect("stream opened");
        let first = tokio::time::timeout(soft_ttl * 10, stream.next())
            .await
            .expect("bounded by soft_ttl")
            .expect("an item");
        assert!(matches!(first, Err(RPCError::Timeout(_))), "{first:?}");
        assert!(
            stream.next().await.is_none(),
            "the stream ends after an error"
        );
    }
}
