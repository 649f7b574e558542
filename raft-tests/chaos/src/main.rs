//! `raftmq-chaos`: run the chaos suite against a built `raftmq` binary.
//!
//! ```sh
//! cargo build --release
//! cargo run -p raftmq-chaos --release -- --duration 20m --seed 7 --faults all \
//!     --raftmq-bin target/release/raftmq
//! ```
//! Exit status: 0 clean, 1 safety violation, 2 the run itself failed.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use raftmq_chaos::{nemesis, run};

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

fn main() {
    let args = Args::parse();
    let code = match real_main(args) {
        Ok(true) => 0,
        Ok(false) => 1,
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

fn real_main(args: Args) -> anyhow::Result<bool> {
    if let Some(p) = args.check {
        let events = raftmq_chaos::history::load(&p)?;
        let a = raftmq_chaos::checker::check(&events);
        print!("{}", raftmq_chaos::checker::table(&a));
        return Ok(a.safety_violations() == 0);
    }
    let cfg = run::RunConfig {
        bin: args.raftmq_bin.canonicalize()?,
        duration: parse_duration(&args.duration)?,
        seed: args.seed,
        faults: nemesis::parse_faults(&args.faults)?,
        leader_kills: args.leader_kills,
        groups: args.groups.clamp(1, 2),
        out_dir: args.out,
        keep: args.keep,
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
    Ok(report.safety_violations == 0)
}
