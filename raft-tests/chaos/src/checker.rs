//! The checker: reads a history and reports lost messages, duplicates, order violations,
//! inconsistent offsets, redeliveries of acked messages and the unavailability window (RTO)
//! after each fault. Pure: a function of the events only.

#![allow(clippy::type_complexity)]

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::history::{Event, SendOutcome};

#[path = "checker/liveness.rs"]
mod liveness;
#[path = "checker/report.rs"]
mod report;

use self::liveness::{client_sends, liveness};
pub use self::report::table;

/// How many examples of each problem the report lists.
const SAMPLES: usize = 20;

/// Everything the checker found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Analysis {
    /// Distinct message ids sent (at least one call).
    pub sent: usize,
    /// Send calls (retries included).
    pub send_calls: usize,
    /// Message ids acknowledged at least once.
    pub acked: usize,
    /// Message ids never acknowledged (every call failed or timed out).
    pub indeterminate: usize,
    /// Indeterminate sends that were stored nonetheless (found in the final read or delivered).
    pub indeterminate_stored: usize,
    /// Distinct (consumer group, message) deliveries.
    pub delivered: usize,
    /// Deliveries in total (redeliveries included).
    pub deliveries: usize,
    /// Acknowledged, never delivered and absent from the final read of every replica.
    pub lost: Vec<String>,
    /// Number of lost messages.
    pub lost_count: usize,
    /// Acknowledged, never delivered, and below every replica's minimum offset (deleted by
    /// retention before any consumer got it). Not a safety violation; reported.
    pub expired_undelivered: usize,
    /// (consumer group, message) stored (in the final read) but never delivered to a group
    /// subscribed to its topic.
    pub unseen: Vec<String>,
    /// Number of unseen (group, message) pairs.
    pub unseen_count: usize,
    /// Messages stored at more than one queue offset.
    pub stored_duplicates: usize,
    /// ... of which the message had more than one send call (a client retry explains it).
    pub stored_duplicates_explained_by_retry: usize,
    /// (consumer group, message) delivered more than once.
    pub redelivered: usize,
    /// ... of which an ack had succeeded before a later delivery.
    pub acked_redelivered: usize,
    /// Order violations within a message group (FIFO topics).
    pub order_violations: Vec<String>,
    /// Number of order violations.
    pub order_violation_count: usize,
    /// Two messages at one queue offset, or one message at two offsets, or an acknowledged or
    /// delivered offset that differs from where the message is stored.
    pub inconsistent_offsets: Vec<String>,
    /// Number of inconsistent offsets.
    pub inconsistent_offset_count: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Milliseconds from each fault to the first acknowledged send started after it.
    pub rto_ms: Vec<(String, u64)>,
    /// Faults after which no send was acknowledged again.
    pub rto_unrecovered: usize,
    /// RTO p50 / p99 / max in milliseconds.
    pub rto_p50_ms: u64,
    /// RTO p99.
    pub rto_p99_ms: u64,
    /// RTO max.
    pub rto_max_ms: u64,
    /// Max RTO per fault kind.
    pub rto_max_by_kind_ms: BTreeMap<String, u64>,
    /// The stall bound of the liveness rule (ms without an active fault).
    pub liveness_stall_bound_ms: u64,
    /// Progress of every subscribed consumer group.
    pub liveness: Vec<GroupLiveness>,
    /// Liveness failures: a consumer group that went longer than the bound without a new
    /// delivery, counting only time with no active fault, while acknowledged messages of its
    /// topic waited for it; or that had not received every acknowledged message of its topic
    /// when the final drain ended.
    pub liveness_failures: Vec<String>,
    /// Number of liveness failures.
    pub liveness_failure_count: usize,
    /// Send calls per client library (`rust`: raftmq::client, `python`: the official client).
    pub clients: BTreeMap<String, ClientSends>,
}

/// Settings of the checker.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// Longest a consumer group may go without a new delivery while acknowledged messages wait
    /// for it, counting only time with no active fault (fault start to its heal), in ms.
    pub stall_bound_ms: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            stall_bound_ms: 20_000,
        }
    }
}

/// One consumer group's progress.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupLiveness {
    /// The group.
    pub consumer_group: String,
    /// Its topic.
    pub topic: String,
    /// Messages it must receive: acknowledged to their producer, neither lost nor expired.
    pub expected: usize,
    /// ... of which it had not received when the drain ended.
    pub missing_at_end: usize,
    /// Longest time without a new delivery while messages waited for it, counting only time
    /// with no active fault (ms).
    pub longest_stall_ms: u64,
    /// Where that stall was: history ms from, to.
    pub longest_stall_at: (u64, u64),
    /// Stalls longer than the bound.
    pub stalls_over_bound: usize,
}

/// One client library's send calls.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientSends {
    /// Producers.
    pub producers: usize,
    /// Send calls.
    pub send_calls: usize,
    /// Send calls that failed (the client's own retries inside a call included).
    pub failed_sends: usize,
    /// Longest time between two acknowledged sends of one producer (ms), not counting the
    /// time the harness held producers (retention fault).
    pub longest_gap_ms: u64,
    /// By fault kind. A fault's window runs from its start to the next fault's start.
    pub by_fault_kind: BTreeMap<String, FaultSends>,
}

/// Sends under the faults of one kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FaultSends {
    /// Faults of the kind.
    pub faults: usize,
    /// Failed send calls started in their windows.
    pub failed_sends: usize,
    /// Longest gap between two acknowledged sends of one producer overlapping a window: max
    /// over the kind's faults (ms).
    pub gap_max_ms: u64,
    /// ... p99 over the kind's faults (ms).
    pub gap_p99_ms: u64,
}

impl Analysis {
    /// Lost, order or offset violations: the run fails.
    pub fn safety_violations(&self) -> usize {
        self.lost_count + self.order_violation_count + self.inconsistent_offset_count
    }
}

fn push(v: &mut Vec<String>, count: &mut usize, s: String) {
    *count += 1;
    if v.len() < SAMPLES {
        v.push(s);
    }
}

#[derive(Default)]
struct SendInfo {
    topic: String,
    producer: String,
    group: Option<String>,
    seq: u64,
    calls: usize,
    first_t0: u64,
    first_ack: Option<u64>,
    /// Acknowledged places: (broker group and queue when known, offset).
    ack_offsets: BTreeSet<(Option<(String, u32)>, i64)>,
}

/// A place in a queue: (broker group, topic, queue, offset).
type Slot = (String, String, u32, u64);

/// The (broker group, queue) an acknowledged send was stored in, when the history says so:
/// for a message group, the one queue its messages were seen in; otherwise the queue the
/// receipt names, but only for a single send call (a retry that the broker deduplicates is
/// acknowledged with the first copy's offset, in whatever queue that one went to).
fn known_queue(
    s: &SendInfo,
    receipt: Option<&(String, u32)>,
    group_queues: &BTreeMap<(String, String), BTreeSet<(String, u32)>>,
) -> Option<(String, u32)> {
    match &s.group {
        Some(g) => {
            let qs = group_queues.get(&(s.topic.clone(), g.clone()))?;
            (qs.len() == 1).then(|| qs.iter().next().cloned()).flatten()
        }
        None if s.calls == 1 => receipt.cloned(),
        None => None,
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Analyse a history with the default settings.
pub fn check(events: &[Event]) -> Analysis {
    check_with(events, &CheckConfig::default())
}

/// Analyse a history.
pub fn check_with(events: &[Event], cfg: &CheckConfig) -> Analysis {
    let mut a = Analysis {
        liveness_stall_bound_ms: cfg.stall_bound_ms,
        ..Default::default()
    };
    let mut subs: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    let mut sends: BTreeMap<String, SendInfo> = BTreeMap::new();
    let mut slots: BTreeMap<Slot, BTreeSet<String>> = BTreeMap::new();
    let mut positions: BTreeMap<String, BTreeSet<Slot>> = BTreeMap::new();
    let mut mins: BTreeMap<String, Vec<u64>> = BTreeMap::new(); // topic → every (node, queue) min
    // (broker group, topic, queue) → that queue's min on every node.
    let mut queue_mins: BTreeMap<(String, String, u32), Vec<u64>> = BTreeMap::new();
    let mut ok_sends: Vec<(u64, u64)> = Vec::new(); // (t0, t1)
    let mut faults: Vec<(u64, String)> = Vec::new();
    // (consumer group, id) → deliveries (t, slot if the client said, attempt) and acks (t, ok),
    // in history order.
    let mut deliv: BTreeMap<(String, String), Vec<(u64, Option<Slot>, i32)>> = BTreeMap::new();
    let mut acks: BTreeMap<(String, String), Vec<(u64, bool)>> = BTreeMap::new();
    // Delivery stream per consumer group, in history order: (t, id).
    let mut streams: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    // Fault windows [start, end] in history order (one fault at a time).
    let mut windows: Vec<(u64, u64)> = Vec::new();
    let mut open_fault: Option<u64> = None;
    // Producer → client library and its calls (t0, t1, acknowledged).
    let mut calls: BTreeMap<String, (String, Vec<(u64, u64, bool)>)> = BTreeMap::new();
    let mut last_t = 0u64;
    let mut drain_end: Option<u64> = None;
    // Times the harness held the producers (retention fault): not gaps of the client.
    let mut holds: Vec<(u64, u64)> = Vec::new();
    let mut held_since: Option<u64> = None;

    for e in events {
        match e {
            Event::Subscribe {
                consumer_group,
                topic,
                fifo,
            } => subs
                .entry(topic.clone())
                .or_default()
                .push((consumer_group.clone(), *fifo)),
            Event::Send {
                t0,
                t1,
                producer,
                client,
                id,
                topic,
                message_group,
                seq,
                outcome,
                ..
            } => {
                a.send_calls += 1;
                last_t = last_t.max(*t1);
                calls
                    .entry(producer.clone())
                    .or_insert_with(|| {
                        (client.clone().unwrap_or_else(|| "rust".into()), Vec::new())
                    })
                    .1
                    .push((*t0, *t1, matches!(outcome, SendOutcome::Ok { .. })));
                let s = sends.entry(id.clone()).or_insert_with(|| SendInfo {
                    topic: topic.clone(),
                    producer: producer.clone(),
                    group: message_group.clone(),
                    seq: *seq,
                    first_t0: *t0,
                    ..Default::default()
                });
                s.calls += 1;
                if let SendOutcome::Ok {
                    offset,
                    broker_group,
                    queue,
                    attempts,
                } = outcome
                {
                    // The client's own retries inside the call (to another node, possibly of
                    // another broker group, where the id is not deduplicated) count as sends.
                    s.calls += attempts.unwrap_or(1).saturating_sub(1) as usize;
                    let place = broker_group.clone().zip(*queue);
                    s.ack_offsets.insert((place, *offset));
                    if s.first_ack.is_none() {
                        s.first_ack = Some(*t1);
                    }
                    ok_sends.push((*t0, *t1));
                }
                if let SendOutcome::Unknown {
                    attempts: Some(n), ..
                } = outcome
                {
                    s.calls += n.saturating_sub(1) as usize;
                }
            }
            Event::Deliver {
                t,
                consumer_group,
                id,
                topic,
                broker_group,
                queue,
                offset,
                attempt,
                ..
            } => {
                a.deliveries += 1;
                last_t = last_t.max(*t);
                // A negative queue or offset: the client did not say where it came from.
                let slot = (*queue >= 0 && *offset >= 0).then(|| {
                    (
                        broker_group.clone(),
                        topic.clone(),
                        *queue as u32,
                        *offset as u64,
                    )
                });
                deliv
                    .entry((consumer_group.clone(), id.clone()))
                    .or_default()
                    .push((*t, slot, *attempt));
                streams
                    .entry(consumer_group.clone())
                    .or_default()
                    .push((*t, id.clone()));
            }
            Event::Ack {
                t,
                consumer_group,
                id,
                ok,
            } => {
                last_t = last_t.max(*t);
                acks.entry((consumer_group.clone(), id.clone()))
                    .or_default()
                    .push((*t, *ok))
            }
            Event::Fault { t, kind, start, .. } => {
                last_t = last_t.max(*t);
                if let Some(s) = open_fault.take() {
                    windows.push((s, *t));
                }
                if *start {
                    *a.faults.entry(kind.clone()).or_default() += 1;
                    faults.push((*t, kind.clone()));
                    open_fault = Some(*t);
                }
            }
            Event::Phase { t, name } => {
                last_t = last_t.max(*t);
                match name.as_str() {
                    "drain-end" => drain_end = Some(*t),
                    "hold-producers" => held_since = Some(*t),
                    "release-producers" => {
                        if let Some(s) = held_since.take() {
                            holds.push((s, *t));
                        }
                    }
                    _ => {}
                }
            }
            Event::FinalQueue {
                broker_group,
                topic,
                queue,
                min,
                ..
            } => {
                mins.entry(topic.clone()).or_default().push(*min);
                queue_mins
                    .entry((broker_group.clone(), topic.clone(), *queue))
                    .or_default()
                    .push(*min);
            }
            Event::Final {
                broker_group,
                topic,
                queue,
                offset,
                id,
                ..
            } => {
                let slot = (broker_group.clone(), topic.clone(), *queue, *offset);
                slots.entry(slot.clone()).or_default().insert(id.clone());
                positions.entry(id.clone()).or_default().insert(slot);
            }
        }
    }

    a.sent = sends.len();
    a.acked = sends.values().filter(|s| s.first_ack.is_some()).count();
    a.indeterminate = a.sent - a.acked;
    a.delivered = deliv.len();
    let delivered_ids: BTreeSet<&String> = deliv.keys().map(|(_, id)| id).collect();
    a.indeterminate_stored = sends
        .iter()
        .filter(|(id, s)| {
            s.first_ack.is_none() && (positions.contains_key(*id) || delivered_ids.contains(id))
        })
        .count();

    // The queue(s) each message group was seen in (stored or delivered): the broker keeps a
    // group in one queue, whichever the producer asked for.
    let mut group_queues: BTreeMap<(String, String), BTreeSet<(String, u32)>> = BTreeMap::new();
    let seen_at = positions
        .iter()
        .flat_map(|(id, p)| p.iter().map(move |slot| (id, slot)))
        .chain(deliv.iter().flat_map(|((_, id), ds)| {
            ds.iter()
                .filter_map(move |(_, slot, _)| Some((id, slot.as_ref()?)))
        }));
    for (id, slot) in seen_at {
        if let Some(g) = sends.get(id).and_then(|s| s.group.clone()) {
            group_queues
                .entry((slot.1.clone(), g))
                .or_default()
                .insert((slot.0.clone(), slot.2));
        }
    }

    // Lost / expired.
    let mut expired: BTreeSet<String> = BTreeSet::new();
    let mut lost_ids: BTreeSet<String> = BTreeSet::new();
    for (id, s) in &sends {
        if s.first_ack.is_none() || positions.contains_key(id) || delivered_ids.contains(id) {
            continue;
        }
        // Expired = below the first retained offset on every node: of its own queue when the
        // receipt named it, else (older histories) of every queue of the topic.
        let below = |m: Option<&Vec<u64>>, o: i64| {
            m.is_some_and(|m| !m.is_empty() && m.iter().all(|min| (o as u64) < *min))
        };
        let below_all = s.ack_offsets.iter().all(|(place, o)| {
            match known_queue(s, place.as_ref(), &group_queues) {
                Some((bg, q)) => below(queue_mins.get(&(bg, s.topic.clone(), q)), *o),
                None => below(mins.get(&s.topic), *o),
            }
        });
        if below_all {
            a.expired_undelivered += 1;
            expired.insert(id.clone());
        } else {
            lost_ids.insert(id.clone());
            push(
                &mut a.lost,
                &mut a.lost_count,
                format!(
                    "{id} ({} {:?} seq {}) acked at offset {:?}, never delivered nor stored",
                    s.topic, s.group, s.seq, s.ack_offsets
                ),
            );
        }
    }

    // Unseen: stored messages every subscribed group should have received.
    for (id, s) in &sends {
        if !positions.contains_key(id) {
            continue;
        }
        for (cg, _) in subs.get(&s.topic).into_iter().flatten() {
            if !deliv.contains_key(&(cg.clone(), id.clone())) {
                push(
                    &mut a.unseen,
                    &mut a.unseen_count,
                    format!("{id} ({}) never delivered to {cg}", s.topic),
                );
            }
        }
    }

    // Offsets.
    for (slot, ids) in &slots {
        if ids.len() > 1 {
            push(
                &mut a.inconsistent_offsets,
                &mut a.inconsistent_offset_count,
                format!("{slot:?} holds {} messages: {ids:?}", ids.len()),
            );
        }
    }
    for (id, pos) in &positions {
        let Some(s) = sends.get(id) else { continue };
        if pos.len() > 1 {
            a.stored_duplicates += 1;
            if s.calls > 1 {
                a.stored_duplicates_explained_by_retry += 1;
            } else {
                push(
                    &mut a.inconsistent_offsets,
                    &mut a.inconsistent_offset_count,
                    format!("{id} sent once but stored at {pos:?}"),
                );
            }
            continue;
        }
        if let Some(slot) = pos.iter().next() {
            for (place, o) in &s.ack_offsets {
                let other_queue = known_queue(s, place.as_ref(), &group_queues)
                    .is_some_and(|(bg, q)| bg != slot.0 || q != slot.2);
                // A retried send may have been acknowledged for another copy (one that
                // retention has trimmed since): fine if a delivery came from that offset.
                let other_copy = s.calls > 1
                    && deliv.iter().any(|((_, did), ds)| {
                        did == id
                            && ds
                                .iter()
                                .any(|(_, d, _)| d.as_ref().is_some_and(|d| d.3 == *o as u64))
                    });
                if *o >= 0 && (*o as u64 != slot.3 || other_queue) && !other_copy {
                    push(
                        &mut a.inconsistent_offsets,
                        &mut a.inconsistent_offset_count,
                        format!("{id} acknowledged at {place:?} offset {o} but stored at {slot:?}"),
                    );
                }
            }
        }
    }
    let mut delivered_slots: BTreeMap<Slot, BTreeSet<String>> = BTreeMap::new();
    for ((_, id), ds) in &deliv {
        for (_, slot, _) in ds {
            let Some(slot) = slot else { continue };
            delivered_slots
                .entry(slot.clone())
                .or_default()
                .insert(id.clone());
            // A copy delivered from a place retention has trimmed on every node since is not
            // in the final read; that is not an inconsistency.
            let trimmed = queue_mins
                .get(&(slot.0.clone(), slot.1.clone(), slot.2))
                .is_some_and(|m| !m.is_empty() && m.iter().all(|min| slot.3 < *min));
            if let Some(pos) = positions.get(id)
                && !pos.contains(slot)
                && !trimmed
            {
                push(
                    &mut a.inconsistent_offsets,
                    &mut a.inconsistent_offset_count,
                    format!("{id} delivered from {slot:?} but stored at {pos:?}"),
                );
            }
        }
    }
    for (slot, ids) in &delivered_slots {
        if ids.len() > 1 {
            push(
                &mut a.inconsistent_offsets,
                &mut a.inconsistent_offset_count,
                format!("{slot:?} delivered as {} messages: {ids:?}", ids.len()),
            );
        }
    }

    // Redeliveries.
    for (key, ds) in &deliv {
        if ds.len() < 2 {
            continue;
        }
        a.redelivered += 1;
        let first_ok_ack = acks
            .get(key)
            .and_then(|v| v.iter().find(|(_, ok)| *ok).map(|(t, _)| *t));
        if let Some(t) = first_ok_ack
            && ds.iter().any(|(td, _, _)| *td > t)
        {
            a.acked_redelivered += 1;
        }
    }

    // Order: stored order per (producer, message group), for acknowledged messages where the
    // later one was first sent after the earlier one was acknowledged.
    let mut by_group: BTreeMap<(String, String, String), Vec<(&String, &SendInfo)>> =
        BTreeMap::new();
    for (id, s) in &sends {
        if let Some(g) = &s.group
            && s.first_ack.is_some()
        {
            by_group
                .entry((s.topic.clone(), s.producer.clone(), g.clone()))
                .or_default()
                .push((id, s));
        }
    }
    for (key, v) in by_group.iter_mut() {
        v.sort_by_key(|(_, s)| s.seq);
        for w in v.windows(2) {
            let ((ia, sa), (ib, sb)) = (w[0], w[1]);
            if sa.first_ack.is_none_or(|t| sb.first_t0 < t) {
                continue;
            }
            let (Some(pa), Some(pb)) = (
                positions.get(ia).and_then(|p| p.iter().next()),
                positions.get(ib).and_then(|p| p.iter().next()),
            ) else {
                continue;
            };
            if (&pa.0, pa.2) != (&pb.0, pb.2) || pa.3 >= pb.3 {
                push(
                    &mut a.order_violations,
                    &mut a.order_violation_count,
                    format!(
                        "{key:?}: seq {} stored at {pa:?} but seq {} (sent after its ack) at {pb:?}",
                        sa.seq, sb.seq
                    ),
                );
            }
        }
    }
    // Order: delivery order per (FIFO consumer group, producer, message group).
    let fifo_groups: BTreeSet<(String, String)> = subs
        .iter()
        .flat_map(|(t, v)| {
            v.iter()
                .filter(|(_, f)| *f)
                .map(move |(cg, _)| (cg.clone(), t.clone()))
        })
        .collect();
    for (cg, stream) in &streams {
        // (topic, producer, message group) → (highest seq delivered, seqs delivered)
        let mut seen: BTreeMap<(String, String, String), (u64, BTreeSet<u64>, BTreeSet<u64>)> =
            BTreeMap::new();
        for (t, id) in stream {
            let Some(s) = sends.get(id) else { continue };
            let Some(g) = &s.group else { continue };
            if !fifo_groups.contains(&(cg.clone(), s.topic.clone())) {
                continue;
            }
            let key = (s.topic.clone(), s.producer.clone(), g.clone());
            let entry = seen
                .entry(key.clone())
                .or_insert((0, BTreeSet::new(), BTreeSet::new()));
            if entry.1.contains(&s.seq) {
                continue; // a redelivery
            }
            if !entry.1.is_empty() && s.seq < entry.0 {
                push(
                    &mut a.order_violations,
                    &mut a.order_violation_count,
                    format!(
                        "{cg} {key:?}: seq {} first delivered at {t} ms after seq {}",
                        s.seq, entry.0
                    ),
                );
            }
            // Skips: an earlier message of the group, acknowledged before this one was first
            // sent, and not delivered yet.
            if let Some(v) = by_group.get(&key) {
                // A message retention deleted before anyone received it is expired (counted
                // above), not skipped.
                for (eid, e) in v.iter().filter(|(_, e)| e.seq < s.seq) {
                    if !entry.1.contains(&e.seq)
                        && !expired.contains(*eid)
                        && !entry.2.contains(&e.seq)
                        && e.first_ack.is_some_and(|ta| ta <= s.first_t0)
                    {
                        push(
                            &mut a.order_violations,
                            &mut a.order_violation_count,
                            format!(
                                "{cg} {key:?}: seq {} delivered at {t} ms before seq {}",
                                s.seq, e.seq
                            ),
                        );
                        entry.2.insert(e.seq); // report each skipped message once
                    }
                }
            }
            entry.0 = entry.0.max(s.seq);
            entry.1.insert(s.seq);
        }
    }

    // Liveness: up to the end of the drain (or of the history).
    let horizon = drain_end.unwrap_or(last_t);
    if let Some(s) = open_fault.take() {
        windows.push((s, horizon.max(s)));
    }
    let excluded: BTreeSet<&String> = lost_ids.iter().chain(expired.iter()).collect();
    liveness(
        &mut a, cfg, &subs, &sends, &deliv, &excluded, &windows, horizon,
    );
    if let Some(s) = held_since.take() {
        holds.push((s, horizon.max(s)));
    }
    a.clients = client_sends(&calls, &faults, &holds);

    // RTO: fault → first acknowledged send started after it.
    ok_sends.sort_unstable();
    let mut rtos = Vec::new();
    for (t, kind) in &faults {
        let first = ok_sends
            .iter()
            .filter(|(t0, _)| t0 >= t)
            .map(|(_, t1)| *t1)
            .min();
        match first {
            Some(t1) => {
                let r = t1 - t;
                rtos.push(r);
                a.rto_ms.push((kind.clone(), r));
                let m = a.rto_max_by_kind_ms.entry(kind.clone()).or_default();
                *m = (*m).max(r);
            }
            None => a.rto_unrecovered += 1,
        }
    }
    rtos.sort_unstable();
    a.rto_p50_ms = percentile(&rtos, 50.0);
    a.rto_p99_ms = percentile(&rtos, 99.0);
    a.rto_max_ms = rtos.last().copied().unwrap_or(0);
    a
}

#[cfg(test)]
#[path = "checker/tests.rs"]
mod tests;
