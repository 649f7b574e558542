//! One fixed-size CommitLog segment file, mapped into memory.
//!
//! Records are written with `pwritev` on the file and read through a shared mapping of it:
//! both go through the same page cache, so a write is visible to readers at once, and
//! `flush_range` (msync of the range) makes it durable. Readers get zero-copy `Bytes` views
//! that keep the mapping alive through an `Arc`. (Why not write through the mapping: see
//! [`Segment::write_vectored`].)
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

    /// Write `parts` back to back at `off` through the file (pwritev), not the mapping.
    ///
    /// Why not through the mapping: the first store into each page of a preallocated
    /// (unwritten) extent takes a fault that zero-fills the page (several MiB at a time with
    /// large folios), msync then write-protects pages and every later store re-faults and
    /// re-dirties a whole folio. Measured with `raftmq-bench commitlog`, that was most of the
    /// writer's CPU and up to ×45 device write amplification for small batches. pwritev
    /// dirties only the bytes written; the mapping still sees them (same page cache), so
    /// reads stay zero-copy.
    pub(crate) fn write_vectored(&self, off: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        assert!(
            off + total as u64 <= self.size,
            "segment write out of bounds"
        );
        let mut iov: Vec<libc::iovec> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        let mut at = off;
        let mut idx = 0usize;
        while idx < iov.len() {
            // SAFETY: the iovecs point into live slices borrowed for this call; fd is ours.
            let n = unsafe {
                libc::pwritev(
                    std::os::fd::AsRawFd::as_raw_fd(&self._file),
                    iov[idx..].as_ptr(),
                    (iov.len() - idx).min(1024) as libc::c_int,
                    at as libc::off_t,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut n = n as usize;
            at += n as u64;
            // Skip fully written iovecs, advance into a partly written one.
            while idx < iov.len() && n >= iov[idx].iov_len {
                n -= iov[idx].iov_len;
                idx += 1;
            }
            if n > 0 && idx < iov.len() {
                // SAFETY: n < iov_len, so the advanced pointer stays inside the slice.
                iov[idx].iov_base =
                    unsafe { (iov[idx].iov_base as *mut u8).add(n) } as *mut libc::c_void;
                iov[idx].iov_len -= n;
            }
        }
        Ok(())
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
