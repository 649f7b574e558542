//! The `raftmq` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use raftmq::storage::commitlog::{self, Inspection};

/// raftmq: a RocketMQ-style message broker whose CommitLog is a Raft log.
#[derive(Parser, Debug)]
#[command(name = "raftmq", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Offline tools for a node's data directory (run them on a stopped node).
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCmd {
    /// Check every record (magic, version, CRC, position, dense indexes) and the index file.
    /// Exits non-zero if anything is damaged.
    Verify {
        /// The node's data directory (the one holding `commitlog/`).
        dir: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List records: index, term, leader node, kind, position, payload length.
    Dump {
        /// The node's data directory.
        dir: PathBuf,
        /// First Raft index to list.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// How many records to list at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Store { cmd } => match cmd {
            StoreCmd::Verify { dir, json } => verify(&dir, json),
            StoreCmd::Dump {
                dir,
                from,
                limit,
                json,
            } => dump(&dir, from, limit, json),
        },
    }
}

fn inspect(dir: &std::path::Path) -> anyhow::Result<Inspection> {
    if !dir.join("commitlog").is_dir() {
        anyhow::bail!("{} has no commitlog/ directory: not a raftmq data directory", dir.display());
    }
    commitlog::inspect(dir).with_context(|| format!("inspecting {}", dir.display()))
}

fn verify(dir: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let i = inspect(dir)?;
    let ok = i.problems.is_empty();
    if json {
        let v = serde_json::json!({
            "ok": ok,
            "segments": i.segments,
            "segment_size": i.segment_size,
            "records": i.records,
            "payload_bytes": i.payload_bytes,
            "first_index": i.first_index,
            "last_index": i.last_index,
            "kinds": i.kinds,
            "index_missing": i.index_missing,
            "torn_tail": i.torn_tail,
            "problems": i.problems,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("data dir      {}", dir.display());
        println!("segments      {} x {} bytes", i.segments, i.segment_size);
        println!("records       {}", i.records);
        println!("payload bytes {}", i.payload_bytes);
        let range = match (i.first_index, i.last_index) {
            (Some(a), Some(b)) => format!("{a}..={b}"),
            _ => "empty".to_string(),
        };
        println!("raft indexes  {range}");
        let kinds: Vec<String> = i.kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!("kinds         {}", kinds.join(" "));
        if i.index_missing > 0 {
            println!("index         {} records without a slot (recovery re-indexes them)", i.index_missing);
        }
        if let Some(t) = &i.torn_tail {
            println!("torn tail     {t}");
        }
        for p in &i.problems {
            println!("DAMAGE        {p}");
        }
        println!("result        {}", if ok { "OK" } else { "DAMAGED" });
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

fn dump(dir: &std::path::Path, from: u64, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let i = inspect(dir)?;
    if !json {
        println!("{:>12} {:>8} {:>6} {:<11} {:>16} {:>10}", "index", "term", "node", "kind", "position", "payload");
    }
    for e in i.entries.iter().filter(|e| e.id.index >= from).take(limit) {
        if json {
            let v = serde_json::json!({
                "index": e.id.index, "term": e.id.term, "node": e.id.node,
                "kind": e.kind.name(), "kind_byte": e.kind.0, "position": e.pos, "payload_len": e.payload_len,
            });
            println!("{v}");
        } else {
            println!(
                "{:>12} {:>8} {:>6} {:<11} {:>16} {:>10}",
                e.id.index,
                e.id.term,
                e.id.node,
                e.kind.name(),
                e.pos,
                e.payload_len
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
