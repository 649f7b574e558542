//! One chaos run: start the cluster, run the workload under the nemesis for the duration,
//! heal, drain, read every replica, stop, check the history and the replicas, report.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::checker::{self, Analysis, CheckConfig};
use super::cluster::{Cluster, ClusterConfig};
use super::history::{Event, History};
use super::nemesis::{self, Kind, Nemesis, NemesisStats};
use super::pyclient::{self, PyConfig, PyRole, PyWorkload};
use super::replica::{self, ReplicaReport};
use super::workload::{self, Control, FIFO_TOPIC, FILLER_TOPIC, NORMAL_TOPIC, QUEUES, Workload};

/// Which workloads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clients {
    /// `raftmq::client` only.
    Rust,
    /// The official Python client only.
    Python,
    /// Both, side by side (on their own topics and groups).
    Both,
}

impl Clients {
    /// Parse `rust`, `python` or `both`.
    pub fn parse(s: &str) -> anyhow::Result<Clients> {
        Ok(match s {
            "rust" => Clients::Rust,
            "python" => Clients::Python,
            "both" => Clients::Both,
            _ => anyhow::bail!("--clients: `rust`, `python` or `both`, not `{s}`"),
        })
    }

    /// Whether the Rust workload runs.
    pub fn rust(self) -> bool {
        self != Clients::Python
    }

    /// Whether the Python workload runs.
    pub fn python(self) -> bool {
        self != Clients::Rust
    }
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The `raftmq` binary.
    pub bin: PathBuf,
    /// How long the nemesis runs (the head of the schedule always completes).
    pub duration: Duration,
    /// Seed of the schedule.
    pub seed: u64,
    /// Fault kinds.
    pub faults: Vec<Kind>,
    /// Leader kills at the head of the schedule.
    pub leader_kills: usize,
    /// Broker groups (1 or 2).
    pub groups: u32,
    /// Where the history (`history.jsonl`) and report (`report.json`) go.
    pub out_dir: PathBuf,
    /// Keep the cluster's data directory.
    pub keep: bool,
    /// Which workloads run.
    pub clients: Clients,
    /// The Python workload's interpreter and driver (needed unless `clients` is `Rust`).
    pub python: Option<PyConfig>,
    /// How long consumers may take to catch up once everything is healed and producers stopped.
    pub drain: Duration,
    /// The checker's settings (the liveness stall bound).
    pub check: CheckConfig,
}

/// The outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Seed.
    pub seed: u64,
    /// Broker groups.
    pub groups: u32,
    /// Seconds the nemesis ran.
    pub nemesis_secs: f64,
    /// Whether partitions ran in network namespaces.
    pub netns: bool,
    /// History analysis.
    pub analysis: Analysis,
    /// Replica checks per group.
    pub replicas: Vec<ReplicaReport>,
    /// Liveness notes from the nemesis.
    pub nemesis: NemesisStats,
    /// Every safety violation count summed (history + replicas).
    pub safety_violations: usize,
    /// Liveness failures (consumer groups that stopped making progress); see the checker.
    pub liveness_failures: usize,
    /// Which workloads ran.
    pub clients: Clients,
    /// The official Python client's version, when it ran.
    pub python_client_version: Option<String>,
    /// The Python workload's processes.
    pub python: Vec<PyRole>,
    /// Where the history is.
    pub history: PathBuf,
}

/// Run.
pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&cfg.out_dir)?;
    // Before anything starts: the Python workload must be runnable (never skipped quietly).
    let py_cfg = if cfg.clients.python() {
        let p = cfg
            .python
            .clone()
            .context("the Python workload needs an interpreter and a driver")?;
        Some((pyclient::check_env(&p)?, p))
    } else {
        None
    };
    let history_path = cfg.out_dir.join("history.jsonl");
    let h = History::new(Some(&history_path))?;
    let ccfg = ClusterConfig {
        bin: cfg.bin.clone(),
        groups: cfg.groups,
        segment_size: "2M".into(),
        segment_bytes: 2 << 20,
        retention_bytes: "16M".into(),
        tmpfs_bytes: 512 << 20,
        keep: cfg.keep,
    };
    let mut c = Cluster::start(ccfg, true)?;
    let netns = c.net.is_some();
    let kinds: Vec<Kind> = cfg
        .faults
        .iter()
        .copied()
        .filter(|k| netns || !k.needs_netns())
        .collect();
    for g in c.groups() {
        c.converge(&g, Duration::from_secs(60)).await?;
    }
    c.setup_topic(NORMAL_TOPIC, QUEUES, "normal").await?;
    c.setup_topic(FIFO_TOPIC, QUEUES, "fifo").await?;
    c.setup_topic(FILLER_TOPIC, 1, "normal").await?;
    for (cg, _, fifo, _) in workload::CONSUMER_GROUPS {
        c.setup_group(cg, *fifo).await?;
    }
    let mut checked_topics = vec![NORMAL_TOPIC, FIFO_TOPIC];
    if py_cfg.is_some() {
        for (t, q, kind) in pyclient::PY_TOPICS {
            c.setup_topic(t, *q, kind).await?;
            checked_topics.push(t);
        }
        for (cg, _, fifo) in pyclient::PY_CONSUMER_GROUPS {
            c.setup_group(cg, *fifo).await?;
        }
    }
    // Routes reach the nameserver with the next heartbeats: wait for one accepted send.
    let probe = raftmq::client::Producer::with_timeout(&c.ns_addr, Duration::from_secs(3))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The probe goes to the filler topic: it is not part of the checked history.
        let m = raftmq::client::OutMessage {
            topic: FILLER_TOPIC.into(),
            body: bytes::Bytes::from_static(b"probe"),
            ..Default::default()
        };
        if probe.send(m).await.is_ok() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no route within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let run_tag = (std::process::id() ^ (cfg.seed as u32)) & 0x7FFF_FFFF;
    let ctl = Control::default();
    // The Python processes carry the run's tag (as the data directory does) in their command
    // line, so that a leftover one can be told apart.
    let mut py = match &py_cfg {
        Some((_, p)) => Some(
            PyWorkload::start(
                &h,
                &ctl,
                &c.ns_addr,
                c.group_of_addr(),
                p,
                &cfg.out_dir,
                &format!("raftmq-chaos-{}-py", std::process::id()),
            )
            .await?,
        ),
        None => None,
    };
    let mut w = cfg.clients.rust().then(|| {
        Workload::start(
            &h,
            &ctl,
            &c.ns_addr,
            run_tag,
            2,
            2,
            4,
            Duration::from_millis(20),
            c.group_of_addr(),
        )
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    phase(&h, "nemesis-start");

    let mut nem = Nemesis::new(cfg.seed);
    let head = nemesis::plan(&mut nem.rng, &kinds, cfg.leader_kills);
    let started = Instant::now();
    let mut n = 0usize;
    loop {
        let kind = if n < head.len() {
            head[n]
        } else if started.elapsed() < cfg.duration && !kinds.is_empty() {
            nemesis::next_random(&mut nem.rng, &kinds)
        } else {
            break;
        };
        n += 1;
        if let Err(e) = nem.fault(kind, &mut c, &h, &ctl).await {
            nem.stats
                .skipped
                .push(format!("{} #{n}: {e:#}", kind.name()));
        }
        nem.heal_all(
            &mut c,
            &format!("{} #{n}", kind.name()),
            Duration::from_secs(30),
        )
        .await;
        eprintln!(
            "chaos: [{:>6.1}s] fault #{n} {} done",
            started.elapsed().as_secs_f64(),
            kind.name()
        );
        let gap = Duration::from_millis(nem.rng.range(100, 400));
        tokio::time::sleep(gap).await;
    }
    let nemesis_secs = started.elapsed().as_secs_f64();
    phase(&h, "nemesis-end");

    // Quiesce: stop producing, heal, let consumers drain.
    if let Some(w) = w.as_mut() {
        w.stop_producers().await;
    }
    if let Some(p) = py.as_mut() {
        p.stop_producers().await;
    }
    nem.heal_all(&mut c, "final", Duration::from_secs(60)).await;
    phase(&h, "drain-start");
    let deadline = Instant::now() + cfg.drain;
    loop {
        let idle = h
            .now()
            .saturating_sub(ctl.last_delivery.load(std::sync::atomic::Ordering::Relaxed));
        if workload::all_acked_delivered(&h.events()) && idle > 1000 || idle > 12_000 {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(w) = w.as_mut() {
        w.stop_consumers().await;
    }
    if let Some(p) = py.as_mut() {
        p.stop_consumers().await;
    }
    phase(&h, "drain-end");
    let python = py.as_ref().map(|p| p.roles()).unwrap_or_default();
    drop(py);

    // Final read of every replica, and the committed index per group.
    let mut committed = Vec::new();
    for g in c.groups() {
        let l = c.converge(&g, Duration::from_secs(60)).await?;
        committed.push(c.status(&g, l).await.and_then(|s| s.committed).unwrap_or(0));
        for id in c.ids(&g) {
            for topic in checked_topics.iter().copied() {
                for (q, min, max, msgs) in c.read_all(&g, id, topic, QUEUES).await? {
                    h.record(Event::FinalQueue {
                        broker_group: g.clone(),
                        node: id,
                        topic: topic.into(),
                        queue: q,
                        min,
                        max,
                    });
                    for m in msgs {
                        h.record(Event::Final {
                            broker_group: g.clone(),
                            node: id,
                            topic: topic.into(),
                            queue: q,
                            offset: m.offset,
                            id: m.message_id,
                        });
                    }
                }
            }
        }
    }
    c.stop_all();
    let mut replicas = Vec::new();
    for (k, g) in c.groups().iter().enumerate() {
        let dirs: Vec<(u64, &std::path::Path)> =
            c.ids(g).into_iter().map(|i| (i, c.dir(g, i))).collect();
        replicas.push(replica::check_group(g, &dirs, committed[k], c.cfg.segment_bytes).await);
    }
    let events = h.events();
    let analysis = checker::check_with(&events, &cfg.check);
    let safety_violations =
        analysis.safety_violations() + replicas.iter().map(|r| r.problems.len()).sum::<usize>();
    let liveness_failures = analysis.liveness_failure_count;
    let report = Report {
        seed: cfg.seed,
        groups: cfg.groups,
        nemesis_secs,
        netns,
        analysis,
        replicas,
        nemesis: nem.stats,
        safety_violations,
        liveness_failures,
        clients: cfg.clients,
        python_client_version: py_cfg.map(|(v, _)| v),
        python,
        history: history_path,
    };
    std::fs::write(
        cfg.out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    if safety_violations > 0 || liveness_failures > 0 {
        c.keep();
    }
    Ok(report)
}

fn phase(h: &History, name: &str) {
    h.record(Event::Phase {
        t: h.now(),
        name: name.into(),
    });
}

/// The printed summary.
pub fn summary(r: &Report) -> String {
    let mut s = format!(
        "raftmq chaos: seed {} groups {} nemesis {:.0} s netns {}\n",
        r.seed, r.groups, r.nemesis_secs, r.netns
    );
    s.push_str(&checker::table(&r.analysis));
    for rep in &r.replicas {
        s.push_str(&format!(
            "  {:<40} {} indices compared up to {}, {} queue units vs recomputation, {} problems\n",
            format!("replicas {}", rep.group),
            rep.indices_compared,
            rep.committed,
            rep.units_compared,
            rep.problems.len()
        ));
        for p in &rep.problems {
            s.push_str(&format!("  ! replica: {p}\n"));
        }
    }
    s.push_str(&format!(
        "  {:<40} {} (max converge after heal {} ms)\n",
        "recovery failures",
        r.nemesis.recovery_failures.len(),
        r.nemesis.converge_max_ms
    ));
    for x in r.nemesis.recovery_failures.iter().take(10) {
        s.push_str(&format!("  ~ {x}\n"));
    }
    s.push_str(&format!(
        "  {:<40} {}\n",
        "stuck nodes restarted",
        r.nemesis.stuck_restarts.len()
    ));
    for x in r.nemesis.stuck_restarts.iter().take(10) {
        s.push_str(&format!("  ~ {x}\n"));
    }
    s.push_str(&format!(
        "  {:<40} {}\n",
        "unexpected process exits",
        r.nemesis.unexpected_exits.len()
    ));
    for x in r.nemesis.unexpected_exits.iter().take(10) {
        s.push_str(&format!("  ~ {x}\n"));
    }
    for x in r.nemesis.skipped.iter().take(10) {
        s.push_str(&format!("  ~ skipped: {x}\n"));
    }
    for p in &r.python {
        s.push_str(&format!(
            "  {:<40} sends {} (failed {}), received {}, failed acks {}, errors {}, {}{}\n",
            format!("python {} {}", p.role, p.name),
            p.sends,
            p.failed_sends,
            p.deliveries,
            p.failed_acks,
            p.errors,
            p.exit,
            if p.exited_early {
                " (EXITED BEFORE THE STOP)"
            } else {
                ""
            }
        ));
        for e in p.error_samples.iter().take(3) {
            s.push_str(&format!("  ~ {}: {e}\n", p.name));
        }
    }
    s.push_str(&format!(
        "  {:<40} {}\n",
        "SAFETY VIOLATIONS", r.safety_violations
    ));
    s.push_str(&format!(
        "  {:<40} {}\n",
        "LIVENESS FAILURES", r.liveness_failures
    ));
    s
}
