//! Smoke test with the unchanged official RocketMQ 5 Node client (`rocketmq-client-nodejs`
//! 1.0.8, pinned in `tests/node/package.json` and `package-lock.json`): a nameserver and a
//! 3-node group as separate `raftmq` processes, a normal topic, then `tests/node/smoke.mjs`
//! produces 50 messages through the nameserver and consumes, checks and acks them all with a
//! SimpleConsumer. A second test runs `tests/node/delay_tx_smoke.mjs` (delay messages and
//! transactions, with check-backs, issue #8) against brokers checking half messages after 1 s.
//! Needs `node` (>= 16.19) and, the first time, `npm` with registry access
//! (`npm install` into `tests/node/node_modules`, which is gitignored).

mod ns_harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ns_harness::{Env, wait_until};
use serde_json::Value;

const MESSAGES: u64 = 50;
/// Bound of the whole test once the cluster processes are started.
const TEST_BUDGET: Duration = Duration::from_secs(180);

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("node")
}

/// `tests/node/node_modules` with the client in it, running `npm install` when missing.
fn ensure_node_modules() {
    let dir = node_dir();
    let marker = dir
        .join("node_modules")
        .join("rocketmq-client-nodejs")
        .join("package.json");
    if marker.exists() {
        return;
    }
    let started = Instant::now();
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run npm install in tests/node (npm is required)");
    assert!(
        out.status.success() && marker.exists(),
        "npm install in {} failed ({}):\n{}\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("npm install took {:?}", started.elapsed());
}

/// `raftmq admin --json ARGS` through the nameserver, retried until it succeeds (the group may
/// still be electing or registering) or `deadline`; returns the JSON output.
fn admin(ns: &str, args: &[&str], deadline: Instant, env: &Env) -> Value {
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_raftmq"))
            .args([
                "admin",
                "--nameservers",
                ns,
                "--json",
                "--timeout-ms",
                "10000",
            ])
            .args(args)
            .env_remove("RAFTMQ_NAMESERVERS")
            .stdin(Stdio::null())
            .output()
            .expect("run raftmq admin");
        if out.status.success()
            && let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
        {
            return v;
        }
        let last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            Instant::now() < deadline,
            "admin {args:?} kept failing; last output:\n{last}\n{}",
            env.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn official_node_client_smoke() {
    let node_version = Command::new("node")
        .arg("--version")
        .output()
        .expect("node is required for this test");
    assert!(node_version.status.success(), "node --version failed");
    ensure_node_modules();

    let started = Instant::now();
    let deadline = started + TEST_BUDGET;
    let mut env = Env::new();
    let ns = env.start_nameserver(3000);
    env.start_group("g1", 3);

    let topic = "node-smoke";
    let created = admin(
        &ns,
        &[
            "topic",
            "create",
            topic,
            "--queues",
            "4",
            "--message-type",
            "normal",
        ],
        deadline,
        &env,
    );
    assert_eq!(created["ok"], true, "topic create: {created}");
    // The nameserver must route the topic before the client asks for it.
    wait_until(
        Duration::from_secs(30),
        "nameserver routes the topic",
        || {
            let v = admin(&ns, &["topic", "route", topic], deadline, &env);
            let members = v["groups"].as_array()?.first()?["members"]
                .as_array()?
                .len();
            (members == 3).then_some(())
        },
    );
    let cluster_ready = started.elapsed();

    // The smoke script, with stdout/stderr in files (no pipe can fill up) and a hard deadline.
    let out_path = env.tmp.path().join("node.stdout");
    let err_path = env.tmp.path().join("node.stderr");
    let remaining = deadline.saturating_duration_since(Instant::now());
    let node_started = Instant::now();
    let mut child = Command::new("node")
        .arg(node_dir().join("smoke.mjs"))
        .args([ns.as_str(), topic, &MESSAGES.to_string()])
        .env(
            "SMOKE_DEADLINE_MS",
            remaining
                .saturating_sub(Duration::from_secs(10))
                .as_millis()
                .to_string(),
        )
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("node stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("node stderr file"))
        .spawn()
        .expect("spawn node");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for node") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let node_time = node_started.elapsed();
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    println!("{stdout}");
    let context = || {
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "node stdout:\n{stdout}\nnode stderr (tail):\n{}\n{}",
            tail.join("\n"),
            env.logs()
        )
    };
    let Some(status) = status else {
        panic!(
            "node smoke.mjs still running after {TEST_BUDGET:?}\n{}",
            context()
        );
    };
    let summary: Value = stdout
        .lines()
        .rev()
        .find_map(|l| {
            l.trim_start()
                .starts_with('{')
                .then(|| serde_json::from_str(l).ok())
                .flatten()
        })
        .unwrap_or(Value::Null);
    assert!(
        status.success(),
        "node smoke.mjs failed ({status})\n{}",
        context()
    );
    assert_eq!(summary["ok"], true, "{}", context());
    assert_eq!(summary["sent"], MESSAGES, "{}", context());
    assert_eq!(summary["received"], MESSAGES, "{}", context());
    assert_eq!(summary["acked"], MESSAGES, "{}", context());
    assert_eq!(summary["duplicates"], 0, "{}", context());
    assert_eq!(
        summary["mismatches"],
        serde_json::json!([]),
        "{}",
        context()
    );
    eprintln!(
        "node client smoke: cluster+topic ready in {cluster_ready:?}, node run {node_time:?} \
         (send {} ms, receive {} ms), total {:?}",
        summary["send_ms"],
        summary["receive_ms"],
        started.elapsed()
    );
}

/// Runs `tests/node/<script>` with `args` until it exits or `deadline` (then kills it);
/// returns its exit status (None on the deadline), stdout, stderr and the run time.
fn run_node_script(
    script: &str,
    args: &[&str],
    deadline: Instant,
    env: &Env,
) -> (Option<std::process::ExitStatus>, String, String, Duration) {
    let out_path = env.tmp.path().join(format!("{script}.stdout"));
    let err_path = env.tmp.path().join(format!("{script}.stderr"));
    let remaining = deadline.saturating_duration_since(Instant::now());
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg(node_dir().join(script))
        .args(args)
        .env(
            "SMOKE_DEADLINE_MS",
            remaining
                .saturating_sub(Duration::from_secs(10))
                .as_millis()
                .to_string(),
        )
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("node stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("node stderr file"))
        .spawn()
        .expect("spawn node");
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for node") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status, stdout, stderr, started.elapsed())
}

/// Issue #8: the unchanged Node client's delay and transaction smoke test
/// (`tests/node/delay_tx_smoke.mjs`) against a 3-node group whose brokers check unresolved
/// half messages back after 1 s.
#[test]
fn official_node_client_delay_and_transaction_smoke() {
    let node_version = Command::new("node")
        .arg("--version")
        .output()
        .expect("node is required for this test");
    assert!(node_version.status.success(), "node --version failed");
    ensure_node_modules();

    let started = Instant::now();
    let deadline = started + TEST_BUDGET;
    let mut env = Env::new();
    let ns = env.start_nameserver(3000);
    env.start_group_with(
        "g1",
        3,
        &[
            "--transaction-check-interval",
            "1s",
            "--transaction-max-checks",
            "3",
        ],
    );
    let (delay_topic, tx_topic) = ("node-delay", "node-tx");
    for (topic, kind) in [(delay_topic, "delay"), (tx_topic, "transaction")] {
        let created = admin(
            &ns,
            &[
                "topic",
                "create",
                topic,
                "--queues",
                "2",
                "--message-type",
                kind,
            ],
            deadline,
            &env,
        );
        assert_eq!(created["ok"], true, "topic create {topic}: {created}");
        wait_until(
            Duration::from_secs(30),
            "nameserver routes the topic",
            || {
                let v = admin(&ns, &["topic", "route", topic], deadline, &env);
                let members = v["groups"].as_array()?.first()?["members"]
                    .as_array()?
                    .len();
                (members == 3).then_some(())
            },
        );
    }

    let (status, stdout, stderr, node_time) = run_node_script(
        "delay_tx_smoke.mjs",
        &[ns.as_str(), delay_topic, tx_topic],
        deadline,
        &env,
    );
    println!("{stdout}");
    let context = || {
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "node stdout:\n{stdout}\nnode stderr (tail):\n{}\n{}",
            tail.join("\n"),
            env.logs()
        )
    };
    let Some(status) = status else {
        panic!(
            "node delay_tx_smoke.mjs still running after {TEST_BUDGET:?}\n{}",
            context()
        );
    };
    let summary: Value = stdout
        .lines()
        .rev()
        .find_map(|l| {
            l.trim_start()
                .starts_with('{')
                .then(|| serde_json::from_str(l).ok())
                .flatten()
        })
        .unwrap_or(Value::Null);
    assert!(
        status.success(),
        "node delay_tx_smoke.mjs failed ({status})\n{}",
        context()
    );
    assert_eq!(summary["ok"], true, "{}", context());
    let delay = &summary["delay"];
    assert_eq!(delay["sent"], 10, "{}", context());
    assert_eq!(delay["received"], 10, "{}", context());
    assert_eq!(delay["duplicates"], 0, "{}", context());
    assert_eq!(delay["early"], serde_json::json!([]), "{}", context());
    assert_eq!(delay["mismatches"], serde_json::json!([]), "{}", context());
    let tx = &summary["tx"];
    assert_eq!(tx["committed"], 3, "{}", context());
    assert_eq!(tx["received"], 3, "{}", context());
    assert_eq!(tx["unexpected"], serde_json::json!([]), "{}", context());
    let checked = tx["checked"].as_array().cloned().unwrap_or_default();
    for d in ["commit", "rollback"] {
        assert!(
            checked.iter().any(|c| c == d),
            "no check-back of the unresolved `{d}` half message\n{}",
            context()
        );
    }
    eprintln!(
        "node delay/transaction smoke: delay lateness {}..{} ms, second EndTransaction answered {}, \
         check-backs {}, node run {node_time:?}, total {:?}",
        delay["late_ms_min"],
        delay["late_ms_max"],
        tx["second_end"],
        tx["checked"],
        started.elapsed()
    );
}
