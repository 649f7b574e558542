//! `raftmq-bench`: measurements of raftmq components.
//!
//! `raftmq-bench commitlog` measures CommitLog append throughput and latency against the
//! machine's own fsync'd sequential-write ceilings; see `--help` and the module docs of
//! `cl` (the writer model) and `ceiling` (the two ceilings).

mod ceiling;
mod chart;
mod cl;
mod cluster;
mod codec;
mod counters;
mod load;
mod protocol_floor;
mod report;
mod restart;
mod suite;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use raftmq::storage::commitlog::FlushMode;
use raftmq::storage::record::HEADER_LEN;
use serde::Serialize;

use report::{Kind, Meta, Row, Run, Target};

#[derive(Parser)]
#[command(name = "raftmq-bench", about = "raftmq benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
// Parsed once per process: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// CommitLog append throughput vs. the machine's fsync'd sequential-write ceilings.
    Commitlog(CommitlogArgs),
    /// A real cluster (nameserver + 3 brokers) under produce / consume / end-to-end load,
    /// optionally side by side with a 3-node NATS JetStream cluster (`--compare nats`).
    Cluster(suite::ClusterArgs),
    /// Restart of a node holding a large CommitLog: time from the spawn to `/readyz` 200, per
    /// kind of stop (follower SIGKILL / SIGTERM, leader SIGKILL), with the start-up phases.
    Restart(restart::RestartArgs),
    /// Encode/decode cost of the consume path's internal Raft commands, JSON vs binary.
    Codec(codec::CodecArgs),
    /// The `cluster --floor` server (started by the benchmark itself).
    #[command(hide = true)]
    ProtocolFloorServer {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(clap::Args)]
struct CommitlogArgs {
    /// Directory in which a fresh temporary directory is made per case. Default: the system
    /// temp dir if it is on the same (non-tmpfs) filesystem as the current directory, else
    /// the current directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// MiB of payload per case [default: 256; smoke: 4].
    #[arg(long)]
    total_mb: Option<u64>,
    /// Payload bytes per entry.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Entries per append (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    batches: Vec<usize>,
    /// Flush modes (comma separated: sync, async).
    #[arg(long, value_delimiter = ',', default_value = "sync,async")]
    modes: Vec<FlushMode>,
    /// Batches kept in flight by the pipelined writer (appended, not yet reported durable).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Time limit per case in seconds; the case reports what it did by then [default: 20;
    /// smoke: 1.5].
    #[arg(long)]
    max_secs: Option<f64>,
    /// CommitLog segment size in MiB [default: 1024; smoke: 64].
    #[arg(long)]
    segment_mb: Option<u64>,
    /// Write size of ceiling (b), in KiB.
    #[arg(long, default_value_t = 1024)]
    bulk_chunk_kb: usize,
    /// Run the whole suite this many times (the target ratio's median is printed).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Pause after each case's files are deleted, in milliseconds, so that every case starts
    /// from the same memory state: on a VM with free page reporting, memory freed by the
    /// previous case is handed back to the hypervisor about 2 s later, so without a pause a
    /// case's speed would depend on how recently the case before it ended [default: 3000;
    /// smoke: 0].
    settle_ms: Option<u64>,
    /// Measure only the CommitLog rows (for profiling; no ceilings, no ratios).
    #[arg(long)]
    skip_ceilings: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Tiny volumes for CI: finishes in seconds, fails if any figure is zero or NaN.
    #[arg(long)]
    smoke: bool,
}

/// The threshold for the sync 256-batch row.
const TARGET_BATCH: usize = 256;
const TARGET_RATIO: f64 = 0.70;

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Commitlog(args) => commitlog(args),
        Cmd::Cluster(args) => suite::run(args),
        Cmd::Restart(args) => restart::run(args),
        Cmd::Codec(args) => codec::run(args),
        Cmd::ProtocolFloorServer { listen } => protocol_floor::serve(listen),
    }
}

#[derive(Serialize)]
struct JsonOut<'a> {
    meta: &'a Meta,
    runs: &'a [Run],
    median_target_ratio_vs_serial: Option<f64>,
    median_target_ratio_vs_bulk: Option<f64>,
}

fn commitlog(a: CommitlogArgs) -> Result<()> {
    let total_mib = a.total_mb.unwrap_or(if a.smoke { 4 } else { 256 });
    let settle_ms = a.settle_ms.unwrap_or(if a.smoke { 0 } else { 3000 });
    let max_secs = a.max_secs.unwrap_or(if a.smoke { 1.5 } else { 20.0 });
    let segment_mib = a.segment_mb.unwrap_or(if a.smoke { 64 } else { 1024 });
    if a.payload == 0 || total_mib == 0 || a.window == 0 || a.repeat == 0 || a.bulk_chunk_kb == 0 {
        bail!("--payload, --total-mb, --window, --repeat and --bulk-chunk-kb must be > 0");
    }
    if a.batches.is_empty() || a.batches.contains(&0) || a.modes.is_empty() {
        bail!("--batches must list sizes > 0 and --modes at least one mode");
    }
    if !(max_secs.is_finite() && max_secs > 0.0) {
        bail!("--max-secs must be > 0");
    }
    let base = match &a.dir {
        Some(d) => d.clone(),
        None => default_dir()?,
    };
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let fs = fs_name(&base);
    if fs == "tmpfs" {
        eprintln!(
            "warning: {} is on tmpfs: syncs are no-ops there, figures say nothing about a disk",
            base.display()
        );
    }
    let meta = Meta {
        git_rev: git_rev(),
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_string()),
        dir: base.display().to_string(),
        filesystem: fs,
        total_mib,
        payload: a.payload,
        record_bytes: HEADER_LEN + a.payload,
        batches: a.batches.clone(),
        modes: a.modes.iter().map(|m| mode_name(*m).to_string()).collect(),
        window: a.window,
        max_secs,
        segment_mib,
        bulk_chunk_kib: a.bulk_chunk_kb,
        settle_ms,
        smoke: a.smoke,
        syscall_counting: counters::syscall_counting_available(),
        notes: environment_notes(),
    };
    println!("{}", report::meta_markdown(&meta));

    let mut runs = Vec::new();
    for rep in 0..a.repeat {
        let run = suite(&a, &base, &meta)?;
        if a.repeat > 1 {
            println!("### run {} of {}\n", rep + 1, a.repeat);
        }
        println!("{}", report::table_markdown(&run));
        runs.push(run);
    }
    let med = |f: fn(&Target) -> Option<f64>| {
        median(
            runs.iter()
                .filter_map(|r| r.target.as_ref().and_then(f))
                .collect(),
        )
    };
    let (med_serial, med_bulk) = (med(|t| t.ratio_vs_serial), med(|t| t.ratio_vs_bulk));
    if a.repeat > 1 && (med_serial.is_some() || med_bulk.is_some()) {
        let p = |r: Option<f64>| r.map_or_else(|| "n/a".into(), |r| format!("{:.1} %", r * 100.0));
        println!(
            "**Median over {} runs, sync {TARGET_BATCH}-entry batches:** {} of ceiling (a), {} of ceiling (b) (target ≥ {:.0} %).\n",
            runs.len(),
            p(med_serial),
            p(med_bulk),
            TARGET_RATIO * 100.0
        );
    }
    if let Some(path) = &a.json {
        let out = JsonOut {
            meta: &meta,
            runs: &runs,
            median_target_ratio_vs_serial: med_serial,
            median_target_ratio_vs_bulk: med_bulk,
        };
        let text = serde_json::to_string_pretty(&out)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let problems: Vec<String> = runs
        .iter()
        .flat_map(|r| validate(&r.rows, !a.skip_ceilings))
        .collect();
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("invalid figure: {p}");
        }
        bail!("{} figures are zero, missing or not finite", problems.len());
    }
    Ok(())
}

fn mode_name(m: FlushMode) -> &'static str {
    match m {
        FlushMode::Sync => "sync",
        FlushMode::Async => "async",
    }
}

/// One full pass: ceiling (b), then per batch size ceiling (a) and the CommitLog modes.
fn suite(a: &CommitlogArgs, base: &Path, meta: &Meta) -> Result<Run> {
    let max = Duration::from_secs_f64(meta.max_secs);
    let settle = Duration::from_millis(meta.settle_ms);
    let (total_mib, segment_mib) = (meta.total_mib, meta.segment_mib);
    let dev = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(base)
            .with_context(|| format!("stat {}", base.display()))?
            .dev()
    };
    let record_bytes = (HEADER_LEN + a.payload) as u64;
    let entries_total = (total_mib << 20).div_ceil(a.payload as u64);
    let payload = ceiling::pattern(a.payload);
    let mut rows: Vec<Row> = Vec::new();

    let mut bulk_rate = None;
    if !a.skip_ceilings {
        let bulk = in_fresh_dir(base, settle, "ceiling (b) bulk", |dir| {
            ceiling::bulk(&ceiling::Case {
                dir,
                volume: entries_total * record_bytes,
                chunk: (a.bulk_chunk_kb as u64) << 10,
                record_bytes,
                payload: a.payload as u64,
                max,
                dev,
            })
        })?;
        bulk_rate = Some(bulk.disk_mib_s);
        rows.push(bulk);
    }

    for &batch in &a.batches {
        let batches = entries_total.div_ceil(batch as u64);
        let mut serial_rate = None;
        if !a.skip_ceilings {
            let serial = in_fresh_dir(
                base,
                settle,
                &format!("ceiling (a) serial, batch {batch}"),
                |dir| {
                    ceiling::serial(
                        &ceiling::Case {
                            dir,
                            volume: batches * batch as u64 * record_bytes,
                            chunk: batch as u64 * record_bytes,
                            record_bytes,
                            payload: a.payload as u64,
                            max,
                            dev,
                        },
                        batch,
                    )
                },
            )?;
            serial_rate = Some(serial.disk_mib_s);
            rows.push(serial);
        }
        for &mode in &a.modes {
            let mut row = in_fresh_dir(
                base,
                settle,
                &format!("commitlog {}, batch {batch}", mode_name(mode)),
                |dir| {
                    cl::run(&cl::Case {
                        dir,
                        mode,
                        batch,
                        batches,
                        payload: &payload,
                        window: a.window,
                        max,
                        segment_size: segment_mib << 20,
                        dev,
                    })
                },
            )?;
            if mode == FlushMode::Sync {
                row.ratio_vs_serial = serial_rate.map(|c| row.disk_mib_s / c);
                row.ratio_vs_bulk = bulk_rate.map(|c| row.disk_mib_s / c);
            }
            rows.push(row);
        }
    }
    let target = rows
        .iter()
        .find(|r| {
            r.kind == Kind::Commitlog
                && r.mode.as_deref() == Some("sync")
                && r.batch == Some(TARGET_BATCH)
        })
        .map(|r| Target {
            batch: TARGET_BATCH,
            ratio_vs_serial: r.ratio_vs_serial,
            ratio_vs_bulk: r.ratio_vs_bulk,
            threshold: TARGET_RATIO,
        });
    Ok(Run { rows, target })
}

/// Run `f` in a fresh temporary directory under `base`, delete it, and let the disk settle.
fn in_fresh_dir(
    base: &Path,
    settle: Duration,
    what: &str,
    f: impl FnOnce(&Path) -> Result<Row>,
) -> Result<Row> {
    eprintln!("running {what} ...");
    let dir = tempfile::Builder::new()
        .prefix("raftmq-bench-")
        .tempdir_in(base)
        .with_context(|| format!("making a temp dir in {}", base.display()))?;
    let r = f(dir.path()).with_context(|| what.to_string());
    let path = dir.path().to_path_buf();
    dir.close()
        .with_context(|| format!("deleting {}", path.display()))?;
    // Push out the deletion (and any discards it triggers) before the next case starts.
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::thread::sleep(settle);
    r
}

/// Check that every figure that should exist is positive and finite.
fn validate(rows: &[Row], ratios: bool) -> Vec<String> {
    let mut bad = Vec::new();
    for r in rows {
        let name = format!("{} batch {:?}", r.label(), r.batch);
        let mut check = |what: &str, v: Option<f64>| match v {
            Some(x) if x.is_finite() && x > 0.0 => {}
            other => bad.push(format!("{name}: {what} = {other:?}")),
        };
        check("entries", Some(r.entries as f64));
        check("secs", Some(r.secs));
        check("payload MiB/s", Some(r.payload_mib_s));
        check("disk MiB/s", Some(r.disk_mib_s));
        check("entries/s", Some(r.entries_s));
        check("append latency p50", r.append_lat.map(|l| l.p50_us));
        check("append latency max", r.append_lat.map(|l| l.max_us));
        if r.kind != Kind::CeilingBulk {
            check("durable latency p50", r.durable_lat.map(|l| l.p50_us));
            check("durable latency max", r.durable_lat.map(|l| l.max_us));
        }
        let is_sync_cl = r.kind == Kind::Commitlog && r.mode.as_deref() == Some("sync");
        // Sync counts are n/a without tracefs; when they exist they must not be zero.
        if r.syncs.is_some() && (is_sync_cl || r.kind != Kind::Commitlog) {
            check("syncs", r.syncs.map(|s| s as f64));
        }
        if is_sync_cl && ratios {
            check("ratio vs ceiling (a)", r.ratio_vs_serial);
            check("ratio vs ceiling (b)", r.ratio_vs_bulk);
        }
    }
    bad
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn statfs(p: &Path) -> Option<libc::statfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs buffer.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: statfs filled the buffer when it returned 0.
    (rc == 0).then(|| unsafe { st.assume_init() })
}

pub(crate) fn fs_name(p: &Path) -> String {
    let Some(st) = statfs(p) else {
        return "unknown filesystem".into();
    };
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u64;
    match magic {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0x6969 => "nfs".into(),
        m => format!("filesystem magic {m:#x}"),
    }
}

/// Facts about this machine that make throughput figures vary from run to run.
pub(crate) fn environment_notes() -> Vec<String> {
    let mut notes = Vec::new();
    // virtio-balloon free page reporting (feature bit 5): freed memory is handed back to the
    // hypervisor, so page cache allocated later pays host page faults on first touch.
    let reporting = std::fs::read_dir("/sys/bus/virtio/drivers/virtio_balloon")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("features")).ok())
        .any(|f| f.as_bytes().get(5) == Some(&b'1'));
    if reporting {
        notes.push(
            "virtio-balloon free page reporting is on: memory freed by one case is returned to the hypervisor, and the next case's fresh page cache pays host page faults on first touch (seen as kernel memset/copy time); expect large run-to-run variance"
                .into(),
        );
    }
    if let Ok(la) = std::fs::read_to_string("/proc/loadavg") {
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        notes.push(format!(
            "{ncpu} CPUs, load average at start {}; the `CPU cores own / machine` and `device MiB written / flushes` columns show what else ran during each case",
            la.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        ));
    }
    notes
}

pub(crate) fn default_dir() -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let cwd = std::env::current_dir().context("current directory")?;
    let tmp = std::env::temp_dir();
    let same_dev = match (std::fs::metadata(&cwd), std::fs::metadata(&tmp)) {
        (Ok(c), Ok(t)) => c.dev() == t.dev(),
        _ => false,
    };
    // The temp dir keeps gigabyte files out of the work tree, but only counts if it is the
    // very filesystem the current directory is on.
    Ok(if same_dev && fs_name(&tmp) != "tmpfs" {
        tmp
    } else {
        cwd
    })
}

/// `git rev-parse --short HEAD` of the workspace (or the current directory), with a note if
/// tracked files have uncommitted changes.
pub(crate) fn git_rev() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        None => "unknown (no git)".into(),
        Some(rev) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if !s.is_empty() => {
                format!(
                    "{rev} + uncommitted changes in {} tracked files",
                    s.lines().count()
                )
            }
            _ => rev,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: Kind, mode: Option<&str>, rate: f64) -> Row {
        let lat = report::Lat {
            count: 1,
            p50_us: 1.0,
            p99_us: 1.0,
            p999_us: 1.0,
            max_us: 1.0,
            mean_us: 1.0,
        };
        Row {
            kind,
            mode: mode.map(str::to_string),
            batch: Some(16),
            chunk_bytes: 16 * 1072,
            entries: 16,
            payload_bytes: 16 * 1024,
            disk_bytes: 16 * 1072,
            secs: 1.0,
            stopped_by_time_limit: false,
            payload_mib_s: rate,
            disk_mib_s: rate,
            entries_s: rate,
            append_lat: Some(lat),
            durable_lat: Some(lat),
            syncs: Some(1),
            page_faults: None,
            cpu_own_cores: None,
            cpu_machine_cores: None,
            device_mib_written: None,
            device_flushes: None,
            final_sync_ms: None,
            ratio_vs_serial: Some(1.0),
            ratio_vs_bulk: Some(1.0),
        }
    }

    #[test]
    fn validate_flags_zero_nan_and_missing_figures() {
        assert!(validate(&[row(Kind::Commitlog, Some("sync"), 5.0)], true).is_empty());
        assert!(!validate(&[row(Kind::Commitlog, Some("sync"), 0.0)], true).is_empty());
        assert!(!validate(&[row(Kind::CeilingSerial, None, f64::NAN)], true).is_empty());
        let mut r = row(Kind::Commitlog, Some("sync"), 5.0);
        r.ratio_vs_bulk = None;
        assert!(!validate(std::slice::from_ref(&r), true).is_empty());
        assert!(validate(&[r], false).is_empty());
        let mut r = row(Kind::Commitlog, Some("sync"), 5.0);
        r.syncs = Some(0);
        assert!(!validate(std::slice::from_ref(&r), true).is_empty());
        r.syncs = None; // not countable here: not an error
        assert!(validate(&[r], true).is_empty());
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
