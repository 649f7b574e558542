//! Regression test: CommitLog segments purged by openraft before `SmHandle::after_purge`
//! trimmed the ConsumeQueues.
//!
//! openraft purges the log by itself (after every snapshot it builds, after installing one,
//! or on a delayed `purge_log`), so ConsumeQueue units can point at deleted bytes for a
//! while. Reads used to start at the ConsumeQueue's min offset and failed with
//! `StoreError::NotFound` ("index N is not in the log"); they must start at the first offset
//! whose message is still held. Found by the chaos suite.
//!
//! A single-node Raft group with the real `LogStore` and `StateMachine`, in process: fill
//! several 64 KiB segments, build the retention snapshot, purge, and read before and after
//! `after_purge`.
//!
//! Second regression test, same setup: a node killed right after a retention pass must come
//! back. openraft re-installs a node's own latest snapshot at startup when the state machine's
//! checkpoint (written at most every `CHECKPOINT_INTERVAL`) is older than it; the CommitLog then
//! starts at boundary + 1, and `install_snapshot` used to take that for a log that does not
//! hold the boundary and reset it, dropping every entry after the boundary (committed ones
//! too): the restart failed with "Failed to get log entries". The node must instead restart
//! with its log intact, lead again, re-apply everything and serve every retained message.

mod single_node;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use openraft::{Raft, ServerState};
use raftmq::raft::consume::Pop;
use raftmq::raft::log_store::RaftMeta;
use raftmq::raft::state_machine::{
    AppliedState, INTERNAL_JSON_KIND, InternalCommand, Perm, SmHandle, StateMachine, TopicConfig,
    TopicMessageType, decode_batch_result,
};
use raftmq::raft::{Command, TypeConfig};
use raftmq::storage::CommitLog;
use raftmq::storage::message::{MessageType, NewMessage, encode_batch};
use single_node::{Node, WAIT, lead};

const TOPIC: &str = "purged";
const QUEUES: u32 = 2;
const SEGMENT: u64 = 64 << 10;
const MESSAGES: usize = 480; // ~1 KiB each: about 8 segments
/// Messages written after the purge, before the restart (entries past the boundary).
const AFTER_PURGE: usize = 60;
const PER_ENTRY: usize = 4;
const GROUP: &str = "observer";

/// queue → offset → index of the message written there.
type Written = BTreeMap<u32, BTreeMap<u64, usize>>;

/// Two of every three messages go to queue 0, so the queues lose different offsets.
fn queue_of(i: usize) -> u32 {
    u32::from(i % 3 == 2)
}

fn id_of(i: usize) -> String {
    format!("msg-{i:05}")
}

fn body_of(i: usize) -> Bytes {
    let mut b = vec![(i % 251) as u8; 1024];
    b[..8].copy_from_slice(&(i as u64).to_be_bytes());
    Bytes::from(b)
}

async fn open_node(dir: &Path) -> Result<Node> {
    single_node::open_node(dir, SEGMENT, "purged-segments").await
}

async fn internal(raft: &Raft<TypeConfig, StateMachine>, cmd: InternalCommand) -> Result<()> {
    raft.client_write(Command {
        kind: INTERNAL_JSON_KIND,
        data: Bytes::from(serde_json::to_vec(&cmd)?),
    })
    .await
    .map_err(|e| anyhow!("internal command: {e}"))?;
    Ok(())
}

/// A topic with two queues. An observer group at offset 0 on every queue makes the
/// ConsumeQueue's own min visible (consumer lag).
async fn create_topic(raft: &Raft<TypeConfig, StateMachine>) -> Result<()> {
    internal(
        raft,
        InternalCommand::UpsertTopic {
            topic: TopicConfig {
                name: TOPIC.into(),
                queues: QUEUES,
                perm: Perm::ReadWrite,
                message_type: TopicMessageType::Normal,
            },
        },
    )
    .await?;
    for queue in 0..QUEUES {
        internal(
            raft,
            InternalCommand::Pop(Pop {
                group: GROUP.into(),
                topic: TOPIC.into(),
                queue,
                deliver: Vec::new(),
                skip_to: 0,
                invisible_until_ms: 0,
                seq: 0,
            }),
        )
        .await?;
    }
    Ok(())
}

/// Write messages `range`, `PER_ENTRY` to a log entry, recording where each one went in
/// `written`. Returns the log index of the last entry written.
async fn write_messages(
    raft: &Raft<TypeConfig, StateMachine>,
    range: Range<usize>,
    written: &mut Written,
) -> Result<u64> {
    let mut last = None;
    for chunk in range.collect::<Vec<_>>().chunks(PER_ENTRY) {
        let batch: Vec<NewMessage> = chunk
            .iter()
            .map(|&i| NewMessage {
                msg_type: MessageType::Normal,
                queue_id: queue_of(i),
                born_timestamp_ms: 1,
                store_timestamp_ms: 1,
                delivery_timestamp_ms: 0,
                topic: TOPIC.into(),
                message_id: id_of(i),
                tag: String::new(),
                message_group: String::new(),
                keys: Vec::new(),
                properties: Vec::new(),
                born_host: String::new(),
                body: body_of(i),
            })
            .collect();
        let r = raft
            .client_write(Command::messages(Bytes::from(encode_batch(&batch)?)))
            .await
            .map_err(|e| anyhow!("write: {e}"))?;
        let places = decode_batch_result(&r.data.data).map_err(|e| anyhow!("places: {e}"))?;
        ensure!(places.len() == chunk.len(), "one place per message");
        for (&i, p) in chunk.iter().zip(places) {
            ensure!(p.topic == TOPIC && p.queue == queue_of(i));
            ensure!(
                written
                    .entry(p.queue)
                    .or_default()
                    .insert(p.offset, i)
                    .is_none(),
                "offset {} of queue {} assigned twice",
                p.offset,
                p.queue
            );
        }
        last = Some(r.log_id.index);
    }
    last.context("no message to write")
}

/// Where each unit points (queue → (offset, position)), read while everything is still held.
fn unit_positions(sm: &SmHandle, written: &Written) -> Result<BTreeMap<u32, Vec<(u64, u64)>>> {
    let mut positions = BTreeMap::new();
    for queue in 0..QUEUES {
        let (msgs, min, max) = sm.read_queue(TOPIC, queue, 0, MESSAGES)?;
        let offsets = &written[&queue];
        ensure!(
            min == 0 && max == offsets.len() as u64,
            "queue {queue}: {min}..{max}"
        );
        ensure!(msgs.len() == offsets.len());
        positions.insert(queue, msgs.iter().map(|(o, pos, _)| (*o, *pos)).collect());
    }
    Ok(positions)
}

/// Retention's snapshot and purge, as `Node::run_retention` does (without `after_purge`).
/// Returns the index of the snapshot openraft built.
async fn snapshot_and_purge(raft: &Raft<TypeConfig, StateMachine>, boundary: u64) -> Result<u64> {
    raft.trigger()
        .snapshot()
        .await
        .map_err(|e| anyhow!("trigger snapshot: {e}"))?;
    let m = raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= boundary),
            "snapshot at the boundary",
        )
        .await?;
    let snapshot = m.snapshot.map(|s| s.index).context("no snapshot")?;
    raft.trigger()
        .purge_log(boundary)
        .await
        .map_err(|e| anyhow!("trigger purge: {e}"))?;
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= boundary),
            "log purged to the boundary",
        )
        .await?;
    Ok(snapshot)
}

/// The first offset of `queue` whose message is still held (position at or past `first`).
fn readable_min(positions: &BTreeMap<u32, Vec<(u64, u64)>>, queue: u32, first: u64) -> Result<u64> {
    positions[&queue]
        .iter()
        .find(|(_, pos)| *pos >= first)
        .map(|(o, _)| *o)
        .context("every message of the queue was purged")
}

/// `read_queue` from offset 0 returns exactly offsets `expect_min..` (every message written to
/// the queue from there on), each the message written at that offset.
fn check_queue(sm: &SmHandle, written: &Written, queue: u32, expect_min: u64) -> Result<()> {
    let offsets = &written[&queue];
    let max = offsets.len() as u64;
    let (msgs, min, max_off) = sm
        .read_queue(TOPIC, queue, 0, offsets.len())
        .with_context(|| format!("read_queue({TOPIC}, {queue}, 0)"))?;
    ensure!(
        min == expect_min && max_off == max,
        "queue {queue}: read_queue reports {min}..{max_off}, expected {expect_min}..{max}"
    );
    let got: Vec<u64> = msgs.iter().map(|(o, _, _)| *o).collect();
    let want: Vec<u64> = (expect_min..max).collect();
    ensure!(
        got == want,
        "queue {queue}: offsets {got:?}, expected {want:?}"
    );
    for (offset, _, m) in &msgs {
        let i = offsets[offset];
        ensure!(
            m.message_id.as_str() == id_of(i) && m.body == body_of(i) && m.queue_id == queue,
            "queue {queue} offset {offset}: got {}, expected {}",
            m.message_id.as_str(),
            id_of(i)
        );
    }
    Ok(())
}

/// The ConsumeQueue's own min offset of `queue`, seen through the public consumer lag of a
/// group that is at offset 0 (lag = max - max(ack 0, min)).
fn cq_min(sm: &SmHandle, queue: u32) -> Result<u64> {
    let lag = sm
        .consumer_lag()
        .into_iter()
        .find(|l| l.group == GROUP && l.topic == TOPIC && l.queue == queue)
        .context("no lag entry for the observer group")?;
    let (_, _, max) = sm.units(TOPIC, queue, 0, 0);
    Ok(max - lag.lag)
}

fn first_position(log: &CommitLog) -> Result<u64> {
    Ok(log.first_position()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_skip_units_of_segments_purged_before_the_queues_were_trimmed() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let node = open_node(dir.path()).await?;
    let result = scenario(&node.raft, &node.sm, &node.log).await;
    node.raft
        .shutdown()
        .await
        .map_err(|e| anyhow!("shutdown: {e}"))?;
    result
}

async fn scenario(
    raft: &Raft<TypeConfig, StateMachine>,
    sm: &SmHandle,
    log: &CommitLog,
) -> Result<()> {
    // 1. A one-member group that leads.
    lead(raft).await?;

    // 2. A topic with two queues, and messages filling several segments.
    create_topic(raft).await?;
    let mut written = Written::new();
    write_messages(raft, 0..MESSAGES, &mut written).await?;
    let positions = unit_positions(sm, &written)?;
    let segments_before = log.segment_files()?;
    let first_before = first_position(log)?;
    ensure!(
        segments_before.len() >= 5,
        "expected several segments, got {}",
        segments_before.len()
    );

    // 3. Retention's snapshot and purge, as `Node::run_retention` does, but without
    //    `after_purge`.
    let boundary = sm
        .retention_boundary(None, Some(2 * SEGMENT))?
        .context("retention boundary: nothing due")?;
    snapshot_and_purge(raft, boundary).await?;
    let segments_after = log.segment_files()?;
    let first = first_position(log)?;
    ensure!(
        segments_after.len() < segments_before.len() && first > first_before,
        "no segment was deleted: {} -> {} segments, first position {first_before} -> {first}",
        segments_before.len(),
        segments_after.len()
    );
    println!(
        "boundary {boundary}: {} -> {} segments, first position {first_before} -> {first}",
        segments_before.len(),
        segments_after.len()
    );

    // The scenario of the bug: the ConsumeQueues still start at 0, below the deleted bytes.
    for queue in 0..QUEUES {
        ensure!(
            cq_min(sm, queue)? == 0,
            "queue {queue} was trimmed without after_purge: the scenario did not arise"
        );
    }

    // 4. Reads start at the first offset whose message is still held.
    let mut readable: BTreeMap<u32, u64> = BTreeMap::new();
    for queue in 0..QUEUES {
        let offsets = &written[&queue];
        let expect_min = readable_min(&positions, queue, first)?;
        ensure!(expect_min > 0, "queue {queue}: nothing of it was purged");
        let max = offsets.len() as u64;
        check_queue(sm, &written, queue, expect_min).context("after the purge")?;
        // Reading from an offset inside the purged range starts at the same place.
        let (from_mid, _, _) = sm.read_queue(TOPIC, queue, expect_min / 2, 1)?;
        ensure!(from_mid.first().map(|(o, _, _)| *o) == Some(expect_min));

        let (units, umin, umax) = sm.units(TOPIC, queue, 0, MESSAGES);
        ensure!(
            umin == expect_min && umax == max && units.len() as u64 == max - expect_min,
            "queue {queue}: units {umin}..{umax} ({} units), expected {expect_min}..{max}",
            units.len()
        );
        for (k, u) in units.iter().enumerate() {
            let offset = expect_min + k as u64;
            let m = sm
                .message_at(u.pos, u.size)
                .with_context(|| format!("message_at for queue {queue} offset {offset}"))?;
            ensure!(m.message_id.as_str() == id_of(offsets[&offset]));
        }
        println!("queue {queue}: readable {expect_min}..{max}");
        readable.insert(queue, expect_min);
    }

    // 5. after_purge trims the ConsumeQueues to exactly that offset; reads are unchanged.
    sm.after_purge()?;
    for queue in 0..QUEUES {
        let want = readable[&queue];
        let got = cq_min(sm, queue)?;
        if got != want {
            bail!("queue {queue}: ConsumeQueue min {got} after after_purge, readable min {want}");
        }
        let (msgs, min, _) = sm.read_queue(TOPIC, queue, 0, MESSAGES)?;
        ensure!(min == want && msgs.first().map(|(o, _, _)| *o) == Some(want));
    }
    Ok(())
}

/// What the node wrote and purged before it was killed.
struct BeforeRestart {
    written: Written,
    boundary: u64,
    snapshot: u64,
    /// queue → first offset still held after the purge.
    readable: BTreeMap<u32, u64>,
    /// Log index of the last entry written.
    last: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_retention_keeps_the_log_past_the_boundary() -> Result<()> {
    let dir = tempfile::TempDir::new()?;

    // Run 1: write, retention (snapshot + purge + after_purge), write more, then stop.
    let node = open_node(dir.path()).await?;
    let before = before_restart(&node).await;
    let shutdown = node.raft.shutdown().await;
    // Stop like a kill: no `SmHandle::checkpoint_now` (the clean-shutdown checkpoint).
    // Dropping the handles still runs `LogStore`'s and `CommitLog`'s `Drop` (see
    // `old_store_dropped`).
    let old_log = Arc::downgrade(&node.log);
    drop(node);
    let before = before?;
    shutdown.map_err(|e| anyhow!("shutdown: {e}"))?;
    old_store_dropped(old_log).await?;

    // The scenario of the bug: the state machine's checkpoint is older than the snapshot, so
    // openraft re-installs the snapshot at startup, over a log that starts at boundary + 1.
    let checkpointed = checkpointed_index(dir.path())?;
    ensure!(
        checkpointed.is_none_or(|c| c < before.snapshot),
        "the checkpoint covers the snapshot ({checkpointed:?} >= {}): the scenario did not arise",
        before.snapshot
    );
    let meta: RaftMeta =
        serde_json::from_slice(&std::fs::read(dir.path().join("raft").join("meta.json"))?)?;
    println!(
        "stopped: boundary {}, snapshot {}, last index {}, checkpoint at {checkpointed:?}, \
         committed {:?} on disk",
        before.boundary,
        before.snapshot,
        before.last,
        meta.committed.map(|c| c.index)
    );

    // Run 2: the same directory, no `initialize`.
    let node = open_node(dir.path())
        .await
        .context("restart after the retention pass")?;
    let result = after_restart(&node, dir.path(), before).await;
    node.raft
        .shutdown()
        .await
        .map_err(|e| anyhow!("shutdown: {e}"))?;
    result
}

async fn before_restart(node: &Node) -> Result<BeforeRestart> {
    let Node { raft, sm, log } = node;
    lead(raft).await?;
    create_topic(raft).await?;
    let mut written = Written::new();
    write_messages(raft, 0..MESSAGES, &mut written).await?;
    let positions = unit_positions(sm, &written)?;
    let segments_before = log.segment_files()?.len();

    // Retention, as `Node::run_retention` does it.
    let boundary = sm
        .retention_boundary(None, Some(2 * SEGMENT))?
        .context("retention boundary: nothing due")?;
    let snapshot = snapshot_and_purge(raft, boundary).await?;
    ensure!(
        snapshot == boundary,
        "snapshot at {snapshot}, boundary {boundary}"
    );
    sm.after_purge()?;
    let segments_after = log.segment_files()?.len();
    ensure!(
        segments_after < segments_before,
        "no segment was deleted: {segments_before} -> {segments_after} segments"
    );
    ensure!(
        log.first_index()? == boundary + 1,
        "log starts at {}, not right after the boundary {boundary}",
        log.first_index()?
    );
    let first = first_position(log)?;
    let mut readable = BTreeMap::new();
    for queue in 0..QUEUES {
        let min = readable_min(&positions, queue, first)?;
        ensure!(min > 0, "queue {queue}: nothing of it was purged");
        readable.insert(queue, min);
    }

    // Committed entries past the boundary: the ones the buggy snapshot install dropped.
    let last = write_messages(raft, MESSAGES..MESSAGES + AFTER_PURGE, &mut written).await?;
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.last_applied.is_some_and(|l| l.index >= last),
            "writes after the purge applied",
        )
        .await?;
    for queue in 0..QUEUES {
        check_queue(sm, &written, queue, readable[&queue]).context("before the restart")?;
    }
    println!(
        "boundary {boundary}: {segments_before} -> {segments_after} segments, last index {last}, \
         readable from {readable:?}"
    );
    Ok(BeforeRestart {
        written,
        boundary,
        snapshot,
        readable,
        last,
    })
}

async fn after_restart(node: &Node, dir: &Path, before: BeforeRestart) -> Result<()> {
    let Node { raft, sm, log } = node;
    let BeforeRestart {
        mut written,
        boundary,
        snapshot,
        readable,
        last,
    } = before;
    raft.wait(Some(WAIT))
        .state(ServerState::Leader, "node 1 leads again")
        .await?;
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.last_applied.is_some_and(|l| l.index >= last),
            "every entry written before the restart applied again",
        )
        .await?;
    // The startup did re-install the snapshot (it checkpoints the installed state).
    let checkpointed = checkpointed_index(dir)?;
    ensure!(
        checkpointed.is_some_and(|c| c >= snapshot),
        "checkpoint at {checkpointed:?} after the restart: the snapshot at {snapshot} was not \
         re-installed, the scenario did not arise"
    );

    // The log was kept, not reset.
    let (first_index, next_index) = (log.first_index()?, log.next_index()?);
    ensure!(
        first_index == boundary + 1 && next_index > last,
        "log holds {first_index}..{next_index} after the restart, expected {}..>{last}",
        boundary + 1
    );
    for queue in 0..QUEUES {
        check_queue(sm, &written, queue, readable[&queue]).context("after the restart")?;
        ensure!(
            cq_min(sm, queue)? == readable[&queue],
            "queue {queue}: ConsumeQueue min {} after the restart, readable min {}",
            cq_min(sm, queue)?,
            readable[&queue]
        );
    }

    // And the node keeps going.
    let from = MESSAGES + AFTER_PURGE;
    let next = write_messages(raft, from..from + PER_ENTRY, &mut written).await?;
    ensure!(next > last, "write after the restart at index {next}");
    for queue in 0..QUEUES {
        check_queue(sm, &written, queue, readable[&queue]).context("after a further write")?;
    }
    println!(
        "restarted: log {first_index}..{next_index}, checkpoint at {checkpointed:?}, \
         new write at index {next}"
    );
    Ok(())
}

/// `last_applied` of `state/checkpoint.json`, if there is one.
fn checkpointed_index(dir: &Path) -> Result<Option<u64>> {
    let p = dir.join("state").join("checkpoint.json");
    match std::fs::read(&p) {
        Ok(b) => {
            let st: AppliedState = serde_json::from_slice(&b).context("checkpoint.json")?;
            Ok(st.last_applied.map(|l| l.index))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("checkpoint.json"),
    }
}

/// Wait until the first run's CommitLog (and so its `LogStore` and state machine, which hold
/// it) is gone before the directory is opened again. openraft owns the `LogStore`, so its
/// `Drop` cannot be skipped: it writes `raft/meta.json` if changed, i.e. the committed id,
/// which a kill would have on disk too, at most `COMMITTED_PERSIST_INTERVAL` behind. The
/// CommitLog's `Drop` syncs what `FlushMode::Sync` already synced. The state machine has no
/// `Drop`: no checkpoint is written.
async fn old_store_dropped(log: Weak<CommitLog>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while log.strong_count() > 0 {
        if tokio::time::Instant::now() >= deadline {
            bail!("the first run's CommitLog is still open after shutdown");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
