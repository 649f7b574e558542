//! `raftmq-chaos`: run the chaos suite against a built `raftmq` binary.
//!
//! ```sh
//! cargo build --release
//! cargo run -p raftmq-chaos --release -- --duration 20m --seed 7 --faults all \
//!     --raftmq-bin target/release/raftmq
//! ```
//! Exit status: 0 clean, 1 safety violation (whatever else), 3 liveness failure and no safety
//! violation, 2 the run itself failed (no verdict).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use raftmq_chaos::{checker, nemesis, pyclient, run};

#[derive(Parser, Debug)]
#[command(about = "Chaos suite for raftmq: faults, a workload, a history and a checker")]
struct Args {
    /// How long the nemesis runs: `90s`, `20m`, `1h` (the schedule's head always completes).
    #[arg(long, default_value = "90s")]
    duration: String,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// `all` or a comma-separated list of: kill-leader, kill-node, pause-leader, pause-node,
    /// partition-leader, partition-halves, partition-oneway, torn-tail, disk-full,
    /// retention-lag.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Leader kills at the head of the schedule.
    #[arg(long, default_value_t = 10)]
    leader_kills: usize,
    /// Broker groups of 3 nodes (1 or 2).
    #[arg(long, default_value_t = 1)]
    groups: u32,
    /// The raftmq binary.
    #[arg(long, default_value = "target/release/raftmq")]
    raftmq_bin: PathBuf,
    /// Output directory (history.jsonl, report.json).
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Keep the cluster's data directory.
    #[arg(long)]
    keep: bool,
    /// Only check an existing history file and print the analysis.
    #[arg(long)]
    check: Option<PathBuf>,
    /// Workloads: `rust` (raftmq::client), `python` (the official Python client) or `both`.
    #[arg(long, default_value = "both")]
    clients: String,
    /// The Python interpreter of a venv with `rocketmq-python-client==5.1.2` (default:
    /// $RAFTMQ_CHAOS_PYTHON, else target/pyenv/bin/python of this workspace).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Liveness: longest a consumer group may go without a new delivery, while acknowledged
    /// messages wait for it, counting only time with no active fault.
    #[arg(long, default_value = "20s")]
    liveness_stall: String,
    /// How long consumers may take to catch up after the faults (everything healed).
    #[arg(long, default_value = "90s")]
    drain: String,
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse()?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => anyhow::bail!("bad duration `{s}`"),
    }))
}

/// A verdict.
enum Verdict {
    Clean,
    Safety,
    Liveness,
}

fn verdict(safety: usize, liveness: usize) -> Verdict {
    if safety > 0 {
        Verdict::Safety
    } else if liveness > 0 {
        Verdict::Liveness
    } else {
        Verdict::Clean
    }
}

/// The workspace's root (this crate is raft-tests/chaos).
fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn main() {
    let args = Args::parse();
    let code = match real_main(args) {
        Ok(Verdict::Clean) => 0,
        Ok(Verdict::Safety) => 1,
        Ok(Verdict::Liveness) => 3,
        Err(e) => {
            eprintln!("raftmq-chaos: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

/// Resolves on the first SIGINT or SIGTERM (never, if the handlers cannot be installed).
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

fn real_main(args: Args) -> anyhow::Result<Verdict> {
    let check = checker::CheckConfig {
        stall_bound_ms: parse_duration(&args.liveness_stall)?.as_millis() as u64,
    };
    if let Some(p) = args.check {
        let events = raftmq_chaos::history::load(&p)?;
        let a = checker::check_with(&events, &check);
        print!("{}", checker::table(&a));
        return Ok(verdict(a.safety_violations(), a.liveness_failure_count));
    }
    let clients = run::Clients::parse(&args.clients)?;
    let python = args
        .python
        .or_else(|| std::env::var_os("RAFTMQ_CHAOS_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| workspace().join("target/pyenv/bin/python"));
    let cfg = run::RunConfig {
        bin: args.raftmq_bin.canonicalize()?,
        duration: parse_duration(&args.duration)?,
        seed: args.seed,
        faults: nemesis::parse_faults(&args.faults)?,
        leader_kills: args.leader_kills,
        groups: args.groups.clamp(1, 2),
        out_dir: args.out,
        keep: args.keep,
        clients,
        python: Some(pyclient::PyConfig {
            python,
            script: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/workload.py"),
        }),
        drain: parse_duration(&args.drain)?,
        check,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Ctrl-C / SIGTERM drop the run: the cluster's Drop kills the nodes, unmounts the tmpfs,
    // deletes the network namespaces and the bridge, and removes the data directory, instead
    // of leaving them for the next run's start-up sweep.
    let report = rt.block_on(async {
        tokio::select! {
            r = run::run(cfg) => r,
            sig = interrupted() => Err(anyhow::anyhow!(
                "stopped by {sig}; nodes, mounts and network namespaces cleaned up"
            )),
        }
    })?;
    print!("{}", run::summary(&report));
    println!(
        "report: {}",
        report.history.with_file_name("report.json").display()
    );
    Ok(verdict(report.safety_violations, report.liveness_failures))
}
