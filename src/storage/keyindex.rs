//! The key index: message id / message key → CommitLog positions (RocketMQ IndexFile style).
//!
//! # Layout
//!
//! ```text
//! <dir>/<20-digit sequence>.kidx      one hash table per file, newest = highest sequence
//! ```
//!
//! Each file is preallocated and mmap'd: a 64-byte header, a slot table, then entries. All
//! integers little-endian.
//!
//! ```text
//! header
//! offset size field
//!      0    4 magic                0x5844494B (bytes "KIDX")
//!      4    2 version              1
//!      6    2 state                0 clean, 1 dirty (written since the last completed flush)
//!      8    4 slot count S         >= 1
//!     12    4 entry capacity E     >= 1
//!     16    4 entry count          entries in use (0..=E)
//!     20    4 durable entry count  entry count as of the last completed flush
//!     24    8 min position         position of entry 0 (0 if none)
//!     32    8 max position         position of the last entry (0 if none)
//!     40   24 reserved             0
//! slot table, at 64: S x u32       entry number + 1 of the newest entry of that slot, 0 = empty
//! entries, at 64 + 4S: E x 20 bytes
//!      0    8 key hash             key_hash(key), never 0
//!      8    8 position             CommitLog position of the message
//!     16    4 previous             entry number + 1 of the previous entry of the same slot, 0 = end
//! ```
//!
//! A key goes to slot `key_hash(key) % S`; the slot heads a chain through `previous`, newest
//! first. Entries are appended in CommitLog position order (dispatch order), so within a file
//! and across files positions never decrease. A file is full after E entries; the next entry
//! starts a new file with the next sequence number. Lookups walk files newest first.
//!
//! [`key_hash`] is FNV-1a 64 of the key's UTF-8 bytes, with 0 mapped to 1 (0 marks an unused
//! entry). Different keys can share a hash (and message ids share the namespace with keys),
//! so [`KeyIndex::lookup`] returns **candidate** positions: callers must read the message at
//! each position and check that its message id / keys really contain the key.
//!
//! # Durability and recovery
//!
//! The header's `state` and `durable entry count` make a file recoverable after any crash:
//! before the first modification after a flush the file is marked dirty and that header
//! write is msynced; [`KeyIndex::flush`] msyncs the whole file, then records `durable = count`
//! and `state = clean` and msyncs the header. A file found dirty at open may hold any mix of
//! old and new pages (mmap writeback has no order), so it is repaired from its durable
//! prefix: the slot table is rebuilt from entries `0..durable` (checking that every entry's
//! `previous` link is the one the rebuild expects; a mismatch is corruption of flushed data
//! and fails the open) and later entries are forgotten. The dispatcher takes its checkpoint
//! only after a successful flush, and re-dispatches everything after it.
//!
//! [`KeyIndex::truncate_from_position`] really removes entries (whole newer files, then the
//! newest entries of the file holding the cut, undoing their slot links in reverse order), so
//! no lookup filter is involved. [`KeyIndex::delete_below_position`] deletes whole files whose
//! entries are all below the position and additionally filters positions below it out of
//! lookups (that filter lives in memory; a partially covered file keeps returning its old
//! positions after a restart until the next call, which callers tolerate because they verify
//! every candidate against the CommitLog anyway).
//!
//! A failed msync poisons the index: every later write or flush returns
//! [`StoreError::Poisoned`] until restart.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use crate::storage::consumequeue::{
    create_preallocated, fnv1a64, fsync_dir, map_file, name20, parse20,
};
use crate::storage::error::{Result, StoreError};

/// File magic, "KIDX" little-endian.
pub const KIDX_MAGIC: u32 = 0x5844_494B;
/// File format version.
pub const KIDX_VERSION: u16 = 1;
/// Header bytes.
pub const KIDX_HEADER_LEN: usize = 64;
/// Bytes per slot.
pub const KIDX_SLOT_LEN: usize = 4;
/// Bytes per entry.
pub const KIDX_ENTRY_LEN: usize = 20;
const EXT: &str = ".kidx";

const H_MAGIC: usize = 0;
const H_VERSION: usize = 4;
const H_STATE: usize = 6;
const H_SLOTS: usize = 8;
const H_CAP: usize = 12;
const H_COUNT: usize = 16;
const H_DURABLE: usize = 20;
const H_MIN: usize = 24;
const H_MAX: usize = 32;

const STATE_CLEAN: u16 = 0;
const STATE_DIRTY: u16 = 1;

/// Hash of a key as stored: FNV-1a 64 of the UTF-8 bytes, 0 mapped to 1.
pub fn key_hash(key: &str) -> u64 {
    match fnv1a64(key.as_bytes()) {
        0 => 1,
        h => h,
    }
}

fn file_len(slots: u32, cap: u32) -> Option<u64> {
    let n = (KIDX_HEADER_LEN as u64)
        .checked_add(u64::from(slots).checked_mul(KIDX_SLOT_LEN as u64)?)?
        .checked_add(u64::from(cap).checked_mul(KIDX_ENTRY_LEN as u64)?)?;
    usize::try_from(n).ok()?;
    Some(n)
}

/// Header bytes: `counts` = [slots, capacity, count, durable], `positions` = [min, max].
fn encode_header(state: u16, counts: [u32; 4], positions: [u64; 2]) -> [u8; KIDX_HEADER_LEN] {
    let mut h = [0u8; KIDX_HEADER_LEN];
    h[H_MAGIC..H_MAGIC + 4].copy_from_slice(&KIDX_MAGIC.to_le_bytes());
    h[H_VERSION..H_VERSION + 2].copy_from_slice(&KIDX_VERSION.to_le_bytes());
    h[H_STATE..H_STATE + 2].copy_from_slice(&state.to_le_bytes());
    for (i, at) in [H_SLOTS, H_CAP, H_COUNT, H_DURABLE].into_iter().enumerate() {
        h[at..at + 4].copy_from_slice(&counts[i].to_le_bytes());
    }
    h[H_MIN..H_MIN + 8].copy_from_slice(&positions[0].to_le_bytes());
    h[H_MAX..H_MAX + 8].copy_from_slice(&positions[1].to_le_bytes());
    h
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    hash: u64,
    pos: u64,
    prev: u32,
}

struct KFile {
    path: PathBuf,
    map: MmapMut,
    slots: u32,
    cap: u32,
    count: u32,
    durable: u32,
    min_pos: u64,
    max_pos: u64,
    /// Modified since the last flush (the on-disk header says dirty).
    dirty: bool,
}

impl KFile {
    fn oob(&self, at: usize) -> StoreError {
        StoreError::corrupt(&self.path, at as u64, "read outside the file")
    }

    fn rd<const N: usize>(&self, at: usize) -> Result<[u8; N]> {
        let b = self.map.get(at..at + N).ok_or_else(|| self.oob(at))?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn wr(&mut self, at: usize, b: &[u8]) -> Result<()> {
        let oob = self.oob(at);
        self.map
            .get_mut(at..at + b.len())
            .ok_or(oob)?
            .copy_from_slice(b);
        Ok(())
    }

    fn slot_at(&self, s: u32) -> usize {
        KIDX_HEADER_LEN + s as usize * KIDX_SLOT_LEN
    }

    fn entry_at(&self, i: u32) -> usize {
        KIDX_HEADER_LEN + self.slots as usize * KIDX_SLOT_LEN + i as usize * KIDX_ENTRY_LEN
    }

    fn slot_of(&self, hash: u64) -> u32 {
        (hash % u64::from(self.slots)) as u32
    }

    fn slot(&self, s: u32) -> Result<u32> {
        Ok(u32::from_le_bytes(self.rd(self.slot_at(s))?))
    }

    fn set_slot(&mut self, s: u32, v: u32) -> Result<()> {
        self.wr(self.slot_at(s), &v.to_le_bytes())
    }

    fn entry(&self, i: u32) -> Result<Entry> {
        let at = self.entry_at(i);
        let b: [u8; KIDX_ENTRY_LEN] = self.rd(at)?;
        let mut h = [0u8; 8];
        let mut p = [0u8; 8];
        let mut v = [0u8; 4];
        h.copy_from_slice(&b[0..8]);
        p.copy_from_slice(&b[8..16]);
        v.copy_from_slice(&b[16..20]);
        Ok(Entry {
            hash: u64::from_le_bytes(h),
            pos: u64::from_le_bytes(p),
            prev: u32::from_le_bytes(v),
        })
    }

    fn set_entry(&mut self, i: u32, e: Entry) -> Result<()> {
        let mut b = [0u8; KIDX_ENTRY_LEN];
        b[0..8].copy_from_slice(&e.hash.to_le_bytes());
        b[8..16].copy_from_slice(&e.pos.to_le_bytes());
        b[16..20].copy_from_slice(&e.prev.to_le_bytes());
        self.wr(self.entry_at(i), &b)
    }

    fn header_bytes(&self, state: u16) -> [u8; KIDX_HEADER_LEN] {
        encode_header(
            state,
            [self.slots, self.cap, self.count, self.durable],
            [self.min_pos, self.max_pos],
        )
    }

    fn write_header(&mut self) -> Result<()> {
        let state = if self.dirty { STATE_DIRTY } else { STATE_CLEAN };
        let h = self.header_bytes(state);
        self.wr(0, &h)
    }

    fn sync_header(&self) -> Result<()> {
        self.map
            .flush_range(0, KIDX_HEADER_LEN)
            .map_err(|e| StoreError::io(&self.path, e))
    }

    /// Before the first change after a flush: durably mark the file dirty.
    fn begin_write(&mut self) -> Result<()> {
        if !self.dirty {
            self.dirty = true;
            self.write_header()?;
            self.sync_header()?;
        }
        Ok(())
    }

    /// msync everything, then durably record `durable = count`, clean.
    fn sync(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        self.map
            .flush()
            .map_err(|e| StoreError::io(&self.path, e))?;
        self.durable = self.count;
        self.dirty = false;
        self.write_header()?;
        self.sync_header()
    }

    fn create(dir: &Path, seq: u64, slots: u32, cap: u32) -> Result<KFile> {
        let path = dir.join(format!("{}{EXT}", name20(seq)));
        let len = file_len(slots, cap)
            .ok_or_else(|| StoreError::Config("key index file too large".into()))?;
        let header = encode_header(STATE_CLEAN, [slots, cap, 0, 0], [0, 0]);
        let file = create_preallocated(&path, len, &header)?;
        let map = map_file(&file, &path)?;
        Ok(KFile {
            path,
            map,
            slots,
            cap,
            count: 0,
            durable: 0,
            min_pos: 0,
            max_pos: 0,
            dirty: false,
        })
    }

    fn open(path: PathBuf) -> Result<KFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        if len < KIDX_HEADER_LEN as u64 {
            return Err(StoreError::corrupt(
                &path,
                0,
                format!("file of {len} bytes is too short"),
            ));
        }
        let map = map_file(&file, &path)?;
        let h: [u8; KIDX_HEADER_LEN] =
            map.get(..KIDX_HEADER_LEN)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| StoreError::corrupt(&path, 0, "short header"))?;
        let u16_at = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&h[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let bad = |off: usize, why: String| Err(StoreError::corrupt(&path, off as u64, why));
        if u32_at(H_MAGIC) != KIDX_MAGIC {
            return bad(H_MAGIC, format!("bad magic {:#010x}", u32_at(H_MAGIC)));
        }
        if u16_at(H_VERSION) != KIDX_VERSION {
            return bad(
                H_VERSION,
                format!("unsupported version {}", u16_at(H_VERSION)),
            );
        }
        let state = u16_at(H_STATE);
        if state != STATE_CLEAN && state != STATE_DIRTY {
            return bad(H_STATE, format!("bad state {state}"));
        }
        let (slots, cap) = (u32_at(H_SLOTS), u32_at(H_CAP));
        if slots == 0 || cap == 0 || cap == u32::MAX || file_len(slots, cap) != Some(len) {
            return bad(
                H_SLOTS,
                format!("{slots} slots and {cap} entries do not match a file of {len} bytes"),
            );
        }
        let (count, durable) = (u32_at(H_COUNT), u32_at(H_DURABLE));
        if count > cap || durable > cap {
            return bad(
                H_COUNT,
                format!("counts {count}/{durable} exceed capacity {cap}"),
            );
        }
        let mut f = KFile {
            path,
            map,
            slots,
            cap,
            count,
            durable,
            min_pos: u64_at(H_MIN),
            max_pos: u64_at(H_MAX),
            dirty: false,
        };
        if state == STATE_DIRTY || count != durable {
            f.repair()?;
        }
        Ok(f)
    }

    /// Rebuild the slot table from entries `0..durable` and forget later entries.
    fn repair(&mut self) -> Result<()> {
        tracing::warn!(file = %self.path.display(), durable = self.durable, count = self.count,
            "key index file was not flushed cleanly; rebuilding it from its durable prefix");
        let slots_end = self.entry_at(0);
        let oob = self.oob(KIDX_HEADER_LEN);
        self.map
            .get_mut(KIDX_HEADER_LEN..slots_end)
            .ok_or(oob)?
            .fill(0);
        let mut last_pos = 0;
        for i in 0..self.durable {
            let e = self.entry(i)?;
            let at = self.entry_at(i) as u64;
            if e.hash == 0 {
                return Err(StoreError::corrupt(
                    &self.path,
                    at,
                    format!("durable entry {i} is empty"),
                ));
            }
            if e.pos < last_pos {
                return Err(StoreError::corrupt(
                    &self.path,
                    at,
                    format!(
                        "entry {i} position {} is below its predecessor's {last_pos}",
                        e.pos
                    ),
                ));
            }
            let s = self.slot_of(e.hash);
            let head = self.slot(s)?;
            if e.prev != head {
                return Err(StoreError::corrupt(
                    &self.path,
                    at,
                    format!(
                        "entry {i} links to {} but its slot's chain ends at {head}",
                        e.prev
                    ),
                ));
            }
            self.set_slot(s, i + 1)?;
            if i == 0 {
                self.min_pos = e.pos;
            }
            last_pos = e.pos;
        }
        self.count = self.durable;
        if self.count == 0 {
            self.min_pos = 0;
        }
        self.max_pos = last_pos;
        self.dirty = true;
        self.sync()
    }
}

/// The key index of a node (see the module docs).
pub struct KeyIndex {
    dir: PathBuf,
    slots: u32,
    entries_per_file: u32,
    files: BTreeMap<u64, KFile>,
    next_seq: u64,
    /// Positions below this are filtered out of lookups (retention).
    low_watermark: u64,
    poisoned: Option<String>,
}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyIndex")
            .field("dir", &self.dir)
            .field("files", &self.files.len())
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl KeyIndex {
    /// Open (creating if needed) the index in `dir`. New files get `slots` slots and
    /// `entries_per_file` entries; existing files keep the geometry they were created with.
    /// Files not flushed cleanly are repaired (see the module docs).
    pub fn open(dir: impl AsRef<Path>, slots: u32, entries_per_file: u32) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if slots == 0 || entries_per_file == 0 || entries_per_file == u32::MAX {
            return Err(StoreError::Config(
                "key index needs slots > 0 and 0 < entries_per_file < u32::MAX".into(),
            ));
        }
        if file_len(slots, entries_per_file).is_none() {
            return Err(StoreError::Config(
                "key index file would be too large".into(),
            ));
        }
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let mut files = BTreeMap::new();
        let mut names: Vec<(String, PathBuf)> = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))? {
            let e = e.map_err(|e| StoreError::io(&dir, e))?;
            let path = e.path();
            let name = e
                .file_name()
                .into_string()
                .map_err(|_| StoreError::corrupt(&path, 0, "file name is not UTF-8"))?;
            names.push((name, path));
        }
        for (name, path) in names {
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                continue;
            }
            if name.starts_with('.') {
                continue;
            }
            let seq = name
                .strip_suffix(EXT)
                .and_then(parse20)
                .ok_or_else(|| StoreError::corrupt(&path, 0, "unexpected file in key index dir"))?;
            files.insert(seq, KFile::open(path)?);
        }
        let next_seq = files.keys().next_back().map_or(0, |s| s + 1);
        Ok(KeyIndex {
            dir,
            slots,
            entries_per_file,
            files,
            next_seq,
            low_watermark: 0,
            poisoned: None,
        })
    }

    fn check_writable(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(StoreError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poisoning<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.poisoned = Some(e.to_string());
        }
        r
    }

    /// The index directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Largest position stored.
    fn last_pos(&self) -> Option<u64> {
        self.files
            .values()
            .rev()
            .find(|f| f.count > 0)
            .map(|f| f.max_pos)
    }

    /// Index `key` → `pos`. Positions must not decrease from one call to the next.
    pub fn put(&mut self, key: &str, pos: u64) -> Result<()> {
        self.check_writable()?;
        if let Some(last) = self.last_pos().filter(|last| pos < *last) {
            return Err(StoreError::Config(format!(
                "key index positions must not decrease: {pos} after {last}"
            )));
        }
        let need_new = self
            .files
            .values()
            .next_back()
            .is_none_or(|f| f.count >= f.cap);
        if need_new {
            let f = KFile::create(&self.dir, self.next_seq, self.slots, self.entries_per_file)?;
            self.files.insert(self.next_seq, f);
            self.next_seq += 1;
        }
        let Some(f) = self.files.values_mut().next_back() else {
            return Err(StoreError::Config("key index has no file".into()));
        };
        let marked = f.begin_write();
        self.poisoning(marked)?;
        let Some(f) = self.files.values_mut().next_back() else {
            return Err(StoreError::Config("key index has no file".into()));
        };
        let hash = key_hash(key);
        let i = f.count;
        let s = f.slot_of(hash);
        let prev = f.slot(s)?;
        f.set_entry(i, Entry { hash, pos, prev })?;
        f.set_slot(s, i + 1)?;
        f.count = i + 1;
        if i == 0 {
            f.min_pos = pos;
        }
        f.max_pos = pos;
        f.write_header()
    }

    /// Up to `max` candidate positions for `key`, newest first, without duplicates. Hashes
    /// collide: verify each candidate against the stored message.
    pub fn lookup(&self, key: &str, max: usize) -> Result<Vec<u64>> {
        let hash = key_hash(key);
        let low = self.low_watermark;
        let mut out: Vec<u64> = Vec::new();
        for f in self.files.values().rev() {
            if out.len() >= max {
                break;
            }
            if f.count == 0 {
                continue;
            }
            if f.max_pos < low {
                break; // this and all older files are below the retention point
            }
            let mut n = f.slot(f.slot_of(hash))?;
            while n != 0 && out.len() < max {
                if n > f.count {
                    return Err(StoreError::corrupt(
                        &f.path,
                        f.slot_at(f.slot_of(hash)) as u64,
                        format!("chain points at entry {n} of {}", f.count),
                    ));
                }
                let e = f.entry(n - 1)?;
                if e.prev >= n {
                    return Err(StoreError::corrupt(
                        &f.path,
                        f.entry_at(n - 1) as u64,
                        format!("entry {n} links forward to {}", e.prev),
                    ));
                }
                if e.pos < low {
                    break;
                }
                if e.hash == hash && out.last() != Some(&e.pos) {
                    out.push(e.pos);
                }
                n = e.prev;
            }
        }
        Ok(out)
    }

    /// Remove every entry whose position is `>= pos` (see the module docs). Durable when
    /// this returns.
    pub fn truncate_from_position(&mut self, pos: u64) -> Result<()> {
        self.check_writable()?;
        let seqs: Vec<u64> = self.files.keys().rev().copied().collect();
        let mut removed = false;
        for seq in seqs {
            let Some(f) = self.files.get_mut(&seq) else {
                continue;
            };
            if f.count == 0 {
                continue;
            }
            if f.max_pos < pos {
                break;
            }
            if f.min_pos >= pos {
                if let Some(f) = self.files.remove(&seq) {
                    let path = f.path.clone();
                    drop(f);
                    fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                    removed = true;
                }
                continue;
            }
            let marked = f.begin_write();
            self.poisoning(marked)?;
            let Some(f) = self.files.get_mut(&seq) else {
                continue;
            };
            while f.count > 0 {
                let i = f.count - 1;
                let e = f.entry(i)?;
                if e.pos < pos {
                    break;
                }
                let s = f.slot_of(e.hash);
                if f.slot(s)? != i + 1 {
                    return Err(StoreError::corrupt(
                        &f.path,
                        f.slot_at(s) as u64,
                        format!("slot {s} does not point at its newest entry {}", i + 1),
                    ));
                }
                f.set_slot(s, e.prev)?;
                f.set_entry(
                    i,
                    Entry {
                        hash: 0,
                        pos: 0,
                        prev: 0,
                    },
                )?;
                f.count = i;
            }
            f.max_pos = if f.count > 0 {
                f.entry(f.count - 1)?.pos
            } else {
                0
            };
            if f.count == 0 {
                f.min_pos = 0;
            }
            f.write_header()?;
            let synced = f.sync();
            self.poisoning(synced)?;
            break;
        }
        if removed {
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Retention: delete files all of whose entries are below `pos`, and stop returning
    /// positions below `pos` from lookups.
    pub fn delete_below_position(&mut self, pos: u64) -> Result<()> {
        self.check_writable()?;
        self.low_watermark = self.low_watermark.max(pos);
        let doomed: Vec<u64> = self
            .files
            .iter()
            .take_while(|(_, f)| f.count > 0 && f.max_pos < pos)
            .map(|(s, _)| *s)
            .collect();
        for seq in &doomed {
            if let Some(f) = self.files.remove(seq) {
                let path = f.path.clone();
                drop(f);
                fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
            }
        }
        if !doomed.is_empty() {
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Make every entry written so far durable. A failure poisons the index.
    pub fn flush(&mut self) -> Result<()> {
        self.check_writable()?;
        let mut result = Ok(());
        for f in self.files.values_mut() {
            result = f.sync();
            if result.is_err() {
                break;
            }
        }
        self.poisoning(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(ix: &KeyIndex) -> Vec<u64> {
        ix.files.keys().copied().collect()
    }

    #[test]
    fn key_hash_is_fnv1a_never_zero() {
        assert_eq!(key_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(key_hash(""), 0);
    }

    #[test]
    fn put_and_lookup_newest_first() {
        let d = tempfile::tempdir().unwrap();
        let mut ix = KeyIndex::open(d.path(), 16, 100).unwrap();
        ix.put("order-1", 100).unwrap();
        ix.put("order-2", 200).unwrap();
        ix.put("order-1", 300).unwrap();
        ix.put("order-1", 300).unwrap(); // same message, key given twice
        ix.put("order-1", 400).unwrap();
        assert_eq!(ix.lookup("order-1", 10).unwrap(), vec![400, 300, 100]);
        assert_eq!(ix.lookup("order-1", 2).unwrap(), vec![400, 300]);
        assert_eq!(ix.lookup("order-2", 10).unwrap(), vec![200]);
        assert!(ix.lookup("nope", 10).unwrap().is_empty());
        assert!(ix.lookup("order-1", 0).unwrap().is_empty());
        assert!(matches!(ix.put("x", 399), Err(StoreError::Config(_))));
    }

    #[test]
    fn slot_collisions_keep_keys_apart() {
        let d = tempfile::tempdir().unwrap();
        // one slot: every key shares one chain
        let mut ix = KeyIndex::open(d.path(), 1, 1000).unwrap();
        for i in 0..50u64 {
            ix.put(&format!("k{}", i % 5), i * 10).unwrap();
        }
        for k in 0..5u64 {
            let want: Vec<u64> = (0..50u64)
                .filter(|i| i % 5 == k)
                .rev()
                .map(|i| i * 10)
                .collect();
            assert_eq!(ix.lookup(&format!("k{k}"), 100).unwrap(), want);
        }
    }

    #[test]
    fn rollover_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut ix = KeyIndex::open(d.path(), 4, 3).unwrap();
            for i in 0..10u64 {
                ix.put(if i % 2 == 0 { "even" } else { "odd" }, i).unwrap();
            }
            assert_eq!(files(&ix), vec![0, 1, 2, 3]);
            assert_eq!(ix.lookup("even", 100).unwrap(), vec![8, 6, 4, 2, 0]);
            ix.flush().unwrap();
        }
        let mut ix = KeyIndex::open(d.path(), 4, 3).unwrap();
        assert_eq!(files(&ix), vec![0, 1, 2, 3]);
        assert_eq!(ix.lookup("even", 100).unwrap(), vec![8, 6, 4, 2, 0]);
        assert_eq!(ix.lookup("odd", 3).unwrap(), vec![9, 7, 5]);
        ix.put("odd", 11).unwrap();
        ix.put("odd", 13).unwrap(); // fills file 3
        assert_eq!(files(&ix), vec![0, 1, 2, 3]);
        ix.put("odd", 15).unwrap(); // starts file 4
        assert_eq!(files(&ix), vec![0, 1, 2, 3, 4]);
        assert_eq!(ix.lookup("odd", 3).unwrap(), vec![15, 13, 11]);
    }

    #[test]
    fn unflushed_entries_are_repaired_away() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut ix = KeyIndex::open(d.path(), 2, 8).unwrap();
            for i in 0..5u64 {
                ix.put(&format!("k{}", i % 3), i).unwrap();
            }
            ix.flush().unwrap();
            for i in 5..11u64 {
                ix.put(&format!("k{}", i % 3), i).unwrap();
            }
            // simulate pages of the unflushed writes reaching disk in a torn state
            let f = ix.files.values_mut().next().unwrap();
            let slots_end = f.entry_at(0);
            f.map[KIDX_HEADER_LEN..slots_end].fill(0xAB);
            let e7 = f.entry_at(7);
            f.map[e7..e7 + 4].fill(0);
        }
        let mut ix = KeyIndex::open(d.path(), 2, 8).unwrap();
        assert_eq!(files(&ix), vec![0, 1]);
        assert_eq!(ix.files[&0].count, 5);
        assert_eq!(ix.lookup("k0", 10).unwrap(), vec![3, 0]);
        assert_eq!(ix.lookup("k1", 10).unwrap(), vec![4, 1]);
        assert_eq!(ix.lookup("k2", 10).unwrap(), vec![2]);
        // the file created after the flush was never flushed: it is empty now
        assert_eq!(ix.files[&1].count, 0);
        ix.put("k0", 6).unwrap();
        assert_eq!(ix.lookup("k0", 10).unwrap(), vec![6, 3, 0]);
    }

    #[test]
    fn corrupt_durable_prefix_fails_open() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut ix = KeyIndex::open(d.path(), 2, 8).unwrap();
            for i in 0..4u64 {
                ix.put(&format!("k{i}"), i).unwrap();
            }
            ix.flush().unwrap();
            ix.put("late", 9).unwrap(); // leaves the file dirty, so open repairs it
            let f = ix.files.values_mut().next().unwrap();
            let e2 = f.entry_at(2);
            f.map[e2 + 16..e2 + 20].copy_from_slice(&7u32.to_le_bytes()); // bogus link
        }
        assert!(matches!(
            KeyIndex::open(d.path(), 2, 8),
            Err(StoreError::Corrupt { .. })
        ));
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(format!("{}{EXT}", name20(0))), [0u8; 200]).unwrap();
        assert!(matches!(
            KeyIndex::open(d.path(), 2, 8),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn truncate_from_position_removes_entries() {
        let d = tempfile::tempdir().unwrap();
        let mut ix = KeyIndex::open(d.path(), 3, 4).unwrap();
        for i in 0..14u64 {
            ix.put(&format!("k{}", i % 4), i * 100).unwrap();
        }
        assert_eq!(files(&ix), vec![0, 1, 2, 3]);
        ix.truncate_from_position(650).unwrap(); // keeps 0..=600
        assert_eq!(files(&ix), vec![0, 1]);
        assert_eq!(ix.files[&1].count, 3);
        assert_eq!(ix.lookup("k0", 10).unwrap(), vec![400, 0]);
        assert_eq!(ix.lookup("k2", 10).unwrap(), vec![600, 200]);
        assert_eq!(ix.lookup("k3", 10).unwrap(), vec![300]);
        // re-adding after a truncation gives the same answers as never having cut
        for i in 7..14u64 {
            ix.put(&format!("k{}", i % 4), i * 100).unwrap();
        }
        assert_eq!(ix.lookup("k3", 10).unwrap(), vec![1100, 700, 300]);
        ix.truncate_from_position(0).unwrap();
        assert!(files(&ix).is_empty());
        assert!(ix.lookup("k3", 10).unwrap().is_empty());
        ix.put("k3", 5).unwrap();
        ix.flush().unwrap();
        drop(ix);
        let ix = KeyIndex::open(d.path(), 3, 4).unwrap();
        assert_eq!(ix.lookup("k3", 10).unwrap(), vec![5]);
    }

    #[test]
    fn truncation_is_durable() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut ix = KeyIndex::open(d.path(), 3, 10).unwrap();
            for i in 0..8u64 {
                ix.put("k", i).unwrap();
            }
            ix.flush().unwrap();
            ix.truncate_from_position(5).unwrap();
        }
        let ix = KeyIndex::open(d.path(), 3, 10).unwrap();
        assert_eq!(ix.lookup("k", 100).unwrap(), vec![4, 3, 2, 1, 0]);
    }

    #[test]
    fn delete_below_position_drops_files_and_filters() {
        let d = tempfile::tempdir().unwrap();
        let mut ix = KeyIndex::open(d.path(), 3, 4).unwrap();
        for i in 0..10u64 {
            ix.put("k", i * 10).unwrap();
        }
        ix.delete_below_position(45).unwrap();
        assert_eq!(files(&ix), vec![1, 2]); // file 0 held 0..=30
        assert_eq!(ix.lookup("k", 100).unwrap(), vec![90, 80, 70, 60, 50]);
        ix.delete_below_position(1000).unwrap();
        assert!(files(&ix).is_empty());
        assert!(ix.lookup("k", 100).unwrap().is_empty());
        ix.put("k", 2000).unwrap();
        assert_eq!(files(&ix), vec![3]);
        assert_eq!(ix.lookup("k", 100).unwrap(), vec![2000]);
    }
}
