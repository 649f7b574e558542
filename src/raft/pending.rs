//! Messages that are stored but not yet visible: delay (timer) messages and transaction half
//! messages. Part of the replicated state, derived from the log like everything else.
//!
//! # Delay messages
//!
//! A delay message whose delivery time lies after its store time is written to the CommitLog
//! like any other message but gets **no ConsumeQueue unit**: apply files it in a time-ordered
//! index ([`PendingState::timers`], due time → messages). The leader's timer task sleeps until
//! the head of that index is due, then proposes a *fired copy* of each due message: the same
//! message with the store time of the firing (so `delivery ≤ store`), which apply dispatches
//! into its topic's queue and removes from the index. A copy whose timer is gone (fired
//! already: a second proposal after a leader change, or a retry) is dropped as a duplicate, so
//! each delay message becomes visible exactly once. Firing works from the log only: after a
//! failover or a full restart, the index is rebuilt by apply and the new leader fires what is
//! due. Appending a copy (instead of pointing a unit at the original) keeps ConsumeQueue
//! positions increasing, which crash recovery of the derived files relies on.
//!
//! # Transactions
//!
//! A half message is stored without a unit and filed in [`PendingState::halves`] (key
//! topic + message id). COMMIT appends a copy of type `TransactionCommitted`, which apply
//! dispatches if the half is still pending (and drops otherwise); ROLLBACK, or a discard after
//! too many unanswered checks, is an internal command that removes it. Every resolution is
//! remembered in a bounded window ([`PendingState::resolved`]), so a repeated EndTransaction
//! gets a definite answer and changes nothing. Check-backs (`checks`, `last_check_ms`) are
//! recorded through the log too, so their count survives a failover.
//!
//! Retention never deletes a segment that still holds a pending message
//! ([`PendingState::min_pos`]): the firing and the commit copy read the original.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// How many transaction resolutions are remembered for idempotent EndTransaction.
pub const RESOLVED_WINDOW: usize = 100_000;

/// A stored message that is in no ConsumeQueue yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingMessage {
    /// Topic.
    pub topic: String,
    /// Message id.
    pub message_id: String,
    /// CommitLog position of the stored original.
    pub pos: u64,
    /// Its encoded length.
    pub size: u32,
}

/// A transaction half message awaiting EndTransaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HalfMessage {
    /// The stored half message.
    pub msg: PendingMessage,
    /// When it was stored (leader clock, from the record).
    pub stored_ms: i64,
    /// Check-backs sent so far.
    pub checks: u32,
    /// When the last check-back was sent (0 = never).
    pub last_check_ms: i64,
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxOutcome {
    /// Committed: the message was made visible.
    Committed,
    /// Rolled back by the producer.
    RolledBack,
    /// Discarded by the broker after the maximum number of unanswered checks.
    Discarded,
}

impl std::fmt::Display for TxOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TxOutcome::Committed => "committed",
            TxOutcome::RolledBack => "rolled back",
            TxOutcome::Discarded => "discarded",
        })
    }
}

/// Pending delay and half messages (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingState {
    /// Delay messages by due time (ms since the epoch), in store order within one due time.
    #[serde(default)]
    pub timers: BTreeMap<i64, Vec<PendingMessage>>,
    /// Half messages by `topic \0 message id`.
    #[serde(default)]
    pub halves: BTreeMap<String, HalfMessage>,
    /// Recent resolutions by `topic \0 message id`.
    #[serde(default)]
    pub resolved: BTreeMap<String, TxOutcome>,
    /// Insertion order of `resolved`, oldest first (for the bound).
    #[serde(default)]
    resolved_order: VecDeque<String>,
}

/// The key of a message in [`PendingState::halves`] and [`PendingState::resolved`].
pub fn key(topic: &str, message_id: &str) -> String {
    format!("{topic}\u{0}{message_id}")
}

impl PendingState {
    /// File a delay message under its due time.
    pub fn add_timer(&mut self, due_ms: i64, m: PendingMessage) {
        self.timers.entry(due_ms).or_default().push(m);
    }

    /// Remove the timer of (`topic`, `id`) due at `due_ms`; whether it was pending.
    pub fn take_timer(&mut self, due_ms: i64, topic: &str, id: &str) -> bool {
        let Some(v) = self.timers.get_mut(&due_ms) else {
            return false;
        };
        let Some(i) = v
            .iter()
            .position(|m| m.topic == topic && m.message_id == id)
        else {
            return false;
        };
        v.remove(i);
        if v.is_empty() {
            self.timers.remove(&due_ms);
        }
        true
    }

    /// The earliest due time, if any timer is pending.
    pub fn next_due(&self) -> Option<i64> {
        self.timers.keys().next().copied()
    }

    /// Up to `max` timers due at or before `now_ms`, earliest first.
    pub fn due(&self, now_ms: i64, max: usize) -> Vec<(i64, PendingMessage)> {
        self.timers
            .range(..=now_ms)
            .flat_map(|(due, v)| v.iter().map(move |m| (*due, m.clone())))
            .take(max)
            .collect()
    }

    /// Number of pending delay messages.
    pub fn timer_count(&self) -> usize {
        self.timers.values().map(Vec::len).sum()
    }

    /// File a half message.
    pub fn add_half(&mut self, h: HalfMessage) {
        self.halves.insert(key(&h.msg.topic, &h.msg.message_id), h);
    }

    /// Resolve the half message `key`: removes it and remembers the outcome. `None` if it
    /// was not pending (resolved before, or never stored).
    pub fn resolve(&mut self, k: &str, outcome: TxOutcome) -> Option<HalfMessage> {
        let h = self.halves.remove(k)?;
        self.resolved.insert(k.to_string(), outcome);
        self.resolved_order.push_back(k.to_string());
        while self.resolved_order.len() > RESOLVED_WINDOW {
            if let Some(old) = self.resolved_order.pop_front() {
                self.resolved.remove(&old);
            }
        }
        Some(h)
    }

    /// Record a check-back of `key` sent at `at_ms`.
    pub fn checked(&mut self, k: &str, at_ms: i64) {
        if let Some(h) = self.halves.get_mut(k) {
            h.checks += 1;
            h.last_check_ms = at_ms;
        }
    }

    /// Half messages due for a check-back at `now_ms`: stored (or last checked) at least
    /// `interval_ms` ago.
    pub fn to_check(&self, now_ms: i64, interval_ms: i64) -> Vec<(String, HalfMessage)> {
        self.halves
            .iter()
            .filter(|(_, h)| now_ms - h.stored_ms.max(h.last_check_ms) >= interval_ms)
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect()
    }

    /// The lowest CommitLog position still needed by a pending message.
    pub fn min_pos(&self) -> Option<u64> {
        let t = self.timers.values().flatten().map(|m| m.pos).min();
        let h = self.halves.values().map(|h| h.msg.pos).min();
        match (t, h) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(id: &str, pos: u64) -> PendingMessage {
        PendingMessage {
            topic: "t".into(),
            message_id: id.into(),
            pos,
            size: 100,
        }
    }

    #[test]
    fn timers_are_time_ordered_and_fire_once() {
        let mut s = PendingState::default();
        s.add_timer(3000, pm("c", 30));
        s.add_timer(1000, pm("a", 10));
        s.add_timer(1000, pm("b", 20));
        assert_eq!(s.next_due(), Some(1000));
        assert_eq!(s.timer_count(), 3);
        let due: Vec<String> = s
            .due(2000, 10)
            .into_iter()
            .map(|(_, m)| m.message_id)
            .collect();
        assert_eq!(due, vec!["a", "b"]);
        assert_eq!(s.due(2000, 1).len(), 1);
        assert!(s.take_timer(1000, "t", "a"));
        assert!(!s.take_timer(1000, "t", "a"), "a timer fires once");
        assert!(!s.take_timer(3000, "t", "a"), "wrong due time");
        assert_eq!(s.min_pos(), Some(20));
        assert!(s.take_timer(1000, "t", "b"));
        assert_eq!(s.next_due(), Some(3000));
        assert!(s.take_timer(3000, "t", "c"));
        assert_eq!(s.next_due(), None);
        assert_eq!(s.min_pos(), None);
    }

    #[test]
    fn halves_resolve_once_and_are_remembered() {
        let mut s = PendingState::default();
        s.add_half(HalfMessage {
            msg: pm("x", 5),
            stored_ms: 1000,
            checks: 0,
            last_check_ms: 0,
        });
        let k = key("t", "x");
        assert_eq!(s.to_check(1500, 1000).len(), 0);
        assert_eq!(s.to_check(2000, 1000).len(), 1);
        s.checked(&k, 2000);
        assert_eq!(s.to_check(2500, 1000).len(), 0);
        assert_eq!(s.halves[&k].checks, 1);
        assert_eq!(s.min_pos(), Some(5));
        assert!(s.resolve(&k, TxOutcome::Committed).is_some());
        assert!(s.resolve(&k, TxOutcome::RolledBack).is_none());
        assert_eq!(s.resolved.get(&k), Some(&TxOutcome::Committed));
    }

    #[test]
    fn resolved_window_is_bounded() {
        let mut s = PendingState::default();
        for i in 0..(RESOLVED_WINDOW + 10) {
            s.add_half(HalfMessage {
                msg: pm(&i.to_string(), i as u64),
                stored_ms: 0,
                checks: 0,
                last_check_ms: 0,
            });
            s.resolve(&key("t", &i.to_string()), TxOutcome::RolledBack);
        }
        assert_eq!(s.resolved.len(), RESOLVED_WINDOW);
        assert!(!s.resolved.contains_key(&key("t", "0")));
        assert!(
            s.resolved
                .contains_key(&key("t", &(RESOLVED_WINDOW + 9).to_string()))
        );
    }

    #[test]
    fn serde_round_trip_with_integer_keys() {
        let mut s = PendingState::default();
        s.add_timer(-5, pm("a", 1));
        s.add_timer(1_700_000_000_000, pm("b", 2));
        let j = serde_json::to_vec(&s).unwrap_or_default();
        let back: PendingState = serde_json::from_slice(&j).unwrap_or_default();
        assert_eq!(back, s);
    }
}
