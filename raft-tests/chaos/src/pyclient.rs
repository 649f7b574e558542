//! The Python workload: the official Python client (`rocketmq-python-client` 5.1.2, unchanged)
//! driven by `raft-tests/chaos/python/workload.py`, one process per role: a producer of a
//! normal topic, a FIFO producer (4 message groups, each sequential), a SimpleConsumer of the
//! normal topic's group and one of a FIFO group. Each process writes one JSON object per line;
//! they become history events here (sends with `client: "python"`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use super::cluster::die_with_parent;
use super::history::{Event, History, SendOutcome};
use super::workload::{Control, QUEUES};

/// Normal topic of the Python workload.
pub const PY_NORMAL_TOPIC: &str = "chaos-py-normal";
/// FIFO topic of the Python workload.
pub const PY_FIFO_TOPIC: &str = "chaos-py-fifo";
/// Consumer groups of the Python workload: (name, topic, fifo).
pub const PY_CONSUMER_GROUPS: &[(&str, &str, bool)] = &[
    ("py-cg-normal", PY_NORMAL_TOPIC, false),
    ("py-cg-fifo", PY_FIFO_TOPIC, true),
];
/// Topics of the Python workload: (name, queues, message type).
pub const PY_TOPICS: &[(&str, u32, &str)] = &[
    (PY_NORMAL_TOPIC, QUEUES, "normal"),
    (PY_FIFO_TOPIC, QUEUES, "fifo"),
];
/// The client version the driver is written against.
pub const CLIENT_VERSION: &str = "5.1.2";

/// Where the interpreter and the driver are.
#[derive(Debug, Clone)]
pub struct PyConfig {
    /// The venv's interpreter (with `rocketmq-python-client` installed).
    pub python: PathBuf,
    /// `raft-tests/chaos/python/workload.py`.
    pub script: PathBuf,
}

/// What one driver process did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PyRole {
    /// `producer`, `fifo-producer`, `consumer`.
    pub role: String,
    /// Its name in the history.
    pub name: String,
    /// Lines read.
    pub lines: usize,
    /// Lines that did not parse.
    pub bad_lines: usize,
    /// Send calls / failed ones.
    pub sends: usize,
    /// Failed send calls.
    pub failed_sends: usize,
    /// Messages received.
    pub deliveries: usize,
    /// Acks that failed.
    pub failed_acks: usize,
    /// Errors the driver reported (receive failures, shutdown).
    pub errors: usize,
    /// The first few distinct error texts (sends, acks, receives).
    pub error_samples: Vec<String>,
    /// How it ended (exit status, or that it had to be killed).
    pub exit: String,
    /// Whether it exited before it was asked to stop.
    pub exited_early: bool,
    /// Its stderr (the client's own log is under `home`).
    pub stderr: PathBuf,
    /// HOME of the process: the client logs to `<home>/logs/rocketmq_python/`.
    pub home: PathBuf,
}

/// A line of the driver.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Ready {},
    /// A producer holds (after the send in progress, if any), as asked.
    Held {},
    Send {
        t0: u64,
        t1: u64,
        producer: String,
        id: String,
        topic: String,
        message_group: Option<String>,
        seq: u64,
        ok: bool,
        #[serde(default)]
        offset: Option<i64>,
        #[serde(default)]
        attempts: Option<u32>,
        #[serde(default)]
        error: Option<String>,
    },
    Deliver {
        t: u64,
        consumer_group: String,
        consumer: String,
        id: String,
        topic: String,
        endpoint: String,
        #[serde(default)]
        store_host: String,
        queue: i32,
        offset: i64,
        attempt: i32,
    },
    Ack {
        t: u64,
        consumer_group: String,
        id: String,
        ok: bool,
        #[serde(default)]
        error: Option<String>,
    },
    Error {
        what: String,
        error: String,
    },
    Exit {
        ok: bool,
        #[serde(default)]
        error: Option<String>,
    },
}

struct Proc {
    role: &'static str,
    child: Child,
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    reader: tokio::task::JoinHandle<()>,
    stats: Arc<Mutex<PyRole>>,
    stopping: bool,
}

/// The running Python workload.
pub struct PyWorkload {
    consumers: Vec<Proc>,
    producers: Vec<Proc>,
    done: Vec<PyRole>,
    hold: tokio::task::JoinHandle<()>,
}

/// Check that the interpreter has the official client; its version.
pub fn check_env(cfg: &PyConfig) -> anyhow::Result<String> {
    let hint = "the Python workload needs a venv with the official client: \
         `python3 -m venv target/pyenv && target/pyenv/bin/pip install \
         \"rocketmq-python-client==5.1.2\" pytest` (what .ci/run does), or pass --python, \
         or run with --clients rust";
    anyhow::ensure!(
        cfg.python.exists(),
        "no Python interpreter at {}: {hint}",
        cfg.python.display()
    );
    anyhow::ensure!(cfg.script.exists(), "no driver at {}", cfg.script.display());
    let out = std::process::Command::new(&cfg.python)
        .args([
            "-c",
            "import importlib.metadata as m, rocketmq; print(m.version('rocketmq-python-client'))",
        ])
        .output()
        .with_context(|| format!("run {}", cfg.python.display()))?;
    if !out.status.success() {
        bail!(
            "{} cannot import rocketmq ({}): {hint}",
            cfg.python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if v != CLIENT_VERSION {
        eprintln!(
            "chaos: rocketmq-python-client {v} installed; the driver is written against {CLIENT_VERSION}"
        );
    }
    Ok(v)
}

fn sample(st: &mut PyRole, e: &str) {
    if st.error_samples.len() < 8 && !st.error_samples.iter().any(|x| x == e) {
        st.error_samples.push(e.to_string());
    }
}

/// One line to a history event (or none).
fn convert(
    line: Line,
    by_addr: &BTreeMap<String, String>,
    st: &mut PyRole,
    ctl: &Control,
) -> Option<Event> {
    match line {
        Line::Ready {} | Line::Exit { ok: true, .. } => None,
        Line::Held {} => {
            ctl.inflight.fetch_sub(1, Ordering::SeqCst);
            None
        }
        Line::Exit { ok: false, error } => {
            st.errors += 1;
            sample(st, &format!("exit: {}", error.unwrap_or_default()));
            None
        }
        Line::Error { what, error } => {
            st.errors += 1;
            sample(st, &format!("{what}: {error}"));
            None
        }
        Line::Send {
            t0,
            t1,
            producer,
            id,
            topic,
            message_group,
            seq,
            ok,
            offset,
            attempts,
            error,
        } => {
            st.sends += 1;
            let outcome = match (ok, offset) {
                // The receipt names the route entry the client sent to, not the queue: the
                // client's SendMessage carries no queue id, the broker picks it.
                (true, Some(offset)) => SendOutcome::Ok {
                    offset,
                    broker_group: None,
                    queue: None,
                    attempts,
                },
                _ => {
                    st.failed_sends += 1;
                    let error = error.unwrap_or_else(|| "acknowledged without an offset".into());
                    sample(st, &error);
                    SendOutcome::Unknown { error, attempts }
                }
            };
            Some(Event::Send {
                t0,
                t1: t1.max(t0),
                producer,
                client: Some("python".into()),
                id,
                topic,
                message_group,
                seq,
                attempt: 1,
                outcome,
            })
        }
        Line::Deliver {
            t,
            consumer_group,
            consumer,
            id,
            topic,
            endpoint,
            store_host,
            queue,
            offset,
            attempt,
        } => {
            st.deliveries += 1;
            ctl.last_delivery.fetch_max(t, Ordering::Relaxed);
            // The node that served it (store host), else the endpoint the client used when
            // that is a node; through the nameserver's relay neither may name a node, and then
            // the place is unknown (-1) rather than attributed to a wrong group.
            let group = by_addr
                .get(&store_host)
                .or_else(|| by_addr.get(&endpoint))
                .cloned();
            let (queue, offset) = if group.is_some() {
                (queue, offset)
            } else {
                (-1, -1)
            };
            Some(Event::Deliver {
                t,
                consumer_group,
                consumer,
                id,
                topic,
                broker_group: group.unwrap_or(endpoint),
                queue,
                offset,
                attempt,
            })
        }
        Line::Ack {
            t,
            consumer_group,
            id,
            ok,
            error,
        } => {
            if !ok {
                st.failed_acks += 1;
                sample(st, &format!("ack: {}", error.unwrap_or_default()));
            }
            Some(Event::Ack {
                t,
                consumer_group,
                id,
                ok,
            })
        }
    }
}

/// Settings shared by every driver process.
struct Spawn<'a> {
    cfg: &'a PyConfig,
    h: &'a History,
    ctl: &'a Control,
    ns: &'a str,
    by_addr: Arc<BTreeMap<String, String>>,
    dir: &'a Path,
    run_tag: &'a str,
}

impl Spawn<'_> {
    /// Start one role and wait (bounded) until its client has started.
    async fn start(
        &self,
        role: &'static str,
        name: &str,
        topic: &str,
        group: Option<(&str, bool)>,
    ) -> anyhow::Result<Proc> {
        let home = self.dir.join(name);
        std::fs::create_dir_all(&home)?;
        let stderr_path = self.dir.join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut cmd = std::process::Command::new(&self.cfg.python);
        die_with_parent(&mut cmd);
        cmd.arg(&self.cfg.script)
            .args(["--role", role, "--name", name, "--topic", topic])
            .args(["--access-point", self.ns])
            .args(["--start-ms", &self.h.start_epoch_ms().to_string()])
            .args(["--run", self.run_tag]);
        if let Some((g, fifo)) = group {
            cmd.args(["--group", g]);
            if fifo {
                cmd.arg("--fifo");
            }
        }
        cmd.env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start the Python {role} ({})", self.cfg.python.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let stdin = Arc::new(tokio::sync::Mutex::new(child.stdin.take()));
        let stats = Arc::new(Mutex::new(PyRole {
            role: role.into(),
            name: name.into(),
            stderr: stderr_path.clone(),
            home: home.clone(),
            ..Default::default()
        }));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let reader = {
            let h = self.h.clone();
            let ctl = self.ctl.clone();
            let by_addr = Arc::clone(&self.by_addr);
            let stats = Arc::clone(&stats);
            tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if l.trim().is_empty() {
                        continue;
                    }
                    let parsed = serde_json::from_str::<Line>(&l);
                    let ev = {
                        let mut st = match stats.lock() {
                            Ok(g) => g,
                            Err(p) => p.into_inner(),
                        };
                        st.lines += 1;
                        match parsed {
                            Ok(Line::Ready {}) => {
                                if let Some(tx) = ready.take() {
                                    let _ = tx.send(());
                                }
                                None
                            }
                            Ok(line) => convert(line, &by_addr, &mut st, &ctl),
                            Err(e) => {
                                st.bad_lines += 1;
                                sample(&mut st, &format!("unparsed line ({e}): {l}"));
                                None
                            }
                        }
                    };
                    if let Some(ev) = ev {
                        h.record(ev);
                    }
                }
            })
        };
        match tokio::time::timeout(Duration::from_secs(90), ready_rx).await {
            Ok(Ok(())) => {}
            r => {
                let _ = child.start_kill();
                let tail = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                let tail: String = tail
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                bail!(
                    "the Python {role} {name} did not start ({}); stderr: {tail}",
                    if r.is_err() {
                        "not ready within 90 s"
                    } else {
                        "exited"
                    }
                );
            }
        }
        Ok(Proc {
            role,
            child,
            stdin,
            reader,
            stats,
            stopping: false,
        })
    }
}

async fn send_line(stdin: &tokio::sync::Mutex<Option<ChildStdin>>, line: &str) {
    let mut g = stdin.lock().await;
    if let Some(s) = g.as_mut()
        && (s.write_all(line.as_bytes()).await.is_err() || s.flush().await.is_err())
    {
        *g = None;
    }
}

/// Ask every process to stop (`stop` and the end of stdin), wait for each (SIGKILL after
/// `within`), and collect what they did.
async fn stop_all(procs: &mut Vec<Proc>, within: Duration) -> Vec<PyRole> {
    for p in procs.iter_mut() {
        p.stopping = true;
        send_line(&p.stdin, "stop\n").await;
        p.stdin.lock().await.take();
    }
    let mut out = Vec::new();
    for mut p in procs.drain(..) {
        let exit = match tokio::time::timeout(within, p.child.wait()).await {
            Ok(Ok(st)) => st.to_string(),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                let _ = p.child.kill().await;
                format!("killed: still running {} s after stop", within.as_secs())
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut p.reader).await;
        let mut st = match p.stats.lock() {
            Ok(g) => g.clone(),
            Err(e) => e.into_inner().clone(),
        };
        st.exit = exit;
        out.push(st);
    }
    out
}

impl PyWorkload {
    /// Subscribe the Python groups, start the consumers, then the producers; each must report
    /// that its client started.
    pub async fn start(
        h: &History,
        ctl: &Control,
        ns: &str,
        groups_by_addr: BTreeMap<String, String>,
        cfg: &PyConfig,
        out_dir: &Path,
        run_tag: &str,
    ) -> anyhow::Result<PyWorkload> {
        let dir = out_dir.join("python");
        std::fs::create_dir_all(&dir)?;
        let sp = Spawn {
            cfg,
            h,
            ctl,
            ns,
            by_addr: Arc::new(groups_by_addr),
            dir: &dir,
            run_tag,
        };
        let mut consumers = Vec::new();
        for (cg, topic, fifo) in PY_CONSUMER_GROUPS {
            h.record(Event::Subscribe {
                consumer_group: cg.to_string(),
                topic: topic.to_string(),
                fifo: *fifo,
            });
            consumers.push(
                sp.start("consumer", &format!("{cg}-0"), topic, Some((cg, *fifo)))
                    .await?,
            );
        }
        let producers = vec![
            sp.start("producer", "py-pn0", PY_NORMAL_TOPIC, None)
                .await?,
            sp.start("fifo-producer", "py-pf0", PY_FIFO_TOPIC, None)
                .await?,
        ];
        // The retention fault holds producers: pass it on. Each producer asked to hold counts
        // in flight until it says it holds (after the send in progress).
        let stdins: Vec<_> = producers.iter().map(|p| Arc::clone(&p.stdin)).collect();
        ctl.remote_producers
            .store(stdins.len() as u64, Ordering::SeqCst);
        let ctl2 = ctl.clone();
        let hold = tokio::spawn(async move {
            let mut held = false;
            loop {
                let want = ctl2.hold_producers.load(Ordering::SeqCst);
                if want != held {
                    held = want;
                    if held {
                        ctl2.inflight
                            .fetch_add(stdins.len() as i64, Ordering::SeqCst);
                        for s in &stdins {
                            send_line(s, "hold\n").await;
                        }
                        ctl2.hold_forwarded.store(true, Ordering::SeqCst);
                    } else {
                        ctl2.hold_forwarded.store(false, Ordering::SeqCst);
                        for s in &stdins {
                            send_line(s, "go\n").await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Ok(PyWorkload {
            consumers,
            producers,
            done: Vec::new(),
            hold,
        })
    }

    /// Processes that exited before they were asked to stop (a crashed client).
    pub fn exited_early(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.consumers.iter_mut().chain(self.producers.iter_mut()) {
            if let Ok(Some(st)) = p.child.try_wait()
                && !p.stopping
            {
                let mut s = match p.stats.lock() {
                    Ok(g) => g,
                    Err(e) => e.into_inner(),
                };
                if !s.exited_early {
                    s.exited_early = true;
                    out.push(format!("{} {} exited: {st}", p.role, s.name));
                }
            }
        }
        out
    }

    /// Stop the producers (a send in progress finishes first) and wait for them.
    pub async fn stop_producers(&mut self) {
        self.hold.abort();
        let _ = self.exited_early();
        let d = stop_all(&mut self.producers, Duration::from_secs(45)).await;
        self.done.extend(d);
    }

    /// Stop the consumers (after the receive in progress and its acks) and wait for them.
    pub async fn stop_consumers(&mut self) {
        let _ = self.exited_early();
        let d = stop_all(&mut self.consumers, Duration::from_secs(45)).await;
        self.done.extend(d);
    }

    /// What every stopped process did.
    pub fn roles(&self) -> Vec<PyRole> {
        self.done.clone()
    }
}

impl Drop for PyWorkload {
    fn drop(&mut self) {
        self.hold.abort();
        // kill_on_drop kills the children still running.
    }
}
