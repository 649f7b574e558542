//! Test harness for nameserver and admin tests: real `raftmq nameserver` and `raftmq broker`
//! processes on 127.0.0.1 (free ports, one temp dir), every process killed on drop. Waits are
//! always on a condition with a deadline.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

pub struct Proc {
    pub addr: String,
    pub child: Option<Child>,
}

impl Proc {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A set of nameservers and broker groups.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub nameservers: Vec<Proc>,
    /// (group, node id) → process.
    pub nodes: BTreeMap<(String, u64), Proc>,
}

impl Env {
    pub fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().expect("tempdir"),
            nameservers: Vec::new(),
            nodes: BTreeMap::new(),
        }
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join(format!("{name}.log")))
            .expect("log file")
    }

    /// Start a nameserver; returns its address.
    pub fn start_nameserver(&mut self, node_timeout_ms: u64) -> String {
        self.start_nameserver_with(node_timeout_ms, &[])
    }

    /// `start_nameserver` with extra `raftmq nameserver` flags.
    pub fn start_nameserver_with(&mut self, node_timeout_ms: u64, extra: &[&str]) -> String {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = self.log(&format!("ns{}", self.nameservers.len()));
        let child = Command::new(env!("CARGO_BIN_EXE_raftmq"))
            .args([
                "nameserver",
                "--listen",
                &addr,
                "--node-timeout-ms",
                &node_timeout_ms.to_string(),
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn raftmq nameserver");
        self.nameservers.push(Proc {
            addr: addr.clone(),
            child: Some(child),
        });
        addr
    }

    pub fn nameserver_list(&self) -> String {
        self.nameservers
            .iter()
            .map(|p| p.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Start an `n`-node group registering with every nameserver started so far.
    pub fn start_group(&mut self, group: &str, n: u64) {
        self.start_group_with(group, n, &[]);
    }

    /// `start_group` with extra `raftmq broker` flags for every node.
    pub fn start_group_with(&mut self, group: &str, n: u64, extra: &[&str]) {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers = (1..=n)
            .map(|i| format!("{i}=127.0.0.1:{}", ports[(i - 1) as usize]))
            .collect::<Vec<_>>()
            .join(",");
        let ns = self.nameserver_list();
        for i in 1..=n {
            let addr = format!("127.0.0.1:{}", ports[(i - 1) as usize]);
            let dir = self.tmp.path().join(format!("{group}-{i}"));
            let log = self.log(&format!("{group}-{i}"));
            let child = Command::new(env!("CARGO_BIN_EXE_raftmq"))
                .args([
                    "broker",
                    "--group",
                    group,
                    "--node-id",
                    &i.to_string(),
                    "--listen",
                    &addr,
                    "--advertise",
                    &addr,
                    "--peers",
                    &peers,
                    "--data-dir",
                    dir.to_str().expect("utf-8 path"),
                    "--segment-size",
                    "16M",
                    "--nameservers",
                    &ns,
                ])
                .args(extra)
                .env(
                    "RUST_LOG",
                    "info,openraft=warn,raftmq::broker::register=debug",
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn raftmq broker");
            self.nodes.insert(
                (group.to_string(), i),
                Proc {
                    addr,
                    child: Some(child),
                },
            );
        }
    }

    pub fn addr(&self, group: &str, id: u64) -> String {
        self.nodes[&(group.to_string(), id)].addr.clone()
    }

    pub fn kill_node(&mut self, group: &str, id: u64) {
        if let Some(p) = self.nodes.get_mut(&(group.to_string(), id)) {
            p.kill();
        }
    }

    /// The logs of every process (for assertion messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.tmp.path()) {
            let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                if p.extension().is_some_and(|x| x == "log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    out.push_str(&format!("== {}\n", p.display()));
                    for l in tail.into_iter().rev() {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for p in self.nodes.values_mut() {
            p.kill();
        }
        for p in &mut self.nameservers {
            p.kill();
        }
    }
}

/// Poll `f` every `every` until it returns `Some`, at most `within`.
pub fn wait_until<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
