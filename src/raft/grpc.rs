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
                        Ok(rpc) => Some((rpc, Some(inbound))),
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
        let responses = self
            .raft
            .stream_append(input)
            .map(|result| Ok(convert::stream_result_to_pb(result)));
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
mod tests {
    //! End-to-end tests: real openraft nodes talking over tonic on 127.0.0.1, with a small
    //! in-memory log store and state machine written here (the CommitLog-backed store is
    //! tested separately).

    use std::collections::BTreeMap;
    use std::fmt::Debug;
    use std::io;
    use std::ops::RangeBounds;
    use std::sync::Arc;

    use bytes::Bytes;
    use openraft::storage::{
        EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder,
    };
    use openraft::{BasicNode, Config, EntryPayload, OptionalSend, SnapshotPolicy};
    use openraft::{RaftNetworkFactory, RaftNetworkV2};
    use serde::{Deserialize, Serialize};
    use tokio::sync::oneshot;
    use tonic::transport::server::TcpIncoming;

    use super::*;
    use crate::raft::network::{GrpcNetworkConfig, GrpcNetworkFactory};
    use crate::raft::types::{
        Command, CommandResponse, Entry, LogId, NodeId, SnapshotMeta, StoredMembership, Vote,
    };

    const WAIT: Duration = Duration::from_secs(30);

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- in-memory log store ------------------------------------------------------------

    #[derive(Default)]
    struct LogInner {
        vote: Option<Vote>,
        committed: Option<LogId>,
        last_purged: Option<LogId>,
        logs: BTreeMap<u64, Entry>,
    }

    #[derive(Clone, Default)]
    struct MemLog(Arc<Mutex<LogInner>>);

    impl RaftLogReader<TypeConfig> for MemLog {
        async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
            &mut self,
            range: RB,
        ) -> io::Result<Vec<Entry>> {
            Ok(lock(&self.0)
                .logs
                .range(range)
                .map(|(_, e)| e.clone())
                .collect())
        }

        async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
            Ok(lock(&self.0).vote)
        }
    }

    impl RaftLogStorage<TypeConfig> for MemLog {
        type LogReader = MemLog;

        async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
            let inner = lock(&self.0);
            let last = inner.logs.values().next_back().map(|e| e.log_id);
            Ok(LogState {
                last_purged_log_id: inner.last_purged,
                last_log_id: last.or(inner.last_purged),
            })
        }

        async fn get_log_reader(&mut self) -> MemLog {
            self.clone()
        }

        async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
            lock(&self.0).vote = Some(*vote);
            Ok(())
        }

        async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
            lock(&self.0).committed = committed;
            Ok(())
        }

        async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
            Ok(lock(&self.0).committed)
        }

        async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
        where
            I: IntoIterator<Item = Entry> + OptionalSend,
            I::IntoIter: OptionalSend,
        {
            {
                let mut inner = lock(&self.0);
                for entry in entries {
                    inner.logs.insert(entry.log_id.index, entry);
                }
            }
            callback.io_completed(Ok(()));
            Ok(())
        }

        async fn truncate_after(&mut self, last: Option<LogId>) -> io::Result<()> {
            let from = last.map_or(0, |l| l.index + 1);
            lock(&self.0).logs.split_off(&from);
            Ok(())
        }

        async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
            let mut inner = lock(&self.0);
            inner.last_purged = Some(log_id);
            inner.logs = inner.logs.split_off(&(log_id.index + 1));
            Ok(())
        }
    }

    // ---- in-memory state machine: the list of applied command payloads -------------------

    #[derive(Default)]
    struct SmInner {
        last_applied: Option<LogId>,
        membership: StoredMembership,
        applied: Vec<Bytes>,
        snapshot: Option<(SnapshotMeta, Vec<u8>)>,
        installed_snapshots: usize,
    }

    #[derive(Clone, Default)]
    struct MemSm(Arc<Mutex<SmInner>>);

    #[derive(Serialize, Deserialize)]
    struct SmImage {
        applied: Vec<Bytes>,
    }

    impl MemSm {
        fn applied(&self) -> Vec<Bytes> {
            lock(&self.0).applied.clone()
        }

        fn installed_snapshots(&self) -> usize {
            lock(&self.0).installed_snapshots
        }
    }

    impl RaftSnapshotBuilder<TypeConfig> for MemSm {
        type SnapshotData = SnapshotData;

        async fn build_snapshot(
            &mut self,
        ) -> io::Result<
            openraft::Snapshot<
                crate::raft::types::CommittedLeaderId,
                NodeId,
                BasicNode,
                SnapshotData,
            >,
        > {
            let mut inner = lock(&self.0);
            let image = SmImage {
                applied: inner.applied.clone(),
            };
            let data = serde_json::to_vec(&image).map_err(io::Error::other)?;
            let meta = SnapshotMeta {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
            };
            inner.snapshot = Some((meta.clone(), data.clone()));
            Ok(openraft::Snapshot {
                meta,
                snapshot: Cursor::new(data),
            })
        }
    }

    impl RaftStateMachine<TypeConfig> for MemSm {
        type SnapshotData = SnapshotData;
        type SnapshotBuilder = MemSm;

        async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
            let inner = lock(&self.0);
            Ok((inner.last_applied, inner.membership.clone()))
        }

        async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
        where
            Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
        {
            while let Some(item) = entries.next().await {
                let (entry, responder) = item?;
                {
                    let mut inner = lock(&self.0);
                    match entry.payload {
                        EntryPayload::Blank => {}
                        EntryPayload::Normal(command) => inner.applied.push(command.data),
                        EntryPayload::Membership(m) => {
                            inner.membership = StoredMembership::new(Some(entry.log_id), m);
                        }
                    }
                    inner.last_applied = Some(entry.log_id);
                }
                if let Some(responder) = responder {
                    responder.send(CommandResponse {
                        index: entry.log_id.index,
                        data: Bytes::new(),
                    });
                }
            }
            Ok(())
        }

        async fn get_snapshot_builder(&mut self) -> MemSm {
            self.clone()
        }

        async fn install_snapshot(
            &mut self,
            meta: &SnapshotMeta,
            snapshot: SnapshotData,
        ) -> io::Result<()> {
            let data = snapshot.into_inner();
            let image: SmImage = serde_json::from_slice(&data).map_err(io::Error::other)?;
            let mut inner = lock(&self.0);
            inner.applied = image.applied;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.snapshot = Some((meta.clone(), data));
            inner.installed_snapshots += 1;
            Ok(())
        }

        async fn get_current_snapshot(
            &mut self,
        ) -> io::Result<
            Option<
                openraft::Snapshot<
                    crate::raft::types::CommittedLeaderId,
                    NodeId,
                    BasicNode,
                    SnapshotData,
                >,
            >,
        > {
            Ok(lock(&self.0)
                .snapshot
                .clone()
                .map(|(meta, data)| openraft::Snapshot {
                    meta,
                    snapshot: Cursor::new(data),
                }))
        }
    }

    // ---- test cluster -------------------------------------------------------------------

    struct TestNode {
        id: NodeId,
        addr: String,
        raft: Raft<TypeConfig, MemSm>,
        sm: MemSm,
        network: GrpcNetworkFactory,
        stop_server: Option<oneshot::Sender<()>>,
        server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    }

    impl TestNode {
        async fn start(id: NodeId, config: Arc<Config>, net: GrpcNetworkConfig) -> TestNode {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("local addr").to_string();
            let sm = MemSm::default();
            let network = GrpcNetworkFactory::new(id, net);
            let raft = Raft::new(id, config, network.clone(), MemLog::default(), sm.clone())
                .await
                .expect("raft");
            let (stop_server, stopped) = oneshot::channel::<()>();
            let service = RaftGrpcService::new(raft.clone()).into_server();
            let server = tokio::spawn(
                configure_server(tonic::transport::Server::builder())
                    .add_service(service)
                    .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                        let _ = stopped.await;
                    }),
            );
            TestNode {
                id,
                addr,
                raft,
                sm,
                network,
                stop_server: Some(stop_server),
                server,
            }
        }

        fn node(&self) -> BasicNode {
            BasicNode::new(&self.addr)
        }

        async fn stop(self) {
            stop_all(vec![self]).await;
        }
    }

    fn test_config() -> Arc<Config> {
        let config = Config {
            cluster_name: "raftmq-grpc-test".to_string(),
            heartbeat_interval: 200,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            install_snapshot_timeout: 5000,
            enable_pre_vote: Some(true),
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            ..Default::default()
        };
        Arc::new(config.validate().expect("valid config"))
    }

    async fn start_cluster(n: u64, net: GrpcNetworkConfig) -> Vec<TestNode> {
        let config = test_config();
        let mut nodes = Vec::new();
        for id in 1..=n {
            nodes.push(TestNode::start(id, config.clone(), net.clone()).await);
        }
        let members: BTreeMap<NodeId, BasicNode> = nodes.iter().map(|n| (n.id, n.node())).collect();
        nodes[0].raft.initialize(members).await.expect("initialize");
        nodes
    }

    async fn wait_for_leader(nodes: &[TestNode]) -> usize {
        let metrics = nodes[0]
            .raft
            .wait(Some(WAIT))
            .metrics(|m| m.current_leader.is_some(), "a leader is elected")
            .await
            .expect("leader");
        let leader = metrics.current_leader.expect("leader id");
        let i = nodes
            .iter()
            .position(|n| n.id == leader)
            .expect("leader node");
        nodes[i]
            .raft
            .wait(Some(WAIT))
            .leader_with_quorum_acked(None, "leader holds a lease")
            .await
            .expect("leader lease");
        i
    }

    async fn write(node: &TestNode, data: Bytes) -> u64 {
        let response = node
            .raft
            .client_write(Command::messages(data))
            .await
            .expect("client_write");
        response.log_id.index
    }

    async fn wait_applied(nodes: &[TestNode], index: u64) {
        for n in nodes {
            n.raft
                .wait(Some(WAIT))
                .applied_index_at_least(Some(index), format!("node {} applied", n.id))
                .await
                .expect("applied");
        }
    }

    /// Stops the Rafts first and drops every client channel, so that the servers' graceful
    /// shutdown does not wait for peers' long-lived connections.
    async fn stop_all(nodes: Vec<TestNode>) {
        let mut servers = Vec::new();
        for node in &nodes {
            node.raft.shutdown().await.expect("raft shutdown");
        }
        for node in nodes {
            let TestNode {
                raft,
                network,
                stop_server,
                server,
                ..
            } = node;
            drop((raft, network));
            if let Some(stop) = stop_server {
                let _ = stop.send(());
            }
            servers.push(server);
        }
        for server in servers {
            tokio::time::timeout(WAIT, server)
                .await
                .expect("server stops")
                .expect("server task")
                .expect("server result");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_nodes_replicate_over_grpc_with_split_appends() {
        // Tiny per-request budget so batched replication requests get split.
        let net = GrpcNetworkConfig {
            max_append_bytes: 8 << 10,
            ..Default::default()
        };
        let nodes = start_cluster(3, net).await;
        let leader = wait_for_leader(&nodes).await;

        let writes = (0..100u32).map(|i| {
            let mut data = vec![(i % 251) as u8; 3000];
            data[..4].copy_from_slice(&i.to_be_bytes());
            write(&nodes[leader], Bytes::from(data))
        });
        let last = futures::future::join_all(writes)
            .await
            .into_iter()
            .max()
            .expect("writes");
        wait_applied(&nodes, last).await;

        let expected = nodes[leader].sm.applied();
        assert_eq!(expected.len(), 100);
        for n in &nodes {
            assert_eq!(n.sm.applied(), expected, "node {} diverged", n.id);
        }
        assert!(
            nodes[leader].network.split_append_count() > 0,
            "expected some AppendEntries requests to be split"
        );
        stop_all(nodes).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn transfer_leader_over_grpc() {
        let nodes = start_cluster(3, GrpcNetworkConfig::default()).await;
        let leader = wait_for_leader(&nodes).await;
        let index = write(&nodes[leader], Bytes::from_static(b"before")).await;
        wait_applied(&nodes, index).await;

        let target = (leader + 1) % nodes.len();
        let target_id = nodes[target].id;
        nodes[leader]
            .raft
            .trigger()
            .transfer_leader(target_id)
            .await
            .expect("transfer");
        nodes[target]
            .raft
            .wait(Some(WAIT))
            .leader_with_quorum_acked(None, "transfer target becomes leader")
            .await
            .expect("new leader");
        for n in &nodes {
            n.raft
                .wait(Some(WAIT))
                .current_leader(target_id, "everyone follows the new leader")
                .await
                .expect("follows");
        }
        let index = write(&nodes[target], Bytes::from_static(b"after")).await;
        wait_applied(&nodes, index).await;
        for n in &nodes {
            assert_eq!(
                n.sm.applied(),
                vec![Bytes::from_static(b"before"), Bytes::from_static(b"after")]
            );
        }
        stop_all(nodes).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn learner_catches_up_from_snapshot_over_grpc() {
        let net = GrpcNetworkConfig::default();
        let mut nodes = start_cluster(3, net.clone()).await;
        let leader = wait_for_leader(&nodes).await;
        let mut last = 0;
        for i in 0..20u32 {
            last = write(&nodes[leader], Bytes::from(format!("message-{i}"))).await;
        }
        wait_applied(&nodes, last).await;

        // Snapshot and purge everything on the leader, so a new node can only be caught up
        // by InstallSnapshot.
        let l = &nodes[leader].raft;
        l.trigger().snapshot().await.expect("snapshot");
        l.wait(Some(WAIT))
            .metrics(
                |m| m.snapshot.map(|s| s.index) >= Some(last),
                "snapshot built",
            )
            .await
            .expect("snapshot built");
        l.trigger().purge_log(last).await.expect("purge");
        l.wait(Some(WAIT))
            .metrics(|m| m.purged.map(|p| p.index) == Some(last), "logs purged")
            .await
            .expect("purged");

        let learner = TestNode::start(4, test_config(), net).await;
        nodes[leader]
            .raft
            .add_learner(learner.id, learner.node(), true)
            .await
            .expect("add learner");
        let index = write(&nodes[leader], Bytes::from_static(b"after-snapshot")).await;
        nodes.push(learner);
        wait_applied(&nodes, index).await;

        let learner = &nodes[3];
        assert_eq!(learner.sm.installed_snapshots(), 1);
        assert_eq!(learner.sm.applied(), nodes[leader].sm.applied());
        assert_eq!(learner.sm.applied().len(), 21);
        stop_all(nodes).await;
    }

    fn raw_client(addr: &str) -> RaftServiceClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_lazy();
        RaftServiceClient::new(channel)
    }

    use pb::raft_service_client::RaftServiceClient;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_requests_are_invalid_argument() {
        let node = TestNode::start(1, test_config(), GrpcNetworkConfig::default()).await;
        let mut client = raw_client(&node.addr);

        let status = client
            .append_entries(pb::AppendEntriesRequest::default())
            .await
            .expect_err("no vote");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

        let vote = Some(pb::Vote {
            term: 1,
            node_id: 2,
            committed: true,
        });
        let request = pb::AppendEntriesRequest {
            vote,
            entries: vec![pb::Entry {
                term: 1,
                node_id: 2,
                index: 1,
                payload: None,
            }],
            ..Default::default()
        };
        let status = client
            .append_entries(request)
            .await
            .expect_err("no payload");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

        let status = client
            .vote(pb::VoteRequest::default())
            .await
            .expect_err("no vote");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        let status = client
            .transfer_leader(pb::TransferLeaderRequest::default())
            .await
            .expect_err("no vote");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

        // A malformed request in the middle of a StreamAppend: the stream fails with
        // INVALID_ARGUMENT after answering the good request before it.
        let good = pb::AppendEntriesRequest {
            vote,
            ..Default::default()
        };
        let requests = futures::stream::iter(vec![good, pb::AppendEntriesRequest::default()]);
        let mut responses = client
            .stream_append(requests)
            .await
            .expect("stream opened")
            .into_inner();
        let first = responses.message().await.expect("first response");
        assert!(first.is_some());
        let status = loop {
            match responses.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without an error"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

        node.stop().await;
    }

    fn chunk(c: pb::snapshot_chunk::Chunk) -> pb::SnapshotChunk {
        pb::SnapshotChunk { chunk: Some(c) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_snapshot_streams_are_rejected() {
        let node = TestNode::start(1, test_config(), GrpcNetworkConfig::default()).await;
        let mut client = raw_client(&node.addr);
        let meta = SnapshotMeta::default();
        let header = |total| {
            let vote = Vote {
                leader_id: openraft::alias::LeaderIdOf::<TypeConfig> {
                    term: 1,
                    node_id: 2,
                },
                committed: true,
            };
            chunk(pb::snapshot_chunk::Chunk::Header(
                network::convert::snapshot_header_to_pb(&vote, &meta, total).expect("header"),
            ))
        };
        let data = |b: &'static [u8]| chunk(pb::snapshot_chunk::Chunk::Data(Bytes::from_static(b)));

        let cases: Vec<(Vec<pb::SnapshotChunk>, tonic::Code)> = vec![
            (vec![], tonic::Code::InvalidArgument),
            (vec![data(b"x")], tonic::Code::InvalidArgument),
            (vec![header(4), data(b"ab")], tonic::Code::InvalidArgument),
            (vec![header(1), data(b"ab")], tonic::Code::InvalidArgument),
            (vec![header(1), header(1)], tonic::Code::InvalidArgument),
            (vec![header(u64::MAX)], tonic::Code::ResourceExhausted),
        ];
        for (chunks, code) in cases {
            let status = client
                .install_snapshot(futures::stream::iter(chunks))
                .await
                .expect_err("rejected");
            assert_eq!(status.code(), code, "{status}");
        }
        node.stop().await;
    }

    use crate::raft::network;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remote_raft_error_is_returned_as_data() {
        let node = TestNode::start(1, test_config(), GrpcNetworkConfig::default()).await;
        node.raft.shutdown().await.expect("shutdown");

        // The server is up but its Raft has stopped: the error comes back inside an OK reply.
        let mut client = raw_client(&node.addr);
        let request = pb::VoteRequest {
            vote: Some(pb::Vote {
                term: 5,
                node_id: 2,
                committed: false,
            }),
            ..Default::default()
        };
        let response = client.vote(request).await.expect("OK status").into_inner();
        let error = response.error.expect("raft error");
        assert!(error.message.contains("stopped"), "{}", error.message);

        // The client maps it to Unreachable carrying the remote error.
        let mut factory = GrpcNetworkFactory::new(2, GrpcNetworkConfig::default());
        let mut net = factory.new_client(1, &node.node()).await;
        let vote = Vote {
            leader_id: openraft::alias::LeaderIdOf::<TypeConfig> {
                term: 5,
                node_id: 2,
            },
            committed: false,
        };
        let err = RaftNetworkV2::vote(
            &mut net,
            openraft::raft::VoteRequest::new(vote, None),
            openraft::network::RPCOption::new(Duration::from_secs(5)),
        )
        .await
        .expect_err("remote stopped");
        assert!(
            matches!(err, openraft::errors::RPCError::Unreachable(_)),
            "{err:?}"
        );
        assert!(err.to_string().contains("remote peer 1"), "{err}");
        node.stop().await;
    }
}
