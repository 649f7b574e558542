//! The machine's own fsync'd sequential-write ceilings, measured on a plain file.
//!
//! The file is prepared exactly like a CommitLog segment (set_len + posix_fallocate + fsync,
//! untimed), so both pay the same filesystem costs (e.g. ext4 converting unwritten extents
//! at the first sync of each block range).
//!
//! * (a) serial: `pwrite` one chunk (= one batch's record bytes) then `fdatasync`, in a loop.
//!   No overlap between writing and syncing: a lower bound on what group commit can reach.
//! * (b) bulk: `pwrite` 1 MiB chunks back to back, one `fdatasync` at the end: the device's
//!   sequential write bandwidth through the page cache, the real ceiling.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::counters::{CpuMeter, DiskMeter, ThreadCounters};
use crate::report::{self, Kind, Lat, Row};

fn prepare(dir: &Path, len: u64) -> Result<File> {
    let path = dir.join("ceiling.dat");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_len(len).context("set_len")?;
    let len_i = i64::try_from(len).context("file too large")?;
    // SAFETY: plain syscall on a valid, owned descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_i) };
    if rc != 0 {
        bail!("posix_fallocate: {}", std::io::Error::from_raw_os_error(rc));
    }
    file.sync_all().context("fsync of the ceiling file")?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context("fsync of the directory")?;
    Ok(file)
}

/// Bytes of a repeating non-zero pattern.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as u8) | 1
        })
        .collect()
}

/// Common description of a ceiling case.
pub struct Case<'a> {
    pub dir: &'a Path,
    /// Total bytes to write.
    pub volume: u64,
    /// Bytes per pwrite.
    pub chunk: u64,
    /// Record size (header + payload) and payload size, to express the result per entry.
    pub record_bytes: u64,
    pub payload: u64,
    pub max: Duration,
    /// `st_dev` of `dir`, for the device counters.
    pub dev: u64,
}

fn row(
    case: &Case<'_>,
    kind: Kind,
    batch: Option<usize>,
    written: u64,
    secs: f64,
    stopped: bool,
) -> Row {
    let entries = written / case.record_bytes;
    let payload_bytes = written * case.payload / case.record_bytes;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    Row {
        kind,
        mode: None,
        batch,
        chunk_bytes: case.chunk,
        entries,
        payload_bytes,
        disk_bytes: written,
        secs,
        stopped_by_time_limit: stopped,
        payload_mib_s: mib(payload_bytes) / secs,
        disk_mib_s: mib(written) / secs,
        entries_s: entries as f64 / secs,
        append_lat: None,
        durable_lat: None,
        syncs: None,
        page_faults: None,
        cpu_own_cores: None,
        cpu_machine_cores: None,
        device_mib_written: None,
        device_flushes: None,
        final_sync_ms: None,
        ratio_vs_serial: None,
        ratio_vs_bulk: None,
    }
}

/// Ceiling (a): write + fdatasync per chunk, serially.
pub fn serial(case: &Case<'_>, batch: usize) -> Result<Row> {
    let file = prepare(case.dir, case.volume)?;
    let buf = pattern(usize::try_from(case.chunk)?);
    let mut write_lat = report::new_histogram()?;
    let mut durable_lat = report::new_histogram()?;
    let mut ctr = ThreadCounters::attach(0);
    let c0 = ctr.read();
    let mut off = 0u64;
    let mut stopped = false;
    let disk = DiskMeter::start(case.dev);
    let cpu = CpuMeter::start();
    let t0 = Instant::now();
    while off < case.volume {
        if t0.elapsed() >= case.max {
            stopped = true;
            break;
        }
        let n = case.chunk.min(case.volume - off) as usize;
        let t = Instant::now();
        file.write_all_at(&buf[..n], off).context("pwrite")?;
        report::record(&mut write_lat, t.elapsed());
        file.sync_data().context("fdatasync")?;
        report::record(&mut durable_lat, t.elapsed());
        off += n as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu.stop();
    let disk = disk.stop();
    let counts = ctr.read().since(c0);
    let mut r = row(case, Kind::CeilingSerial, Some(batch), off, secs, stopped);
    r.append_lat = Lat::of(&write_lat);
    r.durable_lat = Lat::of(&durable_lat);
    r.syncs = counts.syncs;
    r.page_faults = counts.faults;
    r.cpu_own_cores = cpu.own_cores;
    r.cpu_machine_cores = cpu.machine_cores;
    r.device_mib_written = disk.mib_written;
    r.device_flushes = disk.flushes;
    Ok(r)
}

/// Ceiling (b): bulk sequential writes, one fdatasync at the end (inside the timed interval).
pub fn bulk(case: &Case<'_>) -> Result<Row> {
    let file = prepare(case.dir, case.volume)?;
    let buf = pattern(usize::try_from(case.chunk)?);
    let mut write_lat = report::new_histogram()?;
    let mut ctr = ThreadCounters::attach(0);
    let c0 = ctr.read();
    let mut off = 0u64;
    let mut stopped = false;
    let disk = DiskMeter::start(case.dev);
    let cpu = CpuMeter::start();
    let t0 = Instant::now();
    while off < case.volume {
        if t0.elapsed() >= case.max {
            stopped = true;
            break;
        }
        let n = case.chunk.min(case.volume - off) as usize;
        let t = Instant::now();
        file.write_all_at(&buf[..n], off).context("pwrite")?;
        report::record(&mut write_lat, t.elapsed());
        off += n as u64;
    }
    let ts = Instant::now();
    file.sync_data().context("fdatasync")?;
    let final_sync = ts.elapsed();
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu.stop();
    let disk = disk.stop();
    let counts = ctr.read().since(c0);
    let mut r = row(case, Kind::CeilingBulk, None, off, secs, stopped);
    r.append_lat = Lat::of(&write_lat);
    r.syncs = counts.syncs;
    r.page_faults = counts.faults;
    r.cpu_own_cores = cpu.own_cores;
    r.cpu_machine_cores = cpu.machine_cores;
    r.device_mib_written = disk.mib_written;
    r.device_flushes = disk.flushes;
    r.final_sync_ms = Some(final_sync.as_secs_f64() * 1000.0);
    Ok(r)
}
