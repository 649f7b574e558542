//! Errors of the storage layer.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in `storage`.
///
/// `Corrupt` and `Poisoned` are deliberately distinct from `Io`: the first means the bytes on
/// disk are not what we wrote (refuse to start, an operator must look), the second means a
/// sync failed and we no longer know what is durable (refuse writes until restart).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An operating-system call failed on the named file.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The bytes on disk are damaged in a place that cannot be a torn tail.
    #[error("corrupt data in {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset inside that file.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// An earlier fsync/msync failed: what is durable is unknown, so every later write is refused.
    #[error("store is poisoned after a failed sync ({0}); refusing writes until restart")]
    Poisoned(String),
    /// A record larger than a whole segment can never be stored.
    #[error("record of {size} bytes does not fit in a segment of {segment_size} bytes")]
    RecordTooLarge {
        /// Encoded record size, header included.
        size: u64,
        /// Configured segment size.
        segment_size: u64,
    },
    /// Appends must be dense and in order.
    #[error("append out of order: expected index {expected}, got {got}")]
    OutOfOrder {
        /// The index the log expects next.
        expected: u64,
        /// The index that was offered.
        got: u64,
    },
    /// A read asked for an index the log does not hold.
    #[error("index {index} is not in the log (retained range {first}..{next})")]
    NotFound {
        /// Requested index.
        index: u64,
        /// First retained index.
        first: u64,
        /// One past the last index.
        next: u64,
    },
    /// A configuration value is unusable.
    #[error("invalid storage config: {0}")]
    Config(String),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        StoreError::Corrupt {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }
}

impl From<StoreError> for io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io { source, .. } if source.kind() != io::ErrorKind::Other => {
                io::Error::new(source.kind(), source.to_string())
            }
            other => io::Error::other(other),
        }
    }
}

/// Result alias for the storage layer.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
