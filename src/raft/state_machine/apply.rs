//! Apply: one committed entry at a time, in log order, identically on every replica (see the
//! module docs of [`super`]).
//!
//! * [`SmCore::apply_entry`] dispatches on the entry kind;
//! * [`SmCore::apply_messages`] stores a message batch (queue offsets, recent-id window,
//!   pending delay and transaction messages) and counts the message metrics;
//! * [`SmCore::apply_internal`] applies an [`InternalCommand`]: each variant changes its own
//!   part of [`AppliedState`](super::AppliedState), and a new part of the replicated state
//!   gets its arm here.

use std::collections::BTreeMap;
use std::io;

use bytes::Bytes;
use openraft::EntryPayload;

use super::commands::{
    INTERNAL_BATCH_KIND, InternalCommand, PENDING_OFFSET, Place, encode_batch_result,
};
use super::{SmCore, SmHandle, SmInner, io_err};
use crate::raft::consume::HandleOutcome;
use crate::raft::dedupe;
use crate::raft::pending::{self, HalfMessage, PendingMessage, TxOutcome};
use crate::raft::types::{Entry, LogId, NodeId, StoredMembership};
use crate::storage::dispatch::Disposition;
use crate::storage::message::{self, MessageType, MessageView};
use crate::storage::record::RecordKind;

/// What identifies the entries proposed by this process.
#[derive(Debug, Clone, Copy)]
pub(super) struct MetricsOrigin {
    node: NodeId,
    start_term: u64,
    start_next_index: u64,
}

fn outcome(o: HandleOutcome) -> Bytes {
    match o {
        HandleOutcome::Ok => Bytes::from_static(b"ok"),
        HandleOutcome::Stale => Bytes::from_static(b"stale"),
    }
}

impl SmCore {
    /// Apply one entry; returns the writer's response bytes.
    pub(super) fn apply_entry(&self, inner: &mut SmInner, entry: &Entry) -> io::Result<Bytes> {
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
            EntryPayload::Normal(cmd) if cmd.kind == INTERNAL_BATCH_KIND => {
                match super::command_batch::split(cmd.kind, &cmd.data) {
                    Ok(cmds) => {
                        let rs: Vec<Bytes> = cmds
                            .into_iter()
                            .map(|(kind, data)| self.apply_internal(inner, kind, data))
                            .collect();
                        super::command_batch::encode_responses(&rs)
                    }
                    // Deterministic on every replica: an undecodable batch is skipped whole.
                    Err(e) => Bytes::from(format!("ignored: undecodable command batch: {e}")),
                }
            }
            EntryPayload::Normal(cmd) if super::codec::is_internal(cmd.kind) => {
                self.apply_internal(inner, cmd.kind, &cmd.data)
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
        let dispatched =
            inner
                .dispatcher
                .dispatch_decoded(&record, &views, |_v: &MessageView| {
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

    fn apply_internal(&self, inner: &mut SmInner, kind: u8, data: &[u8]) -> Bytes {
        let cmd: InternalCommand = match super::codec::decode(kind, data) {
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
            InternalCommand::Acl(cmd) => {
                // The answer (a message or why nothing changed) as JSON for the proposer.
                let answer = inner.state.acl.apply(cmd);
                Bytes::from(serde_json::to_vec(&answer).unwrap_or_default())
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
}
