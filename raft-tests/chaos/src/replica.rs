//! Offline replica checks on stopped nodes: byte-identical CommitLog records for every
//! committed index held by more than one replica, no holes, and ConsumeQueues equal to a
//! recomputation from the node's own CommitLog (the same apply code the node runs).

#![allow(clippy::type_complexity)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use raftmq::raft::log_store::{LogStore, record_to_entry};
use raftmq::raft::state_machine::StateMachine;
use raftmq::storage::CommitLogConfig;
use raftmq::storage::commitlog::{CommitLog, inspect};
use raftmq::storage::consumequeue::ConsumeQueueStore;
use raftmq::storage::dispatch::DispatchConfig;
use serde::Serialize;

/// index → (term, leader, position, record bytes).
pub type Records = BTreeMap<u64, (u64, u64, u64, Vec<u8>)>;
/// (topic, queue) → commitlog position → (queue offset, size, tag hash).
pub type Queues = BTreeMap<(String, u32), BTreeMap<u64, (u64, u32, u64)>>;

/// What the replica checks found for one group.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaReport {
    /// Broker group.
    pub group: String,
    /// Committed index compared up to.
    pub committed: u64,
    /// Indices compared across at least two replicas.
    pub indices_compared: usize,
    /// Queue units compared against a recomputation.
    pub units_compared: usize,
    /// Problems (empty when everything agrees).
    pub problems: Vec<String>,
}

/// A node's CommitLog records (and any damage `inspect` found).
pub fn records(dir: &Path) -> anyhow::Result<(Records, Vec<String>)> {
    let insp = inspect(dir).with_context(|| format!("inspect {}", dir.display()))?;
    let seg = insp.segment_size;
    let mut out = BTreeMap::new();
    for e in insp.entries {
        let base = e.pos - e.pos % seg;
        let file = dir.join("commitlog").join(format!("{base:020}"));
        let bytes = std::fs::read(&file)?;
        let off = (e.pos - base) as usize;
        let len = 48 + e.payload_len as usize;
        let rec = bytes
            .get(off..off + len)
            .context("record beyond segment end")?
            .to_vec();
        out.insert(e.id.index, (e.id.term, e.id.node, e.pos, rec));
    }
    Ok((out, insp.problems))
}

/// A node's ConsumeQueues.
pub fn queues(dir: &Path) -> anyhow::Result<Queues> {
    let cq = ConsumeQueueStore::open(
        dir.join("consumequeue"),
        DispatchConfig::default().cq_units_per_file,
    )?;
    let mut out = BTreeMap::new();
    for (t, q) in cq.queues() {
        let min = cq.min_offset(&t, q).unwrap_or(0);
        let max = cq.max_offset(&t, q).unwrap_or(0);
        let mut units = BTreeMap::new();
        let mut from = min;
        while from < max {
            let r = cq.range(&t, q, from, 10_000);
            if r.is_empty() {
                break;
            }
            for (i, u) in r.iter().enumerate() {
                units.insert(u.pos, (from + i as u64, u.size, u.tag_hash));
            }
            from += r.len() as u64;
        }
        out.insert((t, q), units);
    }
    Ok(out)
}

fn copy_dir(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst)?;
    if !src.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to)?;
        } else {
            std::fs::copy(e.path(), to)?;
        }
    }
    Ok(())
}

/// Recompute a node's ConsumeQueues by applying its own CommitLog to a fresh state machine
/// in a scratch copy.
pub async fn recomputed_queues(dir: &Path, segment_size: u64) -> anyhow::Result<Queues> {
    let scratch = tempfile::tempdir()?;
    for d in ["commitlog", "index", "raft"] {
        copy_dir(&dir.join(d), &scratch.path().join(d))?;
    }
    let mut cfg = CommitLogConfig::new(scratch.path());
    cfg.segment_size = segment_size;
    let store = LogStore::open(cfg)?;
    let log: Arc<CommitLog> = store.commitlog();
    let (mut sm, h) = StateMachine::open(scratch.path(), Arc::clone(&log))?;
    let first = log.first_index()?;
    let next = log.next_index()?;
    let mut entries = Vec::new();
    for r in log.read_range(first, next, None)? {
        entries.push(record_to_entry(r)?);
    }
    let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None)))).boxed();
    openraft::storage::RaftStateMachine::apply(&mut sm, stream).await?;
    h.checkpoint_now();
    drop(sm);
    drop(h);
    drop(store);
    queues(scratch.path())
}

/// Check one group's stopped replicas.
pub async fn check_group(
    group: &str,
    dirs: &[(u64, &Path)],
    committed: u64,
    segment_size: u64,
) -> ReplicaReport {
    let mut rep = ReplicaReport {
        group: group.to_string(),
        committed,
        ..Default::default()
    };
    let mut logs = Vec::new();
    for (id, dir) in dirs {
        match records(dir) {
            Ok((r, problems)) => {
                for p in problems {
                    rep.problems.push(format!("{group}-{id}: {p}"));
                }
                logs.push((*id, r));
            }
            Err(e) => rep.problems.push(format!("{group}-{id}: {e:#}")),
        }
    }
    // No holes up to the committed index, and every node holds it.
    for (id, r) in &logs {
        let (Some(first), Some(last)) = (r.keys().next(), r.keys().next_back()) else {
            rep.problems.push(format!("{group}-{id}: empty log"));
            continue;
        };
        if *last < committed {
            rep.problems.push(format!(
                "{group}-{id}: last index {last} < committed {committed}"
            ));
        }
        let expect = last - first + 1;
        if r.len() as u64 != expect {
            rep.problems.push(format!(
                "{group}-{id}: {} records between {first} and {last}",
                r.len()
            ));
        }
    }
    // Byte-identical records at every committed index held by several replicas.
    let mut all: BTreeMap<u64, Vec<(u64, &(u64, u64, u64, Vec<u8>))>> = BTreeMap::new();
    for (id, r) in &logs {
        for (i, rec) in r.range(..=committed) {
            all.entry(*i).or_default().push((*id, rec));
        }
    }
    for (i, v) in &all {
        if v.len() < 2 {
            continue;
        }
        rep.indices_compared += 1;
        if v.iter().any(|(_, r)| *r != v[0].1) {
            let desc: Vec<String> = v
                .iter()
                .map(|(id, r)| format!("node {id}: term {} pos {} len {}", r.0, r.2, r.3.len()))
                .collect();
            if rep.problems.len() < 50 {
                rep.problems
                    .push(format!("{group}: index {i} differs: {}", desc.join("; ")));
            }
        }
    }
    // ConsumeQueues equal a recomputation (over the retained part of the log).
    for (id, dir) in dirs {
        let first_pos = logs
            .iter()
            .find(|(i, _)| i == id)
            .and_then(|(_, r)| r.values().next().map(|x| x.2))
            .unwrap_or(0);
        let have = match queues(dir) {
            Ok(q) => q,
            Err(e) => {
                rep.problems.push(format!("{group}-{id}: queues: {e:#}"));
                continue;
            }
        };
        let want = match recomputed_queues(dir, segment_size).await {
            Ok(q) => q,
            Err(e) => {
                rep.problems.push(format!("{group}-{id}: recompute: {e:#}"));
                continue;
            }
        };
        let keys: std::collections::BTreeSet<&(String, u32)> =
            have.keys().chain(want.keys()).collect();
        for k in keys {
            let h: BTreeMap<u64, (u64, u32, u64)> = have
                .get(k)
                .map(|m| m.range(first_pos..).map(|(p, u)| (*p, *u)).collect())
                .unwrap_or_default();
            let w: BTreeMap<u64, (u64, u32, u64)> = want
                .get(k)
                .map(|m| m.range(first_pos..).map(|(p, u)| (*p, *u)).collect())
                .unwrap_or_default();
            rep.units_compared += h.len();
            // A fresh state machine numbers a purged log's queues from 0: compare the units
            // and require the offsets to differ by one constant per queue.
            let shift: Option<i128> = h
                .iter()
                .next()
                .and_then(|(p, u)| w.get(p).map(|v| u.0 as i128 - v.0 as i128));
            let same = h.len() == w.len()
                && h.iter().all(|(p, u)| {
                    w.get(p).is_some_and(|v| {
                        (u.1, u.2) == (v.1, v.2) && Some(u.0 as i128 - v.0 as i128) == shift
                    })
                });
            if !same {
                let diff = h
                    .iter()
                    .find(|(p, u)| w.get(p) != Some(u))
                    .map(|(p, u)| format!("pos {p}: node {u:?} vs recomputed {:?}", w.get(p)))
                    .or_else(|| {
                        w.iter()
                            .find(|(p, _)| !h.contains_key(p))
                            .map(|(p, u)| format!("pos {p}: missing on node, recomputed {u:?}"))
                    })
                    .unwrap_or_default();
                rep.problems.push(format!(
                    "{group}-{id}: consumequeue {k:?} ({} units) != recomputation ({} units): {diff}",
                    h.len(),
                    w.len()
                ));
            }
        }
    }
    rep
}
