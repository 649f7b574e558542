//! Crash tests for the CommitLog: torn tails at every byte boundary, bit flips in the last and
//! in earlier records, reopen after a clean close, after an abrupt drop, and after `kill -9` of
//! a writer process.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use raftmq::storage::commitlog::{CommitLog, CommitLogConfig, NewRecord};
use raftmq::storage::record::{HEADER_LEN, RecordId, RecordKind};
use raftmq::storage::{FlushMode, StoreError};

const SEG: u64 = 8192;

fn cfg(dir: &Path) -> CommitLogConfig {
    let mut c = CommitLogConfig::new(dir);
    c.segment_size = SEG;
    c.index_slots_per_file = 16;
    c
}

fn payload(i: u64) -> Vec<u8> {
    // Varied sizes so records land at irregular offsets and segments roll with padding.
    let len = 20 + (i * 37 % 300) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// Append `n` records one batch at a time and wait until each is durable.
fn fill(log: &CommitLog, from: u64, n: u64) {
    for i in from..from + n {
        let p = payload(i);
        let (tx, rx) = mpsc::channel();
        let rec = NewRecord {
            id: RecordId {
                term: 1 + i / 10,
                node: 1,
                index: i,
            },
            kind: RecordKind::MESSAGE_BATCH,
            payload: &p,
        };
        log.append(&[rec], Some(Box::new(move |r| tx.send(r).unwrap_or(()))))
            .unwrap();
        rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    }
}

fn check_all(log: &CommitLog, first: u64, next: u64) {
    assert_eq!(log.first_index().unwrap(), first);
    assert_eq!(log.next_index().unwrap(), next);
    for i in first..next {
        let r = log.read(i).unwrap();
        assert_eq!(r.id.index, i);
        assert_eq!(r.id.term, 1 + i / 10);
        assert_eq!(&r.payload[..], &payload(i)[..], "payload of {i}");
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// (segment path, offset inside it, total length) of record `i`.
fn locate(log: &CommitLog, i: u64) -> (PathBuf, u64, u64) {
    let r = log.read(i).unwrap();
    let base = r.pos - r.pos % SEG;
    let path = log
        .segment_files()
        .unwrap()
        .into_iter()
        .find(|(b, _)| *b == base)
        .unwrap()
        .1;
    (path, r.pos - base, (HEADER_LEN + r.payload.len()) as u64)
}

fn modify(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    std::fs::write(path, b).unwrap();
}

struct Written {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    n: u64,
    last: (PathBuf, u64, u64),
    earlier: Vec<(u64, PathBuf, u64, u64)>,
}

fn written(n: u64) -> Written {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("orig");
    let (log, _) = CommitLog::open(cfg(&dir), None).unwrap();
    fill(&log, 0, n);
    let last = locate(&log, n - 1);
    let earlier = (0..n - 1)
        .map(|i| {
            let (p, o, l) = locate(&log, i);
            (i, p, o, l)
        })
        .collect();
    drop(log);
    Written {
        _tmp: tmp,
        dir,
        n,
        last,
        earlier,
    }
}

#[test]
fn torn_last_record_at_every_byte_boundary_is_cut() {
    let w = written(40);
    let (path, off, len) = w.last.clone();
    let rel = path.strip_prefix(&w.dir).unwrap().to_path_buf();
    for cut in off..off + len {
        // Torn write inside a preallocated file: bytes from `cut` never reached the disk.
        let t = tempfile::tempdir().unwrap();
        copy_dir(&w.dir, t.path());
        modify(&t.path().join(&rel), |b| b[cut as usize..].fill(0));
        let (log, rep) = CommitLog::open(cfg(t.path()), None).unwrap();
        check_all(&log, 0, w.n - 1);
        if cut > off {
            assert_eq!(
                rep.torn_tail_at.as_ref().map(|x| x.1),
                Some(off),
                "cut at {cut}"
            );
        }
        // The log keeps working after the cut: the lost entry can be written again.
        fill(&log, w.n - 1, 1);
        check_all(&log, 0, w.n);
        drop(log);

        // Same, with the file itself cut short (a copy or an operator truncated it).
        let t2 = tempfile::tempdir().unwrap();
        copy_dir(&w.dir, t2.path());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(t2.path().join(&rel))
            .unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let (log, rep) = CommitLog::open(cfg(t2.path()), None).unwrap();
        assert!(rep.extended_tail_segment.is_some());
        check_all(&log, 0, w.n - 1);
    }
}

#[test]
fn flipped_byte_in_last_record_is_cut_as_torn_tail() {
    let w = written(40);
    let (path, off, len) = w.last.clone();
    let rel = path.strip_prefix(&w.dir).unwrap().to_path_buf();
    for at in off..off + len {
        let t = tempfile::tempdir().unwrap();
        copy_dir(&w.dir, t.path());
        modify(&t.path().join(&rel), |b| b[at as usize] ^= 0x5a);
        let (log, rep) = CommitLog::open(cfg(t.path()), None).unwrap();
        check_all(&log, 0, w.n - 1);
        assert!(rep.torn_tail_at.is_some(), "flip at {at} not reported");
    }
}

#[test]
fn flipped_byte_in_earlier_record_refuses_to_open_naming_file_and_offset() {
    let w = written(40);
    // Records inside the recovery scan window (the last two segments) are checked at open.
    let last_base_path = &w.last.0;
    let mut checked = 0;
    for (i, path, off, len) in &w.earlier {
        let in_window = {
            let files = list_segments(&w.dir);
            let pos = files.iter().position(|p| p == path).unwrap();
            pos + 2 >= files.len()
        };
        if !in_window {
            continue;
        }
        for at in [*off, *off + 13, *off + len - 1] {
            let t = tempfile::tempdir().unwrap();
            copy_dir(&w.dir, t.path());
            let rel = path.strip_prefix(&w.dir).unwrap();
            modify(&t.path().join(rel), |b| b[at as usize] ^= 0x01);
            match CommitLog::open(cfg(t.path()), None) {
                Err(StoreError::Corrupt {
                    file,
                    offset,
                    reason,
                }) => {
                    assert_eq!(file, t.path().join(rel), "record {i}");
                    assert_eq!(offset, *off, "record {i}: {reason}");
                }
                Err(e) => panic!("record {i}: unexpected error {e}"),
                Ok(_) => panic!(
                    "record {i}: flip at {at} was not detected (last segment {last_base_path:?})"
                ),
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} cases ran");
}

fn list_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn damage_outside_the_scan_window_is_caught_on_read_and_by_inspect() {
    let w = written(120);
    let files = list_segments(&w.dir);
    assert!(
        files.len() >= 4,
        "need several segments, got {}",
        files.len()
    );
    // The oldest record of the log is checked at open: damage there refuses to open.
    let (_, p0, off0, _) = w.earlier[0].clone();
    let t = tempfile::tempdir().unwrap();
    copy_dir(&w.dir, t.path());
    let rel0 = p0.strip_prefix(&w.dir).unwrap();
    modify(&t.path().join(rel0), |b| b[off0 as usize + 20] ^= 0xff);
    match CommitLog::open(cfg(t.path()), None) {
        Err(StoreError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, t.path().join(rel0));
            assert_eq!(offset, off0);
        }
        other => panic!("expected corruption error, got {other:?}"),
    }
    // Any other record outside the scan window is caught when read, and by `inspect`.
    let (i, path, off, _) = w
        .earlier
        .iter()
        .find(|(_, p, _, _)| *p == files[0])
        .unwrap()
        .clone();
    let (i, path, off) = w
        .earlier
        .iter()
        .filter(|(_, p, _, _)| *p == path)
        .nth(2)
        .map(|(i, p, o, _)| (*i, p.clone(), *o))
        .unwrap_or((i, path, off));
    modify(&path, |b| b[off as usize + 50] ^= 0xff);
    let insp = raftmq::storage::commitlog::inspect(&w.dir).unwrap();
    assert!(
        insp.problems
            .iter()
            .any(|p| p.contains(&format!("offset {off}"))),
        "{:?}",
        insp.problems
    );
    let (log, _) = CommitLog::open(cfg(&w.dir), None).unwrap();
    match log.read(i) {
        Err(StoreError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, path);
            assert_eq!(offset, off);
        }
        other => panic!("expected corruption error, got {other:?}"),
    }
}

#[test]
fn reopen_after_clean_close_and_abrupt_drop_returns_everything_flushed() {
    for mode in [FlushMode::Sync, FlushMode::Async] {
        let t = tempfile::tempdir().unwrap();
        let mut c = cfg(t.path());
        c.flush = mode;
        let (log, _) = CommitLog::open(c.clone(), None).unwrap();
        fill(&log, 0, 50);
        drop(log);
        let (log, rep) = CommitLog::open(c.clone(), None).unwrap();
        assert_eq!(rep.torn_tail_at, None);
        check_all(&log, 0, 50);
        fill(&log, 50, 50);
        log.flush().unwrap();
        // Abrupt: no Drop, no final sync, flusher thread abandoned.
        std::mem::forget(log);
        let (log, _) = CommitLog::open(c, None).unwrap();
        check_all(&log, 0, 100);
    }
}

/// Child half of the kill -9 test: appends forever, printing each index once it is durable.
#[test]
fn child_writer_for_kill_test() {
    let Ok(dir) = std::env::var("RAFTMQ_KILL_TEST_DIR") else {
        return; // only does something when spawned by `kill_9_loses_nothing_durable`
    };
    let (log, _) = CommitLog::open(cfg(Path::new(&dir)), None).unwrap();
    let start = log.next_index().unwrap();
    let mut i = start;
    loop {
        fill(&log, i, 1);
        println!("durable {i}");
        i += 1;
        if i > start + 100_000 {
            return;
        }
    }
}

#[test]
fn kill_9_loses_nothing_durable() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let t = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked_total = 0u64;
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_writer_for_kill_test",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RAFTMQ_KILL_TEST_DIR", t.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut last = None;
        for line in std::io::BufReader::new(out).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("durable ") {
                let n: u64 = n.trim().parse().unwrap();
                last = Some(n);
                if n >= acked_total + 200 {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let last = last.unwrap_or_else(|| panic!("round {round}: child reported nothing"));
        let (log, _) = CommitLog::open(cfg(t.path()), None).unwrap();
        let next = log.next_index().unwrap();
        assert!(
            next > last,
            "round {round}: durable {last} lost, log ends at {next}"
        );
        check_all(&log, 0, next);
        acked_total = next;
    }
}
