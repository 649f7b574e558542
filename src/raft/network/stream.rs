//! The pipelined `StreamAppend` client: one bidi stream carrying openraft's replication requests.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::base::BoxStream;
use openraft::errors::{NetworkError, RPCError, Timeout};
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, StreamAppendError, StreamAppendResult};
use openraft::{BasicNode, OptionalSend, RPCTypes};
use tokio::sync::Notify;

use super::errors::{network_error, remote_unreachable, status_to_rpc_error};
use super::{GrpcNetwork, RpcError, convert, pb};
use crate::raft::types::{LogId, NodeId, TypeConfig};

impl GrpcNetwork {
    /// Pipelined replication over one `StreamAppend` bidi stream.
    pub(super) async fn open_stream<S>(
        &self,
        input: S,
        option: RPCOption,
    ) -> Result<BoxStream<'static, Result<StreamAppendResult<TypeConfig>, RpcError>>, RpcError>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        let ttl = option.soft_ttl();
        // openraft backs off from an unreachable peer inside the request stream: its generator
        // waits out the backoff before it yields a session's first request. Connecting before
        // that request exists would skip the wait, and a dead peer would be redialled in a hot
        // loop (thousands of attempts a second, a core burnt and as many log lines).
        let mut input = input;
        let Some(first) = input.next().await else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        // openraft's request stream goes to the transport inside a `Detachable`, whose other
        // half is owned by the response stream returned below: when openraft drops that (a
        // session ends: error, timeout, conflict), the request stream is dropped at once, even
        // if the transport is not polling it. Left in the transport, it would live on as long
        // as the peer keeps the old HTTP/2 stream open (hyper keeps sending a request body
        // whose response was dropped) and compete with the next session's request stream for
        // the entries both read from openraft's shared replication state: entries sent on the
        // abandoned stream are acknowledged to no one, and the group stops committing.
        let (input, detach) = detachable(futures::stream::iter([first]).chain(input));
        let mut client = self.data_client()?;
        let shared = Arc::new(StreamShared::default());
        let max_append_bytes = self.config.max_append_bytes;
        let splits = self.splits.clone();

        let outbound_shared = shared.clone();
        let outbound = input
            .scan((), move |_, req| {
                if let Some(e) = req.entries.last() {
                    crate::hops::mark(crate::hops::Hop::StreamReqOut, e.log_id.index);
                }
                let chunks = convert::append_request_to_pb(req)
                    .map(|req| convert::split_append(req, max_append_bytes));
                let item = match chunks {
                    Ok(chunks) => {
                        if chunks.len() > 1 {
                            splits.fetch_add(1, Ordering::Relaxed);
                        }
                        outbound_shared.push_chunks(&chunks);
                        Some(futures::stream::iter(chunks))
                    }
                    Err(e) => {
                        *outbound_shared
                            .local_error
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner) = Some(e);
                        None
                    }
                };
                futures::future::ready(item)
            })
            .flatten();

        // Opening the stream (connection, request and response headers) gets the same allowance
        // as a response: under load a fresh HTTP/2 stream can take longer than openraft's 3/4
        // heartbeat, and a setup that always times out never replicates anything.
        let response_ttl = self.config.stream_response_timeout.unwrap_or(ttl);
        let setup_ttl = response_ttl.max(ttl);
        let inbound = match tokio::time::timeout(setup_ttl, client.stream_append(outbound)).await {
            Err(_elapsed) => {
                return Err(RPCError::Timeout(
                    self.timeout_error(RPCTypes::AppendEntries, setup_ttl),
                ));
            }
            Ok(Err(status)) => {
                return Err(self.status_error(RPCTypes::AppendEntries, setup_ttl, status));
            }
            Ok(Ok(response)) => response.into_inner(),
        };

        let state = StreamState {
            _detach: Box::new(detach),
            timeouts: self.stream_timeouts.clone(),
            inbound,
            shared,
            ttl: response_ttl,
            min_throughput: self.config.min_replication_bytes_per_sec.max(1),
            timeout: self.timeout_error(RPCTypes::AppendEntries, response_ttl),
            target: self.target,
            node: self.node.clone(),
        };
        let responses = futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            let (item, keep_going) = state.next_result().await?;
            Some((item, keep_going.then_some(state)))
        });
        Ok(Box::pin(responses))
    }
}

/// Where a request sent on a `StreamAppend` stream came from: openraft requests may be split
/// into several wire requests (see [`convert::split_append`]).
#[derive(Clone, Copy, Debug)]
struct ChunkInfo {
    /// First wire request of its openraft request.
    first: bool,
    /// Last wire request of its openraft request.
    last: bool,
    /// The wire request's `prev_log_id`.
    prev: Option<LogId>,
    /// The wire request's encoded size.
    bytes: usize,
}

/// State shared by the outbound (request) and inbound (response) halves of a stream.
#[derive(Default)]
struct StreamShared {
    /// Requests handed to the transport and not yet answered, in order.
    pending: Mutex<VecDeque<ChunkInfo>>,
    /// Signalled when `pending` grows, to arm the per-response timeout.
    sent: Notify,
    /// A request that could not be encoded; the outbound stream ends there.
    local_error: Mutex<Option<convert::ConvertError>>,
}

impl StreamShared {
    fn push_chunks(&self, chunks: &[pb::AppendEntriesRequest]) {
        let n = chunks.len();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for (i, chunk) in chunks.iter().enumerate() {
                pending.push_back(ChunkInfo {
                    first: i == 0,
                    last: i + 1 == n,
                    prev: chunk.prev_log_id.map(convert::log_id_from_pb),
                    bytes: prost::Message::encoded_len(chunk),
                });
            }
        }
        self.sent.notify_one();
    }

    fn has_pending(&self) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// The encoded size of the unanswered requests; `None` if there are none.
    fn outstanding_bytes(&self) -> Option<usize> {
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        (!pending.is_empty()).then(|| pending.iter().map(|c| c.bytes).sum())
    }

    fn pop_pending(&self) -> Option<ChunkInfo> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    fn take_local_error(&self) -> Option<convert::ConvertError> {
        self.local_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// A stream whose inner stream is dropped as soon as its [`Detach`] handle is, polled or not;
/// it then ends.
struct Detachable<S> {
    slot: Arc<Mutex<DetachSlot<S>>>,
}

struct DetachSlot<S> {
    inner: Option<S>,
    /// The task that last got `Pending`: woken on detach so that it sees the end.
    waker: Option<Waker>,
}

/// Drops the inner stream of its [`Detachable`] when dropped.
struct Detach<S> {
    slot: Arc<Mutex<DetachSlot<S>>>,
}

fn detachable<S>(inner: S) -> (Detachable<S>, Detach<S>) {
    let slot = Arc::new(Mutex::new(DetachSlot {
        inner: Some(inner),
        waker: None,
    }));
    (Detachable { slot: slot.clone() }, Detach { slot })
}

impl<S: Stream + Unpin> Stream for Detachable<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(inner) = slot.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = inner.poll_next_unpin(cx);
        match &polled {
            Poll::Pending => {
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    slot.waker = Some(cx.waker().clone());
                }
            }
            Poll::Ready(None) => slot.inner = None,
            Poll::Ready(Some(_)) => {}
        }
        polled
    }
}

impl<S> Drop for Detach<S> {
    fn drop(&mut self) {
        let (inner, waker) = {
            let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
            (slot.inner.take(), slot.waker.take())
        };
        // Outside the lock: dropping openraft's generator may release its own locks.
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The response half of a `StreamAppend` stream.
struct StreamState {
    /// Dropping the responses drops openraft's request stream (see [`Detachable`]).
    _detach: Box<dyn Send + Sync>,
    /// Counts per-response timeouts (the factory's `stream_timeout_count`).
    timeouts: Arc<std::sync::atomic::AtomicU64>,
    inbound: tonic::Streaming<pb::StreamAppendResponse>,
    shared: Arc<StreamShared>,
    ttl: Duration,
    /// Bytes per second a peer is expected to take at least (see
    /// [`super::GrpcNetworkConfig::min_replication_bytes_per_sec`]).
    min_throughput: u64,
    timeout: Timeout<TypeConfig>,
    target: NodeId,
    node: BasicNode,
}

impl StreamState {
    /// The next result for openraft and whether the stream continues after it; `None` at the
    /// clean end of the stream.
    async fn next_result(
        &mut self,
    ) -> Option<(Result<StreamAppendResult<TypeConfig>, RpcError>, bool)> {
        loop {
            let message = if let Some(bytes) = self.shared.outstanding_bytes() {
                // The wait allows for moving and storing what is outstanding: a fixed timeout
                // shorter than that would end every session of a follower with a backlog
                // before it could answer, and it would never catch up.
                let allowance =
                    self.ttl + Duration::from_secs_f64(bytes as f64 / self.min_throughput as f64);
                match tokio::time::timeout(allowance, self.inbound.message()).await {
                    Ok(message) => message,
                    Err(_elapsed) => {
                        self.timeouts.fetch_add(1, Ordering::Relaxed);
                        return Some((Err(RPCError::Timeout(self.timeout.clone())), false));
                    }
                }
            } else {
                // Nothing outstanding: wait without a deadline, but re-check as soon as a
                // request goes out. `Streaming::message` is cancel-safe.
                tokio::select! {
                    message = self.inbound.message() => message,
                    _ = self.shared.sent.notified() => continue,
                }
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => {
                    if let Some(e) = self.shared.take_local_error() {
                        return Some((Err(network_error(e)), false));
                    }
                    if self.shared.has_pending() {
                        let e = NetworkError::from_string(format!(
                            "StreamAppend to node {} ended with unanswered requests",
                            self.target
                        ));
                        return Some((Err(RPCError::Network(e)), false));
                    }
                    return None;
                }
                Err(status) => {
                    let timeout = self.timeout.clone();
                    return Some((Err(status_to_rpc_error(status, || timeout)), false));
                }
            };
            let Some(info) = self.shared.pop_pending() else {
                let e = NetworkError::from_string("StreamAppend response without a request");
                return Some((Err(RPCError::Network(e)), false));
            };
            let result = match convert::stream_result_from_pb(response) {
                Err(e) => return Some((Err(network_error(e)), false)),
                Ok(Err(remote)) => {
                    let e = remote_unreachable(self.target, &self.node, remote);
                    return Some((Err(RPCError::Unreachable(e)), false));
                }
                Ok(Ok(result)) => result,
            };
            match result {
                // An intermediate wire request of a split openraft request: keep reading.
                Ok(_) if !info.last => continue,
                Ok(flushed) => return Some((Ok(Ok(flushed)), true)),
                // A later chunk conflicting means the earlier chunks were accepted: report
                // that partial progress; the follower ends the stream after an error.
                Err(StreamAppendError::Conflict(_)) if !info.first => {
                    return Some((Ok(Ok(info.prev)), false));
                }
                Err(e) => return Some((Ok(Err(e)), false)),
            }
        }
    }
}

#[cfg(test)]
mod tests;
