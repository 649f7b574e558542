//! Dispatch: the deterministic derivation of ConsumeQueues and the key index from committed
//! CommitLog records.
//!
//! ```text
//! <data-dir>/
//!   consumequeue/         see consumequeue
//!   keyindex/             see keyindex
//!   dispatch.checkpoint   last dispatched Raft index + end position (below)
//! ```
//!
//! # The rule
//!
//! Records are dispatched in log order. A record whose Raft index is `<=` the last dispatched
//! index is skipped (so re-applying after a restart is harmless). Records of any kind other
//! than [`RecordKind::MESSAGE_BATCH`] only advance the last dispatched index. For a message
//! batch every message, in batch order, gets the next offset of its (topic, queue id): the
//! queue's current max offset (0 for a queue that does not exist yet, or the base set by
//! [`Dispatcher::set_queue_base`]). Its ConsumeQueue unit is (position =
//! `record.payload_pos() + offset_in_batch`, size = message length, tag hash), and the key
//! index gets message id → position and each distinct key → position. Offsets therefore
//! depend only on the sequence of committed records, so every replica, and every rebuild from
//! the same records, assigns the same offsets.
//!
//! # Checkpoint and recovery
//!
//! [`Dispatcher::checkpoint`] flushes the ConsumeQueues and the key index, then atomically
//! replaces `dispatch.checkpoint` (temp file, fsync, rename, fsync directory):
//!
//! ```text
//! offset size field
//!      0    4 magic             0x4B435044 (bytes "DPCK")
//!      4    2 version           1
//!      6    1 has value         0 = nothing dispatched yet, 1 = the two fields below are set
//!      7    1 reserved          0
//!      8    8 last index        Raft index of the last dispatched record
//!     16    8 end position      that record's pos + 48 + payload length
//!     24    8 reserved          0
//!     32    4 crc32c            of bytes 0..32
//! ```
//!
//! [`Dispatcher::open`] reads it and truncates the ConsumeQueues and the key index from the
//! end position: whatever was dispatched after the checkpoint (and may have been only partly
//! written when the process or the machine died) is removed, and the caller re-dispatches the
//! records after the checkpointed index, which reproduces it exactly. The caller must only
//! checkpoint records that are durable in the CommitLog and must feed records from
//! `last_dispatched().0 + 1` on after opening.
//!
//! A caller that keeps the dispatch position in its own checkpoint (the Raft state machine
//! does) calls [`Dispatcher::flush`] (an alias of `checkpoint`) before writing its own
//! checkpoint, and [`Dispatcher::reset_to`] with the position it recorded right after `open`.
//! Its recorded position is then never ahead of `dispatch.checkpoint`, and `reset_to` cuts the
//! derived stores back to it.
//!
//! If writing a dispatched record's units fails half way, the dispatcher refuses further
//! work ([`StoreError::Poisoned`]) until it is reopened (or [`Dispatcher::reset_to`] succeeds),
//! which rolls back to the checkpoint.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::storage::consumequeue::{ConsumeQueueStore, CqUnit, fsync_dir, tag_hash, write_atomic};
use crate::storage::error::{Result, StoreError};
use crate::storage::keyindex::KeyIndex;
use crate::storage::message::{MessageView, decode_batch};
use crate::storage::record::{HEADER_LEN, Record, RecordKind};

/// Sub-directory holding the ConsumeQueues.
pub const CONSUMEQUEUE_DIR: &str = "consumequeue";
/// Sub-directory holding the key index.
pub const KEYINDEX_DIR: &str = "keyindex";
/// The dispatch checkpoint file.
pub const CHECKPOINT_FILE: &str = "dispatch.checkpoint";

const CKPT_MAGIC: u32 = 0x4B43_5044;
const CKPT_VERSION: u16 = 1;
const CKPT_LEN: usize = 36;

/// Geometry of the derived stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchConfig {
    /// Units per ConsumeQueue file (20 bytes each).
    pub cq_units_per_file: u32,
    /// Hash slots per key index file (4 bytes each).
    pub key_slots: u32,
    /// Entries per key index file (20 bytes each).
    pub key_entries_per_file: u32,
}

impl Default for DispatchConfig {
    /// 100 000 units (2 MB) per ConsumeQueue file; 256 Ki slots and 1 Mi entries (21 MiB)
    /// per key index file. Files are preallocated, so these are disk space per queue / per
    /// node; raise them for large deployments.
    fn default() -> Self {
        DispatchConfig {
            cq_units_per_file: 100_000,
            key_slots: 1 << 18,
            key_entries_per_file: 1 << 20,
        }
    }
}

/// What dispatch does with one message (see [`Dispatcher::dispatch_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Next offset of its queue, a unit, and key-index entries.
    Queue,
    /// Key-index entries only.
    IndexOnly,
    /// Nothing (a producer retry, a broker copy already applied).
    Skip,
}

/// Where one message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatched {
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue_id: u32,
    /// Offset assigned in that queue.
    pub offset: u64,
    /// Message id.
    pub message_id: String,
    /// Absolute CommitLog position of the message.
    pub pos: u64,
    /// Encoded message length.
    pub size: u32,
}

/// Applies committed records to the ConsumeQueues and the key index (see the module docs).
#[derive(Debug)]
pub struct Dispatcher {
    dir: PathBuf,
    cfg: DispatchConfig,
    cq: ConsumeQueueStore,
    keys: KeyIndex,
    /// (index, end position) of the last dispatched record.
    last: Option<(u64, u64)>,
    /// Set when a record was only partly applied.
    failed: Option<String>,
}

fn encode_checkpoint(last: Option<(u64, u64)>) -> [u8; CKPT_LEN] {
    let mut b = [0u8; CKPT_LEN];
    b[0..4].copy_from_slice(&CKPT_MAGIC.to_le_bytes());
    b[4..6].copy_from_slice(&CKPT_VERSION.to_le_bytes());
    if let Some((index, end)) = last {
        b[6] = 1;
        b[8..16].copy_from_slice(&index.to_le_bytes());
        b[16..24].copy_from_slice(&end.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b[..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_checkpoint(path: &Path, b: &[u8]) -> Result<Option<(u64, u64)>> {
    let bad = |off: u64, why: String| Err(StoreError::corrupt(path, off, why));
    if b.len() != CKPT_LEN {
        return bad(0, format!("length {} instead of {CKPT_LEN}", b.len()));
    }
    let u64_at = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let stored = u32::from_le_bytes([b[32], b[33], b[34], b[35]]);
    let computed = crc32c::crc32c(&b[..32]);
    if stored != computed {
        return bad(
            32,
            format!("crc mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        );
    }
    if u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != CKPT_MAGIC {
        return bad(0, "bad magic".into());
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    if version != CKPT_VERSION {
        return bad(4, format!("unsupported version {version}"));
    }
    match b[6] {
        0 => Ok(None),
        1 => Ok(Some((u64_at(8), u64_at(16)))),
        v => bad(6, format!("bad flag {v}")),
    }
}

impl Dispatcher {
    /// Open the derived stores under `dir` and roll them back to the dispatch checkpoint.
    pub fn open(dir: impl AsRef<Path>, cfg: DispatchConfig) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let ckpt_path = dir.join(CHECKPOINT_FILE);
        let last = match fs::read(&ckpt_path) {
            Ok(b) => decode_checkpoint(&ckpt_path, &b)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io(&ckpt_path, e)),
        };
        let mut cq = ConsumeQueueStore::open(dir.join(CONSUMEQUEUE_DIR), cfg.cq_units_per_file)?;
        let mut keys = KeyIndex::open(
            dir.join(KEYINDEX_DIR),
            cfg.key_slots,
            cfg.key_entries_per_file,
        )?;
        let end = last.map_or(0, |(_, end)| end);
        cq.truncate_from_position(end)?;
        keys.truncate_from_position(end)?;
        Ok(Dispatcher {
            dir,
            cfg,
            cq,
            keys,
            last,
            failed: None,
        })
    }

    /// Wipe the derived stores under `dir` and re-derive them from `records` (the retained
    /// CommitLog, in order), then checkpoint. Offsets start at 0 for every queue, which is
    /// exact only if `records` starts at the beginning of the log; after retention has
    /// removed segments use [`rebuild_with_bases`](Self::rebuild_with_bases).
    pub fn rebuild<I>(dir: impl AsRef<Path>, cfg: DispatchConfig, records: I) -> Result<Self>
    where
        I: IntoIterator<Item = Result<Record>>,
    {
        Self::rebuild_with_bases(dir, cfg, &[], records)
    }

    /// Like [`rebuild`](Self::rebuild), but first makes each listed (topic, queue id) start at
    /// the given offset (the offset its first message in `records` must get).
    ///
    /// The old checkpoint is removed first, so a rebuild interrupted by a crash reopens empty
    /// and must be run again.
    pub fn rebuild_with_bases<I>(
        dir: impl AsRef<Path>,
        cfg: DispatchConfig,
        bases: &[(String, u32, u64)],
        records: I,
    ) -> Result<Self>
    where
        I: IntoIterator<Item = Result<Record>>,
    {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let ckpt = dir.join(CHECKPOINT_FILE);
        match fs::remove_file(&ckpt) {
            Ok(()) => fsync_dir(dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&ckpt, e)),
        }
        for sub in [CONSUMEQUEUE_DIR, KEYINDEX_DIR] {
            let p = dir.join(sub);
            match fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(&p, e)),
            }
        }
        fsync_dir(dir)?;
        let mut d = Self::open(dir, cfg)?;
        for (topic, queue_id, offset) in bases {
            d.cq.set_base(topic, *queue_id, *offset)?;
        }
        for r in records {
            d.dispatch(&r?)?;
        }
        d.checkpoint()?;
        Ok(d)
    }

    /// Apply one committed record; returns where its messages went (empty for skipped
    /// records and for records without messages).
    pub fn dispatch(&mut self, rec: &Record) -> Result<Vec<Dispatched>> {
        Ok(self
            .dispatch_filtered(rec, |_| true)?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Like [`dispatch`](Self::dispatch), but only messages for which `keep` returns true are
    /// dispatched; the others get no offset, unit or key entry (the state machine drops
    /// producer retries this way). `keep` is called exactly once per message, in batch order,
    /// before anything is written, and must be deterministic (a function of replicated state)
    /// so that every replica assigns the same offsets.
    ///
    /// For a message batch the result has one element per message, `None` for the messages
    /// `keep` rejected. It is empty if the record was skipped (index `<=` the last dispatched
    /// one) or is not a message batch.
    pub fn dispatch_filtered<F>(
        &mut self,
        rec: &Record,
        mut keep: F,
    ) -> Result<Vec<Option<Dispatched>>>
    where
        F: FnMut(&MessageView) -> bool,
    {
        self.dispatch_with(rec, |m| {
            if keep(m) {
                Disposition::Queue
            } else {
                Disposition::Skip
            }
        })
    }

    /// Like [`dispatch_filtered`](Self::dispatch_filtered) with a third choice per message:
    /// [`Disposition::IndexOnly`] gives it key-index entries but no offset or unit (a
    /// message stored now and queued later, such as a delay message before its time, can be
    /// found by id and key meanwhile). Its result is `None`, like a skipped message's.
    pub fn dispatch_with<F>(&mut self, rec: &Record, decide: F) -> Result<Vec<Option<Dispatched>>>
    where
        F: FnMut(&MessageView) -> Disposition,
    {
        self.dispatch_views(rec, None, decide)
    }

    /// [`dispatch_with`](Self::dispatch_with) for a caller that has decoded the record's
    /// message batch already: `views` must be `decode_batch(&rec.payload)` (the state
    /// machine decodes each batch for its own decisions; this spares a second decode and
    /// body CRC check per message).
    pub fn dispatch_decoded<F>(
        &mut self,
        rec: &Record,
        views: &[MessageView],
        decide: F,
    ) -> Result<Vec<Option<Dispatched>>>
    where
        F: FnMut(&MessageView) -> Disposition,
    {
        self.dispatch_views(rec, Some(views), decide)
    }

    fn dispatch_views<F>(
        &mut self,
        rec: &Record,
        decoded: Option<&[MessageView]>,
        mut decide: F,
    ) -> Result<Vec<Option<Dispatched>>>
    where
        F: FnMut(&MessageView) -> Disposition,
    {
        if let Some(why) = &self.failed {
            return Err(StoreError::Poisoned(why.clone()));
        }
        let end = rec.payload_pos() + rec.payload.len() as u64;
        if let Some((index, last_end)) = self.last {
            if rec.id.index <= index {
                return Ok(Vec::new());
            }
            if rec.pos < last_end {
                return Err(StoreError::corrupt(
                    format!("commitlog record {}", rec.id.index),
                    rec.pos,
                    format!("record starts before the end ({last_end}) of record {index}"),
                ));
            }
        }
        if rec.kind != RecordKind::MESSAGE_BATCH {
            self.last = Some((rec.id.index, end));
            return Ok(Vec::new());
        }
        let owned;
        let views: &[MessageView] = match decoded {
            Some(v) => v,
            None => {
                owned = decode_batch(&rec.payload).map_err(|e| {
                    StoreError::corrupt(
                        format!("commitlog record {}", rec.id.index),
                        rec.pos + HEADER_LEN as u64,
                        format!("undecodable message batch: {e}"),
                    )
                })?;
                &owned
            }
        };
        let kept: Vec<Disposition> = views.iter().map(&mut decide).collect();
        match self.apply(rec, views, &kept) {
            Ok(out) => {
                self.last = Some((rec.id.index, end));
                Ok(out)
            }
            Err(e) => {
                self.failed = Some(format!(
                    "dispatch of record {} failed half way: {e}",
                    rec.id.index
                ));
                Err(e)
            }
        }
    }

    fn apply(
        &mut self,
        rec: &Record,
        views: &[MessageView],
        kept: &[Disposition],
    ) -> Result<Vec<Option<Dispatched>>> {
        let mut out = Vec::with_capacity(views.len());
        for (m, d) in views.iter().zip(kept) {
            let pos = rec.payload_pos() + u64::from(m.offset_in_batch);
            match d {
                Disposition::Skip => {
                    out.push(None);
                    continue;
                }
                Disposition::IndexOnly => {
                    self.index_keys(m, pos)?;
                    out.push(None);
                    continue;
                }
                Disposition::Queue => {}
            }
            let topic = m.topic.as_str();
            let offset = self.cq.max_offset(topic, m.queue_id).unwrap_or(0);
            let unit = CqUnit {
                pos,
                size: m.len,
                tag_hash: tag_hash(&m.tag),
            };
            self.cq.put(topic, m.queue_id, offset, unit)?;
            self.index_keys(m, pos)?;
            out.push(Some(Dispatched {
                topic: topic.to_string(),
                queue_id: m.queue_id,
                offset,
                message_id: m.message_id.to_string(),
                pos,
                size: m.len,
            }));
        }
        Ok(out)
    }

    fn index_keys(&mut self, m: &MessageView, pos: u64) -> Result<()> {
        self.keys.put(&m.message_id, pos)?;
        for (i, k) in m.keys.iter().enumerate() {
            if k.as_str() != m.message_id.as_str() && !m.keys[..i].contains(k) {
                self.keys.put(k, pos)?;
            }
        }
        Ok(())
    }

    /// Flush the ConsumeQueues and the key index, then durably record the last dispatched
    /// record.
    pub fn checkpoint(&mut self) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(StoreError::Poisoned(why.clone()));
        }
        self.cq.flush()?;
        self.keys.flush()?;
        write_atomic(
            &self.dir.join(CHECKPOINT_FILE),
            &encode_checkpoint(self.last),
        )
    }

    /// Same as [`checkpoint`](Self::checkpoint): flush the derived stores and durably record
    /// the last dispatched record. Call it before persisting anything that refers to
    /// [`last_dispatched`](Self::last_dispatched).
    pub fn flush(&mut self) -> Result<()> {
        self.checkpoint()
    }

    /// (Raft index, end position) of the last dispatched record.
    pub fn last_dispatched(&self) -> Option<(u64, u64)> {
        self.last
    }

    /// Roll the dispatch position to `last` (index, end position), as recorded by a caller's
    /// own checkpoint: every unit and key entry at or above the end position (everything, for
    /// `None`) is removed, the position becomes `last`, and the result is checkpointed.
    /// Records after `last` must then be dispatched again. Also clears the refusal state left
    /// by a half-applied record (its units all lie above the previous end position).
    pub fn reset_to(&mut self, last: Option<(u64, u64)>) -> Result<()> {
        let end = last.map_or(0, |(_, end)| end);
        self.cq.truncate_from_position(end)?;
        self.keys.truncate_from_position(end)?;
        self.last = last;
        self.failed = None;
        self.checkpoint()
    }

    /// Snapshot install: drop every queue and the whole key index, then create the queues in
    /// `next_offsets` (topic → queue id → next offset) empty, starting at those offsets. The
    /// dispatch position is not changed: follow with [`reset_to`](Self::reset_to).
    pub fn reset_queues(
        &mut self,
        next_offsets: &BTreeMap<String, BTreeMap<u32, u64>>,
    ) -> Result<()> {
        let mut topics: Vec<String> = self.cq.queues().into_iter().map(|(t, _)| t).collect();
        topics.dedup();
        for t in &topics {
            self.cq.delete_topic(t)?;
        }
        self.keys.truncate_from_position(0)?;
        for (topic, queues) in next_offsets {
            for (queue_id, offset) in queues {
                self.cq.set_base(topic, *queue_id, *offset)?;
            }
        }
        Ok(())
    }

    /// Retention pass-through: forget units and key entries below `pos`.
    pub fn delete_below_position(&mut self, pos: u64) -> Result<()> {
        self.cq.delete_below_position(pos)?;
        self.keys.delete_below_position(pos)
    }

    /// Make a queue start at `offset` (snapshot install); see
    /// [`ConsumeQueueStore::set_base`].
    pub fn set_queue_base(&mut self, topic: &str, queue_id: u32, offset: u64) -> Result<()> {
        self.cq.set_base(topic, queue_id, offset)
    }

    /// Delete every queue of `topic`.
    pub fn delete_topic(&mut self, topic: &str) -> Result<bool> {
        self.cq.delete_topic(topic)
    }

    /// The ConsumeQueues, for readers.
    pub fn consume_queue(&self) -> &ConsumeQueueStore {
        &self.cq
    }

    /// The key index, for readers.
    pub fn key_index(&self) -> &KeyIndex {
        &self.keys
    }

    /// The geometry this dispatcher was opened with.
    pub fn config(&self) -> DispatchConfig {
        self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::message::{MessageType, NewMessage, decode_one, encode_batch};
    use crate::storage::record::RecordId;
    use bytes::Bytes;

    fn cfg() -> DispatchConfig {
        DispatchConfig {
            cq_units_per_file: 4,
            key_slots: 8,
            key_entries_per_file: 16,
        }
    }

    fn msg(topic: &str, queue_id: u32, id: String, keys: Vec<String>) -> NewMessage {
        NewMessage {
            msg_type: MessageType::Normal,
            queue_id,
            born_timestamp_ms: 1,
            store_timestamp_ms: 2,
            topic: topic.into(),
            tag: if queue_id % 2 == 0 {
                "even".into()
            } else {
                String::new()
            },
            body: Bytes::from(format!("body of {id}")),
            message_id: id,
            keys,
            ..Default::default()
        }
    }

    /// A deterministic log: blanks, membership changes and batches over three topics.
    /// Returns the records and a flat "commitlog" buffer with every record at its position.
    fn make_log(n: u64) -> (Vec<Record>, Vec<u8>) {
        let mut recs = Vec::new();
        let mut pos = 4096u64; // the log need not start at 0
        let mut log = vec![0u8; pos as usize];
        let mut seq = 0u32;
        for index in 1..=n {
            let (kind, payload) = match index % 5 {
                0 => (RecordKind::BLANK, Vec::new()),
                3 => (RecordKind::MEMBERSHIP, b"members".to_vec()),
                _ => {
                    let count = 1 + (index % 4) as u32;
                    let msgs: Vec<NewMessage> = (0..count)
                        .map(|j| {
                            seq += 1;
                            let topic = ["A", "B", "%RETRY%c"][((index + j as u64) % 3) as usize];
                            let keys = vec![format!("order-{}", seq % 7), format!("id-{seq}")];
                            msg(topic, (seq % 3) + 1, format!("id-{seq}"), keys)
                        })
                        .collect();
                    (RecordKind::MESSAGE_BATCH, encode_batch(&msgs).unwrap())
                }
            };
            let rec = Record {
                id: RecordId {
                    term: 1,
                    node: 1,
                    index,
                },
                kind,
                pos,
                payload: Bytes::from(payload.clone()),
            };
            log.extend_from_slice(&[0u8; HEADER_LEN]);
            log.extend_from_slice(&payload);
            pos += (HEADER_LEN + payload.len()) as u64;
            recs.push(rec);
        }
        (recs, log)
    }

    type Dump = Vec<(String, u32, u64, u64, Vec<CqUnit>)>;

    fn dump(d: &Dispatcher) -> Dump {
        let cq = d.consume_queue();
        cq.queues()
            .into_iter()
            .map(|(t, q)| {
                let min = cq.min_offset(&t, q).unwrap();
                let max = cq.max_offset(&t, q).unwrap();
                let units = cq.range(&t, q, min, usize::MAX);
                (t, q, min, max, units)
            })
            .collect()
    }

    fn dispatch_all(d: &mut Dispatcher, recs: &[Record]) -> Vec<Dispatched> {
        recs.iter().flat_map(|r| d.dispatch(r).unwrap()).collect()
    }

    #[test]
    fn offsets_are_dense_per_queue_and_units_point_at_messages() {
        let dir = tempfile::tempdir().unwrap();
        let (recs, log) = make_log(40);
        let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
        let mut out = Vec::new();
        for r in &recs {
            let got = d.dispatch(r).unwrap();
            if r.kind != RecordKind::MESSAGE_BATCH {
                assert!(
                    got.is_empty(),
                    "record {} of kind {:?} dispatched",
                    r.id.index,
                    r.kind
                );
            } else {
                assert!(!got.is_empty());
            }
            assert_eq!(
                d.last_dispatched(),
                Some((r.id.index, r.payload_pos() + r.payload.len() as u64))
            );
            out.extend(got);
        }
        assert!(out.len() > 40);
        let mut next: std::collections::HashMap<(String, u32), u64> = Default::default();
        let cq = d.consume_queue();
        for m in &out {
            let n = next.entry((m.topic.clone(), m.queue_id)).or_insert(0);
            assert_eq!(m.offset, *n, "{m:?}");
            *n += 1;
            let u = cq.get(&m.topic, m.queue_id, m.offset).unwrap();
            assert_eq!((u.pos, u.size), (m.pos, m.size));
            // the unit leads to the very message, decodable on its own
            let bytes =
                Bytes::copy_from_slice(&log[u.pos as usize..(u.pos + u.size as u64) as usize]);
            let v = decode_one(&bytes).unwrap();
            assert_eq!(v.topic, m.topic.as_str());
            assert_eq!(v.queue_id, m.queue_id);
            assert_eq!(v.message_id, m.message_id.as_str());
            assert_eq!(u.tag_hash, tag_hash(&v.tag));
            // message id and keys find it
            let ix = d.key_index();
            assert!(ix.lookup(&m.message_id, 100).unwrap().contains(&m.pos));
            for k in &v.keys {
                assert!(ix.lookup(k, 1000).unwrap().contains(&m.pos), "key {k}");
            }
        }
        for ((t, q), n) in next {
            assert_eq!(cq.max_offset(&t, q), Some(n));
            assert_eq!(cq.min_offset(&t, q), Some(0));
        }
    }

    #[test]
    fn redispatch_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let (recs, _) = make_log(20);
        let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
        let first = dispatch_all(&mut d, &recs);
        let before = dump(&d);
        let again = dispatch_all(&mut d, &recs);
        assert!(again.is_empty());
        assert!(!first.is_empty());
        assert_eq!(dump(&d), before);
        d.checkpoint().unwrap();
        drop(d);
        let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
        assert_eq!(d.last_dispatched().map(|l| l.0), Some(20));
        assert!(dispatch_all(&mut d, &recs).is_empty());
        assert_eq!(dump(&d), before);
    }

    #[test]
    fn crash_after_checkpoint_redispatches_identically() {
        let (recs, _) = make_log(60);
        let reference = {
            let dir = tempfile::tempdir().unwrap();
            let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
            let out = dispatch_all(&mut d, &recs);
            (
                out,
                dump(&d),
                d.key_index().lookup("order-3", 1000).unwrap(),
            )
        };
        // three crash points: nothing flushed after the checkpoint, derived stores flushed
        // but checkpoint not written, and no checkpoint ever taken
        for variant in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let split = if variant == 2 { 0 } else { 25 };
            let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
            let mut out = dispatch_all(&mut d, &recs[..split]);
            if variant != 2 {
                d.checkpoint().unwrap();
            }
            let lost = dispatch_all(&mut d, &recs[split..]);
            if variant == 1 {
                d.cq.flush().unwrap();
                d.keys.flush().unwrap();
            }
            drop(d); // crash

            let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
            let expect_last = if split == 0 { None } else { Some(split as u64) };
            assert_eq!(
                d.last_dispatched().map(|l| l.0),
                expect_last,
                "variant {variant}"
            );
            let redone = dispatch_all(&mut d, &recs); // the caller replays; old ones are skipped
            assert_eq!(redone, lost, "variant {variant}");
            out.extend(redone);
            assert_eq!(out, reference.0, "variant {variant}");
            assert_eq!(dump(&d), reference.1, "variant {variant}");
            assert_eq!(
                d.key_index().lookup("order-3", 1000).unwrap(),
                reference.2,
                "variant {variant}"
            );
        }
    }

    #[test]
    fn rebuild_equals_incremental_dispatch() {
        let (recs, _) = make_log(50);
        let inc_dir = tempfile::tempdir().unwrap();
        let mut inc = Dispatcher::open(inc_dir.path(), cfg()).unwrap();
        for (i, r) in recs.iter().enumerate() {
            inc.dispatch(r).unwrap();
            if i % 7 == 0 {
                inc.checkpoint().unwrap();
            }
        }
        inc.checkpoint().unwrap();

        let dir = tempfile::tempdir().unwrap();
        // a rebuild over a messy directory: stale, unrelated derived state is wiped
        {
            let mut junk = Dispatcher::open(dir.path(), cfg()).unwrap();
            let (other, _) = make_log(9);
            dispatch_all(&mut junk, &other[3..]);
            junk.checkpoint().unwrap();
        }
        let rebuilt = Dispatcher::rebuild(dir.path(), cfg(), recs.iter().cloned().map(Ok)).unwrap();
        assert_eq!(dump(&rebuilt), dump(&inc));
        assert_eq!(rebuilt.last_dispatched(), inc.last_dispatched());
        for k in ["order-0", "order-5", "id-17", "id-1", "missing"] {
            assert_eq!(
                rebuilt.key_index().lookup(k, 1000).unwrap(),
                inc.key_index().lookup(k, 1000).unwrap(),
                "{k}"
            );
        }
        drop(rebuilt);
        let reopened = Dispatcher::open(dir.path(), cfg()).unwrap();
        assert_eq!(dump(&reopened), dump(&inc));
    }

    #[test]
    fn rebuild_with_bases_continues_offsets() {
        let (recs, _) = make_log(10);
        let dir = tempfile::tempdir().unwrap();
        let bases = vec![("A".to_string(), 1, 500u64), ("A".to_string(), 2, 700)];
        let d =
            Dispatcher::rebuild_with_bases(dir.path(), cfg(), &bases, recs.iter().cloned().map(Ok))
                .unwrap();
        let cq = d.consume_queue();
        assert_eq!(cq.min_offset("A", 1), Some(500));
        assert!(cq.max_offset("A", 1).unwrap() > 500);
        assert_eq!(cq.min_offset("A", 2), Some(700));
        assert_eq!(cq.min_offset("B", 1), Some(0));
    }

    #[test]
    fn bad_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (recs, _) = make_log(4);
        let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
        dispatch_all(&mut d, &recs[..2]);
        // an undecodable batch is corruption, and applies nothing
        let mut bad = recs[2].clone();
        bad.kind = RecordKind::MESSAGE_BATCH;
        bad.payload = Bytes::from_static(b"\x01garbage");
        assert!(matches!(d.dispatch(&bad), Err(StoreError::Corrupt { .. })));
        // a record overlapping the previous one is refused
        let mut overlap = recs[2].clone();
        overlap.pos -= 1;
        assert!(matches!(
            d.dispatch(&overlap),
            Err(StoreError::Corrupt { .. })
        ));
        // the dispatcher is still usable
        assert!(d.dispatch(&recs[2]).is_ok());
        assert_eq!(d.last_dispatched().map(|l| l.0), Some(3));
        d.checkpoint().unwrap();
        drop(d);
        // a damaged checkpoint fails the open
        let p = dir.path().join(CHECKPOINT_FILE);
        let mut b = fs::read(&p).unwrap();
        b[10] ^= 1;
        fs::write(&p, b).unwrap();
        assert!(matches!(
            Dispatcher::open(dir.path(), cfg()),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn retention_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let (recs, _) = make_log(30);
        let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
        let out = dispatch_all(&mut d, &recs);
        let cut = recs[15].pos;
        d.delete_below_position(cut).unwrap();
        let cq = d.consume_queue();
        for (t, q) in cq.queues() {
            let min = cq.min_offset(&t, q).unwrap();
            let first_kept = out
                .iter()
                .filter(|m| m.topic == t && m.queue_id == q && m.pos >= cut)
                .map(|m| m.offset)
                .min()
                .unwrap_or(cq.max_offset(&t, q).unwrap());
            assert_eq!(min, first_kept, "{t}/{q}");
        }
        for m in &out {
            let found = d.key_index().lookup(&m.message_id, 10).unwrap();
            assert_eq!(found.contains(&m.pos), m.pos >= cut, "{m:?}");
        }
    }

    #[test]
    fn dispatcher_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Dispatcher>();
        assert_eq!(DispatchConfig::default().cq_units_per_file, 100_000);
    }

    #[test]
    fn filtered_messages_get_no_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
        let msgs: Vec<NewMessage> = (0..4)
            .map(|i| msg("T", 0, format!("m{i}"), vec![format!("k{i}")]))
            .collect();
        let rec = Record {
            id: RecordId {
                term: 1,
                node: 1,
                index: 1,
            },
            kind: RecordKind::MESSAGE_BATCH,
            pos: 0,
            payload: Bytes::from(encode_batch(&msgs).unwrap()),
        };
        let mut seen = Vec::new();
        let out = d
            .dispatch_filtered(&rec, |v| {
                seen.push(v.message_id.to_string());
                v.message_id != "m1"
            })
            .unwrap();
        assert_eq!(seen, vec!["m0", "m1", "m2", "m3"]);
        let offsets: Vec<Option<u64>> = out.iter().map(|o| o.as_ref().map(|x| x.offset)).collect();
        assert_eq!(offsets, vec![Some(0), None, Some(1), Some(2)]);
        assert_eq!(d.consume_queue().max_offset("T", 0), Some(3));
        assert!(d.key_index().lookup("m1", 10).unwrap().is_empty());
        assert!(d.key_index().lookup("k1", 10).unwrap().is_empty());
        assert_eq!(
            d.key_index().lookup("k2", 10).unwrap(),
            vec![out[2].as_ref().unwrap().pos]
        );
        // a skipped record yields nothing and never calls the filter
        let again = d
            .dispatch_filtered(&rec, |_| panic!("filter called"))
            .unwrap();
        assert!(again.is_empty());
    }

    #[test]
    fn external_position_via_flush_and_reset_to() {
        // The state machine's flow: flush, persist its own position, reopen, reset_to it.
        let (recs, _) = make_log(40);
        let reference = {
            let dir = tempfile::tempdir().unwrap();
            let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
            dispatch_all(&mut d, &recs);
            dump(&d)
        };
        let dir = tempfile::tempdir().unwrap();
        let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
        dispatch_all(&mut d, &recs[..10]);
        d.flush().unwrap();
        let external = d.last_dispatched(); // what the caller persisted
        dispatch_all(&mut d, &recs[10..30]);
        d.flush().unwrap(); // flushed, but the caller crashed before persisting its position
        dispatch_all(&mut d, &recs[30..]);
        drop(d);
        let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
        assert_eq!(d.last_dispatched().map(|l| l.0), Some(30));
        d.reset_to(external).unwrap();
        assert_eq!(d.last_dispatched(), external);
        dispatch_all(&mut d, &recs);
        assert_eq!(dump(&d), reference);
        // reset_to(None) empties everything
        d.reset_to(None).unwrap();
        assert!(
            dump(&d)
                .iter()
                .all(|(_, _, min, max, units)| min == max && units.is_empty())
        );
        assert!(d.key_index().lookup("order-1", 10).unwrap().is_empty());
    }

    #[test]
    fn reset_queues_installs_bases() {
        let dir = tempfile::tempdir().unwrap();
        let (recs, _) = make_log(60);
        let mut d = Dispatcher::open(dir.path(), cfg()).unwrap();
        dispatch_all(&mut d, &recs[..10]);
        let mut next: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
        next.entry("A".into()).or_default().insert(1, 40);
        next.entry("B".into()).or_default().insert(3, 7);
        d.reset_queues(&next).unwrap();
        let boundary = recs[9].clone();
        d.reset_to(Some((
            boundary.id.index,
            boundary.payload_pos() + boundary.payload.len() as u64,
        )))
        .unwrap();
        let cq = d.consume_queue();
        assert_eq!(
            cq.queues(),
            vec![("A".to_string(), 1), ("B".to_string(), 3)]
        );
        assert_eq!(
            (cq.min_offset("A", 1), cq.max_offset("A", 1)),
            (Some(40), Some(40))
        );
        assert!(d.key_index().lookup("order-1", 10).unwrap().is_empty());
        let out = dispatch_all(&mut d, &recs[10..]);
        let a1: Vec<u64> = out
            .iter()
            .filter(|m| m.topic == "A" && m.queue_id == 1)
            .map(|m| m.offset)
            .collect();
        assert!(!a1.is_empty());
        assert_eq!(a1, (40..40 + a1.len() as u64).collect::<Vec<_>>());
        drop(d);
        let d = Dispatcher::open(dir.path(), cfg()).unwrap();
        assert_eq!(d.consume_queue().min_offset("B", 3), Some(7));
        assert_eq!(d.last_dispatched().map(|l| l.0), Some(10));
    }
}
