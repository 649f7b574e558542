//! Small file-system helpers shared by the stores: atomic replace, directory sync,
//! preallocation and numbered file names.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};

/// Width of the zero-padded decimal numbers in file names, so names sort like numbers.
pub const NAME_WIDTH: usize = 20;

/// `<dir>/<n as 20 digits><suffix>`.
pub fn numbered(dir: &Path, n: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{n:0width$}{suffix}", width = NAME_WIDTH))
}

/// Files in `dir` named `<20 digits><suffix>`, sorted by number. Other names are ignored.
pub fn list_numbered(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(suffix) else {
            continue;
        };
        if stem.len() != NAME_WIDTH || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(n) = stem.parse::<u64>() {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// fsync a directory so that creations, renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| StoreError::io(dir, e))?;
    f.sync_all().map_err(|e| StoreError::io(dir, e))
}

/// Replace `path` with `bytes` atomically and durably: write a temp file, fsync it, rename it
/// over the target, fsync the directory. A crash leaves either the old or the new content.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StoreError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| StoreError::io(&tmp, e))?;
        f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
    sync_dir(dir)
}

/// Reserve `len` bytes of real disk space for `file`.
///
/// Why: writing through a shared mapping into a sparse hole on a full disk raises SIGBUS and
/// kills the process. Allocating up front turns "disk full" into an ordinary error at segment
/// creation time.
pub fn preallocate(file: &File, path: &Path, len: u64) -> Result<()> {
    let len_i =
        i64::try_from(len).map_err(|_| StoreError::Config(format!("file size {len} too large")))?;
    // SAFETY: plain syscall on a valid, owned file descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_i) };
    if rc != 0 {
        return Err(StoreError::io(path, std::io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}
