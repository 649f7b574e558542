//! The HTTP port (`raftmq broker --http-listen`) of a 3-node group of real processes:
//! `/healthz`, `/readyz` before and after a leader exists, `/raftz`, and `/metrics` counters
//! that count every produced and delivered message exactly once across the group.
//!
//! HTTP is spoken by hand (HTTP/1.1 GET, `Connection: close`) over a Tokio TCP stream.
//! Every process is killed on drop; every wait is on a condition with a deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq::client::{OutMessage, Producer, SimpleConsumer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const N: usize = 137;
const TOPIC: &str = "http-metrics-topic";
const GROUP: &str = "http-metrics-group";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

struct NodeProc {
    grpc: String,
    http: String,
    dir: PathBuf,
    child: Option<Child>,
}

/// Three broker nodes of group `g1`, each with an HTTP port; all killed on drop.
struct Group {
    tmp: tempfile::TempDir,
    peers: String,
    nodes: BTreeMap<u64, NodeProc>,
}

impl Group {
    fn new() -> Group {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut nodes = BTreeMap::new();
        for id in 1..=3u64 {
            nodes.insert(
                id,
                NodeProc {
                    grpc: format!("127.0.0.1:{}", free_port()),
                    http: format!("127.0.0.1:{}", free_port()),
                    dir: tmp.path().join(format!("node{id}")),
                    child: None,
                },
            );
        }
        let peers = nodes
            .iter()
            .map(|(id, n)| format!("{id}={}", n.grpc))
            .collect::<Vec<_>>()
            .join(",");
        Group { tmp, peers, nodes }
    }

    fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        let log_path = self.tmp.path().join(format!("node{id}.log"));
        let n = self.nodes.get_mut(&id).expect("known node");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_raftmq"))
            .args([
                "broker",
                "--group",
                "g1",
                "--node-id",
                &id.to_string(),
                "--listen",
                &n.grpc,
                "--advertise",
                &n.grpc,
                "--peers",
                &peers,
                "--data-dir",
                path_str(&n.dir),
                "--segment-size",
                "64M",
                "--http-listen",
                &n.http,
            ])
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn raftmq broker");
        n.child = Some(child);
    }

    fn http(&self, id: u64) -> &str {
        &self.nodes[&id].http
    }

    fn grpc(&self, id: u64) -> &str {
        &self.nodes[&id].grpc
    }

    /// The nodes' logs, for assertion messages.
    fn logs(&self) -> String {
        let mut s = String::new();
        for id in self.nodes.keys() {
            let p = self.tmp.path().join(format!("node{id}.log"));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            s += &format!("--- node {id} (last lines) ---\n");
            for l in tail.into_iter().rev() {
                s += l;
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `GET path` on `addr`: (status code, body).
async fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let io = |m: String| std::io::Error::other(m);
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| io(format!("connect {addr}: timed out")))??;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| io(format!("GET {path} on {addr}: timed out")))??;
    let raw = String::from_utf8(raw).map_err(|e| io(e.to_string()))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| io(format!("no header end in {raw:?}")))?;
    let code: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io(format!("bad status line in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| io("bad chunked body".into()))?
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        s = rest.get(n + 2..)?;
    }
}

/// Poll `GET path` until `ok(code, body)` holds; panics with the last answer at the deadline.
async fn wait_http(
    g: &Group,
    id: u64,
    path: &str,
    within: Duration,
    ok: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let r = get(g.http(id), path).await;
        if let Ok((code, body)) = &r
            && ok(*code, body)
        {
            return (*code, body.clone());
        }
        assert!(
            Instant::now() < deadline,
            "node {id} {path}: condition not met within {within:?}, last answer {r:?}\n{}",
            g.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sum of every sample of `name` whose labels include all of `labels` (0 if none).
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| l.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            total += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    total
}

async fn scrape(g: &Group, id: u64) -> String {
    let (code, body) = get(g.http(id), "/metrics").await.expect("GET /metrics");
    assert_eq!(code, 200, "node {id} /metrics: {body}");
    body
}

/// `name{labels}` summed over the three nodes.
async fn group_sum(g: &Group, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut t = 0.0;
    for id in 1..=3 {
        t += sum(&scrape(g, id).await, name, labels);
    }
    t
}

async fn raftz(g: &Group, id: u64) -> serde_json::Value {
    let (code, body) = get(g.http(id), "/raftz").await.expect("GET /raftz");
    assert_eq!(code, 200, "node {id} /raftz: {body}");
    serde_json::from_str(&body).expect("raftz is JSON")
}

/// Wait until every node has applied the leader's last log index (so followers had every
/// chance to count what they must not count).
async fn wait_all_applied(g: &Group) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut last = Vec::new();
        for id in 1..=3 {
            last.push(raftz(g, id).await);
        }
        let leader_last = last
            .iter()
            .find(|s| s["role"] == "leader")
            .and_then(|s| s["last_log_index"].as_u64());
        if let Some(target) = leader_last
            && last
                .iter()
                .all(|s| s["applied"].as_u64().is_some_and(|a| a >= target))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not converge: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn admin(broker: &str, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_raftmq"))
            .args(["admin", "--broker", broker, "--timeout-ms", "10000"])
            .args(args)
            .output()
            .expect("run raftmq admin");
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_raft_status_and_exact_message_counters() {
    let mut g = Group::new();
    let within = Duration::from_secs(30);

    // Node 1 alone, with the 3-node peer list: alive, but no leader can exist yet.
    g.spawn(1);
    let (_, body) = wait_http(&g, 1, "/healthz", within, |c, _| c == 200).await;
    assert_eq!(body.trim(), "ok");
    // The initial membership shows up in the Raft metrics shortly after start-up.
    let (_, body) = wait_http(&g, 1, "/raftz", within, |c, b| {
        c == 200 && b.contains("\"voters\":[1,2,3]")
    })
    .await;
    let s: serde_json::Value = serde_json::from_str(&body).expect("raftz is JSON");
    assert_eq!(s["node_id"], 1);
    assert_eq!(s["group"], "g1");
    assert!(s["leader_id"].is_null(), "no leader yet: {s}");
    assert_ne!(s["role"], "leader");
    let (code, body) = get(g.http(1), "/readyz").await.expect("GET /readyz");
    assert_eq!(code, 503, "readyz without a leader: {body}");
    assert!(body.contains("no leader"), "reason: {body}");

    // The rest of the group: a leader is elected and every node becomes ready.
    g.spawn(2);
    g.spawn(3);
    for id in 1..=3 {
        wait_http(&g, id, "/readyz", within, |c, b| {
            c == 200 && b.trim() == "ready"
        })
        .await;
    }
    let views: Vec<serde_json::Value> = {
        let mut v = Vec::new();
        for id in 1..=3 {
            v.push(raftz(&g, id).await);
        }
        v
    };
    let leaders = views.iter().filter(|s| s["role"] == "leader").count();
    assert_eq!(leaders, 1, "{views:?}");

    // Raft gauges: exactly one node calls itself leader; terms are positive.
    let mut leader_gauge = 0.0;
    let mut elections = 0.0;
    for id in 1..=3 {
        let m = scrape(&g, id).await;
        leader_gauge += sum(&m, "raftmq_raft_leader", &[("group", "g1")]);
        elections += sum(&m, "raftmq_raft_elections_total", &[("group", "g1")]);
        assert!(
            sum(&m, "raftmq_raft_term", &[("group", "g1")]) >= 1.0,
            "{m}"
        );
        assert!(sum(&m, "rocketmq_storage_size", &[]) > 0.0, "{m}");
    }
    assert_eq!(leader_gauge, 1.0);
    assert!(elections >= 1.0, "at least one election was seen");

    // A topic, visible on every node.
    admin(g.grpc(1), &["topic", "create", TOPIC, "--queues", "2"]);
    for id in 1..=3 {
        wait_http(&g, id, "/raftz", within, |c, b| {
            c == 200 && b.contains("\"topics\":1")
        })
        .await;
    }
    wait_all_applied(&g).await;

    let topic = [("topic", TOPIC)];
    let in_before = group_sum(&g, "rocketmq_messages_in_total", &topic).await;
    let bytes_before = group_sum(&g, "rocketmq_throughput_in_total", &topic).await;
    let writes_before = group_sum(
        &g,
        "raftmq_append_latency_seconds_count",
        &[("command", "messages")],
    )
    .await;

    // N sends through the RocketMQ protocol, via node 2 (forwarded if it is a follower).
    let p = Producer::new(g.grpc(2)).expect("producer");
    let mut body_bytes = 0usize;
    for i in 0..N {
        let body = format!("message {i} ").repeat(i % 5 + 1);
        body_bytes += body.len();
        p.send(OutMessage {
            topic: TOPIC.into(),
            tag: Some("t".into()),
            body: Bytes::from(body.into_bytes()),
            ..Default::default()
        })
        .await
        .expect("send");
    }
    wait_all_applied(&g).await;
    let in_after = group_sum(&g, "rocketmq_messages_in_total", &topic).await;
    let bytes_after = group_sum(&g, "rocketmq_throughput_in_total", &topic).await;
    let writes_after = group_sum(
        &g,
        "raftmq_append_latency_seconds_count",
        &[("command", "messages")],
    )
    .await;
    assert_eq!(
        in_after - in_before,
        N as f64,
        "messages in, summed over the group"
    );
    assert_eq!(
        bytes_after - bytes_before,
        body_bytes as f64,
        "bytes in, summed over the group"
    );
    assert_eq!(
        writes_after - writes_before,
        N as f64,
        "one timed Raft write per send"
    );

    // Consume and ack everything through node 3.
    let group = [("topic", TOPIC), ("consumer_group", GROUP)];
    let out_before = group_sum(&g, "rocketmq_messages_out_total", &group).await;
    let out_bytes_before = group_sum(&g, "rocketmq_throughput_out_total", &group).await;
    let c = SimpleConsumer::new(g.grpc(3), GROUP, TOPIC, "*").expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = 0usize;
    let mut got_bytes = 0usize;
    let mut first = true;
    while got < N {
        assert!(Instant::now() < deadline, "received only {got} of {N}");
        let batch = c
            .receive(32, Duration::from_secs(30), Duration::from_secs(2))
            .await
            .expect("receive");
        if first && !batch.is_empty() {
            // Received, nothing acked yet: every message still counts as lag, on every node.
            first = false;
            wait_all_applied(&g).await;
            for id in 1..=3 {
                let m = scrape(&g, id).await;
                assert_eq!(
                    sum(&m, "rocketmq_consumer_lag_messages", &group),
                    N as f64,
                    "node {id} lag before any ack:\n{m}"
                );
            }
        }
        for m in batch {
            assert_eq!(m.delivery_attempt, 1, "nothing is redelivered here");
            c.ack(&m).await.expect("ack");
            got += 1;
            got_bytes += m.body.len();
        }
    }
    assert_eq!(got, N);
    assert_eq!(got_bytes, body_bytes);
    wait_all_applied(&g).await;
    let out_after = group_sum(&g, "rocketmq_messages_out_total", &group).await;
    let out_bytes_after = group_sum(&g, "rocketmq_throughput_out_total", &group).await;
    assert_eq!(
        out_after - out_before,
        N as f64,
        "messages out, summed over the group"
    );
    assert_eq!(
        out_bytes_after - out_bytes_before,
        body_bytes as f64,
        "bytes out, summed over the group"
    );

    // Everything acked: the group's lag is 0 on every node, for both queues.
    for id in 1..=3 {
        let (_, m) = wait_http(&g, id, "/metrics", within, |c, b| {
            c == 200
                && (0..2).all(|q| {
                    let q = q.to_string();
                    let l = [
                        ("topic", TOPIC),
                        ("consumer_group", GROUP),
                        ("queue_id", q.as_str()),
                    ];
                    b.lines().any(|line| {
                        line.starts_with("rocketmq_consumer_lag_messages{")
                            && l.iter()
                                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
                    }) && sum(b, "rocketmq_consumer_lag_messages", &l) == 0.0
                })
        })
        .await;
        assert_eq!(sum(&m, "rocketmq_consumer_lag_messages", &group), 0.0);
    }
}
