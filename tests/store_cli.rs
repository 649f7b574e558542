//! `raftmq store verify|dump` against a real data directory.

use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use raftmq::storage::commitlog::{CommitLog, CommitLogConfig, NewRecord};
use raftmq::storage::record::{RecordId, RecordKind};

fn make_store(dir: &std::path::Path, n: u64) -> Vec<(u64, u64)> {
    let mut c = CommitLogConfig::new(dir);
    c.segment_size = 8192;
    c.index_slots_per_file = 32;
    let (log, _) = CommitLog::open(c, None).unwrap();
    for i in 0..n {
        let p = vec![i as u8; 100 + i as usize];
        let kind = if i == 0 {
            RecordKind::BLANK
        } else {
            RecordKind::MESSAGE_BATCH
        };
        let (tx, rx) = mpsc::channel();
        let rec = NewRecord {
            id: RecordId {
                term: 2,
                node: 3,
                index: i,
            },
            kind,
            payload: &p,
        };
        log.append(&[rec], Some(Box::new(move |r| tx.send(r).unwrap_or(()))))
            .unwrap();
        rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    }
    (0..n).map(|i| (i, log.read(i).unwrap().pos)).collect()
}

fn raftmq(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn verify_reports_summary_and_damage() {
    let t = tempfile::tempdir().unwrap();
    let positions = make_store(t.path(), 200);
    let dir = t.path().to_str().unwrap();

    let (code, out) = raftmq(&["store", "verify", dir, "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["records"], 200);
    assert_eq!(v["first_index"], 0);
    assert_eq!(v["last_index"], 199);
    assert_eq!(v["kinds"]["blank"], 1);
    assert_eq!(v["kinds"]["messages"], 199);
    let expected_payload: u64 = (0..200u64).map(|i| 100 + i).sum();
    assert_eq!(v["payload_bytes"], expected_payload);

    let (code, out) = raftmq(&[
        "store", "dump", dir, "--from", "10", "--limit", "3", "--json",
    ]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (k, l) in lines.iter().enumerate() {
        let i = 10 + k as u64;
        assert_eq!(l["index"], i);
        assert_eq!(l["term"], 2);
        assert_eq!(l["node"], 3);
        assert_eq!(l["position"], positions[i as usize].1);
        assert_eq!(l["payload_len"], 100 + i);
    }

    // Damage a record in the middle: verify must fail and name the offset.
    let (_, pos) = positions[50];
    let seg = pos - pos % 8192;
    let path = t.path().join("commitlog").join(format!("{seg:020}"));
    let mut b = std::fs::read(&path).unwrap();
    b[(pos - seg) as usize + 60] ^= 0x10;
    std::fs::write(&path, b).unwrap();
    let (code, out) = raftmq(&["store", "verify", dir]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("DAMAGED"), "{out}");
    assert!(out.contains(&format!("offset {}", pos - seg)), "{out}");
}

#[test]
fn verify_refuses_a_directory_without_a_commitlog() {
    let t = tempfile::tempdir().unwrap();
    let (code, _) = raftmq(&["store", "verify", t.path().to_str().unwrap()]);
    assert_eq!(code, 1);
}
