//! CommitLog append throughput with a pipelined writer.
//!
//! Model: openraft's log IO task issues `append` calls back to back and does not wait for
//! each durability callback before the next one. The writer here is one thread that does the
//! same, but keeps at most `window` batches in flight (appended, callback not yet fired): when
//! the window is full it blocks on a condvar until a callback frees a slot. Under
//! `FlushMode::Sync` the callbacks fire on the CommitLog's flusher thread after its msync, so
//! the window is what lets group commit happen; under `FlushMode::Async` they fire inside
//! `append` and the window never fills.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use raftmq::storage::commitlog::{CommitLog, CommitLogConfig, FlushMode, NewRecord};
use raftmq::storage::record::{HEADER_LEN, RecordId, RecordKind};

use crate::counters::{self, CpuMeter, DiskMeter, ThreadCounters};
use crate::report::{self, Kind, Lat, Row};

/// Parameters of one CommitLog case.
pub struct Case<'a> {
    pub dir: &'a Path,
    pub mode: FlushMode,
    pub batch: usize,
    /// Batches to append (each of `batch` records).
    pub batches: u64,
    pub payload: &'a [u8],
    pub window: usize,
    pub max: Duration,
    pub segment_size: u64,
    /// `st_dev` of `dir`, for the device counters.
    pub dev: u64,
}

struct Progress {
    in_flight: usize,
    durable: u64,
    last_durable: Option<Instant>,
    durable_lat: Histogram<u64>,
    errors: Vec<String>,
}

type Shared = Arc<(Mutex<Progress>, Condvar)>;

fn lock(shared: &Shared) -> Result<std::sync::MutexGuard<'_, Progress>> {
    shared
        .0
        .lock()
        .map_err(|_| anyhow!("progress lock poisoned"))
}

/// Run one case in `case.dir` (which must be empty and is left for the caller to delete).
pub fn run(case: &Case<'_>) -> Result<Row> {
    let mut cfg = CommitLogConfig::new(case.dir);
    cfg.flush = case.mode;
    cfg.segment_size = case.segment_size;
    let (log, _report) = CommitLog::open(cfg, None).context("opening the CommitLog")?;
    let id = |index: u64| RecordId {
        term: 1,
        node: 1,
        index,
    };

    // Untimed warm-up: the first append creates (fallocates, fsyncs, maps) the segment.
    log.append(
        &[NewRecord {
            id: id(0),
            kind: RecordKind::MESSAGE_BATCH,
            payload: case.payload,
        }],
        None,
    )
    .context("warm-up append")?;
    log.flush().context("warm-up flush")?;

    let shared: Shared = Arc::new((
        Mutex::new(Progress {
            in_flight: 0,
            durable: 0,
            last_durable: None,
            durable_lat: report::new_histogram()?,
            errors: Vec::new(),
        }),
        Condvar::new(),
    ));
    let mut append_lat = report::new_histogram()?;
    let mut writer_ctr = ThreadCounters::attach(0);
    let mut flusher_ctr = counters::find_thread("commitlog-flush").map(ThreadCounters::attach);
    let w0 = writer_ctr.read();
    let f0 = flusher_ctr.as_mut().map(ThreadCounters::read);

    let mut records: Vec<NewRecord<'_>> = Vec::with_capacity(case.batch);
    let mut next_index = 1u64;
    let mut issued = 0u64;
    let mut stopped = false;
    let disk = DiskMeter::start(case.dev);
    let cpu = CpuMeter::start();
    let t0 = Instant::now();
    for _ in 0..case.batches {
        if t0.elapsed() >= case.max {
            stopped = true;
            break;
        }
        {
            let mut g = lock(&shared)?;
            while g.in_flight >= case.window {
                g = shared
                    .1
                    .wait(g)
                    .map_err(|_| anyhow!("progress lock poisoned"))?;
            }
            g.in_flight += 1;
        }
        records.clear();
        for i in 0..case.batch as u64 {
            records.push(NewRecord {
                id: id(next_index + i),
                kind: RecordKind::MESSAGE_BATCH,
                payload: case.payload,
            });
        }
        let start = Instant::now();
        let sh = Arc::clone(&shared);
        let cb = Box::new(move |r: std::io::Result<()>| {
            let now = Instant::now();
            if let Ok(mut g) = sh.0.lock() {
                g.in_flight -= 1;
                g.durable += 1;
                g.last_durable = Some(now);
                report::record(&mut g.durable_lat, now - start);
                if let Err(e) = r {
                    g.errors.push(e.to_string());
                }
            }
            sh.1.notify_all();
        });
        log.append(&records, Some(cb))
            .with_context(|| format!("append of entries {next_index}.."))?;
        report::record(&mut append_lat, start.elapsed());
        next_index += case.batch as u64;
        issued += 1;
    }
    // Wait for every in-flight batch to be reported durable.
    let deadline = Instant::now() + Duration::from_secs(300);
    let (end, durable_lat, errors) = {
        let mut g = lock(&shared)?;
        while g.durable < issued {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} of {issued} batches never reported durable",
                    issued - g.durable
                );
            }
            g = shared
                .1
                .wait_timeout(g, left)
                .map_err(|_| anyhow!("progress lock poisoned"))?
                .0;
        }
        (
            g.last_durable,
            g.durable_lat.clone(),
            std::mem::take(&mut g.errors),
        )
    };
    let cpu = cpu.stop();
    let disk = disk.stop();
    let w1 = writer_ctr.read();
    let f1 = flusher_ctr.as_mut().map(ThreadCounters::read);
    if let Some(e) = errors.first() {
        bail!("{} durability callbacks failed, first: {e}", errors.len());
    }
    let end = end.ok_or_else(|| anyhow!("no batch was appended (time limit too small?)"))?;
    let secs = (end - t0).as_secs_f64();

    let tf = Instant::now();
    log.flush().context("final flush")?;
    let final_sync_ms = tf.elapsed().as_secs_f64() * 1000.0;
    drop(log);

    let mut counts = w1.since(w0);
    counts = match (f0, f1) {
        (Some(a), Some(b)) => counts.plus(b.since(a)),
        _ => crate::counters::Reading::default(),
    };
    let entries = issued * case.batch as u64;
    let payload_bytes = entries * case.payload.len() as u64;
    let rec = (HEADER_LEN + case.payload.len()) as u64;
    let disk_bytes = entries * rec;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    Ok(Row {
        kind: Kind::Commitlog,
        mode: Some(
            match case.mode {
                FlushMode::Sync => "sync",
                FlushMode::Async => "async",
            }
            .into(),
        ),
        batch: Some(case.batch),
        chunk_bytes: case.batch as u64 * rec,
        entries,
        payload_bytes,
        disk_bytes,
        secs,
        stopped_by_time_limit: stopped,
        payload_mib_s: mib(payload_bytes) / secs,
        disk_mib_s: mib(disk_bytes) / secs,
        entries_s: entries as f64 / secs,
        append_lat: Lat::of(&append_lat),
        durable_lat: Lat::of(&durable_lat),
        syncs: counts.syncs,
        page_faults: counts.faults,
        cpu_own_cores: cpu.own_cores,
        cpu_machine_cores: cpu.machine_cores,
        device_mib_written: disk.mib_written,
        device_flushes: disk.flushes,
        final_sync_ms: Some(final_sync_ms),
        ratio_vs_serial: None,
        ratio_vs_bulk: None,
    })
}
