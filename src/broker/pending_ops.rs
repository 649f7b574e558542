//! The leader's work on messages that wait: firing delay messages when they are due,
//! resolving transactions (EndTransaction, check-backs, discards) and renewing deliveries a
//! PushConsumer still holds. The state all of this reads is replicated (`raft::pending`,
//! `raft::consume`); these tasks only *propose*, so a new leader simply carries on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::type_config::async_runtime::watch::WatchReceiver;

use super::error::BrokerError;
use super::node::Node;
use super::sessions::RenewKey;
use crate::proto::apache::rocketmq::v2;
use crate::raft::pending::{PendingMessage, TxOutcome};
use crate::raft::state_machine::{InternalCommand, PENDING_OFFSET};
use crate::storage::message::{MessageType, MessageView, NewMessage};

/// Most delay messages fired in one Raft entry.
const FIRE_BATCH: usize = 256;
/// How long before its deadline a held delivery is renewed.
pub const RENEW_AHEAD: Duration = Duration::from_secs(10);
/// The invisible time the broker chooses for auto-renewed deliveries, and each renewal's
/// extension.
pub const RENEW_SLICE: Duration = Duration::from_secs(30);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A broker-made copy of a stored message with a new type, store time and delivery time.
fn copy_of(m: &MessageView, msg_type: MessageType, store_ms: i64, delivery_ms: i64) -> NewMessage {
    NewMessage {
        msg_type,
        queue_id: m.queue_id,
        born_timestamp_ms: m.born_timestamp_ms,
        store_timestamp_ms: store_ms,
        delivery_timestamp_ms: delivery_ms,
        topic: m.topic.to_string(),
        message_id: m.message_id.to_string(),
        tag: m.tag.to_string(),
        message_group: m.message_group.to_string(),
        keys: m.keys.iter().map(|k| k.to_string()).collect(),
        properties: m
            .properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        born_host: m.born_host.to_string(),
        body: m.body.clone(),
    }
}

impl Node {
    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state.is_leader()
    }

    /// Fire due delay messages: sleep until the earliest due time (a time-ordered index, no
    /// scan), then append their fired copies.
    pub(crate) async fn timer_loop(self: Arc<Self>) {
        let mut stop = self.shutdown.subscribe();
        let mut applied = self.sm.subscribe_applied();
        loop {
            let now = now_ms();
            let wait = if !self.is_leader() {
                Duration::from_millis(250)
            } else {
                match self.sm.next_due() {
                    Some(d) if d <= now => Duration::ZERO,
                    Some(d) => Duration::from_millis((d - now).min(1000) as u64),
                    None => Duration::from_secs(1),
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // A newly stored delay message may be due earlier.
                    _ = applied.changed() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                continue;
            }
            if let Err(e) = self.fire_due(now).await {
                tracing::warn!("firing delay messages: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }

    async fn fire_due(&self, now: i64) -> Result<(), BrokerError> {
        let due: Vec<(i64, PendingMessage)> = self.sm.due_timers(now, FIRE_BATCH);
        if due.is_empty() {
            return Ok(());
        }
        let mut copies = Vec::with_capacity(due.len());
        for (due_ms, p) in &due {
            let m = self.sm.message_at(p.pos, p.size)?;
            // Store time ≥ delivery time is what marks the copy as fired.
            copies.push(copy_of(&m, MessageType::Delay, now.max(*due_ms), *due_ms));
        }
        self.write_copies(&copies).await?;
        metrics::counter!("raftmq_delay_messages_fired_total").increment(due.len() as u64);
        Ok(())
    }

    /// EndTransaction: COMMIT appends the committed copy, ROLLBACK is a command. Repeating a
    /// resolution is fine; contradicting an earlier one is an error.
    pub(crate) async fn end_transaction(
        &self,
        topic: &str,
        message_id: &str,
        commit: bool,
    ) -> Result<&'static str, BrokerError> {
        let want = if commit {
            TxOutcome::Committed
        } else {
            TxOutcome::RolledBack
        };
        let already = |o: Option<TxOutcome>| match o {
            Some(o) if o == want => Ok("already resolved the same way"),
            Some(o) => Err(BrokerError::Transaction(format!(
                "transaction {message_id} on `{topic}` was already {o}"
            ))),
            None => Err(BrokerError::Transaction(format!(
                "no pending transaction {message_id} on `{topic}`"
            ))),
        };
        let Some(h) = self.sm.half(topic, message_id) else {
            return already(self.sm.tx_resolution(topic, message_id));
        };
        if commit {
            let m = self.sm.message_at(h.msg.pos, h.msg.size)?;
            let copy = copy_of(&m, MessageType::TransactionCommitted, now_ms(), 0);
            let places = self.write_copies(std::slice::from_ref(&copy)).await?;
            match places.first() {
                Some(p) if !p.duplicate && p.offset != PENDING_OFFSET => {
                    metrics::counter!("raftmq_transactions_total", "outcome" => "committed")
                        .increment(1);
                    Ok("committed")
                }
                // Resolved concurrently, by another request or a discard.
                _ => already(self.sm.tx_resolution(topic, message_id)),
            }
        } else {
            let resp = self
                .propose(InternalCommand::EndTransaction {
                    topic: topic.to_string(),
                    message_id: message_id.to_string(),
                    outcome: TxOutcome::RolledBack,
                })
                .await?;
            if &resp.data[..] == b"ok" {
                metrics::counter!("raftmq_transactions_total", "outcome" => "rolled_back")
                    .increment(1);
                Ok("rolled back")
            } else {
                already(self.sm.tx_resolution(topic, message_id))
            }
        }
    }

    /// Check back half messages that stayed unresolved for an interval, through a
    /// producer's Telemetry stream; discard them after the maximum number of checks.
    pub(crate) async fn transaction_check_loop(self: Arc<Self>) {
        let mut stop = self.shutdown.subscribe();
        let tick = (self.config.transaction_check_interval / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if !self.is_leader() {
                continue;
            }
            if let Err(e) = self.check_transactions().await {
                tracing::warn!("transaction check-back: {e}");
            }
        }
    }

    async fn check_transactions(&self) -> Result<(), BrokerError> {
        let now = now_ms();
        let interval = self.config.transaction_check_interval.as_millis() as i64;
        let mut checked = Vec::new();
        for (key, h) in self.sm.halves_to_check(now, interval) {
            if h.checks >= self.config.transaction_max_checks {
                self.propose(InternalCommand::EndTransaction {
                    topic: h.msg.topic.clone(),
                    message_id: h.msg.message_id.clone(),
                    outcome: TxOutcome::Discarded,
                })
                .await?;
                metrics::counter!("raftmq_transactions_total", "outcome" => "discarded")
                    .increment(1);
                tracing::info!(
                    "discarded transaction {} on `{}` after {} unanswered checks",
                    h.msg.message_id,
                    h.msg.topic,
                    h.checks
                );
                continue;
            }
            // A check counts even when no producer is connected, so an orphan whose
            // producer never comes back is discarded in bounded time.
            let streams = self.sessions.producer_streams(&h.msg.topic);
            if let Some((client, tx)) = streams.get(h.checks as usize % streams.len().max(1)) {
                let m = self.sm.message_at(h.msg.pos, h.msg.size)?;
                let msg = super::messaging::to_v2_message("", &m, &self.config.advertise);
                let cmd = v2::TelemetryCommand {
                    status: None,
                    command: Some(
                        v2::telemetry_command::Command::RecoverOrphanedTransactionCommand(
                            v2::RecoverOrphanedTransactionCommand {
                                message: Some(msg),
                                transaction_id: h.msg.message_id.clone(),
                            },
                        ),
                    ),
                };
                if tx.try_send(Ok(cmd)).is_err() {
                    tracing::debug!("telemetry stream of {client} is full or closed");
                }
            }
            checked.push(key);
        }
        if !checked.is_empty() {
            metrics::counter!("raftmq_transaction_checks_total").increment(checked.len() as u64);
            self.propose(InternalCommand::TxChecked {
                keys: checked,
                at_ms: now,
            })
            .await?;
        }
        Ok(())
    }

    /// Keep deliveries invisible while the PushConsumer that holds them is alive.
    pub(crate) async fn renew_loop(self: Arc<Self>) {
        let mut stop = self.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if !self.is_leader() {
                continue;
            }
            if let Err(e) = self.renew_held().await {
                tracing::warn!("renewing deliveries: {e}");
            }
        }
    }

    async fn renew_held(&self) -> Result<(), BrokerError> {
        let now = now_ms();
        let until = now + RENEW_SLICE.as_millis() as i64;
        let mut batches: BTreeMap<(String, String, u32), Vec<(RenewKey, u64)>> = BTreeMap::new();
        for (key, r) in self.sessions.renewals() {
            let current = self
                .sm
                .queue_state(&key.group, &key.topic, key.queue)
                .inflight
                .get(&key.offset)
                .is_some_and(|f| f.seq == r.seq);
            // Acked, nacked (new sequence), redelivered, or its client is gone: let it go.
            if !current || !self.sessions.alive(&r.client_id) {
                self.sessions.forget_renewal(&key);
                continue;
            }
            if r.until_ms - now > RENEW_AHEAD.as_millis() as i64 {
                continue;
            }
            batches
                .entry((key.group.clone(), key.topic.clone(), key.queue))
                .or_default()
                .push((key, r.seq));
        }
        for ((group, topic, queue), items) in batches {
            self.propose(InternalCommand::Renew {
                group,
                topic,
                queue,
                items: items.iter().map(|(k, seq)| (k.offset, *seq)).collect(),
                until_ms: until,
            })
            .await?;
            for (k, seq) in &items {
                self.sessions.renewed(k, *seq, until);
            }
        }
        Ok(())
    }
}
