//! Consumer-group delivery state, replicated through the Raft log.
//!
//! RocketMQ 5's SimpleConsumer / PushConsumer model ("pop"): a consumer receives messages
//! with an *invisible duration*; it acks each one, or the message becomes visible again when
//! the duration ends and is delivered once more with `delivery_attempt + 1`.
//!
//! Per (group, topic, queue) the state is:
//!
//! * `next_offset` — the first offset never handed out;
//! * `inflight` — offsets handed out and not yet acked: until when they are invisible, which
//!   delivery attempt they are on, and the *sequence* of that delivery (a receipt handle names
//!   one delivery; an ack with the handle of an older delivery is stale).
//!
//! Every offset below `next_offset` that is not in flight is consumed. The leader decides a
//! delivery (which offsets, until when, with which sequence) and writes it as a [`Pop`]
//! command; acks and invisibility changes are commands too. Applying them only uses the
//! values in the command, never the clock, so every replica holds the same state and a new
//! leader redelivers exactly the unacked messages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One delivery in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inflight {
    /// Invisible until this wall-clock time (ms since the epoch), decided by the leader.
    pub invisible_until_ms: i64,
    /// Delivery attempt, starting at 1.
    pub attempt: u32,
    /// Sequence of this delivery (part of the receipt handle).
    pub seq: u64,
}

/// Delivery state of one queue for one consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// First offset never handed out.
    pub next_offset: u64,
    /// Offsets handed out and not acked.
    pub inflight: BTreeMap<u64, Inflight>,
}

impl QueueState {
    /// Everything below this offset is consumed.
    pub fn ack_offset(&self) -> u64 {
        self.inflight
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_offset)
    }
}

/// A consumer group's settings (replicated metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    /// Group name.
    pub name: String,
    /// After this many deliveries without an ack a message goes to `%DLQ%<group>`.
    pub max_delivery_attempts: u32,
    /// Orderly (FIFO) consumption: a queue's next message is delivered only after the
    /// previous one is acked.
    pub fifo: bool,
    /// Broadcasting: every consumer (client id) of the group gets every message, with its
    /// own progress (see [`state_key`]). Clustering (false) shares the messages.
    #[serde(default)]
    pub broadcast: bool,
    /// Redelivery delays after failed consumptions, in ms: attempt n waits element n-1 (the
    /// last one repeats). Advertised to PushConsumers in their Settings.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff_ms: Vec<u64>,
}

/// RocketMQ's retry delays: 1s 5s 10s 30s 1m 2m … 10m 20m 30m 1h 2h.
pub fn default_retry_backoff() -> Vec<u64> {
    [
        1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200,
    ]
    .iter()
    .map(|s| s * 1000)
    .collect()
}

/// The key a group's delivery state is kept under: the group itself (clustering), or
/// `group@client` per consumer for a broadcasting group. `@` cannot occur in group names.
pub fn state_key(group: &GroupConfig, client_id: &str) -> String {
    if group.broadcast {
        format!("{}@{client_id}", group.name)
    } else {
        group.name.clone()
    }
}

/// The group a delivery-state key belongs to (inverse of [`state_key`]).
pub fn group_of_key(key: &str) -> &str {
    key.split('@').next().unwrap_or(key)
}

impl GroupConfig {
    /// RocketMQ's defaults: 16 retries after the first delivery.
    pub fn default_for(name: &str) -> Self {
        GroupConfig {
            name: name.to_string(),
            max_delivery_attempts: 17,
            fifo: false,
            broadcast: false,
            retry_backoff_ms: default_retry_backoff(),
        }
    }
}

/// The dead-letter topic of a group.
pub fn dlq_topic(group: &str) -> String {
    format!("%DLQ%{group}")
}

/// Consumer-group state of a broker group: group → topic → queue → state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumeState {
    /// Group configurations (created implicitly with defaults on first use).
    pub groups: BTreeMap<String, GroupConfig>,
    /// Delivery state.
    pub queues: BTreeMap<String, BTreeMap<String, BTreeMap<u32, QueueState>>>,
}

/// A delivery decided by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pop {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue: u32,
    /// (offset, attempt) of each message delivered.
    pub deliver: Vec<(u64, u32)>,
    /// Offsets below this that were skipped by a filter count as consumed.
    pub skip_to: u64,
    /// Invisible until (ms since the epoch).
    pub invisible_until_ms: i64,
    /// Sequence of this delivery.
    pub seq: u64,
}

/// Result of acking or changing one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandleOutcome {
    /// Done.
    Ok,
    /// The handle names an older delivery or an offset that is not in flight.
    Stale,
}

impl ConsumeState {
    /// The state of one queue, if any.
    pub fn queue(&self, group: &str, topic: &str, queue: u32) -> Option<&QueueState> {
        self.queues.get(group)?.get(topic)?.get(&queue)
    }

    fn queue_mut(&mut self, group: &str, topic: &str, queue: u32) -> &mut QueueState {
        self.queues
            .entry(group.to_string())
            .or_default()
            .entry(topic.to_string())
            .or_default()
            .entry(queue)
            .or_default()
    }

    /// The group's configuration (defaults if never configured).
    pub fn group(&self, name: &str) -> GroupConfig {
        self.groups
            .get(name)
            .cloned()
            .unwrap_or_else(|| GroupConfig::default_for(name))
    }

    /// Apply a delivery.
    pub fn apply_pop(&mut self, p: &Pop) {
        let q = self.queue_mut(&p.group, &p.topic, p.queue);
        if p.skip_to > q.next_offset {
            q.next_offset = p.skip_to;
        }
        for (offset, attempt) in &p.deliver {
            q.inflight.insert(
                *offset,
                Inflight {
                    invisible_until_ms: p.invisible_until_ms,
                    attempt: *attempt,
                    seq: p.seq,
                },
            );
            if *offset >= q.next_offset {
                q.next_offset = offset + 1;
            }
        }
    }

    /// Apply an ack of delivery `seq` of `offset`.
    pub fn apply_ack(
        &mut self,
        group: &str,
        topic: &str,
        queue: u32,
        offset: u64,
        seq: u64,
    ) -> HandleOutcome {
        let q = self.queue_mut(group, topic, queue);
        match q.inflight.get(&offset) {
            Some(f) if f.seq == seq => {
                q.inflight.remove(&offset);
                HandleOutcome::Ok
            }
            _ => HandleOutcome::Stale,
        }
    }

    /// Apply an invisibility change: the delivery gets a new deadline and a new sequence.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_change_invisible(
        &mut self,
        group: &str,
        topic: &str,
        queue: u32,
        offset: u64,
        seq: u64,
        until_ms: i64,
        new_seq: u64,
    ) -> HandleOutcome {
        let q = self.queue_mut(group, topic, queue);
        match q.inflight.get_mut(&offset) {
            Some(f) if f.seq == seq => {
                f.invisible_until_ms = until_ms;
                f.seq = new_seq;
                HandleOutcome::Ok
            }
            _ => HandleOutcome::Stale,
        }
    }

    /// Apply a renewal: every delivery in `items` (offset, seq) that is still the current one
    /// gets the deadline `until_ms`; its sequence (and so the client's handle) is unchanged.
    /// Returns how many were renewed.
    pub fn apply_renew(
        &mut self,
        group: &str,
        topic: &str,
        queue: u32,
        items: &[(u64, u64)],
        until_ms: i64,
    ) -> usize {
        let q = self.queue_mut(group, topic, queue);
        let mut n = 0;
        for (offset, seq) in items {
            if let Some(f) = q.inflight.get_mut(offset)
                && f.seq == *seq
                && f.invisible_until_ms < until_ms
            {
                f.invisible_until_ms = until_ms;
                n += 1;
            }
        }
        n
    }

    /// Move a queue's consume position (admin reset / commit offset): everything below
    /// `offset` is consumed, nothing at or above it is in flight.
    pub fn apply_reset(&mut self, group: &str, topic: &str, queue: u32, offset: u64) {
        let q = self.queue_mut(group, topic, queue);
        q.inflight.clear();
        q.next_offset = offset;
    }

    /// Forget a topic (deleted).
    pub fn remove_topic(&mut self, topic: &str) {
        for g in self.queues.values_mut() {
            g.remove(topic);
        }
    }
}

/// A receipt handle names one delivery: `r1.<queue>.<offset>.<seq>.<crc>` with a CRC32C of
/// the rest (so a mangled handle is rejected rather than acking the wrong message).
pub fn encode_handle(queue: u32, offset: u64, seq: u64) -> String {
    let body = format!("r1.{queue}.{offset}.{seq:x}");
    let crc = crc32c::crc32c(body.as_bytes());
    format!("{body}.{crc:08x}")
}

/// Parse a receipt handle into (queue, offset, seq).
pub fn decode_handle(h: &str) -> Option<(u32, u64, u64)> {
    let (body, crc) = h.rsplit_once('.')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32c::crc32c(body.as_bytes()) {
        return None;
    }
    let mut it = body.split('.');
    if it.next()? != "r1" {
        return None;
    }
    let queue = it.next()?.parse().ok()?;
    let offset = it.next()?.parse().ok()?;
    let seq = u64::from_str_radix(it.next()?, 16).ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((queue, offset, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_reject_garbage() {
        let h = encode_handle(3, 12345, 0xdead_beef);
        assert_eq!(decode_handle(&h), Some((3, 12345, 0xdead_beef)));
        assert_eq!(decode_handle("r1.3.12345.deadbeef.00000000"), None);
        assert_eq!(decode_handle(""), None);
        assert_eq!(decode_handle("garbage"), None);
        let mut bad = h.clone().into_bytes();
        bad[3] = b'9';
        assert_eq!(
            decode_handle(&String::from_utf8(bad).unwrap_or_default()),
            None
        );
    }

    #[test]
    fn pop_ack_and_redelivery_state() {
        let mut s = ConsumeState::default();
        s.apply_pop(&Pop {
            group: "g".into(),
            topic: "t".into(),
            queue: 0,
            deliver: vec![(0, 1), (1, 1), (2, 1)],
            skip_to: 0,
            invisible_until_ms: 1000,
            seq: 7,
        });
        let q = s.queue("g", "t", 0).cloned().unwrap_or_default();
        assert_eq!(q.next_offset, 3);
        assert_eq!(q.ack_offset(), 0);
        assert_eq!(s.apply_ack("g", "t", 0, 1, 7), HandleOutcome::Ok);
        assert_eq!(s.apply_ack("g", "t", 0, 1, 7), HandleOutcome::Stale);
        assert_eq!(s.apply_ack("g", "t", 0, 0, 6), HandleOutcome::Stale);
        assert_eq!(s.apply_ack("g", "t", 0, 0, 7), HandleOutcome::Ok);
        assert_eq!(s.queue("g", "t", 0).map(|q| q.ack_offset()), Some(2));
        // Redelivery of offset 2 with a new sequence makes the old handle stale.
        s.apply_pop(&Pop {
            group: "g".into(),
            topic: "t".into(),
            queue: 0,
            deliver: vec![(2, 2)],
            skip_to: 0,
            invisible_until_ms: 2000,
            seq: 8,
        });
        assert_eq!(
            s.apply_change_invisible("g", "t", 0, 2, 7, 5000, 9),
            HandleOutcome::Stale
        );
        assert_eq!(
            s.apply_change_invisible("g", "t", 0, 2, 8, 5000, 9),
            HandleOutcome::Ok
        );
        assert_eq!(s.apply_renew("g", "t", 0, &[(2, 9), (2, 8)], 9000), 1);
        assert_eq!(
            s.queue("g", "t", 0)
                .and_then(|q| q.inflight.get(&2))
                .map(|f| (f.invisible_until_ms, f.seq)),
            Some((9000, 9))
        );
        assert_eq!(s.apply_ack("g", "t", 0, 2, 9), HandleOutcome::Ok);
        assert_eq!(s.queue("g", "t", 0).map(|q| q.ack_offset()), Some(3));
        // Filtered messages are skipped without being in flight.
        s.apply_pop(&Pop {
            group: "g".into(),
            topic: "t".into(),
            queue: 0,
            deliver: vec![],
            skip_to: 10,
            invisible_until_ms: 0,
            seq: 10,
        });
        assert_eq!(s.queue("g", "t", 0).map(|q| q.ack_offset()), Some(10));
    }
}
