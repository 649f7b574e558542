//! The chaos suite, short version for CI: a 3-node group under at least 10 leader kills and
//! one of every other fault kind (pauses, partitions, torn tail, disk full, retention lag)
//! for about 75 s, driven by both workloads (raftmq::client and the official Python client,
//! from the venv `.ci/run` installs: a missing venv fails the test), with a checked history:
//! no safety violation and no liveness failure. The checker's own tests run here too. The
//! long version is the `raftmq-chaos` binary (raft-tests/chaos, see raft-tests/README.md).

#[allow(dead_code)]
#[path = "chaos/src/lib.rs"]
mod chaos;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chaos::{checker, nemesis, pyclient, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chaos_run_loses_nothing() {
    let out = tempfile::tempdir().expect("tempdir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("RAFTMQ_CHAOS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/pyenv/bin/python"));
    let cfg = run::RunConfig {
        bin: env!("CARGO_BIN_EXE_raftmq").into(),
        duration: Duration::from_secs(60),
        seed: std::env::var("RAFTMQ_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
        faults: nemesis::ALL.to_vec(),
        leader_kills: 10,
        groups: 1,
        out_dir: out.path().to_path_buf(),
        keep: false,
        clients: run::Clients::Both,
        python: Some(pyclient::PyConfig {
            python,
            script: root.join("raft-tests/chaos/python/workload.py"),
        }),
        drain: Duration::from_secs(90),
        check: checker::CheckConfig::default(),
    };
    // Fails (does not skip) without the Python venv: CI always installs it.
    let report = run::run(cfg).await.expect("chaos run");
    println!("{}", run::summary(&report));
    let a = &report.analysis;
    assert!(a.acked > 100, "the workload made progress: {}", a.acked);
    assert!(
        a.delivered > 100,
        "consumers made progress: {}",
        a.delivered
    );
    assert!(
        a.faults.get("kill-leader").copied().unwrap_or(0) >= 10,
        "leader kills: {:?}",
        a.faults
    );
    if report.netns {
        for k in nemesis::ALL {
            assert!(
                a.faults.get(k.name()).copied().unwrap_or(0) >= 1,
                "{} never injected: {:?} (skipped: {:?})",
                k.name(),
                a.faults,
                report.nemesis.skipped
            );
        }
    }
    assert_eq!(a.lost_count, 0, "lost: {:?}", a.lost);
    assert_eq!(
        a.order_violation_count, 0,
        "order: {:?}",
        a.order_violations
    );
    assert_eq!(
        a.inconsistent_offset_count, 0,
        "offsets: {:?}",
        a.inconsistent_offsets
    );
    for r in &report.replicas {
        assert!(r.problems.is_empty(), "replicas: {:?}", r.problems);
        assert!(r.indices_compared > 0);
    }
    assert_eq!(report.safety_violations, 0);

    // The official client ran: both producers had sends acknowledged, nothing crashed.
    let py = a
        .clients
        .get("python")
        .expect("python sends in the history");
    assert!(
        py.send_calls > py.failed_sends + 50,
        "python producers made progress: {py:?}"
    );
    for p in &report.python {
        assert!(!p.exited_early, "python {} exited early: {p:?}", p.name);
    }
    // Liveness: every consumer group (Rust and Python) kept making progress and got every
    // acknowledged message of its topic by the end of the drain.
    assert_eq!(
        report.liveness_failures, 0,
        "liveness: {:#?}\nprogress: {:#?}",
        a.liveness_failures, a.liveness
    );
}
