//! The broker's read side: [`SmHandle`] queries over the applied state (topics, groups,
//! offsets, pending delay and transaction messages, delivery state) and over the stores it
//! derives (ConsumeQueues, key index) and the CommitLog (messages, their records and consume
//! history). Everything here reads what has been applied, so it never sees an uncommitted
//! entry.

use super::commands::{InternalCommand, Place, TopicConfig};
use super::{SmHandle, SmInner};
use crate::raft::consume::{self, GroupConfig};
use crate::raft::dedupe;
use crate::raft::pending::{self, HalfMessage, PendingMessage, TxOutcome};
use crate::raft::types::LogId;
use crate::storage::error::StoreError;
use crate::storage::message::{self, MessageView};

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

impl SmHandle {
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

    pub(super) fn read(&self) -> Option<std::sync::RwLockReadGuard<'_, SmInner>> {
        self.core.inner.read().ok()
    }

    /// A topic's configuration as applied here.
    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.read()?.state.topics.get(name).cloned()
    }

    /// Run `f` on the applied users and policies (ACL). A poisoned lock reads as no users
    /// and no policies: access fails closed.
    pub fn with_acl<R>(&self, f: impl FnOnce(&crate::acl::AclState) -> R) -> R {
        match self.read() {
            Some(g) => f(&g.state.acl),
            None => f(&crate::acl::AclState::default()),
        }
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

    /// Half messages due for a check-back (see [`PendingState::to_check`](crate::raft::pending::PendingState::to_check)).
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
            let max = c.group(consume::group_of_key(group)).max_delivery_attempts;
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
            if !super::codec::is_internal(rec.kind.0) {
                continue;
            }
            let Ok(cmds) = super::command_batch::split(rec.kind.0, &rec.payload) else {
                continue;
            };
            for (kind, data) in cmds {
                let Ok(cmd) = super::codec::decode(kind, data) else {
                    continue;
                };
                consume_event(&mut out, cmd, topic, queue, offset, i);
            }
        }
        Ok((out, scanned))
    }
}

/// The event `cmd` (at Raft index `raft_index`) is for the message (`topic`, `queue`,
/// `offset`), if any.
fn consume_event(
    out: &mut Vec<ConsumeEvent>,
    cmd: InternalCommand,
    topic: &str,
    queue: u32,
    offset: u64,
    raft_index: u64,
) {
    match cmd {
        InternalCommand::Pop(p) if p.topic == topic && p.queue == queue => {
            if let Some((_, attempt)) = p.deliver.iter().find(|(o, _)| *o == offset) {
                out.push(ConsumeEvent::Delivered {
                    group: p.group,
                    attempt: *attempt,
                    // The high bits of a delivery sequence are the leader's clock.
                    at_ms: (p.seq >> 20) as i64,
                    invisible_until_ms: p.invisible_until_ms,
                    raft_index,
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
            out.push(ConsumeEvent::Acked { group, raft_index });
        }
        InternalCommand::AckMany {
            group,
            topic: t,
            items,
        } if t == topic && items.iter().any(|(q, o, _)| *q == queue && *o == offset) => {
            out.push(ConsumeEvent::Acked { group, raft_index });
        }
        _ => {}
    }
}
