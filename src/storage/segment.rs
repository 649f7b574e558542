//! One fixed-size CommitLog segment file, mapped into memory.
//!
//! The mapping is shared (`MAP_SHARED`), so bytes written through it are the page cache
//! pages of the file; `flush_range` (msync) makes a range durable. Readers get zero-copy
//! `Bytes` views that keep the mapping alive through an `Arc`.
//!
//! Aliasing invariant: the single writer (the CommitLog, under its write lock) only writes
//! bytes at or after the log's write position, or zeroes a tail it has just truncated away.
//! Readers are only handed ranges of records below the write position, so a live reader
//! never observes a write, except a reader still holding a truncated, never-committed entry,
//! which then sees zeroes; nothing is ever freed under a reader.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use super::error::{Result, StoreError};
use super::fsutil;

/// A mapped segment.
pub struct Segment {
    base: u64,
    size: u64,
    path: PathBuf,
    map: MmapRaw,
    _file: File,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Segment({})", self.path.display())
    }
}

impl Segment {
    /// Create a new, preallocated segment starting at absolute byte offset `base`.
    pub fn create(dir: &Path, base: u64, size: u64) -> Result<Arc<Segment>> {
        let path = fsutil::numbered(dir, base, "");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let made = Self::finish_create(file, &path, size);
        if made.is_err() {
            // Leave no half-made segment behind (e.g. after ENOSPC); recovery would see it.
            let _ = std::fs::remove_file(&path);
        }
        let (file, map) = made?;
        fsutil::sync_dir(dir)?;
        Ok(Arc::new(Segment {
            base,
            size,
            path,
            map,
            _file: file,
        }))
    }

    fn finish_create(file: File, path: &Path, size: u64) -> Result<(File, MmapRaw)> {
        file.set_len(size).map_err(|e| StoreError::io(path, e))?;
        fsutil::preallocate(&file, path, size)?;
        file.sync_all().map_err(|e| StoreError::io(path, e))?;
        let map = MmapOptions::new()
            .len(size as usize)
            .map_raw(&file)
            .map_err(|e| StoreError::io(path, e))?;
        Ok((file, map))
    }

    /// Open an existing segment; its length must be exactly `size`.
    pub fn open(path: &Path, base: u64, size: u64) -> Result<Arc<Segment>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
        if len != size {
            return Err(StoreError::corrupt(
                path,
                0,
                format!("segment is {len} bytes, expected the configured segment size {size}"),
            ));
        }
        let map = MmapOptions::new()
            .len(size as usize)
            .map_raw(&file)
            .map_err(|e| StoreError::io(path, e))?;
        Ok(Arc::new(Segment {
            base,
            size,
            path: path.to_path_buf(),
            map,
            _file: file,
        }))
    }

    /// Absolute offset of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Segment size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// File path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole mapping as a byte slice (see the aliasing invariant in the module docs).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `size` bytes long and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.size as usize) }
    }

    /// Copy `data` into the mapping at `off`. Caller is the single writer and `off..off+len`
    /// lies at or beyond the write position (module invariant).
    pub(crate) fn write(&self, off: u64, data: &[u8]) {
        assert!(
            off + data.len() as u64 <= self.size,
            "segment write out of bounds"
        );
        // SAFETY: bounds checked above; the region is not handed to readers (module invariant).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(off as usize),
                data.len(),
            )
        }
    }

    /// A mutable view of `off..off+len` for encoding in place. Same contract as [`Self::write`].
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn region_mut(&self, off: u64, len: usize) -> &mut [u8] {
        assert!(off + len as u64 <= self.size, "segment write out of bounds");
        // SAFETY: bounds checked; single writer on a region no reader holds (module invariant).
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(off as usize), len) }
    }

    /// Zero `from..to` (used to erase a truncated or torn tail).
    pub(crate) fn zero(&self, from: u64, to: u64) {
        assert!(from <= to && to <= self.size, "segment zero out of bounds");
        // SAFETY: bounds checked; the range is a dead tail no committed reader uses.
        unsafe {
            std::ptr::write_bytes(
                self.map.as_mut_ptr().add(from as usize),
                0,
                (to - from) as usize,
            )
        }
    }

    /// Make `from..to` durable (msync).
    pub fn flush_range(&self, from: u64, to: u64) -> std::io::Result<()> {
        if to <= from {
            return Ok(());
        }
        self.map.flush_range(from as usize, (to - from) as usize)
    }

    /// Zero-copy view of `off..off+len`.
    pub fn slice(self: &Arc<Self>, off: u64, len: usize) -> Bytes {
        Bytes::from_owner(SegmentSlice {
            seg: Arc::clone(self),
            off: off as usize,
            len,
        })
    }
}

struct SegmentSlice {
    seg: Arc<Segment>,
    off: usize,
    len: usize,
}

impl AsRef<[u8]> for SegmentSlice {
    fn as_ref(&self) -> &[u8] {
        &self.seg.bytes()[self.off..self.off + self.len]
    }
}
