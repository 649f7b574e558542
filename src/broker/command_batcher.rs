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

use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::error::BrokerError;
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

/// The queue of internal commands of one node.
pub struct CommandBatcher {
    tx: mpsc::UnboundedSender<Request>,
}

impl CommandBatcher {
    /// A batcher writing through `node`; its task ends when the node is dropped.
    pub fn spawn(node: Weak<Node>) -> (CommandBatcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(node, rx));
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

async fn run(node: Weak<Node>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carry: Option<Request> = None;
    loop {
        // Wait for a free slot first, so that commands keep accumulating meanwhile.
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let mut bytes = first.cmd.data.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(r) if bytes + r.cmd.data.len() > MAX_BATCH_BYTES => {
                    carry = Some(r);
                    break;
                }
                Ok(r) => {
                    bytes += r.cmd.data.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        tokio::spawn(async move {
            write_batch(&node, batch).await;
            drop(permit);
        });
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
        Err(e) => {
            let msg = e.to_string();
            let mut first = Some(e);
            for reply in replies {
                // One error value; the others get an equivalent copy.
                let e = first
                    .take()
                    .unwrap_or_else(|| BrokerError::Raft(msg.clone()));
                let _ = reply.send(Err(e));
            }
        }
    }
}
