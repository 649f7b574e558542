//! The HTTP port of a broker node (`--http-listen HOST:PORT`, off by default), separate from
//! the gRPC port.
//!
//! With TLS configured (`tls_cert`, `tls_key`, `tls_ca`) the port serves HTTPS only, with the
//! node's certificate; it asks for no client certificate (Kubernetes probes with
//! `scheme: HTTPS` and Prometheus scrapers present none) and a plain-HTTP request gets no HTTP
//! answer (the TLS handshake fails). Handshakes run concurrently (at most
//! [`MAX_PENDING_HANDSHAKES`] at a time) and are given up after [`HANDSHAKE_TIMEOUT`], so a
//! client that connects and says nothing holds up no one. Without TLS the port serves plain
//! HTTP.
//!
//! | path       | answer |
//! |------------|--------|
//! | `/healthz` | 200 `ok` while the process serves; 503 once Raft stopped on a fatal error |
//! | `/readyz`  | 200 `ready` when the node knows a leader and has applied everything committed; otherwise 503 and the reason |
//! | `/raftz`   | the node's Raft status as JSON (the fields of `raftmq admin` status) |
//! | `/metrics` | Prometheus text format |
//!
//! `/readyz` takes the committed index when asked and waits up to [`READY_APPLY_WAIT`] for
//! the state machine to reach it: a healthy node applies within milliseconds, so a probe does
//! not fail merely because a write was committed a moment before it, while a node that is
//! catching up (after a restart, or behind a partition) answers 503. A poisoned CommitLog
//! (a failed sync: every write fails) is also not ready.
//!
//! # Metrics
//!
//! RocketMQ's names where RocketMQ has the metric:
//!
//! * `rocketmq_messages_in_total{topic}`, counter: messages stored. Counted when the batch is
//!   applied, only on the node that proposed it (the leader of that term, in its current
//!   process), so the sum over a group's nodes counts every stored message exactly once; a
//!   producer retry of a message id still in the recent-id window is not counted again.
//! * `rocketmq_throughput_in_total{topic}`, counter: body bytes of those messages.
//! * `rocketmq_messages_out_total{topic,consumer_group}`, counter: messages handed out by
//!   ReceiveMessage, counted by the leader that recorded the delivery (redeliveries count
//!   again; a forwarding follower does not count).
//! * `rocketmq_throughput_out_total{topic,consumer_group}`, counter: body bytes of those.
//! * `rocketmq_consumer_lag_messages{topic,consumer_group,queue_id}`, gauge, computed at scrape
//!   time from this node's applied state: queue max offset (one past the last message) minus
//!   the group's ack offset (its first unacknowledged offset, at least the queue's min
//!   offset), for every queue of every topic a group has received from.
//! * `rocketmq_storage_size`, gauge: bytes of CommitLog segment files on disk (allocated
//!   blocks; segments are preallocated, so a new segment counts in full).
//!
//! Raft (label `group`):
//!
//! * `raftmq_raft_term`, `raftmq_raft_commit_index`, `raftmq_raft_applied_index`, gauges from
//!   openraft's metrics (commit index: the cluster-committed index if known, else the local
//!   one; an index is absent while nothing was committed or applied).
//! * `raftmq_raft_leader`, gauge: 1 if this node is the leader, else 0.
//! * `raftmq_raft_elections_total`, counter: terms that began while this process ran
//!   (current term minus the term of the vote it started with). Every term starts with an
//!   election, won or not; pre-votes that fail do not start one.
//! * `raftmq_append_latency_seconds{command="messages"|"internal"}`, histogram: successful
//!   client writes on the leader, from proposal to applied (`Raft::client_write`).
//!
//! # One recorder per process
//!
//! The `metrics` facade has one global recorder per process. It is installed the first time a
//! node with an HTTP port starts ([`install_recorder`], a `OnceLock`) and holds the counters
//! and the histogram; the gauges and the elections counter are rendered at scrape time from
//! the node itself. `raftmq broker` runs one node per process, so everything on `/metrics`
//! is that node's. If several nodes with HTTP ports share one process (only embedding code can
//! do that), each one's `/metrics` shows its own gauges but the process-wide counters, summed
//! over those nodes. If the embedding program installed another recorder first, `/metrics`
//! shows the scrape-time metrics only.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use openraft::type_config::async_runtime::watch::WatchReceiver;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::error::BrokerError;
use super::node::Node;

/// Counter: messages stored, by topic (incremented by the state machine).
pub const MESSAGES_IN: &str = "rocketmq_messages_in_total";
/// Counter: body bytes stored, by topic (incremented by the state machine).
pub const THROUGHPUT_IN: &str = "rocketmq_throughput_in_total";
/// Counter: messages delivered, by topic and consumer group.
pub const MESSAGES_OUT: &str = "rocketmq_messages_out_total";
/// Counter: body bytes delivered, by topic and consumer group.
pub const THROUGHPUT_OUT: &str = "rocketmq_throughput_out_total";
/// Histogram: client write latency, proposal to applied.
pub const APPEND_LATENCY: &str = "raftmq_append_latency_seconds";

/// How long `/readyz` waits for the applied index to reach the committed one.
pub const READY_APPLY_WAIT: Duration = Duration::from_millis(500);

/// Histogram buckets of [`APPEND_LATENCY`], seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide Prometheus recorder (once; later calls return the same handle).
/// `None` if another recorder was installed first.
pub fn install_recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(APPEND_LATENCY.into()), LATENCY_BUCKETS)
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("metrics: {e}; latency is reported as a summary");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(
                    "metrics: another recorder is installed ({e}); /metrics shows only what is \
                     computed at scrape time"
                );
                return None;
            }
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use metrics::Unit;
    metrics::describe_counter!(MESSAGES_IN, Unit::Count, "Messages stored, by topic");
    metrics::describe_counter!(THROUGHPUT_IN, Unit::Bytes, "Body bytes stored, by topic");
    metrics::describe_counter!(
        MESSAGES_OUT,
        Unit::Count,
        "Messages delivered by ReceiveMessage, by topic and consumer group"
    );
    metrics::describe_counter!(
        THROUGHPUT_OUT,
        Unit::Bytes,
        "Body bytes delivered by ReceiveMessage, by topic and consumer group"
    );
    metrics::describe_histogram!(
        APPEND_LATENCY,
        Unit::Seconds,
        "Successful client writes on the leader, from proposal to applied"
    );
}

/// How long a client of the HTTPS port has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections of the HTTPS port in their TLS handshake at one time; further connections wait
/// in the kernel's accept queue.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// The bound HTTP port: plain, or HTTPS with this node's certificate.
pub(crate) struct HttpListener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl HttpListener {
    /// The bound address.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Bind the HTTP port (at start-up, so a bad address fails the start); HTTPS iff `tls`.
pub(crate) async fn bind(
    addr: SocketAddr,
    tls: Option<&crate::tls::TlsSettings>,
) -> Result<HttpListener, BrokerError> {
    let tls = match tls {
        Some(t) => Some(TlsAcceptor::from(
            t.https_server_config()
                .map_err(|e| BrokerError::Config(e.to_string()))?,
        )),
        None => None,
    };
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|e| BrokerError::Config(format!("http-listen {addr}: {e}")))?;
    Ok(HttpListener { tcp, tls })
}

type Handshake = BoxFuture<'static, (std::io::Result<TlsStream<TcpStream>>, SocketAddr)>;

/// The HTTPS port as an [`axum::serve::Listener`]: accepts TCP connections and hands out those
/// whose TLS handshake succeeded. Handshakes run concurrently inside `accept` (no task of its
/// own: dropping the listener drops them all); failed and timed-out ones are logged at debug
/// level and dropped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: FuturesUnordered<Handshake>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel-safe (axum may drop it at shutdown): `TcpListener::accept` and
    // `FuturesUnordered::next` are, and a started handshake stays in `self.handshakes`.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let room = self.handshakes.len() < MAX_PENDING_HANDSHAKES;
            tokio::select! {
                r = self.tcp.accept(), if room => match r {
                    Ok((stream, peer)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.push(Box::pin(async move {
                            let r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                .await
                                .unwrap_or_else(|_| {
                                    Err(std::io::Error::new(
                                        std::io::ErrorKind::TimedOut,
                                        "TLS handshake timed out",
                                    ))
                                });
                            (r, peer)
                        }));
                    }
                    Err(e) => accept_error(e).await,
                },
                Some((r, peer)) = self.handshakes.next(), if !self.handshakes.is_empty() => {
                    match r {
                        Ok(stream) => return (stream, peer),
                        Err(e) => tracing::debug!("https: TLS handshake with {peer} failed: {e}"),
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// What axum does for a failed `accept` of its own TCP listener: errors of one connection are
/// ignored; others (e.g. too many open files) are logged, and accepting pauses for a second.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("https: accept failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Serve `app` on `listener` until `stop` turns true.
async fn serve<L>(listener: L, app: Router, mut stop: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = res {
        tracing::error!("http server stopped: {e}");
    }
}

/// Serve the HTTP port until the node shuts down; also runs the recorder's upkeep.
pub(crate) fn spawn(node: &Arc<Node>, listener: HttpListener) -> Vec<JoinHandle<()>> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/raftz", get(raftz))
        .route("/metrics", get(metrics_text))
        .with_state(Arc::downgrade(node));
    let scheme = if listener.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("{scheme} (healthz, readyz, raftz, metrics) on {addr}");
    }
    let stop = node.shutdown_signal();
    let server = match listener.tls {
        None => tokio::spawn(serve(listener.tcp, app, stop)),
        Some(acceptor) => tokio::spawn(serve(
            TlsListener {
                tcp: listener.tcp,
                acceptor,
                handshakes: FuturesUnordered::new(),
            },
            app,
            stop,
        )),
    };
    let mut stop = node.shutdown_signal();
    let upkeep = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(UPKEEP_INTERVAL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Some(h) = RECORDER.get().and_then(Option::as_ref) {
                h.run_upkeep();
            }
        }
    });
    vec![server, upkeep]
}

type NodeRef = State<Weak<Node>>;

fn text(code: StatusCode, body: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into() + "\n",
    )
        .into_response()
}

async fn healthz(State(node): NodeRef) -> Response {
    let Some(node) = node.upgrade() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let fatal = match &node.raft.metrics().borrow_watched().running_state {
        Ok(()) => None,
        Err(e) => Some(e.to_string()),
    };
    match fatal {
        None => text(StatusCode::OK, "ok"),
        Some(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("raft stopped: {e}"),
        ),
    }
}

/// `Ok(())` when ready, else why not.
async fn readiness(node: &Node) -> Result<(), String> {
    if node.is_leaving() {
        return Err("leaving (graceful shutdown)".into());
    }
    if let Some(p) = node.log.poisoned() {
        return Err(format!("commitlog refuses writes: {p}"));
    }
    let mut m = node.raft.metrics();
    let target = {
        let cur = m.borrow_watched();
        if let Err(e) = &cur.running_state {
            return Err(format!("raft stopped: {e}"));
        }
        if cur.current_leader.is_none() {
            return Err("no leader known".into());
        }
        cur.cluster_committed
            .or(cur.local_committed)
            .map(|l| l.index)
    };
    let Some(target) = target else {
        return Ok(()); // nothing committed yet: nothing to apply
    };
    let deadline = tokio::time::Instant::now() + READY_APPLY_WAIT;
    loop {
        let applied = m.borrow_watched().last_applied.map(|l| l.index);
        if applied.is_some_and(|a| a >= target) {
            return Ok(());
        }
        let changed = tokio::time::timeout_at(deadline, m.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            let applied = applied.map_or_else(|| "nothing".to_string(), |a| a.to_string());
            return Err(format!("applied {applied}, committed {target}"));
        }
    }
}

async fn readyz(State(node): NodeRef) -> Response {
    let Some(node) = node.upgrade() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down");
    };
    match readiness(&node).await {
        Ok(()) => text(StatusCode::OK, "ready"),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

async fn raftz(State(node): NodeRef) -> Response {
    let Some(node) = node.upgrade() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let s = node.status();
    let body = serde_json::json!({
        "node_id": s.node_id,
        "group": s.group,
        "role": s.role,
        "term": s.term,
        "leader_id": s.leader_id,
        "leader_addr": s.leader_addr,
        "last_log_index": s.last_log_index,
        "committed": s.committed,
        "applied": s.applied,
        "first_index": s.first_index,
        "voters": s.voters,
        "learners": s.learners,
        "oldest_position": s.oldest_position,
        "write_position": s.write_position,
        "snapshot_index": s.snapshot_index,
        "version": s.version,
        "poisoned": s.poisoned,
        "topics": s.topics,
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string() + "\n",
    )
        .into_response()
}

async fn metrics_text(State(node): NodeRef) -> Response {
    let Some(node) = node.upgrade() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let mut out = RECORDER
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    // Reading segment sizes and queue states touches the file system and a lock: off the
    // async workers.
    let gauges = tokio::task::spawn_blocking(move || node_metrics(&node)).await;
    match gauges {
        Ok(g) => out.push_str(&g),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// Escape a label value for the Prometheus text format.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// One metric family: HELP and TYPE lines, then one sample per (labels, value).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
    out.push('\n');
}

/// The metrics computed at scrape time from the node itself.
fn node_metrics(node: &Node) -> String {
    let mut out = String::new();
    let (term, commit, applied, leader) = {
        let m = node.raft.metrics();
        let m = m.borrow_watched();
        (
            m.current_term,
            m.cluster_committed.or(m.local_committed).map(|l| l.index),
            m.last_applied.map(|l| l.index),
            m.state.is_leader(),
        )
    };
    let g = format!("group=\"{}\"", escape(&node.config.group));
    let one = |v: u64| vec![(g.clone(), v)];
    let opt = |v: Option<u64>| v.map(|v| vec![(g.clone(), v)]).unwrap_or_default();
    family(
        &mut out,
        "raftmq_raft_term",
        "gauge",
        "Current Raft term of this node",
        &one(term),
    );
    family(
        &mut out,
        "raftmq_raft_commit_index",
        "gauge",
        "Highest log index known committed",
        &opt(commit),
    );
    family(
        &mut out,
        "raftmq_raft_applied_index",
        "gauge",
        "Highest log index applied to the state machine",
        &opt(applied),
    );
    family(
        &mut out,
        "raftmq_raft_leader",
        "gauge",
        "1 if this node is the leader of its group, else 0",
        &one(u64::from(leader)),
    );
    family(
        &mut out,
        "raftmq_raft_elections_total",
        "counter",
        "Terms begun (elections) while this process ran",
        &one(term.saturating_sub(node.start_term)),
    );
    let lag: Vec<(String, u64)> = node
        .sm
        .consumer_lag()
        .into_iter()
        .map(|l| {
            (
                format!(
                    "topic=\"{}\",consumer_group=\"{}\",queue_id=\"{}\"",
                    escape(&l.topic),
                    escape(&l.group),
                    l.queue
                ),
                l.lag,
            )
        })
        .collect();
    family(
        &mut out,
        "rocketmq_consumer_lag_messages",
        "gauge",
        "Queue max offset minus the consumer group's first unacknowledged offset",
        &lag,
    );
    let storage: u64 = node
        .log
        .segment_files()
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|md| md.blocks() * 512)
        .sum();
    family(
        &mut out,
        "rocketmq_storage_size",
        "gauge",
        "Bytes of CommitLog segment files on disk",
        &[(String::new(), storage)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::{escape, family};

    #[test]
    fn label_values_are_escaped_and_families_are_well_formed() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        let mut out = String::new();
        family(
            &mut out,
            "m",
            "gauge",
            "help text",
            &[("topic=\"t\"".into(), 3), (String::new(), 4)],
        );
        assert_eq!(
            out,
            "# HELP m help text\n# TYPE m gauge\nm{topic=\"t\"} 3\nm 4\n\n"
        );
    }
}
