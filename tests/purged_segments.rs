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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use raftmq::raft::consume::Pop;
use raftmq::raft::log_store::LogStore;
use raftmq::raft::network::{GrpcNetworkConfig, GrpcNetworkFactory};
use raftmq::raft::state_machine::{
    INTERNAL_JSON_KIND, InternalCommand, Perm, SmHandle, StateMachine, TopicConfig,
    TopicMessageType, decode_batch_result,
};
use raftmq::raft::{Command, NodeId, TypeConfig};
use raftmq::storage::message::{MessageType, NewMessage, encode_batch};
use raftmq::storage::{CommitLog, CommitLogConfig, FlushMode};

const NODE: NodeId = 1;
const TOPIC: &str = "purged";
const QUEUES: u32 = 2;
const SEGMENT: u64 = 64 << 10;
const MESSAGES: usize = 480; // ~1 KiB each: about 8 segments
const PER_ENTRY: usize = 4;
const GROUP: &str = "observer";
const WAIT: Duration = Duration::from_secs(10);

/// Like `NodeConfig::raft_config` in `broker/node.rs`.
fn raft_config() -> Result<Arc<Config>> {
    let cfg = Config {
        cluster_name: "purged-segments".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        enable_pre_vote: Some(true),
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 0,
        enable_leader_restore: Some(false),
        allow_log_reversion: Some(true),
        ..Default::default()
    };
    Ok(Arc::new(cfg.validate()?))
}

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

async fn internal(raft: &Raft<TypeConfig, StateMachine>, cmd: InternalCommand) -> Result<()> {
    raft.client_write(Command {
        kind: INTERNAL_JSON_KIND,
        data: Bytes::from(serde_json::to_vec(&cmd)?),
    })
    .await
    .map_err(|e| anyhow!("internal command: {e}"))?;
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
    let mut lc = CommitLogConfig::new(dir.path());
    lc.segment_size = SEGMENT;
    lc.flush = FlushMode::Sync;
    let store = LogStore::open(lc)?;
    let log = store.commitlog();
    let (sm, handle) = StateMachine::open(dir.path(), Arc::clone(&log))?;
    // A single-member group never sends: the factory is never asked for a connection.
    let network = GrpcNetworkFactory::new(NODE, GrpcNetworkConfig::default());
    let raft = Raft::new(NODE, raft_config()?, network, store, sm).await?;
    let result = scenario(&raft, &handle, &log).await;
    raft.shutdown()
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
    let members = BTreeMap::from([(
        NODE,
        BasicNode {
            addr: "127.0.0.1:1".into(),
        },
    )]);
    raft.initialize(members)
        .await
        .map_err(|e| anyhow!("initialize: {e}"))?;
    raft.wait(Some(WAIT))
        .state(ServerState::Leader, "node 1 leads")
        .await?;

    // 2. A topic with two queues, and messages filling several segments. An observer group
    //    at offset 0 on every queue makes the ConsumeQueue's own min visible (consumer lag).
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
    // queue → offset → index of the message written there.
    let mut written: BTreeMap<u32, BTreeMap<u64, usize>> = BTreeMap::new();
    for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(PER_ENTRY) {
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
    }
    // Where each unit points, read while everything is still held.
    let mut positions: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
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
    raft.trigger()
        .snapshot()
        .await
        .map_err(|e| anyhow!("trigger snapshot: {e}"))?;
    raft.wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= boundary),
            "snapshot at the boundary",
        )
        .await?;
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
        let expect_min = positions[&queue]
            .iter()
            .find(|(_, pos)| *pos >= first)
            .map(|(o, _)| *o)
            .context("every message of the queue was purged")?;
        ensure!(expect_min > 0, "queue {queue}: nothing of it was purged");
        let max = offsets.len() as u64;

        let (msgs, min, max_off) = sm
            .read_queue(TOPIC, queue, 0, MESSAGES)
            .with_context(|| format!("read_queue({TOPIC}, {queue}, 0) after the purge"))?;
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
