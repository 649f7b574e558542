//! `raftmq broker` configuration: a TOML file, env and flags; bad settings fail at start with a
//! message naming the key.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn broker(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftmq"));
    cmd.arg("broker").args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Settings that fail validation make the process exit at once; bound it anyway.
    let mut child = cmd
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
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args([
            "--log-format",
            "json",
            "broker",
            "--config",
            f.to_str().expect("utf-8"),
            "--flush",
            "sync",
        ])
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
