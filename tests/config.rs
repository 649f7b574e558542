//! Configuration of the server processes, `raftmq broker` and `raftmq nameserver`: a TOML file,
//! env and flags, layered key by key; bad settings fail at start with a message naming the
//! key; the commented examples in `deploy/conf/` are valid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftmq::config::{BrokerSettings, NameserverSettings};
use raftmq::proto::raftmq::nameserver as npb;
use raftmq::proto::raftmq::nameserver::nameserver_client::NameserverClient;

/// Environment variables of the server processes, removed from every child so that the
/// caller's shell cannot change a test's outcome.
const SERVER_ENV: &[&str] = &[
    "RAFTMQ_CONFIG",
    "RAFTMQ_GROUP",
    "RAFTMQ_NODE_ID",
    "RAFTMQ_LISTEN",
    "RAFTMQ_ADVERTISE",
    "RAFTMQ_PEERS",
    "RAFTMQ_JOIN",
    "RAFTMQ_DATA_DIR",
    "RAFTMQ_FLUSH",
    "RAFTMQ_SEGMENT_SIZE",
    "RAFTMQ_HEARTBEAT_MS",
    "RAFTMQ_ELECTION_TIMEOUT_MS",
    "RAFTMQ_RETENTION_SECS",
    "RAFTMQ_RETENTION_BYTES",
    "RAFTMQ_RETENTION_INTERVAL_SECS",
    "RAFTMQ_NAMESERVERS",
    "RAFTMQ_HTTP_LISTEN",
    "RAFTMQ_NAMESERVER_CONFIG",
    "RAFTMQ_NAMESERVER_LISTEN",
    "RAFTMQ_NAMESERVER_NODE_TIMEOUT_MS",
];

fn command(subcommand: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftmq"));
    cmd.arg(subcommand).args(args).stdin(Stdio::null());
    for k in SERVER_ENV {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Run `raftmq <subcommand>` with settings expected to be refused; returns (exited with
/// success, stderr). A process still running after the deadline is killed and reported as
/// `(true, "still running")`.
fn run(subcommand: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    // Settings that fail validation make the process exit at once; bound it anyway.
    let mut child = command(subcommand, args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            return (
                st.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (true, "still running".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn broker(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    run("broker", args, env)
}

fn nameserver(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    run("nameserver", args, env)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `raftmq nameserver` (expected to come up on 127.0.0.1:`port`) and wait until it
/// answers `ListGroups` and has logged its start-up line; returns the node timeout it
/// reports. Panics with the log if it exits or does not answer in time.
fn nameserver_node_timeout(port: u16, args: &[&str], env: &[(&str, &str)], log: &Path) -> u64 {
    let child = command("nameserver", args, env)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn");
    let mut child = Killed(child);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = rt.block_on(async {
            let ch = endpoint.connect().await.ok()?;
            NameserverClient::new(ch)
                .list_groups(npb::ListGroupsRequest {})
                .await
                .ok()
                .map(|r| r.into_inner())
        });
        let logs = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(r) = reply
            && logs.contains("nameserver serving on")
        {
            return r.node_timeout_ms;
        }
        if let Some(st) = child.0.try_wait().expect("wait") {
            panic!("nameserver exited ({st}):\n{logs}");
        }
        if Instant::now() > deadline {
            panic!("nameserver did not answer on port {port}:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn deploy_conf(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join("conf")
        .join(name)
}

#[test]
fn bad_settings_fail_at_start_naming_the_key() {
    let t = tempfile::tempdir().expect("tempdir");
    let data = t.path().join("data");
    let data_s = data.to_str().expect("utf-8");
    let good = [
        "--group",
        "g",
        "--node-id",
        "1",
        "--listen",
        "127.0.0.1:1",
        "--peers",
        "1=127.0.0.1:1",
    ];

    // Unknown key in the file.
    let f = t.path().join("bad.toml");
    std::fs::write(&f, "group = \"g\"\nnode_idd = 1\n").expect("write");
    let (ok, err) = broker(&["--config", f.to_str().expect("utf-8")], &[]);
    assert!(!ok && err.contains("node_idd"), "{err}");

    // Bad address, from the environment.
    let (ok, err) = broker(
        &[
            "--group",
            "g",
            "--node-id",
            "1",
            "--peers",
            "1=127.0.0.1:1",
            "--data-dir",
            data_s,
        ],
        &[("RAFTMQ_LISTEN", "not-an-address")],
    );
    assert!(!ok && err.contains("`listen`"), "{err}");

    // Missing peers (and not joining).
    let (ok, err) = broker(
        &[
            "--group",
            "g",
            "--node-id",
            "1",
            "--listen",
            "127.0.0.1:1",
            "--data-dir",
            data_s,
        ],
        &[],
    );
    assert!(!ok && err.contains("`peers`"), "{err}");

    // Unwritable data dir: a path below a regular file.
    let file = t.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let under = file.join("data");
    let mut args: Vec<&str> = good.to_vec();
    args.extend(["--data-dir", under.to_str().expect("utf-8")]);
    let (ok, err) = broker(&args, &[]);
    assert!(!ok && err.contains("`data_dir`"), "{err}");

    // Missing required key.
    let (ok, err) = broker(
        &[
            "--node-id",
            "1",
            "--listen",
            "127.0.0.1:1",
            "--peers",
            "1=127.0.0.1:1",
            "--data-dir",
            data_s,
        ],
        &[],
    );
    assert!(!ok && err.contains("`group`"), "{err}");
}

#[test]
fn a_node_starts_from_a_config_file_and_flags_override_it() {
    let t = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let f = t.path().join("node.toml");
    std::fs::write(
        &f,
        format!(
            "group = \"cfg\"\nnode_id = 1\nlisten = \"127.0.0.1:{port}\"\npeers = \"1=127.0.0.1:{port}\"\n\
             data_dir = \"{}\"\nsegment_size = \"64K\"\nflush = \"definitely\"\n",
            t.path().join("data").display()
        ),
    )
    .expect("write");
    // The file's bad `flush` is overridden by the flag, so the node starts.
    let log = t.path().join("node.log");
    let mut child = command(
        "broker",
        &[
            "--log-format",
            "json",
            "--config",
            f.to_str().expect("utf-8"),
            "--flush",
            "sync",
        ],
        &[],
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).expect("log file"))
    .spawn()
    .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let up = loop {
        // Up = the port answers and the start-up line has been logged.
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && std::fs::read_to_string(&log).is_ok_and(|l| l.contains("serving on"))
        {
            break true;
        }
        if child.try_wait().expect("wait").is_some() || Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "node did not start from its config file");
    // `--log-format json`: every log line is one JSON object.
    let logs = std::fs::read_to_string(&log).expect("read log");
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.iter().any(|l| l.contains("serving on")), "{logs}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
    // 64K segments from the file are in effect.
    let seg = std::fs::read_dir(t.path().join("data").join("commitlog"))
        .expect("commitlog dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .next();
    assert!(
        seg.is_none() || seg == Some(64 << 10),
        "segment size {seg:?}"
    );
}

#[test]
fn nameserver_bad_settings_fail_at_start_naming_the_key() {
    let t = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, text: &str| {
        let f = t.path().join(name);
        std::fs::write(&f, text).expect("write");
        f.to_str().expect("utf-8").to_string()
    };
    let port = free_port();

    // Unknown key in the file.
    let f = file("unknown.toml", "listen_addr = \"127.0.0.1:9876\"\n");
    let (ok, err) = nameserver(&["--config", &f], &[]);
    assert!(!ok && err.contains("listen_addr"), "{err}");

    // Bad address in the file.
    let f = file("listen.toml", "listen = \"localhost\"\n");
    let (ok, err) = nameserver(&["--config", &f], &[]);
    assert!(!ok && err.contains("`listen`"), "{err}");

    // Bad address from the environment.
    let (ok, err) = nameserver(&[], &[("RAFTMQ_NAMESERVER_LISTEN", "127.0.0.1:99999")]);
    assert!(!ok && err.contains("`listen`"), "{err}");

    // Bad address as a flag.
    let (ok, err) = nameserver(&["--listen", "nowhere"], &[]);
    assert!(!ok && err.contains("`listen`"), "{err}");

    // A node timeout too short for the brokers' heartbeats.
    let f = file(
        "timeout.toml",
        &format!("listen = \"127.0.0.1:{port}\"\nnode_timeout_ms = 100\n"),
    );
    let (ok, err) = nameserver(&["--config", &f], &[]);
    assert!(!ok && err.contains("`node_timeout_ms`"), "{err}");

    // A duration of the wrong type (not milliseconds).
    let f = file(
        "type.toml",
        &format!("listen = \"127.0.0.1:{port}\"\nnode_timeout_ms = \"3s\"\n"),
    );
    let (ok, err) = nameserver(&["--config", &f], &[]);
    assert!(!ok && err.contains("node_timeout_ms"), "{err}");

    // A negative one.
    let f = file(
        "negative.toml",
        &format!("listen = \"127.0.0.1:{port}\"\nnode_timeout_ms = -1\n"),
    );
    let (ok, err) = nameserver(&["--config", &f], &[]);
    assert!(!ok && err.contains("node_timeout_ms"), "{err}");

    // Not TOML at all.
    let f = file("garbage.toml", "listen: 127.0.0.1:9876\n");
    let (ok, err) = nameserver(&["--config", &f], &[]);
    assert!(!ok && err.contains("garbage.toml"), "{err}");

    // A config file that does not exist (given through the environment).
    let missing = t.path().join("missing.toml");
    let (ok, err) = nameserver(
        &[],
        &[("RAFTMQ_NAMESERVER_CONFIG", missing.to_str().expect("utf-8"))],
    );
    assert!(!ok && err.contains("missing.toml"), "{err}");
}

#[test]
fn a_nameserver_starts_from_a_config_file_and_env_and_flags_override_it() {
    let t = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // Alone, this file is refused: its address and its timeout are both bad.
    let f = t.path().join("ns.toml");
    std::fs::write(&f, "listen = \"not-an-address\"\nnode_timeout_ms = 1\n").expect("write");
    let f = f.to_str().expect("utf-8");
    let (ok, err) = nameserver(&["--config", f], &[]);
    assert!(!ok && err.contains("`listen`"), "{err}");
    // The environment overrides the file's timeout and address, the flag overrides the
    // environment's address.
    let listen = format!("127.0.0.1:{port}");
    let timeout = nameserver_node_timeout(
        port,
        &["--config", f, "--listen", &listen],
        &[
            ("RAFTMQ_NAMESERVER_NODE_TIMEOUT_MS", "2500"),
            ("RAFTMQ_NAMESERVER_LISTEN", "also-not-an-address"),
        ],
        &t.path().join("ns.log"),
    );
    assert_eq!(timeout, 2500);
    // Without any source of a timeout, the default applies.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let timeout =
        nameserver_node_timeout(port, &["--listen", &listen], &[], &t.path().join("ns2.log"));
    assert_eq!(timeout, 3000);
}

#[test]
fn the_deploy_examples_are_valid() {
    let t = tempfile::tempdir().expect("tempdir");
    // The nameserver example serves as it is (on a free port instead of 9876).
    let ns = deploy_conf("nameserver.toml");
    let file = NameserverSettings::from_file(&ns).expect("nameserver.toml");
    let cfg = file.clone().into_nameserver_config().expect("valid");
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:9876");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let timeout = nameserver_node_timeout(
        port,
        &["--config", ns.to_str().expect("utf-8"), "--listen", &listen],
        &[],
        &t.path().join("ns.log"),
    );
    assert_eq!(Some(timeout), file.node_timeout_ms);

    // The three broker examples form one group (data directories moved into the temp dir).
    let mut peers = Vec::new();
    for i in 1..=3u64 {
        let file = BrokerSettings::from_file(&deploy_conf(&format!("broker-{i}.toml")))
            .unwrap_or_else(|e| panic!("broker-{i}.toml: {e}"));
        let here = BrokerSettings {
            data_dir: Some(t.path().join(format!("node{i}"))),
            ..Default::default()
        };
        let cfg = here
            .over(file)
            .into_node_config()
            .unwrap_or_else(|e| panic!("broker-{i}.toml: {e}"));
        assert_eq!(cfg.node_id, i);
        assert_eq!(cfg.group, "g1");
        assert_eq!(cfg.advertise, cfg.peers[&i]);
        assert_eq!(cfg.nameservers, vec!["127.0.0.1:9876".to_string()]);
        assert!(cfg.http_listen.is_some());
        assert_eq!(cfg.max_delay, Duration::from_secs(24 * 3600));
        assert_eq!(cfg.transaction_check_interval, Duration::from_secs(30));
        assert_eq!(cfg.transaction_max_checks, 15);
        peers.push(cfg.peers);
    }
    assert!(peers.windows(2).all(|w| w[0] == w[1]), "{peers:?}");
    assert_eq!(peers[0].len(), 3);
}

#[test]
fn broker_values_are_checked_key_by_key() {
    let t = tempfile::tempdir().expect("tempdir");
    let base = BrokerSettings {
        group: Some("g".into()),
        node_id: Some(1),
        listen: Some("127.0.0.1:1".into()),
        peers: Some("1=127.0.0.1:1,2=127.0.0.1:2".into()),
        data_dir: Some(t.path().join("d")),
        ..Default::default()
    };
    assert!(base.clone().into_node_config().is_ok());
    let cases: Vec<(BrokerSettings, &str)> = vec![
        (
            BrokerSettings {
                node_id: Some(7),
                ..base.clone()
            },
            "node_id",
        ),
        (
            BrokerSettings {
                group: Some("a group".into()),
                ..base.clone()
            },
            "group",
        ),
        (
            BrokerSettings {
                advertise: Some("no-port".into()),
                ..base.clone()
            },
            "advertise",
        ),
        (
            BrokerSettings {
                heartbeat_ms: Some(0),
                ..base.clone()
            },
            "heartbeat_ms",
        ),
        (
            BrokerSettings {
                heartbeat_ms: Some(200),
                election_timeout_ms: Some(500),
                ..base.clone()
            },
            "election_timeout_ms",
        ),
        (
            BrokerSettings {
                segment_size: Some("1000".into()),
                ..base.clone()
            },
            "segment_size",
        ),
        (
            BrokerSettings {
                retention_bytes: Some("lots".into()),
                ..base.clone()
            },
            "retention_bytes",
        ),
        (
            BrokerSettings {
                nameservers: Some(vec!["127.0.0.1:9876,ns2".into()]),
                ..base.clone()
            },
            "nameservers",
        ),
        (
            BrokerSettings {
                join: Some(true),
                ..base.clone()
            },
            "join",
        ),
    ];
    for (s, key) in cases {
        match s.into_node_config() {
            Err(e) => assert!(e.to_string().contains(&format!("`{key}`")), "{key}: {e}"),
            Ok(_) => panic!("{key}: accepted"),
        }
    }
    // A joining node needs no peers and advertises its listen address.
    let joining = BrokerSettings {
        peers: None,
        join: Some(true),
        node_id: Some(4),
        ..base
    }
    .into_node_config()
    .expect("joining node");
    assert!(joining.peers.is_empty());
    assert_eq!(joining.advertise, "127.0.0.1:1");
}
