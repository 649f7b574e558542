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
    /// Log format of server processes (broker, nameserver): `human` or `json` (one JSON object
    /// per line, for log shippers). The level comes from `RUST_LOG`.
    #[arg(long, global = true, env = "RAFTMQ_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Logging for the server processes: human-readable by default, JSON lines on request.
fn init_logs(format: &str, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
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
        Cmd::Broker(args) => run_broker(*args, &cli.log_format),
        Cmd::Nameserver(args) => run_nameserver(args, &cli.log_format),
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

/// Flags of `raftmq broker`. Every setting can also come from `RAFTMQ_*` environment
/// variables or a TOML file (`--config`); flags override the environment, which overrides the
/// file. Keys and defaults: see `raftmq::config`.
#[derive(clap::Args, Debug)]
struct BrokerArgs {
    /// TOML config file (keys: the flag names with `_` instead of `-`).
    #[arg(long, env = "RAFTMQ_CONFIG")]
    config: Option<PathBuf>,
    /// Broker group name (all nodes of a group use the same).
    #[arg(long, env = "RAFTMQ_GROUP")]
    group: Option<String>,
    /// This node's id within the group.
    #[arg(long, env = "RAFTMQ_NODE_ID")]
    node_id: Option<u64>,
    /// Address to bind the node's gRPC port (Raft, admin and client services), IP:PORT.
    #[arg(long, env = "RAFTMQ_LISTEN")]
    listen: Option<String>,
    /// Address others use to reach this node; defaults to this node's entry in --peers.
    #[arg(long, env = "RAFTMQ_ADVERTISE")]
    advertise: Option<String>,
    /// Initial members, `1=HOST:PORT,2=HOST:PORT,3=HOST:PORT` (hosts may be DNS names).
    #[arg(long, env = "RAFTMQ_PEERS")]
    peers: Option<String>,
    /// Start without peers, to be added later as a learner (`raftmq admin raft add-node`).
    #[arg(long, env = "RAFTMQ_JOIN")]
    join: bool,
    /// Data directory (created if missing; must be writable).
    #[arg(long, env = "RAFTMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `sync` (default): acknowledge after fsync; `async`: fsync every 10 ms (weaker).
    #[arg(long, env = "RAFTMQ_FLUSH")]
    flush: Option<String>,
    /// CommitLog segment size, e.g. `1G` (default), `64M`, `64K`.
    #[arg(long, env = "RAFTMQ_SEGMENT_SIZE")]
    segment_size: Option<String>,
    /// Raft heartbeat interval in milliseconds (default 100).
    #[arg(long, env = "RAFTMQ_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Minimum Raft election timeout in milliseconds; the maximum is twice this (default 500).
    #[arg(long, env = "RAFTMQ_ELECTION_TIMEOUT_MS")]
    election_timeout_ms: Option<u64>,
    /// Delete whole segments older than this many seconds.
    #[arg(long, env = "RAFTMQ_RETENTION_SECS")]
    retention_secs: Option<u64>,
    /// Delete the oldest whole segments while the CommitLog is larger than this (e.g. `100G`).
    #[arg(long, env = "RAFTMQ_RETENTION_BYTES")]
    retention_bytes: Option<String>,
    /// How often retention runs, in seconds (default 10).
    #[arg(long, env = "RAFTMQ_RETENTION_INTERVAL_SECS")]
    retention_interval_secs: Option<u64>,
    /// Nameservers to register with, `HOST:PORT,HOST:PORT`.
    #[arg(long, env = "RAFTMQ_NAMESERVERS", value_delimiter = ',')]
    nameservers: Option<Vec<String>>,
    /// Serve HTTP on IP:PORT: /healthz, /readyz, /raftz (JSON), /metrics (Prometheus); HTTPS
    /// with the --tls-* files. Off by default.
    #[arg(long, env = "RAFTMQ_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// Longest delay a delay message may ask for (e.g. `24h`, the default).
    #[arg(long, env = "RAFTMQ_MAX_DELAY")]
    max_delay: Option<String>,
    /// Check back transaction half messages unresolved this long, then every interval
    /// (default `30s`).
    #[arg(long, env = "RAFTMQ_TRANSACTION_CHECK_INTERVAL")]
    transaction_check_interval: Option<String>,
    /// Discard a half message after this many unanswered check-backs (default 15).
    #[arg(long, env = "RAFTMQ_TRANSACTION_MAX_CHECKS")]
    transaction_max_checks: Option<u32>,
    /// PEM certificate chain of this node (with --tls-key and --tls-ca: TLS on the gRPC port,
    /// HTTPS on the HTTP port, and mutual TLS to peers and nameservers).
    #[arg(long, env = "RAFTMQ_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "RAFTMQ_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle of the cluster.
    #[arg(long, env = "RAFTMQ_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Authenticate and authorize every request (RocketMQ 5 ACL).
    #[arg(long, env = "RAFTMQ_ACL_ENABLED")]
    acl_enabled: bool,
    /// Access key of the bootstrap super user.
    #[arg(long, env = "RAFTMQ_ACL_ADMIN_ACCESS_KEY")]
    acl_admin_access_key: Option<String>,
    /// Secret key of the bootstrap super user (prefer the env var to the flag).
    #[arg(long, env = "RAFTMQ_ACL_ADMIN_SECRET_KEY", hide_env_values = true)]
    acl_admin_secret_key: Option<String>,
}

impl BrokerArgs {
    fn settings(self) -> raftmq::config::BrokerSettings {
        raftmq::config::BrokerSettings {
            group: self.group,
            node_id: self.node_id,
            listen: self.listen,
            advertise: self.advertise,
            peers: self.peers,
            join: self.join.then_some(true),
            data_dir: self.data_dir,
            flush: self.flush,
            segment_size: self.segment_size,
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms: self.election_timeout_ms,
            retention_secs: self.retention_secs,
            retention_bytes: self.retention_bytes,
            retention_interval_secs: self.retention_interval_secs,
            nameservers: self.nameservers,
            http_listen: self.http_listen,
            max_delay: self.max_delay,
            transaction_check_interval: self.transaction_check_interval,
            transaction_max_checks: self.transaction_max_checks,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_ca: self.tls_ca,
            acl_enabled: self.acl_enabled.then_some(true),
            acl_admin_access_key: self.acl_admin_access_key,
            acl_admin_secret_key: self.acl_admin_secret_key,
        }
    }
}

/// `64K`, `1M`, `2G`, or plain bytes (shared with `produce`).
fn parse_size(s: &str) -> Result<u64, String> {
    raftmq::config::parse_size(s)
}

fn run_broker(a: BrokerArgs, log_format: &str) -> anyhow::Result<ExitCode> {
    use raftmq::broker::Node;
    init_logs(log_format, "info,openraft=warn");
    let file = match &a.config {
        Some(p) => raftmq::config::BrokerSettings::from_file(p)?,
        None => Default::default(),
    };
    let cfg = a.settings().over(file).into_node_config()?;
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
        let t = raftmq::broker::leave::LeaveTimeouts::default();
        tracing::info!("leaving the group (at most {:?})", t.total());
        // A second signal stops at once.
        tokio::select! {
            _ = node.leave(t) => {}
            _ = wait_for_signal() => {
                tracing::warn!("second signal: stopping without finishing the leave");
                node.shutdown().await;
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run_nameserver(
    a: raftmq::nameserver::NameserverArgs,
    log_format: &str,
) -> anyhow::Result<ExitCode> {
    use raftmq::nameserver::Nameserver;
    init_logs(log_format, "info");
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
