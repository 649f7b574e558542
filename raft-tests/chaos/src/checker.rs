//! The checker: reads a history and reports lost messages, duplicates, order violations,
//! inconsistent offsets, redeliveries of acked messages and the unavailability window (RTO)
//! after each fault. Pure: a function of the events only.

#![allow(clippy::type_complexity)]

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::history::{Event, SendOutcome};

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

/// Milliseconds of `[a, b)` during which no fault was active (`windows` sorted and disjoint).
fn healed_ms(windows: &[(u64, u64)], a: u64, b: u64) -> u64 {
    if b <= a {
        return 0;
    }
    let mut faulty = 0;
    let first = windows.partition_point(|(_, e)| *e <= a);
    for (s, e) in &windows[first..] {
        if *s >= b {
            break;
        }
        faulty += (*e).min(b).saturating_sub((*s).max(a));
    }
    (b - a).saturating_sub(faulty)
}

/// The liveness rule, per subscribed consumer group (see [`Analysis::liveness_failures`]).
#[allow(clippy::too_many_arguments)]
fn liveness(
    a: &mut Analysis,
    cfg: &CheckConfig,
    subs: &BTreeMap<String, Vec<(String, bool)>>,
    sends: &BTreeMap<String, SendInfo>,
    deliv: &BTreeMap<(String, String), Vec<(u64, Option<Slot>, i32)>>,
    excluded: &BTreeSet<&String>,
    windows: &[(u64, u64)],
    horizon: u64,
) {
    let mut first: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for ((cg, id), ds) in deliv {
        if let Some(t) = ds.iter().map(|d| d.0).min() {
            first.entry(cg).or_default().insert(id, t);
        }
    }
    for (topic, groups) in subs {
        let groups: BTreeSet<&String> = groups.iter().map(|(cg, _)| cg).collect();
        for cg in groups {
            let got = first.get(cg.as_str());
            // (first delivery to the group or never, acknowledged at), by first delivery.
            let mut expect: Vec<(u64, u64)> = sends
                .iter()
                .filter(|(id, s)| &s.topic == topic && !excluded.contains(id))
                .filter_map(|(id, s)| {
                    let fd = got.and_then(|g| g.get(id.as_str())).copied();
                    Some((fd.unwrap_or(u64::MAX), s.first_ack?))
                })
                .collect();
            expect.sort_unstable();
            // Earliest acknowledgement among the messages from index i on.
            let mut earliest = vec![u64::MAX; expect.len() + 1];
            for i in (0..expect.len()).rev() {
                earliest[i] = earliest[i + 1].min(expect[i].1);
            }
            let mut progress: Vec<u64> = got
                .map(|g| g.values().copied().filter(|t| *t < horizon).collect())
                .unwrap_or_default();
            progress.sort_unstable();
            progress.dedup();
            progress.push(horizon);
            let mut g = GroupLiveness {
                consumer_group: cg.clone(),
                topic: topic.clone(),
                expected: expect.len(),
                ..Default::default()
            };
            // Between two new deliveries (prev, next): the group stalls from the moment a
            // message not delivered by `prev` has been acknowledged.
            let mut prev = 0u64;
            for next in progress {
                let i = expect.partition_point(|(fd, _)| *fd <= prev);
                let from = prev.max(earliest[i]);
                let raw = next.saturating_sub(from);
                if from < next && (raw > g.longest_stall_ms || raw > cfg.stall_bound_ms) {
                    let healed = healed_ms(windows, from, next);
                    if healed > g.longest_stall_ms {
                        g.longest_stall_ms = healed;
                        g.longest_stall_at = (from, next);
                    }
                    if healed > cfg.stall_bound_ms {
                        g.stalls_over_bound += 1;
                        push(
                            &mut a.liveness_failures,
                            &mut a.liveness_failure_count,
                            format!(
                                "{cg} ({topic}): no new delivery for {healed} ms without an active \
                                 fault ({from}..{next} ms) while {} acknowledged messages waited",
                                expect[i..].iter().filter(|(_, ack)| *ack < next).count()
                            ),
                        );
                    }
                }
                prev = next;
            }
            g.missing_at_end = expect.iter().filter(|(fd, _)| *fd >= horizon).count();
            if g.missing_at_end > 0 {
                push(
                    &mut a.liveness_failures,
                    &mut a.liveness_failure_count,
                    format!(
                        "{cg} ({topic}): {} of {} acknowledged messages not received when the \
                         drain ended ({horizon} ms)",
                        g.missing_at_end,
                        expect.len()
                    ),
                );
            }
            a.liveness.push(g);
        }
    }
}

/// Failed sends and gaps between acknowledged sends per client library and fault kind.
fn client_sends(
    calls: &BTreeMap<String, (String, Vec<(u64, u64, bool)>)>,
    faults: &[(u64, String)],
    holds: &[(u64, u64)],
) -> BTreeMap<String, ClientSends> {
    let mut faults = faults.to_vec();
    faults.sort_by_key(|(t, _)| *t);
    let starts: Vec<u64> = faults.iter().map(|(t, _)| *t).collect();
    let window_of = |t: u64| starts.partition_point(|s| *s <= t).checked_sub(1);
    let mut out: BTreeMap<String, ClientSends> = BTreeMap::new();
    // client → per fault (failed calls, longest overlapping gap)
    let mut per_fault: BTreeMap<String, Vec<(usize, Option<u64>)>> = BTreeMap::new();
    for (client, cs) in calls.values() {
        let c = out.entry(client.clone()).or_default();
        let pf = per_fault
            .entry(client.clone())
            .or_insert_with(|| vec![(0, None); starts.len()]);
        c.producers += 1;
        c.send_calls += cs.len();
        for (t0, _, ok) in cs {
            if !ok {
                c.failed_sends += 1;
                if let Some(i) = window_of(*t0) {
                    pf[i].0 += 1;
                }
            }
        }
        // The producer's timeline: first call, every acknowledgement, end of its last call.
        let mut points: Vec<u64> = cs.iter().filter(|c| c.2).map(|c| c.1).collect();
        points.sort_unstable();
        let Some(first) = cs.iter().map(|c| c.0).min() else {
            continue;
        };
        let last = cs.iter().map(|c| c.1).max().unwrap_or(first);
        points.insert(0, first);
        points.push(last);
        for w in points.windows(2) {
            let (from, to) = (w[0], w[1]);
            if to <= from {
                continue;
            }
            // Time the harness held the producers does not count.
            let gap = healed_ms(holds, from, to);
            c.longest_gap_ms = c.longest_gap_ms.max(gap);
            let mut i = window_of(from).unwrap_or(0);
            while i < starts.len() && starts[i] < to {
                if starts.get(i + 1).is_none_or(|next| *next > from) {
                    pf[i].1 = Some(pf[i].1.unwrap_or(0).max(gap));
                }
                i += 1;
            }
        }
    }
    for (client, pf) in per_fault {
        let c = out.entry(client).or_default();
        let mut gaps: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (i, (failed, gap)) in pf.iter().enumerate() {
            let kind = faults[i].1.as_str();
            let k = c.by_fault_kind.entry(kind.to_string()).or_default();
            k.faults += 1;
            k.failed_sends += failed;
            if let Some(g) = gap {
                gaps.entry(kind).or_default().push(*g);
            }
        }
        for (kind, mut v) in gaps {
            v.sort_unstable();
            let k = c.by_fault_kind.entry(kind.to_string()).or_default();
            k.gap_max_ms = v.last().copied().unwrap_or(0);
            k.gap_p99_ms = percentile(&v, 99.0);
        }
    }
    out
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

/// The summary table.
pub fn table(a: &Analysis) -> String {
    let mut s = String::new();
    let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<40} {v}\n"));
    let faults: Vec<String> = a.faults.iter().map(|(k, v)| format!("{k}={v}")).collect();
    row(
        "faults injected",
        format!(
            "{} ({})",
            a.faults.values().sum::<usize>(),
            faults.join(", ")
        ),
    );
    row(
        "messages sent / acked / indeterminate",
        format!("{} / {} / {}", a.sent, a.acked, a.indeterminate),
    );
    row("send calls (retries included)", a.send_calls.to_string());
    row(
        "indeterminate sends stored anyway",
        a.indeterminate_stored.to_string(),
    );
    row(
        "delivered (group, msg) / deliveries",
        format!("{} / {}", a.delivered, a.deliveries),
    );
    row("LOST", a.lost_count.to_string());
    row(
        "expired by retention undelivered",
        a.expired_undelivered.to_string(),
    );
    row("unseen by a subscribed group", a.unseen_count.to_string());
    row(
        "stored duplicates (explained by retry)",
        format!(
            "{} ({})",
            a.stored_duplicates, a.stored_duplicates_explained_by_retry
        ),
    );
    row(
        "redelivered (group, msg) / acked then redelivered",
        format!("{} / {}", a.redelivered, a.acked_redelivered),
    );
    row("ORDER VIOLATIONS", a.order_violation_count.to_string());
    row(
        "INCONSISTENT OFFSETS",
        a.inconsistent_offset_count.to_string(),
    );
    row(
        "RTO p50 / p99 / max (ms)",
        format!("{} / {} / {}", a.rto_p50_ms, a.rto_p99_ms, a.rto_max_ms),
    );
    let by_kind: Vec<String> = a
        .rto_max_by_kind_ms
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    row("RTO max by fault kind (ms)", by_kind.join(", "));
    row("faults with no later ack", a.rto_unrecovered.to_string());
    for (client, c) in &a.clients {
        row(
            &format!("{client} sends: calls / failed / longest gap"),
            format!(
                "{} / {} / {} ms ({} producers)",
                c.send_calls, c.failed_sends, c.longest_gap_ms, c.producers
            ),
        );
        let by_kind: Vec<String> = c
            .by_fault_kind
            .iter()
            .map(|(k, f)| format!("{k}={}/{}/{}", f.failed_sends, f.gap_max_ms, f.gap_p99_ms))
            .collect();
        row(
            &format!("{client} failed / gap max / p99 (ms) by fault"),
            by_kind.join(", "),
        );
    }
    for g in &a.liveness {
        row(
            &format!("progress {}", g.consumer_group),
            format!(
                "{} of {} received, longest stall {} ms ({}..{} ms), {} stalls > {} ms",
                g.expected - g.missing_at_end,
                g.expected,
                g.longest_stall_ms,
                g.longest_stall_at.0,
                g.longest_stall_at.1,
                g.stalls_over_bound,
                a.liveness_stall_bound_ms
            ),
        );
    }
    row("LIVENESS FAILURES", a.liveness_failure_count.to_string());
    for (name, v) in [
        ("lost", &a.lost),
        ("unseen", &a.unseen),
        ("order", &a.order_violations),
        ("offsets", &a.inconsistent_offsets),
        ("liveness", &a.liveness_failures),
    ] {
        for x in v {
            s.push_str(&format!("  ! {name}: {x}\n"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(id: &str, seq: u64, group: Option<&str>, t: u64, ok: Option<i64>) -> Event {
        Event::Send {
            t0: t,
            t1: t + 1,
            producer: "p1".into(),
            client: None,
            id: id.into(),
            topic: if group.is_some() { "fifo" } else { "normal" }.into(),
            message_group: group.map(str::to_string),
            seq,
            attempt: 1,
            outcome: match ok {
                Some(offset) => SendOutcome::Ok {
                    offset,
                    broker_group: None,
                    queue: None,
                    attempts: None,
                },
                None => SendOutcome::Unknown {
                    error: "timeout".into(),
                    attempts: None,
                },
            },
        }
    }

    fn fin(id: &str, topic: &str, queue: u32, offset: u64) -> Event {
        fin_in("g1", id, topic, queue, offset)
    }

    /// A message node 1 of `group` still holds at the end.
    fn fin_in(group: &str, id: &str, topic: &str, queue: u32, offset: u64) -> Event {
        Event::Final {
            broker_group: group.into(),
            node: 1,
            topic: topic.into(),
            queue,
            offset,
            id: id.into(),
        }
    }

    /// A queue's final offsets on node 1 of g1: `min` is the first still held.
    fn fin_queue(topic: &str, queue: u32, min: u64, max: u64) -> Event {
        Event::FinalQueue {
            broker_group: "g1".into(),
            node: 1,
            topic: topic.into(),
            queue,
            min,
            max,
        }
    }

    fn deliver(cg: &str, id: &str, topic: &str, queue: i32, offset: i64, t: u64) -> Event {
        Event::Deliver {
            t,
            consumer_group: cg.into(),
            consumer: "c1".into(),
            id: id.into(),
            topic: topic.into(),
            broker_group: "g1".into(),
            queue,
            offset,
            attempt: 1,
        }
    }

    fn subs() -> Vec<Event> {
        vec![
            Event::Subscribe {
                consumer_group: "cg".into(),
                topic: "normal".into(),
                fifo: false,
            },
            Event::Subscribe {
                consumer_group: "cf".into(),
                topic: "fifo".into(),
                fifo: true,
            },
        ]
    }

    /// A normal message acknowledged at `offset`, with the receipt's place and attempts.
    fn acked(id: &str, offset: i64, place: Option<(&str, u32)>, attempts: u32) -> Event {
        Event::Send {
            t0: 10,
            t1: 11,
            producer: "p1".into(),
            client: None,
            id: id.into(),
            topic: "normal".into(),
            message_group: None,
            seq: 0,
            attempt: 1,
            outcome: SendOutcome::Ok {
                offset,
                broker_group: place.map(|(g, _)| g.to_string()),
                queue: place.map(|(_, q)| q),
                attempts: Some(attempts),
            },
        }
    }

    #[test]
    fn a_clean_history_has_no_violations() {
        let mut h = subs();
        h.push(send("a", 0, None, 10, Some(0)));
        h.push(send("b", 1, None, 20, Some(1)));
        h.push(deliver("cg", "a", "normal", 0, 0, 30));
        h.push(deliver("cg", "b", "normal", 0, 1, 31));
        h.push(fin("a", "normal", 0, 0));
        h.push(fin("b", "normal", 0, 1));
        let a = check(&h);
        assert_eq!((a.sent, a.acked, a.delivered), (2, 2, 2));
        assert_eq!(a.safety_violations(), 0, "{a:#?}");
        assert_eq!(a.unseen_count, 0);
    }

    #[test]
    fn a_lost_message_is_reported() {
        let mut h = subs();
        h.push(send("a", 0, None, 10, Some(0)));
        h.push(send("b", 1, None, 20, Some(1))); // acknowledged, then gone
        h.push(send("c", 2, None, 30, None)); // indeterminate and gone: not lost
        h.push(deliver("cg", "a", "normal", 0, 0, 30));
        h.push(fin("a", "normal", 0, 0));
        h.push(fin_queue("normal", 0, 0, 1));
        let a = check(&h);
        assert_eq!(a.lost_count, 1, "{a:#?}");
        assert!(a.lost[0].starts_with("b "));
        assert_eq!(a.indeterminate, 1);
        assert!(a.safety_violations() > 0);
    }

    #[test]
    fn a_message_deleted_by_retention_is_expired_not_lost() {
        let mut h = subs();
        h.push(send("a", 0, None, 10, Some(0)));
        h.push(fin_queue("normal", 0, 5, 9));
        let a = check(&h);
        assert_eq!((a.lost_count, a.expired_undelivered), (0, 1));
    }

    #[test]
    fn expiry_is_judged_against_the_receipts_own_queue() {
        let mut h = subs();
        // Queue 0 was trimmed to 100, queue 1 only to 5.
        h.push(acked("a", 50, Some(("g1", 0)), 1)); // below its own queue's min: expired
        h.push(acked("b", 50, Some(("g1", 1)), 1)); // above queue 1's min and never seen: lost
        for (queue, min) in [(0, 100), (1, 5)] {
            h.push(fin_queue("normal", queue, min, 200));
        }
        let a = check(&h);
        assert_eq!((a.lost_count, a.expired_undelivered), (1, 1), "{a:#?}");
        assert!(a.lost[0].starts_with("b "), "{:?}", a.lost);
    }

    #[test]
    fn duplicates_are_reported_and_explained_by_retries() {
        let mut h = subs();
        // "a" sent twice (a retry) and stored twice: a duplicate explained by the retry.
        h.push(send("a", 0, None, 10, None));
        h.push(send("a", 0, None, 20, Some(3)));
        h.push(fin("a", "normal", 0, 2));
        h.push(fin("a", "normal", 0, 3));
        // "b" sent once and stored twice: unexplained, an offset inconsistency.
        h.push(send("b", 1, None, 30, Some(4)));
        h.push(fin("b", "normal", 1, 4));
        h.push(fin("b", "normal", 1, 5));
        // "c" delivered, acked, then delivered again.
        h.push(send("c", 2, None, 40, Some(0)));
        h.push(fin("c", "normal", 2, 0));
        h.push(deliver("cg", "c", "normal", 2, 0, 50));
        h.push(Event::Ack {
            t: 51,
            consumer_group: "cg".into(),
            id: "c".into(),
            ok: true,
        });
        h.push(deliver("cg", "c", "normal", 2, 0, 60));
        let a = check(&h);
        assert_eq!(a.stored_duplicates, 2, "{a:#?}");
        assert_eq!(a.stored_duplicates_explained_by_retry, 1);
        assert_eq!(a.inconsistent_offset_count, 1);
        assert!(a.inconsistent_offsets[0].starts_with("b sent once"));
        assert_eq!((a.redelivered, a.acked_redelivered), (1, 1));
    }

    #[test]
    fn a_reorder_is_reported() {
        let mut h = subs();
        let g = Some("order-1");
        h.push(send("f0", 0, g, 10, Some(0)));
        h.push(send("f1", 1, g, 20, Some(1)));
        h.push(send("f2", 2, g, 30, Some(2)));
        h.push(fin("f0", "fifo", 0, 0));
        h.push(fin("f1", "fifo", 0, 1));
        h.push(fin("f2", "fifo", 0, 2));
        // The consumer sees f0, f2, f1: f2 skipped over f1, and f1 came after f2.
        h.push(deliver("cf", "f0", "fifo", 0, 0, 40));
        h.push(deliver("cf", "f2", "fifo", 0, 2, 41));
        h.push(deliver("cf", "f1", "fifo", 0, 1, 42));
        let a = check(&h);
        assert_eq!(a.order_violation_count, 2, "{a:#?}");
        assert!(a.safety_violations() > 0);

        // Stored out of order: f1 (sent after f0's ack) stored before f0.
        let mut h = subs();
        h.push(send("f0", 0, g, 10, Some(1)));
        h.push(send("f1", 1, g, 20, Some(0)));
        h.push(fin("f0", "fifo", 0, 1));
        h.push(fin("f1", "fifo", 0, 0));
        let a = check(&h);
        assert_eq!(a.order_violation_count, 1, "{a:#?}");

        // Redelivery of an earlier message after a later one is not a reorder of firsts.
        let mut h = subs();
        h.push(send("f0", 0, g, 10, Some(0)));
        h.push(send("f1", 1, g, 20, Some(1)));
        h.push(fin("f0", "fifo", 0, 0));
        h.push(fin("f1", "fifo", 0, 1));
        h.push(deliver("cf", "f0", "fifo", 0, 0, 40));
        h.push(deliver("cf", "f0", "fifo", 0, 0, 50));
        h.push(deliver("cf", "f1", "fifo", 0, 1, 60));
        assert_eq!(check(&h).safety_violations(), 0);

        // A message deleted by retention before delivery is expired, not skipped over.
        let mut h = subs();
        h.push(send("f0", 0, g, 10, Some(0)));
        h.push(send("f1", 1, g, 20, Some(1)));
        h.push(fin_queue("fifo", 0, 1, 2));
        h.push(fin("f1", "fifo", 0, 1));
        h.push(deliver("cf", "f1", "fifo", 0, 1, 40));
        let a = check(&h);
        assert_eq!(
            (a.expired_undelivered, a.safety_violations()),
            (1, 0),
            "{a:#?}"
        );
    }

    #[test]
    fn a_copy_in_another_group_from_a_client_retry_is_explained() {
        let mut h = subs();
        h.push(acked("a", 4, None, 2));
        h.push(fin("a", "normal", 0, 7));
        h.push(fin_in("g2", "a", "normal", 1, 4));
        let a = check(&h);
        assert_eq!(
            (a.stored_duplicates, a.stored_duplicates_explained_by_retry),
            (1, 1),
            "{a:#?}"
        );
        assert_eq!(a.inconsistent_offset_count, 0, "{a:#?}");

        // The same, but the first copy was delivered and then trimmed by retention: only the
        // other group's copy is in the final read.
        let mut h = subs();
        h.push(acked("a", 77, None, 2));
        h.push(deliver("cg", "a", "normal", 1, 77, 20));
        h.push(fin_queue("normal", 1, 88, 100));
        h.push(fin_in("g2", "a", "normal", 0, 78));
        let a = check(&h);
        assert_eq!(a.inconsistent_offset_count, 0, "{a:#?}");
        assert_eq!(a.lost_count, 0, "{a:#?}");
    }

    #[test]
    fn an_offset_clash_is_reported() {
        let mut h = subs();
        h.push(send("a", 0, None, 10, Some(7)));
        h.push(send("b", 1, None, 20, Some(7)));
        // Two replicas disagree about offset 7.
        h.push(fin("a", "normal", 0, 7));
        h.push(Event::Final {
            broker_group: "g1".into(),
            node: 2,
            topic: "normal".into(),
            queue: 0,
            offset: 7,
            id: "b".into(),
        });
        let a = check(&h);
        assert!(a.inconsistent_offset_count >= 1, "{a:#?}");
        assert!(a.inconsistent_offsets.iter().any(|s| s.contains("holds 2")));

        // An acknowledged offset that is not where the message is.
        let mut h = subs();
        h.push(send("a", 0, None, 10, Some(3)));
        h.push(fin("a", "normal", 0, 4));
        let a = check(&h);
        assert_eq!(a.inconsistent_offset_count, 1, "{a:#?}");

        // Two messages delivered from one offset.
        let mut h = subs();
        h.push(send("a", 0, None, 10, Some(0)));
        h.push(send("b", 1, None, 10, Some(1)));
        h.push(deliver("cg", "a", "normal", 0, 0, 30));
        h.push(deliver("cg", "b", "normal", 0, 0, 31));
        let a = check(&h);
        assert!(
            a.inconsistent_offsets
                .iter()
                .any(|s| s.contains("delivered as 2")),
            "{a:#?}"
        );
    }

    #[test]
    fn rto_is_measured_from_each_fault() {
        let mut h = subs();
        h.push(Event::Fault {
            t: 100,
            kind: "kill-leader".into(),
            detail: String::new(),
            start: true,
        });
        h.push(send("a", 0, None, 90, Some(0))); // started before the fault
        h.push(send("b", 1, None, 1500, Some(1)));
        h.push(send("c", 2, None, 1600, Some(2)));
        h.push(Event::Fault {
            t: 5000,
            kind: "pause".into(),
            detail: String::new(),
            start: true,
        });
        let a = check(&h);
        assert_eq!(a.rto_ms, vec![("kill-leader".to_string(), 1401)]);
        assert_eq!(a.rto_unrecovered, 1);
        assert_eq!(a.faults.get("kill-leader"), Some(&1));
    }

    fn fault(t: u64, kind: &str, start: bool) -> Event {
        Event::Fault {
            t,
            kind: kind.into(),
            detail: String::new(),
            start,
        }
    }

    fn drain_end(t: u64) -> Event {
        Event::Phase {
            t,
            name: "drain-end".into(),
        }
    }

    /// A normal message acknowledged at `t` (the call took 1 ms).
    fn acked_at(id: &str, seq: u64, t: u64) -> Event {
        send(id, seq, None, t - 1, Some(seq as i64))
    }

    fn progress<'a>(a: &'a Analysis, cg: &str) -> &'a GroupLiveness {
        a.liveness
            .iter()
            .find(|g| g.consumer_group == cg)
            .expect("group in the liveness report")
    }

    #[test]
    fn a_consumer_that_stops_making_progress_is_a_liveness_failure() {
        let mut h = subs();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            h.push(acked_at(id, i as u64, 1000 * (i as u64 + 1)));
        }
        h.push(deliver("cg", "a", "normal", 0, 0, 1100));
        // b waits from its ack (2 s) to 30 s with no fault active: 28 s without progress.
        h.push(deliver("cg", "b", "normal", 0, 1, 30_000));
        // c and d (stored: the final read has them) never arrive before the drain ends.
        h.push(drain_end(40_000));
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            h.push(fin(id, "normal", 0, i as u64));
        }
        let a = check(&h);
        assert_eq!(a.safety_violations(), 0, "{a:#?}");
        let g = progress(&a, "cg");
        assert_eq!((g.expected, g.missing_at_end), (4, 2), "{g:#?}");
        assert_eq!(g.stalls_over_bound, 1, "{g:#?}");
        assert_eq!(g.longest_stall_ms, 28_000);
        assert_eq!(g.longest_stall_at, (2000, 30_000));
        assert_eq!(a.liveness_failure_count, 2, "{:#?}", a.liveness_failures);
        assert!(a.liveness_failures[0].contains("no new delivery for 28000 ms"));
        assert!(a.liveness_failures[1].contains("2 of 4 acknowledged messages not received"));
        // The FIFO group had nothing to receive: no failure for it.
        assert_eq!(progress(&a, "cf").expected, 0);

        // Redeliveries of what it already has are not progress.
        let mut h = subs();
        h.push(acked_at("a", 0, 1000));
        h.push(acked_at("b", 1, 2000));
        h.push(deliver("cg", "a", "normal", 0, 0, 1100));
        for t in (5000..40_000).step_by(5000) {
            h.push(deliver("cg", "a", "normal", 0, 0, t));
        }
        h.push(deliver("cg", "b", "normal", 0, 1, 40_000));
        h.push(drain_end(41_000));
        let a = check(&h);
        assert_eq!(progress(&a, "cg").stalls_over_bound, 1, "{a:#?}");
        assert_eq!(a.liveness_failure_count, 1);
    }

    #[test]
    fn waiting_out_a_fault_or_having_nothing_to_receive_is_not_a_liveness_failure() {
        let mut h = subs();
        h.push(acked_at("a", 0, 1000));
        h.push(deliver("cg", "a", "normal", 0, 0, 1100));
        // b waits 26 s, but 23 s of it a fault is active: 3 s without progress count.
        h.push(acked_at("b", 1, 4000));
        h.push(fault(5000, "pause-leader", true));
        h.push(fault(28_000, "pause-leader", false));
        h.push(deliver("cg", "b", "normal", 0, 1, 30_000));
        // Then a minute with nothing sent: the consumer is idle, not stuck.
        h.push(acked_at("c", 2, 90_000));
        h.push(deliver("cg", "c", "normal", 0, 2, 90_500));
        h.push(drain_end(100_000));
        let a = check(&h);
        let g = progress(&a, "cg");
        assert_eq!(a.liveness_failure_count, 0, "{:#?}", a.liveness_failures);
        assert_eq!((g.expected, g.missing_at_end), (3, 0));
        assert_eq!(g.longest_stall_ms, 3000, "{g:#?}");

        // The bound is a setting: at 2 s the same history fails.
        let a = check_with(
            &h,
            &CheckConfig {
                stall_bound_ms: 2000,
            },
        );
        assert_eq!(a.liveness_failure_count, 1, "{:#?}", a.liveness_failures);

        // A message lost (or expired) is reported as such, not again as a stalled consumer.
        let mut h = subs();
        h.push(acked_at("a", 0, 1000));
        h.push(fin_queue("normal", 0, 0, 1));
        h.push(drain_end(60_000));
        let a = check(&h);
        assert_eq!((a.lost_count, a.liveness_failure_count), (1, 0), "{a:#?}");
    }

    /// One call of Python producer `py` (t0..t1), acknowledged or failed.
    fn py_call(id: &str, t0: u64, t1: u64, ok: bool) -> Event {
        Event::Send {
            t0,
            t1,
            producer: "py".into(),
            client: Some("python".into()),
            id: id.into(),
            topic: "normal".into(),
            message_group: None,
            seq: 0,
            attempt: 1,
            outcome: if ok {
                SendOutcome::Ok {
                    offset: 0,
                    broker_group: None,
                    queue: None,
                    attempts: Some(1),
                }
            } else {
                SendOutcome::Unknown {
                    error: "DEADLINE_EXCEEDED".into(),
                    attempts: Some(3),
                }
            },
        }
    }

    #[test]
    fn failed_sends_and_gaps_are_reported_per_client_and_fault_kind() {
        let mut h = subs();
        for (i, t) in (100..=900).step_by(100).enumerate() {
            h.push(py_call(&format!("a{i}"), t - 10, t, true));
        }
        h.push(fault(1000, "kill-leader", true));
        h.push(py_call("f", 1000, 4000, false));
        h.push(fault(2000, "kill-leader", false));
        h.push(py_call("b", 4000, 5000, true));
        for (i, t) in (5100..=9000).step_by(100).enumerate() {
            h.push(py_call(&format!("c{i}"), t - 10, t, true));
        }
        h.push(fault(8000, "pause-leader", true));
        h.push(fault(9000, "pause-leader", false));
        let a = check(&h);
        let py = &a.clients["python"];
        assert!(!a.clients.contains_key("rust"));
        assert_eq!((py.producers, py.failed_sends), (1, 1), "{py:#?}");
        assert_eq!(py.longest_gap_ms, 4100);
        let kill = &py.by_fault_kind["kill-leader"];
        assert_eq!(
            (
                kill.faults,
                kill.failed_sends,
                kill.gap_max_ms,
                kill.gap_p99_ms
            ),
            (1, 1, 4100, 4100)
        );
        let pause = &py.by_fault_kind["pause-leader"];
        assert_eq!((pause.failed_sends, pause.gap_max_ms), (0, 100));

        // Time the harness held the producers is not a gap.
        let mut held = h.clone();
        held.push(Event::Phase {
            t: 1000,
            name: "hold-producers".into(),
        });
        held.push(Event::Phase {
            t: 4500,
            name: "release-producers".into(),
        });
        let a = check(&held);
        assert_eq!(a.clients["python"].longest_gap_ms, 600);
        assert_eq!((a.send_calls, a.indeterminate), (51, 1));

        // The client's three attempts inside the failed call explain two stored copies.
        h.push(fin("f", "normal", 0, 5));
        h.push(fin("f", "normal", 1, 6));
        let a = check(&h);
        assert_eq!(
            (a.stored_duplicates, a.stored_duplicates_explained_by_retry),
            (1, 1)
        );
        assert_eq!(
            a.inconsistent_offset_count, 0,
            "{:?}",
            a.inconsistent_offsets
        );
    }

    #[test]
    fn a_delivery_without_a_place_is_not_an_offset_clash() {
        let mut h = subs();
        h.push(send("a", 0, None, 10, Some(0)));
        h.push(send("b", 1, None, 20, Some(1)));
        h.push(fin("a", "normal", 0, 0));
        h.push(fin("b", "normal", 1, 1));
        // The Python client does not always say where a message came from: -1.
        h.push(deliver("cg", "a", "normal", -1, -1, 30));
        h.push(deliver("cg", "b", "normal", -1, -1, 31));
        let a = check(&h);
        assert_eq!(a.safety_violations(), 0, "{a:#?}");
        assert_eq!((a.delivered, a.unseen_count), (2, 0));
    }
}
