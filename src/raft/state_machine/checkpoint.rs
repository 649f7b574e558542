//! Checkpoints: `state/checkpoint.json` holds the applied state with the dispatch position it
//! matches (see "Checkpoints and restart" in the module docs of [`super`]). Written
//! periodically during apply ([`SmCore::checkpoint_in_background`]), on a clean shutdown
//! ([`SmHandle::checkpoint_now`]) and after installing a snapshot ([`SmCore::checkpoint`]);
//! read back by [`load_checkpoint`] when the state machine opens.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{AppliedState, SmCore, SmHandle, SmInner, io_err, lock_err};
use crate::storage::error::StoreError;
use crate::storage::fsutil;

/// How often, at most, the applied state is checkpointed. The checkpoint encodes the whole
/// state (the recent-id window, 28 bytes per id, dominates it) under the apply lock, so it is
/// kept rare; a
/// restart re-applies at most this much of the log, which is idempotent.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

/// The checkpoint file's writer state. Writes happen on a blocking thread while apply goes
/// on (serialising and fsyncing the whole applied state took tens of milliseconds under the
/// state lock, and every write in flight waited for it); this lock orders them so an older
/// state never replaces a newer one, and keeps a failed write for apply to report.
#[derive(Default)]
pub(super) struct CheckpointFile {
    /// Index of the last applied entry of the newest state written.
    written: Option<u64>,
    /// Why the last background write failed; apply fails with it (the store's rule: a
    /// failed write is reported, never retried silently).
    failed: Option<String>,
}

impl CheckpointFile {
    /// Write `state` unless a newer one is already on disk.
    fn write(&mut self, dir: &Path, state: &AppliedState) -> io::Result<()> {
        let index = state.last_applied.map(|l| l.index);
        if self.written.is_some() && index < self.written {
            return Ok(());
        }
        let bytes = serde_json::to_vec(state).map_err(io_err)?;
        fsutil::atomic_write(&dir.join("checkpoint.json"), &bytes)?;
        self.written = index;
        Ok(())
    }
}

/// The applied state of the last checkpoint under `dir`; the default (empty) state if none
/// was written yet.
pub(super) fn load_checkpoint(dir: &Path) -> Result<AppliedState, StoreError> {
    let ck = dir.join("checkpoint.json");
    match std::fs::read(&ck) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| StoreError::corrupt(&ck, 0, format!("unreadable checkpoint: {e}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(AppliedState::default()),
        Err(e) => Err(StoreError::io(&ck, e)),
    }
}

impl SmCore {
    /// Write the checkpoint now, waiting for a background write still running.
    pub(super) fn checkpoint(&self, inner: &mut SmInner) -> io::Result<()> {
        if !inner.dirty {
            return Ok(());
        }
        inner.dispatcher.flush()?;
        self.checkpoint_file
            .lock()
            .map_err(lock_err)?
            .write(&self.dir, &inner.state)?;
        inner.dirty = false;
        inner.last_checkpoint = Instant::now();
        Ok(())
    }

    /// The periodic checkpoint during apply: flush the derived stores (so the state's
    /// dispatch position is durable), copy the state, and serialise + write it on a blocking
    /// thread. A crash before that write lands leaves the previous checkpoint, which restart
    /// handles as always (derived files cut back to its position, the rest re-applied).
    pub(super) fn checkpoint_in_background(&self, inner: &mut SmInner) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        if let Some(why) = self.checkpoint_file.lock().map_err(lock_err)?.failed.take() {
            return Err(io::Error::other(format!("checkpoint write failed: {why}")));
        }
        if !inner.dirty || self.checkpoint_busy.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Err(e) = inner.dispatcher.flush() {
            self.checkpoint_busy.store(false, Ordering::Release);
            return Err(e.into());
        }
        let state = inner.state.clone();
        inner.dirty = false;
        inner.last_checkpoint = Instant::now();
        let (dir, file, busy) = (
            self.dir.clone(),
            self.checkpoint_file.clone(),
            self.checkpoint_busy.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                if let Ok(mut f) = file.lock()
                    && let Err(e) = f.write(&dir, &state)
                {
                    tracing::error!("checkpoint write failed: {e}");
                    f.failed = Some(e.to_string());
                }
                busy.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            self.checkpoint_busy.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }
}

impl SmHandle {
    /// Write the checkpoint now (clean shutdown).
    pub fn checkpoint_now(&self) {
        if let Ok(mut g) = self.core.inner.write()
            && let Err(e) = self.core.checkpoint(&mut g)
        {
            tracing::warn!("final checkpoint failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{CommittedLeaderId, LogId};

    fn applied_at(index: u64) -> AppliedState {
        AppliedState {
            last_applied: Some(LogId {
                leader_id: CommittedLeaderId {
                    term: 2,
                    node_id: 1,
                },
                index,
            }),
            ..Default::default()
        }
    }

    fn on_disk(dir: &Path) -> Option<u64> {
        let bytes = std::fs::read(dir.join("checkpoint.json")).expect("checkpoint written");
        let state: AppliedState = serde_json::from_slice(&bytes).expect("checkpoint parses");
        state.last_applied.map(|l| l.index)
    }

    /// Background writes may finish out of order (a shutdown checkpoint can overtake a
    /// periodic one): the file must keep the newest state.
    #[test]
    fn an_older_checkpoint_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = CheckpointFile::default();
        f.write(dir.path(), &applied_at(5)).expect("write 5");
        assert_eq!(on_disk(dir.path()), Some(5));
        f.write(dir.path(), &applied_at(10)).expect("write 10");
        f.write(dir.path(), &applied_at(7)).expect("write 7");
        assert_eq!(on_disk(dir.path()), Some(10));
        f.write(dir.path(), &applied_at(10)).expect("rewrite 10");
        assert_eq!(on_disk(dir.path()), Some(10));
    }
}
