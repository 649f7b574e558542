//! Runs the official-client integration tests (`tests/python/`) with pytest, in a virtualenv
//! under `target/pyenv` that this test creates when it is missing (`rocketmq-python-client`
//! 5.1.2 and pytest from PyPI), against the `raftmq` binary built for this test run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("pyenv");
    let py = dir.join("bin").join("python");
    let ready = py.exists()
        && Command::new(&py)
            .args(["-c", "import rocketmq, pytest, grpc_tools"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "python3 -m venv failed (python3 with venv is required)");
        let ok = Command::new(dir.join("bin").join("pip"))
            .args(["install", "-q", "rocketmq-python-client==5.1.2", "pytest"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pip install rocketmq-python-client failed");
    }
    py
}

#[test]
fn official_python_client() {
    let py = venv();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&py)
        .args([
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "tests/python",
        ])
        .current_dir(root)
        .env("RAFTMQ_BIN", env!("CARGO_BIN_EXE_raftmq"))
        .output()
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "official Python client tests failed");
}
