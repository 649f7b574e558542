//! Unit tests of the checker on hand-written histories.

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
