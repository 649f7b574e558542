//! The Raft index → record position file: fixed-width slots, mmap'd, so that finding entry
//! `i` is one array lookup and startup never scans the whole log.
//!
//! Files are `index/<20-digit first raft index>.idx`, each holding `slots_per_file` slots for
//! the aligned range `[k * slots_per_file, (k + 1) * slots_per_file)`. A slot is 32 bytes,
//! little-endian:
//!
//! ```text
//! 0  u64 record position (absolute CommitLog byte offset)
//! 8  u32 record length (header + payload); 0 = empty slot
//! 12 u8  record kind
//! 13 3   reserved (zero)
//! 16 u64 term
//! 24 u64 leader node id
//! ```
//!
//! The index is derived data: every slot is checked against the record header it points to,
//! and recovery rewrites the slots of the segments it scans. It is synced whenever a data
//! segment is sealed, so slots outside the recovery scan window are durable.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use memmap2::{MmapMut, MmapOptions};

use super::error::{Result, StoreError};
use super::fsutil;

/// Bytes per slot.
pub const SLOT_LEN: usize = 32;

/// One decoded slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Absolute record position.
    pub pos: u64,
    /// Record length, header included.
    pub len: u32,
    /// Record kind byte.
    pub kind: u8,
    /// Term.
    pub term: u64,
    /// Leader node id.
    pub node: u64,
}

struct IndexFile {
    path: PathBuf,
    map: MmapMut,
    dirty: bool,
}

/// The set of index files.
pub struct IndexFiles {
    dir: PathBuf,
    slots_per_file: u64,
    files: BTreeMap<u64, IndexFile>,
}

impl IndexFiles {
    /// Open (creating the directory if needed).
    pub fn open(dir: &Path, slots_per_file: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let mut files = BTreeMap::new();
        let want = slots_per_file * SLOT_LEN as u64;
        for (first, path) in fsutil::list_numbered(dir, ".idx")? {
            if first % slots_per_file != 0 {
                return Err(StoreError::corrupt(
                    &path,
                    0,
                    format!("index file start {first} is not a multiple of {slots_per_file} slots"),
                ));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::io(&path, e))?;
            let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
            if len != want {
                return Err(StoreError::corrupt(
                    &path,
                    0,
                    format!("index file is {len} bytes, expected {want}"),
                ));
            }
            // SAFETY: we own the file; nothing else maps or truncates it while we run.
            let map = unsafe { MmapOptions::new().len(want as usize).map_mut(&file) }
                .map_err(|e| StoreError::io(&path, e))?;
            files.insert(
                first,
                IndexFile {
                    path,
                    map,
                    dirty: false,
                },
            );
        }
        Ok(IndexFiles {
            dir: dir.to_path_buf(),
            slots_per_file,
            files,
        })
    }

    fn locate(&self, index: u64) -> (u64, usize) {
        let first = index - index % self.slots_per_file;
        (first, ((index - first) as usize) * SLOT_LEN)
    }

    /// The slot for `index`, or `None` if absent/empty.
    pub fn get(&self, index: u64) -> Option<Slot> {
        let (first, off) = self.locate(index);
        let f = self.files.get(&first)?;
        let b = &f.map[off..off + SLOT_LEN];
        let rd8 = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let mut l = [0u8; 4];
        l.copy_from_slice(&b[8..12]);
        let len = u32::from_le_bytes(l);
        if len == 0 {
            return None;
        }
        Some(Slot {
            pos: rd8(0),
            len,
            kind: b[12],
            term: rd8(16),
            node: rd8(24),
        })
    }

    /// Write the slot for `index`, creating its file when needed.
    pub fn put(&mut self, index: u64, slot: Slot) -> Result<()> {
        let (first, off) = self.locate(index);
        if !self.files.contains_key(&first) {
            let f = self.create(first)?;
            self.files.insert(first, f);
        }
        let Some(f) = self.files.get_mut(&first) else {
            return Err(StoreError::Config("index file vanished".into()));
        };
        let b = &mut f.map[off..off + SLOT_LEN];
        b[0..8].copy_from_slice(&slot.pos.to_le_bytes());
        b[8..12].copy_from_slice(&slot.len.to_le_bytes());
        b[12] = slot.kind;
        b[13..16].fill(0);
        b[16..24].copy_from_slice(&slot.term.to_le_bytes());
        b[24..32].copy_from_slice(&slot.node.to_le_bytes());
        f.dirty = true;
        Ok(())
    }

    fn create(&self, first: u64) -> Result<IndexFile> {
        let path = fsutil::numbered(&self.dir, first, ".idx");
        let len = self.slots_per_file * SLOT_LEN as u64;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        file.set_len(len).map_err(|e| StoreError::io(&path, e))?;
        fsutil::preallocate(&file, &path, len)?;
        file.sync_all().map_err(|e| StoreError::io(&path, e))?;
        fsutil::sync_dir(&self.dir)?;
        // SAFETY: freshly created file owned by us.
        let map = unsafe { MmapOptions::new().len(len as usize).map_mut(&file) }
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(IndexFile {
            path,
            map,
            dirty: true,
        })
    }

    /// Empty every slot at or above `index` (files wholly above are deleted).
    pub fn clear_from(&mut self, index: u64) -> Result<()> {
        let (first, off) = self.locate(index);
        let above: Vec<u64> = self.files.range(first + 1..).map(|(k, _)| *k).collect();
        for k in above {
            if let Some(f) = self.files.remove(&k) {
                std::fs::remove_file(&f.path).map_err(|e| StoreError::io(&f.path, e))?;
            }
        }
        if let Some(f) = self.files.get_mut(&first)
            && f.map[off..].iter().any(|b| *b != 0)
        {
            f.map[off..].fill(0);
            f.dirty = true;
        }
        Ok(())
    }

    /// Delete files all of whose slots are below `index`.
    pub fn delete_below(&mut self, index: u64) -> Result<()> {
        let spf = self.slots_per_file;
        let dead: Vec<u64> = self
            .files
            .keys()
            .copied()
            .filter(|k| k + spf <= index)
            .collect();
        for k in dead {
            if let Some(f) = self.files.remove(&k) {
                std::fs::remove_file(&f.path).map_err(|e| StoreError::io(&f.path, e))?;
            }
        }
        Ok(())
    }

    /// Make every written slot durable.
    pub fn flush(&mut self) -> Result<()> {
        for f in self.files.values_mut() {
            if f.dirty {
                f.map.flush().map_err(|e| StoreError::io(&f.path, e))?;
                f.dirty = false;
            }
        }
        Ok(())
    }

    /// Remove every index file (used before a full rebuild).
    pub fn wipe(&mut self) -> Result<()> {
        for (_, f) in std::mem::take(&mut self.files) {
            std::fs::remove_file(&f.path).map_err(|e| StoreError::io(&f.path, e))?;
        }
        Ok(())
    }
}
