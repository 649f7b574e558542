//! The Raft state machine.
//!
//! Applying an entry is where committed data becomes visible: this module tracks the applied
//! log id and membership and answers each writer. Dispatch of message batches into
//! ConsumeQueues (`storage::dispatch`) plugs in here; blank and membership entries carry no
//! messages and are skipped by dispatch.

use std::io;
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};

use super::types::{CommandResponse, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};

/// The state carried in a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedState {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
}

/// The state machine.
#[derive(Default)]
pub struct StateMachine {
    state: AppliedState,
    /// The last built or installed snapshot, shared with builders so a built one becomes current.
    current: Arc<Mutex<Option<(SnapshotMeta, Vec<u8>)>>>,
}

impl StateMachine {
    /// A fresh, empty state machine.
    pub fn new() -> Self {
        Self::default()
    }

    /// The applied state.
    pub fn applied(&self) -> &AppliedState {
        &self.state
    }
}

/// Builds a snapshot of the applied state at the moment it was created.
pub struct SnapshotBuilder {
    state: AppliedState,
    current: Arc<Mutex<Option<(SnapshotMeta, Vec<u8>)>>>,
}

fn encode(state: &AppliedState) -> io::Result<Vec<u8>> {
    serde_json::to_vec(state).map_err(io::Error::other)
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let data = encode(&self.state)?;
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
        };
        *self.current.lock().map_err(|_| io::Error::other("snapshot lock poisoned"))? = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: std::io::Cursor::new(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id;
            if let EntryPayload::Membership(m) = &entry.payload {
                self.state.membership = StoredMembership::new(Some(log_id), m.clone());
            }
            self.state.last_applied = Some(log_id);
            if let Some(r) = responder {
                r.send(CommandResponse {
                    index: log_id.index,
                    data: bytes::Bytes::new(),
                });
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            state: self.state.clone(),
            current: Arc::clone(&self.current),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let state: AppliedState = serde_json::from_slice(&data)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad snapshot: {e}")))?;
        self.state = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let _ = state;
        *self.current.lock().map_err(|_| io::Error::other("snapshot lock poisoned"))? = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let cur = self.current.lock().map_err(|_| io::Error::other("snapshot lock poisoned"))?;
        Ok(cur.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: std::io::Cursor::new(data.clone()),
        }))
    }
}
