//! Regression (found by the chaos suite): retention deletes the CommitLog segments that hold
//! messages a consumer group received and never acked. When their invisible time runs out
//! the broker must not redeliver them: before the fix the redelivery of an in-flight offset
//! below the queue's new minimum handed out the message at that minimum under the old
//! offset (a wrong message). Now such entries are settled and the group goes on with the
//! retained messages, each under its own offset, in order.
//!
//! A 3-node group of real `raftmq broker` processes; consumption through raftmq's own
//! RocketMQ-protocol client (`raftmq::client::SimpleConsumer`) with a broker node as the
//! access point (brokers answer QueryRoute themselves).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Cluster, Opts, message};
use raftmq::client::{Received, SimpleConsumer};
use raftmq::proto::raftmq::admin as pb;

const TOPIC: &str = "inflight";
const GROUP: &str = "inflight-group";
/// Messages received and left unacked before retention.
const K: u64 = 10;
/// Their invisible duration: short, so that they are due for redelivery after retention.
const INVISIBLE: Duration = Duration::from_secs(3);

/// Produce messages `from..from + n` (ids `m000000`...) to the topic's one queue, recording
/// offset → message id from the produce results. Returns the last Raft index.
async fn write(c: &Cluster, via: u64, from: u64, n: u64, sent: &mut BTreeMap<u64, String>) -> u64 {
    let mut last = 0;
    for b in (from..from + n).step_by(20) {
        let msgs: Vec<_> = (b..(b + 20).min(from + n))
            .map(|k| message(TOPIC, &format!("m{k:06}"), vec![(k % 200) as u8; 700]))
            .collect();
        let r = common::produce(c, via, msgs, Duration::from_secs(30)).await;
        for (k, p) in (b..).zip(&r.results) {
            assert_eq!(p.message_id, format!("m{k:06}"), "{p:?}");
            assert!(p.queue_id == 0 && !p.duplicate && !p.pending, "{p:?}");
            assert!(
                sent.insert(p.offset, p.message_id.clone()).is_none(),
                "offset {} given twice",
                p.offset
            );
        }
        last = r.raft_index;
    }
    last
}

async fn progress(c: &Cluster, id: u64) -> pb::QueueProgress {
    c.group_progress(id, GROUP, TOPIC)
        .await
        .into_iter()
        .next()
        .expect("one queue")
}

async fn queue_bounds(c: &Cluster, id: u64) -> (u64, u64) {
    let r = c
        .client(id)
        .await
        .read_queue(pb::ReadQueueRequest {
            topic: TOPIC.into(),
            queue_id: 0,
            offset: 0,
            max: 1,
        })
        .await
        .expect("read_queue")
        .into_inner();
    (r.min_offset, r.max_offset)
}

/// One receive; a failed RPC (a node still busy, say) is reported and yields nothing.
async fn receive(c: &SimpleConsumer, max: i32, invisible: Duration) -> Vec<Received> {
    match c.receive(max, invisible, Duration::from_secs(1)).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("receive: {e}");
            Vec::new()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_messages_deleted_by_retention_are_never_redelivered() {
    let _g = common::serial().await;
    let c = Cluster::start(
        3,
        Opts {
            segment_size: "64K",
            // Retention by size, run on demand by the test.
            extra: vec![
                "--retention-bytes".into(),
                "256K".into(),
                "--retention-interval-secs".into(),
                "3600".into(),
            ],
        },
    );
    let (leader, _) = c.wait_leader(Duration::from_secs(30)).await;
    c.create_topic(leader, TOPIC, 1, "normal").await;
    let mut sent: BTreeMap<u64, String> = BTreeMap::new();
    write(&c, leader, 0, 100, &mut sent).await;
    assert_eq!(
        sent.keys().copied().collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );

    // The group receives the first K messages and does not ack them.
    let consumer =
        SimpleConsumer::with_timeout(&c.addr(leader), GROUP, TOPIC, "*", Duration::from_secs(30))
            .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut inflight: Vec<Received> = Vec::new();
    while (inflight.len() as u64) < K {
        assert!(
            Instant::now() < deadline,
            "received only {} of the first {K}",
            inflight.len()
        );
        let want = (K - inflight.len() as u64) as i32;
        inflight.extend(receive(&consumer, want, INVISIBLE).await);
    }
    // The broker set their invisible time before answering: due by then at the latest.
    let due = Instant::now() + INVISIBLE;
    let inflight_offsets: Vec<u64> = inflight.iter().map(|m| m.offset as u64).collect();
    assert_eq!(inflight_offsets, (0..K).collect::<Vec<_>>());
    for m in &inflight {
        assert_eq!(m.message_id, sent[&(m.offset as u64)], "{m:?}");
        assert_eq!(m.delivery_attempt, 1);
    }
    let inflight_ids: BTreeSet<String> = inflight.iter().map(|m| m.message_id.clone()).collect();
    let p = progress(&c, leader).await;
    assert_eq!((p.inflight, p.next_offset), (K, K), "{p:?}");

    // Many more messages, then retention on every node once all have applied them: the
    // segments holding the in-flight messages go.
    let last = write(&c, leader, 100, 900, &mut sent).await;
    for id in 1..=3 {
        c.wait_applied(id, last, Duration::from_secs(60)).await;
    }
    for id in 1..=3 {
        let r = c
            .client(id)
            .await
            .run_retention(pb::RetentionRequest {})
            .await
            .expect("retention")
            .into_inner();
        assert!(
            r.segments_deleted > 0,
            "node {id}: retention deleted nothing: {r:?}"
        );
    }
    let (min, max) = queue_bounds(&c, leader).await;
    for id in 1..=3 {
        let (m, x) = queue_bounds(&c, id).await;
        println!("node {id}: queue offsets {m}..{x} after retention");
        assert!(
            m > K,
            "node {id}: min offset {m} must be above the in-flight offsets 0..{K}"
        );
        assert_eq!(x, 1000, "node {id}");
    }
    assert!(min < max, "retention left no message: {min}..{max}");
    let p = progress(&c, leader).await;
    assert_eq!(
        p.inflight, K,
        "still in flight before the next receive: {p:?}"
    );

    // Receive on until every retained message came and a receive issued after the in-flight
    // messages' invisible time ran out found nothing more.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut delivered: Vec<u64> = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "consumed {} of {} retained messages in time",
            delivered.len(),
            max - min
        );
        let after_due = Instant::now() > due + Duration::from_secs(1);
        // A long invisible time: nothing received here may come back during the test.
        let got = receive(&consumer, 32, Duration::from_secs(60)).await;
        for m in &got {
            let off = m.offset as u64;
            assert_eq!(
                Some(&m.message_id),
                sent.get(&off),
                "wrong message: offset {off} (queue min {min}) delivered as {} (attempt {}), but {:?} was produced at that offset",
                m.message_id,
                m.delivery_attempt,
                sent.get(&off)
            );
            assert!(
                off >= min,
                "offset {off} below the queue's minimum {min} delivered"
            );
            assert!(
                !inflight_ids.contains(&m.message_id),
                "in-flight message {} deleted by retention came back",
                m.message_id
            );
            assert_eq!(m.delivery_attempt, 1, "{m:?}");
            delivered.push(off);
        }
        if !got.is_empty() {
            consumer.ack_all(&got).await.expect("ack");
        }
        if got.is_empty() && after_due && delivered.len() as u64 >= max - min {
            break;
        }
    }
    assert_eq!(
        delivered,
        (min..max).collect::<Vec<_>>(),
        "every retained message once, in order"
    );
    println!(
        "in flight at offsets 0..{K}; retention moved the queue to {min}..{max}; {} retained messages consumed in order, none of the in-flight ones",
        delivered.len()
    );

    // The deleted in-flight entries are settled: nothing in flight, everything consumed.
    let p = progress(&c, leader).await;
    assert_eq!(
        (p.inflight, p.ack_offset, p.next_offset),
        (0, max, max),
        "{p:?}"
    );
}
