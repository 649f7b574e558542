//! Segment marks, retention and snapshots (see "Snapshots = state at the retention boundary"
//! in the module docs of [`super`]).
//!
//! * apply writes a *segment mark* (`state/marks/<segment base>.json`) whenever it enters a
//!   new CommitLog segment ([`SmCore::enter_segment`]);
//! * retention asks for the boundary it may delete up to ([`SmHandle::retention_boundary`])
//!   and cleans up after the purge ([`SmHandle::after_purge`]);
//! * [`SnapshotBuilder`] turns the mark at the boundary into openraft's snapshot, and
//!   [`SmCore::install_snapshot`] installs one received from the leader; the current snapshot
//!   survives restarts as `state/snapshot.json` ([`load_current_snapshot`]).

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use openraft::storage::RaftSnapshotBuilder;
use serde::{Deserialize, Serialize};

use super::{AppliedState, SmCore, SmHandle, SmInner, io_err, lock_err};
use crate::raft::log_store;
use crate::raft::types::{Snapshot, SnapshotData, SnapshotMeta, TypeConfig};
use crate::storage::error::StoreError;
use crate::storage::fsutil;

/// What a snapshot carries: the state as of its boundary plus where the log resumes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotBody {
    state: AppliedState,
    /// Byte position of entry `boundary + 1` (always the first byte of a segment) when the
    /// snapshot was built at a retention mark; `None` for a snapshot of the applied state
    /// (built only when openraft forces one before any segment was sealed).
    next_pos: Option<u64>,
}

/// The snapshot kept in `dir` (`snapshot.json`), if any.
pub(super) fn load_current_snapshot(
    dir: &Path,
) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
    let p = dir.join("snapshot.json");
    match std::fs::read(&p) {
        Ok(b) => {
            let (meta, data): (SnapshotMeta, Vec<u8>) = serde_json::from_slice(&b)
                .map_err(|e| StoreError::corrupt(&p, 0, format!("unreadable snapshot: {e}")))?;
            Ok(Some((meta, data)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(&p, e)),
    }
}

impl SmCore {
    /// Keep the state as of the end of the previous segment (see module docs).
    ///
    /// Called before applying the first entry of segment `segment_base`. A mark that exists
    /// already (re-apply after a restart) is identical and is left alone.
    fn write_mark(&self, inner: &SmInner, segment_base: u64) -> io::Result<()> {
        let p = fsutil::numbered(&self.dir.join("marks"), segment_base, ".json");
        if p.exists() {
            return Ok(());
        }
        let body = serde_json::to_vec(&inner.state).map_err(io_err)?;
        fsutil::atomic_write(&p, &body)?;
        Ok(())
    }

    /// Track segment boundaries: entering a new segment writes the mark of the previous one.
    pub(super) fn enter_segment(&self, inner: &mut SmInner, index: u64) -> io::Result<()> {
        // Entries applied by the node always sit in its log; only storage test suites apply
        // entries that were never appended, and those have no segment to track.
        let Ok(pos) = self.log.position_of(index) else {
            return Ok(());
        };
        let seg_size = self.log.config().segment_size;
        let base = pos - pos % seg_size;
        if inner.state.current_segment.is_some_and(|b| b < base)
            && inner.state.last_applied.is_some()
        {
            self.write_mark(inner, base)?;
        }
        inner.state.current_segment = Some(base);
        Ok(())
    }

    /// Install a snapshot received from the leader (openraft's `install_snapshot`): the
    /// state as of its boundary, with the CommitLog and the derived stores brought to match.
    pub(super) fn install_snapshot(&self, meta: &SnapshotMeta, data: Vec<u8>) -> io::Result<()> {
        let body: SnapshotBody = serde_json::from_slice(&data).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad snapshot: {e}"))
        })?;
        let boundary = meta.last_log_id.map(|l| l.index);
        let mut g = self.inner.write().map_err(lock_err)?;
        // Keep our own log if it already holds the boundary entry with the same id (openraft
        // then keeps the entries after it); otherwise restart it empty right after the
        // boundary, at the byte position the leader's next entry has.
        let holds = match (meta.last_log_id, boundary) {
            (Some(l), Some(b)) => self
                .log
                .id_at(b)
                .is_ok_and(|id| id.term == l.leader_id.term && id.node == l.leader_id.node_id),
            _ => false,
        };
        // Our log may instead have been purged exactly up to the boundary: openraft re-installs
        // the node's own latest snapshot at startup when the checkpoint is older than it (the
        // checkpoint is written at most every CHECKPOINT_INTERVAL, retention may have purged
        // since). The entries after the boundary are then ours and committed or not, they
        // are the log openraft expects to find: dropping them (as the branch below does)
        // loses committed entries on this node. Found by the chaos suite (a leader killed
        // right after a retention pass could not restart: "Failed to get log entries").
        let first = self.log.first_index().map_err(io_err)?;
        let purged_to_boundary = !holds && boundary.is_some_and(|b| first == b + 1);
        let mut state = body.state;
        if purged_to_boundary {
            let next_index = first;
            let next_pos = if next_index < self.log.next_index().map_err(io_err)? {
                self.log.position_of(next_index).map_err(io_err)?
            } else {
                self.log.write_pos().map_err(io_err)?
            };
            if body.next_pos.is_some_and(|p| p != next_pos) {
                tracing::warn!(
                    "snapshot resumes the log at byte {:?}, this node's log at {next_pos}",
                    body.next_pos
                );
            }
            // Everything at or below the boundary is gone from this node's segments, so the
            // queues restart at the boundary's offsets, as after a reset.
            g.dispatcher.reset_queues(&state.next_offsets)?;
            state.dispatched = boundary.map(|b| (b, next_pos));
            g.dispatcher.reset_to(state.dispatched)?;
            state.current_segment = Some(next_pos - next_pos % self.log.config().segment_size);
        } else if !holds {
            let next_index = boundary.map_or(0, |b| b + 1);
            // Without the leader's restart position (see `SnapshotBody::next_pos`), continue in a
            // fresh segment of our own: record bytes stay identical, positions then differ.
            let seg_size = self.log.config().segment_size;
            let next_pos = match body.next_pos {
                Some(p) => p,
                None => self.log.write_pos()?.div_ceil(seg_size) * seg_size,
            };
            self.log.reset(next_index, next_pos)?;
            g.dispatcher.reset_queues(&state.next_offsets)?;
            state.dispatched = boundary.map(|b| (b, next_pos));
            g.dispatcher.reset_to(state.dispatched)?;
            state.current_segment = Some(next_pos);
        } else {
            // We hold the entries up to the boundary: applying them ourselves yields the
            // snapshot's state, and dispatches their messages into our own queues.
            let from = g.state.last_applied.map_or(0, |l| l.index + 1);
            if let Some(b) = boundary {
                for i in from.max(self.log.first_index()?)..=b {
                    let entry = log_store::record_to_entry(self.log.read(i)?)?;
                    self.apply_entry(&mut g, &entry)?;
                }
            }
            state.dispatched = g.dispatcher.last_dispatched();
            state.current_segment = g.state.current_segment;
        }
        g.state = state;
        g.state.last_applied = meta.last_log_id;
        g.state.membership = meta.last_membership.clone();
        g.dirty = true;
        self.checkpoint(&mut g)?;
        drop(g);
        let persisted = serde_json::to_vec(&(meta, &data)).map_err(io_err)?;
        fsutil::atomic_write(&self.dir.join("snapshot.json"), &persisted)?;
        *self.current_snapshot.lock().map_err(lock_err)? = Some((meta.clone(), data));
        Ok(())
    }
}

impl SmHandle {
    /// The retention boundary: the last index of the newest whole segment that may be
    /// deleted under the policy, provided its mark exists and it is applied. `None` if nothing
    /// is due.
    pub fn retention_boundary(
        &self,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
    ) -> Result<Option<u64>, StoreError> {
        let segs = self.core.log.segment_files()?;
        if segs.len() < 2 {
            return Ok(None); // never delete the active segment
        }
        let seg_size = self.core.log.config().segment_size;
        let total = segs.len() as u64 * seg_size;
        let mut delete_upto: Option<u64> = None; // base of the newest segment to delete
        // A pending delay or half message keeps its segment (and all later ones).
        let keep_from = self.read().and_then(|g| g.state.pending.min_pos());
        for (i, (base, path)) in segs.iter().enumerate().take(segs.len() - 1) {
            if keep_from.is_some_and(|p| p < base + seg_size) {
                break;
            }
            let too_big = max_bytes.is_some_and(|m| total - (i as u64) * seg_size > m);
            // A sealed segment is never written again: its mtime is when it was sealed.
            let too_old = max_age.is_some_and(|age| {
                std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|d| d > age)
            });
            if too_big || too_old {
                delete_upto = Some(*base);
            } else {
                break;
            }
        }
        let Some(base) = delete_upto else {
            return Ok(None);
        };
        // The mark written when apply entered the following segment is the state at the
        // boundary; without it (not applied yet) nothing may be deleted.
        let next_base = base + seg_size;
        let p = fsutil::numbered(&self.core.dir.join("marks"), next_base, ".json");
        let Ok(b) = std::fs::read(&p) else {
            return Ok(None);
        };
        let st: AppliedState = serde_json::from_slice(&b)
            .map_err(|e| StoreError::corrupt(&p, 0, format!("unreadable mark: {e}")))?;
        if let Ok(mut t) = self.core.snapshot_target.lock() {
            *t = Some(next_base);
        }
        Ok(st.last_applied.map(|l| l.index))
    }

    /// After retention deleted segments: drop ConsumeQueue units and key-index entries that
    /// point into them, and the marks of segments that no longer exist.
    pub fn after_purge(&self) -> Result<(), StoreError> {
        let oldest = self
            .core
            .log
            .segment_files()?
            .first()
            .map(|(b, _)| *b)
            .unwrap_or(0);
        {
            let mut g = self
                .core
                .inner
                .write()
                .map_err(|_| StoreError::Poisoned("state machine lock poisoned".into()))?;
            g.dispatcher.delete_below_position(oldest)?;
        }
        for (base, p) in fsutil::list_numbered(&self.core.dir.join("marks"), ".json")? {
            if base < oldest {
                std::fs::remove_file(&p).map_err(|e| StoreError::io(&p, e))?;
            }
        }
        Ok(())
    }
}

/// Builds the snapshot at the retention boundary: the mark of the oldest segment that stays
/// (see the module docs), or the applied state when no segment was ever sealed.
pub struct SnapshotBuilder {
    pub(super) core: Arc<SmCore>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // The snapshot is the mark of the oldest segment that stays: the retention target if
        // retention is about to delete segments, else the oldest segment still held.
        let target = *self.core.snapshot_target.lock().map_err(lock_err)?;
        let oldest = self
            .core
            .log
            .segment_files()
            .map_err(io_err)?
            .first()
            .map(|(b, _)| *b);
        let marks = fsutil::list_numbered(&self.core.dir.join("marks"), ".json").map_err(io_err)?;
        let want = target.or(oldest);
        let (state, next_pos) = match marks.iter().find(|(b, _)| Some(*b) == want) {
            Some((base, p)) => {
                let b = std::fs::read(p)?;
                let st: AppliedState = serde_json::from_slice(&b).map_err(io_err)?;
                (st, Some(*base))
            }
            None => {
                let g = self.core.inner.read().map_err(lock_err)?;
                (g.state.clone(), None)
            }
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
        };
        let data = serde_json::to_vec(&SnapshotBody { state, next_pos }).map_err(io_err)?;
        let persisted = serde_json::to_vec(&(&meta, &data)).map_err(io_err)?;
        fsutil::atomic_write(&self.core.dir.join("snapshot.json"), &persisted)?;
        *self.core.current_snapshot.lock().map_err(lock_err)? = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: std::io::Cursor::new(data),
        })
    }
}
