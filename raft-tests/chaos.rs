//! The chaos suite, short version for CI: a 3-node group under at least 10 leader kills and
//! one of every other fault kind (pauses, partitions, torn tail, disk full, retention lag)
//! for about 75 s, with a checked history. The checker's own tests run here too. The long
//! version is the `raftmq-chaos` binary (raft-tests/chaos, see raft-tests/README.md).

#[allow(dead_code)]
#[path = "chaos/src/lib.rs"]
mod chaos;

use std::time::Duration;

use chaos::{nemesis, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_chaos_run_loses_nothing() {
    let out = tempfile::tempdir().expect("tempdir");
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
    };
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
}
