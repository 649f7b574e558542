//! Per-hop timestamps of the write path, for latency work (issue #16).
//!
//! Off unless the environment variable `RAFTMQ_HOP_TRACE` names a file prefix when the
//! process first marks a hop; then every [`mark`] records `(hop, raft index, CLOCK_MONOTONIC
//! ns)` in memory and a background thread appends them, once every 200 ms, as text lines
//! `hop index ns` to `<prefix>.<pid>`. CLOCK_MONOTONIC is one clock for every process of the
//! machine, so the files of a client and of the three nodes of a group can be joined by Raft
//! index and time (`bench/python/hops.py` does that). A disabled mark costs one atomic load.
//!
//! Index 0 means "not known at this point" (before the proposal is appended); the analysis
//! pairs such marks by time, which is exact at in-flight 1.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

/// The points of the write path that are marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Hop {
    /// Client: `Producer::send` called.
    ClientSend = 1,
    /// Client: `Producer::send` has the broker's answer.
    ClientAck = 2,
    /// Broker: `SendMessage` handler entered.
    SendIn = 3,
    /// Broker: the group-commit batcher starts writing a batch.
    BatchPropose = 4,
    /// Broker: `Raft::client_write` called.
    ClientWrite = 5,
    /// Broker: `Raft::client_write` returned (index of the entry).
    ClientWriteDone = 6,
    /// Log store: `append` entered (last index of the call).
    LogAppend = 7,
    /// CommitLog flusher: sync of a range starts (last index it covers).
    FsyncStart = 8,
    /// CommitLog flusher: sync done.
    FsyncEnd = 9,
    /// Log store: openraft's IOFlushed callback is about to be called.
    Flushed = 10,
    /// State machine: `apply` of an entry starts.
    ApplyIn = 11,
    /// State machine: the entry is applied and its responder answered.
    ApplyOut = 12,
    /// Broker: `SendMessage` answer ready (index of the entry).
    SendOut = 13,
    /// Leader, Raft client: a `StreamAppend` request goes to the transport (last index).
    StreamReqOut = 14,
    /// Leader, Raft client: a `StreamAppend` response arrived (flushed index).
    StreamRespIn = 15,
    /// Follower, Raft server: a `StreamAppend` request decoded (last index).
    StreamReqIn = 16,
    /// Follower, Raft server: a `StreamAppend` response encoded (flushed index).
    StreamRespOut = 17,
    /// CommitLog append: the flush request is handed to the flusher (last index).
    FlushQueued = 18,
}

const UNKNOWN: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
static INIT: Once = Once::new();
static BUF: OnceLock<Mutex<Vec<(u8, u64, u64)>>> = OnceLock::new();

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn init() {
    let Some(prefix) = std::env::var_os("RAFTMQ_HOP_TRACE").filter(|p| !p.is_empty()) else {
        STATE.store(OFF, Ordering::Relaxed);
        return;
    };
    let buf = BUF.get_or_init(|| Mutex::new(Vec::with_capacity(1 << 16)));
    let mut path = std::path::PathBuf::from(prefix);
    let name = format!(
        "{}.{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    );
    path.set_file_name(name);
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("RAFTMQ_HOP_TRACE: cannot open {}: {e}", path.display());
            STATE.store(OFF, Ordering::Relaxed);
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("hop-trace".into())
        .spawn(move || {
            let mut out = std::io::BufWriter::new(file);
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let batch = match buf.lock() {
                    Ok(mut g) => std::mem::take(&mut *g),
                    Err(_) => return,
                };
                for (h, i, t) in batch {
                    if writeln!(out, "{h} {i} {t}").is_err() {
                        return;
                    }
                }
                if out.flush().is_err() {
                    return;
                }
            }
        });
    STATE.store(if spawned.is_ok() { ON } else { OFF }, Ordering::Relaxed);
}

/// Whether hops are being recorded.
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            INIT.call_once(init);
            STATE.load(Ordering::Relaxed) == ON
        }
    }
}

/// Record that the write path passed `hop` for Raft index `index` (0 if not known yet).
#[inline]
pub fn mark(hop: Hop, index: u64) {
    if !enabled() {
        return;
    }
    let t = now_ns();
    if let Some(buf) = BUF.get()
        && let Ok(mut g) = buf.lock()
    {
        g.push((hop as u8, index, t));
    }
}
