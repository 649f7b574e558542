//! `raftmq admin` as a subprocess with `--json` against live nameservers and broker groups:
//! the JSON must match what was done.

mod ns_harness;

use std::process::Command;
use std::time::Duration;

use ns_harness::{Env, wait_until};
use serde_json::Value;

/// Run `raftmq admin ARGS`; (exit success, stdout parsed as JSON or Null, stderr).
fn admin(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .arg("admin")
        .args(args)
        .env_remove("RAFTMQ_NAMESERVERS")
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

fn ns_admin(env: &Env, args: &[&str]) -> (bool, Value, String) {
    let ns = env.nameserver_list();
    let mut all = vec!["--nameservers", &ns, "--json"];
    all.extend_from_slice(args);
    admin(&all)
}

fn group<'a>(v: &'a Value, key: &str, name: &str) -> &'a Value {
    v[key]
        .as_array()
        .and_then(|a| a.iter().find(|g| g["group"] == name))
        .unwrap_or(&Value::Null)
}

fn topic<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["topics"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == name))
}

/// `cluster` shows g1 with 3 reachable nodes agreeing on one leader and term, and g2 with
/// its single node leading; returns (g1 leader id, g1 leader address).
fn wait_cluster(env: &Env) -> (u64, String) {
    wait_until(Duration::from_secs(30), "cluster settles", || {
        let (ok, v, _) = ns_admin(env, &["cluster"]);
        if !ok {
            return None;
        }
        let g1 = group(&v, "groups", "g1");
        let nodes = g1["nodes"].as_array()?;
        if nodes.len() != 3 || nodes.iter().any(|n| n["reachable"] != true) {
            return None;
        }
        let leaders: Vec<&Value> = nodes.iter().filter(|n| n["role"] == "leader").collect();
        if leaders.len() != 1 {
            return None;
        }
        let term = &nodes[0]["term"];
        let leader_id = leaders[0]["node_id"].as_u64()?;
        if nodes
            .iter()
            .any(|n| &n["term"] != term || n["leader_id"].as_u64() != Some(leader_id))
        {
            return None;
        }
        let g2 = group(&v, "groups", "g2");
        let n2 = g2["nodes"].as_array()?;
        if n2.len() != 1 || n2[0]["role"] != "leader" {
            return None;
        }
        // Every node has applied something (numbers rather than nulls everywhere).
        for n in nodes.iter().chain(n2) {
            for k in ["committed", "applied", "last_log_index", "lag", "age_ms"] {
                if !n[k].is_u64() {
                    return None;
                }
            }
            assert!(n["version"].is_string() && n["addr"].is_string());
        }
        assert_eq!(g1["term"], *term);
        assert_eq!(g1["leader_id"].as_u64(), Some(leader_id));
        Some((leader_id, leaders[0]["addr"].as_str()?.to_string()))
    })
}

#[test]
fn admin_commands_against_a_live_cluster() {
    let mut env = Env::new();
    env.start_nameserver(1500);
    env.start_nameserver(1500);
    env.start_group("g1", 3);
    env.start_group("g2", 1);
    let (leader, leader_addr) = wait_cluster(&env);
    assert_eq!(leader_addr, env.addr("g1", leader));

    // topic create: every group, N queues each, and the routes show it on return.
    let (ok, v, out) = ns_admin(
        &env,
        &[
            "topic",
            "create",
            "Orders",
            "--queues",
            "4",
            "--message-type",
            "fifo",
        ],
    );
    assert!(ok, "{out}\n{}", env.logs());
    assert_eq!(v["topic"], "Orders");
    assert_eq!(v["queues"], 4);
    assert_eq!(v["perm"], "rw");
    assert_eq!(v["message_type"], "fifo");
    assert_eq!(v["ok"], true);
    assert_eq!(v["routed"], true);
    let gs = v["groups"].as_array().expect("groups");
    assert_eq!(gs.len(), 2);
    for g in gs {
        assert_eq!(g["ok"], true, "{g}");
        assert!(g["raft_index"].as_u64().is_some_and(|i| i > 0));
        assert!(g["via"].is_string() && g["error"].is_null());
    }
    let (ok, v, out) = ns_admin(
        &env,
        &[
            "topic",
            "create",
            "Logs",
            "--queues",
            "2",
            "--message-type",
            "delay",
            "--perm",
            "r",
        ],
    );
    assert!(ok && v["ok"] == true, "{out}");

    // topic list.
    let (ok, v, out) = ns_admin(&env, &["topic", "list"]);
    assert!(ok, "{out}");
    let orders = topic(&v, "Orders").expect("Orders listed");
    assert_eq!(orders["queues"], 8, "4 per group over 2 groups");
    assert_eq!(orders["message_type"], "fifo");
    assert_eq!(orders["perm"], "rw");
    let per_group: Vec<(String, u64)> = orders["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            (
                g["group"].as_str().unwrap_or("").to_string(),
                g["queues"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(per_group, vec![("g1".into(), 4), ("g2".into(), 4)]);
    let logs = topic(&v, "Logs").expect("Logs listed");
    assert_eq!(
        (&logs["perm"], &logs["message_type"]),
        (&Value::from("r"), &Value::from("delay"))
    );

    // topic route.
    let (ok, v, out) = ns_admin(&env, &["topic", "route", "Orders"]);
    assert!(ok, "{out}");
    assert_eq!(v["topic"], "Orders");
    let g1 = group(&v, "groups", "g1");
    assert_eq!(g1["queues"], 4);
    assert_eq!(g1["perm"], "rw");
    assert_eq!(g1["message_type"], "fifo");
    assert_eq!(g1["leader_id"].as_u64(), Some(leader));
    assert_eq!(g1["leader_addr"], leader_addr.as_str());
    let members: Vec<&str> = g1["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(members.len(), 3);
    assert_eq!(members[0], leader_addr, "leader first");
    let g2 = group(&v, "groups", "g2");
    assert_eq!(g2["members"], serde_json::json!([env.addr("g2", 1)]));

    // topic update.
    let (ok, v, out) = ns_admin(
        &env,
        &[
            "topic",
            "update",
            "Orders",
            "--queues",
            "6",
            "--message-type",
            "fifo",
            "--perm",
            "w",
        ],
    );
    assert!(ok && v["routed"] == true, "{out}");
    let (_, v, _) = ns_admin(&env, &["topic", "route", "Orders"]);
    for g in v["groups"].as_array().expect("groups") {
        assert_eq!(
            (&g["queues"], &g["perm"]),
            (&Value::from(6), &Value::from("w"))
        );
    }

    // --broker: one node (a follower), its group only.
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    let faddr = env.addr("g1", follower);
    let (ok, v, out) = admin(&["--broker", &faddr, "--json", "topic", "list"]);
    assert!(ok, "{out}");
    let orders = topic(&v, "Orders").expect("Orders on the follower");
    assert_eq!(orders["groups"][0]["group"], "g1");
    assert_eq!(orders["queues"], 6);
    let (ok, v, out) = admin(&["--broker", &faddr, "--json", "cluster"]);
    assert!(ok, "{out}");
    let g = group(&v, "groups", "g1");
    assert_eq!(g["leader_id"].as_u64(), Some(leader));
    let ids: Vec<u64> = g["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node_id"].as_u64())
        .collect();
    assert!(ids.contains(&follower) && ids.contains(&leader), "{v}");
    // A write through a follower is forwarded to the leader.
    let (ok, v, out) = admin(&[
        "--broker", &faddr, "--json", "topic", "create", "Direct", "--queues", "1",
    ]);
    assert!(ok && v["ok"] == true && v["routed"] == true, "{out}");
    assert_eq!(v["groups"][0]["group"], "g1");

    // topic delete.
    let (ok, v, out) = ns_admin(&env, &["topic", "delete", "Logs"]);
    assert!(ok, "{out}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["routed"], true);
    for g in v["groups"].as_array().expect("groups") {
        assert_eq!(g["deleted"], true, "{g}");
    }
    let (_, v, _) = ns_admin(&env, &["topic", "list"]);
    assert!(topic(&v, "Logs").is_none(), "{v}");
    assert!(topic(&v, "Orders").is_some());
    // Direct exists in g1 only: deleting it reports g2 as not having it.
    let (ok, v, out) = ns_admin(&env, &["topic", "delete", "Direct"]);
    assert!(ok, "{out}");
    assert_eq!(group(&v, "groups", "g1")["deleted"], true);
    assert_eq!(group(&v, "groups", "g2")["deleted"], false);

    // Failures exit non-zero.
    let (ok, _, out) = ns_admin(&env, &["topic", "route", "Logs"]);
    assert!(!ok && out.contains("does not exist"), "{out}");
    let (ok, _, out) = ns_admin(&env, &["topic", "delete", "Nope"]);
    assert!(!ok && out.contains("does not exist"), "{out}");
    let (ok, v, out) = ns_admin(&env, &["topic", "create", "bad name", "--queues", "1"]);
    assert!(!ok && v["ok"] == false, "{out}");
    let (ok, _, out) = admin(&[
        "--nameservers",
        "127.0.0.1:1",
        "--timeout-ms",
        "2000",
        "cluster",
    ]);
    assert!(!ok && out.contains("no nameserver answered"), "{out}");

    // Human output.
    let ns = env.nameserver_list();
    let (ok, _, out) = admin(&["--nameservers", &ns, "cluster"]);
    assert!(
        ok && out.starts_with("GROUP") && out.contains("leader"),
        "{out}"
    );
    let (ok, _, out) = admin(&["--nameservers", &ns, "topic", "list"]);
    assert!(ok && out.contains("Orders"), "{out}");
}
