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
//! * **internal commands** (kind [`INTERNAL_JSON_KIND`], JSON-encoded [`InternalCommand`]):
//!   topic create/update/delete and consumer-group offsets. Everything that must survive a
//!   failover is a log entry; nothing is synchronised out of band.
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

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};

use super::consume::{ConsumeState, GroupConfig, HandleOutcome, Pop};
use super::dedupe::{self, DedupeWindow};
use super::pending::{self, HalfMessage, PendingMessage, PendingState, TxOutcome};
use super::types::{
    CommandResponse, LogId, NodeId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership,
    TypeConfig,
};
use crate::storage::commitlog::CommitLog;
use crate::storage::dispatch::{DispatchConfig, Dispatcher, Disposition};
use crate::storage::error::StoreError;
use crate::storage::fsutil;
use crate::storage::message::{self, MessageType, MessageView};
use crate::storage::record::RecordKind;

/// Record kind of JSON-encoded internal commands.
pub const INTERNAL_JSON_KIND: u8 = RecordKind::FIRST_INTERNAL;

/// How often, at most, the applied state is checkpointed. The checkpoint encodes the whole
/// state (the recent-id window, 28 bytes per id, dominates it) under the apply lock, so it is
/// kept rare; a
/// restart re-applies at most this much of the log, which is idempotent.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

pub use super::dedupe::DEDUPE_WINDOW;

/// Read/write permission of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Perm {
    /// Readable and writable.
    #[serde(rename = "rw")]
    ReadWrite,
    /// Read only.
    #[serde(rename = "r")]
    Read,
    /// Write only.
    #[serde(rename = "w")]
    Write,
}

impl Perm {
    /// Producers may write.
    pub fn writable(self) -> bool {
        matches!(self, Perm::ReadWrite | Perm::Write)
    }
    /// Consumers may read.
    pub fn readable(self) -> bool {
        matches!(self, Perm::ReadWrite | Perm::Read)
    }
}

impl std::fmt::Display for Perm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Perm::ReadWrite => "rw",
            Perm::Read => "r",
            Perm::Write => "w",
        })
    }
}

impl std::str::FromStr for Perm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rw" => Ok(Perm::ReadWrite),
            "r" => Ok(Perm::Read),
            "w" => Ok(Perm::Write),
            o => Err(format!("perm must be rw, r or w, not `{o}`")),
        }
    }
}

/// The message type a topic accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicMessageType {
    /// Normal messages.
    Normal,
    /// FIFO (message groups, in order).
    Fifo,
    /// Delay / timer messages.
    Delay,
    /// Transactional messages.
    Transaction,
}

impl std::fmt::Display for TopicMessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopicMessageType::Normal => "normal",
            TopicMessageType::Fifo => "fifo",
            TopicMessageType::Delay => "delay",
            TopicMessageType::Transaction => "transaction",
        })
    }
}

impl std::str::FromStr for TopicMessageType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "normal" => Ok(TopicMessageType::Normal),
            "fifo" => Ok(TopicMessageType::Fifo),
            "delay" => Ok(TopicMessageType::Delay),
            "transaction" => Ok(TopicMessageType::Transaction),
            o => Err(format!(
                "message type must be normal, fifo, delay or transaction, not `{o}`"
            )),
        }
    }
}

/// A topic's configuration (replicated through the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Topic name.
    pub name: String,
    /// Number of queues.
    pub queues: u32,
    /// Permission.
    pub perm: Perm,
    /// Accepted message type.
    pub message_type: TopicMessageType,
}

impl TopicConfig {
    /// RocketMQ's topic naming rule and a sane queue count.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 127 {
            return Err("topic name must be 1..=127 characters".into());
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '%' | '|'))
        {
            return Err(format!(
                "topic name `{}` may only contain letters, digits, `_`, `-`, `%` and `|`",
                self.name
            ));
        }
        if self.queues == 0 || self.queues > 1024 {
            return Err(format!("queues must be 1..=1024, not {}", self.queues));
        }
        Ok(())
    }
}

/// Internal commands, JSON-encoded in entries of kind [`INTERNAL_JSON_KIND`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum InternalCommand {
    /// Create or update a topic.
    UpsertTopic {
        /// The new configuration.
        topic: TopicConfig,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Create or update a consumer group's configuration.
    UpsertGroup {
        /// The configuration.
        group: GroupConfig,
    },
    /// Delete a consumer group (its configuration and delivery state).
    DeleteGroup {
        /// Group name.
        name: String,
    },
    /// A delivery decided by the leader (see `consume`).
    Pop(Pop),
    /// Ack one delivery.
    Ack {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Queue id.
        queue: u32,
        /// Queue offset.
        offset: u64,
        /// Delivery sequence from the receipt handle.
        seq: u64,
    },
    /// Ack several deliveries of one group and topic at once (one AckMessage request).
    AckMany {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// (queue, offset, seq) of each delivery.
        items: Vec<(u32, u64, u64)>,
    },
    /// Change the invisible time of one delivery; it gets a new sequence (new handle).
    ChangeInvisible {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Queue id.
        queue: u32,
        /// Queue offset.
        offset: u64,
        /// Delivery sequence from the receipt handle.
        seq: u64,
        /// New deadline (ms since the epoch).
        until_ms: i64,
        /// New delivery sequence.
        new_seq: u64,
    },
    /// Extend the invisibility of deliveries a client still holds (auto-renew), keeping
    /// their sequences (the client's handles stay valid).
    Renew {
        /// Consumer group (the delivery-state key).
        group: String,
        /// Topic.
        topic: String,
        /// Queue id.
        queue: u32,
        /// (offset, seq) of each delivery.
        items: Vec<(u64, u64)>,
        /// New deadline (ms since the epoch).
        until_ms: i64,
    },
    /// Roll back (or discard) a transaction half message. COMMIT is not a command: it is the
    /// committed copy of the message, appended as a message batch (see `pending`).
    EndTransaction {
        /// Topic.
        topic: String,
        /// Message id.
        message_id: String,
        /// `rolled_back` or `discarded`.
        outcome: TxOutcome,
    },
    /// Check-backs of half messages were sent at `at_ms`.
    TxChecked {
        /// `pending::key`s of the half messages checked.
        keys: Vec<String>,
        /// When.
        at_ms: i64,
    },
    /// Set a consumer group's committed offset for one queue.
    CommitOffset {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Queue id.
        queue: u32,
        /// Next offset to consume.
        offset: u64,
    },
}

/// [`Place::offset`] of a message that is stored but in no queue yet (a delay message before
/// its time, a transaction half message).
pub const PENDING_OFFSET: u64 = u64::MAX;

/// Where one message of a batch ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue: u32,
    /// Queue offset; [`PENDING_OFFSET`] while the message waits (delay, transaction).
    pub offset: u64,
    /// The message id had been stored before; this is the original's place.
    pub duplicate: bool,
}

fn outcome(o: HandleOutcome) -> Bytes {
    match o {
        HandleOutcome::Ok => Bytes::from_static(b"ok"),
        HandleOutcome::Stale => Bytes::from_static(b"stale"),
    }
}

/// Encode the per-message results of a batch: `u32 count`, then per message `u16 topic
/// length, topic, u32 queue, u64 offset, u8 duplicate`.
pub fn encode_batch_result(places: &[Place]) -> Bytes {
    let mut v = Vec::with_capacity(4 + places.len() * 24);
    v.extend_from_slice(&(places.len() as u32).to_le_bytes());
    for p in places {
        v.extend_from_slice(&(p.topic.len() as u16).to_le_bytes());
        v.extend_from_slice(p.topic.as_bytes());
        v.extend_from_slice(&p.queue.to_le_bytes());
        v.extend_from_slice(&p.offset.to_le_bytes());
        v.push(p.duplicate as u8);
    }
    Bytes::from(v)
}

/// Inverse of [`encode_batch_result`].
pub fn decode_batch_result(b: &[u8]) -> Result<Vec<Place>, String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = b.get(at..at + n).ok_or("truncated batch result")?;
        at += n;
        Ok(s)
    };
    let n = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "bad count")?) as usize;
    let mut out = Vec::with_capacity(n.min(65_536));
    for _ in 0..n {
        let tl = u16::from_le_bytes(take(2)?.try_into().map_err(|_| "bad length")?) as usize;
        let topic = String::from_utf8(take(tl)?.to_vec()).map_err(|_| "topic not utf-8")?;
        let queue = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "bad queue")?);
        let offset = u64::from_le_bytes(take(8)?.try_into().map_err(|_| "bad offset")?);
        let duplicate = take(1)?[0] != 0;
        out.push(Place {
            topic,
            queue,
            offset,
            duplicate,
        });
    }
    Ok(out)
}

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
}

/// What a snapshot carries: the state as of its boundary plus where the log resumes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotBody {
    state: AppliedState,
    /// Byte position of entry `boundary + 1` (always the first byte of a segment) when the
    /// snapshot was built at a retention mark; `None` for a snapshot of the applied state
    /// (built only when openraft forces one before any segment was sealed).
    next_pos: Option<u64>,
}

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

/// The checkpoint file's writer state. Writes happen on a blocking thread while apply goes
/// on (serialising and fsyncing the whole applied state took tens of milliseconds under the
/// state lock, and every write in flight waited for it); this lock orders them so an older
/// state never replaces a newer one, and keeps a failed write for apply to report.
#[derive(Default)]
struct CheckpointFile {
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

/// What identifies the entries proposed by this process.
#[derive(Debug, Clone, Copy)]
struct MetricsOrigin {
    node: NodeId,
    start_term: u64,
    start_next_index: u64,
}

/// Consumer lag of one queue for one group, computed from the applied state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerLag {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue: u32,
    /// Queue max offset (one past the last message) minus the group's ack offset (its first
    /// unacknowledged offset, never below the queue's min offset).
    pub lag: u64,
}

/// A message found by id or key.
#[derive(Debug, Clone)]
pub struct FoundMessage {
    /// CommitLog position.
    pub pos: u64,
    /// Queue offset, if it is in a queue.
    pub queue_offset: Option<u64>,
    /// The message.
    pub message: MessageView,
}

/// One event of a message's consume history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeEvent {
    /// Delivered to a group (a Pop).
    Delivered {
        /// Delivery-state key (group, or `group@client` for broadcasting).
        group: String,
        /// Delivery attempt.
        attempt: u32,
        /// When (leader clock, ms).
        at_ms: i64,
        /// Invisible until (ms).
        invisible_until_ms: i64,
        /// Raft index of the Pop.
        raft_index: u64,
    },
    /// Acked by a group.
    Acked {
        /// Delivery-state key.
        group: String,
        /// Raft index of the Ack.
        raft_index: u64,
    },
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
        let ck = dir.join("checkpoint.json");
        let state: AppliedState = match std::fs::read(&ck) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError::corrupt(&ck, 0, format!("unreadable checkpoint: {e}")))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => AppliedState::default(),
            Err(e) => return Err(StoreError::io(&ck, e)),
        };
        let mut dispatcher = Dispatcher::open(data_dir, DispatchConfig::default())?;
        dispatcher.reset_to(state.dispatched)?;
        let snapshot = load_current_snapshot(&dir)?;
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

fn load_current_snapshot(dir: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
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
    /// Write the checkpoint now, waiting for a background write still running.
    fn checkpoint(&self, inner: &mut SmInner) -> io::Result<()> {
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
    fn checkpoint_in_background(&self, inner: &mut SmInner) -> io::Result<()> {
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
    fn enter_segment(&self, inner: &mut SmInner, index: u64) -> io::Result<()> {
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

    /// Apply one entry; returns the writer's response bytes.
    fn apply_entry(&self, inner: &mut SmInner, entry: &super::types::Entry) -> io::Result<Bytes> {
        let log_id = entry.log_id;
        self.enter_segment(inner, log_id.index)?;
        let data = match &entry.payload {
            EntryPayload::Blank => Bytes::new(),
            EntryPayload::Membership(m) => {
                inner.state.membership = StoredMembership::new(Some(log_id), m.clone());
                Bytes::new()
            }
            EntryPayload::Normal(cmd) if cmd.kind == RecordKind::MESSAGE_BATCH.0 => {
                let places = self.apply_messages(inner, log_id)?;
                encode_batch_result(&places)
            }
            EntryPayload::Normal(cmd) if cmd.kind == INTERNAL_JSON_KIND => {
                self.apply_internal(inner, &cmd.data)
            }
            EntryPayload::Normal(cmd) => {
                // A kind from a newer version: skipped identically on every replica.
                tracing::warn!(
                    "skipping entry {} of unknown command kind {}",
                    log_id.index,
                    cmd.kind
                );
                Bytes::new()
            }
        };
        inner.state.last_applied = Some(log_id);
        inner.dirty = true;
        Ok(data)
    }

    fn apply_messages(&self, inner: &mut SmInner, log_id: LogId) -> io::Result<Vec<Place>> {
        let record = self.log.read(log_id.index)?;
        let views = message::decode_batch(&record.payload).map_err(io_err)?;
        let base = record.payload_pos();
        let mut places: Vec<Option<Place>> = Vec::with_capacity(views.len());
        let mut keep = Vec::with_capacity(views.len());
        // Newly stored messages (not retries, not broker copies), for the metrics.
        let mut fresh = Vec::with_capacity(views.len());
        let mut batch_ids: std::collections::HashSet<u128> = std::collections::HashSet::new();
        let mut later_dups: Vec<(usize, &str, u128)> = Vec::new();
        let st = &mut inner.state;
        for v in &views {
            let key = dedupe::key(&v.topic, &v.message_id);
            let pending_msg = || PendingMessage {
                topic: v.topic.to_string(),
                message_id: v.message_id.to_string(),
                pos: base + u64::from(v.offset_in_batch),
                size: v.len,
            };
            let pending_place = Place {
                topic: v.topic.to_string(),
                queue: v.queue_id,
                offset: PENDING_OFFSET,
                duplicate: false,
            };
            let duplicate = |p: Option<Place>| {
                let mut p = p.unwrap_or_else(|| pending_place.clone());
                p.duplicate = true;
                p
            };
            // The decision depends only on the message and the replicated state, so every
            // replica makes the same one (see `pending`).
            let (slot, kept, is_fresh) = match v.msg_type {
                MessageType::Delay if v.delivery_timestamp_ms > v.store_timestamp_ms => {
                    match st.dedupe.get(&v.topic, key) {
                        Some(p) => (Some(duplicate(Some(p))), false, false),
                        None => {
                            st.pending.add_timer(v.delivery_timestamp_ms, pending_msg());
                            st.dedupe.insert(key, v.queue_id, PENDING_OFFSET);
                            (Some(pending_place), false, true)
                        }
                    }
                }
                // The fired copy of a pending delay message.
                MessageType::Delay
                    if st
                        .pending
                        .take_timer(v.delivery_timestamp_ms, &v.topic, &v.message_id) =>
                {
                    (None, true, false)
                }
                MessageType::TransactionHalf => match st.dedupe.get(&v.topic, key) {
                    Some(p) => (Some(duplicate(Some(p))), false, false),
                    None => {
                        st.pending.add_half(HalfMessage {
                            msg: pending_msg(),
                            stored_ms: v.store_timestamp_ms,
                            checks: 0,
                            last_check_ms: 0,
                        });
                        st.dedupe.insert(key, v.queue_id, PENDING_OFFSET);
                        (Some(pending_place), false, true)
                    }
                },
                MessageType::TransactionCommitted => {
                    let k = pending::key(&v.topic, &v.message_id);
                    if st.pending.resolve(&k, TxOutcome::Committed).is_some() {
                        (None, true, false)
                    } else {
                        // Resolved before: this copy changes nothing.
                        (Some(duplicate(st.dedupe.get(&v.topic, key))), false, false)
                    }
                }
                _ => match st.dedupe.get(&v.topic, key) {
                    Some(p) => (Some(duplicate(Some(p))), false, false),
                    // The same id earlier in this batch (requests are batched together, so a
                    // producer's retry can share an entry with its original): stored once.
                    None if !batch_ids.insert(key) => {
                        later_dups.push((places.len(), v.topic.as_str(), key));
                        (None, false, false)
                    }
                    None => (None, true, true),
                },
            };
            places.push(slot);
            keep.push(kept);
            fresh.push(is_fresh);
        }
        let mut k = keep.iter().zip(&fresh);
        let dispatched = inner
            .dispatcher
            .dispatch_with(&record, |_v: &MessageView| {
                match k.next() {
                    Some((true, _)) | None => Disposition::Queue,
                    // A newly stored waiting message (delay, half): findable by id and key now.
                    Some((false, true)) => Disposition::IndexOnly,
                    Some((false, false)) => Disposition::Skip,
                }
            })?;
        if dispatched.len() != views.len() {
            return Err(io::Error::other(
                "dispatch returned a result count unlike the batch",
            ));
        }
        for ((v, slot), (d, kept)) in views
            .iter()
            .zip(places.iter_mut())
            .zip(dispatched.into_iter().zip(&keep))
        {
            if slot.is_none() && *kept {
                let Some(x) = d else {
                    return Err(io::Error::other(
                        "dispatch skipped a message it was asked to keep",
                    ));
                };
                let p = Place {
                    topic: x.topic.clone(),
                    queue: x.queue_id,
                    offset: x.offset,
                    duplicate: false,
                };
                inner
                    .state
                    .next_offsets
                    .entry(x.topic)
                    .or_default()
                    .insert(x.queue_id, x.offset + 1);
                inner.state.dedupe.insert(
                    dedupe::key(&v.topic, &v.message_id),
                    x.queue_id,
                    x.offset,
                );
                *slot = Some(p);
            }
        }
        // In-batch repeats get the place their first occurrence got just above.
        for (i, topic, key) in later_dups {
            let mut p = inner
                .state
                .dedupe
                .get(topic, key)
                .ok_or_else(|| io::Error::other("in-batch duplicate without an original"))?;
            p.duplicate = true;
            if let Some(slot) = places.get_mut(i) {
                *slot = Some(p);
            }
        }
        inner.state.dispatched = inner.dispatcher.last_dispatched();
        if self.proposed_here(log_id) {
            count_messages_in(
                views
                    .iter()
                    .zip(&fresh)
                    .filter(|(_, f)| **f)
                    .map(|(v, _)| v),
            );
        }
        Ok(places.into_iter().flatten().collect())
    }

    /// Whether this process proposed the entry `log_id` (see [`SmHandle::count_messages_of`]).
    fn proposed_here(&self, log_id: LogId) -> bool {
        self.metrics_origin.get().is_some_and(|o| {
            log_id.leader_id.node_id == o.node
                && (log_id.leader_id.term > o.start_term || log_id.index >= o.start_next_index)
        })
    }

    fn apply_internal(&self, inner: &mut SmInner, data: &[u8]) -> Bytes {
        let cmd: InternalCommand = match serde_json::from_slice(data) {
            Ok(c) => c,
            // Deterministic on every replica: an undecodable command is skipped.
            Err(e) => return Bytes::from(format!("ignored: undecodable internal command: {e}")),
        };
        match cmd {
            InternalCommand::UpsertTopic { topic } => {
                let created = !inner.state.topics.contains_key(&topic.name);
                let name = topic.name.clone();
                inner.state.topics.insert(name.clone(), topic);
                Bytes::from(if created {
                    format!("created {name}")
                } else {
                    format!("updated {name}")
                })
            }
            InternalCommand::DeleteTopic { name } => match inner.state.topics.remove(&name) {
                Some(_) => {
                    for g in inner.state.offsets.values_mut() {
                        g.remove(&name);
                    }
                    inner.state.consume.remove_topic(&name);
                    Bytes::from(format!("deleted {name}"))
                }
                None => Bytes::from(format!("no such topic {name}")),
            },
            InternalCommand::UpsertGroup { group } => {
                let name = group.name.clone();
                inner.state.consume.groups.insert(name.clone(), group);
                Bytes::from(format!("group {name} configured"))
            }
            InternalCommand::DeleteGroup { name } => {
                let existed = inner.state.consume.groups.remove(&name).is_some();
                let had_state = inner.state.consume.queues.remove(&name).is_some();
                inner.state.offsets.remove(&name);
                Bytes::from(if existed || had_state {
                    format!("deleted group {name}")
                } else {
                    format!("no such group {name}")
                })
            }
            InternalCommand::Pop(p) => {
                inner.state.consume.apply_pop(&p);
                Bytes::from_static(b"ok")
            }
            InternalCommand::Ack {
                group,
                topic,
                queue,
                offset,
                seq,
            } => outcome(
                inner
                    .state
                    .consume
                    .apply_ack(&group, &topic, queue, offset, seq),
            ),
            InternalCommand::AckMany {
                group,
                topic,
                items,
            } => {
                // One byte per item: 1 = acked, 0 = stale.
                let out: Vec<u8> = items
                    .iter()
                    .map(|(q, o, s)| {
                        u8::from(
                            inner.state.consume.apply_ack(&group, &topic, *q, *o, *s)
                                == HandleOutcome::Ok,
                        )
                    })
                    .collect();
                Bytes::from(out)
            }
            InternalCommand::ChangeInvisible {
                group,
                topic,
                queue,
                offset,
                seq,
                until_ms,
                new_seq,
            } => outcome(
                inner
                    .state
                    .consume
                    .apply_change_invisible(&group, &topic, queue, offset, seq, until_ms, new_seq),
            ),
            InternalCommand::Renew {
                group,
                topic,
                queue,
                items,
                until_ms,
            } => {
                let renewed = inner
                    .state
                    .consume
                    .apply_renew(&group, &topic, queue, &items, until_ms);
                Bytes::from(format!("renewed {renewed}"))
            }
            InternalCommand::EndTransaction {
                topic,
                message_id,
                outcome,
            } => {
                let k = pending::key(&topic, &message_id);
                match inner.state.pending.resolve(&k, outcome) {
                    Some(_) => Bytes::from_static(b"ok"),
                    None => match inner.state.pending.resolved.get(&k) {
                        Some(o) => Bytes::from(format!("resolved: {o}")),
                        None => Bytes::from_static(b"unknown"),
                    },
                }
            }
            InternalCommand::TxChecked { keys, at_ms } => {
                for k in &keys {
                    inner.state.pending.checked(k, at_ms);
                }
                Bytes::from_static(b"ok")
            }
            InternalCommand::CommitOffset {
                group,
                topic,
                queue,
                offset,
            } => {
                inner
                    .state
                    .offsets
                    .entry(group)
                    .or_default()
                    .entry(topic)
                    .or_default()
                    .insert(queue, offset);
                Bytes::from_static(b"ok")
            }
        }
    }
}

/// Count newly stored messages: `rocketmq_messages_in_total` and
/// `rocketmq_throughput_in_total` (body bytes), by topic.
fn count_messages_in<'a>(stored: impl Iterator<Item = &'a MessageView>) {
    let mut by_topic: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for v in stored {
        let e = by_topic.entry(v.topic.as_str()).or_default();
        e.0 += 1;
        e.1 += v.body.len() as u64;
    }
    for (topic, (n, bytes)) in by_topic {
        metrics::counter!("rocketmq_messages_in_total", "topic" => topic.to_string()).increment(n);
        metrics::counter!("rocketmq_throughput_in_total", "topic" => topic.to_string())
            .increment(bytes);
    }
}

impl SmHandle {
    /// Count in the message metrics the batches that node `me` proposes from now on: entries
    /// led by `me` in a term above `start_term` (the term of the vote this process started
    /// with), or at an index from `start_next_index` on (one past the last entry in the log
    /// when this process opened it; a single-node group resumes leading in the same term).
    /// An earlier process's entries that it applied (and so counted) were in its log, so
    /// they fail both tests and are not counted again when re-applied after a restart. Set
    /// once, before Raft starts; without it nothing is counted.
    pub fn count_messages_of(&self, me: NodeId, start_term: u64, start_next_index: u64) {
        let _ = self.core.metrics_origin.set(MetricsOrigin {
            node: me,
            start_term,
            start_next_index,
        });
    }

    /// Consumer lag of every queue of every topic a group has consumed from, as applied here.
    pub fn consumer_lag(&self) -> Vec<ConsumerLag> {
        let Some(g) = self.read() else {
            return Vec::new();
        };
        let cq = g.dispatcher.consume_queue();
        let mut out = Vec::new();
        for (group, topics) in &g.state.consume.queues {
            for (topic, queues) in topics {
                let Some(t) = g.state.topics.get(topic) else {
                    continue; // deleted topic
                };
                for q in 0..t.queues {
                    let max = cq.max_offset(topic, q).unwrap_or(0);
                    let min = cq.min_offset(topic, q).unwrap_or(0);
                    let ack = queues.get(&q).map_or(0, |s| s.ack_offset()).max(min);
                    out.push(ConsumerLag {
                        group: group.clone(),
                        topic: topic.clone(),
                        queue: q,
                        lag: max.saturating_sub(ack),
                    });
                }
            }
        }
        out
    }

    fn read(&self) -> Option<std::sync::RwLockReadGuard<'_, SmInner>> {
        self.core.inner.read().ok()
    }

    /// A topic's configuration as applied here.
    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.read()?.state.topics.get(name).cloned()
    }

    /// All topics.
    pub fn topics(&self) -> Vec<TopicConfig> {
        self.read()
            .map(|g| g.state.topics.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The place of a message id recently stored in `topic`.
    pub fn find_duplicate(&self, topic: &str, id: &str) -> Option<Place> {
        self.read()?.state.dedupe.get(topic, dedupe::key(topic, id))
    }

    /// Changes whenever an entry is applied (long polling waits on it).
    pub fn subscribe_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.core.applied_tx.subscribe()
    }

    /// A consumer group's configuration (defaults if never configured).
    pub fn group_config(&self, name: &str) -> GroupConfig {
        self.read()
            .map(|g| g.state.consume.group(name))
            .unwrap_or_else(|| GroupConfig::default_for(name))
    }

    /// Whether a group was configured explicitly.
    pub fn group_exists(&self, name: &str) -> bool {
        self.read()
            .is_some_and(|g| g.state.consume.groups.contains_key(name))
    }

    /// All configured groups.
    pub fn groups(&self) -> Vec<GroupConfig> {
        self.read()
            .map(|g| g.state.consume.groups.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The earliest due time of a pending delay message.
    pub fn next_due(&self) -> Option<i64> {
        self.read()?.state.pending.next_due()
    }

    /// Up to `max` delay messages due at `now_ms`: (due time, message).
    pub fn due_timers(&self, now_ms: i64, max: usize) -> Vec<(i64, PendingMessage)> {
        self.read()
            .map(|g| g.state.pending.due(now_ms, max))
            .unwrap_or_default()
    }

    /// A pending transaction half message.
    pub fn half(&self, topic: &str, message_id: &str) -> Option<HalfMessage> {
        self.read()?
            .state
            .pending
            .halves
            .get(&pending::key(topic, message_id))
            .cloned()
    }

    /// How a recent transaction ended, if it did.
    pub fn tx_resolution(&self, topic: &str, message_id: &str) -> Option<TxOutcome> {
        self.read()?
            .state
            .pending
            .resolved
            .get(&pending::key(topic, message_id))
            .copied()
    }

    /// Half messages due for a check-back (see [`PendingState::to_check`]).
    pub fn halves_to_check(&self, now_ms: i64, interval_ms: i64) -> Vec<(String, HalfMessage)> {
        self.read()
            .map(|g| g.state.pending.to_check(now_ms, interval_ms))
            .unwrap_or_default()
    }

    /// Pending (delay, half) message counts.
    pub fn pending_counts(&self) -> (usize, usize) {
        self.read()
            .map(|g| (g.state.pending.timer_count(), g.state.pending.halves.len()))
            .unwrap_or_default()
    }

    /// Deliveries that expired on their last allowed attempt, as of `now_ms`:
    /// (group, topic, queue, offset, seq). The leader dead-letters them.
    pub fn exhausted(&self, now_ms: i64) -> Vec<(String, String, u32, u64, u64)> {
        let Some(g) = self.read() else {
            return Vec::new();
        };
        let c = &g.state.consume;
        let mut out = Vec::new();
        for (group, topics) in &c.queues {
            let max = c
                .group(super::consume::group_of_key(group))
                .max_delivery_attempts;
            for (topic, queues) in topics {
                for (q, st) in queues {
                    for (off, f) in &st.inflight {
                        if f.invisible_until_ms <= now_ms && f.attempt >= max {
                            out.push((group.clone(), topic.clone(), *q, *off, f.seq));
                        }
                    }
                }
            }
        }
        out
    }

    /// Delivery state of one queue for a group.
    pub fn queue_state(
        &self,
        group: &str,
        topic: &str,
        queue: u32,
    ) -> crate::raft::consume::QueueState {
        self.read()
            .and_then(|g| g.state.consume.queue(group, topic, queue).cloned())
            .unwrap_or_default()
    }

    /// ConsumeQueue units of one queue from `from` (at most `max`), with min and max offsets.
    pub fn units(
        &self,
        topic: &str,
        queue: u32,
        from: u64,
        max: usize,
    ) -> (Vec<crate::storage::consumequeue::CqUnit>, u64, u64) {
        let Some(g) = self.read() else {
            return (Vec::new(), 0, 0);
        };
        let cq = g.dispatcher.consume_queue();
        let min = self.readable_min(cq, topic, queue);
        let max_off = cq.max_offset(topic, queue).unwrap_or(0);
        (cq.range(topic, queue, from.max(min), max), min, max_off)
    }

    /// First offset of a queue whose message is still in the CommitLog. Segments can be
    /// deleted (openraft purges after every snapshot it builds, on every node) before
    /// [`after_purge`](Self::after_purge) drops the ConsumeQueue units that point into them;
    /// until then those units are expired, not readable. Positions grow with offsets, so a
    /// binary search finds the boundary.
    fn readable_min(
        &self,
        cq: &crate::storage::consumequeue::ConsumeQueueStore,
        topic: &str,
        queue: u32,
    ) -> u64 {
        let (mut lo, mut hi) = (
            cq.min_offset(topic, queue).unwrap_or(0),
            cq.max_offset(topic, queue).unwrap_or(0),
        );
        let Ok(first) = self.core.log.first_position() else {
            return lo;
        };
        // The common case (nothing purged under the queue): one lookup, no search.
        if cq.get(topic, queue, lo).is_none_or(|u| u.pos >= first) {
            return lo;
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match cq.get(topic, queue, mid) {
                Some(u) if u.pos < first => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }

    /// The message a ConsumeQueue unit points at.
    pub fn message_at(&self, pos: u64, size: u32) -> Result<MessageView, StoreError> {
        let bytes = self.core.log.read_bytes(pos, size as usize)?;
        message::decode_one(&bytes)
            .map_err(|e| StoreError::corrupt("commitlog", pos, format!("message: {e}")))
    }

    /// A consumer group's committed offset.
    pub fn offset(&self, group: &str, topic: &str, queue: u32) -> Option<u64> {
        self.read()?
            .state
            .offsets
            .get(group)?
            .get(topic)?
            .get(&queue)
            .copied()
    }

    /// Last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.read()?.state.last_applied
    }

    /// Messages of one queue from `from` (at most `max`), with min and max offsets.
    /// Returns (offset, commitlog position, message).
    #[allow(clippy::type_complexity)]
    pub fn read_queue(
        &self,
        topic: &str,
        queue: u32,
        from: u64,
        max: usize,
    ) -> Result<(Vec<(u64, u64, MessageView)>, u64, u64), StoreError> {
        let g = self
            .read()
            .ok_or_else(|| StoreError::Poisoned("state machine lock poisoned".into()))?;
        let cq = g.dispatcher.consume_queue();
        let min = self.readable_min(cq, topic, queue);
        let maxo = cq.max_offset(topic, queue).unwrap_or(0);
        let from = from.max(min);
        let units = cq.range(topic, queue, from, max);
        drop(g);
        let mut out = Vec::with_capacity(units.len());
        for (k, u) in units.into_iter().enumerate() {
            let bytes = self.core.log.read_bytes(u.pos, u.size as usize)?;
            let v = message::decode_one(&bytes).map_err(|e| {
                StoreError::corrupt("commitlog", u.pos, format!("message at queue offset: {e}"))
            })?;
            out.push((from + k as u64, u.pos, v));
        }
        Ok((out, min, maxo))
    }

    /// Messages of `topic` whose id or one of whose keys is `key`, newest first (at most
    /// `max`), through the key index; each with its queue offset when it is in a queue.
    pub fn find_messages(
        &self,
        topic: &str,
        key: &str,
        max: usize,
    ) -> Result<Vec<FoundMessage>, StoreError> {
        let candidates = {
            let g = self
                .read()
                .ok_or_else(|| StoreError::Poisoned("state machine lock poisoned".into()))?;
            g.dispatcher
                .key_index()
                .lookup(key, max.saturating_mul(4).max(16))?
        };
        let mut out = Vec::new();
        for pos in candidates {
            if out.len() >= max {
                break;
            }
            // A message starts with its total length (see `storage::message`).
            let head = self.core.log.read_bytes(pos, 4)?;
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let bytes = self.core.log.read_bytes(pos, len)?;
            let v = message::decode_one(&bytes)
                .map_err(|e| StoreError::corrupt("commitlog", pos, format!("message: {e}")))?;
            // Hashes collide: keep only real matches.
            let matches = v.message_id.as_str() == key || v.keys.iter().any(|k| k.as_str() == key);
            if v.topic.as_str() != topic || !matches {
                continue;
            }
            let queue_offset = self.offset_of(topic, v.queue_id, pos);
            out.push(FoundMessage {
                pos,
                queue_offset,
                message: v,
            });
        }
        Ok(out)
    }

    /// The queue offset of the message at CommitLog position `pos` (binary search: a
    /// queue's positions increase with its offsets).
    fn offset_of(&self, topic: &str, queue: u32, pos: u64) -> Option<u64> {
        let g = self.read()?;
        let cq = g.dispatcher.consume_queue();
        let (mut lo, mut hi) = (
            cq.min_offset(topic, queue).unwrap_or(0),
            cq.max_offset(topic, queue).unwrap_or(0),
        );
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let u = cq.range(topic, queue, mid, 1).into_iter().next()?;
            match u.pos.cmp(&pos) {
                std::cmp::Ordering::Equal => return Some(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    /// Where the message at CommitLog position `pos` was stored: (Raft index, term, leader
    /// node) of its record, found by binary search over the log's positions.
    pub fn record_of(&self, pos: u64) -> Result<Option<(u64, u64, u64)>, StoreError> {
        let log = &self.core.log;
        let (mut lo, mut hi) = (log.first_index()?, log.next_index()?);
        if lo >= hi {
            return Ok(None);
        }
        // Last index whose record starts at or before `pos`.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if log.position_of(mid)? <= pos {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if log.position_of(lo)? > pos {
            return Ok(None);
        }
        let id = log.id_at(lo)?;
        Ok(Some((lo, id.term, id.node)))
    }

    /// The consume history of one message (`topic`, `queue`, `offset`) from the log after
    /// `from_index`: every delivery (Pop) and ack, per delivery-state key. Scans at most
    /// `max_entries` entries; returns the last index scanned.
    pub fn consume_history(
        &self,
        topic: &str,
        queue: u32,
        offset: u64,
        from_index: u64,
        max_entries: u64,
    ) -> Result<(Vec<ConsumeEvent>, u64), StoreError> {
        let log = &self.core.log;
        let last = self.last_applied().map_or(0, |l| l.index);
        let start = from_index.max(log.first_index()?);
        let end = last.min(start.saturating_add(max_entries));
        let mut out = Vec::new();
        let mut scanned = start;
        for i in start..=end {
            if i >= log.next_index()? {
                break;
            }
            scanned = i;
            let rec = log.read(i)?;
            if rec.kind.0 != INTERNAL_JSON_KIND {
                continue;
            }
            let Ok(cmd) = serde_json::from_slice::<InternalCommand>(&rec.payload) else {
                continue;
            };
            match cmd {
                InternalCommand::Pop(p) if p.topic == topic && p.queue == queue => {
                    if let Some((_, attempt)) = p.deliver.iter().find(|(o, _)| *o == offset) {
                        out.push(ConsumeEvent::Delivered {
                            group: p.group,
                            attempt: *attempt,
                            // The high bits of a delivery sequence are the leader's clock.
                            at_ms: (p.seq >> 20) as i64,
                            invisible_until_ms: p.invisible_until_ms,
                            raft_index: i,
                        });
                    }
                }
                InternalCommand::Ack {
                    group,
                    topic: t,
                    queue: q,
                    offset: o,
                    ..
                } if t == topic && q == queue && o == offset => {
                    out.push(ConsumeEvent::Acked {
                        group,
                        raft_index: i,
                    });
                }
                InternalCommand::AckMany {
                    group,
                    topic: t,
                    items,
                } if t == topic && items.iter().any(|(q, o, _)| *q == queue && *o == offset) => {
                    out.push(ConsumeEvent::Acked {
                        group,
                        raft_index: i,
                    });
                }
                _ => {}
            }
        }
        Ok((out, scanned))
    }

    /// Write the checkpoint now (clean shutdown).
    pub fn checkpoint_now(&self) {
        if let Ok(mut g) = self.core.inner.write()
            && let Err(e) = self.core.checkpoint(&mut g)
        {
            tracing::warn!("final checkpoint failed: {e}");
        }
    }

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
    core: Arc<SmCore>,
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
        let data = snapshot.into_inner();
        let body: SnapshotBody = serde_json::from_slice(&data).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad snapshot: {e}"))
        })?;
        let boundary = meta.last_log_id.map(|l| l.index);
        let mut g = self.core.inner.write().map_err(lock_err)?;
        // Keep our own log if it already holds the boundary entry with the same id (openraft
        // then keeps the entries after it); otherwise restart it empty right after the
        // boundary, at the byte position the leader's next entry has.
        let holds = match (meta.last_log_id, boundary) {
            (Some(l), Some(b)) => self
                .core
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
        let first = self.core.log.first_index().map_err(io_err)?;
        let purged_to_boundary = !holds && boundary.is_some_and(|b| first == b + 1);
        let mut state = body.state;
        if purged_to_boundary {
            let next_index = first;
            let next_pos = if next_index < self.core.log.next_index().map_err(io_err)? {
                self.core.log.position_of(next_index).map_err(io_err)?
            } else {
                self.core.log.write_pos().map_err(io_err)?
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
            state.current_segment = Some(next_pos - next_pos % self.core.log.config().segment_size);
        } else if !holds {
            let next_index = boundary.map_or(0, |b| b + 1);
            // Without the leader's restart position (see `SnapshotBody::next_pos`), continue in a
            // fresh segment of our own: record bytes stay identical, positions then differ.
            let seg_size = self.core.log.config().segment_size;
            let next_pos = match body.next_pos {
                Some(p) => p,
                None => self.core.log.write_pos()?.div_ceil(seg_size) * seg_size,
            };
            self.core.log.reset(next_index, next_pos)?;
            g.dispatcher.reset_queues(&state.next_offsets)?;
            state.dispatched = boundary.map(|b| (b, next_pos));
            g.dispatcher.reset_to(state.dispatched)?;
            state.current_segment = Some(next_pos);
        } else {
            // We hold the entries up to the boundary: applying them ourselves yields the
            // snapshot's state, and dispatches their messages into our own queues.
            let from = g.state.last_applied.map_or(0, |l| l.index + 1);
            if let Some(b) = boundary {
                for i in from.max(self.core.log.first_index()?)..=b {
                    let entry = super::log_store::record_to_entry(self.core.log.read(i)?)?;
                    self.core.apply_entry(&mut g, &entry)?;
                }
            }
            state.dispatched = g.dispatcher.last_dispatched();
            state.current_segment = g.state.current_segment;
        }
        g.state = state;
        g.state.last_applied = meta.last_log_id;
        g.state.membership = meta.last_membership.clone();
        g.dirty = true;
        self.core.checkpoint(&mut g)?;
        drop(g);
        let persisted = serde_json::to_vec(&(meta, &data)).map_err(io_err)?;
        fsutil::atomic_write(&self.core.dir.join("snapshot.json"), &persisted)?;
        *self.core.current_snapshot.lock().map_err(lock_err)? = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let cur = self.core.current_snapshot.lock().map_err(lock_err)?;
        Ok(cur.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: std::io::Cursor::new(data.clone()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::CommittedLeaderId;

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
