//! raftmq's own Rust client (`raftmq::client`) against a nameserver and a 3-node group of
//! separate processes: produce 1,000 messages through the nameserver, consume and ack them
//! all, nothing acked comes back; FIFO message groups keep their order.

mod ns_harness;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ns_harness::Env;
use raftmq::client::{OutMessage, Producer, SimpleConsumer};

/// Run an admin command, retrying while the group is still registering or electing.
fn admin(ns: &str, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_raftmq"))
            .args(["admin", "--nameservers", ns, "--timeout-ms", "10000"])
            .args(args)
            .output()
            .expect("run raftmq admin");
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn consume_all(c: &SimpleConsumer, n: usize) -> Vec<raftmq::client::Received> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "received only {} of {n}",
            got.len()
        );
        match c
            .receive(32, Duration::from_secs(20), Duration::from_secs(2))
            .await
        {
            Ok(batch) => {
                for m in batch {
                    c.ack(&m).await.expect("ack");
                    got.push(m);
                }
            }
            // A node may still be starting; the next receive goes to another entry.
            Err(e) => eprintln!("receive: {e}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_through_the_rust_client() {
    let mut env = Env::new();
    let ns = env.start_nameserver(3000);
    env.start_group("g1", 3);
    admin(&ns, &["topic", "create", "rust-orders", "--queues", "4"]);
    admin(
        &ns,
        &[
            "topic",
            "create",
            "rust-fifo",
            "--queues",
            "2",
            "--message-type",
            "fifo",
        ],
    );

    admin(&ns, &["group", "create", "rust-fifo-group", "--fifo"]);

    let p = Producer::new(&ns).expect("producer");
    let mut sent = BTreeMap::new();
    for i in 0..1000u32 {
        let m = OutMessage {
            topic: "rust-orders".into(),
            tag: Some(if i % 2 == 0 { "even" } else { "odd" }.into()),
            keys: vec![format!("k{i}")],
            properties: HashMap::from([("i".to_string(), i.to_string())]),
            body: Bytes::from(format!("body {i}").into_bytes()),
            ..Default::default()
        };
        let r = p.send(m).await.expect("send");
        sent.insert(r.message_id, i);
    }
    assert_eq!(sent.len(), 1000);

    let c = SimpleConsumer::new(&ns, "rust-group", "rust-orders", "*").expect("consumer");
    let got = consume_all(&c, 1000).await;
    let mut seen = BTreeMap::new();
    for m in &got {
        let i = sent[&m.message_id];
        assert_eq!(&m.body[..], format!("body {i}").as_bytes());
        assert_eq!(m.keys, vec![format!("k{i}")]);
        assert_eq!(m.properties.get("i"), Some(&i.to_string()));
        assert_eq!(m.delivery_attempt, 1);
        *seen.entry(m.message_id.clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 1000, "every message received");
    assert!(
        seen.values().all(|n| *n == 1),
        "a message was delivered twice"
    );
    let again = c
        .receive(32, Duration::from_secs(20), Duration::from_secs(1))
        .await
        .expect("receive");
    assert!(again.is_empty(), "acked messages came back");

    // FIFO: three message groups, interleaved; each consumed in send order.
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..100u32 {
        for g in ["a", "b", "c"] {
            let r = p
                .send(OutMessage {
                    topic: "rust-fifo".into(),
                    message_group: Some(g.into()),
                    body: Bytes::from(format!("{g}{i}").into_bytes()),
                    ..Default::default()
                })
                .await
                .expect("send fifo");
            order.entry(g.to_string()).or_default().push(r.message_id);
        }
    }
    let c = SimpleConsumer::new(&ns, "rust-fifo-group", "rust-fifo", "*").expect("consumer");
    let got = consume_all(&c, 300).await;
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in got {
        seen.entry(m.message_group.unwrap_or_default())
            .or_default()
            .push(m.message_id);
    }
    assert_eq!(seen, order);
}
