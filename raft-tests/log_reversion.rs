//! Regression (found by the chaos suite): a follower that lost a torn tail — its log now ends
//! before entries it had already acknowledged to the leader — must not stop the leader.
//!
//! openraft's default (`allow_log_reversion` off) treats a follower whose log went backwards
//! as impossible and panics the leader's Raft core when that follower reports a conflict
//! below its recorded matching index. raftmq turns log reversion on: the leader resets that
//! follower's progress and re-replicates, which is safe because a quorum still holds every
//! committed entry. With it off, this test fails: the leader's core panics ("follower log
//! reversion is not allowed without `allow_log_reversion` enabled") as soon as the restarted
//! follower answers, and writes through that node fail with "raft: panicked".
//!
//! Second regression in the same scenario: the follower had also recorded the lost entries
//! as committed. Opening the store clamps that commit point to the recovered log; without
//! that the node cannot restart (openraft: "Failed to get log entries, expected index
//! [a, b), got [a, b-k)"), seen in the long chaos run after a torn tail.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Cluster, Opts, message, offline};
use openraft::storage::RaftLogStorage;
use raftmq::proto::raftmq::admin as pb;
use raftmq::raft::log_store::LogStore;
use raftmq::raft::state_machine::AppliedState;
use raftmq::storage::CommitLogConfig;

const TOPIC: &str = "rev";
const QUEUES: u32 = 2;
const SEGMENT: u64 = 1 << 20;
/// Whole entries the tear removes after the torn one.
const LOST_WHOLE: u64 = 3;

/// (queue, offset) → message id of everything a node serves.
async fn served(c: &Cluster, id: u64) -> BTreeMap<(u32, u64), String> {
    c.read_all(id, TOPIC, QUEUES)
        .await
        .into_iter()
        .map(|(q, m)| ((q, m.offset), m.message_id))
        .collect()
}

/// Eight produce requests, one Raft entry each; returns (last index, message ids).
async fn burst(c: &Cluster, via: u64, round: usize) -> (u64, Vec<String>) {
    let mut last = 0;
    let mut ids = Vec::new();
    for b in 0..8 {
        let msgs: Vec<_> = (0..5)
            .map(|k| {
                let id = format!("r{round}-{b:02}-{k}");
                ids.push(id.clone());
                message(TOPIC, &id, vec![b as u8; 200])
            })
            .collect();
        let r = common::produce(c, via, msgs, Duration::from_secs(30)).await;
        assert!(r.raft_index > last, "one entry per request: {r:?}");
        last = r.raft_index;
    }
    (last, ids)
}

/// Last applied index in a node's state checkpoint (written at most every 10 s).
fn checkpointed(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(dir.join("state").join("checkpoint.json")).ok()?;
    let st: AppliedState = serde_json::from_slice(&bytes).expect("checkpoint json");
    st.last_applied.map(|l| l.index)
}

/// Produce one message through `via` (no forwarding fallback to other nodes), retrying until
/// `deadline`; returns its Raft index.
async fn produce_one(c: &Cluster, via: u64, id: &str, deadline: Instant) -> u64 {
    let req = pb::ProduceRequest {
        messages: vec![message(TOPIC, id, id.as_bytes().to_vec())],
    };
    loop {
        match c.client(via).await.produce(req.clone()).await {
            Ok(r) => return r.into_inner().raft_index,
            Err(e) => assert!(
                Instant::now() < deadline,
                "produce {id} via node {via}: {e}\n{}",
                notable(c)
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(c: &mut Cluster, id: u64) -> bool {
    c.nodes
        .get_mut(&id)
        .and_then(|n| n.child.as_mut())
        .is_some_and(|ch| matches!(ch.try_wait(), Ok(None)))
}

fn node_log(c: &Cluster, id: u64) -> String {
    std::fs::read_to_string(c.dir(id).with_extension("log")).unwrap_or_default()
}

/// Panics (with their message line) and log-reversion warnings from every node's log, for
/// failure messages.
fn notable(c: &Cluster) -> String {
    let mut out = String::new();
    for id in c.nodes.keys() {
        let log = node_log(c, *id);
        let lines: Vec<&str> = log.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains("panicked at") {
                let msg = lines.get(i + 1).copied().unwrap_or_default();
                out.push_str(&format!("node {id}: {line}\nnode {id}: {msg}\n"));
            } else if line.contains("follower log is reverted") {
                out.push_str(&format!("node {id}: {line}\n"));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lost_acknowledged_entries_does_not_stop_the_leader() {
    let _g = common::serial().await;
    let mut c = Cluster::start(
        3,
        Opts {
            segment_size: "1M",
            extra: vec![],
        },
    );
    let (leader, term) = c.wait_leader(Duration::from_secs(30)).await;
    c.create_topic(leader, TOPIC, QUEUES, "normal").await;
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");

    // Entries every node has applied (so the leader's matching index for the follower is the
    // last one), none of the last few covered by the follower's state checkpoint: the tear
    // must take them from the log alone. A checkpoint is written at most every 10 s, so one
    // more burst is enough if one landed at the very end.
    let mut acked = Vec::new();
    let mut last = 0;
    for round in 0..4 {
        let (l, ids) = burst(&c, leader, round).await;
        acked.extend(ids);
        last = l;
        for id in 1..=3 {
            c.wait_applied(id, last, Duration::from_secs(30)).await;
        }
        if checkpointed(c.dir(follower)).is_none_or(|a| a < last - LOST_WHOLE) {
            break;
        }
    }
    assert_eq!(
        c.status(leader).await.expect("status").last_log_index,
        Some(last)
    );

    // Crash the follower and lose the end of its log: cut the active segment 20 bytes into
    // the header of entry `torn`, so `torn` is a torn record and the LOST_WHOLE entries after
    // it are gone entirely, although the follower had acknowledged all of them.
    c.kill(follower);
    let dir = c.dir(follower).to_path_buf();
    let ck = checkpointed(&dir);
    let torn = last - LOST_WHOLE;
    assert!(
        ck.is_none_or(|a| a < torn),
        "the follower's checkpoint ({ck:?}) covers entry {torn}"
    );
    let recs = offline::records(&dir);
    assert_eq!(
        recs.keys().last(),
        Some(&last),
        "follower log before the tear"
    );
    let pos = recs[&torn].2;
    let base = pos - pos % SEGMENT;
    assert_eq!(
        base,
        recs[&last].2 - recs[&last].2 % SEGMENT,
        "the lost entries lie in the active segment"
    );
    let seg = dir.join("commitlog").join(format!("{base:020}"));
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("segment");
        f.set_len(pos - base + 20).expect("truncate");
        f.sync_all().expect("sync");
    }

    // The crash image this test wants: the follower had also recorded `last` as committed
    // (the commit point is written behind, so whether it was depends on timing; set it).
    {
        let p = dir.join("raft").join("meta.json");
        let mut meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).expect("meta.json")).expect("meta json");
        let (term, node) = (recs[&last].0, recs[&last].1);
        meta["committed"] = serde_json::json!({
            "leader_id": {"term": term, "node_id": node},
            "index": last,
        });
        std::fs::write(&p, serde_json::to_vec(&meta).expect("encode")).expect("write meta");
    }

    // Open the store as the node will: recovery cuts the torn record, the log ends before
    // `torn`. The commit point recorded before the crash may lie past the kept log (it was
    // at `last` here when it had been written in time); opening clamps it to what the log
    // holds, otherwise openraft would try to re-apply the lost entries and refuse to start
    // (also found by the chaos suite).
    {
        let mut cfg = CommitLogConfig::new(&dir);
        cfg.segment_size = SEGMENT;
        let mut store = LogStore::open(cfg).expect("open the torn log");
        assert!(
            store.recovery_report().torn_tail_at.is_some(),
            "recovery saw no torn tail: {:?}",
            store.recovery_report()
        );
        let kept = store
            .get_log_state()
            .await
            .expect("log state")
            .last_log_id
            .expect("a kept entry");
        assert_eq!(kept.index, torn - 1, "the log ends before the torn entry");
        let committed = store.meta().expect("meta").committed;
        println!(
            "follower {follower}: acknowledged up to {last}, log now ends at {}, checkpoint {ck:?}, \
             durable commit point {:?}",
            kept.index,
            committed.map(|c| c.index)
        );
        assert!(
            committed.is_none_or(|c| c.index <= kept.index),
            "the commit point {committed:?} must not lie past the kept log ({})",
            kept.index
        );
        store.close().expect("close store");
    }
    c.spawn(follower);

    // The restarted follower is repaired across the entries it lost. (Its first answer to the
    // leader is the conflict below the leader's matching index for it: that is where the
    // leader's core used to panic.)
    c.wait_applied(follower, last, Duration::from_secs(60))
        .await;

    // The group keeps serving through the same leader, whose process is still up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut new_last = last;
    for k in 0..5 {
        let id = format!("after-{k}");
        new_last = produce_one(&c, leader, &id, deadline).await;
        acked.push(id);
    }
    assert!(alive(&mut c, leader), "leader process {leader} exited");
    assert_eq!(
        c.wait_leader(Duration::from_secs(30)).await,
        (leader, term),
        "node {leader} must still lead term {term}"
    );

    // The follower applies the new end and serves exactly what the leader serves, every
    // acknowledged message once.
    c.wait_applied(follower, new_last, Duration::from_secs(60))
        .await;
    let expected = served(&c, leader).await;
    let ids: Vec<&String> = expected.values().collect();
    let unique: BTreeSet<&String> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "the leader serves a message twice");
    assert_eq!(
        unique,
        acked.iter().collect::<BTreeSet<_>>(),
        "the leader serves exactly the acknowledged messages"
    );
    assert_eq!(
        served(&c, follower).await,
        expected,
        "the repaired follower serves what the leader serves"
    );
    assert!(alive(&mut c, leader), "leader process {leader} exited");

    // The scenario did exercise log reversion: the leader saw the follower's log go back.
    assert!(
        node_log(&c, leader).contains("follower log is reverted"),
        "the leader never detected the follower's log reversion:\n{}",
        notable(&c)
    );

    // Every committed entry is byte-identical at the same position on every node.
    let committed = c
        .status(leader)
        .await
        .expect("status")
        .committed
        .expect("committed");
    c.stop_and_compare_logs(leader, committed);
}
