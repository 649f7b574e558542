//! A fresh group elects exactly one leader that every node agrees on; leadership can be
//! transferred to a named node.

mod common;

use std::time::Duration;

use common::{Cluster, Opts};
use raftmq::proto::raftmq::admin as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_group_elects_one_leader_everyone_agrees_on() {
    let _g = common::serial().await;
    let c = Cluster::start(3, Opts::default());
    let (leader, term) = c.wait_leader(Duration::from_secs(20)).await;
    assert!((1..=3).contains(&leader));
    assert!(term >= 1);
    let mut roles = Vec::new();
    for id in 1..=3 {
        let s = c.status(id).await.expect("status");
        assert_eq!(s.leader_id, Some(leader), "node {id}");
        assert_eq!(s.term, term, "node {id}");
        assert_eq!(s.voters, vec![1, 2, 3]);
        roles.push(s.role);
    }
    assert_eq!(
        roles.iter().filter(|r| *r == "leader").count(),
        1,
        "{roles:?}"
    );
    assert_eq!(
        roles.iter().filter(|r| *r == "follower").count(),
        2,
        "{roles:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_transfer_moves_leadership_to_the_named_node() {
    let _g = common::serial().await;
    let c = Cluster::start(3, Opts::default());
    let (leader, _) = c.wait_leader(Duration::from_secs(20)).await;
    for round in 0..2 {
        let (current, term) = c.wait_leader(Duration::from_secs(20)).await;
        let target = (1..=3)
            .find(|i| *i != current && (*i + round) % 2 == 0)
            .unwrap_or(if current == 1 { 2 } else { 1 });
        // Ask a node that is not the leader: the request is forwarded.
        let via = (1..=3).find(|i| *i != current).unwrap_or(1);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut cl = c.client(via).await;
            match cl
                .transfer_leader(pb::TransferLeaderRequest { to: target })
                .await
            {
                Ok(_) => break,
                // A view of the leader can lag right after an election: retry.
                Err(e)
                    if e.code() == tonic::Code::Unavailable
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("transfer: {e}"),
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (l, t) = c.wait_leader(Duration::from_secs(20)).await;
            if l == target {
                assert!(t > term, "leadership moved without a new term");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "leadership stayed on {l}, wanted {target}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = leader;
}
