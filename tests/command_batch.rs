//! A command batch entry (record kind `INTERNAL_BATCH_KIND`, written by the broker's command
//! batcher when internal commands are proposed concurrently) must apply exactly as the same
//! commands in consecutive entries: same per-command answers, same delivery state, same
//! consume history.
//!
//! Two single-node Raft groups in process (`single_node`), each with the real `LogStore` and
//! `StateMachine`, get the same topic and messages; then one gets a sequence of consume
//! commands (deliveries, acks — fresh, stale and repeated —, an invisibility change, a JSON
//! command and an undecodable member) one entry each, the other all of them in one batch
//! entry.

mod single_node;

use std::path::Path;

use anyhow::{Result, anyhow, ensure};
use bytes::Bytes;
use raftmq::raft::Command;
use raftmq::raft::consume::{GroupConfig, Pop};
use raftmq::raft::state_machine::{
    ConsumeEvent, INTERNAL_BATCH_KIND, INTERNAL_BIN_KIND, InternalCommand, Perm, SmHandle,
    TopicConfig, TopicMessageType, codec, command_batch,
};
use raftmq::storage::message::{MessageType, NewMessage, encode_batch};
use single_node::{Node, lead};

const TOPIC: &str = "batched";
const GROUP: &str = "g";
const QUEUES: u32 = 2;
const MESSAGES: u64 = 6; // per queue

async fn open_node(dir: &Path) -> Result<Node> {
    let node = single_node::open_node(dir, 1 << 20, "command-batch").await?;
    lead(&node.raft).await?;
    Ok(node)
}

async fn write(node: &Node, kind: u8, data: Vec<u8>) -> Result<(u64, Bytes)> {
    let r = node
        .raft
        .client_write(Command {
            kind,
            data: Bytes::from(data),
        })
        .await
        .map_err(|e| anyhow!("write: {e}"))?;
    Ok((r.log_id.index, r.data.data))
}

async fn command(node: &Node, cmd: &InternalCommand) -> Result<Bytes> {
    let (kind, data) = codec::encode(cmd).map_err(|e| anyhow!(e))?;
    Ok(write(node, kind, data).await?.1)
}

/// The topic, the group and `MESSAGES` messages in each queue.
async fn setup(node: &Node) -> Result<()> {
    command(
        node,
        &InternalCommand::UpsertTopic {
            topic: TopicConfig {
                name: TOPIC.into(),
                queues: QUEUES,
                perm: Perm::ReadWrite,
                message_type: TopicMessageType::Normal,
            },
        },
    )
    .await?;
    let msgs: Vec<NewMessage> = (0..MESSAGES * u64::from(QUEUES))
        .map(|i| NewMessage {
            msg_type: MessageType::Normal,
            queue_id: (i % u64::from(QUEUES)) as u32,
            born_timestamp_ms: 1,
            store_timestamp_ms: 1,
            delivery_timestamp_ms: 0,
            topic: TOPIC.into(),
            message_id: format!("m{i}"),
            tag: String::new(),
            message_group: String::new(),
            keys: Vec::new(),
            properties: Vec::new(),
            born_host: String::new(),
            body: Bytes::from(vec![i as u8; 100]),
        })
        .collect();
    let kind = raftmq::storage::record::RecordKind::MESSAGE_BATCH.0;
    write(node, kind, encode_batch(&msgs)?).await?;
    Ok(())
}

fn pop(queue: u32, offsets: std::ops::Range<u64>, seq: u64) -> InternalCommand {
    InternalCommand::Pop(Pop {
        group: GROUP.into(),
        topic: TOPIC.into(),
        queue,
        deliver: offsets.clone().map(|o| (o, 1)).collect(),
        skip_to: offsets.end,
        invisible_until_ms: 4_000_000_000_000,
        seq,
    })
}

fn ack(queue: u32, offset: u64, seq: u64) -> InternalCommand {
    InternalCommand::Ack {
        group: GROUP.into(),
        topic: TOPIC.into(),
        queue,
        offset,
        seq,
    }
}

/// The commands, in order: (kind, payload).
fn commands() -> Result<Vec<(u8, Bytes)>> {
    let cmds = vec![
        InternalCommand::UpsertGroup {
            group: GroupConfig::default_for(GROUP),
        },
        pop(0, 0..4, 10),
        pop(1, 0..3, 11),
        ack(0, 0, 10),
        ack(0, 0, 10), // repeated
        ack(0, 1, 99), // stale receipt
        InternalCommand::AckMany {
            group: GROUP.into(),
            topic: TOPIC.into(),
            items: vec![(1, 0, 11), (1, 2, 11), (0, 3, 10)],
        },
        InternalCommand::ChangeInvisible {
            group: GROUP.into(),
            topic: TOPIC.into(),
            queue: 0,
            offset: 2,
            seq: 10,
            until_ms: 5_000_000_000_000,
            new_seq: 12,
        },
        ack(0, 2, 10), // the old receipt after the change
        pop(0, 4..6, 13),
    ];
    let mut out = Vec::new();
    for c in &cmds {
        let (kind, data) = codec::encode(c).map_err(|e| anyhow!(e))?;
        out.push((kind, Bytes::from(data)));
    }
    // An undecodable member is skipped with its own answer, not the whole batch.
    out.insert(5, (INTERNAL_BIN_KIND, Bytes::from_static(&[1, 250, 0])));
    Ok(out)
}

/// Everything consume-related a node shows, with Raft indexes left out (they differ).
fn consume_view(sm: &SmHandle) -> Result<String> {
    let mut s = String::new();
    for q in 0..QUEUES {
        s += &format!("q{q} {:?}\n", sm.queue_state(GROUP, TOPIC, q));
        for o in 0..MESSAGES {
            let (events, _) = sm.consume_history(TOPIC, q, o, 0, 1000)?;
            for e in events {
                s += &match e {
                    ConsumeEvent::Delivered {
                        group,
                        attempt,
                        at_ms,
                        invisible_until_ms,
                        ..
                    } => format!(
                        "q{q} o{o} delivered {group} #{attempt} {at_ms} {invisible_until_ms}\n"
                    ),
                    ConsumeEvent::Acked { group, .. } => format!("q{q} o{o} acked {group}\n"),
                };
            }
        }
    }
    for l in sm.consumer_lag() {
        s += &format!("lag {} {} {} {}\n", l.group, l.topic, l.queue, l.lag);
    }
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_entry_applies_like_consecutive_entries() -> Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (a, b) = (open_node(da.path()).await?, open_node(db.path()).await?);
    setup(&a).await?;
    setup(&b).await?;
    let cmds = commands()?;

    let mut separate = Vec::new();
    for (kind, data) in &cmds {
        separate.push(write(&a, *kind, data.to_vec()).await?.1);
    }
    let (_, resp) = write(
        &b,
        INTERNAL_BATCH_KIND,
        command_batch::encode(&cmds).map_err(|e| anyhow!(e))?,
    )
    .await?;
    let batched = command_batch::decode_responses(&resp).map_err(|e| anyhow!(e))?;

    ensure!(
        batched == separate,
        "answers differ:\n  separate {separate:?}\n  batched  {batched:?}"
    );
    // The answers show the commands really did different things (fresh, repeated and stale
    // acks; a skipped member).
    let text: Vec<String> = separate
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    ensure!(text.iter().filter(|t| *t == "ok").count() >= 4, "{text:?}");
    ensure!(text.iter().any(|t| t == "stale"), "{text:?}");
    ensure!(text.iter().any(|t| t.starts_with("ignored")), "{text:?}");

    let (va, vb) = (consume_view(&a.sm)?, consume_view(&b.sm)?);
    ensure!(
        va == vb,
        "state differs:\n--- separate\n{va}--- batched\n{vb}"
    );
    ensure!(va.contains("acked"), "no ack in the history:\n{va}");
    ensure!(
        va.contains("delivered"),
        "no delivery in the history:\n{va}"
    );
    a.raft.shutdown().await.map_err(|e| anyhow!("{e}"))?;
    b.raft.shutdown().await.map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_batch_entry_is_skipped_whole() -> Result<()> {
    let d = tempfile::tempdir()?;
    let node = open_node(d.path()).await?;
    setup(&node).await?;
    let mut data = command_batch::encode(&commands()?[..3]).map_err(|e| anyhow!(e))?;
    data.truncate(data.len() - 1);
    let (_, resp) = write(&node, INTERNAL_BATCH_KIND, data).await?;
    ensure!(
        resp.starts_with(b"ignored: undecodable command batch"),
        "{resp:?}"
    );
    // Nothing of it applied: the group has no delivery state.
    ensure!(node.sm.queue_state(GROUP, TOPIC, 0).next_offset == 0);
    node.raft.shutdown().await.map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
