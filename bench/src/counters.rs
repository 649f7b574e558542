//! Per-thread kernel counters via `perf_event_open(2)`: how many sync syscalls (msync, fsync,
//! fdatasync) and page faults a thread made during a measured interval.
//!
//! Syscall counts use the `syscalls:sys_enter_*` tracepoints, whose ids are read from tracefs
//! (`/sys/kernel/tracing`, or the debugfs path). When tracefs is not mounted, or perf events
//! are not permitted (`kernel.perf_event_paranoid`), the counts are reported as unavailable:
//! nothing here is estimated. Page faults use a software event and need no tracefs.

use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::path::Path;

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER5` (112 bytes), all we need.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
    branch_sample_type: u64,
    sample_regs_user: u64,
    sample_stack_user: u32,
    clockid: i32,
    sample_regs_intr: u64,
    aux_watermark: u32,
    sample_max_stack: u16,
    reserved2: u16,
}

const PERF_TYPE_SOFTWARE: u32 = 1;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_COUNT_SW_PAGE_FAULTS: u64 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// One counting perf event attached to one thread.
pub struct Counter {
    file: File,
}

impl Counter {
    fn open(type_: u32, config: u64, tid: libc::pid_t) -> Option<Counter> {
        let attr = PerfEventAttr {
            type_,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config,
            ..PerfEventAttr::default()
        };
        // SAFETY: `attr` is a valid, fully initialised perf_event_attr of the size it declares;
        // the kernel only reads it. pid = tid, cpu = -1 (any), no group.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                tid,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        let fd = libc::c_int::try_from(fd).ok()?;
        // SAFETY: a fresh descriptor returned by the kernel, owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        Some(Counter { file })
    }

    /// Current count.
    pub fn read(&mut self) -> Option<u64> {
        let mut buf = [0u8; 8];
        self.file.read_exact(&mut buf).ok()?;
        Some(u64::from_ne_bytes(buf))
    }
}

fn tracepoint_id(event: &str) -> Option<u64> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|base| {
            let p = Path::new(base)
                .join("events/syscalls")
                .join(event)
                .join("id");
            std::fs::read_to_string(p).ok()
        })
        .and_then(|s| s.trim().parse().ok())
}

/// Whether syscall tracepoints can be counted here (tracefs mounted and perf permitted).
pub fn syscall_counting_available() -> bool {
    tracepoint_id("sys_enter_msync")
        .and_then(|id| Counter::open(PERF_TYPE_TRACEPOINT, id, 0))
        .is_some()
}

/// The counters of one thread.
pub struct ThreadCounters {
    syncs: Vec<Counter>,
    faults: Option<Counter>,
}

/// A reading of [`ThreadCounters`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// msync + fsync + fdatasync calls, if countable.
    pub syncs: Option<u64>,
    /// Page faults, if countable.
    pub faults: Option<u64>,
}

impl Reading {
    /// `self - earlier`, field by field (None if either side lacks it).
    pub fn since(self, earlier: Reading) -> Reading {
        let d = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        Reading {
            syncs: d(self.syncs, earlier.syncs),
            faults: d(self.faults, earlier.faults),
        }
    }

    /// Field-wise sum (None if either side lacks it).
    pub fn plus(self, other: Reading) -> Reading {
        let s = |a: Option<u64>, b: Option<u64>| Some(a? + b?);
        Reading {
            syncs: s(self.syncs, other.syncs),
            faults: s(self.faults, other.faults),
        }
    }
}

impl ThreadCounters {
    /// Attach to thread `tid` (0 = the calling thread).
    pub fn attach(tid: libc::pid_t) -> ThreadCounters {
        let mut syncs = Vec::new();
        let mut complete = true;
        for ev in ["sys_enter_msync", "sys_enter_fsync", "sys_enter_fdatasync"] {
            match tracepoint_id(ev).and_then(|id| Counter::open(PERF_TYPE_TRACEPOINT, id, tid)) {
                Some(c) => syncs.push(c),
                None => complete = false,
            }
        }
        if !complete {
            syncs.clear();
        }
        ThreadCounters {
            syncs,
            faults: Counter::open(PERF_TYPE_SOFTWARE, PERF_COUNT_SW_PAGE_FAULTS, tid),
        }
    }

    /// Read all counters now.
    pub fn read(&mut self) -> Reading {
        let syncs = if self.syncs.is_empty() {
            None
        } else {
            self.syncs
                .iter_mut()
                .try_fold(0u64, |acc, c| c.read().map(|v| acc + v))
        };
        Reading {
            syncs,
            faults: self.faults.as_mut().and_then(Counter::read),
        }
    }
}

/// Thread id of this process's thread named `name` (its `comm`), if exactly one exists.
pub fn find_thread(name: &str) -> Option<libc::pid_t> {
    let mut found = None;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            if found.is_some() {
                return None;
            }
            found = entry.file_name().to_str().and_then(|s| s.parse().ok());
        }
    }
    found
}

/// CPU use over an interval: this process (all its threads, from `getrusage`) and the whole
/// machine (all CPUs, from `/proc/stat`, which includes the kernel threads doing our IO and
/// anything else running). Both in cores (1.0 = one CPU busy for the whole interval).
pub struct CpuMeter {
    at: std::time::Instant,
    own: Option<f64>,
    machine: Option<(u64, u64)>,
}

fn own_cpu_secs() -> Option<f64> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `ru` is a writable rusage buffer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: filled by getrusage, which returned 0.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// (busy, total) jiffies over all CPUs.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    if v.len() < 8 {
        return None;
    }
    let idle = v[3] + v[4];
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some((busy, busy + idle))
}

/// CPU use of an interval, in cores.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub own_cores: Option<f64>,
    pub machine_cores: Option<f64>,
}

impl CpuMeter {
    pub fn start() -> CpuMeter {
        CpuMeter {
            at: std::time::Instant::now(),
            own: own_cpu_secs(),
            machine: machine_jiffies(),
        }
    }

    pub fn stop(&self) -> CpuUse {
        let wall = self.at.elapsed().as_secs_f64();
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let own = match (self.own, own_cpu_secs()) {
            (Some(a), Some(b)) if wall > 0.0 => Some((b - a) / wall),
            _ => None,
        };
        let machine = match (self.machine, machine_jiffies()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1 - b0) as f64 / (t1 - t0) as f64 * ncpu)
            }
            _ => None,
        };
        CpuUse {
            own_cores: own,
            machine_cores: machine,
        }
    }
}

/// Block-device activity over an interval, from `/proc/diskstats`, for the device holding a
/// directory: it shows what the device really did (including other processes' IO).
pub struct DiskMeter {
    major: u64,
    minor: u64,
    start: Option<DiskStat>,
}

#[derive(Debug, Clone, Copy)]
struct DiskStat {
    sectors_written: u64,
    flushes: u64,
}

/// Device activity of an interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskUse {
    pub mib_written: Option<f64>,
    pub flushes: Option<u64>,
}

impl DiskMeter {
    /// Meter the device whose `st_dev` is `dev`.
    pub fn start(dev: u64) -> DiskMeter {
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let mut m = DiskMeter {
            major,
            minor,
            start: None,
        };
        m.start = m.read();
        m
    }

    fn read(&self) -> Option<DiskStat> {
        let text = std::fs::read_to_string("/proc/diskstats").ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10
                || f[0].parse::<u64>().ok()? != self.major
                || f[1].parse::<u64>().ok()? != self.minor
            {
                return None;
            }
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            Some(DiskStat {
                sectors_written: n(9)?,
                // Flush counts exist since Linux 5.5 (fields 16-17).
                flushes: n(18).unwrap_or(0),
            })
        })
    }

    pub fn stop(&self) -> DiskUse {
        match (self.start, self.read()) {
            (Some(a), Some(b)) => DiskUse {
                mib_written: Some(
                    b.sectors_written.saturating_sub(a.sectors_written) as f64 * 512.0
                        / (1u64 << 20) as f64,
                ),
                flushes: Some(b.flushes.saturating_sub(a.flushes)),
            },
            _ => DiskUse::default(),
        }
    }
}
