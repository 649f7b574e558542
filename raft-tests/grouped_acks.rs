//! Acks proposed concurrently share Raft entries (`broker/command_batcher.rs`), and each
//! request must still get exactly its own answer.
//!
//! A 3-node group of real `raftmq broker` processes; raftmq's own RocketMQ-protocol client.
//! The group receives every message, then acks all of them at a follower at once (one
//! AckMessage per message, as the official clients send them; the follower forwards each to
//! the leader), half of them twice: each fresh ack must succeed and each repeat must be
//! refused as stale — a batch whose answers were split wrongly would fail fresh acks or
//! accept repeats. Afterwards nothing is redelivered, the leader reports everything acked,
//! and the message traces show acks of separate requests sharing Raft entries.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Cluster, Opts, message};
use raftmq::client::{Received, SimpleConsumer};
use raftmq::proto::raftmq::admin as pb;

const TOPIC: &str = "grouped";
const GROUP: &str = "grouped-group";
const N: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_acks_share_entries_and_are_answered_each() {
    let _g = common::serial().await;
    let c = Cluster::start(3, Opts::default());
    let (leader, _) = c.wait_leader(Duration::from_secs(30)).await;
    let follower = c
        .running()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    c.create_topic(leader, TOPIC, 2, "normal").await;
    for b in (0..N).step_by(50) {
        let msgs = (b..b + 50)
            .map(|k| message(TOPIC, &format!("m{k:05}"), vec![7; 200]))
            .collect();
        common::produce(&c, leader, msgs, Duration::from_secs(30)).await;
    }

    let consumer = SimpleConsumer::with_timeout(
        &c.addr(follower),
        GROUP,
        TOPIC,
        "*",
        Duration::from_secs(30),
    )
    .expect("consumer");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got: BTreeMap<String, Received> = BTreeMap::new();
    while got.len() < N {
        assert!(Instant::now() < deadline, "received {} of {N}", got.len());
        match consumer
            .receive(32, Duration::from_secs(120), Duration::from_secs(1))
            .await
        {
            Ok(v) => {
                for m in v {
                    assert!(
                        got.insert(m.message_id.clone(), m).is_none(),
                        "delivered twice"
                    );
                }
            }
            Err(e) => eprintln!("receive: {e}"),
        }
    }
    // Every ack goes to the follower, whatever member delivered the message.
    let mut fresh: Vec<Received> = got.into_values().collect();
    for m in &mut fresh {
        m.endpoint = c.addr(follower);
    }

    // The first half acked once, first; then the second half, interleaved with repeats of
    // the first half: all at once.
    let (first, second) = fresh.split_at(N / 2);
    for r in futures::future::join_all(first.iter().map(|m| consumer.ack(m))).await {
        r.expect("fresh ack");
    }
    let mixed: Vec<(bool, &Received)> = second
        .iter()
        .zip(first)
        .flat_map(|(new, again)| [(true, new), (false, again)])
        .collect();
    let results = futures::future::join_all(mixed.iter().map(|(_, m)| consumer.ack(m))).await;
    let mut wrong = Vec::new();
    for ((is_fresh, m), r) in mixed.iter().zip(&results) {
        if *is_fresh != r.is_ok() {
            wrong.push(format!("{} fresh={is_fresh}: {r:?}", m.message_id));
        }
    }
    assert!(wrong.is_empty(), "answers of the wrong request: {wrong:?}");

    // Nothing comes back, and the leader sees every message acked.
    let again = consumer
        .receive(32, Duration::from_secs(120), Duration::from_secs(1))
        .await
        .unwrap_or_default();
    assert!(again.is_empty(), "acked messages came back: {again:?}");
    let progress = c.group_progress(leader, GROUP, TOPIC).await;
    assert_eq!(progress.len(), 2, "{progress:?}");
    for q in &progress {
        assert_eq!(q.ack_offset, q.max_offset, "not everything acked: {q:?}");
    }
    let total: u64 = progress.iter().map(|q| q.max_offset).sum();
    assert_eq!(total, N as u64, "{progress:?}");

    // Acks of separate requests share Raft entries.
    let mut ack_entries = BTreeSet::new();
    let mut admin = c.client(leader).await;
    for m in &fresh {
        let t = admin
            .trace_message(pb::QueryMessageRequest {
                topic: TOPIC.into(),
                message_id: m.message_id.clone(),
                ..Default::default()
            })
            .await
            .expect("trace")
            .into_inner();
        let g = t
            .groups
            .iter()
            .find(|g| g.group == GROUP)
            .expect("the group in the trace");
        assert!(g.acked, "{} not acked: {t:?}", m.message_id);
        ack_entries.insert(g.acked_at_index);
    }
    assert!(
        ack_entries.len() < N,
        "{N} acks in {} entries: none grouped",
        ack_entries.len()
    );
    eprintln!(
        "{N} acks (one request each) in {} Raft entries",
        ack_entries.len()
    );
}
