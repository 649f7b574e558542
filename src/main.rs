//! The `raftmq` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

mod dev;
mod produce_consume;
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
    /// Start a nameserver and a 3-node broker group on 127.0.0.1 (ports 9876, 8081-8083, HTTP
    /// 9081-9083) as child processes; Ctrl-C stops them. Data survives restarts.
    Dev(dev::DevArgs),
    /// Run one broker node (a member of a Raft broker group).
    Broker(Box<BrokerArgs>),
    /// Run a nameserver (stateless route registry and RocketMQ access point).
    Nameserver(raftmq::nameserver::NameserverArgs),
    /// Administer topics and inspect the cluster (through the nameservers or one node).
    Admin(Box<raftmq::admin_cli::AdminArgs>),
    /// Send messages: MESSAGE arguments, stdin lines, or a generated load (`--count`).
    Produce(Box<produce_consume::ProduceArgs>),
    /// Receive (and ack) messages as a consumer group, until none is left or `--max`.
    Consume(Box<produce_consume::ConsumeArgs>),
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
        Cmd::Dev(args) => dev::run(args).map(|()| ExitCode::SUCCESS),
        Cmd::Broker(args) => run_broker(*args),
        Cmd::Nameserver(args) => run_nameserver(args),
        Cmd::Admin(args) => run_admin(*args),
        Cmd::Produce(args) => produce_consume::produce(*args),
        Cmd::Consume(args) => produce_consume::consume(*args),
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

/// Flags of `raftmq broker`.
#[derive(clap::Args, Debug)]
struct BrokerArgs {
    /// Broker group name (all nodes of a group use the same).
    #[arg(long, env = "RAFTMQ_GROUP")]
    group: String,
    /// This node's id within the group.
    #[arg(long, env = "RAFTMQ_NODE_ID")]
    node_id: u64,
    /// Address to bind the node's gRPC port (Raft, admin and client services), HOST:PORT.
    #[arg(long, env = "RAFTMQ_LISTEN")]
    listen: std::net::SocketAddr,
    /// Address others use to reach this node; defaults to this node's entry in --peers.
    #[arg(long, env = "RAFTMQ_ADVERTISE")]
    advertise: Option<String>,
    /// Initial members, `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT` (hosts may be DNS names).
    /// Leave empty for a node that will be added later as a learner.
    #[arg(long, env = "RAFTMQ_PEERS", default_value = "")]
    peers: String,
    /// Data directory.
    #[arg(long, env = "RAFTMQ_DATA_DIR")]
    data_dir: PathBuf,
    /// `sync`: acknowledge after fsync (default); `async`: fsync every 10 ms (weaker).
    #[arg(long, env = "RAFTMQ_FLUSH", default_value = "sync")]
    flush: raftmq::storage::FlushMode,
    /// CommitLog segment size, e.g. `1G`, `64M`, `64K`.
    #[arg(long, env = "RAFTMQ_SEGMENT_SIZE", default_value = "1G", value_parser = parse_size)]
    segment_size: u64,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "RAFTMQ_HEARTBEAT_MS", default_value_t = 100)]
    heartbeat_ms: u64,
    /// Minimum Raft election timeout in milliseconds (the maximum is twice this).
    #[arg(long, env = "RAFTMQ_ELECTION_TIMEOUT_MS", default_value_t = 500)]
    election_timeout_ms: u64,
    /// Delete whole segments older than this many seconds.
    #[arg(long, env = "RAFTMQ_RETENTION_SECS")]
    retention_secs: Option<u64>,
    /// Delete the oldest whole segments while the CommitLog is larger than this (e.g. `100G`).
    #[arg(long, env = "RAFTMQ_RETENTION_BYTES", value_parser = parse_size)]
    retention_bytes: Option<u64>,
    /// How often retention runs, in seconds.
    #[arg(long, env = "RAFTMQ_RETENTION_INTERVAL_SECS", default_value_t = 10)]
    retention_interval_secs: u64,
    /// Nameservers to register with, `HOST:PORT,HOST:PORT`.
    #[arg(long, env = "RAFTMQ_NAMESERVERS", value_delimiter = ',')]
    nameservers: Vec<String>,
    /// Serve HTTP on HOST:PORT: /healthz, /readyz, /raftz (JSON), /metrics (Prometheus).
    /// Off by default.
    #[arg(long, env = "RAFTMQ_HTTP_LISTEN")]
    http_listen: Option<std::net::SocketAddr>,
}

/// `64K`, `1M`, `2G`, or plain bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 64K, 16M or 1G"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn run_broker(a: BrokerArgs) -> anyhow::Result<ExitCode> {
    use raftmq::broker::{Node, NodeConfig};
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let peers = raftmq::broker::node::parse_peers(&a.peers).context("--peers")?;
    let mut cfg = NodeConfig::new(&a.group, a.node_id, a.listen, a.data_dir);
    cfg.advertise = match (&a.advertise, peers.get(&a.node_id)) {
        (Some(x), _) => x.clone(),
        (None, Some(x)) => x.clone(),
        (None, None) => a.listen.to_string(),
    };
    cfg.peers = peers;
    cfg.flush = a.flush;
    cfg.segment_size = a.segment_size;
    cfg.heartbeat = std::time::Duration::from_millis(a.heartbeat_ms);
    cfg.election_timeout = std::time::Duration::from_millis(a.election_timeout_ms);
    cfg.retention_time = a.retention_secs.map(std::time::Duration::from_secs);
    cfg.retention_bytes = a.retention_bytes;
    cfg.retention_interval = std::time::Duration::from_secs(a.retention_interval_secs.max(1));
    cfg.nameservers = a
        .nameservers
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .collect();
    cfg.http_listen = a.http_listen;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let node = Node::start(cfg).await?;
        tracing::info!(
            "node {} of group {} serving on {}",
            node.config.node_id,
            node.config.group,
            node.local_addr
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run_nameserver(a: raftmq::nameserver::NameserverArgs) -> anyhow::Result<ExitCode> {
    use raftmq::nameserver::Nameserver;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = a.config()?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let ns = Nameserver::start(cfg.clone()).await?;
        tracing::info!(
            "nameserver serving on {} (node timeout {:?})",
            ns.local_addr(),
            cfg.node_timeout
        );
        wait_for_signal().await;
        tracing::info!("shutting down");
        ns.shutdown().await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run_admin(a: raftmq::admin_cli::AdminArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let out = rt.block_on(raftmq::admin_cli::run(a))?;
    print!("{}", out.text);
    Ok(if out.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can still stop on Ctrl-C through the default handler.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn inspect(dir: &std::path::Path) -> anyhow::Result<Inspection> {
    if !dir.join("commitlog").is_dir() {
        anyhow::bail!(
            "{} has no commitlog/ directory: not a raftmq data directory",
            dir.display()
        );
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
            println!(
                "index         {} records without a slot (recovery re-indexes them)",
                i.index_missing
            );
        }
        if let Some(t) = &i.torn_tail {
            println!("torn tail     {t}");
        }
        for p in &i.problems {
            println!("DAMAGE        {p}");
        }
        println!("result        {}", if ok { "OK" } else { "DAMAGED" });
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn dump(dir: &std::path::Path, from: u64, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let i = inspect(dir)?;
    if !json {
        println!(
            "{:>12} {:>8} {:>6} {:<11} {:>16} {:>10}",
            "index", "term", "node", "kind", "position", "payload"
        );
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
