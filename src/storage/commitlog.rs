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

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::{Result, StoreError};
use super::fsutil;
use super::index::{IndexFiles, Slot};
use super::record::{self, DecodeError, HEADER_LEN, PAD_MAGIC, Record, RecordId, RecordKind};
use super::segment::Segment;

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

fn push_dirty(dirty: &mut Vec<(Arc<Segment>, u64, u64)>, seg: &Arc<Segment>, from: u64, to: u64) {
    if let Some(last) = dirty.last_mut()
        && Arc::ptr_eq(&last.0, seg)
    {
        last.1 = last.1.min(from);
        last.2 = last.2.max(to);
        return;
    }
    dirty.push((Arc::clone(seg), from, to));
}

fn send_flush(
    tx: &Sender<FlushMsg>,
    seg: Arc<Segment>,
    from: u64,
    to: u64,
    index: u64,
    cb: Option<FlushCallback>,
) {
    if let Err(mpsc::SendError(FlushMsg::Range { cb: Some(cb), .. })) = tx.send(FlushMsg::Range {
        seg,
        from,
        to,
        index,
        cb,
    }) {
        cb(Err(io::Error::other("commitlog flusher is gone")));
    }
}

fn poison(inner: &Inner, why: String) {
    tracing::error!(target: "raftmq::storage", "commitlog poisoned: {why}");
    if let Ok(mut g) = inner.poison.lock()
        && g.is_none()
    {
        *g = Some(why);
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

/// Flusher: drains flush requests, syncs each touched range once, then completes callbacks.
fn flusher_loop(inner: Arc<Inner>, rx: Receiver<FlushMsg>) {
    let sync_mode = inner.cfg.flush == FlushMode::Sync;
    let interval = inner.cfg.flush_interval;
    let mut pending: Vec<FlushMsg> = Vec::new();
    let mut last_flush = Instant::now();
    loop {
        let first = if sync_mode || pending.is_empty() {
            rx.recv().ok()
        } else {
            let wait = interval.saturating_sub(last_flush.elapsed());
            match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    flush_batch(&inner, std::mem::take(&mut pending));
                    return;
                }
            }
        };
        let closed = first.is_none() && (sync_mode || pending.is_empty());
        let mut barrier = false;
        if let Some(m) = first {
            barrier |= matches!(m, FlushMsg::Barrier(_));
            pending.push(m);
        }
        while let Ok(m) = rx.try_recv() {
            barrier |= matches!(m, FlushMsg::Barrier(_));
            pending.push(m);
        }
        let due = sync_mode || barrier || closed || last_flush.elapsed() >= interval;
        if due && !pending.is_empty() {
            flush_batch(&inner, std::mem::take(&mut pending));
            last_flush = Instant::now();
        }
        if closed {
            if !pending.is_empty() {
                flush_batch(&inner, std::mem::take(&mut pending));
            }
            return;
        }
    }
}

fn flush_batch(inner: &Inner, batch: Vec<FlushMsg>) {
    // Merge ranges per segment: one msync per segment covers every append in the batch.
    let mut ranges: Vec<(Arc<Segment>, u64, u64)> = Vec::new();
    let mut index = 0;
    for m in &batch {
        if let FlushMsg::Range {
            seg,
            from,
            to,
            index: i,
            ..
        } = m
        {
            index = index.max(*i);
            match ranges.iter_mut().find(|r| Arc::ptr_eq(&r.0, seg)) {
                Some(r) => {
                    r.1 = r.1.min(*from);
                    r.2 = r.2.max(*to);
                }
                None => ranges.push((Arc::clone(seg), *from, *to)),
            }
        }
    }
    let mut result: io::Result<()> = Ok(());
    crate::hops::mark(crate::hops::Hop::FsyncStart, index);
    for (seg, from, to) in &ranges {
        if let Err(e) = seg.flush_range(*from, *to) {
            let why = format!("msync of {} failed: {e}", seg.path().display());
            poison(inner, why.clone());
            result = Err(io::Error::new(e.kind(), why));
            break;
        }
    }
    crate::hops::mark(crate::hops::Hop::FsyncEnd, index);
    if result.is_ok()
        && let Ok(g) = inner.poison.lock()
        && let Some(why) = &*g
    {
        result = Err(io::Error::other(format!("store poisoned: {why}")));
    }
    for m in batch {
        let r = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        match m {
            FlushMsg::Range { cb: Some(cb), .. } => cb(r),
            FlushMsg::Range { cb: None, .. } => {}
            FlushMsg::Barrier(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

fn read_anchor(log_dir: &Path) -> Result<Option<(u64, u64)>> {
    let p = log_dir.join(ANCHOR);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&p, e)),
    };
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(i)), Some(Ok(pos))) => Ok(Some((i, pos))),
        _ => Err(StoreError::corrupt(
            &p,
            0,
            "anchor is not `<index> <position>`",
        )),
    }
}

/// A last segment shorter than the segment size (its tail was cut off, e.g. by a crash of a
/// copy or by an operator) is extended with zeroes; the missing bytes are then an ordinary
/// torn tail for recovery. Earlier segments of the wrong size are refused by `Segment::open`.
fn extend_short_tail(path: &Path, size: u64, report: &mut RecoveryReport) -> Result<()> {
    let len = std::fs::metadata(path)
        .map_err(|e| StoreError::io(path, e))?
        .len();
    if len >= size {
        return Ok(());
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    f.set_len(size).map_err(|e| StoreError::io(path, e))?;
    fsutil::preallocate(&f, path, size)?;
    f.sync_all().map_err(|e| StoreError::io(path, e))?;
    report.extended_tail_segment = Some((path.to_path_buf(), len));
    Ok(())
}

/// Position of a scan inside the segment map.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    base: u64,
    off: u64,
}

/// Recovery: scan the tail, cut a torn tail, refuse mid-log damage, check/rebuild the index.
fn recover(cfg: &CommitLogConfig, st: &mut State, report: &mut RecoveryReport) -> Result<()> {
    let seg_size = cfg.segment_size;
    let bases: Vec<u64> = st.segments.keys().copied().collect();
    if bases.is_empty() {
        st.index.clear_from(0)?;
        return Ok(());
    }
    // Scan window: the last `recovery_scan_segments` segments, widened backwards until it
    // contains at least one record (a freshly rolled, empty active segment has none).
    let mut start = bases.len().saturating_sub(cfg.recovery_scan_segments);
    // (last record id and its end position, first position that is not a valid record)
    let (last, stop) = loop {
        let (l, s, scanned) = scan(st, &bases[start..], seg_size)?;
        report.records_scanned = scanned;
        if l.is_some() || start == 0 {
            break (l, s);
        }
        start -= 1;
    };

    // Is the stop a torn tail or damage in the middle? Any valid record after it decides.
    let expected = last.map(|(id, _)| id.index + 1);
    let found = find_valid_after(&st.segments, stop, seg_size, Some(RECOVERY_WINDOW))
        .or_else(|| expected.and_then(|e| indexed_record_after(st, e, stop, seg_size)));
    if let Some(found) = found {
        let seg = &st.segments[&stop.base];
        let found_seg = &st.segments[&found.base];
        let why = match record::decode(&seg.bytes()[stop.off as usize..], stop.base + stop.off) {
            Err(e) => describe(&e),
            Ok(h) => format!("record {} breaks the index sequence", h.id.index),
        };
        return Err(StoreError::corrupt(
            seg.path(),
            stop.off,
            format!(
                "{why}; a valid record follows at {} offset {}, so this is not a torn tail",
                found_seg.path().display(),
                found.off
            ),
        ));
    }
    // Torn tail (or clean end): zero whatever non-zero bytes follow the stop point.
    let seg = Arc::clone(&st.segments[&stop.base]);
    let end = last_nonzero(seg.bytes(), stop.off, RECOVERY_WINDOW);
    if end > stop.off {
        report.torn_tail_at = Some((seg.path().to_path_buf(), stop.off));
        report.torn_bytes = end - stop.off;
        seg.zero(stop.off, end);
        seg.flush_range(stop.off, end)
            .map_err(|e| StoreError::io(seg.path(), e))?;
    }
    // Later segments hold no valid record (checked above): remove them.
    let later: Vec<u64> = st
        .segments
        .range(stop.base + 1..)
        .map(|(b, _)| *b)
        .collect();
    for b in later {
        if let Some(s) = st.segments.remove(&b) {
            std::fs::remove_file(s.path()).map_err(|e| StoreError::io(s.path(), e))?;
        }
    }

    match last {
        Some((id, end_pos)) => {
            st.next_index = id.index + 1;
            st.write_pos = end_pos;
        }
        None => {
            // No record at all: a log emptied by `reset` (its anchor says where it restarts),
            // or one whose records were never written.
            let (next_index, pos) =
                read_anchor(&cfg.dir.join("commitlog"))?.unwrap_or((0, bases[0]));
            st.next_index = next_index;
            st.write_pos = if pos - pos % seg_size == bases[0] {
                pos
            } else {
                bases[0]
            };
        }
    }
    // First retained index: the first record of the first segment.
    let first_seg = &st.segments[&bases[0]];
    st.first_index = match (record::decode(first_seg.bytes(), bases[0]), last) {
        (Ok(h), _) => h.id.index,
        (Err(_), None) => st.next_index,
        (Err(e), Some(_)) => {
            // The log has records, so the oldest segment must begin with one.
            return Err(StoreError::corrupt(
                first_seg.path(),
                0,
                format!("first record of the oldest segment: {}", describe(&e)),
            ));
        }
    };
    st.index.clear_from(st.next_index)?;
    // The index below the scan window must agree with the data; spot-check both ends of it.
    let ok = |i: u64| -> bool {
        let Some(s) = st.index.get(i) else {
            return false;
        };
        let base = s.pos - s.pos % seg_size;
        st.segments.get(&base).is_some_and(|seg| {
            record::decode(&seg.bytes()[(s.pos - base) as usize..], s.pos)
                .is_ok_and(|h| h.id.index == i && h.total_len() == s.len as u64)
        })
    };
    let healthy = st.first_index >= st.next_index || (ok(st.first_index) && ok(st.next_index - 1));
    if !healthy {
        tracing::warn!(target: "raftmq::storage", "index does not match the commitlog; rebuilding it by a full scan");
        st.index.wipe()?;
        let (_, _, scanned) = scan(st, &bases, seg_size)?;
        report.records_scanned = scanned;
        report.index_rebuilt = true;
    }
    Ok(())
}

/// Scan records from the start of `bases[0]` through the last base, (re)writing their index
/// slots. Returns the last valid record (id, end position), the first position that is not a
/// valid record, and how many records were scanned.
/// Outcome of [`scan`]: last valid record (id, end position), where scanning stopped, and how
/// many records were scanned.
type ScanOutcome = (Option<(RecordId, u64)>, Cursor, u64);

fn scan(st: &mut State, bases: &[u64], seg_size: u64) -> Result<ScanOutcome> {
    let mut last: Option<(RecordId, u64)> = None;
    let mut scanned = 0u64;
    let mut bi = 0usize;
    let mut off = 0u64;
    loop {
        let base = bases[bi];
        let seg = Arc::clone(&st.segments[&base]);
        let next_segment = |bi: &mut usize, off: &mut u64| -> bool {
            if *bi + 1 < bases.len() {
                *bi += 1;
                *off = 0;
                true
            } else {
                false
            }
        };
        if seg_size - off < HEADER_LEN as u64 {
            if next_segment(&mut bi, &mut off) {
                continue;
            }
            return Ok((last, Cursor { base, off }, scanned));
        }
        match record::decode(&seg.bytes()[off as usize..], base + off) {
            // Indexes may jump forward (an empty log restarts at a later index after a purge
            // past its end) but never go backwards.
            Ok(h) if last.is_none_or(|(l, _)| h.id.index > l.index) => {
                st.index.put(
                    h.id.index,
                    Slot {
                        pos: base + off,
                        len: h.total_len() as u32,
                        kind: h.kind.0,
                        term: h.id.term,
                        node: h.id.node,
                    },
                )?;
                scanned += 1;
                off += h.total_len();
                last = Some((h.id, base + off));
            }
            Err(DecodeError::Padding) => {
                if !next_segment(&mut bi, &mut off) {
                    return Ok((last, Cursor { base, off }, scanned));
                }
            }
            _ => return Ok((last, Cursor { base, off }, scanned)),
        }
    }
}

/// Search every byte position after `stop` (this segment, then all later ones) for a valid
/// record. Only runs when recovery found a bad or empty position, so its cost is paid rarely.
fn find_valid_after(
    segments: &BTreeMap<u64, Arc<Segment>>,
    stop: Cursor,
    seg_size: u64,
    window: Option<u64>,
) -> Option<Cursor> {
    let magic0 = record::RECORD_MAGIC.to_le_bytes()[0];
    for (&base, seg) in segments.range(stop.base..) {
        let bytes = seg.bytes();
        let start = if base == stop.base { stop.off + 1 } else { 0 };
        let mut p = start as usize;
        let mut limit = (seg_size as usize).saturating_sub(HEADER_LEN);
        if let Some(w) = window {
            // Recovery: a bounded scan after the stop point; a later segment can only hold
            // data from its first byte on, so its first record is all that is checked.
            let w = if base == stop.base { w } else { 1 };
            limit = limit.min((start + w) as usize);
        }
        while p <= limit {
            match bytes[p..=limit].iter().position(|b| *b == magic0) {
                None => break,
                Some(d) => p += d,
            }
            if record::decode(&bytes[p..], base + p as u64).is_ok() {
                return Some(Cursor {
                    base,
                    off: p as u64,
                });
            }
            p += 1;
        }
    }
    None
}

/// Index slots written before a crash can name records beyond the stop point that a bounded
/// scan would not reach: if one of the next few indexes points at a valid record past the
/// stop, the log continues after damage.
fn indexed_record_after(st: &State, expected: u64, stop: Cursor, seg_size: u64) -> Option<Cursor> {
    let stop_abs = stop.base + stop.off;
    (expected..expected + 8).find_map(|i| {
        let s = st.index.get(i)?;
        if s.pos <= stop_abs {
            return None;
        }
        let base = s.pos - s.pos % seg_size;
        let seg = st.segments.get(&base)?;
        let off = s.pos - base;
        let h = record::decode(seg.bytes().get(off as usize..)?, s.pos).ok()?;
        (h.id.index == i).then_some(Cursor { base, off })
    })
}

/// One past the last non-zero byte in `from..from + window` (or `from` if all zero).
fn last_nonzero(bytes: &[u8], from: u64, window: u64) -> u64 {
    let end = (from.saturating_add(window) as usize).min(bytes.len());
    let tail = &bytes[from as usize..end];
    const CHUNK: usize = 64 * 1024;
    let mut end = tail.len();
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        if let Some(i) = tail[start..end].iter().rposition(|b| *b != 0) {
            return from + (start + i + 1) as u64;
        }
        end = start;
    }
    from
}

/// Read-only inspection of a data directory for `raftmq store verify|dump`: every record of
/// every segment is decoded and checked (CRC, position, dense indexes) against the index file.
pub fn inspect(dir: &Path) -> Result<Inspection> {
    let log_dir = dir.join("commitlog");
    let files = fsutil::list_numbered(&log_dir, "")?;
    let mut out = Inspection::default();
    let Some((_, first_path)) = files.first() else {
        return Ok(out);
    };
    let seg_size = std::fs::metadata(first_path)
        .map_err(|e| StoreError::io(first_path, e))?
        .len();
    out.segment_size = seg_size;
    let index_dir = dir.join("index");
    let spf = fsutil::list_numbered(&index_dir, ".idx")
        .ok()
        .and_then(|v| v.first().cloned())
        .and_then(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len() / super::index::SLOT_LEN as u64);
    let index = match spf {
        Some(spf) if spf > 0 => Some(IndexFiles::open(&index_dir, spf)?),
        _ => None,
    };
    let mut segments = BTreeMap::new();
    for (i, (base, path)) in files.iter().enumerate() {
        if i > 0 && files[i - 1].0 + seg_size != *base {
            out.problems.push(format!(
                "gap: no segment between {} and {}",
                files[i - 1].1.display(),
                path.display()
            ));
        }
        segments.insert(*base, Segment::open(path, *base, seg_size)?);
    }
    out.segments = segments.len();
    let bases: Vec<u64> = segments.keys().copied().collect();
    let mut bi = 0usize;
    let mut off = 0u64;
    let stop = loop {
        let base = bases[bi];
        let seg = &segments[&base];
        let decoded = if seg_size - off < HEADER_LEN as u64 {
            Err(DecodeError::Padding)
        } else {
            record::decode(&seg.bytes()[off as usize..], base + off)
        };
        match decoded {
            Ok(h) => {
                if let Some(last) = out.last_index
                    && h.id.index != last + 1
                {
                    out.problems.push(format!(
                        "{} offset {off}: index {} follows {last}",
                        seg.path().display(),
                        h.id.index
                    ));
                }
                if let Some(ix) = &index {
                    match ix.get(h.id.index) {
                        Some(s) if s.pos == base + off && s.len as u64 == h.total_len() => {}
                        Some(s) => out.problems.push(format!(
                            "index slot {} says position {} length {}, record is at {} length {}",
                            h.id.index,
                            s.pos,
                            s.len,
                            base + off,
                            h.total_len()
                        )),
                        None => out.index_missing += 1,
                    }
                }
                out.first_index.get_or_insert(h.id.index);
                out.last_index = Some(h.id.index);
                out.records += 1;
                out.payload_bytes += h.payload_len as u64;
                *out.kinds.entry(h.kind.name()).or_default() += 1;
                out.entries.push(EntrySummary {
                    id: h.id,
                    kind: h.kind,
                    pos: base + off,
                    payload_len: h.payload_len,
                });
                off += h.total_len();
            }
            Err(DecodeError::Padding) | Err(DecodeError::Short) if bi + 1 < bases.len() => {
                bi += 1;
                off = 0;
            }
            Err(e) => break (Cursor { base, off }, e),
        }
    };
    let (at, why) = stop;
    let seg = &segments[&at.base];
    if let Some(found) = find_valid_after(&segments, at, seg_size, None) {
        out.problems.push(format!(
            "{} offset {}: {}; a valid record follows at {} offset {}",
            seg.path().display(),
            at.off,
            describe(&why),
            segments[&found.base].path().display(),
            found.off
        ));
    } else if at.off < seg_size && last_nonzero(seg.bytes(), at.off, seg_size) > at.off {
        out.torn_tail = Some(format!(
            "{} offset {}: {} (a torn tail; opening the store cuts it)",
            seg.path().display(),
            at.off,
            describe(&why)
        ));
    }
    Ok(out)
}

/// Result of [`inspect`].
#[derive(Debug, Default)]
pub struct Inspection {
    /// Segment size found.
    pub segment_size: u64,
    /// Segment files.
    pub segments: usize,
    /// Whole, valid records.
    pub records: u64,
    /// Sum of payload sizes.
    pub payload_bytes: u64,
    /// First record index seen.
    pub first_index: Option<u64>,
    /// Last record index seen.
    pub last_index: Option<u64>,
    /// Records per kind.
    pub kinds: BTreeMap<&'static str, u64>,
    /// Records with no index slot (allowed for a tail recovery will re-index).
    pub index_missing: u64,
    /// Every damage found, human readable.
    pub problems: Vec<String>,
    /// A torn tail after the last record, if any (not damage: recovery cuts it).
    pub torn_tail: Option<String>,
    /// One summary per record, in log order.
    pub entries: Vec<EntrySummary>,
}

/// One record, as listed by `store dump`.
#[derive(Debug, Clone)]
pub struct EntrySummary {
    /// Log identity.
    pub id: RecordId,
    /// Kind.
    pub kind: RecordKind,
    /// Absolute position.
    pub pos: u64,
    /// Payload length.
    pub payload_len: u32,
}

/// Convenience for tests and tools: the payload bytes of `records` concatenated.
pub fn payloads(records: &[Record]) -> Vec<Bytes> {
    records.iter().map(|r| r.payload.clone()).collect()
}
