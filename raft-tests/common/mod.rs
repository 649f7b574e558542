//! Test harness: a broker group of real `raftmq broker` processes on 127.0.0.1.
//!
//! Every node gets a free port and its own data directory under one temp dir; every process
//! is killed when the `Cluster` is dropped. Waiting is always on a condition with a deadline.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftmq::proto::raftmq::admin as pb;
use raftmq::proto::raftmq::admin::admin_client::AdminClient;
use tonic::transport::Channel;

pub type Client = AdminClient<Channel>;

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

pub struct NodeProc {
    pub id: u64,
    pub port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub extra: Vec<String>,
    pub peers: String,
}

pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeProc>,
    pub group: String,
}

pub struct Opts {
    pub segment_size: &'static str,
    pub extra: Vec<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            segment_size: "64M",
            extra: Vec::new(),
        }
    }
}

impl Cluster {
    /// Start `n` nodes forming one group.
    pub fn start(n: u64, opts: Opts) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers = (1..=n)
            .map(|i| format!("{i}=127.0.0.1:{}", ports[(i - 1) as usize]))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            tmp,
            nodes: BTreeMap::new(),
            group: "g1".into(),
        };
        for i in 1..=n {
            let dir = c.tmp.path().join(format!("node{i}"));
            let mut extra = vec!["--segment-size".to_string(), opts.segment_size.to_string()];
            extra.extend(opts.extra.iter().cloned());
            c.nodes.insert(
                i,
                NodeProc {
                    id: i,
                    port: ports[(i - 1) as usize],
                    dir,
                    child: None,
                    extra,
                    peers: peers.clone(),
                },
            );
        }
        for i in 1..=n {
            c.spawn(i);
        }
        c
    }

    /// Add a node that is not in the initial peer list (to be added as learner).
    pub fn add_node(&mut self, id: u64, segment_size: &str, extra: &[String]) {
        let mut x = vec!["--segment-size".to_string(), segment_size.to_string()];
        x.extend(extra.iter().cloned());
        self.nodes.insert(
            id,
            NodeProc {
                id,
                port: free_port(),
                dir: self.tmp.path().join(format!("node{id}")),
                child: None,
                extra: x,
                peers: String::new(),
            },
        );
        self.spawn(id);
    }

    pub fn addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.nodes[&id].port)
    }

    pub fn dir(&self, id: u64) -> &Path {
        &self.nodes[&id].dir
    }

    pub fn spawn(&mut self, id: u64) {
        let group = self.group.clone();
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(node.child.is_none(), "node {id} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.with_extension("log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftmq"));
        cmd.args([
            "broker",
            "--group",
            &group,
            "--node-id",
            &id.to_string(),
            "--listen",
            &format!("127.0.0.1:{}", node.port),
            "--advertise",
            &format!("127.0.0.1:{}", node.port),
            "--data-dir",
            node.dir.to_str().expect("utf-8 path"),
        ])
        .args(if node.peers.is_empty() {
            vec!["--join".to_string()]
        } else {
            vec!["--peers".to_string(), node.peers.clone()]
        })
        .args(&node.extra)
        .env("RUST_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        node.child = Some(cmd.spawn().expect("spawn raftmq broker"));
    }

    /// SIGKILL a node.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM a node and wait for it to exit (bounded; SIGKILL after 20 s).
    /// Stop every node and assert that each entry up to `committed` in node `reference`'s
    /// log is byte-identical at the same position on every node; returns how many entries
    /// were compared.
    pub fn stop_and_compare_logs(&mut self, reference: u64, committed: u64) -> usize {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.stop(*id);
        }
        let logs: BTreeMap<u64, _> = ids
            .iter()
            .map(|id| (*id, offline::records(self.dir(*id))))
            .collect();
        let mut compared = 0;
        for (index, rec) in logs[&reference].iter().filter(|(i, _)| **i <= committed) {
            for (id, other) in &logs {
                assert_eq!(
                    other.get(index),
                    Some(rec),
                    "index {index} differs on node {id}"
                );
            }
            compared += 1;
        }
        compared
    }

    pub fn stop(&mut self, id: u64) {
        if let Some(mut c) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    pub async fn client(&self, id: u64) -> Client {
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr(id)))
            .expect("endpoint")
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(10));
        AdminClient::new(ep.connect_lazy())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn status(&self, id: u64) -> Option<pb::NodeStatus> {
        let mut c = self.client(id).await;
        c.status(pb::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Wait until every running node reports the same leader and term; returns (leader, term).
    pub async fn wait_leader(&self, within: Duration) -> (u64, u64) {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = Vec::new();
            for id in self.running() {
                seen.push((id, self.status(id).await));
            }
            let views: Vec<(Option<u64>, u64)> = seen
                .iter()
                .filter_map(|(_, s)| s.as_ref().map(|s| (s.leader_id, s.term)))
                .collect();
            if views.len() == seen.len()
                && let Some((Some(l), t)) = views.first().copied()
                && views.iter().all(|v| *v == (Some(l), t))
                && self.running().contains(&l)
            {
                let leaders = seen
                    .iter()
                    .filter(|(_, s)| s.as_ref().is_some_and(|s| s.role == "leader"))
                    .count();
                assert_eq!(
                    leaders, 1,
                    "exactly one node must call itself leader: {seen:?}"
                );
                return (l, t);
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {within:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.status(id).await
                && s.applied.is_some_and(|a| a >= index)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not apply {index} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn create_topic(&self, via: u64, name: &str, queues: u32, message_type: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut c = self.client(via).await;
            let r = c
                .upsert_topic(pb::TopicConfig {
                    name: name.into(),
                    queues,
                    perm: "rw".into(),
                    message_type: message_type.into(),
                })
                .await;
            match r {
                Ok(_) => return,
                Err(e) => assert!(Instant::now() < deadline, "create topic: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The progress of `group` on every queue of `topic`, as node `id` reports it.
    pub async fn group_progress(
        &self,
        id: u64,
        group: &str,
        topic: &str,
    ) -> Vec<pb::QueueProgress> {
        self.client(id)
            .await
            .group_progress(pb::GroupProgressRequest {
                group: group.into(),
                topic: topic.into(),
            })
            .await
            .expect("group progress")
            .into_inner()
            .queues
    }

    /// Read every message of `topic` from node `id` (all queues), as (queue, offset, message).
    pub async fn read_all(
        &self,
        id: u64,
        topic: &str,
        queues: u32,
    ) -> Vec<(u32, pb::QueueMessage)> {
        let mut c = self.client(id).await;
        let mut out = Vec::new();
        for q in 0..queues {
            let mut from = 0;
            loop {
                let r = c
                    .read_queue(pb::ReadQueueRequest {
                        topic: topic.into(),
                        queue_id: q,
                        offset: from,
                        max: 1000,
                    })
                    .await
                    .expect("read_queue")
                    .into_inner();
                if from < r.min_offset {
                    from = r.min_offset;
                    continue;
                }
                if r.messages.is_empty() {
                    break;
                }
                from = r.messages.last().map(|m| m.offset + 1).unwrap_or(from);
                out.extend(r.messages.into_iter().map(|m| (q, m)));
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

pub fn message(topic: &str, id: &str, body: Vec<u8>) -> pb::ProduceMessage {
    pb::ProduceMessage {
        topic: topic.into(),
        queue_id: -1,
        message_id: id.into(),
        tag: "t".into(),
        keys: vec![format!("k-{id}")],
        properties: Default::default(),
        body: body.into(),
        message_group: String::new(),
        born_timestamp_ms: 0,
        ..Default::default()
    }
}

/// Tests of one binary share the machine's two cores: run their clusters one at a time so
/// election timing is not distorted by a neighbour's load.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Produce `msgs` through node `via`, retrying while no leader is known. Returns the reply.
pub async fn produce(
    c: &Cluster,
    via: u64,
    msgs: Vec<pb::ProduceMessage>,
    within: Duration,
) -> pb::ProduceReply {
    let deadline = Instant::now() + within;
    loop {
        let mut cl = c.client(via).await;
        match cl
            .produce(pb::ProduceRequest {
                messages: msgs.clone(),
            })
            .await
        {
            Ok(r) => return r.into_inner(),
            Err(e) => assert!(Instant::now() < deadline, "produce via {via}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Offline checks on stopped nodes' data directories.
pub mod offline {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use futures::StreamExt;
    use raftmq::raft::log_store::{LogStore, record_to_entry};
    use raftmq::raft::state_machine::StateMachine;
    use raftmq::storage::CommitLogConfig;
    use raftmq::storage::commitlog::{CommitLog, inspect};
    use raftmq::storage::consumequeue::{ConsumeQueueStore, CqUnit};
    use raftmq::storage::dispatch::DispatchConfig;

    /// (index → (term, node, position, record bytes)) of a node's CommitLog.
    pub fn records(dir: &Path) -> BTreeMap<u64, (u64, u64, u64, Vec<u8>)> {
        let insp = inspect(dir).expect("inspect");
        assert!(
            insp.problems.is_empty(),
            "{}: {:?}",
            dir.display(),
            insp.problems
        );
        let seg = insp.segment_size;
        let mut out = BTreeMap::new();
        for e in insp.entries {
            let base = e.pos - e.pos % seg;
            let file = dir.join("commitlog").join(format!("{base:020}"));
            let bytes = std::fs::read(&file).expect("segment");
            let off = (e.pos - base) as usize;
            let len = 48 + e.payload_len as usize;
            out.insert(
                e.id.index,
                (e.id.term, e.id.node, e.pos, bytes[off..off + len].to_vec()),
            );
        }
        out
    }

    /// Every queue's units: (topic, queue) → (min offset, units from min).
    pub fn queues(dir: &Path) -> BTreeMap<(String, u32), (u64, Vec<CqUnit>)> {
        let cq = ConsumeQueueStore::open(
            dir.join("consumequeue"),
            DispatchConfig::default().cq_units_per_file,
        )
        .expect("open consumequeue");
        let mut out = BTreeMap::new();
        for (t, q) in cq.queues() {
            let min = cq.min_offset(&t, q).unwrap_or(0);
            let max = cq.max_offset(&t, q).unwrap_or(0);
            let mut units = Vec::new();
            let mut from = min;
            while from < max {
                let r = cq.range(&t, q, from, 10_000);
                if r.is_empty() {
                    break;
                }
                from += r.len() as u64;
                units.extend(r);
            }
            out.insert((t, q), (min, units));
        }
        out
    }

    fn copy_dir(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).expect("mkdir");
        for e in std::fs::read_dir(src).expect("read_dir") {
            let e = e.expect("entry");
            let to = dst.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                copy_dir(&e.path(), &to);
            } else {
                std::fs::copy(e.path(), to).expect("copy");
            }
        }
    }

    /// Recompute a node's ConsumeQueues by applying its own CommitLog to a fresh state
    /// machine (the same apply code the node runs), in a scratch copy.
    pub async fn recomputed_queues(
        dir: &Path,
        segment_size: u64,
    ) -> BTreeMap<(String, u32), (u64, Vec<CqUnit>)> {
        let scratch = tempfile::tempdir().expect("tempdir");
        copy_dir(&dir.join("commitlog"), &scratch.path().join("commitlog"));
        copy_dir(&dir.join("index"), &scratch.path().join("index"));
        copy_dir(&dir.join("raft"), &scratch.path().join("raft"));
        let mut cfg = CommitLogConfig::new(scratch.path());
        cfg.segment_size = segment_size;
        let store = LogStore::open(cfg).expect("open log");
        let log: Arc<CommitLog> = store.commitlog();
        let (mut sm, _h) = StateMachine::open(scratch.path(), Arc::clone(&log)).expect("open sm");
        let first = log.first_index().expect("first");
        let next = log.next_index().expect("next");
        let entries: Vec<_> = log
            .read_range(first, next, None)
            .expect("read")
            .into_iter()
            .map(|r| record_to_entry(r).expect("entry"))
            .collect();
        let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None)))).boxed();
        openraft::storage::RaftStateMachine::apply(&mut sm, stream)
            .await
            .expect("apply");
        let h = _h;
        h.checkpoint_now();
        drop(sm);
        drop(h);
        queues(scratch.path())
    }
}
