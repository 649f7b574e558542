//! `raftmq-bench cluster`: a real raftmq cluster (nameserver + 3 broker processes) and,
//! with `--compare nats`, a 3-node NATS JetStream cluster, driven with the same workloads in
//! the same run, alternating the systems round by round.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use raftmq::client::{Producer, SimpleConsumer};
use serde::Serialize;

use crate::cluster::{self, Nats, Raftmq, proc_cpu_secs};
use crate::counters::{CpuMeter, DiskMeter};
use crate::load::{self, ProduceShape, Receiver, Sender};
use crate::protocol_floor::FloorServer;
use crate::report::Row;

#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Also run a 3-node NATS JetStream cluster (`nats`), alternating with raftmq.
    #[arg(long)]
    pub compare: Option<String>,
    /// Rounds: each round runs every system once (A B A B ...); medians are over rounds
    /// [default: 3; smoke: 1].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Messages per produce run (the consume run reads those of the largest in-flight run)
    /// [default: 100000; smoke: 1000].
    #[arg(long)]
    pub messages: Option<u64>,
    /// Messages per produce run at in-flight 1 [default: 5000; smoke: 100].
    #[arg(long)]
    pub messages_if1: Option<u64>,
    /// Message body size in bytes (the first 8 carry the send time).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// In-flight bounds (requests in flight per producer), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,256")]
    pub inflight: Vec<usize>,
    /// Concurrent producers (each with its own in-flight bound and connection).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Messages per request (1 = the project client's `Producer::send`; more = raw
    /// `SendMessageRequest` batches for raftmq, pipelined publishes for NATS).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// raftmq: send through a bare generated gRPC client (pre-resolved route, no retries)
    /// even at one message per request, instead of the project client — the cheapest client
    /// the protocol allows, to separate client cost from broker cost.
    #[arg(long)]
    pub raw_client: bool,
    /// raftmq client at one message per request: `project` (`raftmq::client::Producer`) or
    /// `official-rust` (the official Apache RocketMQ Rust client, crate `rocketmq` 5.0:
    /// `Producer::send` with at most `--inflight` sends in flight; raftmq and the floor only,
    /// NATS keeps async-nats).
    #[arg(long, value_enum, default_value_t = ClientKind::Project)]
    pub client: ClientKind,
    /// `--client official-rust`: its access point. `nameserver`: the nameserver, which proxies
    /// every RPC to the brokers (how official clients are deployed); `leader`: the group
    /// leader's broker port (its routes name every member, one queue entry per member, and the
    /// client sends round robin over the entries: followers forward to the leader).
    #[arg(long, value_enum, default_value_t = Access::Nameserver)]
    pub access: Access,
    /// raftmq flush modes to run, comma separated (`sync`, `async`).
    #[arg(long, value_delimiter = ',', default_value = "sync,async")]
    pub flush: Vec<String>,
    /// Workloads, comma separated: produce, consume, e2e.
    #[arg(long, value_delimiter = ',', default_value = "produce,consume,e2e")]
    pub workloads: Vec<String>,
    /// e2e: producer rate as a fraction of the same round's max produce rate.
    #[arg(long, default_value_t = 0.5)]
    pub e2e_load: f64,
    /// e2e: seconds of traffic [default: 10; smoke: 1].
    #[arg(long)]
    pub e2e_secs: Option<f64>,
    /// Consume: messages per receive call / pull batch.
    #[arg(long, default_value_t = 32)]
    pub consume_batch: usize,
    /// Consume: concurrent receive loops (raftmq).
    #[arg(long, default_value_t = 4)]
    pub consume_concurrency: usize,
    /// Consume (raftmq): `batch` acks each received batch in one AckMessage request;
    /// `each` sends one AckMessage request per message, all of a batch at once, as the
    /// official Java, Go and Rust clients' asynchronous acks do.
    #[arg(long, value_enum, default_value_t = AckMode::Batch)]
    pub consume_ack: AckMode,
    /// Queues of the raftmq topic.
    #[arg(long, default_value_t = 8)]
    pub queues: u32,
    /// The raftmq binary [default: `raftmq` next to this executable, i.e. the same cargo
    /// profile's build; else target/release/raftmq of this workspace].
    #[arg(long)]
    pub raftmq_bin: Option<PathBuf>,
    /// The nats-server binary [default: target/nats/nats-server; install with
    /// bench/install-nats.sh].
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Target a running raftmq cluster instead of starting one (no per-process CPU figures).
    #[arg(long)]
    pub nameservers: Option<String>,
    /// Where data directories go [default: as for `commitlog`].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Time limit per workload in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub max_secs: f64,
    /// Write NAME.md, NAME.json and NAME.svg into this directory [default: bench/results for
    /// full runs; nothing for smoke runs].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Base name of the output files [default: <UTC date>-cluster].
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds for each ceiling measurement [default: 3; smoke: 0.5].
    #[arg(long)]
    pub ceiling_secs: Option<f64>,
    /// Print each server's pid and wait this many seconds after the cluster is up (to attach
    /// a profiler), then run.
    #[arg(long, default_value_t = 0.0)]
    pub pause_secs: f64,
    /// Revision label of the raftmq binary under test, when it was not built from this
    /// workspace's tree [default: `git rev-parse` of this workspace].
    #[arg(long)]
    pub git_rev: Option<String>,
    /// Tiny volumes for CI: raftmq sync only (plus NATS only with --compare nats); fails
    /// unless every figure is finite and non-zero.
    #[arg(long)]
    pub smoke: bool,
    /// Also run the protocol floor (`grpc floor`): a `MessagingService` that answers every
    /// send with OK at once, storing and replicating nothing, driven by the same client and
    /// produce workload — what one RocketMQ gRPC request per message costs here before any
    /// broker work. Produce only.
    #[arg(long)]
    pub floor: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    Project,
    OfficialRust,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AckMode {
    Batch,
    Each,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Nameserver,
    Leader,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Lat {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Lat {
    fn of(h: &hdrhistogram::Histogram<u64>) -> Option<Lat> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Lat {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        })
    }
}

/// One measured workload run.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    pub round: usize,
    pub system: String,
    pub workload: String,
    pub inflight: usize,
    pub batch: usize,
    pub producers: usize,
    pub size: usize,
    pub messages: u64,
    pub secs: f64,
    pub msgs_s: f64,
    pub mb_s: f64,
    /// e2e: the producer's target rate.
    pub target_rate: Option<f64>,
    /// produce: send → ack per request; consume/e2e: send → receive per message.
    pub lat: Option<Lat>,
    /// CPU seconds per 100k messages, per server process.
    pub server_cpu_per_100k: Vec<(String, f64)>,
    pub server_cpu_per_100k_total: Option<f64>,
    /// This benchmark process (the clients).
    pub client_cpu_per_100k: Option<f64>,
    /// Whole machine, in cores busy.
    pub machine_cores: Option<f64>,
    /// Block-device cache flushes (all processes, /proc/diskstats) per message.
    pub device_flushes_per_msg: Option<f64>,
    pub device_mib_written: Option<f64>,
    pub leader: Option<String>,
    pub stopped_by_time_limit: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceilings {
    /// 1-record pwrite + fdatasync, serially (per second).
    pub fsync_appends_s: f64,
    pub fsync_append_lat_p50_us: Option<f64>,
    /// Bulk 1 MiB writes + final fdatasync, MiB/s.
    pub seq_write_mib_s: f64,
    /// Messages/s the sequential bandwidth allows for 3 replicas of (size + 48 B header).
    pub disk_bound_msgs_s: f64,
    pub rows: Vec<Row>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub git_rev: String,
    pub unix_time: u64,
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub dir: String,
    pub filesystem: String,
    pub raftmq_bin: String,
    pub nats_server: Option<String>,
    pub nats_version: Option<String>,
    pub systems: Vec<String>,
    pub rounds: usize,
    pub messages: u64,
    pub messages_if1: u64,
    pub size: usize,
    pub inflight: Vec<usize>,
    pub producers: usize,
    pub batch: usize,
    pub raw_client: bool,
    pub client: ClientKind,
    pub access: Access,
    pub workloads: Vec<String>,
    pub e2e_load: f64,
    pub e2e_secs: f64,
    pub consume_batch: usize,
    pub consume_concurrency: usize,
    pub consume_ack: AckMode,
    pub queues: u32,
    pub smoke: bool,
    pub notes: Vec<String>,
}

/// Median and spread of one figure over rounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Option<Stat> {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// Medians of one (system, workload, in-flight) over rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub system: String,
    pub workload: String,
    pub inflight: usize,
    pub msgs_s: Stat,
    pub mb_s: Stat,
    pub p50_us: Option<Stat>,
    pub p90_us: Option<Stat>,
    pub p99_us: Option<Stat>,
    pub p999_us: Option<Stat>,
    pub max_us: Option<Stat>,
    pub server_cpu_per_100k: Option<Stat>,
    pub device_flushes_per_msg: Option<Stat>,
    pub target_rate: Option<Stat>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

#[derive(Serialize)]
struct JsonOut<'a> {
    meta: &'a Meta,
    ceilings: &'a Option<Ceilings>,
    summaries: &'a [Summary],
    verdicts: &'a [Verdict],
    runs: &'a [Measure],
}

const RAFT_SYNC: &str = "raftmq sync";
const RAFT_ASYNC: &str = "raftmq async";
const NATS_ALWAYS: &str = "nats always";
const NATS_DEFAULT: &str = "nats default";
const FLOOR: &str = "grpc floor";

pub fn run(a: ClusterArgs) -> Result<()> {
    let smoke = a.smoke;
    let rounds = a.rounds.unwrap_or(if smoke { 1 } else { 3 });
    let messages = a.messages.unwrap_or(if smoke { 1000 } else { 100_000 });
    let messages_if1 = a.messages_if1.unwrap_or(if smoke { 100 } else { 5000 });
    let e2e_secs = a.e2e_secs.unwrap_or(if smoke { 1.0 } else { 10.0 });
    let ceiling_secs = a.ceiling_secs.unwrap_or(if smoke { 0.5 } else { 3.0 });
    if rounds == 0 || messages == 0 || messages_if1 == 0 || a.producers == 0 || a.batch == 0 {
        bail!("--rounds, --messages, --messages-if1, --producers and --batch must be > 0");
    }
    if a.inflight.is_empty() || a.inflight.contains(&0) || a.size < 8 {
        bail!("--inflight must list values > 0 and --size be ≥ 8");
    }
    if !(a.e2e_load > 0.0 && a.e2e_load <= 1.0) {
        bail!("--e2e-load must be in (0, 1]");
    }
    if a.client == ClientKind::OfficialRust && (a.raw_client || a.batch > 1) {
        bail!("--client official-rust sends one message per request: no --raw-client, --batch 1");
    }
    for w in &a.workloads {
        if !["produce", "consume", "e2e"].contains(&w.as_str()) {
            bail!("unknown workload {w}");
        }
    }
    let compare_nats = match a.compare.as_deref() {
        None => false,
        Some("nats") => true,
        Some(o) => bail!("--compare: only `nats` is supported, not {o}"),
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let raftmq_bin = a.raftmq_bin.clone().unwrap_or_else(|| {
        // The raftmq binary of the same build profile as this benchmark (cargo puts both
        // in target/<profile>/), else the release build.
        std::env::current_exe()
            .ok()
            .map(|e| e.with_file_name("raftmq"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| root.join("target/release/raftmq"))
    });
    if !raftmq_bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release` or pass --raftmq-bin",
            raftmq_bin.display()
        );
    }
    let nats_bin = a
        .nats_server
        .clone()
        .unwrap_or_else(|| root.join("target/nats/nats-server"));
    let mut nats_version = None;
    if compare_nats {
        let out = std::process::Command::new(&nats_bin)
            .arg("--version")
            .output()
            .with_context(|| {
                format!(
                    "running {} (install it with bench/install-nats.sh)",
                    nats_bin.display()
                )
            })?;
        nats_version = Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
    } else {
        eprintln!("note: NATS comparison skipped (pass --compare nats to run it)");
    }
    let mut systems = Vec::new();
    let flushes: Vec<String> = if smoke && a.nameservers.is_none() {
        vec!["sync".into()]
    } else {
        a.flush.clone()
    };
    for f in &flushes {
        if f != "sync" && f != "async" {
            bail!("--flush: sync or async, not {f}");
        }
    }
    if a.nameservers.is_some() {
        systems.push("raftmq (external)".to_string());
    } else {
        // A B A B: each raftmq mode is followed by its NATS counterpart.
        for f in &flushes {
            systems.push(format!("raftmq {f}"));
            if compare_nats {
                systems.push(
                    if f == "sync" {
                        NATS_ALWAYS
                    } else {
                        NATS_DEFAULT
                    }
                    .into(),
                );
            }
        }
        if compare_nats && !flushes.iter().any(|f| f == "async") {
            systems.push(NATS_DEFAULT.into());
        }
        if compare_nats && !flushes.iter().any(|f| f == "sync") {
            systems.insert(0, NATS_ALWAYS.into());
        }
        if a.floor {
            systems.push(FLOOR.into());
        }
    }
    let base = match &a.dir {
        Some(d) => d.clone(),
        None => crate::default_dir()?,
    };
    std::fs::create_dir_all(&base)?;
    let unix_time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let meta = Meta {
        git_rev: a.git_rev.clone().unwrap_or_else(crate::git_rev),
        unix_time,
        date: utc_date(unix_time),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string()),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        dir: base.display().to_string(),
        filesystem: crate::fs_name(&base),
        raftmq_bin: raftmq_bin.display().to_string(),
        nats_server: compare_nats.then(|| nats_bin.display().to_string()),
        nats_version,
        systems: systems.clone(),
        rounds,
        messages,
        messages_if1,
        size: a.size,
        inflight: a.inflight.clone(),
        producers: a.producers,
        batch: a.batch,
        raw_client: a.raw_client,
        client: a.client,
        access: a.access,
        workloads: a.workloads.clone(),
        e2e_load: a.e2e_load,
        e2e_secs,
        consume_batch: a.consume_batch,
        consume_concurrency: a.consume_concurrency,
        consume_ack: a.consume_ack,
        queues: a.queues,
        smoke,
        notes: crate::environment_notes(),
    };
    println!("{}", meta_markdown(&meta));

    let dev = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&base)?.dev()
    };
    let ceilings = if a.nameservers.is_none() {
        Some(measure_ceilings(&base, a.size, ceiling_secs, dev)?)
    } else {
        None
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ctx = Ctx {
        a: &a,
        raftmq_bin: &raftmq_bin,
        nats_bin: &nats_bin,
        base: &base,
        dev,
        messages,
        messages_if1,
        e2e_secs,
    };
    let mut runs: Vec<Measure> = Vec::new();
    for round in 1..=rounds {
        for sys in &systems {
            eprintln!("== round {round}/{rounds}: {sys}");
            let ms = rt
                .block_on(run_system(&ctx, sys, round))
                .with_context(|| format!("{sys}, round {round}"))?;
            runs.extend(ms);
            // Let the deletion of the data directories reach the disk.
            // SAFETY: sync(2) has no preconditions.
            unsafe { libc::sync() };
        }
    }

    let summaries = summarize(&runs);
    let verdicts = verdicts(&summaries, ceilings.as_ref());
    let md = format!(
        "{}\n{}",
        meta_markdown(&meta),
        results_markdown(&summaries, &verdicts, ceilings.as_ref(), &runs, &meta)
    );
    println!(
        "{}",
        results_markdown(&summaries, &verdicts, ceilings.as_ref(), &runs, &meta)
    );
    let out = match (&a.out, smoke) {
        (Some(o), _) => Some(o.clone()),
        (None, false) => Some(root.join("bench/results")),
        (None, true) => None,
    };
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir)?;
        let name = a
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-cluster", meta.date));
        let md_path = dir.join(format!("{name}.md"));
        std::fs::write(&md_path, &md)?;
        let json = JsonOut {
            meta: &meta,
            ceilings: &ceilings,
            summaries: &summaries,
            verdicts: &verdicts,
            runs: &runs,
        };
        let json_path = dir.join(format!("{name}.json"));
        std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
        let svg_path = dir.join(format!("{name}.svg"));
        crate::chart::draw(&svg_path, &summaries, &meta)?;
        eprintln!(
            "wrote {}, {}, {}",
            md_path.display(),
            json_path.display(),
            svg_path.display()
        );
    }
    let problems = validate(&runs, ceilings.as_ref(), a.nameservers.is_none());
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("invalid figure: {p}");
        }
        bail!("{} figures are zero, missing or not finite", problems.len());
    }
    Ok(())
}

struct Ctx<'a> {
    a: &'a ClusterArgs,
    raftmq_bin: &'a Path,
    nats_bin: &'a Path,
    base: &'a Path,
    dev: u64,
    messages: u64,
    messages_if1: u64,
    e2e_secs: f64,
}

fn measure_ceilings(base: &Path, size: usize, secs: f64, dev: u64) -> Result<Ceilings> {
    use raftmq::storage::record::HEADER_LEN;
    let record = (HEADER_LEN + size) as u64;
    let max = Duration::from_secs_f64(secs);
    eprintln!("== ceilings: fsync'd 1-record appends, bulk sequential write");
    let run = |f: &dyn Fn(&Path) -> Result<Row>| -> Result<Row> {
        let dir = tempfile::Builder::new()
            .prefix("raftmq-bench-ceiling-")
            .tempdir_in(base)?;
        let r = f(dir.path());
        dir.close()?;
        r
    };
    let serial = run(&|dir| {
        crate::ceiling::serial(
            &crate::ceiling::Case {
                dir,
                volume: record * 1_000_000,
                chunk: record,
                record_bytes: record,
                payload: size as u64,
                max,
                dev,
            },
            1,
        )
    })?;
    let bulk = run(&|dir| {
        crate::ceiling::bulk(&crate::ceiling::Case {
            dir,
            volume: 4u64 << 30,
            chunk: 1 << 20,
            record_bytes: record,
            payload: size as u64,
            max,
            dev,
        })
    })?;
    Ok(Ceilings {
        fsync_appends_s: serial.entries_s,
        fsync_append_lat_p50_us: serial.durable_lat.map(|l| l.p50_us),
        seq_write_mib_s: bulk.disk_mib_s,
        disk_bound_msgs_s: bulk.disk_mib_s * (1u64 << 20) as f64 / (3 * record) as f64,
        rows: vec![serial, bulk],
    })
}

/// Snapshot of the counters around one workload.
struct Meter {
    pids: Vec<(String, u32)>,
    cpu0: Vec<Option<f64>>,
    own: CpuMeter,
    disk: DiskMeter,
}

impl Meter {
    fn start(pids: &[(String, u32)], dev: u64) -> Meter {
        Meter {
            pids: pids.to_vec(),
            cpu0: pids.iter().map(|(_, p)| proc_cpu_secs(*p)).collect(),
            own: CpuMeter::start(),
            disk: DiskMeter::start(dev),
        }
    }

    fn finish(&self, m: &mut Measure) {
        let per100k = 100_000.0 / m.messages.max(1) as f64;
        for ((name, pid), c0) in self.pids.iter().zip(&self.cpu0) {
            if let (Some(a), Some(b)) = (c0, proc_cpu_secs(*pid)) {
                m.server_cpu_per_100k
                    .push((name.clone(), (b - a) * per100k));
            }
        }
        if !m.server_cpu_per_100k.is_empty() {
            m.server_cpu_per_100k_total = Some(m.server_cpu_per_100k.iter().map(|x| x.1).sum());
        }
        let cpu = self.own.stop();
        m.client_cpu_per_100k = cpu.own_cores.map(|c| c * m.secs * per100k);
        m.machine_cores = cpu.machine_cores;
        let d = self.disk.stop();
        m.device_flushes_per_msg = d.flushes.map(|f| f as f64 / m.messages.max(1) as f64);
        m.device_mib_written = d.mib_written;
    }
}

fn bar(n: u64, label: String) -> ProgressBar {
    let pb = ProgressBar::new(n);
    if let Ok(st) =
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
    {
        pb.set_style(st.progress_chars("=> "));
    }
    pb.set_prefix(label);
    pb
}

/// Everything that identifies a run, without the figures.
fn new_measure(
    sys: &str,
    workload: &str,
    round: usize,
    inflight: usize,
    a: &ClusterArgs,
) -> Measure {
    Measure {
        round,
        system: sys.into(),
        workload: workload.into(),
        inflight,
        batch: a.batch,
        producers: a.producers,
        size: a.size,
        messages: 0,
        secs: 0.0,
        msgs_s: 0.0,
        mb_s: 0.0,
        target_rate: None,
        lat: None,
        server_cpu_per_100k: Vec::new(),
        server_cpu_per_100k_total: None,
        client_cpu_per_100k: None,
        machine_cores: None,
        device_flushes_per_msg: None,
        device_mib_written: None,
        leader: None,
        stopped_by_time_limit: false,
    }
}

fn fill(m: &mut Measure, n: u64, secs: f64, size: usize, lat: &hdrhistogram::Histogram<u64>) {
    m.messages = n;
    m.secs = secs;
    m.msgs_s = n as f64 / secs.max(1e-9);
    m.mb_s = m.msgs_s * size as f64 / 1e6;
    m.lat = Lat::of(lat);
}

/// The clients of one system: how to make senders and receivers for a fresh topic/stream.
enum Target {
    Raftmq {
        ns: String,
        exe: PathBuf,
    },
    /// The protocol floor server: raftmq's client protocol, no topics to create.
    Floor {
        addr: String,
    },
    Nats {
        client: async_nats::Client,
    },
}

impl Target {
    /// Fresh topic / stream named `name`.
    async fn fresh(&self, name: &str, queues: u32) -> Result<()> {
        match self {
            Target::Raftmq { ns, exe } => {
                let (exe, ns, name) = (exe.clone(), ns.clone(), name.to_string());
                tokio::task::spawn_blocking(move || cluster::create_topic(&exe, &ns, &name, queues))
                    .await?
            }
            Target::Floor { .. } => Ok(()),
            Target::Nats { client } => {
                let js = async_nats::jetstream::new(client.clone());
                let _ = js.delete_stream(name).await;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let cfg = async_nats::jetstream::stream::Config {
                        name: name.to_string(),
                        subjects: vec![format!("{name}.>")],
                        storage: async_nats::jetstream::stream::StorageType::File,
                        num_replicas: 3,
                        ..Default::default()
                    };
                    match js.create_stream(cfg).await {
                        Ok(_) => return Ok(()),
                        Err(e) if Instant::now() > deadline => {
                            bail!("creating NATS stream {name}: {e}")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        }
    }

    async fn senders(&self, name: &str, a: &ClusterArgs) -> Result<Vec<Sender>> {
        let (n, batch, raw) = (a.producers, a.batch, a.raw_client);
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(match self {
                Target::Raftmq { ns, exe } if a.client == ClientKind::OfficialRust => {
                    let access = match a.access {
                        Access::Nameserver => ns.clone(),
                        Access::Leader => {
                            let (exe, ns) = (exe.clone(), ns.clone());
                            tokio::task::spawn_blocking(move || cluster::leader_addr(&exe, &ns))
                                .await??
                        }
                    };
                    load::official_rust(&access, name).await?
                }
                Target::Floor { addr } if a.client == ClientKind::OfficialRust => {
                    load::official_rust(addr, name).await?
                }
                Target::Raftmq { ns, .. } | Target::Floor { addr: ns } if batch > 1 || raw => {
                    Sender::RaftmqBatch(load::RawBatch::new(ns, name).await?)
                }
                Target::Raftmq { ns, .. } | Target::Floor { addr: ns } => Sender::Raftmq {
                    producer: Producer::new(ns).map_err(|e| anyhow!("{e}"))?,
                    topic: name.into(),
                },
                Target::Nats { client } => {
                    let mut js = async_nats::jetstream::new(client.clone());
                    js.set_timeout(Duration::from_secs(30));
                    Sender::Nats {
                        js,
                        subject: format!("{name}.a"),
                    }
                }
            });
        }
        Ok(v)
    }

    async fn receiver(&self, name: &str, a: &ClusterArgs) -> Result<Receiver> {
        Ok(match self {
            Target::Floor { .. } => bail!("the protocol floor stores nothing to consume"),
            Target::Raftmq { ns, .. } => Receiver::Raftmq {
                consumer: SimpleConsumer::new(ns, &format!("{name}-group"), name, "*")
                    .map_err(|e| anyhow!("{e}"))?,
                batch: a.consume_batch as i32,
                concurrency: a.consume_concurrency,
                ack_each: a.consume_ack == AckMode::Each,
            },
            Target::Nats { client } => {
                use async_nats::jetstream::consumer::{AckPolicy, pull};
                let js = async_nats::jetstream::new(client.clone());
                let stream = js
                    .get_stream(name)
                    .await
                    .map_err(|e| anyhow!("get stream: {e}"))?;
                let consumer = stream
                    .create_consumer(pull::Config {
                        durable_name: Some("C".into()),
                        ack_policy: AckPolicy::Explicit,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| anyhow!("create consumer: {e}"))?;
                Receiver::Nats {
                    consumer,
                    batch: a.consume_batch,
                }
            }
        })
    }
}

/// Start `sys`, run every workload on it, stop it.
async fn run_system(c: &Ctx<'_>, sys: &str, round: usize) -> Result<Vec<Measure>> {
    let dir = tempfile::Builder::new()
        .prefix("raftmq-bench-cluster-")
        .tempdir_in(c.base)?;
    match run_system_in(c, sys, round, dir.path()).await {
        Ok(m) => {
            dir.close()?;
            Ok(m)
        }
        // The servers' logs are what explains a failure: kept, not deleted with the rest.
        Err(e) => {
            let kept = dir.keep();
            Err(e.context(format!("data and logs kept in {}", kept.display())))
        }
    }
}

async fn run_system_in(c: &Ctx<'_>, sys: &str, round: usize, dir: &Path) -> Result<Vec<Measure>> {
    let a = c.a;
    // Keep the servers (killed on drop) alive until the end of this function.
    let mut raft: Option<Raftmq> = None;
    let mut nats: Option<Nats> = None;
    let mut floor: Option<FloorServer> = None;
    let (target, pids) = if let Some(ns) = &a.nameservers {
        (
            Target::Raftmq {
                ns: ns.clone(),
                exe: c.raftmq_bin.to_path_buf(),
            },
            Vec::new(),
        )
    } else if sys == FLOOR {
        let f = FloorServer::start(dir)?;
        let t = Target::Floor {
            addr: f.addr.clone(),
        };
        let pids = f.procs.pids();
        floor = Some(f);
        (t, pids)
    } else if let Some(flush) = sys.strip_prefix("raftmq ") {
        // Not in spawn_blocking: the children's death signal follows the spawning thread.
        let r = Raftmq::start(c.raftmq_bin, dir, flush)?;
        let t = Target::Raftmq {
            ns: r.nameserver.clone(),
            exe: c.raftmq_bin.to_path_buf(),
        };
        let pids = r.procs.pids();
        raft = Some(r);
        (t, pids)
    } else {
        let n = Nats::start(c.nats_bin, dir, sys == NATS_ALWAYS)?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(n.urls.split(',').map(str::to_string).collect::<Vec<_>>())
            .await
            .map_err(|e| anyhow!("connecting to NATS: {e}"))?;
        let pids = n.procs.pids();
        nats = Some(n);
        (Target::Nats { client }, pids)
    };
    let leader = match &raft {
        Some(r) => {
            let r2 = (r.exe.clone(), r.nameserver.clone(), r.procs.pids());
            tokio::task::spawn_blocking(move || {
                let addr = cluster::leader_addr(&r2.0, &r2.1).ok()?;
                let port = addr.rsplit(':').next()?.to_string();
                r2.2.iter().find_map(|(name, pid)| {
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                    let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                    cmd.contains(&format!("--listen 127.0.0.1:{port} "))
                        .then(|| name.clone())
                })
            })
            .await?
        }
        None => None,
    };
    if a.pause_secs > 0.0 {
        eprintln!(
            "   pids: {pids:?}; leader: {leader:?}; waiting {} s",
            a.pause_secs
        );
        tokio::time::sleep(Duration::from_secs_f64(a.pause_secs)).await;
    }
    let mut out = Vec::new();
    let max = Duration::from_secs_f64(a.max_secs);
    // The floor stores nothing: it only has a produce figure.
    let want = |w: &str| a.workloads.iter().any(|x| x == w) && (sys != FLOOR || w == "produce");
    let mut inflights = a.inflight.clone();
    inflights.sort_unstable();
    let top = *inflights.last().unwrap_or(&1);
    let mut top_rate: Option<f64> = None;
    let mut consume_rate: Option<f64> = None;
    let mut top_topic: Option<(String, u64)> = None;
    let tag = |s: &str| format!("{sys} r{round} {s}");
    if want("produce") || want("consume") {
        for &inf in &inflights {
            if !want("produce") && inf != top {
                continue;
            }
            let name = format!("benchp{inf}r{round}");
            target.fresh(&name, a.queues).await?;
            let n = if inf == 1 { c.messages_if1 } else { c.messages };
            let senders = target.senders(&name, a).await?;
            let pb = bar(n, tag(&format!("produce if={inf}")));
            let meter = Meter::start(&pids, c.dev);
            let r = load::produce(
                &senders,
                ProduceShape {
                    messages: n,
                    size: a.size,
                    inflight: inf,
                    batch: a.batch,
                    rate: None,
                    max,
                },
                &pb,
            )
            .await?;
            pb.finish_and_clear();
            let mut m = new_measure(sys, "produce", round, inf, a);
            fill(&mut m, r.sent, r.secs, a.size, &r.lat);
            m.stopped_by_time_limit = r.stopped_by_time_limit;
            m.leader = leader.clone();
            meter.finish(&mut m);
            if inf == top {
                top_rate = Some(m.msgs_s);
                top_topic = Some((name.clone(), r.sent));
            }
            if want("produce") {
                eprintln!("   {}", one_line(&m));
                out.push(m);
            }
        }
    }
    if want("consume")
        && let Some((name, n)) = &top_topic
    {
        let rx = target.receiver(name, a).await?;
        let pb = bar(*n, tag("consume"));
        let meter = Meter::start(&pids, c.dev);
        let r = load::consume(&rx, *n, max, &pb).await?;
        pb.finish_and_clear();
        let mut m = new_measure(sys, "consume", round, a.consume_batch, a);
        fill(&mut m, r.received, r.secs, a.size, &r.lat);
        m.leader = leader.clone();
        meter.finish(&mut m);
        consume_rate = Some(m.msgs_s);
        eprintln!("   {}", one_line(&m));
        out.push(m);
    }
    if want("e2e") {
        // The pipeline's max load is the slower of its two ends.
        let rate = match (top_rate, consume_rate) {
            (Some(p), Some(c)) => p.min(c) * a.e2e_load,
            (Some(p), None) => p * a.e2e_load,
            _ => bail!("e2e needs the produce workload (its rate sets the e2e load)"),
        };
        let n = ((rate * c.e2e_secs) as u64).max(1);
        let name = format!("benche{round}");
        target.fresh(&name, a.queues).await?;
        let senders = target.senders(&name, a).await?;
        let rx = target.receiver(&name, a).await?;
        let pb = bar(n, tag(&format!("e2e {:.0} msg/s", rate)));
        let meter = Meter::start(&pids, c.dev);
        let shape = ProduceShape {
            messages: n,
            size: a.size,
            inflight: top,
            batch: a.batch,
            rate: Some(rate),
            max,
        };
        let hidden = ProgressBar::hidden();
        let (p, r) = futures::join!(
            load::produce(&senders, shape, &hidden),
            load::consume(&rx, n, max, &pb)
        );
        let (p, r) = (p?, r?);
        pb.finish_and_clear();
        let mut m = new_measure(sys, "e2e", round, top, a);
        fill(&mut m, r.received, r.secs, a.size, &r.lat);
        m.target_rate = Some(rate);
        m.stopped_by_time_limit = p.stopped_by_time_limit;
        m.leader = leader.clone();
        meter.finish(&mut m);
        eprintln!("   {}", one_line(&m));
        out.push(m);
    }
    drop(target);
    if let Some(mut r) = raft {
        r.procs.stop();
    }
    if let Some(mut n) = nats {
        n.procs.stop();
    }
    if let Some(mut f) = floor {
        f.procs.stop();
    }
    Ok(out)
}

fn one_line(m: &Measure) -> String {
    format!(
        "{} if={} {} msgs in {:.2} s = {:.0} msg/s, {} , server CPU {} s/100k",
        m.workload,
        m.inflight,
        m.messages,
        m.secs,
        m.msgs_s,
        m.lat.map_or_else(
            || "no latency".into(),
            |l| format!(
                "p50 {:.0} µs p99 {:.0} µs max {:.0} µs",
                l.p50_us, l.p99_us, l.max_us
            )
        ),
        m.server_cpu_per_100k_total
            .map_or_else(|| "n/a".into(), |c| format!("{c:.2}"))
    )
}

fn summarize(runs: &[Measure]) -> Vec<Summary> {
    let mut keys: Vec<(String, String, usize)> = Vec::new();
    for m in runs {
        let k = (m.system.clone(), m.workload.clone(), m.inflight);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .filter_map(|(system, workload, inflight)| {
            let rs: Vec<&Measure> = runs
                .iter()
                .filter(|m| m.system == system && m.workload == workload && m.inflight == inflight)
                .collect();
            let f = |g: &dyn Fn(&Measure) -> Option<f64>| {
                Stat::of(rs.iter().filter_map(|m| g(m)).collect())
            };
            Some(Summary {
                msgs_s: f(&|m| Some(m.msgs_s))?,
                mb_s: f(&|m| Some(m.mb_s))?,
                p50_us: f(&|m| m.lat.map(|l| l.p50_us)),
                p90_us: f(&|m| m.lat.map(|l| l.p90_us)),
                p99_us: f(&|m| m.lat.map(|l| l.p99_us)),
                p999_us: f(&|m| m.lat.map(|l| l.p999_us)),
                max_us: f(&|m| m.lat.map(|l| l.max_us)),
                server_cpu_per_100k: f(&|m| m.server_cpu_per_100k_total),
                device_flushes_per_msg: f(&|m| m.device_flushes_per_msg),
                target_rate: f(&|m| m.target_rate),
                system,
                workload,
                inflight,
            })
        })
        .collect()
}

fn find<'a>(s: &'a [Summary], sys: &str, w: &str, inf: Option<usize>) -> Option<&'a Summary> {
    s.iter()
        .find(|x| x.system == sys && x.workload == w && inf.is_none_or(|i| x.inflight == i))
}

fn verdicts(s: &[Summary], ceil: Option<&Ceilings>) -> Vec<Verdict> {
    let mut v = Vec::new();
    let top = s
        .iter()
        .filter(|x| x.workload == "produce")
        .map(|x| x.inflight)
        .max();
    let Some(top) = top else {
        return v;
    };
    let rs = find(s, RAFT_SYNC, "produce", Some(top));
    let na = find(s, NATS_ALWAYS, "produce", Some(top));
    let nd = find(s, NATS_DEFAULT, "produce", Some(top));
    if let (Some(r), Some(n)) = (rs, na) {
        let ratio = r.msgs_s.median / n.msgs_s.median;
        v.push(Verdict {
            target: format!("in-flight {top}: throughput ≥ 2× NATS `sync_interval: always`"),
            measured: format!(
                "{:.0} vs {:.0} msg/s = {:.2}×",
                r.msgs_s.median, n.msgs_s.median, ratio
            ),
            met: Some(ratio >= 2.0),
        });
        if let (Some(rp), Some(np)) = (r.p99_us, n.p99_us) {
            let ratio = rp.median / np.median;
            v.push(Verdict {
                target: format!("in-flight {top}: p99 ≤ 0.5× NATS `always` p99"),
                measured: format!(
                    "{:.2} vs {:.2} ms = {:.2}×",
                    rp.median / 1000.0,
                    np.median / 1000.0,
                    ratio
                ),
                met: Some(ratio <= 0.5),
            });
        }
    }
    if let (Some(r), Some(n)) = (rs, nd) {
        let ratio = r.msgs_s.median / n.msgs_s.median;
        v.push(Verdict {
            target: format!(
                "in-flight {top}: throughput ≥ NATS default (ack before fsync), raftmq fsyncing"
            ),
            measured: format!(
                "{:.0} vs {:.0} msg/s = {:.2}×",
                r.msgs_s.median, n.msgs_s.median, ratio
            ),
            met: Some(ratio >= 1.0),
        });
    }
    if let Some(r) = find(s, RAFT_SYNC, "produce", Some(1))
        && let Some(p) = r.p50_us
    {
        v.push(Verdict {
            target: "in-flight 1: p50 ≤ 0.6 ms".into(),
            measured: format!(
                "{:.3} ms (runs {:.3}–{:.3})",
                p.median / 1000.0,
                p.min / 1000.0,
                p.max / 1000.0
            ),
            met: Some(p.median <= 600.0),
        });
    }
    if let (Some(c), Some(r)) = (find(s, RAFT_SYNC, "consume", None), rs) {
        let ratio = c.msgs_s.median / r.msgs_s.median;
        v.push(Verdict {
            target: "consume (ack every message) ≥ produce rate".into(),
            measured: format!(
                "{:.0} vs {:.0} msg/s = {:.2}×",
                c.msgs_s.median, r.msgs_s.median, ratio
            ),
            met: Some(ratio >= 1.0),
        });
    }
    if let Some(e) = find(s, RAFT_SYNC, "e2e", None)
        && let Some(p) = e.p99_us
    {
        v.push(Verdict {
            target: "e2e p99 at 50 % of max load (reported)".into(),
            measured: format!(
                "p99 {:.2} ms at {:.0} msg/s (runs {:.2}–{:.2} ms)",
                p.median / 1000.0,
                e.target_rate.map_or(0.0, |t| t.median),
                p.min / 1000.0,
                p.max / 1000.0
            ),
            met: None,
        });
    }
    if let (Some(ra), Some(r)) = (find(s, RAFT_ASYNC, "produce", Some(top)), rs) {
        v.push(Verdict {
            target: format!("`--flush async`: speed-up at in-flight {top} (reported)"),
            measured: format!(
                "{:.0} vs {:.0} msg/s = {:.2}×; p99 {} vs {} ms",
                ra.msgs_s.median,
                r.msgs_s.median,
                ra.msgs_s.median / r.msgs_s.median,
                ra.p99_us
                    .map_or_else(|| "n/a".into(), |p| format!("{:.2}", p.median / 1000.0)),
                r.p99_us
                    .map_or_else(|| "n/a".into(), |p| format!("{:.2}", p.median / 1000.0)),
            ),
            met: None,
        });
    }
    if let (Some(c), Some(r)) = (ceil, rs) {
        v.push(Verdict {
            target: format!("ceiling: raftmq sync in-flight {top} as a fraction of the disk"),
            measured: format!(
                "{:.1} % of the 3-replica sequential-write bound ({:.0} msg/s from {:.0} MiB/s); {:.0} % of the 1-record fsync'd append rate ({:.0}/s)",
                100.0 * r.msgs_s.median / c.disk_bound_msgs_s,
                c.disk_bound_msgs_s,
                c.seq_write_mib_s,
                100.0 * r.msgs_s.median / c.fsync_appends_s,
                c.fsync_appends_s
            ),
            met: None,
        });
    }
    v
}

fn meta_markdown(m: &Meta) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "## raftmq-bench cluster ({})", m.date);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "- git revision: `{}`; raftmq binary `{}`",
        m.git_rev, m.raftmq_bin
    );
    if let Some(v) = &m.nats_version {
        let _ = writeln!(
            s,
            "- NATS: {v} (`{}`)",
            m.nats_server.as_deref().unwrap_or("?")
        );
    }
    let _ = writeln!(
        s,
        "- kernel {}, {} CPUs; data in `{}` ({})",
        m.kernel, m.cpus, m.dir, m.filesystem
    );
    let _ = writeln!(
        s,
        "- systems per round, in order: {}; {} rounds; each system starts fresh (new data directories) every round",
        m.systems.join(" → "),
        m.rounds
    );
    let _ = writeln!(
        s,
        "- produce: {} messages ({} at in-flight 1) of {} B, in-flight {:?} requests per producer, {} producer(s), {} message(s) per request, raftmq client: {}; latency = send → ack per request",
        m.messages,
        m.messages_if1,
        m.size,
        m.inflight,
        m.producers,
        m.batch,
        if m.raw_client || m.batch > 1 {
            "bare generated gRPC client".to_string()
        } else if m.client == ClientKind::OfficialRust {
            format!(
                "the official Apache RocketMQ Rust client (crate `rocketmq` 5.0, `Producer::send`), access point {}",
                match m.access {
                    Access::Nameserver => "the nameserver (proxy)",
                    Access::Leader => "the group leader (routes name every member)",
                }
            )
        } else {
            "the project client (`Producer::send`)".to_string()
        }
    );
    if m.systems.iter().any(|s| s == FLOOR) {
        let _ = writeln!(
            s,
            "- grpc floor: a MessagingService process that answers every send with OK at once (no storage, no Raft, no replication; tonic with raftmq's HTTP/2 settings), same client and workload: the cost of the protocol alone"
        );
    }
    let _ = writeln!(
        s,
        "- consume: the messages of the largest in-flight produce run, {} per receive/pull batch, one ack per message; its latency column is the message's age at receive, i.e. mostly the backlog (raftmq: {} receive loops, {}; NATS: durable R3 pull consumer, explicit `ack()` per message, which async-nats sends without waiting for a reply); latency = send → receive",
        m.consume_batch,
        m.consume_concurrency,
        match m.consume_ack {
            AckMode::Batch =>
                "each received batch acked by one AckMessage request with one entry per message",
            AckMode::Each =>
                "each message acked by its own AckMessage request, a batch's acks sent at once (`--consume-ack each`)",
        }
    );
    let _ = writeln!(
        s,
        "- e2e: producer at {:.0} % of the same round's max load = min(largest-in-flight produce rate, consume rate), for {} s with a consumer running; latency = send → receive",
        m.e2e_load * 100.0,
        m.e2e_secs
    );
    let _ = writeln!(
        s,
        "- raftmq: nameserver + 3 brokers (`--flush sync`: ack after a quorum fsync'd; `async`: fsync every 10 ms), topic with {} queues; the client's first attempt goes to the leader's route entry of the chosen queue (the route lists the leader first); retries use every member",
        m.queues
    );
    if m.nats_version.is_some() {
        let _ = writeln!(
            s,
            "- NATS: 3 servers, R3 file stream; `always` = `sync_interval: always` (fsync per write, group-committed), `default` = fsync every 2 min (acks before fsync)"
        );
    }
    let _ = writeln!(
        s,
        "- CPU s/100k: utime+stime of each server process from /proc/PID/stat; device flushes per message from /proc/diskstats (all processes)"
    );
    for n in &m.notes {
        let _ = writeln!(s, "- note: {n}");
    }
    if m.smoke {
        let _ = writeln!(s, "- SMOKE run: tiny volumes, figures are not meaningful");
    }
    s
}

fn stat_s(s: Option<Stat>, scale: f64, prec: usize) -> String {
    match s {
        None => "n/a".into(),
        Some(s) if s.n == 1 => format!("{:.*}", prec, s.median / scale),
        Some(s) => format!(
            "{:.*} ({:.*}–{:.*})",
            prec,
            s.median / scale,
            prec,
            s.min / scale,
            prec,
            s.max / scale
        ),
    }
}

fn results_markdown(
    s: &[Summary],
    v: &[Verdict],
    ceil: Option<&Ceilings>,
    runs: &[Measure],
    meta: &Meta,
) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "### Medians over rounds (min–max in parentheses)");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "| system | workload | in-flight | msgs/s | MB/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU s/100k | device flushes/msg |"
    );
    let _ = writeln!(
        o,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut sorted: Vec<&Summary> = s.iter().collect();
    let wo = |w: &str| match w {
        "produce" => 0,
        "consume" => 1,
        _ => 2,
    };
    sorted.sort_by_key(|x| (wo(&x.workload), x.inflight, x.system.clone()));
    for x in &sorted {
        let _ = writeln!(
            o,
            "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            x.system,
            x.workload,
            x.target_rate
                .map_or_else(String::new, |t| format!(" @ {:.0}/s", t.median)),
            if x.workload == "consume" {
                format!("batch {}", x.inflight)
            } else {
                x.inflight.to_string()
            },
            stat_s(Some(x.msgs_s), 1.0, 0),
            stat_s(Some(x.mb_s), 1.0, 1),
            stat_s(x.p50_us, 1000.0, 2),
            stat_s(x.p90_us, 1000.0, 2),
            stat_s(x.p99_us, 1000.0, 2),
            stat_s(x.p999_us, 1000.0, 2),
            stat_s(x.max_us, 1000.0, 1),
            stat_s(x.server_cpu_per_100k, 1.0, 2),
            stat_s(x.device_flushes_per_msg, 1.0, 3),
        );
    }
    let _ = writeln!(o);
    // Ratios row by row.
    let pairs = [
        (RAFT_SYNC, NATS_ALWAYS, "both fsync before ack"),
        (RAFT_SYNC, NATS_DEFAULT, "raftmq fsyncs, NATS does not"),
        (RAFT_ASYNC, NATS_DEFAULT, "neither fsyncs before ack"),
    ];
    let mut rows = String::new();
    for x in &sorted {
        for (r, n, what) in pairs {
            if x.system != r {
                continue;
            }
            if let Some(y) = find(s, n, &x.workload, Some(x.inflight)) {
                let ratio = |a: Option<Stat>, b: Option<Stat>| match (a, b) {
                    (Some(a), Some(b)) if b.median > 0.0 => format!("{:.2}", a.median / b.median),
                    _ => "n/a".into(),
                };
                let _ = writeln!(
                    rows,
                    "| {} {} | {r} / {n} ({what}) | {} | {} | {} |",
                    x.workload,
                    x.inflight,
                    ratio(Some(x.msgs_s), Some(y.msgs_s)),
                    ratio(x.p50_us, y.p50_us),
                    ratio(x.p99_us, y.p99_us),
                );
            }
        }
    }
    if !rows.is_empty() {
        let _ = writeln!(o, "### raftmq / NATS, row by row (ratio of medians)");
        let _ = writeln!(o);
        let _ = writeln!(o, "| row | pair | msgs/s | p50 | p99 |");
        let _ = writeln!(o, "|---|---|---:|---:|---:|");
        o.push_str(&rows);
        let _ = writeln!(o);
    }
    if let Some(c) = ceil {
        let _ = writeln!(o, "### Ceiling (same run, same directory)");
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "- fsync'd append: pwrite of one {} B record + fdatasync, serially: **{:.0}/s** (p50 {} µs)",
            meta.size + raftmq::storage::record::HEADER_LEN,
            c.fsync_appends_s,
            c.fsync_append_lat_p50_us
                .map_or_else(|| "n/a".into(), |p| format!("{p:.0}"))
        );
        let _ = writeln!(
            o,
            "- sequential write: 1 MiB pwrites + final fdatasync: **{:.0} MiB/s** → {:.0} msg/s for 3 replicas on this one disk",
            c.seq_write_mib_s, c.disk_bound_msgs_s
        );
        let _ = writeln!(o);
    }
    if !v.is_empty() {
        let _ = writeln!(o, "### Targets (issue #6)");
        let _ = writeln!(o);
        let _ = writeln!(o, "| target | measured (medians) | verdict |");
        let _ = writeln!(o, "|---|---|---|");
        for x in v {
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                x.target,
                x.measured,
                match x.met {
                    Some(true) => "met",
                    Some(false) => "**NOT met**",
                    None => "reported",
                }
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "### Every run");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "| round | system | workload | in-flight | msgs | secs | msgs/s | p50 / p99 / max ms | server CPU s/100k per process | client CPU s/100k | machine cores | flushes/msg | leader |"
    );
    let _ = writeln!(
        o,
        "|---:|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"
    );
    for m in runs {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {}{} | {:.2} | {:.0} | {} | {} | {} | {} | {} | {} |",
            m.round,
            m.system,
            m.workload,
            m.inflight,
            m.messages,
            if m.stopped_by_time_limit {
                " (time limit)"
            } else {
                ""
            },
            m.secs,
            m.msgs_s,
            m.lat.map_or_else(
                || "n/a".into(),
                |l| format!(
                    "{:.2} / {:.2} / {:.1}",
                    l.p50_us / 1000.0,
                    l.p99_us / 1000.0,
                    l.max_us / 1000.0
                )
            ),
            m.server_cpu_per_100k
                .iter()
                .map(|(n, c)| format!("{n} {c:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            m.client_cpu_per_100k
                .map_or_else(|| "n/a".into(), |c| format!("{c:.2}")),
            m.machine_cores
                .map_or_else(|| "n/a".into(), |c| format!("{c:.2}")),
            m.device_flushes_per_msg
                .map_or_else(|| "n/a".into(), |c| format!("{c:.3}")),
            m.leader.as_deref().unwrap_or("-"),
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "Durability of `--flush async` (raftmq): a send is acknowledged once a quorum has the entry in its page cache (mmap'd segment), and each node fsyncs every 10 ms. A power failure of the whole machine (all three replicas on one box here) loses every acknowledged message not yet fsynced on a majority: up to ~10 ms of acknowledged writes plus whatever the flusher was still writing; a single node crash (process kill) loses nothing, as the page cache survives it. With `--flush sync` nothing acknowledged is lost."
    );
    o
}

fn validate(runs: &[Measure], ceil: Option<&Ceilings>, own_cluster: bool) -> Vec<String> {
    let mut bad = Vec::new();
    let ok = |x: f64| x.is_finite() && x > 0.0;
    if runs.is_empty() {
        bad.push("no runs".into());
    }
    for m in runs {
        let name = format!("{} {} if={} r{}", m.system, m.workload, m.inflight, m.round);
        if m.messages == 0 || !ok(m.msgs_s) || !ok(m.mb_s) || !ok(m.secs) {
            bad.push(format!("{name}: throughput"));
        }
        if m.stopped_by_time_limit {
            bad.push(format!("{name}: stopped by the time limit"));
        }
        match m.lat {
            Some(l) if ok(l.p50_us) && ok(l.p99_us) && ok(l.max_us) && l.p50_us <= l.max_us => {}
            _ => bad.push(format!("{name}: latency")),
        }
        if own_cluster && !m.server_cpu_per_100k_total.is_some_and(ok) {
            bad.push(format!("{name}: server CPU"));
        }
    }
    if let Some(c) = ceil
        && !(ok(c.fsync_appends_s) && ok(c.seq_write_mib_s))
    {
        bad.push("ceilings".into());
    }
    bad
}

/// `YYYY-MM-DD` (UTC) of a unix time.
pub(crate) fn utc_date(unix: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = (unix / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_795_305_600), "2026-11-22");
    }

    #[test]
    fn medians() {
        let s = Stat::of(vec![3.0, 1.0, 2.0, f64::NAN]).expect("stat");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Stat::of(vec![4.0, 1.0]).expect("stat");
        assert_eq!(s.median, 2.5);
        assert!(Stat::of(vec![]).is_none());
    }
}
