//! Result rows, the markdown table and the JSON document.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in nanoseconds (1 ns .. 1 h, 3 significant digits).
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
        .map_err(|e| anyhow::anyhow!("histogram: {e}"))
}

/// Record a duration (saturating at the histogram bounds).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(ns);
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Lat {
    pub count: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Lat {
    pub fn of(h: &Histogram<u64>) -> Option<Lat> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Lat {
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        })
    }
}

/// What a row measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// CommitLog append, pipelined writer.
    Commitlog,
    /// Ceiling (a): pwrite of one batch's bytes then fdatasync, serially.
    CeilingSerial,
    /// Ceiling (b): bulk sequential pwrite, one fdatasync at the end.
    CeilingBulk,
}

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub kind: Kind,
    /// `sync` / `async` for CommitLog rows.
    pub mode: Option<String>,
    /// Records per append (CommitLog) or per chunk (ceiling (a)); None for ceiling (b).
    pub batch: Option<usize>,
    /// Bytes per write call (CommitLog: one batch's record bytes, headers included).
    pub chunk_bytes: u64,
    /// Entries appended and reported durable (ceilings: record-sized equivalents written).
    pub entries: u64,
    /// Payload bytes (ceilings: the payload share of the bytes written).
    pub payload_bytes: u64,
    /// Bytes put on disk for the data (record headers + payloads; the ceilings write this many).
    pub disk_bytes: u64,
    /// From the first write until the last durability callback / the last fdatasync returned.
    pub secs: f64,
    /// Whether the time limit stopped the case before the full volume.
    pub stopped_by_time_limit: bool,
    pub payload_mib_s: f64,
    pub disk_mib_s: f64,
    pub entries_s: f64,
    /// Latency of the append call (ceilings: of the pwrite call).
    pub append_lat: Option<Lat>,
    /// From the start of the append until its durability callback (ceiling (a): pwrite +
    /// fdatasync of the chunk).
    pub durable_lat: Option<Lat>,
    /// msync + fsync + fdatasync syscalls during the timed interval, all threads involved.
    pub syncs: Option<u64>,
    /// Page faults during the timed interval (writer + flusher threads).
    pub page_faults: Option<u64>,
    /// CPU used by this process during the timed interval, in cores.
    pub cpu_own_cores: Option<f64>,
    /// CPU used by the whole machine (every process and kernel thread) during the timed
    /// interval, in cores: well above `cpu_own_cores` means something else competed.
    pub cpu_machine_cores: Option<f64>,
    /// MiB the block device wrote during the timed interval (all processes; `/proc/diskstats`).
    pub device_mib_written: Option<f64>,
    /// Cache-flush requests the block device completed during the timed interval.
    pub device_flushes: Option<u64>,
    /// Untimed `CommitLog::flush` after the case (CommitLog), or the final fdatasync inside the
    /// timed interval (ceiling (b)), in milliseconds.
    pub final_sync_ms: Option<f64>,
    /// CommitLog sync rows: disk throughput ÷ ceiling (a) at the same batch size.
    pub ratio_vs_serial: Option<f64>,
    /// CommitLog sync rows: disk throughput ÷ ceiling (b).
    pub ratio_vs_bulk: Option<f64>,
}

impl Row {
    /// Label for the first table column.
    pub fn label(&self) -> String {
        match self.kind {
            Kind::Commitlog => format!("commitlog {}", self.mode.as_deref().unwrap_or("?")),
            Kind::CeilingSerial => "ceiling (a) write+fdatasync per chunk, serial".into(),
            Kind::CeilingBulk => format!(
                "ceiling (b) bulk {} KiB writes + 1 final fdatasync",
                self.chunk_bytes / 1024
            ),
        }
    }

    /// Batches (appends or chunks) per sync syscall, where both are known.
    pub fn batches_per_sync(&self) -> Option<f64> {
        let syncs = self.syncs?;
        let batch = self.batch? as u64;
        if syncs == 0 || batch == 0 {
            return None;
        }
        Some(self.entries.div_ceil(batch) as f64 / syncs as f64)
    }
}

/// Run-wide facts printed above the table.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub git_rev: String,
    pub unix_time: u64,
    pub kernel: String,
    pub dir: String,
    pub filesystem: String,
    pub total_mib: u64,
    pub payload: usize,
    pub record_bytes: usize,
    pub batches: Vec<usize>,
    pub modes: Vec<String>,
    pub window: usize,
    pub max_secs: f64,
    pub segment_mib: u64,
    pub bulk_chunk_kib: usize,
    pub settle_ms: u64,
    pub smoke: bool,
    pub syscall_counting: bool,
    /// Environment facts that make figures vary (printed as notes).
    pub notes: Vec<String>,
}

/// The headline figure of the issue.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub batch: usize,
    pub ratio_vs_serial: Option<f64>,
    pub ratio_vs_bulk: Option<f64>,
    pub threshold: f64,
}

/// One whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub rows: Vec<Row>,
    pub target: Option<Target>,
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "n/a".to_string(), f)
}

fn pct(r: Option<f64>) -> String {
    opt(r, |r| format!("{:.1} %", r * 100.0))
}

fn us(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn lat3(l: Option<Lat>) -> String {
    opt(l, |l| {
        format!("{} / {} / {}", us(l.p50_us), us(l.p99_us), us(l.max_us))
    })
}

fn lat4(l: Option<Lat>) -> String {
    opt(l, |l| {
        format!(
            "{} / {} / {} / {}",
            us(l.p50_us),
            us(l.p99_us),
            us(l.p999_us),
            us(l.max_us)
        )
    })
}

/// The parameters block.
pub fn meta_markdown(m: &Meta) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## raftmq-bench commitlog");
    let _ = writeln!(s);
    let _ = writeln!(s, "- git revision: `{}`", m.git_rev);
    let _ = writeln!(
        s,
        "- kernel: {}; directory: `{}` ({})",
        m.kernel, m.dir, m.filesystem
    );
    let _ = writeln!(
        s,
        "- volume per case: {} MiB of payload, {} B payloads ({} B records with the 48 B header), batches {:?}, modes {:?}",
        m.total_mib, m.payload, m.record_bytes, m.batches, m.modes
    );
    let _ = writeln!(
        s,
        "- writer model: one thread appends back to back keeping up to {} batches in flight (appended, durability callback not yet fired), blocking on a condvar when the window is full; each case stops issuing after {} s and waits for what is in flight",
        m.window, m.max_secs
    );
    let _ = writeln!(
        s,
        "- segment size {} MiB; fresh directory per case, deleted afterwards, then sync(2) and a {} ms pause; segment creation happens in an untimed warm-up append (the ceiling file's preallocation is untimed too)",
        m.segment_mib, m.settle_ms
    );
    let _ = writeln!(
        s,
        "- sync syscall counts: {}",
        if m.syscall_counting {
            "exact (perf tracepoints syscalls:sys_enter_{msync,fsync,fdatasync})"
        } else {
            "unavailable (mount tracefs at /sys/kernel/tracing as root to get them)"
        }
    );
    for n in &m.notes {
        let _ = writeln!(s, "- note: {n}");
    }
    if m.smoke {
        let _ = writeln!(s, "- SMOKE run: tiny volumes, figures are not meaningful");
    }
    s
}

/// The results table of one run.
pub fn table_markdown(run: &Run) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| case | batch | entries | secs | payload MiB/s | disk MiB/s | entries/s | append µs p50/p99/max | durable µs p50/p99/p99.9/max | syncs | batches/sync | page faults | CPU cores own / machine | device MiB written / flushes | final sync ms | vs ceiling (a) | vs ceiling (b) |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &run.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {}{} | {:.2} | {:.1} | {:.1} | {:.0} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} |",
            r.label(),
            opt(r.batch, |b| b.to_string()),
            r.entries,
            if r.stopped_by_time_limit {
                " (time limit)"
            } else {
                ""
            },
            r.secs,
            r.payload_mib_s,
            r.disk_mib_s,
            r.entries_s,
            lat3(r.append_lat),
            lat4(r.durable_lat),
            opt(r.syncs, |v| v.to_string()),
            opt(r.batches_per_sync(), |v| format!("{v:.1}")),
            opt(r.page_faults, |v| v.to_string()),
            opt(r.cpu_own_cores, |v| format!("{v:.2}")),
            opt(r.cpu_machine_cores, |v| format!("{v:.2}")),
            opt(r.device_mib_written, |v| format!("{v:.0}")),
            opt(r.device_flushes, |v| v.to_string()),
            opt(r.final_sync_ms, |v| format!("{v:.1}")),
            if r.ratio_vs_serial.is_some() {
                pct(r.ratio_vs_serial)
            } else {
                "—".into()
            },
            if r.ratio_vs_bulk.is_some() {
                pct(r.ratio_vs_bulk)
            } else {
                "—".into()
            },
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "Ceiling rows write the same on-disk bytes as the CommitLog (records of header + payload) to a preallocated (posix_fallocate + fsync) plain file in the same directory; their \"entries\" are record-sized equivalents. Ratios compare disk MiB/s and are given for CommitLog sync rows only (async acknowledges before anything is durable)."
    );
    if let Some(t) = &run.target {
        let _ = writeln!(s);
        let verdict = |r: Option<f64>| match r {
            Some(r) if r >= t.threshold => "meets",
            Some(_) => "BELOW",
            None => "n/a",
        };
        let _ = writeln!(
            s,
            "**TARGET (issue): sync-flush append of {}-entry batches ≥ {:.0} % of the fsync'd sequential-write ceiling:** {} of ceiling (a) serial write+fdatasync per {}-entry chunk ({}); {} of ceiling (b) bulk write + final fdatasync ({}).",
            t.batch,
            t.threshold * 100.0,
            pct(t.ratio_vs_serial),
            t.batch,
            verdict(t.ratio_vs_serial),
            pct(t.ratio_vs_bulk),
            verdict(t.ratio_vs_bulk),
        );
    }
    s
}
