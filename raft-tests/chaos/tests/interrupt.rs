//! `raftmq-chaos` stopped with SIGINT mid-run leaves nothing behind: no node process, no
//! tmpfs mount, no network namespace or bridge, no data directory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The raftmq binary of the same build (cargo puts every workspace binary in one directory).
fn raftmq_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_raftmq-chaos")).with_file_name("raftmq");
    assert!(
        p.exists(),
        "{} missing: build it first (`cargo build --bin raftmq`; `cargo test --workspace` does)",
        p.display()
    );
    p
}

/// Everything on this machine that names the chaos run of process `pid`.
fn leftovers(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let tag = format!("raftmq-chaos-{pid}-");
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&tag) {
                out.push(format!("directory {}", e.path().display()));
            }
        }
    }
    if let Ok(m) = std::fs::read_to_string("/proc/mounts") {
        out.extend(
            m.lines()
                .filter(|l| l.contains(&tag))
                .map(|l| format!("mount {l}")),
        );
    }
    let prefix = format!("rmq{pid}");
    for args in [&["netns", "list"][..], &["-o", "link", "show"][..]] {
        if let Ok(o) = Command::new("ip").args(args).output() {
            out.extend(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains(&prefix))
                    .map(|l| format!("ip {l}")),
            );
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
                && String::from_utf8_lossy(&cmd).contains(&tag)
            {
                out.push(format!("process {}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

#[test]
fn sigint_mid_run_cleans_up_everything() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftmq-chaos"))
        .args(["--duration", "10m", "--seed", "3", "--faults", "all"])
        .arg("--raftmq-bin")
        .arg(raftmq_bin())
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start raftmq-chaos");
    let pid = child.id();
    // Stderr on a thread: wait (bounded) for the first finished fault, i.e. the cluster runs
    // (with its namespaces and mounts, when the machine allows them) and the nemesis is busy.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("fault #1 ") && l.ends_with("done") => break,
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no fault finished within 180 s; stderr: {seen:#?}");
            }
        }
    }
    assert!(
        !leftovers(pid).is_empty(),
        "the run's own resources are visible while it runs"
    );
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("raftmq-chaos did not exit within 90 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let left = leftovers(pid);
    assert!(left.is_empty(), "left behind after SIGINT: {left:#?}");
    assert_eq!(
        status.code(),
        Some(2),
        "an interrupted run is an error exit"
    );
}
