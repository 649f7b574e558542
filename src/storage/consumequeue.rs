//! ConsumeQueues: per (topic, queue) arrays of fixed-width units pointing into the CommitLog.
//!
//! A consumer reads a queue by offset; the unit at that offset says where the message is.
//!
//! # Layout
//!
//! ```text
//! <dir>/
//!   .checkpoint                      durable min/max offset of every queue (JSON, see below)
//!   <escaped topic>/
//!     .topic                         raw topic name, only for hashed directory names
//!     <queue id, decimal>/
//!       <20-digit first queue offset>   N units of 20 bytes, preallocated, mmap'd
//! ```
//!
//! A unit (20 bytes, little-endian, no padding):
//!
//! ```text
//! offset size field
//!      0    8 commitlog position   absolute byte position of the message (not of the record)
//!      8    4 size                 encoded message length; 0 = empty slot
//!     12    8 tag hash             tag_hash(tag): FNV-1a 64 of the tag, 0 = no tag
//! ```
//!
//! A file named `S` holding `N` units (`N` = file length / 20; new files get the configured
//! `units_per_file`, older files keep whatever size they were created with) stores the units
//! of queue offsets `S..S+N`: offset `o` sits at slot `o - S`. The files of a queue are
//! contiguous: each starts where the previous ends. A queue's first file may start anywhere
//! (a queue installed from a snapshot starts at its base offset, see [`ConsumeQueueStore::set_base`]).
//! Files are created under a temporary name, preallocated with `posix_fallocate` (so a full
//! disk fails the creation instead of raising SIGBUS on a later write through the mapping),
//! synced and renamed into place.
//!
//! # Topic names
//!
//! Topic names become directory names. Bytes in `[A-Za-z0-9_|-]` are kept, every other byte
//! (including `%`, `.` and `/`) becomes `%XX` (upper-case hex), so a name can never be `.`,
//! `..`, contain a separator or start with a dot (dot-names are reserved for the store's own
//! files). Escaping is canonical, so a directory maps back to exactly one topic. If the escaped
//! name would be longer than 240 bytes the directory is named `%H<16 hex FNV-1a 64><8 hex
//! CRC32C>` of the topic instead and the raw name is kept in `<dir>/.topic` (`%H` is never
//! produced by escaping because `H` is not a hex digit).
//!
//! # Durability and recovery
//!
//! Units are written through the mapping and become durable at [`ConsumeQueueStore::flush`],
//! which msyncs the dirty ranges and then atomically rewrites `.checkpoint` (temp file, fsync,
//! rename, fsync directory) with every queue's `min` and `max`. `open` restores exactly that
//! state: a queue's `max` is the checkpointed one, clamped to the files that exist, and its
//! `min` is the checkpointed one, clamped up to the first file. Units written after the last
//! flush are forgotten (a queue unknown to the checkpoint opens empty), and their files are
//! removed. This is deliberate: after an OS crash, units written through a mapping reach the
//! disk page by page in no particular order, and a 20-byte unit can straddle a page boundary,
//! so a half-written unit (say, a size but a zero position) cannot be told from a real one. The
//! dispatcher re-derives everything after its own checkpoint (which it takes only after a
//! successful flush here), so nothing is lost.
//!
//! Offsets in `min..max` always hold units whose CommitLog positions increase with the
//! offset (dispatch appends in log order); [`ConsumeQueueStore::truncate_from_position`] and
//! [`ConsumeQueueStore::delete_below_position`] rely on that to binary-search.
//!
//! A failed msync/fsync poisons the store: every later write or flush returns
//! [`StoreError::Poisoned`] until the process restarts, because after a failed sync the
//! kernel may have dropped the dirty pages and a retry could falsely succeed.
//!
//! Every queue file stays mapped while the store is open; a store with very many queues and
//! files needs a matching `vm.max_map_count`.

use super::fsutil;
pub(crate) use super::fsutil::{atomic_write as write_atomic, sync_dir as fsync_dir};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use memmap2::{MmapMut, MmapOptions};
use serde::{Deserialize, Serialize};

use crate::storage::error::{Result, StoreError};

/// Bytes per unit.
pub const UNIT_SIZE: usize = 20;
/// Name of the durable min/max file inside the store directory.
const CHECKPOINT_FILE: &str = ".checkpoint";
/// Prefix of a topic directory being deleted.
const TRASH_PREFIX: &str = ".trash-";
/// File holding the raw topic name inside a hashed topic directory.
const TOPIC_NAME_FILE: &str = ".topic";
/// Longest escaped directory name before falling back to a hashed one.
const MAX_DIR_NAME: usize = 240;
/// Version of the `.checkpoint` JSON document.
const CHECKPOINT_VERSION: u32 = 1;

/// One ConsumeQueue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CqUnit {
    /// Absolute CommitLog position of the message.
    pub pos: u64,
    /// Encoded message length (never 0 for a stored unit).
    pub size: u32,
    /// [`tag_hash`] of the message's tag.
    pub tag_hash: u64,
}

impl CqUnit {
    fn to_bytes(self) -> [u8; UNIT_SIZE] {
        let mut b = [0u8; UNIT_SIZE];
        b[0..8].copy_from_slice(&self.pos.to_le_bytes());
        b[8..12].copy_from_slice(&self.size.to_le_bytes());
        b[12..20].copy_from_slice(&self.tag_hash.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; UNIT_SIZE]) -> Self {
        let mut p = [0u8; 8];
        let mut s = [0u8; 4];
        let mut t = [0u8; 8];
        p.copy_from_slice(&b[0..8]);
        s.copy_from_slice(&b[8..12]);
        t.copy_from_slice(&b[12..20]);
        CqUnit {
            pos: u64::from_le_bytes(p),
            size: u32::from_le_bytes(s),
            tag_hash: u64::from_le_bytes(t),
        }
    }
}

/// FNV-1a, 64-bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Hash of a tag as stored in a unit: 0 for no tag (empty string), otherwise FNV-1a 64 of
/// the UTF-8 bytes, with a hash of 0 mapped to 1 so that 0 keeps meaning "no tag".
pub fn tag_hash(tag: &str) -> u64 {
    if tag.is_empty() {
        return 0;
    }
    match fnv1a64(tag.as_bytes()) {
        0 => 1,
        h => h,
    }
}

/// The directory name used for `topic` (see the module docs). Fails only for an empty topic.
pub fn topic_dir_name(topic: &str) -> Result<String> {
    if topic.is_empty() {
        return Err(StoreError::Config("empty topic name".into()));
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(topic.len());
    for b in topic.bytes() {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0F)]));
        }
    }
    if out.len() > MAX_DIR_NAME {
        let crc = crc32c::crc32c(topic.as_bytes());
        return Ok(format!("%H{:016x}{crc:08x}", fnv1a64(topic.as_bytes())));
    }
    Ok(out)
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'|'
}

fn unescape(name: &str) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else if is_plain(b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------------
// File helpers shared with the key index
// ---------------------------------------------------------------------------------------------

/// `n` as a 20-digit zero-padded decimal file name.
pub(crate) fn name20(n: u64) -> String {
    format!("{n:020}")
}

/// Parse a 20-digit decimal name.
pub(crate) fn parse20(s: &str) -> Option<u64> {
    if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// Create `path` with exactly `len` preallocated bytes, zero except for `init` at offset 0:
/// written under `<name>.tmp`, fallocated, fsynced, renamed into place, directory fsynced.
/// Returns the open file. A crash leaves either no file or the complete initialised one.
pub(crate) fn create_preallocated(path: &Path, len: u64, init: &[u8]) -> Result<File> {
    use std::os::unix::fs::FileExt;
    let dir = path
        .parent()
        .ok_or_else(|| StoreError::Config(format!("{} has no parent", path.display())))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| StoreError::io(&tmp, e))?;
    let made = fsutil::preallocate(&file, &tmp, len).and_then(|()| {
        file.write_all_at(init, 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| StoreError::io(&tmp, e))
    });
    if let Err(e) = made {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
    fsync_dir(dir)?;
    Ok(file)
}

/// Map a whole file read-write.
pub(crate) fn map_file(file: &File, path: &Path) -> Result<MmapMut> {
    // SAFETY: the file belongs to this store: its length is fixed (preallocated) before it is
    // mapped and no code path truncates or resizes a mapped file, so the mapping never covers
    // bytes past the end of the file. Concurrent modification by another process is outside
    // the store's contract (one process owns the data directory).
    unsafe { MmapOptions::new().map_mut(file) }.map_err(|e| StoreError::io(path, e))
}

/// First `o` in `lo..hi` with `!pred(o)`, given that `pred` holds on a prefix of the range.
pub(crate) fn partition_point(lo: u64, hi: u64, mut pred: impl FnMut(u64) -> bool) -> u64 {
    let (mut lo, mut hi) = (lo, hi);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

fn dir_entries(dir: &Path) -> Result<Vec<(String, PathBuf, fs::FileType)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let e = e.map_err(|e| StoreError::io(dir, e))?;
        let path = e.path();
        let ft = e.file_type().map_err(|e| StoreError::io(&path, e))?;
        let name = e
            .file_name()
            .into_string()
            .map_err(|_| StoreError::corrupt(&path, 0, "file name is not UTF-8"))?;
        out.push((name, path, ft));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

struct CqFile {
    start: u64,
    cap: u64,
    path: PathBuf,
    map: MmapMut,
    /// Byte range written since the last flush.
    dirty: Option<(usize, usize)>,
}

impl CqFile {
    fn end(&self) -> u64 {
        self.start + self.cap
    }

    fn byte_range(&self, offset: u64) -> Option<std::ops::Range<usize>> {
        let slot = offset.checked_sub(self.start).filter(|s| *s < self.cap)?;
        let at = usize::try_from(slot).ok()?.checked_mul(UNIT_SIZE)?;
        Some(at..at + UNIT_SIZE)
    }

    /// The unit at queue offset `offset`, `None` if outside this file or empty.
    fn read(&self, offset: u64) -> Option<CqUnit> {
        let r = self.byte_range(offset)?;
        let b: &[u8; UNIT_SIZE] = self.map.get(r)?.try_into().ok()?;
        let u = CqUnit::from_bytes(b);
        (u.size != 0).then_some(u)
    }

    fn write(&mut self, offset: u64, bytes: &[u8; UNIT_SIZE]) -> Result<()> {
        let r = self
            .byte_range(offset)
            .filter(|r| r.end <= self.map.len())
            .ok_or_else(|| {
                StoreError::corrupt(
                    &self.path,
                    0,
                    format!("offset {offset} is not in this file"),
                )
            })?;
        self.map[r.clone()].copy_from_slice(bytes);
        self.dirty = Some(match self.dirty {
            Some((a, b)) => (a.min(r.start), b.max(r.end)),
            None => (r.start, r.end),
        });
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        if let Some((a, b)) = self.dirty {
            self.map
                .flush_range(a, b - a)
                .map_err(|e| StoreError::io(&self.path, e))?;
            self.dirty = None;
        }
        Ok(())
    }

    fn create(dir: &Path, start: u64, cap: u64) -> Result<CqFile> {
        let path = dir.join(name20(start));
        let len = cap
            .checked_mul(UNIT_SIZE as u64)
            .ok_or_else(|| StoreError::Config("consume queue file too large".into()))?;
        let file = create_preallocated(&path, len, &[])?;
        let map = map_file(&file, &path)?;
        Ok(CqFile {
            start,
            cap,
            path,
            map,
            dirty: None,
        })
    }

    fn open(path: PathBuf, start: u64) -> Result<CqFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        if len == 0 || len % UNIT_SIZE as u64 != 0 {
            return Err(StoreError::corrupt(
                &path,
                0,
                format!("length {len} is not a positive multiple of {UNIT_SIZE}"),
            ));
        }
        let map = map_file(&file, &path)?;
        Ok(CqFile {
            start,
            cap: len / UNIT_SIZE as u64,
            path,
            map,
            dirty: None,
        })
    }
}

struct Queue {
    dir: PathBuf,
    files: BTreeMap<u64, CqFile>,
    min: u64,
    max: u64,
}

impl Queue {
    fn file_for(&self, offset: u64) -> Option<&CqFile> {
        self.files
            .range(..=offset)
            .next_back()
            .map(|(_, f)| f)
            .filter(|f| offset < f.end())
    }

    fn file_for_mut(&mut self, offset: u64) -> Option<&mut CqFile> {
        self.files
            .range_mut(..=offset)
            .next_back()
            .map(|(_, f)| f)
            .filter(|f| offset < f.end())
    }

    /// The stored unit at `offset`, ignoring min/max.
    fn unit(&self, offset: u64) -> Option<CqUnit> {
        self.file_for(offset)?.read(offset)
    }

    fn first_start(&self) -> u64 {
        self.files.keys().next().copied().unwrap_or(self.min)
    }

    /// Remove the file starting at `start` from memory and disk.
    fn remove_file(&mut self, start: u64) -> Result<()> {
        if let Some(f) = self.files.remove(&start) {
            let path = f.path.clone();
            drop(f);
            fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        }
        Ok(())
    }
}

struct Topic {
    dir: PathBuf,
    queues: BTreeMap<u32, Queue>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointDoc {
    version: u32,
    queues: Vec<CheckpointQueue>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointQueue {
    topic: String,
    queue: u32,
    min: u64,
    max: u64,
}

/// All ConsumeQueues of a node (see the module docs).
///
/// Reads take `&self`, writes `&mut self`; wrap it in a lock to share it.
pub struct ConsumeQueueStore {
    dir: PathBuf,
    units_per_file: u64,
    topics: BTreeMap<String, Topic>,
    /// Some queue's min/max changed since `.checkpoint` was written.
    meta_dirty: bool,
    poisoned: Option<String>,
}

impl std::fmt::Debug for ConsumeQueueStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeQueueStore")
            .field("dir", &self.dir)
            .field("units_per_file", &self.units_per_file)
            .field("queues", &self.queues().len())
            .finish()
    }
}

impl ConsumeQueueStore {
    /// Open (creating if needed) the store in `dir`, restoring the state of the last
    /// successful [`flush`](Self::flush). New files hold `units_per_file` units.
    pub fn open(dir: impl AsRef<Path>, units_per_file: u32) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if units_per_file == 0 {
            return Err(StoreError::Config(
                "consume queue units_per_file must be > 0".into(),
            ));
        }
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let ckpt = Self::read_checkpoint(&dir)?;
        let mut store = ConsumeQueueStore {
            dir: dir.clone(),
            units_per_file: u64::from(units_per_file),
            topics: BTreeMap::new(),
            meta_dirty: false,
            poisoned: None,
        };
        let mut removed_any = false;
        for (name, path, ft) in dir_entries(&dir)? {
            if name.starts_with(TRASH_PREFIX) {
                fs::remove_dir_all(&path).map_err(|e| StoreError::io(&path, e))?;
                removed_any = true;
                continue;
            }
            if name.starts_with('.') {
                continue; // the checkpoint, its temp file, or an operator's dot-file
            }
            if !ft.is_dir() {
                return Err(StoreError::corrupt(
                    &path,
                    0,
                    "unexpected file in consume queue dir",
                ));
            }
            let topic = Self::topic_of_dir(&name, &path)?;
            let mut queues = BTreeMap::new();
            for (qname, qpath, qft) in dir_entries(&path)? {
                if qname == TOPIC_NAME_FILE {
                    continue;
                }
                let qid = parse_queue_id(&qname)
                    .filter(|_| qft.is_dir())
                    .ok_or_else(|| StoreError::corrupt(&qpath, 0, "not a queue directory"))?;
                let bounds = ckpt.get(&(topic.clone(), qid)).copied();
                if let Some(q) = Self::open_queue(qpath, bounds)? {
                    queues.insert(qid, q);
                }
            }
            store.topics.insert(topic, Topic { dir: path, queues });
        }
        if removed_any {
            fsync_dir(&dir)?;
        }
        Ok(store)
    }

    fn read_checkpoint(dir: &Path) -> Result<HashMap<(String, u32), (u64, u64)>> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let doc: CheckpointDoc = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::corrupt(&path, 0, format!("unreadable: {e}")))?;
        if doc.version != CHECKPOINT_VERSION {
            return Err(StoreError::corrupt(
                &path,
                0,
                format!("unsupported version {}", doc.version),
            ));
        }
        Ok(doc
            .queues
            .into_iter()
            .map(|q| ((q.topic, q.queue), (q.min, q.max)))
            .collect())
    }

    fn topic_of_dir(name: &str, path: &Path) -> Result<String> {
        let topic = if name.starts_with("%H") {
            let f = path.join(TOPIC_NAME_FILE);
            let raw = fs::read(&f).map_err(|e| StoreError::io(&f, e))?;
            String::from_utf8(raw).map_err(|_| StoreError::corrupt(&f, 0, "topic is not UTF-8"))?
        } else {
            unescape(name)
                .ok_or_else(|| StoreError::corrupt(path, 0, "not an escaped topic name"))?
        };
        if topic_dir_name(&topic)? != name {
            return Err(StoreError::corrupt(
                path,
                0,
                format!("directory name is not the canonical name of topic {topic:?}"),
            ));
        }
        Ok(topic)
    }

    /// Open one queue directory; `None` if it holds no files (it is then removed).
    fn open_queue(dir: PathBuf, bounds: Option<(u64, u64)>) -> Result<Option<Queue>> {
        let mut files = BTreeMap::new();
        for (name, path, ft) in dir_entries(&dir)? {
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                continue;
            }
            let start = parse20(&name)
                .filter(|_| ft.is_file())
                .ok_or_else(|| StoreError::corrupt(&path, 0, "unexpected file in queue dir"))?;
            files.insert(start, CqFile::open(path, start)?);
        }
        let (Some(first), Some(last)) = (files.values().next(), files.values().next_back()) else {
            fs::remove_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
            return Ok(None);
        };
        let (first_start, end) = (first.start, last.end());
        let mut expect = first_start;
        for f in files.values() {
            if f.start != expect {
                return Err(StoreError::corrupt(
                    &f.path,
                    0,
                    format!("queue files are not contiguous: expected a file at {expect}"),
                ));
            }
            expect = f.end();
        }
        let (min, max) = match bounds {
            Some((min, max)) => {
                let min = min.clamp(first_start, end);
                (min, max.clamp(min, end))
            }
            None => (first_start, first_start),
        };
        let mut q = Queue {
            dir,
            files,
            min,
            max,
        };
        // Files wholly at or past `max` hold nothing durable (keep the first: it records the base).
        let stale: Vec<u64> = q
            .files
            .range(max..)
            .map(|(s, _)| *s)
            .filter(|s| *s != first_start)
            .collect();
        for s in stale.iter().rev() {
            q.remove_file(*s)?;
        }
        if !stale.is_empty() {
            fsync_dir(&q.dir)?;
        }
        Ok(Some(q))
    }

    fn check_writable(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(StoreError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison(&mut self, e: StoreError) -> StoreError {
        self.poisoned = Some(e.to_string());
        e
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Units per newly created file.
    pub fn units_per_file(&self) -> u32 {
        u32::try_from(self.units_per_file).unwrap_or(u32::MAX)
    }

    fn queue(&self, topic: &str, queue_id: u32) -> Option<&Queue> {
        self.topics.get(topic)?.queues.get(&queue_id)
    }

    fn queue_mut(&mut self, topic: &str, queue_id: u32) -> Option<&mut Queue> {
        self.topics.get_mut(topic)?.queues.get_mut(&queue_id)
    }

    /// Create the directories and first file of a new queue starting at `first`.
    fn create_queue(&mut self, topic: &str, queue_id: u32, first: u64) -> Result<()> {
        let name = topic_dir_name(topic)?;
        if !self.topics.contains_key(topic) {
            let tdir = self.dir.join(&name);
            fs::create_dir_all(&tdir).map_err(|e| StoreError::io(&tdir, e))?;
            if name.starts_with("%H") {
                let f = tdir.join(TOPIC_NAME_FILE);
                match fs::read(&f) {
                    Ok(raw) if raw == topic.as_bytes() => {}
                    Ok(_) => {
                        return Err(StoreError::Config(format!(
                            "topic {topic:?} hashes to directory {name} used by another topic"
                        )));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        write_atomic(&f, topic.as_bytes())?
                    }
                    Err(e) => return Err(StoreError::io(&f, e)),
                }
            }
            fsync_dir(&self.dir)?;
            self.topics.insert(
                topic.to_string(),
                Topic {
                    dir: tdir,
                    queues: BTreeMap::new(),
                },
            );
        }
        let upf = self.units_per_file;
        let t = self
            .topics
            .get_mut(topic)
            .ok_or_else(|| StoreError::Config(format!("topic {topic:?} vanished")))?;
        let qdir = t.dir.join(queue_id.to_string());
        if qdir.exists() {
            // leftovers of an interrupted set_base or of files nothing durable pointed at
            fs::remove_dir_all(&qdir).map_err(|e| StoreError::io(&qdir, e))?;
        }
        fs::create_dir(&qdir).map_err(|e| StoreError::io(&qdir, e))?;
        fsync_dir(&t.dir)?;
        let f = CqFile::create(&qdir, first, upf)?;
        let mut files = BTreeMap::new();
        files.insert(first, f);
        t.queues.insert(
            queue_id,
            Queue {
                dir: qdir,
                files,
                min: first,
                max: first,
            },
        );
        self.meta_dirty = true;
        Ok(())
    }

    /// Store `unit` at queue offset `offset`.
    ///
    /// `offset` must be the queue's max offset (an append; a queue that does not exist yet is
    /// created starting at `offset`) or an offset already in `min..max` holding the identical
    /// unit (a no-op, so replays are idempotent). Anything else is an error: a gap is
    /// [`StoreError::OutOfOrder`], a different unit at an existing offset is
    /// [`StoreError::Corrupt`].
    pub fn put(&mut self, topic: &str, queue_id: u32, offset: u64, unit: CqUnit) -> Result<()> {
        self.check_writable()?;
        if unit.size == 0 {
            return Err(StoreError::Config(
                "a consume queue unit needs a size > 0".into(),
            ));
        }
        if self.queue(topic, queue_id).is_none() {
            self.create_queue(topic, queue_id, offset)?;
        }
        let upf = self.units_per_file;
        let q = self
            .queue_mut(topic, queue_id)
            .ok_or_else(|| StoreError::Config(format!("queue {topic}/{queue_id} vanished")))?;
        if offset < q.min || offset > q.max {
            return Err(StoreError::OutOfOrder {
                expected: q.max,
                got: offset,
            });
        }
        if offset < q.max {
            return match q.unit(offset) {
                Some(u) if u == unit => Ok(()),
                other => Err(StoreError::corrupt(
                    q.file_for(offset)
                        .map(|f| f.path.clone())
                        .unwrap_or_else(|| q.dir.clone()),
                    offset,
                    format!("offset {offset} holds {other:?}, refusing to overwrite with {unit:?}"),
                )),
            };
        }
        if q.file_for(offset).is_none() {
            let f = CqFile::create(&q.dir, offset, upf)?;
            q.files.insert(offset, f);
        }
        let f = q
            .file_for_mut(offset)
            .ok_or_else(|| StoreError::Config(format!("no file for offset {offset}")))?;
        f.write(offset, &unit.to_bytes())?;
        q.max = offset + 1;
        self.meta_dirty = true;
        Ok(())
    }

    /// The unit at `offset`, if `offset` is in `min..max`.
    pub fn get(&self, topic: &str, queue_id: u32, offset: u64) -> Option<CqUnit> {
        let q = self.queue(topic, queue_id)?;
        if offset < q.min || offset >= q.max {
            return None;
        }
        q.unit(offset)
    }

    /// Up to `max` units starting at offset `from` (the unit for offset `from + i` is at
    /// index `i`). Empty if `from` is outside `min..max`; callers that fall below the min
    /// should restart at [`min_offset`](Self::min_offset).
    pub fn range(&self, topic: &str, queue_id: u32, from: u64, max: usize) -> Vec<CqUnit> {
        let Some(q) = self.queue(topic, queue_id) else {
            return Vec::new();
        };
        if from < q.min || from >= q.max {
            return Vec::new();
        }
        let n = (q.max - from).min(max as u64);
        let mut out = Vec::with_capacity(n.min(4096) as usize);
        let mut o = from;
        while o < from + n {
            let Some(f) = q.file_for(o) else { break };
            let stop = f.end().min(from + n);
            while o < stop {
                match f.read(o) {
                    Some(u) => out.push(u),
                    None => return out,
                }
                o += 1;
            }
        }
        out
    }

    /// First readable offset of a queue (`None` if the queue does not exist).
    pub fn min_offset(&self, topic: &str, queue_id: u32) -> Option<u64> {
        self.queue(topic, queue_id).map(|q| q.min)
    }

    /// One past the last unit of a queue (`None` if the queue does not exist).
    pub fn max_offset(&self, topic: &str, queue_id: u32) -> Option<u64> {
        self.queue(topic, queue_id).map(|q| q.max)
    }

    /// Every (topic, queue id), sorted.
    pub fn queues(&self) -> Vec<(String, u32)> {
        self.topics
            .iter()
            .flat_map(|(t, tq)| tq.queues.keys().map(move |q| (t.clone(), *q)))
            .collect()
    }

    /// Remove from the tail of every queue all units whose CommitLog position is `>= pos`
    /// (recovery: drop what was dispatched past the last dispatch checkpoint). Tail files
    /// that become empty are deleted (a queue's first file is kept: it records the base), the
    /// dropped slots are zeroed, and the result is flushed before returning.
    pub fn truncate_from_position(&mut self, pos: u64) -> Result<()> {
        self.check_writable()?;
        let mut changed = false;
        for t in self.topics.values_mut() {
            for q in t.queues.values_mut() {
                if q.max == q.min {
                    continue;
                }
                let keep = |q: &Queue, o: u64| q.unit(o).is_some_and(|u| u.pos < pos);
                if keep(q, q.max - 1) {
                    continue;
                }
                let cut = partition_point(q.min, q.max, |o| keep(q, o));
                let old_max = q.max;
                let first = q.first_start();
                let doomed: Vec<u64> = q
                    .files
                    .range(cut..)
                    .map(|(s, _)| *s)
                    .filter(|s| *s != first)
                    .collect();
                for s in doomed.iter().rev() {
                    q.remove_file(*s)?;
                }
                if !doomed.is_empty() {
                    fsync_dir(&q.dir)?;
                }
                let zero = [0u8; UNIT_SIZE];
                for o in cut..old_max {
                    match q.file_for_mut(o) {
                        Some(f) => f.write(o, &zero)?,
                        None => break,
                    }
                }
                q.max = cut;
                changed = true;
            }
        }
        if changed {
            self.meta_dirty = true;
            self.flush()?;
        }
        Ok(())
    }

    /// Retention: forget every unit whose CommitLog position is `< pos`. The min offset of
    /// each queue moves to its first unit at or above `pos` (or to its max), and files all of
    /// whose units are below that are deleted, except a queue's last file (it anchors the max
    /// offset). The new mins become durable at the next [`flush`](Self::flush).
    pub fn delete_below_position(&mut self, pos: u64) -> Result<()> {
        self.check_writable()?;
        for t in self.topics.values_mut() {
            for q in t.queues.values_mut() {
                if q.min == q.max {
                    continue;
                }
                let expired = |q: &Queue, o: u64| q.unit(o).is_none_or(|u| u.pos < pos);
                if !expired(q, q.min) {
                    continue;
                }
                let new_min = partition_point(q.min, q.max, |o| expired(q, o));
                let last = q.files.keys().next_back().copied();
                let doomed: Vec<u64> = q
                    .files
                    .iter()
                    .filter(|(s, f)| f.end() <= new_min && Some(**s) != last)
                    .map(|(s, _)| *s)
                    .collect();
                for s in &doomed {
                    q.remove_file(*s)?;
                }
                if !doomed.is_empty() {
                    fsync_dir(&q.dir)?;
                }
                q.min = new_min;
                self.meta_dirty = true;
            }
        }
        Ok(())
    }

    /// Make `topic`/`queue_id` an empty queue whose first offset is `offset` (snapshot
    /// install), discarding whatever the queue held. Durable when this returns.
    ///
    /// Not atomic across a crash: an interrupted call can leave the queue absent; the caller
    /// (snapshot install) must be restartable.
    pub fn set_base(&mut self, topic: &str, queue_id: u32, offset: u64) -> Result<()> {
        self.check_writable()?;
        topic_dir_name(topic)?;
        let old = self
            .topics
            .get_mut(topic)
            .and_then(|t| Some((t.queues.remove(&queue_id)?, t.dir.clone())));
        if let Some((q, tdir)) = old {
            let dir = q.dir.clone();
            drop(q);
            fs::remove_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
            fsync_dir(&tdir)?;
        }
        self.create_queue(topic, queue_id, offset)?;
        self.flush()
    }

    /// Delete every queue of `topic`. Returns whether anything existed.
    pub fn delete_topic(&mut self, topic: &str) -> Result<bool> {
        self.check_writable()?;
        let name = topic_dir_name(topic)?;
        let path = self.dir.join(&name);
        let known = self.topics.remove(topic).is_some();
        if !path.exists() {
            if known {
                self.meta_dirty = true;
                self.flush()?;
            }
            return Ok(known);
        }
        let trash = self.dir.join(format!("{TRASH_PREFIX}{name}"));
        if trash.exists() {
            fs::remove_dir_all(&trash).map_err(|e| StoreError::io(&trash, e))?;
        }
        fs::rename(&path, &trash).map_err(|e| StoreError::io(&path, e))?;
        fsync_dir(&self.dir)?;
        self.meta_dirty = true;
        self.flush()?;
        fs::remove_dir_all(&trash).map_err(|e| StoreError::io(&trash, e))?;
        fsync_dir(&self.dir)?;
        Ok(true)
    }

    /// Make every unit written so far durable: msync dirty ranges, then rewrite `.checkpoint`.
    /// A failure poisons the store.
    pub fn flush(&mut self) -> Result<()> {
        self.check_writable()?;
        let mut failed = None;
        'outer: for t in self.topics.values_mut() {
            for q in t.queues.values_mut() {
                for f in q.files.values_mut() {
                    if let Err(e) = f.sync() {
                        failed = Some(e);
                        break 'outer;
                    }
                }
            }
        }
        if let Some(e) = failed {
            return Err(self.poison(e));
        }
        if self.meta_dirty {
            let doc = CheckpointDoc {
                version: CHECKPOINT_VERSION,
                queues: self
                    .topics
                    .iter()
                    .flat_map(|(name, t)| {
                        t.queues.iter().map(move |(qid, q)| CheckpointQueue {
                            topic: name.clone(),
                            queue: *qid,
                            min: q.min,
                            max: q.max,
                        })
                    })
                    .collect(),
            };
            let bytes = serde_json::to_vec(&doc)
                .map_err(|e| StoreError::Config(format!("cannot serialise checkpoint: {e}")))?;
            if let Err(e) = write_atomic(&self.dir.join(CHECKPOINT_FILE), &bytes) {
                return Err(self.poison(e));
            }
            self.meta_dirty = false;
        }
        Ok(())
    }
}

fn parse_queue_id(s: &str) -> Option<u32> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(pos: u64) -> CqUnit {
        CqUnit {
            pos,
            size: 100,
            tag_hash: tag_hash("TagA"),
        }
    }

    fn files_of(dir: &Path, topic: &str, q: u32) -> Vec<String> {
        let p = dir.join(topic_dir_name(topic).unwrap()).join(q.to_string());
        let mut v: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn tag_hash_is_fnv1a_with_zero_reserved() {
        assert_eq!(tag_hash(""), 0);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(tag_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(tag_hash("TagA"), tag_hash("TagB"));
    }

    #[test]
    fn unit_layout_is_as_documented() {
        let u = CqUnit {
            pos: 0x0102_0304_0506_0708,
            size: 0x0A0B_0C0D,
            tag_hash: 0x1112_1314_1516_1718,
        };
        let b = u.to_bytes();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[8..12], &[0x0D, 0x0C, 0x0B, 0x0A]);
        assert_eq!(
            &b[12..20],
            &[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]
        );
        assert_eq!(CqUnit::from_bytes(&b), u);
    }

    #[test]
    fn put_get_range_across_files() {
        let d = tempfile::tempdir().unwrap();
        let mut s = ConsumeQueueStore::open(d.path(), 4).unwrap();
        assert_eq!(s.max_offset("T", 0), None);
        for o in 0..10 {
            s.put("T", 0, o, unit(1000 + o * 100)).unwrap();
        }
        s.put("T", 1, 0, unit(5)).unwrap();
        assert_eq!(s.min_offset("T", 0), Some(0));
        assert_eq!(s.max_offset("T", 0), Some(10));
        assert_eq!(s.max_offset("T", 1), Some(1));
        assert_eq!(s.get("T", 0, 7), Some(unit(1700)));
        assert_eq!(s.get("T", 0, 10), None);
        assert_eq!(s.get("U", 0, 0), None);
        let r = s.range("T", 0, 2, 100);
        assert_eq!(r.len(), 8);
        for (i, u) in r.iter().enumerate() {
            assert_eq!(u.pos, 1000 + (2 + i as u64) * 100);
        }
        assert_eq!(s.range("T", 0, 3, 2), vec![unit(1300), unit(1400)]);
        assert!(s.range("T", 0, 10, 5).is_empty());
        assert_eq!(
            files_of(d.path(), "T", 0),
            vec![name20(0), name20(4), name20(8)]
        );
        assert_eq!(s.queues(), vec![("T".to_string(), 0), ("T".to_string(), 1)]);
        // idempotent re-put, refused gap, refused conflicting overwrite, refused empty unit
        s.put("T", 0, 5, unit(1500)).unwrap();
        assert!(matches!(
            s.put("T", 0, 12, unit(1)),
            Err(StoreError::OutOfOrder {
                expected: 10,
                got: 12
            })
        ));
        assert!(matches!(
            s.put("T", 0, 5, unit(1)),
            Err(StoreError::Corrupt { .. })
        ));
        let empty = CqUnit { size: 0, ..unit(1) };
        assert!(matches!(
            s.put("T", 0, 10, empty),
            Err(StoreError::Config(_))
        ));
        assert_eq!(s.max_offset("T", 0), Some(10));
    }

    #[test]
    fn reopen_restores_flushed_state_only() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = ConsumeQueueStore::open(d.path(), 4).unwrap();
            for o in 0..9 {
                s.put("T", 3, o, unit(o * 10)).unwrap();
            }
            s.flush().unwrap();
            for o in 9..14 {
                s.put("T", 3, o, unit(o * 10)).unwrap();
            }
            s.put("New", 0, 0, unit(1)).unwrap(); // never flushed
        }
        let mut s = ConsumeQueueStore::open(d.path(), 4).unwrap();
        assert_eq!(s.min_offset("T", 3), Some(0));
        assert_eq!(s.max_offset("T", 3), Some(9));
        assert_eq!(s.get("T", 3, 8), Some(unit(80)));
        assert_eq!(s.get("T", 3, 9), None);
        // the files that only held unflushed units are gone
        assert_eq!(
            files_of(d.path(), "T", 3),
            vec![name20(0), name20(4), name20(8)]
        );
        assert_eq!(s.max_offset("New", 0), Some(0));
        // appending continues at the restored max, over the forgotten slots
        s.put("T", 3, 9, unit(999)).unwrap();
        assert_eq!(s.get("T", 3, 9), Some(unit(999)));
        s.flush().unwrap();
        drop(s);
        let s = ConsumeQueueStore::open(d.path(), 4).unwrap();
        assert_eq!(s.max_offset("T", 3), Some(10));
        assert_eq!(s.get("T", 3, 9), Some(unit(999)));
    }

    #[test]
    fn truncate_from_position_cuts_tails() {
        let d = tempfile::tempdir().unwrap();
        let mut s = ConsumeQueueStore::open(d.path(), 3).unwrap();
        // queue a: positions 0,100,...,900; queue b: 50,150,...,450; queue c: all >= 2000
        for o in 0..10 {
            s.put("a", 0, o, unit(o * 100)).unwrap();
        }
        for o in 0..5 {
            s.put("b", 0, o, unit(50 + o * 100)).unwrap();
        }
        for o in 0..4 {
            s.put("c", 0, o, unit(2000 + o)).unwrap();
        }
        s.flush().unwrap();
        s.truncate_from_position(450).unwrap();
        assert_eq!(s.max_offset("a", 0), Some(5)); // 0..=400 kept
        assert_eq!(s.max_offset("b", 0), Some(4)); // 50..=350 kept
        assert_eq!(s.max_offset("c", 0), Some(0));
        assert_eq!(s.get("a", 0, 4), Some(unit(400)));
        assert_eq!(s.get("a", 0, 5), None);
        assert_eq!(files_of(d.path(), "a", 0), vec![name20(0), name20(3)]);
        assert_eq!(files_of(d.path(), "c", 0), vec![name20(0)]);
        // a truncation that cuts nothing changes nothing
        s.truncate_from_position(10_000).unwrap();
        assert_eq!(s.max_offset("a", 0), Some(5));
        drop(s);
        let mut s = ConsumeQueueStore::open(d.path(), 3).unwrap();
        assert_eq!(s.max_offset("a", 0), Some(5));
        assert_eq!(s.max_offset("b", 0), Some(4));
        assert_eq!(s.max_offset("c", 0), Some(0));
        // re-dispatch continues densely
        s.put("a", 0, 5, unit(555)).unwrap();
        s.put("c", 0, 0, unit(3000)).unwrap();
        assert_eq!(s.range("a", 0, 4, 10), vec![unit(400), unit(555)]);
        assert_eq!(s.get("c", 0, 0), Some(unit(3000)));
    }

    #[test]
    fn delete_below_position_moves_min_and_drops_files() {
        let d = tempfile::tempdir().unwrap();
        let mut s = ConsumeQueueStore::open(d.path(), 4).unwrap();
        for o in 0..10 {
            s.put("T", 0, o, unit(o * 100)).unwrap();
        }
        for o in 0..3 {
            s.put("T", 1, o, unit(o * 100)).unwrap();
        }
        s.delete_below_position(550).unwrap();
        assert_eq!(s.min_offset("T", 0), Some(6));
        assert_eq!(s.max_offset("T", 0), Some(10));
        assert_eq!(s.get("T", 0, 5), None);
        assert_eq!(s.get("T", 0, 6), Some(unit(600)));
        assert!(s.range("T", 0, 2, 10).is_empty());
        assert_eq!(files_of(d.path(), "T", 0), vec![name20(4), name20(8)]);
        // queue 1 is entirely expired: empty at its max, its (last) file is kept
        assert_eq!(s.min_offset("T", 1), Some(3));
        assert_eq!(s.max_offset("T", 1), Some(3));
        assert_eq!(files_of(d.path(), "T", 1), vec![name20(0)]);
        s.flush().unwrap();
        drop(s);
        let mut s = ConsumeQueueStore::open(d.path(), 4).unwrap();
        assert_eq!(s.min_offset("T", 0), Some(6));
        assert_eq!(s.max_offset("T", 0), Some(10));
        assert_eq!(s.min_offset("T", 1), Some(3));
        assert_eq!(s.max_offset("T", 1), Some(3));
        s.put("T", 1, 3, unit(5000)).unwrap();
        assert_eq!(s.get("T", 1, 3), Some(unit(5000)));
        // everything expired, including the last file's units: the file stays, min = max
        for o in 0..4 {
            s.put("T", 2, o, unit(o)).unwrap();
        }
        s.delete_below_position(10_000).unwrap();
        assert_eq!(s.min_offset("T", 0), Some(10));
        assert_eq!(files_of(d.path(), "T", 0), vec![name20(8)]);
        assert_eq!(s.min_offset("T", 2), Some(4));
        assert_eq!(files_of(d.path(), "T", 2), vec![name20(0)]);
        s.put("T", 0, 10, unit(20_000)).unwrap();
        s.put("T", 2, 4, unit(20_000)).unwrap();
        assert_eq!(files_of(d.path(), "T", 0), vec![name20(8)]);
        assert_eq!(files_of(d.path(), "T", 2), vec![name20(0), name20(4)]);
        assert_eq!(s.range("T", 0, 10, 5), vec![unit(20_000)]);
        assert_eq!(s.range("T", 2, 4, 5), vec![unit(20_000)]);
        assert!(s.range("T", 2, 3, 5).is_empty());
    }

    #[test]
    fn set_base_and_delete_topic() {
        let d = tempfile::tempdir().unwrap();
        let mut s = ConsumeQueueStore::open(d.path(), 4).unwrap();
        s.put("T", 0, 0, unit(1)).unwrap();
        s.set_base("T", 0, 1_000).unwrap();
        s.set_base("T", 1, 77).unwrap();
        assert_eq!(s.min_offset("T", 0), Some(1_000));
        assert_eq!(s.max_offset("T", 0), Some(1_000));
        assert_eq!(s.get("T", 0, 0), None);
        assert!(s.put("T", 0, 0, unit(1)).is_err());
        s.put("T", 0, 1_000, unit(2)).unwrap();
        drop(s); // set_base is durable by itself; the put above was not flushed
        let mut s = ConsumeQueueStore::open(d.path(), 4).unwrap();
        assert_eq!(s.min_offset("T", 0), Some(1_000));
        assert_eq!(s.max_offset("T", 0), Some(1_000));
        assert_eq!(s.max_offset("T", 1), Some(77));
        s.put("Other", 2, 0, unit(9)).unwrap();
        assert!(s.delete_topic("T").unwrap());
        assert!(!s.delete_topic("T").unwrap());
        assert_eq!(s.queues(), vec![("Other".to_string(), 2)]);
        assert!(!d.path().join("T").exists());
        drop(s);
        let s = ConsumeQueueStore::open(d.path(), 4).unwrap();
        assert_eq!(s.queues(), vec![("Other".to_string(), 2)]);
        assert_eq!(s.max_offset("T", 0), None);
    }

    #[test]
    fn topic_names_are_escaped_safely() {
        assert_eq!(topic_dir_name("Topic_A-1|x").unwrap(), "Topic_A-1|x");
        assert_eq!(topic_dir_name("%RETRY%g").unwrap(), "%25RETRY%25g");
        assert_eq!(topic_dir_name("..").unwrap(), "%2E%2E");
        assert_eq!(topic_dir_name("a/b").unwrap(), "a%2Fb");
        assert_eq!(topic_dir_name("é").unwrap(), "%C3%A9");
        assert!(topic_dir_name("").is_err());
        let long = "é".repeat(100); // 200 bytes, 600 escaped
        let hashed = topic_dir_name(&long).unwrap();
        assert!(hashed.starts_with("%H") && hashed.len() == 26);
        assert_eq!(unescape("%2E%2E").as_deref(), Some(".."));
        assert_eq!(unescape("%2e"), None); // lower-case hex is not canonical
        assert_eq!(unescape("a.b"), None);

        let d = tempfile::tempdir().unwrap();
        let nasty = [
            "..",
            ".",
            "../../etc",
            "a/b",
            "%DLQ%group",
            "with space",
            "x\0y",
            long.as_str(),
        ];
        {
            let mut s = ConsumeQueueStore::open(d.path(), 2).unwrap();
            for (i, t) in nasty.iter().enumerate() {
                s.put(t, 0, 0, unit(i as u64 + 1)).unwrap();
            }
            s.flush().unwrap();
        }
        // nothing escaped the store directory, and every entry is a single safe name
        for e in fs::read_dir(d.path()).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(!name.contains('/'));
            assert!(name == CHECKPOINT_FILE || !name.starts_with('.'), "{name}");
        }
        assert!(!d.path().parent().unwrap().join("etc").exists());
        let s = ConsumeQueueStore::open(d.path(), 2).unwrap();
        let mut want: Vec<(String, u32)> = nasty.iter().map(|t| (t.to_string(), 0)).collect();
        want.sort();
        assert_eq!(s.queues(), want);
        for (i, t) in nasty.iter().enumerate() {
            assert_eq!(s.get(t, 0, 0), Some(unit(i as u64 + 1)), "{t:?}");
        }
    }

    #[test]
    fn foreign_and_noncanonical_directories_are_refused() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("%2e%2e").join("0")).unwrap();
        assert!(matches!(
            ConsumeQueueStore::open(d.path(), 2),
            Err(StoreError::Corrupt { .. })
        ));
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("T").join("00")).unwrap();
        assert!(matches!(
            ConsumeQueueStore::open(d.path(), 2),
            Err(StoreError::Corrupt { .. })
        ));
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("T").join("0")).unwrap();
        fs::write(d.path().join("T").join("0").join(name20(0)), [0u8; 7]).unwrap();
        assert!(matches!(
            ConsumeQueueStore::open(d.path(), 2),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
