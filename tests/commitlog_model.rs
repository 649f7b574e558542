//! Property test: random sequences of append / truncate_after / purge / reopen against an
//! in-memory model of the log; the CommitLog and the model must always agree.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use proptest::prelude::*;
use raftmq::storage::FlushMode;
use raftmq::storage::commitlog::{CommitLog, CommitLogConfig, NewRecord};
use raftmq::storage::record::{RecordId, RecordKind};

#[derive(Debug, Clone)]
enum Op {
    /// Append a batch with these payload sizes.
    Append(Vec<usize>),
    /// Truncate after `first - 1 + k` (clamped into the log).
    Truncate(u64),
    /// Purge up to `first - 1 + k` (may go past the end).
    Purge(u64),
    /// Drop the log (abruptly or cleanly) and reopen it.
    Reopen { clean: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(0usize..900, 1..12).prop_map(Op::Append),
        2 => (0u64..20).prop_map(Op::Truncate),
        1 => (0u64..25).prop_map(Op::Purge),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

struct Model {
    first: u64,
    entries: VecDeque<(u64, Vec<u8>)>, // (term, payload) from index `first`
    purged: Option<u64>,
    term: u64,
}

impl Model {
    fn next(&self) -> u64 {
        self.first + self.entries.len() as u64
    }
}

fn cfg(dir: &Path, flush: FlushMode) -> CommitLogConfig {
    let mut c = CommitLogConfig::new(dir);
    c.segment_size = 4096;
    c.index_slots_per_file = 8;
    c.flush = flush;
    c
}

fn check(log: &CommitLog, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.first_index().unwrap(), m.first);
    prop_assert_eq!(log.next_index().unwrap(), m.next());
    let got = log.read_range(m.first, m.next(), None).unwrap();
    prop_assert_eq!(got.len(), m.entries.len());
    for (k, r) in got.iter().enumerate() {
        let (term, p) = &m.entries[k];
        prop_assert_eq!(r.id.index, m.first + k as u64);
        prop_assert_eq!(r.id.term, *term);
        prop_assert_eq!(&r.payload[..], &p[..]);
    }
    Ok(())
}

fn run(ops: Vec<Op>, flush: FlushMode) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path(), flush);
    let (mut log, _) = CommitLog::open(c.clone(), None).unwrap();
    let mut m = Model {
        first: 0,
        entries: VecDeque::new(),
        purged: None,
        term: 1,
    };
    let mut seq = 0u8;
    for op in ops {
        match op {
            Op::Append(sizes) => {
                let start = m.next();
                let payloads: Vec<Vec<u8>> = sizes
                    .iter()
                    .map(|s| {
                        seq = seq.wrapping_add(1);
                        vec![seq; *s]
                    })
                    .collect();
                let recs: Vec<NewRecord> = payloads
                    .iter()
                    .enumerate()
                    .map(|(k, p)| NewRecord {
                        id: RecordId {
                            term: m.term,
                            node: 7,
                            index: start + k as u64,
                        },
                        kind: RecordKind::MESSAGE_BATCH,
                        payload: p,
                    })
                    .collect();
                let (tx, rx) = mpsc::channel();
                log.append(&recs, Some(Box::new(move |r| tx.send(r).unwrap_or(()))))
                    .unwrap();
                rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
                for p in payloads {
                    m.entries.push_back((m.term, p));
                }
            }
            Op::Truncate(k) => {
                // A new leader's entries after a conflict carry a higher term.
                let keep = (m.first + k).saturating_sub(1);
                let last_kept = if m.first + k == 0 { None } else { Some(keep) };
                log.truncate_after(last_kept).unwrap();
                let new_next = last_kept.map_or(0, |x| x + 1).max(m.first);
                while m.next() > new_next {
                    m.entries.pop_back();
                }
                m.term += 1;
            }
            Op::Purge(k) => {
                let upto = (m.first + k).saturating_sub(1);
                if m.first + k == 0 || upto < m.first {
                    continue;
                }
                log.purge_upto(upto).unwrap();
                m.purged = Some(upto);
                while m.first <= upto {
                    if m.entries.pop_front().is_none() {
                        m.first = upto + 1;
                        break;
                    }
                    m.first += 1;
                }
            }
            Op::Reopen { clean } => {
                if clean {
                    drop(log);
                } else {
                    log.flush().unwrap();
                    std::mem::forget(log);
                }
                log = CommitLog::open(c.clone(), m.purged).unwrap().0;
            }
        }
        check(&log, &m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn commitlog_agrees_with_model_sync(ops in prop::collection::vec(op(), 1..60)) {
        run(ops, FlushMode::Sync)?;
    }

    #[test]
    fn commitlog_agrees_with_model_async(ops in prop::collection::vec(op(), 1..40)) {
        run(ops, FlushMode::Async)?;
    }
}
