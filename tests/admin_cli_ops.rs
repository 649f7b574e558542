//! `raftmq admin` operations commands against a live group, checked through their JSON:
//! `topic status`, `group create|list|progress|delete`, `raft transfer-leader|add-node|remove-node`.

mod ns_harness;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use ns_harness::{Env, wait_until};
use raftmq::client::{OutMessage, Producer, SimpleConsumer};
use serde_json::Value;

fn admin(env: &Env, args: &[&str]) -> (bool, Value, String) {
    let ns = env.nameserver_list();
    let out = Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args([
            "admin",
            "--nameservers",
            &ns,
            "--json",
            "--timeout-ms",
            "20000",
        ])
        .args(args)
        .output()
        .expect("run raftmq admin");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        v,
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// `group list --json`'s entry for consumer group `name` (`null` if it is not listed).
fn listed_group(env: &Env, name: &str) -> Value {
    let (ok, v, out) = admin(env, &["group", "list"]);
    assert!(ok, "{out}");
    v["consumer_groups"]
        .as_array()
        .and_then(|a| a.iter().find(|g| g["name"] == name))
        .cloned()
        .unwrap_or_default()
}

fn leader(env: &Env) -> u64 {
    wait_until(Duration::from_secs(30), "a reachable leader", || {
        let (ok, v, _) = admin(env, &["cluster"]);
        if !ok {
            return None;
        }
        v["groups"][0]["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["role"] == "leader" && n["reachable"] == true)
            .and_then(|n| n["node_id"].as_u64())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_commands_report_what_was_done() {
    let mut env = Env::new();
    let ns = env.start_nameserver(3000);
    env.start_group("g1", 3);
    wait_until(Duration::from_secs(60), "topic created", || {
        admin(&env, &["topic", "create", "ops", "--queues", "2"])
            .0
            .then_some(())
    });

    // 30 messages, 10 of them consumed and acked by group `og`.
    let p = Producer::new(&ns).expect("producer");
    for i in 0..30 {
        p.send(OutMessage {
            topic: "ops".into(),
            body: Bytes::from(format!("m{i}")),
            ..Default::default()
        })
        .await
        .expect("send");
    }
    let (ok, v, out) = admin(&env, &["topic", "status", "ops"]);
    assert!(ok, "{out}");
    let queues = v["groups"][0]["queues"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(queues.len(), 2);
    let total: u64 = queues
        .iter()
        .map(|q| q["max_offset"].as_u64().unwrap_or(0) - q["min_offset"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 30, "{v}");

    let (ok, v, out) = admin(&env, &["group", "create", "og", "--max-attempts", "5"]);
    assert!(ok && v["ok"] == true, "{out}");
    let og = listed_group(&env, "og");
    assert_eq!(og["max_delivery_attempts"], Value::from(5), "{og}");

    let c = SimpleConsumer::new(&ns, "og", "ops", "*").expect("consumer");
    let mut acked = 0;
    while acked < 10 {
        for m in c
            .receive(10 - acked, Duration::from_secs(60), Duration::from_secs(2))
            .await
            .unwrap_or_default()
        {
            c.ack(&m).await.expect("ack");
            acked += 1;
        }
    }
    let (ok, v, out) = admin(&env, &["group", "progress", "og", "--topic", "ops"]);
    assert!(ok, "{out}");
    let qs = v["broker_groups"][0]["queues"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let lag: u64 = qs.iter().map(|q| q["lag"].as_u64().unwrap_or(0)).sum();
    let consumed: u64 = qs
        .iter()
        .map(|q| q["consumer_offset"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(lag, 20, "{v}");
    assert_eq!(consumed, 10, "{v}");

    // Leadership moves to the named node.
    let l = leader(&env);
    let to = if l == 1 { 2 } else { 1 };
    let (ok, v, out) = admin(&env, &["raft", "transfer-leader", "--to", &to.to_string()]);
    assert!(ok && v["ok"] == true, "{out}");
    wait_until(Duration::from_secs(30), "leadership moved", || {
        (leader(&env) == to).then_some(())
    });

    // Remove node 3, then add it back as a voter.
    let (ok, v, out) = admin(&env, &["raft", "remove-node", "--id", "3"]);
    assert!(ok && v["ok"] == true, "{out}");
    let addr3 = env.addr("g1", 3);
    let (ok, v, out) = admin(
        &env,
        &["raft", "add-node", "--id", "3", "--addr", &addr3, "--voter"],
    );
    assert!(ok && v["ok"] == true, "{out}");
    assert!(
        v["action"]
            .as_str()
            .unwrap_or_default()
            .contains("[1, 2, 3]"),
        "{v}"
    );

    // Update replaces the settings: the list shows the new ones.
    let (ok, v, out) = admin(
        &env,
        &["group", "update", "og", "--max-attempts", "7", "--fifo"],
    );
    assert!(ok && v["ok"] == true, "{out}");
    let og = listed_group(&env, "og");
    assert_eq!(
        (&og["max_delivery_attempts"], &og["fifo"]),
        (&Value::from(7), &Value::from(true)),
        "{og}"
    );

    let (ok, v, out) = admin(&env, &["group", "delete", "og"]);
    assert!(ok && v["ok"] == true, "{out}");
    let (_, v, _) = admin(&env, &["group", "list"]);
    assert!(
        v["consumer_groups"]
            .as_array()
            .is_none_or(|a| a.iter().all(|g| g["name"] != "og")),
        "{v}"
    );
}
