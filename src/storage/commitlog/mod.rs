//! The CommitLog: fixed-size mmap'd segments holding Raft entries as records.
//!
//! This is the Raft log itself (the openraft log store in `raft::log_store` is a thin adapter
//! over it), and it is also where message bodies live: ConsumeQueue units point into it.
//!
//! * **Layout**: `commitlog/<20-digit first byte offset>` segments of `segment_size` bytes, each
//!   preallocated and mapped. Records use the format in [`super::record`]; the padding rule
//!   there makes every record's position a pure function of the record sizes before it, so
//!   replicas hold identical bytes at identical offsets. `index/` maps Raft index → position
//!   ([`super::index`]).
//! * **Append**: records are copied into the mapping under the write lock and become readable
//!   at once. Durability is reported through a callback: under [`FlushMode::Sync`] a flusher
//!   thread msyncs the dirty range and then fires the callbacks of every append it covered,
//!   so concurrent appends share one sync (group commit); under [`FlushMode::Async`] the
//!   callback fires immediately and the flusher syncs every `flush_interval` — weaker: a power
//!   failure can lose up to one interval of acknowledged appends.
//! * **Failed sync**: the log is *poisoned*: every later write fails with
//!   [`StoreError::Poisoned`]; nothing is retried (after a failed fsync the kernel may have
//!   dropped the dirty pages, so a retry that succeeds proves nothing).
//! * **Recovery** ([`CommitLog::open`]): the last `recovery_scan_segments` segments are scanned
//!   record by record (older segments were synced, with their index, when they were sealed).
//!   At the first position that is not a whole, valid record, the rest of the log is searched
//!   for any valid record: if one exists the damage is in the middle of the log → refuse to
//!   open with the file and offset; otherwise it is a torn tail → it is zeroed and cut.
//! * **Truncate** cuts an uncommitted tail (follower conflict): the bytes are zeroed and synced
//!   so a later recovery cannot mistake stale records for live ones. **Purge** moves the first
//!   retained index and deletes whole segments (and index files) below it.
//!
//! Files: this one holds the log and its reads and writes; `flush` the flusher thread,
//! `recovery` the scan at open, `inspect` the read-only check behind `raftmq store`.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use super::error::{Result, StoreError};
use super::fsutil;
use super::index::{IndexFiles, Slot};
use super::record::{self, DecodeError, HEADER_LEN, PAD_MAGIC, Record, RecordId, RecordKind};
use super::segment::Segment;

mod flush;
mod inspect;
mod recovery;

use flush::{flusher_loop, poison, push_dirty, send_flush};
pub use inspect::{EntrySummary, Inspection, inspect, payloads};
use recovery::{extend_short_tail, recover};

/// How far past the first bad position recovery looks for valid records (mid-log damage)
/// and for torn bytes to zero. A torn tail is at most the last unsynced batch; damage in
/// the middle of the log is also caught through the record's own length and the index.
const RECOVERY_WINDOW: u64 = 16 << 20;

/// File recording where an emptied log restarts (`<next index> <next position>`).
const ANCHOR: &str = "ANCHOR";

/// When appended data is reported durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Report an append only after msync of its bytes (group-committed). The safe default.
    Sync,
    /// Report an append at once; a background flusher syncs every `flush_interval`. A power
    /// failure (not a process crash: the page cache survives that) loses what was not synced.
    Async,
}

impl std::str::FromStr for FlushMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sync" => Ok(FlushMode::Sync),
            "async" => Ok(FlushMode::Async),
            other => Err(format!(
                "flush mode must be `sync` or `async`, not `{other}`"
            )),
        }
    }
}

/// CommitLog settings.
#[derive(Debug, Clone)]
pub struct CommitLogConfig {
    /// Directory holding `commitlog/` and `index/`.
    pub dir: PathBuf,
    /// Bytes per segment file (default 1 GiB; tests use small ones). Multiple of 4096.
    pub segment_size: u64,
    /// Slots per index file (32 bytes each; default 1 Mi slots = 32 MiB).
    pub index_slots_per_file: u64,
    /// Durability mode.
    pub flush: FlushMode,
    /// Interval of the background flusher under [`FlushMode::Async`].
    pub flush_interval: Duration,
    /// How many trailing segments recovery scans record by record (at least 1).
    pub recovery_scan_segments: usize,
}

impl CommitLogConfig {
    /// Defaults for a data directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CommitLogConfig {
            dir: dir.into(),
            segment_size: 1 << 30,
            index_slots_per_file: 1 << 20,
            flush: FlushMode::Sync,
            flush_interval: Duration::from_millis(10),
            recovery_scan_segments: 2,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.segment_size < 4096 || self.segment_size % 4096 != 0 {
            return Err(StoreError::Config(format!(
                "segment_size must be a multiple of 4096 and at least 4096, got {}",
                self.segment_size
            )));
        }
        if self.segment_size > isize::MAX as u64 {
            return Err(StoreError::Config("segment_size too large".into()));
        }
        if self.index_slots_per_file == 0 {
            return Err(StoreError::Config(
                "index_slots_per_file must be > 0".into(),
            ));
        }
        if self.recovery_scan_segments == 0 {
            return Err(StoreError::Config(
                "recovery_scan_segments must be >= 1".into(),
            ));
        }
        Ok(())
    }
}

/// A record to append. The payload is borrowed: it is copied once, into the mapping.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    /// Log identity; `id.index` must be the log's next index.
    pub id: RecordId,
    /// Entry kind.
    pub kind: RecordKind,
    /// Payload bytes.
    pub payload: &'a [u8],
}

/// Called once when an append is durable (or failed to become durable).
pub type FlushCallback = Box<dyn FnOnce(io::Result<()>) + Send>;

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: usize,
    /// Records checked record-by-record.
    pub records_scanned: u64,
    /// Where a torn tail was cut (file, offset), if any.
    pub torn_tail_at: Option<(PathBuf, u64)>,
    /// Bytes zeroed when cutting the torn tail.
    pub torn_bytes: u64,
    /// Whether the index had to be rebuilt by a full scan.
    pub index_rebuilt: bool,
    /// A last segment found shorter than the segment size (path, length found), extended.
    pub extended_tail_segment: Option<(PathBuf, u64)>,
}

struct State {
    segments: BTreeMap<u64, Arc<Segment>>,
    index: IndexFiles,
    /// First index still readable (everything below is purged).
    first_index: u64,
    /// Index the next append must carry.
    next_index: u64,
    /// Absolute byte offset of the next record.
    write_pos: u64,
}

struct Inner {
    cfg: CommitLogConfig,
    log_dir: PathBuf,
    state: RwLock<State>,
    poison: Mutex<Option<String>>,
}

enum FlushMsg {
    Range {
        seg: Arc<Segment>,
        from: u64,
        to: u64,
        /// Last Raft index written to the range (for [`crate::hops`]).
        index: u64,
        cb: Option<FlushCallback>,
    },
    Barrier(Sender<io::Result<()>>),
}

/// The CommitLog. Reads take `&self` and may run concurrently; appends, truncation and purge
/// are serialised by an internal lock (openraft issues them from one task anyway).
pub struct CommitLog {
    inner: Arc<Inner>,
    tx: Option<Sender<FlushMsg>>,
    flusher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for CommitLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CommitLog({})", self.inner.log_dir.display())
    }
}

fn lock_err<T>(_: T) -> StoreError {
    StoreError::Poisoned("internal lock poisoned by a panic".into())
}

impl CommitLog {
    /// Open or create the log under `cfg.dir`, recovering from any crash.
    ///
    /// `purged_upto` is the last purged index as persisted by the caller (Raft metadata):
    /// records at or below it are treated as gone even if their segment still exists.
    pub fn open(
        cfg: CommitLogConfig,
        purged_upto: Option<u64>,
    ) -> Result<(CommitLog, RecoveryReport)> {
        cfg.validate()?;
        let log_dir = cfg.dir.join("commitlog");
        let index_dir = cfg.dir.join("index");
        std::fs::create_dir_all(&log_dir).map_err(|e| StoreError::io(&log_dir, e))?;
        let index = IndexFiles::open(&index_dir, cfg.index_slots_per_file)?;
        let mut report = RecoveryReport::default();

        let mut segments = BTreeMap::new();
        let files = fsutil::list_numbered(&log_dir, "")?;
        for (i, (base, path)) in files.iter().enumerate() {
            if base % cfg.segment_size != 0 {
                return Err(StoreError::corrupt(
                    path,
                    0,
                    format!(
                        "segment base {base} is not a multiple of segment size {}",
                        cfg.segment_size
                    ),
                ));
            }
            if i > 0 && files[i - 1].0 + cfg.segment_size != *base {
                return Err(StoreError::corrupt(
                    path,
                    0,
                    format!(
                        "missing segment before this one (previous starts at {})",
                        files[i - 1].0
                    ),
                ));
            }
            if i + 1 == files.len() {
                extend_short_tail(path, cfg.segment_size, &mut report)?;
            }
            segments.insert(*base, Segment::open(path, *base, cfg.segment_size)?);
        }
        report.segments = segments.len();

        let mut state = State {
            segments,
            index,
            first_index: 0,
            next_index: 0,
            write_pos: 0,
        };
        recover(&cfg, &mut state, &mut report)?;
        let purged_next = purged_upto.map_or(0, |p| p + 1);
        if purged_next > state.first_index {
            state.first_index = purged_next;
        }
        if state.next_index < state.first_index {
            state.next_index = state.first_index;
        }
        state.index.flush()?;

        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            log_dir,
            state: RwLock::new(state),
            poison: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel();
        let fl_inner = Arc::clone(&inner);
        let flusher = std::thread::Builder::new()
            .name("commitlog-flush".into())
            .spawn(move || flusher_loop(fl_inner, rx))
            .map_err(|e| StoreError::io(&cfg.dir, e))?;
        Ok((
            CommitLog {
                inner,
                tx: Some(tx),
                flusher: Some(flusher),
            },
            report,
        ))
    }

    fn read_state(&self) -> Result<RwLockReadGuard<'_, State>> {
        self.inner.state.read().map_err(lock_err)
    }

    fn write_state(&self) -> Result<RwLockWriteGuard<'_, State>> {
        self.inner.state.write().map_err(lock_err)
    }

    fn check_poison(&self) -> Result<()> {
        match &*self.inner.poison.lock().map_err(lock_err)? {
            Some(why) => Err(StoreError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Poison the log: every later write fails. Used when a sync fails.
    pub fn poison(&self, why: impl Into<String>) {
        poison(&self.inner, why.into());
    }

    /// Why the log refuses writes, if it does.
    pub fn poisoned(&self) -> Option<String> {
        self.inner.poison.lock().ok().and_then(|g| g.clone())
    }

    /// The configuration in force.
    pub fn config(&self) -> &CommitLogConfig {
        &self.inner.cfg
    }

    /// First readable index.
    pub fn first_index(&self) -> Result<u64> {
        Ok(self.read_state()?.first_index)
    }

    /// Index the next append must carry (one past the last entry).
    pub fn next_index(&self) -> Result<u64> {
        Ok(self.read_state()?.next_index)
    }

    /// Absolute byte offset where the next record would start (before any padding).
    pub fn write_pos(&self) -> Result<u64> {
        Ok(self.read_state()?.write_pos)
    }

    /// Id of the last entry, if the log holds any readable entry.
    pub fn last_id(&self) -> Result<Option<RecordId>> {
        let st = self.read_state()?;
        if st.next_index == st.first_index {
            return Ok(None);
        }
        let i = st.next_index - 1;
        slot_of(&self.inner, &st, i).map(|s| {
            Some(RecordId {
                term: s.term,
                node: s.node,
                index: i,
            })
        })
    }

    /// The id of entry `index` from the index file (no payload read).
    pub fn id_at(&self, index: u64) -> Result<RecordId> {
        let st = self.read_state()?;
        check_range(&st, index)?;
        let s = slot_of(&self.inner, &st, index)?;
        Ok(RecordId {
            term: s.term,
            node: s.node,
            index,
        })
    }

    /// Append records (dense, in order). They are readable when this returns; `on_durable`
    /// fires once they are durable under the configured [`FlushMode`].
    pub fn append(
        &self,
        records: &[NewRecord<'_>],
        on_durable: Option<FlushCallback>,
    ) -> Result<()> {
        self.check_poison()?;
        let seg_size = self.inner.cfg.segment_size;
        let mut dirty: Vec<(Arc<Segment>, u64, u64)> = Vec::with_capacity(2);
        {
            let mut st = self.write_state()?;
            for r in records {
                if st.first_index == st.next_index && r.id.index > st.next_index {
                    // An empty log may start at any index (openraft begins at 1 after
                    // initialisation at 0 on other nodes, or after a purge past the end).
                    st.first_index = r.id.index;
                    st.next_index = r.id.index;
                }
                if r.id.index != st.next_index {
                    return Err(StoreError::OutOfOrder {
                        expected: st.next_index,
                        got: r.id.index,
                    });
                }
                let total = (HEADER_LEN + r.payload.len()) as u64;
                if total > seg_size || r.payload.len() > u32::MAX as usize {
                    return Err(StoreError::RecordTooLarge {
                        size: total,
                        segment_size: seg_size,
                    });
                }
                let mut off = st.write_pos % seg_size;
                if off + total > seg_size {
                    // Padding rule (see `record`): mark the unused tail, continue in the next segment.
                    if seg_size - off >= 4 {
                        let wp = st.write_pos;
                        let seg = self.ensure_segment(&mut st, wp)?;
                        seg.write_vectored(off, &[&PAD_MAGIC.to_le_bytes()])
                            .map_err(|e| StoreError::io(seg.path(), e))?;
                        push_dirty(&mut dirty, &seg, off, off + 4);
                    }
                    st.write_pos += seg_size - off;
                    off = 0;
                }
                let pos = st.write_pos;
                let seg = match self.ensure_segment(&mut st, pos) {
                    Ok(s) => s,
                    Err(e) => {
                        // Records of this batch before the failure are already in place and
                        // readable; refuse further writes rather than leave a confusing state.
                        self.poison(format!("segment creation failed mid-append: {e}"));
                        return Err(e);
                    }
                };
                let header = record::encode_header(r.kind, r.id, pos, r.payload);
                if let Err(e) = seg.write_vectored(off, &[&header, r.payload]) {
                    // Space is preallocated, so this is an I/O failure: the record may be
                    // partial (recovery cuts it); this process must not go on appending.
                    self.poison(format!("write to {} failed: {e}", seg.path().display()));
                    return Err(StoreError::io(seg.path(), e));
                }
                push_dirty(&mut dirty, &seg, off, off + total);
                let slot = Slot {
                    pos,
                    len: total as u32,
                    kind: r.kind.0,
                    term: r.id.term,
                    node: r.id.node,
                };
                let idx = st.next_index;
                st.index.put(idx, slot)?;
                st.next_index += 1;
                st.write_pos += total;
            }
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| StoreError::Poisoned("log is closed".into()))?;
        let n = dirty.len();
        let index = records.last().map_or(0, |r| r.id.index);
        match self.inner.cfg.flush {
            FlushMode::Sync => {
                let mut cb = on_durable;
                crate::hops::mark(crate::hops::Hop::FlushQueued, index);
                for (i, (seg, from, to)) in dirty.into_iter().enumerate() {
                    let cb = if i + 1 == n { cb.take() } else { None };
                    send_flush(tx, seg, from, to, index, cb);
                }
                if let Some(cb) = cb {
                    // Nothing to sync (empty batch): durable by definition.
                    cb(Ok(()));
                }
            }
            FlushMode::Async => {
                for (seg, from, to) in dirty {
                    send_flush(tx, seg, from, to, index, None);
                }
                if let Some(cb) = on_durable {
                    cb(Ok(()));
                }
            }
        }
        Ok(())
    }

    /// Find or create the segment containing `pos`. Creating one seals the previous segment:
    /// its data and the index are synced, which is what lets recovery scan only the tail.
    fn ensure_segment(&self, st: &mut State, pos: u64) -> Result<Arc<Segment>> {
        let seg_size = self.inner.cfg.segment_size;
        let base = pos - pos % seg_size;
        if let Some(s) = st.segments.get(&base) {
            return Ok(Arc::clone(s));
        }
        if let Some((_, prev)) = st.segments.range(..base).next_back() {
            let prev = Arc::clone(prev);
            if let Err(e) = prev.flush_range(0, seg_size) {
                let why = format!(
                    "sync of sealed segment {} failed: {e}",
                    prev.path().display()
                );
                self.poison(why.clone());
                return Err(StoreError::Poisoned(why));
            }
            if let Err(e) = st.index.flush() {
                self.poison(format!("index sync failed: {e}"));
                return Err(e);
            }
        }
        let seg = Segment::create(&self.inner.log_dir, base, seg_size)?;
        st.segments.insert(base, Arc::clone(&seg));
        Ok(seg)
    }

    /// Absolute position of entry `index` (from the index file).
    pub fn position_of(&self, index: u64) -> Result<u64> {
        let st = self.read_state()?;
        check_range(&st, index)?;
        Ok(slot_of(&self.inner, &st, index)?.pos)
    }

    /// Zero-copy view of `len` bytes at absolute position `pos`, which must lie inside one
    /// retained segment and below the write position. Used by consumers, which reach message
    /// bytes through ConsumeQueue units (positions), also below the first retained index.
    pub fn read_bytes(&self, pos: u64, len: usize) -> Result<Bytes> {
        let st = self.read_state()?;
        let seg_size = self.inner.cfg.segment_size;
        let base = pos - pos % seg_size;
        let end = pos.saturating_add(len as u64);
        let seg = st
            .segments
            .get(&base)
            .filter(|_| end <= base + seg_size && end <= st.write_pos);
        match seg {
            Some(seg) => Ok(seg.slice(pos - base, len)),
            None => Err(StoreError::NotFound {
                index: pos,
                first: st.segments.keys().next().copied().unwrap_or(0),
                next: st.write_pos,
            }),
        }
    }

    /// Drop the whole log and continue empty at `next_index`, with the next record at byte
    /// position `next_pos` (installing a snapshot whose boundary this node does not hold).
    /// The restart point is persisted (`commitlog/ANCHOR`) before anything is deleted.
    /// `next_pos` must be a segment boundary (a segment always begins with a record).
    pub fn reset(&self, next_index: u64, next_pos: u64) -> Result<()> {
        self.check_poison()?;
        let seg_size = self.inner.cfg.segment_size;
        if next_pos % seg_size != 0 {
            return Err(StoreError::Config(format!(
                "reset position {next_pos} is not a segment boundary (segment size {seg_size})"
            )));
        }
        let mut st = self.write_state()?;
        let anchor = format!("{next_index} {next_pos}\n");
        fsutil::atomic_write(&self.inner.log_dir.join(ANCHOR), anchor.as_bytes())?;
        for (_, seg) in std::mem::take(&mut st.segments) {
            std::fs::remove_file(seg.path()).map_err(|e| StoreError::io(seg.path(), e))?;
        }
        st.index.wipe()?;
        let seg = Segment::create(&self.inner.log_dir, next_pos, seg_size)?;
        st.segments.insert(next_pos, seg);
        fsutil::sync_dir(&self.inner.log_dir)?;
        st.first_index = next_index;
        st.next_index = next_index;
        st.write_pos = next_pos;
        Ok(())
    }

    /// Read one entry (zero-copy payload, CRC checked).
    pub fn read(&self, index: u64) -> Result<Record> {
        let st = self.read_state()?;
        check_range(&st, index)?;
        read_at(&self.inner, &st, index)
    }

    /// Read entries `start..end` (clamped to what is retained is *not* done: out-of-range is an
    /// error), stopping early once `max_bytes` of records have been collected (at least one).
    pub fn read_range(&self, start: u64, end: u64, max_bytes: Option<u64>) -> Result<Vec<Record>> {
        let st = self.read_state()?;
        if start >= end {
            return Ok(Vec::new());
        }
        check_range(&st, start)?;
        check_range(&st, end - 1)?;
        let mut out = Vec::with_capacity((end - start).min(4096) as usize);
        let mut bytes = 0u64;
        for i in start..end {
            let r = read_at(&self.inner, &st, i)?;
            bytes += (HEADER_LEN + r.payload.len()) as u64;
            out.push(r);
            if max_bytes.is_some_and(|m| bytes >= m) {
                break;
            }
        }
        Ok(out)
    }

    /// Remove every entry after `last_kept` (all entries if `None`). The removed bytes are
    /// zeroed and synced before this returns, so recovery can never resurrect them.
    pub fn truncate_after(&self, last_kept: Option<u64>) -> Result<()> {
        self.check_poison()?;
        let seg_size = self.inner.cfg.segment_size;
        let mut st = self.write_state()?;
        let new_next = last_kept.map_or(0, |k| k + 1).max(st.first_index);
        if new_next >= st.next_index {
            return Ok(());
        }
        // The new write position is the end of the last kept record (so the padding decision
        // for the next record is re-made exactly as on a replica that never had the tail).
        // If that record's segment was already deleted by a purge, restart where the first
        // removed record was instead. (Retention only purges up to an entry whose successor is
        // committed at the start of the next segment, so a committed log never takes this path.)
        let end_of_kept = new_next
            .checked_sub(1)
            .and_then(|p| st.index.get(p))
            .map(|s| s.pos + s.len as u64)
            .filter(|end| {
                let at = end.saturating_sub(1);
                st.segments.contains_key(&(at - at % seg_size))
            });
        let new_pos = match end_of_kept {
            Some(p) => p,
            None => slot_of(&self.inner, &st, new_next)?.pos,
        };
        let old_pos = st.write_pos;
        let keep_base = new_pos - new_pos % seg_size;
        let doomed: Vec<u64> = st
            .segments
            .range(keep_base + 1..)
            .map(|(b, _)| *b)
            .collect();
        let mut removed_files = false;
        for b in doomed {
            if let Some(seg) = st.segments.remove(&b) {
                std::fs::remove_file(seg.path()).map_err(|e| StoreError::io(seg.path(), e))?;
                removed_files = true;
            }
        }
        if let Some(seg) = st.segments.get(&keep_base) {
            let from = new_pos - keep_base;
            let to = if old_pos < keep_base + seg_size {
                old_pos - keep_base
            } else {
                seg_size
            };
            if to > from {
                seg.zero(from, to);
                if let Err(e) = seg.flush_range(from, to) {
                    let why = format!("sync after truncation failed: {e}");
                    self.poison(why.clone());
                    return Err(StoreError::Poisoned(why));
                }
            }
        }
        if removed_files {
            fsutil::sync_dir(&self.inner.log_dir)?;
        }
        st.index.clear_from(new_next)?;
        st.index.flush()?;
        st.next_index = new_next;
        st.write_pos = new_pos;
        Ok(())
    }

    /// Mark every entry up to and including `upto` as gone and delete whole segments (and index
    /// files) that hold nothing retained. The caller must have persisted `upto` first, so a
    /// crash between the two never leaves a hole.
    pub fn purge_upto(&self, upto: u64) -> Result<()> {
        let seg_size = self.inner.cfg.segment_size;
        let mut st = self.write_state()?;
        let first = upto + 1;
        if first <= st.first_index {
            return Ok(());
        }
        let keep_base = if first < st.next_index {
            let p = slot_of(&self.inner, &st, first)?.pos;
            p - p % seg_size
        } else {
            st.write_pos - st.write_pos % seg_size
        };
        st.first_index = first;
        if st.next_index < first {
            st.next_index = first;
        }
        let dead: Vec<u64> = st.segments.range(..keep_base).map(|(b, _)| *b).collect();
        for b in &dead {
            if let Some(seg) = st.segments.remove(b) {
                std::fs::remove_file(seg.path()).map_err(|e| StoreError::io(seg.path(), e))?;
            }
        }
        if !dead.is_empty() {
            fsutil::sync_dir(&self.inner.log_dir)?;
        }
        let spf = self.inner.cfg.index_slots_per_file;
        // Keep the slot of `first - 1`: truncation uses it to find where the kept log ends.
        st.index.delete_below((first - 1) - (first - 1) % spf)?;
        Ok(())
    }

    /// Sync everything written so far and wait for it.
    pub fn flush(&self) -> Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| StoreError::Poisoned("log is closed".into()))?;
        let (btx, brx) = mpsc::channel();
        tx.send(FlushMsg::Barrier(btx))
            .map_err(|_| StoreError::Poisoned("flusher thread is gone".into()))?;
        let r = brx
            .recv()
            .map_err(|_| StoreError::Poisoned("flusher thread is gone".into()))?;
        r.map_err(|e| StoreError::io(&self.inner.log_dir, e))?;
        self.write_state()?.index.flush()
    }

    /// Byte position of the oldest byte still held (base of the oldest segment; the write
    /// position when no segment exists). Anything below it was deleted by retention or
    /// dropped by a snapshot install.
    pub fn first_position(&self) -> Result<u64> {
        let st = self.read_state()?;
        Ok(st.segments.keys().next().copied().unwrap_or(st.write_pos))
    }

    /// Paths and bases of the segment files currently held.
    pub fn segment_files(&self) -> Result<Vec<(u64, PathBuf)>> {
        Ok(self
            .read_state()?
            .segments
            .values()
            .map(|s| (s.base(), s.path().to_path_buf()))
            .collect())
    }
}

impl Drop for CommitLog {
    fn drop(&mut self) {
        // Closing the channel makes the flusher sync what is pending and exit.
        self.tx.take();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
        if let Ok(mut st) = self.inner.state.write() {
            let _ = st.index.flush();
        }
    }
}

fn check_range(st: &State, index: u64) -> Result<()> {
    if index < st.first_index || index >= st.next_index {
        return Err(StoreError::NotFound {
            index,
            first: st.first_index,
            next: st.next_index,
        });
    }
    Ok(())
}

fn slot_of(inner: &Inner, st: &State, index: u64) -> Result<Slot> {
    st.index.get(index).ok_or_else(|| {
        StoreError::corrupt(
            inner.cfg.dir.join("index"),
            index,
            format!("no index slot for retained entry {index}"),
        )
    })
}

fn read_at(inner: &Inner, st: &State, index: u64) -> Result<Record> {
    let seg_size = inner.cfg.segment_size;
    let slot = slot_of(inner, st, index)?;
    let base = slot.pos - slot.pos % seg_size;
    let seg = st.segments.get(&base).ok_or_else(|| {
        StoreError::corrupt(
            &inner.log_dir,
            slot.pos,
            format!("entry {index} points into a missing segment"),
        )
    })?;
    let off = slot.pos - base;
    let h = record::decode(&seg.bytes()[off as usize..], slot.pos).map_err(|e| {
        StoreError::corrupt(seg.path(), off, format!("entry {index}: {}", describe(&e)))
    })?;
    if h.id.index != index || h.total_len() != slot.len as u64 {
        return Err(StoreError::corrupt(
            seg.path(),
            off,
            format!(
                "index slot for {index} points at record {} of {} bytes",
                h.id.index,
                h.total_len()
            ),
        ));
    }
    Ok(Record {
        id: h.id,
        kind: h.kind,
        pos: slot.pos,
        payload: seg.slice(off + HEADER_LEN as u64, h.payload_len as usize),
    })
}

fn describe(e: &DecodeError) -> String {
    match e {
        DecodeError::Short => "truncated header".into(),
        DecodeError::Empty => "no record (zero bytes)".into(),
        DecodeError::Padding => "padding where a record was expected".into(),
        DecodeError::Bad(r) => r.clone(),
    }
}
