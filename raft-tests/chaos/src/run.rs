//! One chaos run: start the cluster, run the workload under the nemesis for the duration,
//! heal, drain, read every replica, stop, check the history and the replicas, report.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::checker::{self, Analysis};
use super::cluster::{Cluster, ClusterConfig};
use super::history::{Event, History};
use super::nemesis::{self, Kind, Nemesis, NemesisStats};
use super::replica::{self, ReplicaReport};
use super::workload::{self, FIFO_TOPIC, FILLER_TOPIC, NORMAL_TOPIC, QUEUES, Workload};

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
    /// Where the history is.
    pub history: PathBuf,
}

/// Run.
pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&cfg.out_dir)?;
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
    let mut w = Workload::start(
        &h,
        &c.ns_addr,
        run_tag,
        2,
        2,
        4,
        Duration::from_millis(20),
        c.group_of_addr(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

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
        if let Err(e) = nem.fault(kind, &mut c, &h, &w.ctl).await {
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

    // Quiesce: stop producing, heal, let consumers drain.
    w.stop_producers().await;
    nem.heal_all(&mut c, "final", Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let idle = h.now().saturating_sub(
            w.ctl
                .last_delivery
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        if workload::all_acked_delivered(&h.events()) && idle > 1000 || idle > 12_000 {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.stop_consumers().await;

    // Final read of every replica, and the committed index per group.
    let mut committed = Vec::new();
    for g in c.groups() {
        let l = c.converge(&g, Duration::from_secs(60)).await?;
        committed.push(c.status(&g, l).await.and_then(|s| s.committed).unwrap_or(0));
        for id in c.ids(&g) {
            for topic in [NORMAL_TOPIC, FIFO_TOPIC] {
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
    let analysis = checker::check(&events);
    let safety_violations =
        analysis.safety_violations() + replicas.iter().map(|r| r.problems.len()).sum::<usize>();
    let report = Report {
        seed: cfg.seed,
        groups: cfg.groups,
        nemesis_secs,
        netns,
        analysis,
        replicas,
        nemesis: nem.stats,
        safety_violations,
        history: history_path,
    };
    std::fs::write(
        cfg.out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    if safety_violations > 0 {
        c.keep();
    }
    Ok(report)
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
    s.push_str(&format!(
        "  {:<40} {}\n",
        "SAFETY VIOLATIONS", r.safety_violations
    ));
    s
}
