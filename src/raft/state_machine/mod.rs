//! The Raft state machine: apply = dispatch.
//!
//! Applying runs on every node in log order and is deterministic, so every replica derives
//! the same state from the same log:
//!
//! * **message batches** (`RecordKind::MESSAGE_BATCH`): each message gets the next offset of its
//!   (topic, queue), a ConsumeQueue unit and key-index entries (`storage::dispatch`). A message
//!   whose id is in the recent-id window was stored before (a producer retry): it is not
//!   dispatched again and the writer gets the original's place — so a retried send is visible
//!   once. The window is part of the replicated state (compact encoding: see
//!   [`super::dedupe`]).
//! * **internal commands** ([`InternalCommand`]: kind [`INTERNAL_BIN_KIND`] for the consume
//!   path's deliveries and acks in a fixed binary layout, kind [`INTERNAL_JSON_KIND`] JSON for
//!   the rest; see `codec`): topics, groups, deliveries, acks, offsets, transactions, ACL. Everything that must survive a
//!   failover is a log entry; nothing is synchronised out of band. Commands proposed
//!   concurrently share one entry of kind [`INTERNAL_BATCH_KIND`] (see [`command_batch`]),
//!   applied member by member as if they were consecutive entries.
//! * **blank and membership entries** carry no messages and are skipped by dispatch.
//!
//! Consumers read only what has been applied, so they never see an uncommitted message.
//!
//! # Metrics
//!
//! `rocketmq_messages_in_total` and `rocketmq_throughput_in_total` (label `topic`) are counted
//! here, when a message batch is applied, and only on the node that proposed the entry in its
//! current process (see [`SmHandle::count_messages_of`]): every stored message is counted once
//! in the whole group, never once per replica, and a producer retry that the recent-id window
//! recognises is not counted again. Counting at apply rather than in the writer means that a
//! client that gave up before the answer (its request future dropped) still has its stored
//! messages counted.
//!
//! # Checkpoints and restart
//!
//! `state/checkpoint.json` holds the applied state (last applied log id, membership, topics,
//! offsets, recent ids) together with the dispatch position it matches. It is written after
//! the ConsumeQueues and key index are flushed, at most every [`CHECKPOINT_INTERVAL`]. The
//! flush and a copy of the state happen under the state lock; serialising and writing the
//! copy happen on a `checkpoint` thread, so apply (and every write waiting for it) does not
//! stall for the whole-state write. On restart the derived files are cut back to the
//! checkpoint's position and openraft re-applies everything after it, which reproduces the
//! same offsets (apply is idempotent); a crash before a background write lands simply
//! restarts from the previous checkpoint.
//!
//! # Snapshots = state at the retention boundary
//!
//! openraft never builds snapshots on its own here (`SnapshotPolicy::Never`). Whenever apply
//! starts a new CommitLog segment, the state as of the last entry of the previous segment is
//! kept as a *segment mark* (`state/marks/<segment base>.json`). Retention deletes whole
//! segments; the snapshot it asks openraft to build is the mark of the newest deleted segment,
//! whose last log id is exactly the boundary B, and it then purges the log up to B. A follower
//! that needs entries below B installs that snapshot: its CommitLog restarts empty at B + 1
//! and at the byte position of the next segment, its queues restart at the offsets they had
//! at B, and every retained entry after B then arrives by ordinary replication. A snapshot
//! therefore never skips a retained message.
//!
//! # Layout
//!
//! * this file: the replicated state ([`AppliedState`]), the shared core behind openraft's
//!   [`StateMachine`] and the broker's [`SmHandle`], [`StateMachine::open`] and openraft's
//!   `RaftStateMachine` implementation, which hands each piece of work to the files below;
//! * `commands.rs`: what the log carries besides messages and what apply answers —
//!   [`TopicConfig`] (with [`Perm`], [`TopicMessageType`]), [`InternalCommand`], [`Place`]
//!   and the batch-result encoding;
//! * `apply.rs`: applying one entry (message batches, internal commands, membership) and the
//!   message metrics;
//! * `checkpoint.rs`: writing and loading `state/checkpoint.json`;
//! * `snapshot.rs`: segment marks, the retention boundary, and building and installing
//!   snapshots ([`SnapshotBuilder`]);
//! * `queries.rs`: the broker's reads of the applied state ([`SmHandle`]'s query methods).
//!
//! A new part of the replicated state (users and access policies, say) is a field of
//! [`AppliedState`], its commands are [`InternalCommand`] variants in `commands.rs`, their
//! effect is an arm of `SmCore::apply_internal` in `apply.rs`, and its reads go in
//! `queries.rs` (or a file of its own). Checkpoints and snapshots carry the whole
//! [`AppliedState`], so they need no change; give the field `#[serde(default)]` so that
//! checkpoints, marks and snapshots written before it still load.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use futures::{Stream, TryStreamExt};
use openraft::OptionalSend;
use openraft::storage::{EntryResponder, RaftStateMachine};
use serde::{Deserialize, Serialize};

use super::consume::ConsumeState;
use super::dedupe::DedupeWindow;
use super::pending::PendingState;
use super::types::{
    CommandResponse, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::storage::commitlog::CommitLog;
use crate::storage::dispatch::{DispatchConfig, Dispatcher};
use crate::storage::error::StoreError;

mod apply;
mod checkpoint;
pub mod codec;
pub mod command_batch;
mod commands;
mod queries;
mod snapshot;

use apply::MetricsOrigin;
use checkpoint::CheckpointFile;

pub use super::dedupe::DEDUPE_WINDOW;
pub use checkpoint::CHECKPOINT_INTERVAL;
pub use commands::{
    INTERNAL_BATCH_KIND, INTERNAL_BIN_KIND, INTERNAL_JSON_KIND, InternalCommand, PENDING_OFFSET,
    Perm, Place, TopicConfig, TopicMessageType, decode_batch_result, encode_batch_result,
};
pub use queries::{ConsumeEvent, ConsumerLag, FoundMessage};
pub use snapshot::SnapshotBuilder;

/// The replicated state (checkpointed, and carried by snapshots).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedState {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership,
    /// Topics.
    pub topics: BTreeMap<String, TopicConfig>,
    /// group → topic → queue → next offset to consume.
    pub offsets: BTreeMap<String, BTreeMap<String, BTreeMap<u32, u64>>>,
    /// Next queue offset per topic and queue (what dispatch assigns next).
    pub next_offsets: BTreeMap<String, BTreeMap<u32, u64>>,
    /// Recent message ids (keyed by topic and id).
    dedupe: DedupeWindow,
    /// Consumer groups and their delivery state.
    pub consume: ConsumeState,
    /// Delay messages before their time and transaction half messages.
    #[serde(default)]
    pub pending: PendingState,
    /// Dispatch position matching `last_applied`: (index, end position of that record).
    pub dispatched: Option<(u64, u64)>,
    /// Base of the CommitLog segment holding the last applied entry.
    pub current_segment: Option<u64>,
    /// Users and access policies (ACL); absent in checkpoints written before ACL existed.
    #[serde(default)]
    pub acl: crate::acl::AclState,
}

/// The applied state and the stores derived from it (ConsumeQueues, key index), under one
/// lock: apply writes, the broker's reads share it.
struct SmInner {
    state: AppliedState,
    dispatcher: Dispatcher,
    last_checkpoint: Instant,
    dirty: bool,
}

/// Shared core of the state machine: openraft's handle and the broker's read handle.
struct SmCore {
    dir: PathBuf,
    log: Arc<CommitLog>,
    inner: RwLock<SmInner>,
    current_snapshot: Mutex<Option<(SnapshotMeta, Vec<u8>)>>,
    /// Segment base whose mark the next snapshot is built from (set by retention).
    snapshot_target: Mutex<Option<u64>>,
    /// Last applied index, for long-polling readers.
    applied_tx: tokio::sync::watch::Sender<u64>,
    /// Which entries this process proposed, for the message metrics (see
    /// [`SmHandle::count_messages_of`]).
    metrics_origin: OnceLock<MetricsOrigin>,
    /// Writes of `checkpoint.json`, serialised (see [`CheckpointFile`]).
    checkpoint_file: Arc<Mutex<CheckpointFile>>,
    /// A background checkpoint write is running: the next one waits for the next interval.
    checkpoint_busy: Arc<std::sync::atomic::AtomicBool>,
}

/// openraft's side of the state machine.
pub struct StateMachine {
    core: Arc<SmCore>,
}

/// The broker's read side of the state machine (topics, queues, offsets).
#[derive(Clone)]
pub struct SmHandle {
    core: Arc<SmCore>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn lock_err<T>(_: T) -> io::Error {
    io::Error::other("state machine lock poisoned")
}

impl StateMachine {
    /// Open (or create) the state under `data_dir/state`, cutting the derived ConsumeQueue and
    /// key index back to the last checkpoint so re-applied entries reproduce them exactly.
    pub fn open(
        data_dir: &Path,
        log: Arc<CommitLog>,
    ) -> Result<(StateMachine, SmHandle), StoreError> {
        let dir = data_dir.join("state");
        std::fs::create_dir_all(dir.join("marks")).map_err(|e| StoreError::io(&dir, e))?;
        let state = checkpoint::load_checkpoint(&dir)?;
        let mut dispatcher = Dispatcher::open(data_dir, DispatchConfig::default())?;
        dispatcher.reset_to(state.dispatched)?;
        let snapshot = snapshot::load_current_snapshot(&dir)?;
        let core = Arc::new(SmCore {
            dir,
            log,
            inner: RwLock::new(SmInner {
                state,
                dispatcher,
                last_checkpoint: Instant::now(),
                dirty: false,
            }),
            current_snapshot: Mutex::new(snapshot),
            snapshot_target: Mutex::new(None),
            applied_tx: tokio::sync::watch::channel(0).0,
            metrics_origin: OnceLock::new(),
            checkpoint_file: Arc::new(Mutex::new(CheckpointFile::default())),
            checkpoint_busy: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        });
        Ok((
            StateMachine {
                core: Arc::clone(&core),
            },
            SmHandle { core },
        ))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let g = self.core.inner.read().map_err(lock_err)?;
        Ok((g.state.last_applied, g.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id;
            crate::hops::mark(crate::hops::Hop::ApplyIn, log_id.index);
            let mut g = self.core.inner.write().map_err(lock_err)?;
            let data = self.core.apply_entry(&mut g, &entry)?;
            if g.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                self.core.checkpoint_in_background(&mut g)?;
            }
            drop(g);
            self.core.applied_tx.send_replace(log_id.index);
            if let Some(r) = responder {
                r.send(CommandResponse {
                    index: log_id.index,
                    data,
                });
            }
            crate::hops::mark(crate::hops::Hop::ApplyOut, log_id.index);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            core: Arc::clone(&self.core),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        self.core.install_snapshot(meta, snapshot.into_inner())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let cur = self.core.current_snapshot.lock().map_err(lock_err)?;
        Ok(cur.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: std::io::Cursor::new(data.clone()),
        }))
    }
}
