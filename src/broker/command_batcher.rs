//! Group commit of internal commands: the consume path's deliveries, acks and invisibility
//! changes (and every other internal command) proposed concurrently on the leader share one
//! Raft entry.
//!
//! The official clients send one AckMessage per message, most of them asynchronously, so a
//! busy consumer group proposes hundreds of tiny commands a second. As separate entries
//! each pays a proposal, a log record, replication bookkeeping, an fsync round and an apply
//! on every replica. Like the produce [`batcher`](super::batcher), commands are queued here;
//! a writer drains the queue into one entry (bounded by [`MAX_BATCH_COMMANDS`] and
//! [`MAX_BATCH_BYTES`]) while earlier entries are in flight, with up to [`MAX_IN_FLIGHT`]
//! entries in Raft at once. Nothing waits for a timer: a lone command is proposed at once,
//! as the plain single-command entry it always was; only two or more become a
//! [`command_batch`](crate::raft::state_machine::command_batch) entry, whose apply answers
//! each command separately.

use std::sync::Weak;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::error::BrokerError;
use super::group_commit::{self, Limits, Weighed};
use super::node::Node;
use super::ops::Route;
use crate::raft::state_machine::{INTERNAL_BATCH_KIND, command_batch};
use crate::raft::{Command, CommandResponse};

/// Most commands in one batched entry.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// Most payload bytes in one batched entry (a single larger command still goes alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Entries proposed and not yet applied, at most.
pub const MAX_IN_FLIGHT: usize = 4;

/// What a command gets back: its own apply response, or where the leader is.
pub(crate) type CommandResult = Result<Result<CommandResponse, Route>, BrokerError>;

struct Request {
    cmd: Command,
    reply: oneshot::Sender<CommandResult>,
}

impl Weighed for Request {
    fn weight(&self) -> (usize, usize) {
        (1, self.cmd.data.len())
    }
}

/// The queue of internal commands of one node.
pub struct CommandBatcher {
    tx: mpsc::UnboundedSender<Request>,
}

impl CommandBatcher {
    /// A batcher writing through `node`; its task ends when the node is dropped.
    pub fn spawn(node: Weak<Node>) -> (CommandBatcher, tokio::task::JoinHandle<()>) {
        let limits = Limits {
            in_flight: MAX_IN_FLIGHT,
            items: MAX_BATCH_COMMANDS,
            bytes: MAX_BATCH_BYTES,
        };
        let (tx, task) = group_commit::spawn(node, limits, |node, batch| async move {
            write_batch(&node, batch).await
        });
        (CommandBatcher { tx }, task)
    }

    /// Write `cmd` (an internal command: JSON or binary kind) as part of the next entry.
    pub(crate) async fn write(&self, cmd: Command) -> CommandResult {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { cmd, reply })
            .map_err(|_| BrokerError::Internal("the command writer stopped".into()))?;
        rx.await
            .map_err(|_| BrokerError::Internal("the command writer dropped a request".into()))?
    }
}

async fn write_batch(node: &Node, mut batch: Vec<Request>) {
    if batch.len() == 1 {
        if let Some(r) = batch.pop() {
            let _ = r.reply.send(node.write_local(r.cmd).await);
        }
        return;
    }
    let (cmds, replies): (Vec<(u8, Bytes)>, Vec<_>) = batch
        .into_iter()
        .map(|r| ((r.cmd.kind, r.cmd.data), r.reply))
        .unzip();
    let result = async {
        let data = command_batch::encode(&cmds).map_err(BrokerError::Internal)?;
        drop(cmds);
        let resp = match node
            .write_local(Command {
                kind: INTERNAL_BATCH_KIND,
                data: Bytes::from(data),
            })
            .await?
        {
            Ok(r) => r,
            Err(route) => return Ok(Err(route)),
        };
        let each = command_batch::decode_responses(&resp.data)
            .map_err(|e| BrokerError::Internal(format!("bad command batch result: {e}")))?;
        if each.len() != replies.len() {
            return Err(BrokerError::Internal(
                "command batch result does not match the batch".into(),
            ));
        }
        Ok(Ok((resp.index, each)))
    }
    .await;
    match result {
        Ok(Ok((index, each))) => {
            for (reply, data) in replies.into_iter().zip(each) {
                let _ = reply.send(Ok(Ok(CommandResponse { index, data })));
            }
        }
        Ok(Err(route)) => {
            for reply in replies {
                let _ = reply.send(Ok(Err(route.clone())));
            }
        }
        Err(e) => group_commit::fail_all(replies, e),
    }
}
