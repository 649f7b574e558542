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
    appends: u64,
}

/// The second field stands in for a slow disk: every third append keeps the log IO task busy
/// that long.
#[derive(Clone, Default)]
struct MemLog(Arc<Mutex<LogInner>>, Duration);

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
        let slow = {
            let mut inner = lock(&self.0);
            for entry in entries {
                inner.logs.insert(entry.log_id.index, entry);
            }
            inner.appends += 1;
            inner.appends % 3 == 0
        };
        if slow && !self.1.is_zero() {
            tokio::time::sleep(self.1).await;
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
        openraft::Snapshot<crate::raft::types::CommittedLeaderId, NodeId, BasicNode, SnapshotData>,
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
        Self::start_with_log(id, config, net, MemLog::default()).await
    }

    async fn start_with_log(
        id: NodeId,
        config: Arc<Config>,
        net: GrpcNetworkConfig,
        log: MemLog,
    ) -> TestNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let sm = MemSm::default();
        let network = GrpcNetworkFactory::new(id, net);
        let raft = Raft::new(id, config, network.clone(), log, sm.clone())
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
    start_cluster_with(n, test_config(), net, MemLog::default).await
}

/// `n` initialized nodes, each with a log from `log`.
async fn start_cluster_with(
    n: u64,
    config: Arc<Config>,
    net: GrpcNetworkConfig,
    log: impl Fn() -> MemLog,
) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(TestNode::start_with_log(id, config.clone(), net.clone(), log()).await);
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

/// Replication must survive streams that time out over and over: every third follower append
/// takes longer than the per-response timeout, so `StreamAppend` sessions keep ending in a
/// timeout and openraft keeps starting new ones. Every write still has to commit on every node
/// (the production symptom was a group that stopped committing for good after a burst of such
/// timeouts with multi-MiB entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replication_keeps_committing_through_stream_timeouts() {
    let config = Arc::new(
        Config {
            heartbeat_interval: 50,
            ..(*test_config()).clone()
        }
        .validate()
        .expect("valid config"),
    );
    let net = GrpcNetworkConfig {
        stream_response_timeout: Some(Duration::from_millis(15)),
        ..Default::default()
    };
    let slow_disk = Duration::from_millis(40);
    let nodes = start_cluster_with(3, config, net, || MemLog(Arc::default(), slow_disk)).await;
    let leader = wait_for_leader(&nodes).await;

    // 4 writers of 1 MiB entries, as the broker's batcher keeps up to 4 proposals in flight.
    const WRITERS: u32 = 4;
    const PER_WRITER: u32 = 15;
    let writers = (0..WRITERS).map(|w| {
        let node = &nodes[leader];
        async move {
            let mut last = 0;
            for i in 0..PER_WRITER {
                let mut data = vec![(w * 31 + i) as u8; 1 << 20];
                data[..8].copy_from_slice(&((u64::from(w) << 32) | u64::from(i)).to_be_bytes());
                last = tokio::time::timeout(WAIT, write(node, Bytes::from(data)))
                    .await
                    .unwrap_or_else(|_| panic!("writer {w}: write {i} not committed in {WAIT:?}"));
            }
            last
        }
    });
    let last = futures::future::join_all(writers)
        .await
        .into_iter()
        .max()
        .expect("writers");
    wait_applied(&nodes, last).await;
    let expected = nodes[leader].sm.applied();
    assert_eq!(expected.len(), (WRITERS * PER_WRITER) as usize);
    for n in &nodes {
        assert_eq!(n.sm.applied(), expected, "node {} diverged", n.id);
    }
    assert!(
        nodes[leader].network.stream_timeout_count() > 0,
        "the test's premise: replication streams timed out"
    );
    stop_all(nodes).await;
}
