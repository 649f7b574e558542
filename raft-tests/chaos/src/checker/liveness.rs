//! The liveness rule per consumer group and the per-client send statistics, both computed
//! from what `check_with` gathered from the history.

use std::collections::{BTreeMap, BTreeSet};

use super::{Analysis, CheckConfig, ClientSends, GroupLiveness, SendInfo, Slot, percentile, push};

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
pub(super) fn liveness(
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
pub(super) fn client_sends(
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
