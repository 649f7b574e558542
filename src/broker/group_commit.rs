//! The queue and writer loop behind both group commits of the leader: produce requests
//! ([`batcher`](super::batcher)) and internal commands
//! ([`command_batcher`](super::command_batcher)).
//!
//! Requests are queued; the writer waits for a free in-flight slot, takes the oldest request
//! and every one queued behind it up to the limits, and hands the batch to the write
//! function on its own task, so the next batch fills while this one is in Raft. Nothing
//! waits for a timer: a lone request is written at once, and batches grow only while
//! earlier ones are in flight.

use std::future::Future;
use std::sync::{Arc, Weak};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::error::BrokerError;
use super::node::Node;

/// Bounds of one group commit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Batches handed to the write function and not finished, at most.
    pub in_flight: usize,
    /// Most items (messages, commands) in one batch.
    pub items: usize,
    /// Most bytes in one batch (a single larger request still goes alone).
    pub bytes: usize,
}

/// A queued request's size: (items, bytes).
pub(crate) trait Weighed {
    fn weight(&self) -> (usize, usize);
}

/// Start the writer of a queue; it ends when the node is dropped or every sender is.
pub(crate) fn spawn<R, F, Fut>(
    node: Weak<Node>,
    limits: Limits,
    write: F,
) -> (mpsc::UnboundedSender<R>, tokio::task::JoinHandle<()>)
where
    R: Weighed + Send + 'static,
    F: Fn(Arc<Node>, Vec<R>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(node, limits, rx, write));
    (tx, task)
}

async fn run<R, F, Fut>(
    node: Weak<Node>,
    limits: Limits,
    mut rx: mpsc::UnboundedReceiver<R>,
    write: F,
) where
    R: Weighed + Send + 'static,
    F: Fn(Arc<Node>, Vec<R>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.in_flight));
    let mut carry: Option<R> = None;
    loop {
        // Wait for a free slot first, so that requests keep accumulating meanwhile.
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
        let (mut items, mut bytes) = first.weight();
        let mut batch = vec![first];
        while items < limits.items && bytes < limits.bytes {
            match rx.try_recv() {
                Ok(r) => {
                    let (i, b) = r.weight();
                    if items + i > limits.items || bytes + b > limits.bytes {
                        carry = Some(r);
                        break;
                    }
                    items += i;
                    bytes += b;
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let Some(node) = node.upgrade() else { return };
        let done = write(node, batch);
        tokio::spawn(async move {
            done.await;
            drop(permit);
        });
    }
}

/// Answer every request of a failed batch with `e`: the first gets it, the others an
/// equivalent copy.
pub(crate) fn fail_all<T>(
    replies: impl IntoIterator<Item = oneshot::Sender<Result<T, BrokerError>>>,
    e: BrokerError,
) {
    let msg = e.to_string();
    let mut first = Some(e);
    for reply in replies {
        let e = first
            .take()
            .unwrap_or_else(|| BrokerError::Raft(msg.clone()));
        let _ = reply.send(Err(e));
    }
}
