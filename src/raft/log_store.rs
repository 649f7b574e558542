//! openraft's log store over the CommitLog: our small adapter behind which openraft's
//! unstable storage API stays.
//!
//! * Entries map one-to-one onto CommitLog records: the record header carries the log id
//!   (term, leader node, index) and the kind; the payload is the command bytes for normal
//!   entries, empty for blank entries, and the JSON of the membership for membership entries.
//!   Reading an entry back hands the normal payload out as a zero-copy view of the segment.
//! * Raft metadata — vote, committed log id, last purged log id — lives in `raft/meta.json`,
//!   replaced atomically (write temp, fsync, rename, fsync dir). The vote is durable before
//!   `save_vote` returns. The committed id is written behind (at most every
//!   [`COMMITTED_PERSIST_INTERVAL`], on a blocking thread, so that openraft's core task never
//!   waits for those two fsyncs) because it only speeds up restart: a recovered committed id
//!   that is older than the truth is safe, one that is newer never happens. Writers of the file
//!   are serialised and each writes the metadata as it is when its turn comes, so a later write
//!   never carries an older state (a background write cannot roll a saved vote back).
//! * The purge point is persisted before any segment is deleted, so a crash in between leaves
//!   no hole.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};

use super::types::{Command, CommittedLeaderId, Entry, LogId, TypeConfig, Vote};
use crate::storage::commitlog::{CommitLog, CommitLogConfig, NewRecord, RecoveryReport};
use crate::storage::error::StoreError;
use crate::storage::fsutil;
use crate::storage::record::{Record, RecordId, RecordKind};

/// How often, at most, a changed committed log id is written to disk.
pub const COMMITTED_PERSIST_INTERVAL: Duration = Duration::from_millis(100);

/// Upper bound on the bytes returned by one `limited_get_log_entries` call, which bounds the
/// size of one replication request.
pub const MAX_READ_BYTES: u64 = 8 << 20;

/// Raft metadata persisted next to the log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RaftMeta {
    /// Last saved vote.
    pub vote: Option<Vote>,
    /// Last committed log id known durable.
    pub committed: Option<LogId>,
    /// Last purged log id.
    pub last_purged: Option<LogId>,
}

struct MetaFile {
    path: PathBuf,
    meta: RaftMeta,
    /// What is on disk.
    persisted: RaftMeta,
    last_write: Instant,
    /// A background write of the committed id is queued or running.
    writing: bool,
}

/// The metadata shared by the store and its readers, and the lock that serialises writes of
/// its file. Lock order: `write`, then `file`; `file` is never held across IO.
struct MetaShared {
    file: Mutex<MetaFile>,
    write: Mutex<()>,
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Poisoned("raft metadata lock poisoned".into())
}

impl MetaShared {
    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, MetaFile>> {
        self.file.lock().map_err(lock_err)
    }

    /// Write the metadata as it is now, if it differs from what is on disk.
    fn persist(&self) -> Result<(), StoreError> {
        let _turn = self.write.lock().map_err(poisoned)?;
        let (path, meta) = {
            let m = self.file.lock().map_err(poisoned)?;
            if m.meta == m.persisted {
                return Ok(());
            }
            (m.path.clone(), m.meta.clone())
        };
        let bytes = serde_json::to_vec_pretty(&meta)
            .map_err(|e| StoreError::Config(format!("cannot encode raft metadata: {e}")))?;
        fsutil::atomic_write(&path, &bytes)?;
        let mut m = self.file.lock().map_err(poisoned)?;
        m.persisted = meta;
        m.last_write = Instant::now();
        Ok(())
    }

    /// Write the committed id behind, off the caller's task. A failure poisons `log`, as a
    /// failed fsync must: the store refuses writes from then on instead of retrying quietly.
    fn persist_in_background(self: &Arc<Self>, log: &Arc<CommitLog>) {
        let shared = Arc::clone(self);
        let log = Arc::clone(log);
        let job = move || {
            if let Err(e) = shared.persist() {
                log.poison(format!(
                    "writing the raft metadata (committed id) failed: {e}"
                ));
            }
            if let Ok(mut m) = shared.file.lock() {
                m.writing = false;
                m.last_write = Instant::now();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(job);
            }
            Err(_) => job(),
        }
    }
}

impl MetaFile {
    fn load(dir: &Path) -> Result<MetaFile, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let path = dir.join("meta.json");
        let meta = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                StoreError::corrupt(&path, 0, format!("unreadable raft metadata: {e}"))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => RaftMeta::default(),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        Ok(MetaFile {
            path,
            persisted: meta.clone(),
            meta,
            last_write: Instant::now(),
            writing: false,
        })
    }
}

/// The openraft log store.
pub struct LogStore {
    log: Arc<CommitLog>,
    meta: Arc<MetaShared>,
    recovery: RecoveryReport,
}

/// A reader handle; cheap to clone, reads concurrently with appends.
#[derive(Clone)]
pub struct LogReader {
    log: Arc<CommitLog>,
    meta: Arc<MetaShared>,
}

fn lock_err<T>(_: T) -> io::Error {
    io::Error::other("raft metadata lock poisoned")
}

impl LogStore {
    /// Open the store under `cfg.dir` (creating it), recovering the CommitLog.
    pub fn open(cfg: CommitLogConfig) -> Result<LogStore, StoreError> {
        let mut meta = MetaFile::load(&cfg.dir.join("raft"))?;
        let purged = meta.meta.last_purged.map(|l| l.index);
        let (log, recovery) = CommitLog::open(cfg, purged)?;
        // A torn tail can cut entries this node had acknowledged and whose commit it had
        // already recorded: openraft would then try to re-apply entries that are gone and
        // refuse to start. Committed entries are on a quorum; this node only needs a committed
        // id it actually holds, and learns the rest from the leader. Found by the chaos suite.
        let next = log.next_index()?;
        if let Some(c) = meta.meta.committed
            && c.index >= next
        {
            let held = if next > log.first_index()? {
                Some(log_id(log.id_at(next - 1)?))
            } else {
                meta.meta.last_purged
            };
            tracing::warn!(
                target: "raftmq::storage",
                "recorded commit point {} is past the recovered log (next index {next}); using {:?}",
                c.index,
                held.map(|l| l.index)
            );
            meta.meta.committed = held;
        }
        if let Some(at) = &recovery.torn_tail_at {
            tracing::warn!(
                target: "raftmq::storage",
                "cut a torn tail of {} bytes at {} offset {}",
                recovery.torn_bytes,
                at.0.display(),
                at.1
            );
        }
        let meta = Arc::new(MetaShared {
            file: Mutex::new(meta),
            write: Mutex::new(()),
        });
        // Writes the cut-back committed id, if any (a no-op when nothing changed).
        meta.persist()?;
        Ok(LogStore {
            log: Arc::new(log),
            meta,
            recovery,
        })
    }

    /// The underlying CommitLog (for dispatch and consumers, which read message bodies).
    pub fn commitlog(&self) -> Arc<CommitLog> {
        Arc::clone(&self.log)
    }

    /// What recovery did when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// A snapshot of the persisted Raft metadata.
    pub fn meta(&self) -> io::Result<RaftMeta> {
        Ok(self.meta.lock()?.meta.clone())
    }

    /// Write any pending metadata and sync the log (used on clean shutdown).
    pub fn close(&self) -> io::Result<()> {
        self.meta.persist()?;
        self.log.flush()?;
        Ok(())
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        let _ = self.meta.persist();
    }
}

fn log_id(id: RecordId) -> LogId {
    LogId::new(
        CommittedLeaderId {
            term: id.term,
            node_id: id.node,
        },
        id.index,
    )
}

/// Decode a CommitLog record into an openraft entry (normal payloads stay zero-copy).
pub fn record_to_entry(r: Record) -> io::Result<Entry> {
    let id = log_id(r.id);
    let payload = match r.kind {
        RecordKind::BLANK => EntryPayload::Blank,
        RecordKind::MEMBERSHIP => {
            EntryPayload::Membership(serde_json::from_slice(&r.payload).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("membership entry {} is not valid JSON: {e}", r.id.index),
                )
            })?)
        }
        k => EntryPayload::Normal(Command {
            kind: k.0,
            data: r.payload,
        }),
    };
    Ok(Entry::new(id, payload))
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => Some(e.saturating_add(1)),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl LogReader {
    fn read(&self, start: u64, end: Option<u64>, max_bytes: Option<u64>) -> io::Result<Vec<Entry>> {
        let first = self.log.first_index()?;
        let next = self.log.next_index()?;
        let start = start.max(first);
        let end = end.unwrap_or(next).min(next);
        if start >= end {
            return Ok(Vec::new());
        }
        self.log
            .read_range(start, end, max_bytes)?
            .into_iter()
            .map(record_to_entry)
            .collect()
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (s, e) = bounds(&range);
        self.read(s, e, None)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.meta.lock()?.meta.vote)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        self.read(start, Some(end), Some(MAX_READ_BYTES))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.get_log_reader().await.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.meta.lock()?.meta.vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged = self.meta.lock()?.meta.last_purged;
        let last = self.log.last_id()?.map(log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            log: Arc::clone(&self.log),
            meta: Arc::clone(&self.meta),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.meta.lock()?.meta.vote = Some(*vote);
        self.meta.persist()?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let due = {
            let mut m = self.meta.lock()?;
            m.meta.committed = committed;
            let due = !m.writing && m.last_write.elapsed() >= COMMITTED_PERSIST_INTERVAL;
            m.writing |= due;
            due
        };
        if due {
            self.meta.persist_in_background(&self.log);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.meta.lock()?.meta.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Membership payloads are encoded here; normal payloads are borrowed as they are.
        let entries: Vec<Entry> = entries.into_iter().collect();
        let last = entries.last().map_or(0, |e| e.log_id.index);
        crate::hops::mark(crate::hops::Hop::LogAppend, last);
        let mut encoded: Vec<Option<Vec<u8>>> = Vec::with_capacity(entries.len());
        for e in &entries {
            encoded.push(match &e.payload {
                EntryPayload::Membership(m) => {
                    Some(serde_json::to_vec(m).map_err(io::Error::other)?)
                }
                _ => None,
            });
        }
        let mut records = Vec::with_capacity(entries.len());
        for (e, enc) in entries.iter().zip(&encoded) {
            let id = RecordId {
                term: e.log_id.leader_id.term,
                node: e.log_id.leader_id.node_id,
                index: e.log_id.index,
            };
            let (kind, payload): (RecordKind, &[u8]) = match &e.payload {
                EntryPayload::Blank => (RecordKind::BLANK, &[]),
                EntryPayload::Membership(_) => {
                    (RecordKind::MEMBERSHIP, enc.as_deref().unwrap_or(&[]))
                }
                EntryPayload::Normal(c) => {
                    let k = RecordKind(c.kind);
                    if k != RecordKind::MESSAGE_BATCH && c.kind < RecordKind::FIRST_INTERNAL {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("command kind {} is reserved", c.kind),
                        ));
                    }
                    (k, &c.data[..])
                }
            };
            records.push(NewRecord { id, kind, payload });
        }
        self.log.append(
            &records,
            Some(Box::new(move |r: io::Result<()>| {
                crate::hops::mark(crate::hops::Hop::Flushed, last);
                callback.io_completed(r)
            })),
        )?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.log.truncate_after(last_log_id.map(|l| l.index))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let mut m = self.meta.lock()?;
            if m.meta.last_purged.is_some_and(|p| p >= log_id) {
                return Ok(());
            }
            m.meta.last_purged = Some(log_id);
        }
        self.meta.persist()?;
        self.log.purge_upto(log_id.index)?;
        Ok(())
    }
}
