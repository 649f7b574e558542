//! `raftmq dev` used as a user would, with `raftmq admin`, `raftmq produce` and
//! `raftmq consume` as separate processes: create a topic, produce 100 messages, consume and
//! ack 40, Ctrl-C (SIGINT) the dev cluster — every process it started must be gone and its
//! ports free — restart it on the same data directory and, as soon as the nameserver port
//! accepts (before the group has a leader), consume exactly the other 60 with the same group
//! through the unchanged official Python client, which must see no error on the way.
//!
//! `raftmq dev` listens on FIXED ports (nameserver 9876, nodes 8081-8083); no other test uses
//! them, and this one fails at once, saying so, if any of them is taken. The dev process runs
//! in its own process group, which is killed on drop whatever happens.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const PORTS: [u16; 7] = [9876, 8081, 8082, 8083, 9081, 9082, 9083];
const NS: &str = "127.0.0.1:9876";
const TOPIC: &str = "cli-dev-topic";
const GROUP: &str = "cli-dev-group";
const EXE: &str = env!("CARGO_BIN_EXE_raftmq");

/// The whole test's time budget.
struct Budget(Instant);

impl Budget {
    /// `want`, or what is left of the budget if less.
    fn step(&self, want: Duration) -> Duration {
        let left = Duration::from_secs(120).saturating_sub(self.0.elapsed());
        assert!(!left.is_zero(), "the test ran out of its 120 s budget");
        want.min(left)
    }
}

fn busy_ports() -> Vec<u16> {
    PORTS
        .into_iter()
        .filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_err())
        .collect()
}

/// A `raftmq dev` process in its own process group (so its children are in it too).
struct Dev {
    child: Option<Child>,
    pgid: i32,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    data: PathBuf,
    stderr_log: PathBuf,
}

impl Dev {
    fn start(data: &Path, stderr_log: PathBuf) -> Dev {
        let err = std::fs::File::create(&stderr_log).expect("create the dev stderr log");
        let mut child = Command::new(EXE)
            .args(["dev", "--data-dir"])
            .arg(data)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("start raftmq dev");
        let pgid = child.id() as i32;
        let out = child.stdout.take().expect("dev stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Dev {
            child: Some(child),
            pgid,
            lines,
            stdout: Vec::new(),
            data: data.to_path_buf(),
            stderr_log,
        }
    }

    /// Its output and the nodes' logs, for failure messages.
    fn diagnostics(&mut self) -> String {
        while let Ok(l) = self.lines.try_recv() {
            self.stdout.push(l);
        }
        let mut s = format!(
            "--- raftmq dev stdout\n{}\n--- raftmq dev stderr\n{}",
            self.stdout.join("\n"),
            std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
        );
        for name in ["nameserver", "node1", "node2", "node3"] {
            let log =
                std::fs::read_to_string(self.data.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            s.push_str(&format!("\n--- {name}.log (last 30 lines)\n"));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// Wait for the "cluster is up" line.
    fn wait_up(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let up = l.contains("cluster is up");
                    self.stdout.push(l);
                    if up {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                let d = self.diagnostics();
                panic!("raftmq dev exited ({st}) before the cluster was up\n{d}");
            }
            if Instant::now() > deadline {
                let d = self.diagnostics();
                panic!("raftmq dev: no \"cluster is up\" within {within:?}\n{d}");
            }
        }
    }

    /// SIGINT (what Ctrl-C sends) to the dev process only; its exit status.
    fn interrupt(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("dev is running");
        // SAFETY: kill(2) on the pid of our child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + within;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    self.child = None;
                    // Its stdout pipe closes with it: collect the last lines.
                    while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
                        self.stdout.push(l);
                    }
                    return st;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let d = self.diagnostics();
                    panic!("raftmq dev did not exit within {within:?} of SIGINT\n{d}");
                }
            }
        }
    }

    /// Some process of its group is still alive (or a zombie).
    fn group_alive(&self) -> bool {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(-self.pgid, 0) == 0 }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of our child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: the group of the dev process we started (its pid is not reaped yet
            // when it is still running, and killing the group reaches its children).
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
            let _ = c.kill();
            let _ = c.wait();
        } else if self.group_alive() {
            // SAFETY: stragglers of the group of the dev process we started.
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        }
    }
}

/// Run `raftmq ARGS` with `stdin`, killed after `within`; (success, stdout, stderr).
fn raftmq(args: &[&str], stdin: Option<&str>, within: Duration) -> (bool, String, String) {
    let mut child = Command::new(EXE)
        .args(args)
        .env_remove("RAFTMQ_NAMESERVERS")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run raftmq");
    if let Some(input) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(input.as_bytes()).expect("write stdin");
    }
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait().expect("wait raftmq") {
            Some(st) => break st,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let (o, e) = (t_out.join().unwrap(), t_err.join().unwrap());
                panic!("raftmq {args:?} did not finish within {within:?}\n{o}\n{e}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    (
        status.success(),
        t_out.join().unwrap_or_default(),
        t_err.join().unwrap_or_default(),
    )
}

/// Body `i` of `raftmq produce --count N --size 64`.
fn load_body(i: usize) -> String {
    let mut b = format!("{i:010} ");
    let mut c = 0u8;
    while b.len() < 64 {
        b.push((b'a' + c) as char);
        c = (c + 1) % 26;
    }
    b
}

/// One consumed message: (message id, tag, body).
type Consumed = (String, String, String);

fn consume(args: &[&str], budget: &Budget) -> Vec<Consumed> {
    let mut all = vec![
        "consume",
        "--nameservers",
        NS,
        "--topic",
        TOPIC,
        "--group",
        GROUP,
    ];
    all.extend_from_slice(args);
    let (ok, out, err) = raftmq(&all, None, budget.step(Duration::from_secs(45)));
    assert!(ok, "raftmq {all:?} failed:\n{out}\n{err}");
    if args.contains(&"--json") {
        out.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
                assert_eq!(v["topic"], TOPIC, "{l}");
                assert_eq!(v["delivery_attempt"], 1, "acked before: {l}");
                (
                    v["message_id"].as_str().expect("message_id").to_string(),
                    v["tag"].as_str().unwrap_or("-").to_string(),
                    v["body"].as_str().expect("body").to_string(),
                )
            })
            .collect()
    } else {
        out.lines()
            .map(|l| {
                let mut f = l.splitn(3, ' ');
                match (f.next(), f.next(), f.next()) {
                    (Some(id), Some(tag), Some(body)) => {
                        (id.to_string(), tag.to_string(), body.to_string())
                    }
                    _ => panic!("not `<id> <tag> <body>`: {l:?}"),
                }
            })
            .collect()
    }
}

/// Each consumed message was produced, with its tag and body, and came once.
fn check_consumed(got: &[Consumed], produced: &BTreeMap<String, (String, String)>) {
    let mut seen = BTreeSet::new();
    for (id, tag, body) in got {
        assert!(seen.insert(id.clone()), "{id} consumed twice");
        let Some((want_tag, want_body)) = produced.get(id) else {
            panic!("consumed {id}, which was never produced");
        };
        assert_eq!((tag, body), (want_tag, want_body), "message {id}");
    }
}

/// Receive and ack `want` messages of the group with the official Python client
/// (`target/pyenv`, set up by `.ci/run`), failing on the first error it raises.
fn official_consume(want: usize, budget: &Budget) -> Vec<Consumed> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: .ci/run creates it (python3 -m venv target/pyenv && target/pyenv/bin/pip \
         install rocketmq-python-client==5.1.2)",
        py.display()
    );
    let script = r#"
import sys, time
from rocketmq import ClientConfiguration, Credentials, FilterExpression, SimpleConsumer
ns, group, topic, want, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
c = SimpleConsumer(ClientConfiguration(ns, Credentials()), group, {topic: FilterExpression("*")}, await_duration=2)
c.startup()
got, deadline = 0, time.time() + budget
try:
    while got < want and time.time() < deadline:
        for m in c.receive(32, 15):
            c.ack(m)
            tag = m.tag or "-"
            print(m.message_id, tag, m.body.decode(), flush=True)
            got += 1
finally:
    c.shutdown()
"#;
    let within = budget.step(Duration::from_secs(90));
    let out = Command::new(&py)
        .args([
            "-c",
            script,
            NS,
            GROUP,
            TOPIC,
            &want.to_string(),
            &within.as_secs_f64().to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run the official Python consumer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the official consumer raised after the restart:\n{stderr}\n{stdout}"
    );
    stdout
        .lines()
        .map(|l| {
            let mut f = l.splitn(3, ' ');
            match (f.next(), f.next(), f.next()) {
                (Some(id), Some(tag), Some(body)) => {
                    (id.to_string(), tag.to_string(), body.to_string())
                }
                _ => panic!("not `<id> <tag> <body>`: {l:?}"),
            }
        })
        .collect()
}

fn wait_ports_free(within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let busy = busy_ports();
        if busy.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ports {busy:?} still in use {within:?} after raftmq dev exited"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dev_cluster_produce_consume_restart() {
    let budget = Budget(Instant::now());
    let busy = busy_ports();
    assert!(
        busy.is_empty(),
        "this test runs `raftmq dev`, which needs 127.0.0.1 ports {PORTS:?}, but {busy:?} \
         are in use (another `raftmq dev` running?); free them and run it again"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");

    let mut dev = Dev::start(&data, tmp.path().join("dev1.stderr"));
    dev.wait_up(budget.step(Duration::from_secs(60)));

    let (ok, out, err) = raftmq(
        &[
            "admin",
            "--nameservers",
            NS,
            "topic",
            "create",
            TOPIC,
            "--queues",
            "2",
        ],
        None,
        budget.step(Duration::from_secs(30)),
    );
    assert!(
        ok,
        "topic create failed:\n{out}\n{err}\n{}",
        dev.diagnostics()
    );

    // 100 messages: 50 generated (`--count`), 50 from stdin lines with a tag, as JSON.
    // message id -> (tag as `consume` prints it, body)
    let mut produced: BTreeMap<String, (String, String)> = BTreeMap::new();
    let (ok, out, err) = raftmq(
        &[
            "produce",
            "--nameservers",
            NS,
            "--topic",
            TOPIC,
            "--count",
            "50",
            "--size",
            "64",
        ],
        None,
        budget.step(Duration::from_secs(30)),
    );
    assert!(ok, "produce --count failed:\n{out}\n{err}");
    assert!(err.contains("sent 50, failed 0"), "no summary:\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 50, "{out}");
    for (i, l) in lines.iter().enumerate() {
        let (id, offset) = l
            .split_once(' ')
            .unwrap_or_else(|| panic!("not `<id> <offset>`: {l}"));
        assert!(offset.parse::<i64>().is_ok_and(|o| o >= 0), "{l}");
        produced.insert(id.to_string(), ("-".to_string(), load_body(i)));
    }
    let input: String = (0..50).map(|i| format!("line {i}\n")).collect();
    let (ok, out, err) = raftmq(
        &[
            "produce",
            "--nameservers",
            NS,
            "--topic",
            TOPIC,
            "--tag",
            "TagB",
            "--key",
            "k1",
            "--property",
            "source=stdin",
            "--json",
        ],
        Some(&input),
        budget.step(Duration::from_secs(30)),
    );
    assert!(ok, "produce from stdin failed:\n{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 50, "{out}");
    for (i, l) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert_eq!(v["index"], i, "{l}");
        let id = v["message_id"].as_str().expect("message_id");
        produced.insert(id.to_string(), ("TagB".to_string(), format!("line {i}")));
    }
    assert_eq!(produced.len(), 100, "message ids are not distinct");

    // Consume and ack 40.
    let first = consume(&["--max", "40"], &budget);
    assert_eq!(first.len(), 40, "{first:?}");
    check_consumed(&first, &produced);

    // Ctrl-C: dev stops cleanly, nothing it started survives, the ports are free again.
    let st = dev.interrupt(budget.step(Duration::from_secs(30)));
    let d = dev.diagnostics();
    assert!(st.success(), "raftmq dev exited with {st} on SIGINT\n{d}");
    assert!(
        dev.stdout.iter().any(|l| l.trim() == "stopped"),
        "no \"stopped\" line\n{d}"
    );
    assert!(
        !dev.group_alive(),
        "processes started by raftmq dev survive it\n{d}"
    );
    wait_ports_free(budget.step(Duration::from_secs(5)));
    drop(dev);

    // Restart on the same data and consume with the official Python client as soon as the
    // nameserver accepts: the same group gets exactly the other 60, once each, and the client
    // sees no error while the group elects its leader.
    let mut dev = Dev::start(&data, tmp.path().join("dev2.stderr"));
    let accept_by = Instant::now() + budget.step(Duration::from_secs(60));
    while std::net::TcpStream::connect(NS).is_err() {
        assert!(
            Instant::now() < accept_by,
            "the restarted nameserver never accepted\n{}",
            dev.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rest = official_consume(60, &budget);
    check_consumed(&rest, &produced);
    dev.wait_up(budget.step(Duration::from_secs(60)));
    let first_ids: BTreeSet<&String> = first.iter().map(|(id, _, _)| id).collect();
    let rest_ids: BTreeSet<&String> = rest.iter().map(|(id, _, _)| id).collect();
    let want: BTreeSet<&String> = produced
        .keys()
        .filter(|id| !first_ids.contains(id))
        .collect();
    assert_eq!(
        rest_ids,
        want,
        "after the restart the group got {} messages, expected the {} not consumed before\n{}",
        rest.len(),
        want.len(),
        dev.diagnostics()
    );
    assert_eq!(rest.len(), 60);

    // Everything is acked: nothing more comes.
    let none = consume(&["--wait-secs", "1"], &budget);
    assert!(none.is_empty(), "acked messages came back: {none:?}");

    let st = dev.interrupt(budget.step(Duration::from_secs(30)));
    assert!(st.success(), "raftmq dev exited with {st} on SIGINT");
    assert!(
        !dev.group_alive(),
        "processes started by raftmq dev survive it"
    );
}
