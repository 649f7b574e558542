//! Group commit of produce requests: concurrent sends on the leader become one Raft entry.
//!
//! Every Raft entry costs a proposal, a log record (header, index slot, CRC), replication
//! bookkeeping on each follower and an apply; a message batch costs that once however many
//! messages it holds. Clients send one message per request (the Python client asserts it), so
//! without batching a loaded group spends most of its CPU on per-entry overhead. Requests
//! are queued here; a writer drains the queue into one batch (bounded by
//! [`MAX_BATCH_MESSAGES`] and [`MAX_BATCH_BYTES`]) and proposes it while the next batch fills,
//! with at most [`MAX_IN_FLIGHT`] batch in Raft at a time. Nothing waits for a timer: a lone
//! request is proposed at once, and batches grow only while earlier ones are in flight.
//!
//! Each request keeps its messages contiguous and in order within the batch, and learns
//! where each of them went from the entry's apply result.

use std::sync::Weak;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::error::BrokerError;
use super::group_commit::{self, Limits, Weighed};
use super::node::Node;
use super::ops::Route;
use crate::raft::Command;
use crate::raft::state_machine::{self, Place};
use crate::storage::message::{self, NewMessage};

/// Most messages in one batched entry.
pub const MAX_BATCH_MESSAGES: usize = 1024;
/// Most encoded bytes in one batched entry (a single larger request still goes alone).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Batches proposed and not yet applied, at most. One: requests that arrive while a batch is
/// in Raft wait for it and then go together. With up to 4 batches in flight the batches were
/// smaller and each paid its own entry costs on three nodes (fsyncs, replication messages,
/// apply): at in-flight 256, one batch in flight measured ~10 % less server CPU, ~13 % more
/// msg/s (11 paired rounds, median ratios, wide spread) and 25–30 % fewer device flushes per
/// message; at in-flight 16, +35 % msg/s and a lower p99
/// (bench/results/2026-12-08-produce-batches-in-flight.md).
pub const MAX_IN_FLIGHT: usize = 1;

/// What a request gets back: (Raft index, one place per message), or where the leader is.
pub(crate) type WriteResult = Result<Result<(u64, Vec<Place>), Route>, BrokerError>;

struct Request {
    msgs: Vec<NewMessage>,
    bytes: usize,
    reply: oneshot::Sender<WriteResult>,
}

impl Weighed for Request {
    fn weight(&self) -> (usize, usize) {
        (self.msgs.len(), self.bytes)
    }
}

/// The queue of produce requests of one node.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Request>,
}

impl Batcher {
    /// A batcher writing through `node`; its task ends when the node is dropped.
    pub fn spawn(node: Weak<Node>) -> (Batcher, tokio::task::JoinHandle<()>) {
        let limits = Limits {
            in_flight: MAX_IN_FLIGHT,
            items: MAX_BATCH_MESSAGES,
            bytes: MAX_BATCH_BYTES,
        };
        let (tx, task) = group_commit::spawn(node, limits, |node, batch| async move {
            write_batch(&node, batch).await
        });
        (Batcher { tx }, task)
    }

    /// Write `msgs` as part of the next batch.
    pub(crate) async fn write(&self, msgs: Vec<NewMessage>) -> WriteResult {
        // Validates every message, so one bad request cannot fail a whole batch.
        let mut bytes = 0;
        for m in &msgs {
            bytes += message::encoded_len(m).map_err(|e| BrokerError::BadRequest(e.to_string()))?;
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { msgs, bytes, reply })
            .map_err(|_| BrokerError::Internal("the batch writer stopped".into()))?;
        rx.await
            .map_err(|_| BrokerError::Internal("the batch writer dropped a request".into()))?
    }
}

async fn write_batch(node: &Node, batch: Vec<Request>) {
    crate::hops::mark(crate::hops::Hop::BatchPropose, 0);
    // The messages move into one batch; each request keeps its reply and its message count.
    let total = batch.iter().map(|r| r.msgs.len()).sum();
    let mut all: Vec<NewMessage> = Vec::with_capacity(total);
    let mut replies = Vec::with_capacity(batch.len());
    for r in batch {
        replies.push((r.reply, r.msgs.len()));
        all.extend(r.msgs);
    }
    let result: WriteResult = async {
        let payload =
            message::encode_batch(&all).map_err(|e| BrokerError::BadRequest(e.to_string()))?;
        drop(all);
        let resp = match node
            .write_local(Command::messages(Bytes::from(payload)))
            .await?
        {
            Ok(r) => r,
            Err(route) => return Ok(Err(route)),
        };
        let places = state_machine::decode_batch_result(&resp.data)
            .map_err(|e| BrokerError::Internal(format!("bad apply result: {e}")))?;
        if places.len() != total {
            return Err(BrokerError::Internal(
                "apply result does not match the batch".into(),
            ));
        }
        Ok(Ok((resp.index, places)))
    }
    .await;
    match result {
        Ok(Ok((index, places))) => {
            let mut it = places.into_iter();
            for (reply, n) in replies {
                let mine: Vec<Place> = it.by_ref().take(n).collect();
                let _ = reply.send(Ok(Ok((index, mine))));
            }
        }
        Ok(Err(route)) => {
            for (reply, _) in replies {
                let _ = reply.send(Ok(Err(route.clone())));
            }
        }
        Err(e) => group_commit::fail_all(replies.into_iter().map(|(reply, _)| reply), e),
    }
}
