//! One broker node: the CommitLog-backed log store, the dispatching state machine, openraft,
//! and one gRPC port carrying the Raft transport and the admin service.
//!
//! With `http_listen` set, a second port serves HTTP (HTTPS when TLS is configured):
//! `/healthz`, `/readyz`, `/raftz` and Prometheus `/metrics` (see [`super::http`]).
//!
//! Start-up is idempotent: every node of a new group calls `initialize` with the same member
//! list (which openraft turns into the same membership entry at index 0 on each), and a node
//! whose log or vote is not empty is never re-initialised, so restarting any or all nodes
//! needs no manual step.

use openraft::type_config::async_runtime::watch::WatchReceiver;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::error::BrokerError;
use crate::raft::grpc::{RaftGrpcService, configure_server};
use crate::raft::log_store::LogStore;
use crate::raft::network::{GrpcNetworkConfig, GrpcNetworkFactory};
use crate::raft::state_machine::{SmHandle, StateMachine};
use crate::raft::{NodeId, TypeConfig};
use crate::storage::{CommitLog, CommitLogConfig, FlushMode};

/// How long a replication stream may go without a follower's answer while entries are
/// outstanding before the leader abandons it and sends them again on a new stream.
/// openraft's default (3/4 of the heartbeat, 37.5 ms) is shorter than a follower's fsync of a
/// few MiB on an ordinary disk, and each expiry resends every unanswered entry. A follower
/// that is really gone is noticed by HTTP/2 keepalive, and elections and leader leases use
/// the heartbeat lane, so a longer wait here delays neither.
const REPLICATION_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of one broker node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Broker group name.
    pub group: String,
    /// This node's id (a key of `peers`, or a new node joining as learner).
    pub node_id: NodeId,
    /// Address to bind the gRPC port to.
    pub listen: SocketAddr,
    /// Address other nodes and clients use to reach this node (default: `peers[node_id]`).
    pub advertise: String,
    /// The initial members: node id → `host:port`. Empty for a node that joins later.
    pub peers: BTreeMap<NodeId, String>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// CommitLog durability.
    pub flush: FlushMode,
    /// CommitLog segment size in bytes.
    pub segment_size: u64,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Raft election timeout range (min; max is 1.5 × min).
    pub election_timeout: Duration,
    /// Delete whole segments older than this (None = keep by age).
    pub retention_time: Option<Duration>,
    /// Delete the oldest whole segments while the log is larger than this (None = no limit).
    pub retention_bytes: Option<u64>,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// Nameserver addresses (`host:port`) this node registers with and heartbeats to.
    pub nameservers: Vec<String>,
    /// Address to bind the HTTP port to (health, readiness, Raft status, Prometheus
    /// metrics); `None` = no HTTP port.
    pub http_listen: Option<SocketAddr>,
    /// Largest delay a delay message may ask for (later delivery times are refused with
    /// ILLEGAL_DELIVERY_TIME).
    pub max_delay: Duration,
    /// A transaction half message with no EndTransaction for this long is checked back
    /// through a producer's Telemetry stream, then again every interval.
    pub transaction_check_interval: Duration,
    /// After this many unanswered check-backs a half message is discarded.
    pub transaction_max_checks: u32,
    /// TLS on the gRPC port and mutual TLS on every channel to other members and to the
    /// nameservers; `None` = plaintext.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Access control (off by default).
    pub acl: super::auth::AclConfig,
}

impl NodeConfig {
    /// Defaults for a node; callers fill in the identity fields.
    pub fn new(group: &str, node_id: NodeId, listen: SocketAddr, data_dir: PathBuf) -> Self {
        NodeConfig {
            group: group.to_string(),
            node_id,
            listen,
            advertise: listen.to_string(),
            peers: BTreeMap::new(),
            data_dir,
            flush: FlushMode::Sync,
            segment_size: 1 << 30,
            // A follower starts an election once the leader lease (the maximum election
            // timeout) and then its own election timeout have passed without a heartbeat:
            // 225 ms + 150-225 ms here, so a dead or frozen leader is replaced ~0.4-0.45 s
            // after its last heartbeat and the longest pause official clients see stays
            // well under a second. (250 ms, the earlier default, meant 0.625-0.75 s.)
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(150),
            retention_time: None,
            retention_bytes: None,
            retention_interval: Duration::from_secs(10),
            max_delay: Duration::from_secs(24 * 3600),
            transaction_check_interval: Duration::from_secs(30),
            transaction_max_checks: 15,
            nameservers: Vec::new(),
            tls: None,
            acl: Default::default(),
            http_listen: None,
        }
    }

    /// Check the settings before anything is opened.
    pub fn validate(&self) -> Result<(), BrokerError> {
        if self.group.is_empty()
            || !self
                .group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(BrokerError::Config(format!(
                "group: `{}` must be non-empty and use only letters, digits, `-` and `_`",
                self.group
            )));
        }
        if !self.peers.is_empty() && !self.peers.contains_key(&self.node_id) {
            return Err(BrokerError::Config(format!(
                "peers: node id {} is not in the peer list {:?}",
                self.node_id,
                self.peers.keys().collect::<Vec<_>>()
            )));
        }
        if self.heartbeat.is_zero() || self.election_timeout < self.heartbeat * 3 {
            return Err(BrokerError::Config(
                "election timeout must be at least 3 heartbeat intervals".into(),
            ));
        }
        Ok(())
    }

    fn raft_config(&self) -> Result<Config, BrokerError> {
        let min = self.election_timeout.as_millis() as u64;
        let cfg = Config {
            cluster_name: self.group.clone(),
            heartbeat_interval: self.heartbeat.as_millis() as u64,
            // openraft's leader lease is `election_timeout_max`: a follower refuses votes
            // until that long after the last heartbeat, and its own election timer runs
            // only after the lease (it fires at lease + a timeout drawn from the range), so
            // a dead leader is replaced at 2.5-3× the minimum. Pre-vote costs one round trip
            // more and keeps a node that cannot win from raising the term: without it a
            // restarted node (its vote is not leased) campaigns at once, is refused, and its
            // higher term then deposes the live leader at the next append, a needless pause
            // for clients on every restart.
            election_timeout_min: min,
            election_timeout_max: min + min / 2,
            enable_pre_vote: Some(true),
            // Snapshots are built only at the retention boundary (see `state_machine`), never
            // on a log-count policy: a snapshot past that boundary would let a lagging follower
            // skip live messages.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            // A restarted leader must win a new election, never resume its old term: its log
            // may have lost a torn tail that followers already hold (openraft commits on a
            // quorum of followers before the leader's own flush), and resuming the term
            // would hand the same index to a different entry. Found by the chaos suite.
            enable_leader_restore: Some(false),
            // A follower that lost a torn tail (a crash during its write) reports a shorter
            // log than it had acknowledged. openraft's default treats that as impossible and
            // panics the leader's core; with this the leader resets that follower's progress
            // and re-replicates, which is safe because a quorum still holds every committed
            // entry. Found by the chaos suite (torn tail on a follower).
            allow_log_reversion: Some(true),
            ..Default::default()
        };
        cfg.validate()
            .map_err(|e| BrokerError::Config(format!("raft: {e}")))
    }
}

/// Parse `1=host:port,2=host:port`. Hosts may be DNS names with dashes and dots (Kubernetes
/// pod names), IPv4 addresses or bracketed IPv6 addresses.
pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, String>, BrokerError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| BrokerError::Config(format!("peers: `{part}` is not ID=HOST:PORT")))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| BrokerError::Config(format!("peers: node id `{id}` is not a number")))?;
        let addr = addr.trim();
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| BrokerError::Config(format!("peers: `{addr}` has no :PORT")))?;
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        };
        if !host_ok {
            return Err(BrokerError::Config(format!(
                "peers: `{host}` is not a host name or address"
            )));
        }
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(BrokerError::Config(format!(
                "peers: `{port}` is not a port"
            )));
        }
        if out.insert(id, addr.to_string()).is_some() {
            return Err(BrokerError::Config(format!(
                "peers: node id {id} appears twice"
            )));
        }
    }
    Ok(out)
}

/// The tracing span of one gRPC request: the RPC, and for RocketMQ clients their
/// `x-mq-client-id` and `x-mq-request-id`, so every log line a request causes names the client.
/// Raft traffic gets no span (it is constant and carries no client).
pub fn request_span(req: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let path = req.uri().path();
    if path.starts_with("/raftmq.raft.") {
        return tracing::Span::none();
    }
    // Borrowed, not copied: this runs for every request.
    let header = |k: &str| {
        req.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    tracing::info_span!(
        "request",
        rpc = %path.rsplit('/').next().unwrap_or(path),
        client_id = %header("x-mq-client-id"),
        request_id = %header("x-mq-request-id"),
    )
}

/// A running node.
pub struct Node {
    /// The configuration it runs with.
    pub config: NodeConfig,
    /// openraft handle.
    pub raft: Raft<TypeConfig, StateMachine>,
    /// Read side of the state machine (topics, queues, offsets).
    pub sm: SmHandle,
    /// The CommitLog.
    pub log: Arc<CommitLog>,
    /// Address the gRPC port is bound to.
    pub local_addr: SocketAddr,
    /// Address the HTTP port is bound to (`None` without `http_listen`).
    pub http_addr: Option<SocketAddr>,
    /// Term of the vote this process started with (terms above it began while it ran).
    pub(crate) start_term: u64,
    pub(crate) forwarder: super::ops::Forwarder,
    /// Clients connected to this node (Telemetry streams, auto-renewed deliveries).
    pub(crate) sessions: Arc<super::sessions::Sessions>,
    /// Group commit of produce requests (set right after start).
    pub(crate) batcher: std::sync::OnceLock<super::batcher::Batcher>,
    /// Group commit of internal commands (deliveries, acks, ...): see `command_batcher`.
    pub(crate) command_batcher: std::sync::OnceLock<super::command_batcher::CommandBatcher>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Set when a graceful leave begins (see [`super::leave`]).
    pub(crate) leaving: std::sync::atomic::AtomicBool,
    /// The gRPC server task (drained on a graceful leave, aborted by `shutdown`).
    server: std::sync::Mutex<Option<JoinHandle<()>>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl Node {
    /// Open storage, start Raft and serve the gRPC port. Returns once the port is bound.
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, BrokerError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            BrokerError::Config(format!("data-dir {}: {e}", config.data_dir.display()))
        })?;
        let mut lc = CommitLogConfig::new(&config.data_dir);
        lc.flush = config.flush;
        lc.segment_size = config.segment_size;
        if config.http_listen.is_some() {
            // Before anything is applied, so no counter increment is lost.
            super::http::install_recorder();
        }
        // Start-up phases are logged (target `raftmq::startup`) with their durations: what a
        // restart spends where (`raftmq-bench restart` reads these lines).
        let started = std::time::Instant::now();
        let store = LogStore::open(lc)?;
        let log = store.commitlog();
        {
            let r = store.recovery_report();
            tracing::info!(
                target: "raftmq::startup",
                "storage opened in {:.1} ms: {} segments, {} records scanned{}, log {}..{}, write position {}",
                started.elapsed().as_secs_f64() * 1e3,
                r.segments,
                r.records_scanned,
                if r.index_rebuilt { " (index rebuilt)" } else { "" },
                log.first_index()?,
                log.next_index()?,
                log.write_pos()?
            );
        }
        let phase = std::time::Instant::now();
        let (sm, handle) = StateMachine::open(&config.data_dir, Arc::clone(&log))?;
        let checkpoint = handle.last_applied().map(|l| l.index);
        let committed = store
            .meta()
            .map_err(|e| BrokerError::Internal(format!("raft metadata: {e}")))?
            .committed
            .map(|l| l.index);
        tracing::info!(
            target: "raftmq::startup",
            "state machine opened in {:.1} ms: checkpoint at index {}, committed index {}, {} entries to re-apply",
            phase.elapsed().as_secs_f64() * 1e3,
            checkpoint.map_or_else(|| "none".into(), |i| i.to_string()),
            committed.map_or_else(|| "none".into(), |i| i.to_string()),
            committed.map_or(0, |c| checkpoint.map_or(c + 1, |a| c.saturating_sub(a)))
        );
        // Only entries this process proposes count as messages stored by this node (see
        // `SmHandle::count_messages_of`).
        let start_term = store
            .meta()
            .map_err(|e| BrokerError::Internal(format!("raft metadata: {e}")))?
            .vote
            .map_or(0, |v| v.leader_id.term);
        handle.count_messages_of(config.node_id, start_term, log.next_index()?);
        let raft_cfg = Arc::new(config.raft_config()?);
        let network = GrpcNetworkFactory::new(
            config.node_id,
            GrpcNetworkConfig {
                tls: config.tls.clone(),
                stream_response_timeout: Some(REPLICATION_RESPONSE_TIMEOUT),
                ..GrpcNetworkConfig::default()
            },
        );
        let phase = std::time::Instant::now();
        let raft = Raft::new(config.node_id, raft_cfg, network, store, sm)
            .await
            .map_err(|e| BrokerError::Raft(e.to_string()))?;
        // openraft re-applies the committed entries after the checkpoint inside `Raft::new`.
        tracing::info!(
            target: "raftmq::startup",
            "raft started in {:.1} ms (re-applying committed entries included)",
            phase.elapsed().as_secs_f64() * 1e3
        );

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| BrokerError::Config(format!("listen {}: {e}", config.listen)))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let http = match config.http_listen {
            Some(addr) => Some(super::http::bind(addr, config.tls.as_ref()).await?),
            None => None,
        };
        let http_addr = match &http {
            Some(l) => Some(
                l.local_addr()
                    .map_err(|e| BrokerError::Internal(e.to_string()))?,
            ),
            None => None,
        };
        let mut builder = configure_server(tonic::transport::Server::builder());
        if let Some(tls) = &config.tls {
            let c = tls
                .server_config()
                .map_err(|e| BrokerError::Config(e.to_string()))?;
            builder = builder
                .tls_config(c)
                .map_err(|e| BrokerError::Config(format!("tls: {e}")))?;
        }
        let (shutdown, mut rx) = watch::channel(false);
        let sessions = Arc::new(super::sessions::Sessions::default());
        let node = Arc::new_cyclic(|weak: &std::sync::Weak<Node>| {
            // Raft and Admin are for cluster members and operators only: with TLS they demand
            // a client certificate of the cluster CA (client SDKs use `messaging`).
            let cluster_only = crate::tls::ClusterOnly::new(config.tls.as_ref());
            let admin = tonic::service::interceptor::InterceptedService::new(
                super::admin::AdminService::new(weak.clone()).into_server(),
                cluster_only,
            );
            let raft_svc = tonic::service::interceptor::InterceptedService::new(
                RaftGrpcService::new(raft.clone()).into_server(),
                cluster_only,
            );
            let messaging =
                super::messaging::MessagingSvc::new(weak.clone(), Arc::clone(&sessions))
                    .into_server();
            let incoming = tokio_stream_listener(listener);
            let server = tokio::spawn(async move {
                let res = builder
                    .trace_fn(request_span)
                    .add_service(raft_svc)
                    .add_service(admin)
                    .add_service(messaging)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = res {
                    tracing::error!("grpc server stopped: {e}");
                }
            });
            Node {
                config: config.clone(),
                raft: raft.clone(),
                sm: handle,
                log,
                local_addr,
                http_addr,
                start_term,
                forwarder: super::ops::Forwarder::default(),
                sessions,
                batcher: std::sync::OnceLock::new(),
                command_batcher: std::sync::OnceLock::new(),
                shutdown,
                leaving: std::sync::atomic::AtomicBool::new(false),
                server: std::sync::Mutex::new(Some(server)),
                tasks: std::sync::Mutex::new(Vec::new()),
            }
        });
        let (batcher, batch_task) = super::batcher::Batcher::spawn(Arc::downgrade(&node));
        let _ = node.batcher.set(batcher);
        let (commands, command_task) =
            super::command_batcher::CommandBatcher::spawn(Arc::downgrade(&node));
        let _ = node.command_batcher.set(commands);
        if let Ok(mut t) = node.tasks.lock() {
            t.push(batch_task);
            t.push(command_task);
        }
        node.bootstrap().await?;
        let n = Arc::clone(&node);
        let retention = tokio::spawn(async move { n.retention_loop().await });
        let n = Arc::clone(&node);
        let reviver = tokio::spawn(async move { n.dead_letter_loop().await });
        let n = Arc::clone(&node);
        let timers = tokio::spawn(async move { n.timer_loop().await });
        let n = Arc::clone(&node);
        let tx_checker = tokio::spawn(async move { n.transaction_check_loop().await });
        let n = Arc::clone(&node);
        let renewer = tokio::spawn(async move { n.renew_loop().await });
        if let Ok(mut t) = node.tasks.lock() {
            t.extend([reviver, timers, tx_checker, renewer]);
        }
        if let Ok(mut t) = node.tasks.lock() {
            t.push(retention);
        }
        if let Some(listener) = http {
            let tasks = super::http::spawn(&node, listener);
            if let Ok(mut t) = node.tasks.lock() {
                t.extend(tasks);
            }
        }
        if !node.config.nameservers.is_empty() {
            let registration = super::register::spawn(Arc::clone(&node));
            if let Ok(mut t) = node.tasks.lock() {
                t.push(registration);
            }
        }
        tracing::info!(
            target: "raftmq::startup",
            "serving {:.1} ms after start",
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(node)
    }

    async fn bootstrap(&self) -> Result<(), BrokerError> {
        if self.config.peers.is_empty() {
            return Ok(()); // joins later as a learner
        }
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| BrokerError::Raft(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let members: BTreeMap<NodeId, BasicNode> = self
            .config
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Another node's membership already reached us: the group exists.
            Err(e)
                if e.to_string().contains("not allowed")
                    || e.to_string().contains("NotAllowed") =>
            {
                Ok(())
            }
            Err(e) => Err(BrokerError::Raft(format!("initialize: {e}"))),
        }
    }

    async fn retention_loop(self: Arc<Self>) {
        let mut rx = self.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.retention_interval) => {}
                _ = rx.wait_for(|s| *s) => return,
            }
            if self.config.retention_time.is_none() && self.config.retention_bytes.is_none() {
                continue;
            }
            if let Err(e) = self.run_retention().await {
                tracing::warn!("retention: {e}");
            }
        }
    }

    /// On the leader, move messages that expired on their last allowed delivery to the
    /// group's dead-letter topic, without waiting for a consumer to ask again.
    async fn dead_letter_loop(self: Arc<Self>) {
        let mut rx = self.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = rx.wait_for(|s| *s) => return,
            }
            if !self.raft.metrics().borrow_watched().state.is_leader() {
                continue;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            for (group, topic, queue, offset, seq) in self.sm.exhausted(now) {
                if let Err(e) = self.dead_letter(&group, &topic, queue, offset, seq).await {
                    tracing::warn!("dead-lettering {topic}:{queue}:{offset} for {group}: {e}");
                    break;
                }
            }
        }
    }

    /// Apply the retention policy now. See `state_machine` for why this is safe.
    pub async fn run_retention(&self) -> Result<RetentionOutcome, BrokerError> {
        let plan = self
            .sm
            .retention_boundary(self.config.retention_time, self.config.retention_bytes)?;
        let Some(boundary) = plan else {
            // openraft also purges by itself (after installing a snapshot, say): drop the
            // queue units that point into segments deleted that way.
            self.sm.after_purge()?;
            return Ok(RetentionOutcome {
                segments_deleted: 0,
                snapshot_index: None,
            });
        };
        let before = self.log.segment_files()?.len();
        // The snapshot (state as of the boundary) must exist before openraft may purge. With
        // `max_in_snapshot_log_to_keep = 0` openraft purges up to it by itself once built; the
        // explicit purge below covers a snapshot that already existed.
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| BrokerError::Raft(e.to_string()))?;
        let mut m = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if m.borrow_watched()
                .snapshot
                .is_some_and(|s| s.index >= boundary)
            {
                break;
            }
            if tokio::time::timeout_at(deadline, m.changed())
                .await
                .is_err()
            {
                return Err(BrokerError::Internal(
                    "snapshot at the retention boundary not built in time".into(),
                ));
            }
        }
        self.raft
            .trigger()
            .purge_log(boundary)
            .await
            .map_err(|e| BrokerError::Raft(e.to_string()))?;
        // Purge is applied asynchronously by openraft; wait for it to land.
        loop {
            if m.borrow_watched()
                .purged
                .is_some_and(|p| p.index >= boundary)
            {
                break;
            }
            if tokio::time::timeout_at(deadline, m.changed())
                .await
                .is_err()
            {
                break; // openraft may delay purge while a follower still reads those logs
            }
        }
        let after = self.log.segment_files()?.len();
        self.sm.after_purge()?;
        Ok(RetentionOutcome {
            segments_deleted: before.saturating_sub(after) as u64,
            snapshot_index: Some(boundary),
        })
    }

    /// Address of the current leader, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow_watched().clone();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    /// Turns `true` when the node shuts down.
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Wait (until `deadline`) until this node knows a leader other than `failed`.
    pub async fn wait_leader_change(&self, failed: Option<NodeId>, deadline: tokio::time::Instant) {
        let mut m = self.raft.metrics();
        let _ = tokio::time::timeout_at(deadline, async {
            loop {
                let now = m.borrow_watched().current_leader;
                if now.is_some() && now != failed {
                    return;
                }
                if m.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Addresses of every member of the group (voters and learners), leader first.
    pub fn member_addresses(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow_watched().clone();
        let mut v: Vec<(bool, String)> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (Some(*id) != m.current_leader, n.addr.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, a)| a).collect()
    }

    /// Stop accepting gRPC connections and wait (at most `drain`) for the requests in
    /// flight to finish; what is still running then is cut off.
    pub(crate) async fn stop_serving(&self, drain: Duration) {
        let _ = self.shutdown.send(true);
        let server = self.server.lock().ok().and_then(|mut s| s.take());
        if let Some(mut server) = server {
            if tokio::time::timeout(drain, &mut server).await.is_err() {
                tracing::info!(
                    "requests still in flight after {drain:?} (streams, long polls): cut off"
                );
                server.abort();
            }
        }
    }

    /// Stop serving and shut Raft down (at once: [`Node::leave`] is the graceful way).
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        if let Some(s) = self.server.lock().ok().and_then(|mut s| s.take()) {
            s.abort();
        }
        let _ = self.raft.shutdown().await;
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        self.sm.checkpoint_now();
    }
}

/// What one retention run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetentionOutcome {
    /// Segment files deleted.
    pub segments_deleted: u64,
    /// Index of the snapshot built at the boundary.
    pub snapshot_index: Option<u64>,
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    })
}

#[cfg(test)]
mod tests {
    use super::parse_peers;

    #[test]
    fn peers_with_dns_names_ipv4_and_ipv6() {
        let p = parse_peers("1=raftmq-0.raftmq.default.svc:8081, 2=10.0.0.2:8082,3=[::1]:8083")
            .unwrap_or_default();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&1], "raftmq-0.raftmq.default.svc:8081");
        assert_eq!(p[&2], "10.0.0.2:8082");
        assert_eq!(p[&3], "[::1]:8083");
        assert!(parse_peers("").is_ok_and(|p| p.is_empty()));
    }

    #[test]
    fn bad_peer_lists_are_rejected_with_the_reason() {
        for (bad, why) in [
            ("1=host", "no :PORT"),
            ("x=host:1", "not a number"),
            ("1=host:0", "not a port"),
            ("1=host:99999", "not a port"),
            ("1=a:1,1=b:2", "twice"),
            ("1=bad_host!:1", "not a host"),
            ("1host:1", "ID=HOST:PORT"),
        ] {
            match parse_peers(bad) {
                Err(e) => assert!(e.to_string().contains(why), "{bad}: {e}"),
                Ok(p) => panic!("{bad} accepted: {p:?}"),
            }
        }
    }
}
