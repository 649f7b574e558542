//! `raftmq-bench restart`: how long a broker node holding a large CommitLog takes to be ready
//! again after it stopped (issue #16: 10 GiB, `/readyz` 200 in < 5 s).
//!
//! 1. A real `raftmq nameserver` + 3 `raftmq broker` processes (each with `--http-listen`) on
//!    free ports of 127.0.0.1, data in a fresh directory on the disk (not tmpfs).
//! 2. **Fill**: one topic; `--inflight` concurrent admin `Produce` requests of `--batch`
//!    messages of `--body-kib` KiB each go to the leader (the admin RPC takes bodies of up to
//!    64 MiB, the RocketMQ `SendMessage` path 4 MiB; a request over 4 MiB is one Raft entry of
//!    its own) until every node holds `--gib` of CommitLog, with the brokers on `--flush async`
//!    (`--fill-flush`); then every node is restarted with the broker defaults, which all
//!    measurements use.
//! 3. **Restarts**, `--rounds` of each kind: `follower-kill` (SIGKILL), `follower-term`
//!    (SIGTERM: graceful leave, final checkpoint), `leader-kill` (SIGKILL of the leader; the
//!    other two elect a new one first), then the `--cold-kinds` with the page cache dropped.
//!    Before each stop `--preload-secs` of writes give the node the checkpoint lag of a loaded
//!    node. The node stays down `--down-ms`, is spawned again with the same arguments, and
//!    from the spawn on the benchmark polls, every 20 ms, its gRPC port (an admin `Status`
//!    call answered) and `GET /readyz` (200 = a leader is known and everything committed is
//!    applied). Between restarts every node must be ready again.
//! 4. **Phases**: the restarted node logs its start-up phases (target `raftmq::startup`):
//!    storage open (CommitLog recovery scan), state machine open (checkpoint load, derived
//!    stores cut back), `Raft::new` (openraft re-applies the committed entries after the
//!    checkpoint), serving; the `/readyz` answers tell when a leader became known.
//!
//! Output: markdown on stdout and `bench/results/<date>-restart.{md,json}` (`--out`, `--name`;
//! `--append` adds this run to an existing JSON, e.g. before/after a fix). `--keep` keeps the
//! filled data directory and `--reuse DIR` restarts from it without filling again (same
//! ports). Writing stops when the disk has less than `--min-free-gib` left. `--smoke`: 64 MiB,
//! 64 MiB segments, 1 round, no preload or cold kind, nothing written; exits non-zero if a
//! restarted node never becomes ready.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use raftmq::proto::raftmq::admin as pb;
use raftmq::proto::raftmq::admin::admin_client::AdminClient;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};

use crate::cluster::{free_port, spawn};

mod report;

use self::report::{gib, markdown, run_markdown};

/// The target: ready within this after the restart.
const TARGET_MS: f64 = 5000.0;
const TOPIC: &str = "restart-bench";
const POLL: Duration = Duration::from_millis(20);
const LAYOUT_FILE: &str = "restart-cluster.json";
/// What the brokers log: warnings, their start-up phases, and openraft's own start-up lines.
const BROKER_LOG: &str = "warn,raftmq::startup=info,openraft::storage::helper=info";

/// How a node is stopped before it is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A follower, SIGKILL.
    FollowerKill,
    /// A follower, SIGTERM (graceful leave).
    FollowerTerm,
    /// The leader, SIGKILL; the other two elect a new leader before it starts again.
    LeaderKill,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::FollowerKill => "follower-kill",
            Kind::FollowerTerm => "follower-term",
            Kind::LeaderKill => "leader-kill",
        }
    }
    fn signal(self) -> i32 {
        match self {
            Kind::FollowerTerm => libc::SIGTERM,
            _ => libc::SIGKILL,
        }
    }
}

#[derive(clap::Args)]
pub struct RestartArgs {
    /// The raftmq binary [default: `raftmq` next to this executable, i.e. the same cargo
    /// profile's build; else target/release/raftmq of this workspace].
    #[arg(long = "bin")]
    pub bin: Option<PathBuf>,
    /// GiB of CommitLog per node before the restarts [default: 10; smoke: 1/16].
    #[arg(long)]
    pub gib: Option<f64>,
    /// Restarts per kind [default: 3; smoke: 1].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Kinds of restart with the page cache kept, in order (comma separated; `none` for
    /// none): `follower-kill`, `follower-term`, `leader-kill`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "follower-kill,follower-term,leader-kill"
    )]
    pub kinds: Vec<String>,
    /// Message body size in KiB.
    #[arg(long, default_value_t = 1024)]
    pub body_kib: usize,
    /// Messages per admin `Produce` request (one Raft entry each when over 4 MiB).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Produce requests in flight.
    #[arg(long, default_value_t = 4)]
    pub inflight: usize,
    /// CommitLog segment size of the brokers [default: 1G; smoke: 64M].
    #[arg(long)]
    pub segment_size: Option<String>,
    /// `--flush` of the brokers while filling. After the fill every node is restarted
    /// (SIGTERM, one at a time) with the broker defaults, which every measured restart uses.
    #[arg(long, default_value = "async", value_parser = ["sync", "async"])]
    pub fill_flush: String,
    /// `--heartbeat-ms` of the brokers while filling (election timeout 3×; 0 = the broker
    /// default, 50). Before bf357df the default stalled replication of multi-MiB entries (see
    /// "Replication stall" in bench/README.md).
    #[arg(long, default_value_t = 0)]
    pub fill_heartbeat_ms: u64,
    /// Before each restart, write this long (1 request of one body in flight, broker defaults)
    /// so that the node stops with a realistic checkpoint lag: the state machine checkpoints
    /// at most every 10 s, and a killed node re-applies what came after [default: 12; smoke: 0].
    #[arg(long)]
    pub preload_secs: Option<f64>,
    /// Rate of those writes, MiB/s (the disk space they take adds up over the restarts).
    #[arg(long, default_value_t = 8.0)]
    pub preload_mib_s: f64,
    /// How long a node stays down before it is started again, ms.
    #[arg(long, default_value_t = 1000)]
    pub down_ms: u64,
    /// Give up on a restarted node that is not ready after this many seconds [default: 120;
    /// smoke: 30].
    #[arg(long)]
    pub ready_timeout_secs: Option<f64>,
    /// Kinds restarted again, `--rounds` times each, after the others, with the page cache
    /// dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`, root) before the start: a cold start
    /// as after a machine reboot rather than a process restart [default: follower-kill;
    /// smoke: none]. `--cold-kinds none` for none.
    #[arg(long, value_delimiter = ',')]
    pub cold_kinds: Option<Vec<String>>,
    /// Stop (and fail) when the data directory's filesystem has less than this many GiB free;
    /// also required free (on top of the data) before the fill starts.
    #[arg(long, default_value_t = 5.0)]
    pub min_free_gib: f64,
    /// Where the data directory goes [default: as for `commitlog`].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the data directory (and print its path) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
    /// Restart from a data directory kept by an earlier `--keep` run (no fill, same ports).
    #[arg(long)]
    pub reuse: Option<PathBuf>,
    /// Directory for the result files [default: bench/results; smoke: none written].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Base name of the result files [default: <UTC date>-restart].
    #[arg(long)]
    pub name: Option<String>,
    /// Label of this run in the results (e.g. `before`, `after`).
    #[arg(long)]
    pub label: Option<String>,
    /// Add this run to an existing `<name>.json` (and render every run in `<name>.md`).
    #[arg(long)]
    pub append: bool,
    /// CI: 64 MiB, 1 round; fails if a node never becomes ready.
    #[arg(long)]
    pub smoke: bool,
}

/// Ports and settings of a cluster, saved in its data directory for `--reuse`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Layout {
    nameserver: u16,
    grpc: Vec<u16>,
    http: Vec<u16>,
    segment_size: String,
}

/// The processes of one cluster; all of them are stopped on drop.
struct Group {
    exe: PathBuf,
    dir: PathBuf,
    layout: Layout,
    ns: Option<Child>,
    nodes: Vec<Option<Child>>,
    /// Extra broker flags of the nodes spawned next (none: the broker defaults).
    extra: Vec<String>,
    /// Writing stops below this many free bytes on the data directory's disk.
    min_free: u64,
}

impl Group {
    fn grpc(&self, id: usize) -> String {
        format!("127.0.0.1:{}", self.layout.grpc[id - 1])
    }

    fn http(&self, id: usize) -> String {
        format!("127.0.0.1:{}", self.layout.http[id - 1])
    }

    fn ns_addr(&self) -> String {
        format!("127.0.0.1:{}", self.layout.nameserver)
    }

    fn start(exe: &Path, dir: &Path, layout: Layout, extra: Vec<String>) -> Result<Group> {
        let mut g = Group {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            layout,
            ns: None,
            nodes: vec![None, None, None],
            extra,
            min_free: u64::MAX,
        };
        g.ns = Some(spawn(
            exe,
            &dir.join("nameserver.log"),
            &["nameserver".into(), "--listen".into(), g.ns_addr()],
            &[("RUST_LOG", "warn")],
        )?);
        for id in 1..=3 {
            g.spawn_node(id, &format!("node{id}.log"))?;
        }
        Ok(g)
    }

    fn spawn_node(&mut self, id: usize, log: &str) -> Result<()> {
        let peers = (1..=3)
            .map(|i| format!("{i}={}", self.grpc(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "broker".to_string(),
            "--group".into(),
            "bench".into(),
            "--node-id".into(),
            id.to_string(),
            "--listen".into(),
            self.grpc(id),
            "--peers".into(),
            peers,
            "--http-listen".into(),
            self.http(id),
            "--data-dir".into(),
            self.dir.join(format!("node{id}")).display().to_string(),
            "--segment-size".into(),
            self.layout.segment_size.clone(),
            "--nameservers".into(),
            self.ns_addr(),
        ];
        args.extend(self.extra.iter().cloned());
        let child = spawn(
            &self.exe,
            &self.dir.join(log),
            &args,
            &[("RUST_LOG", BROKER_LOG), ("NO_COLOR", "1")],
        )?;
        self.nodes[id - 1] = Some(child);
        Ok(())
    }

    /// Fail if a node or the nameserver that should run has exited.
    fn check_alive(&mut self) -> Result<()> {
        for (i, c) in self.nodes.iter_mut().enumerate() {
            if let Some(c) = c
                && let Ok(Some(st)) = c.try_wait()
            {
                bail!(
                    "node {} exited ({st}); see its log in {}",
                    i + 1,
                    self.dir.display()
                );
            }
        }
        Ok(())
    }

    /// Send `signal` to node `id` and wait for it to exit (SIGKILL after 30 s); returns how
    /// long that took.
    async fn stop(&mut self, id: usize, signal: i32) -> Result<Duration> {
        let Some(mut child) = self.nodes[id - 1].take() else {
            bail!("node {id} is not running");
        };
        let t = Instant::now();
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        loop {
            if child.try_wait()?.is_some() {
                return Ok(t.elapsed());
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let mut all: Vec<Child> = self.nodes.iter_mut().filter_map(Option::take).collect();
        all.extend(self.ns.take());
        for c in &all {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for c in &mut all {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

async fn admin(addr: &str) -> Result<AdminClient<Channel>> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(AdminClient::new(ch)
        .max_decoding_message_size(80 << 20)
        .max_encoding_message_size(80 << 20))
}

async fn status(addr: &str, within: Duration) -> Result<pb::NodeStatus> {
    let f = async {
        let mut c = admin(addr).await?;
        Ok::<_, anyhow::Error>(c.status(pb::StatusRequest {}).await?.into_inner())
    };
    tokio::time::timeout(within, f)
        .await
        .map_err(|_| anyhow::anyhow!("status of {addr}: timed out"))?
}

/// `GET path` over plain HTTP/1.1: (status code, body).
async fn http_get(addr: &str, path: &str, within: Duration) -> Result<(u16, String)> {
    let f = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let raw = String::from_utf8_lossy(&raw).to_string();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let code = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad HTTP answer from {addr}: {head:?}"))?;
        Ok::<_, anyhow::Error>((code, body.trim().to_string()))
    };
    tokio::time::timeout(within, f)
        .await
        .map_err(|_| anyhow::anyhow!("GET {path} on {addr}: timed out"))?
}

/// Statuses of the running nodes (id, status); nodes that do not answer are left out.
async fn statuses(g: &Group) -> Vec<(usize, pb::NodeStatus)> {
    let mut out = Vec::new();
    for id in 1..=3 {
        if g.nodes[id - 1].is_some()
            && let Ok(s) = status(&g.grpc(id), Duration::from_secs(2)).await
        {
            out.push((id, s));
        }
    }
    out
}

/// The leader's node id, as the running nodes agree on it.
async fn leader(g: &Group) -> Option<usize> {
    let st = statuses(g).await;
    let l = st.iter().find_map(|(_, s)| s.leader_id)?;
    let agreed = st.iter().all(|(_, s)| s.leader_id == Some(l));
    (agreed && (1..=3).contains(&(l as usize))).then_some(l as usize)
}

/// Wait until every node runs, answers `/readyz` 200, and holds and has applied the same
/// log. Returns the statuses.
async fn wait_all_ready(g: &mut Group, within: Duration) -> Result<Vec<(usize, pb::NodeStatus)>> {
    let deadline = Instant::now() + within;
    let mut why = String::new();
    while Instant::now() < deadline {
        g.check_alive()?;
        let mut ready = 0;
        for id in 1..=3 {
            match http_get(&g.http(id), "/readyz", Duration::from_secs(2)).await {
                Ok((200, _)) => ready += 1,
                Ok((c, b)) => why = format!("node {id}: {c} {b}"),
                Err(e) => why = format!("node {id}: {e}"),
            }
        }
        if ready == 3 {
            let st = statuses(g).await;
            let last: Vec<Option<u64>> = st.iter().map(|(_, s)| s.last_log_index).collect();
            let same = st.len() == 3 && last.windows(2).all(|w| w[0] == w[1]);
            let applied = st.iter().all(|(_, s)| s.applied == s.last_log_index);
            if same && applied {
                return Ok(st);
            }
            why = format!("logs not equal yet: last indexes {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the group is not ready after {within:?}: {why}")
}

/// Bytes allocated on disk by the files of `dir` (st_blocks), and how many files.
fn allocated(dir: &Path) -> (u64, usize) {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if let Ok(m) = e.metadata()
                && m.is_file()
            {
                bytes += m.blocks() * 512;
                n += 1;
            }
        }
    }
    (bytes, n)
}

/// Free bytes (for unprivileged users) of the filesystem holding `p`.
fn free_bytes(p: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs buffer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: statvfs filled the buffer when it returned 0.
    let st = (rc == 0).then(|| unsafe { st.assume_init() })?;
    #[allow(clippy::unnecessary_cast)]
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FillStats {
    /// Extra broker flags during the fill.
    broker_flags: Vec<String>,
    messages: u64,
    body_bytes: u64,
    secs: f64,
    mib_s: f64,
    /// Per node after the fill: (id, log bytes = write position - oldest position, allocated
    /// bytes of `commitlog/`, segment files, last log index).
    nodes: Vec<(usize, u64, u64, usize, u64)>,
}

/// How much a [`load`] writes.
#[derive(Clone, Copy)]
enum Limit {
    /// Bytes of bodies.
    Bytes(u64),
    /// Seconds, at most this many MiB/s.
    Secs(f64, f64),
}

/// What a [`load`] wrote: (messages, bytes of bodies, seconds).
type Written = (u64, u64, f64);

/// Admin `Produce` requests of `batch` messages of `body` to the leader, `inflight` at a time,
/// until `limit`. A request that takes longer than 30 s fails the load: the group stalled
/// (see "replication stall" in bench/README.md).
async fn load(
    g: &mut Group,
    body: &Bytes,
    batch: usize,
    inflight: usize,
    limit: Limit,
    progress: bool,
) -> Result<Written> {
    let sent = Arc::new(AtomicU64::new(0));
    let msgs = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let grpc: Vec<String> = (1..=3).map(|i| g.grpc(i)).collect();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..inflight {
        let (sent, msgs, stop, body, grpc) = (
            sent.clone(),
            msgs.clone(),
            stop.clone(),
            body.clone(),
            grpc.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client: Option<AdminClient<Channel>> = None;
            let mut failures = 0u32;
            let more = |sent: &AtomicU64| match limit {
                Limit::Bytes(b) => sent.load(Ordering::Relaxed) < b,
                Limit::Secs(s, _) => t.elapsed().as_secs_f64() < s,
            };
            while !stop.load(Ordering::Relaxed) && more(&sent) {
                if let Limit::Secs(_, rate) = limit {
                    // Pace: wait until the bytes sent so far are due.
                    let due = sent.load(Ordering::Relaxed) as f64 / (rate * (1 << 20) as f64);
                    let ahead = due - t.elapsed().as_secs_f64();
                    if ahead > 0.0 {
                        tokio::time::sleep(Duration::from_secs_f64(ahead)).await;
                        continue;
                    }
                }
                if client.is_none() {
                    // Find the leader (any node answers with its address).
                    for addr in &grpc {
                        if let Ok(s) = status(addr, Duration::from_secs(2)).await
                            && !s.leader_addr.is_empty()
                        {
                            client = admin(&s.leader_addr).await.ok();
                            break;
                        }
                    }
                }
                let Some(c) = client.as_mut() else {
                    failures += 1;
                    if failures > 100 {
                        bail!("no leader to produce to");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let req = pb::ProduceRequest {
                    messages: (0..batch)
                        .map(|_| pb::ProduceMessage {
                            topic: TOPIC.into(),
                            queue_id: -1,
                            body: body.clone(),
                            ..Default::default()
                        })
                        .collect(),
                };
                match tokio::time::timeout(Duration::from_secs(30), c.produce(req)).await {
                    Ok(Ok(_)) => {
                        failures = 0;
                        sent.fetch_add((batch * body.len()) as u64, Ordering::Relaxed);
                        msgs.fetch_add(batch as u64, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        failures += 1;
                        if failures > 100 {
                            bail!("produce keeps failing: {e}");
                        }
                        client = None;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(_) => bail!(
                        "a produce request got no answer in 30 s: the group stopped committing \
                         (replication stall, see bench/README.md)"
                    ),
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let mut last_print = Instant::now();
    while !tasks.iter().all(|t| t.is_finished()) {
        if let Err(e) = g.check_alive() {
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
        if let Some(free) = free_bytes(&g.dir)
            && free < g.min_free
        {
            stop.store(true, Ordering::Relaxed);
            bail!(
                "stopped writing: only {} free on the disk of {} (--min-free-gib)",
                gib(free),
                g.dir.display()
            );
        }
        if progress && last_print.elapsed() > Duration::from_secs(10) {
            let s = sent.load(Ordering::Relaxed) as f64;
            eprintln!(
                "  {:.2} GiB written, {:.0} MiB/s, load average {}",
                s / (1u64 << 30) as f64,
                s / (1 << 20) as f64 / t.elapsed().as_secs_f64(),
                loadavg()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        if let Err(e) = task.await? {
            stop.store(true, Ordering::Relaxed);
            return Err(e);
        }
    }
    Ok((
        msgs.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        t.elapsed().as_secs_f64(),
    ))
}

async fn fill(g: &mut Group, a: &RestartArgs, body: &Bytes, target: u64) -> Result<FillStats> {
    let (messages, body_bytes, secs) =
        load(g, body, a.batch, a.inflight, Limit::Bytes(target), true).await?;
    eprintln!("  fill done in {secs:.1} s; waiting for every node to hold and apply the whole log");
    let st = wait_all_ready(g, Duration::from_secs(600)).await?;
    let nodes = st
        .iter()
        .map(|(id, s)| {
            let (alloc, files) = allocated(&g.dir.join(format!("node{id}/commitlog")));
            (
                *id,
                s.write_position - s.oldest_position,
                alloc,
                files,
                s.last_log_index.unwrap_or(0),
            )
        })
        .collect();
    Ok(FillStats {
        broker_flags: g.extra.clone(),
        messages,
        body_bytes,
        secs,
        mib_s: body_bytes as f64 / (1 << 20) as f64 / secs,
        nodes,
    })
}

/// Stop every node with SIGTERM and start it again, one at a time, with the group's current
/// flags.
async fn rolling_restart(g: &mut Group, tag: &str) -> Result<()> {
    for id in 1..=3 {
        g.stop(id, libc::SIGTERM).await?;
        g.spawn_node(id, &format!("node{id}-{tag}.log"))?;
        wait_all_ready(g, Duration::from_secs(300)).await?;
    }
    Ok(())
}

/// The start-up phases a restarted node logged (target `raftmq::startup`), in ms from the
/// start of `Node::start`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Phases {
    storage_ms: Option<f64>,
    records_scanned: Option<u64>,
    state_machine_ms: Option<f64>,
    checkpoint_index: Option<u64>,
    committed_index: Option<u64>,
    reapply_entries: Option<u64>,
    raft_ms: Option<f64>,
    serving_ms: Option<f64>,
}

/// The number right after `marker` in `line` (digits and one dot).
fn number_after(line: &str, marker: &str) -> Option<f64> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn parse_phases(log: &str) -> Phases {
    let mut p = Phases::default();
    for line in log.lines() {
        if line.contains("storage opened in ") {
            p.storage_ms = number_after(line, "storage opened in ");
            p.records_scanned = number_after(line, "segments, ").map(|n| n as u64);
        } else if line.contains("state machine opened in ") {
            p.state_machine_ms = number_after(line, "state machine opened in ");
            p.checkpoint_index = number_after(line, "checkpoint at index ").map(|n| n as u64);
            p.committed_index = number_after(line, "committed index ").map(|n| n as u64);
            p.reapply_entries = line.find(" entries to re-apply").and_then(|at| {
                let head = &line[..at];
                head[head.rfind(' ')? + 1..].parse().ok()
            });
        } else if line.contains("raft started in ") {
            p.raft_ms = number_after(line, "raft started in ");
        } else if line.contains("serving ") && line.contains(" ms after start") {
            p.serving_ms = number_after(line, "serving ");
        }
    }
    p
}

/// One restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sample {
    kind: Kind,
    round: usize,
    node: usize,
    /// Written just before the stop (`--preload-secs`): (messages, body bytes, seconds).
    preloaded: Option<Written>,
    load_average: String,
    /// CommitLog of the node before it stopped: write position - oldest position.
    log_bytes: u64,
    /// Allocated bytes of its `commitlog/` directory (segments are preallocated).
    disk_bytes: u64,
    segments: usize,
    last_log_index: u64,
    stop_ms: f64,
    /// leader-kill: from the kill until the other two agree on a new leader.
    election_ms: Option<f64>,
    /// From the spawn until an admin `Status` call is answered.
    grpc_ms: f64,
    /// From the spawn until the first `/readyz` answer that no longer says "no leader known".
    leader_known_ms: f64,
    /// From the spawn until `/readyz` answers 200.
    ready_ms: f64,
    /// `/readyz` answers other than 200 seen, with when they were first seen (ms).
    not_ready: Vec<(f64, String)>,
    phases: Phases,
    cold: bool,
}

async fn restart_once(
    g: &mut Group,
    a: &RestartArgs,
    kind: Kind,
    round: usize,
    ready_timeout: Duration,
    preload: (&Bytes, f64),
    cold: bool,
) -> Result<Sample> {
    let preloaded = if preload.1 > 0.0 {
        wait_all_ready(g, Duration::from_secs(120)).await?;
        let limit = Limit::Secs(preload.1, a.preload_mib_s);
        Some(load(g, preload.0, 1, 1, limit, false).await?)
    } else {
        None
    };
    let st = wait_all_ready(g, Duration::from_secs(120)).await?;
    let Some(lead) = leader(g).await else {
        bail!("the nodes do not agree on a leader");
    };
    let node = match kind {
        Kind::LeaderKill => lead,
        _ => {
            let followers: Vec<usize> = (1..=3).filter(|i| *i != lead).collect();
            followers[round % followers.len()]
        }
    };
    let s = &st
        .iter()
        .find(|(id, _)| *id == node)
        .context("status of the node to restart")?
        .1;
    let (disk_bytes, segments) = allocated(&g.dir.join(format!("node{node}/commitlog")));
    let (log_bytes, last_log_index) = (
        s.write_position - s.oldest_position,
        s.last_log_index.unwrap_or(0),
    );
    let stop = g.stop(node, kind.signal()).await?;
    let mut election_ms = None;
    if kind == Kind::LeaderKill {
        let t = Instant::now();
        loop {
            if let Some(l) = leader(g).await
                && l != node
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("no new leader 30 s after killing leader {node}");
            }
            tokio::time::sleep(POLL).await;
        }
        election_ms = Some(t.elapsed().as_secs_f64() * 1e3);
    }
    tokio::time::sleep(Duration::from_millis(a.down_ms)).await;
    if cold {
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
        std::fs::write("/proc/sys/vm/drop_caches", "3\n")
            .context("dropping the page cache (--cold needs root)")?;
    }
    let load_average = loadavg();
    let log = format!(
        "node{node}-{}{}-{round}.log",
        kind.name(),
        if cold { "-cold" } else { "" }
    );
    let t0 = Instant::now();
    g.spawn_node(node, &log)?;
    let (grpc_addr, http_addr) = (g.grpc(node), g.http(node));
    let grpc = tokio::spawn(async move {
        loop {
            if status(&grpc_addr, Duration::from_millis(500)).await.is_ok() {
                return t0.elapsed();
            }
            tokio::time::sleep(POLL).await;
        }
    });
    let ready = tokio::spawn(async move {
        let mut seen: Vec<(f64, String)> = Vec::new();
        let mut leader_known = None;
        loop {
            if let Ok((code, body)) = http_get(&http_addr, "/readyz", Duration::from_secs(2)).await
            {
                let at = t0.elapsed();
                if code == 200 {
                    return (at, leader_known.unwrap_or(at), seen);
                }
                if !body.contains("no leader known") && leader_known.is_none() {
                    leader_known = Some(at);
                }
                // Group "applied N, committed M" answers into one line.
                let class = body
                    .split_once("applied ")
                    .map_or(body.clone(), |(h, _)| format!("{h}applied N, committed M"));
                if seen.last().is_none_or(|(_, c)| *c != class) {
                    seen.push((at.as_secs_f64() * 1e3, class));
                }
            }
            tokio::time::sleep(POLL).await;
        }
    });
    while !(grpc.is_finished() && ready.is_finished()) {
        if let Err(e) = g.check_alive() {
            grpc.abort();
            ready.abort();
            return Err(e);
        }
        if t0.elapsed() > ready_timeout {
            grpc.abort();
            ready.abort();
            bail!(
                "node {node} ({}{}, round {round}) is not ready {ready_timeout:?} after its restart; see {}",
                kind.name(),
                if cold { ", cold" } else { "" },
                g.dir.join(&log).display()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let grpc_ms = grpc.await?.as_secs_f64() * 1e3;
    let (ready_at, leader_at, not_ready) = ready.await?;
    let phases = parse_phases(&std::fs::read_to_string(g.dir.join(&log)).unwrap_or_default());
    Ok(Sample {
        kind,
        round,
        node,
        preloaded,
        load_average,
        log_bytes,
        disk_bytes,
        segments,
        last_log_index,
        stop_ms: stop.as_secs_f64() * 1e3,
        election_ms,
        grpc_ms,
        leader_known_ms: leader_at.as_secs_f64() * 1e3,
        ready_ms: ready_at.as_secs_f64() * 1e3,
        not_ready,
        phases,
        cold,
    })
}

/// median, min, max
fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    let med = crate::median(v.to_vec())?;
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((med, min, max))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Summary {
    kind: Kind,
    /// Page cache dropped before the start.
    #[serde(default)]
    cold: bool,
    restarts: usize,
    /// (median, min, max) ms
    ready_ms: (f64, f64, f64),
    grpc_ms: (f64, f64, f64),
    leader_known_ms: (f64, f64, f64),
    storage_ms: Option<f64>,
    state_machine_ms: Option<f64>,
    raft_ms: Option<f64>,
    serving_ms: Option<f64>,
    reapply_entries: Option<f64>,
    meets_target: bool,
}

fn summarize(samples: &[Sample], kinds: &[(Kind, bool)]) -> Vec<Summary> {
    kinds
        .iter()
        .filter_map(|&(k, cold)| {
            let s: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.kind == k && s.cold == cold)
                .collect();
            let f = |g: fn(&Sample) -> f64| stats(&s.iter().map(|x| g(x)).collect::<Vec<_>>());
            let o = |g: fn(&Sample) -> Option<f64>| {
                crate::median(s.iter().filter_map(|x| g(x)).collect())
            };
            let ready = f(|x| x.ready_ms)?;
            Some(Summary {
                kind: k,
                cold,
                restarts: s.len(),
                ready_ms: ready,
                grpc_ms: f(|x| x.grpc_ms)?,
                leader_known_ms: f(|x| x.leader_known_ms)?,
                storage_ms: o(|x| x.phases.storage_ms),
                state_machine_ms: o(|x| x.phases.state_machine_ms),
                raft_ms: o(|x| x.phases.raft_ms),
                serving_ms: o(|x| x.phases.serving_ms),
                reapply_entries: o(|x| x.phases.reapply_entries.map(|n| n as f64)),
                meets_target: ready.2 < TARGET_MS,
            })
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    label: Option<String>,
    date: String,
    unix_time: u64,
    git_rev: String,
    raftmq_bin: String,
    kernel: String,
    dir: String,
    filesystem: String,
    cpus: usize,
    mem_total: String,
    load_average_start: String,
    gib: f64,
    body_kib: usize,
    batch: usize,
    inflight: usize,
    segment_size: String,
    preload_secs: f64,
    rounds: usize,
    down_ms: u64,
    preload_mib_s: f64,
    reused_data: bool,
    notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunOut {
    meta: Meta,
    fill: Option<FillStats>,
    summaries: Vec<Summary>,
    samples: Vec<Sample>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct JsonOut {
    target_ms: f64,
    runs: Vec<RunOut>,
}

pub fn run(a: RestartArgs) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let exe = a.bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .map(|e| e.with_file_name("raftmq"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| root.join("target/release/raftmq"))
    });
    if !exe.exists() {
        bail!(
            "{} not found: build it with `cargo build --release` or pass --bin",
            exe.display()
        );
    }
    let gib_target = a.gib.unwrap_or(if a.smoke { 1.0 / 16.0 } else { 10.0 });
    let rounds = a.rounds.unwrap_or(if a.smoke { 1 } else { 3 });
    let segment_size = a
        .segment_size
        .clone()
        .unwrap_or_else(|| if a.smoke { "64M" } else { "1G" }.into());
    let preload_secs = a.preload_secs.unwrap_or(if a.smoke { 0.0 } else { 12.0 });
    let ready_timeout =
        Duration::from_secs_f64(
            a.ready_timeout_secs
                .unwrap_or(if a.smoke { 30.0 } else { 120.0 }),
        );
    if gib_target.is_nan()
        || gib_target <= 0.0
        || rounds == 0
        || a.body_kib == 0
        || a.batch == 0
        || a.inflight == 0
    {
        bail!("--gib, --rounds, --body-kib, --batch and --inflight must be > 0");
    }
    let parse_kinds = |v: &[String], flag: &str| -> Result<Vec<Kind>> {
        if v.iter().all(|k| k == "none") {
            return Ok(Vec::new());
        }
        v.iter()
            .map(|k| {
                <Kind as clap::ValueEnum>::from_str(k, true)
                    .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
            })
            .collect()
    };
    let warm_kinds = parse_kinds(&a.kinds, "--kinds")?;
    let cold_kinds: Vec<Kind> = match &a.cold_kinds {
        None if a.smoke => Vec::new(),
        None => vec![Kind::FollowerKill],
        Some(v) => parse_kinds(v, "--cold-kinds")?,
    };
    // (kind, cold): the warm kinds, then the cold ones.
    let plan: Vec<(Kind, bool)> = warm_kinds
        .iter()
        .map(|k| (*k, false))
        .chain(cold_kinds.iter().map(|k| (*k, true)))
        .collect();
    if plan.is_empty() {
        bail!("--kinds and --cold-kinds name no restart");
    }

    // The data directory: fresh (deleted at the end unless --keep), or reused.
    let (dir, tempdir, layout) = match &a.reuse {
        Some(d) => {
            let text = std::fs::read_to_string(d.join(LAYOUT_FILE))
                .with_context(|| format!("{} is not a kept restart data directory", d.display()))?;
            let layout: Layout = serde_json::from_str(&text)?;
            (d.clone(), None, layout)
        }
        None => {
            let base = match &a.dir {
                Some(d) => d.clone(),
                None => crate::default_dir()?,
            };
            std::fs::create_dir_all(&base)?;
            let td = tempfile::Builder::new()
                .prefix("raftmq-restart-")
                .tempdir_in(&base)
                .with_context(|| format!("making a temp dir in {}", base.display()))?;
            let layout = Layout {
                nameserver: free_port()?,
                grpc: (0..3).map(|_| free_port()).collect::<Result<_>>()?,
                http: (0..3).map(|_| free_port()).collect::<Result<_>>()?,
                segment_size: segment_size.clone(),
            };
            std::fs::write(
                td.path().join(LAYOUT_FILE),
                serde_json::to_string_pretty(&layout)?,
            )?;
            (td.path().to_path_buf(), Some(td), layout)
        }
    };
    let filesystem = crate::fs_name(&dir);
    if filesystem == "tmpfs" {
        eprintln!(
            "warning: {} is on tmpfs: figures say nothing about a disk",
            dir.display()
        );
    }
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let meta = Meta {
        label: a.label.clone(),
        date: crate::suite::utc_date(unix_time),
        unix_time,
        git_rev: crate::git_rev(),
        raftmq_bin: exe.display().to_string(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string()),
        dir: dir.display().to_string(),
        filesystem,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_total: std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let kb: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
                Some(format!("{:.0} GiB", kb / (1 << 20) as f64))
            })
            .unwrap_or_else(|| "n/a".into()),
        load_average_start: loadavg(),
        gib: gib_target,
        body_kib: a.body_kib,
        batch: a.batch,
        inflight: a.inflight,
        segment_size: layout.segment_size.clone(),
        preload_secs,
        rounds,
        down_ms: a.down_ms,
        preload_mib_s: a.preload_mib_s,
        reused_data: a.reuse.is_some(),
        notes: crate::environment_notes()
            .into_iter()
            .filter(|n| !n.contains("load average"))
            .collect(),
    };
    eprintln!(
        "restart benchmark: {} in {} (load average {})",
        exe.display(),
        dir.display(),
        meta.load_average_start
    );

    let rt = tokio::runtime::Runtime::new()?;
    // Processes are spawned on this (the main) thread: see `cluster::spawn`.
    let result = rt.block_on(async {
        let mut fill_flags = vec!["--flush".to_string(), a.fill_flush.clone()];
        if a.fill_heartbeat_ms > 0 {
            fill_flags.extend([
                "--heartbeat-ms".into(),
                a.fill_heartbeat_ms.to_string(),
                "--election-timeout-ms".into(),
                (3 * a.fill_heartbeat_ms).to_string(),
            ]);
        }
        let mut g = Group::start(
            &exe,
            &dir,
            layout,
            if a.reuse.is_some() {
                Vec::new()
            } else {
                fill_flags
            },
        )?;
        let body = Bytes::from(
            (0..a.body_kib << 10)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        g.min_free = (a.min_free_gib * (1u64 << 30) as f64) as u64;
        let fill_stats = if a.reuse.is_none() {
            // Every node: the fill, one preallocated segment more, the writes before restarts.
            let seg = raftmq::config::parse_size(&g.layout.segment_size)
                .map_err(|e| anyhow::anyhow!("--segment-size: {e}"))?;
            let per_node = gib_target * (1u64 << 30) as f64
                + seg as f64
                + preload_secs * a.preload_mib_s * (1 << 20) as f64 * (plan.len() * rounds) as f64;
            let need = 3.0 * per_node + g.min_free as f64;
            let free = free_bytes(&dir).unwrap_or(u64::MAX);
            if (free as f64) < need {
                bail!(
                    "{} has {} free; this run needs about {} (3 nodes' data and --min-free-gib)",
                    dir.display(),
                    gib(free),
                    gib(need as u64)
                );
            }
            wait_all_ready(&mut g, Duration::from_secs(60)).await?;
            let (exe, ns) = (exe.clone(), g.ns_addr());
            tokio::task::spawn_blocking(move || crate::cluster::create_topic(&exe, &ns, TOPIC, 8))
                .await??;
            let target = (gib_target * (1u64 << 30) as f64) as u64;
            eprintln!("filling to {gib_target} GiB of CommitLog per node ...");
            let f = fill(&mut g, &a, &body, target).await?;
            eprintln!("restarting every node with the broker defaults ...");
            g.extra.clear();
            rolling_restart(&mut g, "defaults").await?;
            Some(f)
        } else {
            wait_all_ready(&mut g, Duration::from_secs(300)).await?;
            None
        };
        let mut samples = Vec::new();
        for &(kind, cold) in &plan {
            for round in 0..rounds {
                eprintln!(
                    "restart: {}{} round {} ...",
                    kind.name(),
                    if cold { " (cold)" } else { "" },
                    round + 1
                );
                let s = restart_once(
                    &mut g,
                    &a,
                    kind,
                    round,
                    ready_timeout,
                    (&body, preload_secs),
                    cold,
                )
                .await?;
                eprintln!(
                    "  node {}: gRPC {:.0} ms, leader known {:.0} ms, ready {:.0} ms",
                    s.node, s.grpc_ms, s.leader_known_ms, s.ready_ms
                );
                samples.push(s);
            }
        }
        wait_all_ready(&mut g, Duration::from_secs(120)).await?;
        drop(g);
        Ok::<_, anyhow::Error>((fill_stats, samples))
    });
    let finish_dir = |keep: bool| {
        if let Some(td) = tempdir {
            if keep {
                let p = td.keep();
                eprintln!("data kept in {} (reuse with --reuse)", p.display());
            } else {
                let p = td.path().to_path_buf();
                if let Err(e) = td.close() {
                    eprintln!("warning: deleting {}: {e}", p.display());
                }
            }
        }
    };
    let (fill_stats, samples) = match result {
        Ok(r) => r,
        Err(e) => {
            finish_dir(a.keep);
            return Err(e);
        }
    };
    finish_dir(a.keep);

    let summaries = summarize(&samples, &plan);
    let run = RunOut {
        meta,
        fill: fill_stats,
        summaries,
        samples,
    };
    println!("{}", run_markdown(&run));
    let out_dir = match (&a.out, a.smoke) {
        (Some(o), _) => Some(o.clone()),
        (None, false) => Some(root.join("bench/results")),
        (None, true) => None,
    };
    if let Some(out_dir) = out_dir {
        std::fs::create_dir_all(&out_dir)?;
        let name = a
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-restart", run.meta.date));
        let json_path = out_dir.join(format!("{name}.json"));
        let mut out = if a.append && json_path.exists() {
            serde_json::from_str(&std::fs::read_to_string(&json_path)?)
                .with_context(|| format!("reading {}", json_path.display()))?
        } else {
            JsonOut::default()
        };
        out.target_ms = TARGET_MS;
        out.runs.push(run.clone());
        std::fs::write(&json_path, serde_json::to_string_pretty(&out)?)?;
        let md_path = out_dir.join(format!("{name}.md"));
        std::fs::write(&md_path, markdown(&out))?;
        eprintln!("wrote {}, {}", md_path.display(), json_path.display());
    }
    // Every restart became ready (a timeout fails above); check the figures exist.
    let bad: Vec<String> = run
        .samples
        .iter()
        .filter(|s| !(s.ready_ms.is_finite() && s.ready_ms > 0.0 && s.grpc_ms > 0.0))
        .map(|s| format!("{} round {}", s.kind.name(), s.round + 1))
        .collect();
    if !bad.is_empty() || run.samples.is_empty() {
        bail!("restarts without figures: {bad:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_read_from_the_startup_log() {
        let log = "2026-12-07T20:00:00Z  INFO raftmq::startup: storage opened in 812.5 ms: 11 segments, 2050 records scanned, log 0..2600, write position 10737418240\n\
                   2026-12-07T20:00:00Z  INFO raftmq::startup: state machine opened in 3.2 ms: checkpoint at index 2400, committed index 2598, 198 entries to re-apply\n\
                   2026-12-07T20:00:01Z  INFO raftmq::startup: raft started in 950.0 ms (re-applying committed entries included)\n\
                   2026-12-07T20:00:01Z  INFO raftmq::startup: serving 1780.4 ms after start\n";
        let p = parse_phases(log);
        assert_eq!(p.storage_ms, Some(812.5));
        assert_eq!(p.records_scanned, Some(2050));
        assert_eq!(p.state_machine_ms, Some(3.2));
        assert_eq!(p.checkpoint_index, Some(2400));
        assert_eq!(p.committed_index, Some(2598));
        assert_eq!(p.reapply_entries, Some(198));
        assert_eq!(p.raft_ms, Some(950.0));
        assert_eq!(p.serving_ms, Some(1780.4));
        let none = parse_phases(
            "state machine opened in 1.0 ms: checkpoint at index none, committed index none, 0 entries to re-apply",
        );
        assert_eq!(none.checkpoint_index, None);
        assert_eq!(none.reapply_entries, Some(0));
    }

    #[test]
    fn stats_are_median_min_max() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats(&[]), None);
    }
}
