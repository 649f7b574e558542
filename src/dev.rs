//! `raftmq dev`: a nameserver and a 3-node broker group on 127.0.0.1 as child processes of
//! this one command, for trying raftmq out. Ctrl-C stops every child cleanly; restarting on
//! the same data directory keeps every message.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Fixed, documented ports.
pub const NAMESERVER_PORT: u16 = 9876;
/// Broker node `i` (1..=3) listens on `BROKER_BASE_PORT + i`.
pub const BROKER_BASE_PORT: u16 = 8080;
/// Broker node `i` serves HTTP (/healthz, /readyz, /raftz, /metrics) on `HTTP_BASE_PORT + i`.
pub const HTTP_BASE_PORT: u16 = 9080;

/// Flags of `raftmq dev`.
#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Where the nodes keep their data (one sub-directory per node).
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// CommitLog segment size for the dev nodes.
    #[arg(long, default_value = "64M")]
    pub segment_size: String,
    /// Serve TLS everywhere (mutual TLS between the processes) with a CA and a certificate for
    /// 127.0.0.1/localhost generated into `<data-dir>/tls/` (reused if present).
    #[arg(long)]
    pub tls: bool,
}

struct Children(Vec<(String, Child)>);

impl Children {
    /// SIGTERM everyone, then wait (bounded), then SIGKILL stragglers.
    fn stop(&mut self) {
        for (_, c) in &mut self.0 {
            // A child already reaped keeps its status here; its pid may belong to someone
            // else by now, so it gets no signal.
            if matches!(c.try_wait(), Ok(Some(_))) {
                continue;
            }
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for (name, c) in &mut self.0 {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("{name} did not stop in time; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(exe: &std::path::Path, log: PathBuf, args: &[String]) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(exe);
    // The children are configured by their flags only: a RAFTMQ_* variable meant for some
    // other broker or nameserver in the caller's shell must not leak into them.
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("RAFTMQ_")) {
            cmd.env_remove(&k);
        }
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

/// Run the dev cluster until Ctrl-C.
pub fn run(a: DevArgs) -> anyhow::Result<()> {
    // Signal handlers first: a Ctrl-C during start-up must still stop the children cleanly
    // (without a handler the default action would kill only this process).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut signals = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        anyhow::Ok((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    let exe = std::env::current_exe().context("finding the raftmq binary")?;
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let data = a.data_dir.canonicalize()?;
    let ns = format!("127.0.0.1:{NAMESERVER_PORT}");
    let peers: Vec<String> = (1..=3)
        .map(|i| format!("{i}=127.0.0.1:{}", BROKER_BASE_PORT + i))
        .collect();
    // One certificate for every process: the dev cluster is all on 127.0.0.1.
    let certs = if a.tls {
        Some(raftmq::tls::dev_certs(
            &data.join("tls"),
            &["127.0.0.1", "localhost"],
        )?)
    } else {
        None
    };
    let tls_flags: Vec<String> = match &certs {
        Some(c) => vec![
            "--tls-cert".into(),
            c.cert.display().to_string(),
            "--tls-key".into(),
            c.key.display().to_string(),
            "--tls-ca".into(),
            c.ca.display().to_string(),
        ],
        None => Vec::new(),
    };
    let mut children = Children(Vec::new());
    let mut ns_args: Vec<String> = vec!["nameserver".into(), "--listen".into(), ns.clone()];
    ns_args.extend(tls_flags.iter().cloned());
    children.0.push((
        "nameserver".into(),
        spawn(&exe, data.join("nameserver.log"), &ns_args)?,
    ));
    for i in 1..=3u16 {
        let args = vec![
            "broker".to_string(),
            "--group".into(),
            "dev".into(),
            "--node-id".into(),
            i.to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", BROKER_BASE_PORT + i),
            "--peers".into(),
            peers.join(","),
            "--data-dir".into(),
            data.join(format!("node{i}")).display().to_string(),
            "--segment-size".into(),
            a.segment_size.clone(),
            "--nameservers".into(),
            ns.clone(),
            "--http-listen".into(),
            format!("127.0.0.1:{}", HTTP_BASE_PORT + i),
        ];
        let mut args = args;
        args.extend(tls_flags.iter().cloned());
        children.0.push((
            format!("node {i}"),
            spawn(&exe, data.join(format!("node{i}.log")), &args)?,
        ));
    }

    // Wait until the nameserver knows the group's leader (or a child dies).
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        for (name, c) in &mut children.0 {
            if let Ok(Some(st)) = c.try_wait() {
                anyhow::bail!("{name} exited ({st}); see the logs in {}", data.display());
            }
        }
        let out = Command::new(&exe)
            .args(["admin", "--nameservers", &ns])
            .args(&tls_flags)
            .args(["--json", "--timeout-ms", "2000", "cluster"])
            .output()?;
        if out.status.success()
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            && let Some(l) = v["groups"][0]["leader_addr"].as_str()
            && !l.is_empty()
        {
            break l.to_string();
        }
        if Instant::now() > deadline {
            anyhow::bail!("no leader after 60 s; see the logs in {}", data.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    println!("raftmq dev cluster is up (data in {})", data.display());
    println!("  nameserver      {ns}   (RocketMQ access point / namesrvAddr)");
    // With TLS the HTTP ports serve HTTPS (same certificate).
    let http = if certs.is_some() { "https" } else { "http" };
    for i in 1..=3u16 {
        println!(
            "  broker node {i}   127.0.0.1:{}   {http}://127.0.0.1:{}/metrics",
            BROKER_BASE_PORT + i,
            HTTP_BASE_PORT + i
        );
    }
    println!("  leader          {leader}");
    println!("  logs            {}/*.log", data.display());
    let tls_cli = tls_flags.join(" ");
    let sp = if tls_cli.is_empty() { "" } else { " " };
    if let Some(c) = &certs {
        println!("  TLS CA          {}", c.ca.display());
        println!("  TLS cert / key  {} {}", c.cert.display(), c.key.display());
        println!("  (every port serves TLS: the gRPC ports, and HTTPS on the HTTP ports)");
    }
    println!();
    println!("Try it:");
    println!("  raftmq admin --nameservers {ns}{sp}{tls_cli} topic create TopicTest --queues 4");
    println!("  # then, with the official Python client (pip install rocketmq-python-client):");
    println!("  #   ClientConfiguration(\"{ns}\", Credentials()) -> Producer / SimpleConsumer");
    if let Some(c) = &certs {
        println!(
            "  #   with Producer(..., tls_enable=True) / SimpleConsumer(..., tls_enable=True)"
        );
        println!(
            "  #   and, in the client's environment, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={}",
            c.ca.display()
        );
        println!(
            "  raftmq produce --nameservers {ns} --tls-ca {} --topic TopicTest hello",
            c.ca.display()
        );
    }
    println!("  raftmq admin --nameservers {ns}{sp}{tls_cli} cluster");
    match &certs {
        Some(c) => println!(
            "  curl --cacert {} https://127.0.0.1:{}/readyz",
            c.ca.display(),
            HTTP_BASE_PORT + 1
        ),
        None => println!("  curl http://127.0.0.1:{}/readyz", HTTP_BASE_PORT + 1),
    }
    println!();
    println!("Ctrl-C stops everything.");

    // Until Ctrl-C (or SIGTERM), and watch the children: one that dies is reported and
    // reaped at once, and the others go on (restart `raftmq dev` to bring it back).
    let mut dead: Vec<String> = Vec::new();
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = signals.0.recv() => break,
                _ = signals.1.recv() => break,
                _ = tick.tick() => {
                    for (name, c) in &mut children.0 {
                        if dead.contains(name) {
                            continue;
                        }
                        if let Ok(Some(st)) = c.try_wait() {
                            eprintln!("{name} exited ({st}); see {}/*.log", data.display());
                            dead.push(name.clone());
                        }
                    }
                }
            }
        }
    });
    println!("stopping...");
    children.stop();
    println!("stopped");
    Ok(())
}
