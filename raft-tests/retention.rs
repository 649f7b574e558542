//! Catch-up past retention: a follower kept down while the others delete segments rejoins
//! through a snapshot taken at the retention boundary and then serves every retained message;
//! a fourth node added as a learner and promoted does the same.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Cluster, Opts, message, offline};
use raftmq::proto::raftmq::admin as pb;

const QUEUES: u32 = 3;

/// (queue, offset) → message id of everything a node serves.
async fn served(c: &Cluster, id: u64) -> BTreeMap<(u32, u64), String> {
    c.read_all(id, "events", QUEUES)
        .await
        .into_iter()
        .map(|(q, m)| ((q, m.offset), m.message_id))
        .collect()
}

async fn write(c: &Cluster, via: u64, from: usize, n: usize) -> u64 {
    let mut last = 0;
    for b in (from..from + n).step_by(20) {
        let msgs: Vec<_> = (b..(b + 20).min(from + n))
            .map(|k| message("events", &format!("e{k:06}"), vec![(k % 200) as u8; 700]))
            .collect();
        last = common::produce(c, via, msgs, Duration::from_secs(20))
            .await
            .raft_index;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_and_new_learner_catch_up_through_a_snapshot() {
    let _g = common::serial().await;
    let mut c = Cluster::start(
        3,
        Opts {
            segment_size: "64K",
            // Retention by size, run on demand by the test (the periodic run is slow here).
            extra: vec![
                "--retention-bytes".into(),
                "256K".into(),
                "--retention-interval-secs".into(),
                "3600".into(),
            ],
        },
    );
    let (leader, _) = c.wait_leader(Duration::from_secs(20)).await;
    c.create_topic(leader, "events", QUEUES, "normal").await;
    write(&c, leader, 0, 200).await;
    let lagging = (1..=3).find(|i| *i != leader).expect("a follower");
    let other = (1..=3)
        .find(|i| *i != leader && *i != lagging)
        .expect("another follower");
    c.stop(lagging);
    let last = write(&c, leader, 200, 1500).await;
    c.wait_applied(other, last, Duration::from_secs(30)).await;

    // Retention on the two live nodes deletes whole segments below a snapshot boundary.
    let mut boundary = 0;
    for id in [leader, other] {
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
        boundary = boundary.max(r.snapshot_index.expect("snapshot index"));
    }
    let ls = c.status(leader).await.expect("status");
    assert!(ls.first_index > 0 && ls.snapshot_index.is_some(), "{ls:?}");
    let lagging_last = offline::records(c.dir(lagging))
        .keys()
        .last()
        .copied()
        .unwrap_or(0);
    assert!(
        lagging_last < ls.first_index,
        "the stopped follower ({lagging_last}) must be behind the leader's first retained entry ({})",
        ls.first_index
    );
    let expected = served(&c, leader).await;
    assert!(
        expected.len() < 1700,
        "retention removed messages from the queues"
    );
    assert!(
        expected.len() > 200,
        "retained messages: {}",
        expected.len()
    );

    // The lagging follower rejoins: snapshot, then every retained entry.
    c.spawn(lagging);
    let last = write(&c, leader, 1700, 40).await;
    c.wait_applied(lagging, last, Duration::from_secs(60)).await;
    let s = c.status(lagging).await.expect("status");
    assert!(
        s.snapshot_index
            .is_some_and(|i| i >= boundary.min(ls.first_index - 1)),
        "{s:?}"
    );
    let expected = served(&c, leader).await;
    assert_eq!(
        served(&c, lagging).await,
        expected,
        "rejoined follower serves what the leader serves"
    );

    // A brand-new node joins as learner, is promoted, and serves the same.
    c.add_node(4, "64K", &[]);
    c.client(leader)
        .await
        .add_learner(pb::AddLearnerRequest {
            node_id: 4,
            addr: c.addr(4),
        })
        .await
        .expect("add learner");
    c.client(other)
        .await
        .change_membership(pb::ChangeMembershipRequest {
            voters: vec![1, 2, 3, 4],
        })
        .await
        .expect("promote");
    let last = write(&c, leader, 1740, 20).await;
    c.wait_applied(4, last, Duration::from_secs(60)).await;
    let s4 = c.status(4).await.expect("status");
    assert_eq!(s4.voters, vec![1, 2, 3, 4]);
    let expected = served(&c, leader).await;
    assert_eq!(
        served(&c, 4).await,
        expected,
        "new member serves what the leader serves"
    );

    // Remove a member: the group goes on with the rest.
    c.client(leader)
        .await
        .change_membership(pb::ChangeMembershipRequest {
            voters: vec![1, 2, 3],
        })
        .await
        .expect("remove node 4");
    let s = c.status(leader).await.expect("status");
    assert_eq!(s.voters, vec![1, 2, 3]);
    let last = write(&c, leader, 1760, 20).await;
    c.wait_applied(lagging, last, Duration::from_secs(30)).await;

    // Entries after the boundary are byte-identical at identical positions on every node.
    let committed = c
        .status(leader)
        .await
        .expect("status")
        .committed
        .expect("committed");
    for id in [1, 2, 3, 4] {
        c.stop(id);
    }
    let logs: BTreeMap<u64, _> = [1u64, 2, 3, 4]
        .into_iter()
        .map(|id| (id, offline::records(c.dir(id))))
        .collect();
    let common_first = logs
        .values()
        .map(|l| *l.keys().next().expect("non-empty"))
        .max()
        .expect("logs");
    for (id, l) in &logs {
        println!(
            "node {id}: log holds {:?}..={:?}",
            l.keys().next(),
            l.keys().last()
        );
    }
    let mut compared = 0;
    for (index, rec) in logs[&leader].range(common_first..=committed) {
        for (id, l) in &logs {
            // Node 4 left the group: it holds the log up to its removal.
            if *id == 4 && l.keys().last().is_some_and(|last| index > last) {
                continue;
            }
            assert_eq!(
                l.get(index),
                Some(rec),
                "index {index} differs on node {id}"
            );
        }
        compared += 1;
    }
    // Retention keeps ~4 segments of ~4 entries (20 messages each) here.
    assert!(compared >= 10, "compared only {compared} entries");
}
