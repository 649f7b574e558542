//! Failover: kill -9 the leader while a writer runs; restart of all nodes at once. No
//! acknowledged write is lost and nothing is stored twice.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Opts, message};
use raftmq::proto::raftmq::admin as pb;

/// A writer that sends one message per request, moving to another node when one fails, and
/// retrying the same message id (idempotent) until it is acknowledged.
struct Writer {
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: tokio::task::JoinHandle<()>,
}

fn start_writer(addrs: BTreeMap<u64, String>, topic: &'static str) -> Writer {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (a, s) = (Arc::clone(&acked), Arc::clone(&stop));
    let handle = tokio::spawn(async move {
        let ids: Vec<u64> = addrs.keys().copied().collect();
        let mut target = 0usize;
        let mut n = 0u64;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            let id = format!("w{n:07}");
            let addr = &addrs[&ids[target % ids.len()]];
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_secs(3));
            let mut cl = pb::admin_client::AdminClient::new(ep.connect_lazy());
            let r = cl
                .produce(pb::ProduceRequest {
                    messages: vec![message(topic, &id, id.as_bytes().to_vec())],
                })
                .await;
            match r {
                Ok(_) => {
                    a.lock().expect("lock").push((id, Instant::now()));
                    n += 1;
                }
                Err(_) => {
                    target += 1; // try another node; the same id is retried
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
    Writer {
        acked,
        stop,
        handle,
    }
}

impl Writer {
    async fn finish(self) -> Vec<(String, Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.handle.await;
        self.acked.lock().expect("lock").clone()
    }
    fn count(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }
}

async fn wait_count(w: &Writer, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while w.count() < n {
        assert!(
            Instant::now() < deadline,
            "writer stuck at {} of {n} acks",
            w.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_write() {
    let _g = common::serial().await;
    let mut c = Cluster::start(
        3,
        Opts {
            segment_size: "1M",
            extra: vec![],
        },
    );
    let (old_leader, _) = c.wait_leader(Duration::from_secs(20)).await;
    c.create_topic(old_leader, "pay", 2, "normal").await;
    let addrs: BTreeMap<u64, String> = (1..=3).map(|i| (i, c.addr(i))).collect();
    let w = start_writer(addrs, "pay");
    wait_count(&w, 300, Duration::from_secs(30)).await;

    c.kill(old_leader);
    let killed_at = Instant::now();
    let before = w.count();
    wait_count(&w, before + 300, Duration::from_secs(30)).await;
    let acked = w.finish().await;

    let last_before = acked
        .iter()
        .filter(|(_, t)| *t <= killed_at)
        .map(|(_, t)| *t)
        .max()
        .expect("acks before");
    let first_after = acked
        .iter()
        .filter(|(_, t)| *t > killed_at)
        .map(|(_, t)| *t)
        .min()
        .expect("acks after");
    println!(
        "failover: last ack before kill -> first ack after: {:.0} ms (kill -> first ack {:.0} ms); {} acked",
        (first_after - last_before).as_secs_f64() * 1000.0,
        (first_after - killed_at).as_secs_f64() * 1000.0,
        acked.len()
    );

    let (new_leader, _) = c.wait_leader(Duration::from_secs(20)).await;
    assert_ne!(new_leader, old_leader);
    let stored = c.read_all(new_leader, "pay", 2).await;
    let mut seen = BTreeMap::new();
    for (_, m) in &stored {
        *seen.entry(m.message_id.clone()).or_insert(0) += 1;
    }
    for (id, _) in &acked {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "acknowledged {id} must be stored exactly once"
        );
    }
    assert!(seen.values().all(|n| *n == 1), "a message was stored twice");

    // The old leader comes back as a follower and converges to identical bytes.
    c.spawn(old_leader);
    let target = c
        .status(new_leader)
        .await
        .expect("status")
        .last_log_index
        .expect("index");
    c.wait_applied(old_leader, target, Duration::from_secs(60))
        .await;
    let s = c.status(old_leader).await.expect("status");
    assert_eq!(s.role, "follower");
    let back: BTreeSet<String> = c
        .read_all(old_leader, "pay", 2)
        .await
        .into_iter()
        .map(|(_, m)| m.message_id)
        .collect();
    assert!(
        acked.iter().all(|(id, _)| back.contains(id)),
        "rejoined node misses acknowledged writes"
    );
    let committed = c
        .status(new_leader)
        .await
        .expect("status")
        .committed
        .expect("committed");
    c.stop_and_compare_logs(new_leader, committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_all_nodes_at_once_loses_nothing() {
    let _g = common::serial().await;
    let mut c = Cluster::start(3, Opts::default());
    let (leader, _) = c.wait_leader(Duration::from_secs(20)).await;
    c.create_topic(leader, "logs", 3, "normal").await;
    let mut acked = BTreeSet::new();
    for b in 0..40 {
        let msgs: Vec<_> = (0..25)
            .map(|k| message("logs", &format!("r{b:03}-{k:02}"), vec![b as u8; 300]))
            .collect();
        let r = common::produce(&c, leader, msgs, Duration::from_secs(20)).await;
        acked.extend(r.results.into_iter().map(|x| x.message_id));
    }
    // Abrupt stop of every node at once, then a restart with no manual step.
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    let (leader, _) = c.wait_leader(Duration::from_secs(30)).await;
    // Writes work again, and everything acknowledged before is there on every node.
    let r = common::produce(
        &c,
        leader,
        vec![message("logs", "after-restart", b"x".to_vec())],
        Duration::from_secs(20),
    )
    .await;
    acked.insert("after-restart".into());
    for id in 1..=3 {
        c.wait_applied(id, r.raft_index, Duration::from_secs(30))
            .await;
        let got: BTreeSet<String> = c
            .read_all(id, "logs", 3)
            .await
            .into_iter()
            .map(|(_, m)| m.message_id)
            .collect();
        assert_eq!(got, acked, "node {id} after restarting all nodes");
    }
    let topics = c
        .client(leader)
        .await
        .list_topics(pb::ListTopicsRequest {})
        .await
        .expect("topics")
        .into_inner();
    assert_eq!(topics.topics.len(), 1, "topic config survives the restart");

    // A retried send (same message id) is stored once, also after the restart: the recent-id
    // window is replicated state. Through a follower, and twice.
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    for _ in 0..2 {
        let resend = vec![message("logs", "r000-00", vec![0; 300])];
        let r = common::produce(&c, follower, resend, Duration::from_secs(20)).await;
        assert!(
            r.results[0].duplicate,
            "resent id must be reported as a duplicate"
        );
    }
    let resend = vec![message("logs", "after-restart", b"x".to_vec())];
    let r = common::produce(&c, leader, resend, Duration::from_secs(20)).await;
    assert!(r.results[0].duplicate);
    for id in 1..=3 {
        let all = c.read_all(id, "logs", 3).await;
        assert_eq!(all.len(), acked.len(), "node {id}: duplicates were stored");
    }
}

/// Regression (found by the chaos suite): a leader whose log lost a torn tail after a crash
/// must not resume its old term on restart. openraft commits an entry once a quorum of
/// followers holds it, before the leader's own write is durable; a leader that came back in
/// the same term with a shorter log handed the lost indexes to new entries, so two different
/// entries shared one log id and replicas diverged. Leader restore is now off: a restarted
/// leader needs a new election, which its shorter log cannot win, and it is repaired by the
/// new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_with_a_torn_tail_does_not_reuse_indexes() {
    let _g = common::serial().await;
    let mut c = Cluster::start(
        3,
        Opts {
            segment_size: "1M",
            extra: vec![],
        },
    );
    let (leader, _) = c.wait_leader(Duration::from_secs(20)).await;
    c.create_topic(leader, "torn", 1, "normal").await;
    let first: Vec<_> = (0..40)
        .map(|i| message("torn", &format!("a-{i}"), vec![b'a'; 200]))
        .collect();
    common::produce(&c, leader, first, Duration::from_secs(30)).await;
    let target = c
        .status(leader)
        .await
        .expect("status")
        .last_log_index
        .expect("index");
    for id in 1..=3 {
        c.wait_applied(id, target, Duration::from_secs(30)).await;
    }

    // Crash the leader and zero the end of its last record, then restart it at once (the
    // situation in which it used to resume leading the same term).
    c.kill(leader);
    let insp = raftmq::storage::commitlog::inspect(c.dir(leader)).expect("inspect");
    let last = insp.entries.last().expect("a record").clone();
    let base = last.pos - last.pos % insp.segment_size;
    let end = last.pos - base + 48 + u64::from(last.payload_len);
    {
        use std::io::{Seek, SeekFrom, Write};
        let file = c.dir(leader).join("commitlog").join(format!("{base:020}"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .expect("segment");
        f.seek(SeekFrom::Start(end - 24)).expect("seek");
        f.write_all(&[0u8; 24]).expect("tear");
        f.sync_all().expect("sync");
    }
    c.spawn(leader);

    // Writes go on through whoever leads now.
    let (now_leader, _) = c.wait_leader(Duration::from_secs(30)).await;
    let second: Vec<_> = (0..40)
        .map(|i| message("torn", &format!("b-{i}"), vec![b'b'; 300]))
        .collect();
    common::produce(&c, now_leader, second, Duration::from_secs(30)).await;
    let target = c
        .status(now_leader)
        .await
        .expect("status")
        .last_log_index
        .expect("index");
    for id in 1..=3 {
        c.wait_applied(id, target, Duration::from_secs(60)).await;
    }
    let committed = c
        .status(now_leader)
        .await
        .expect("status")
        .committed
        .expect("committed");
    // Every message once, on every node.
    for id in 1..=3 {
        let ids: Vec<String> = c
            .read_all(id, "torn", 1)
            .await
            .into_iter()
            .map(|(_, m)| m.message_id)
            .collect();
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(ids.len(), 80, "node {id} holds {} messages", ids.len());
        assert_eq!(unique.len(), 80, "node {id} holds a message twice");
    }
    c.stop_and_compare_logs(1, committed);
}
