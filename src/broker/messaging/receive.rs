//! Consuming: ReceiveMessage (picking and recording deliveries on the leader), queue
//! assignment, AckMessage, ChangeInvisibleDuration and forwarding to the dead-letter queue.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::convert::{
    delivered, dur, error_status, now_ms, ok, one, parse_filter, receive_status, ts,
};
use super::{BoxStream, MessagingSvc};
use crate::broker::error::BrokerError;
use crate::broker::node::Node;
use crate::broker::ops::Route;
use crate::broker::pending_ops::RENEW_SLICE;
use crate::broker::sessions::{RenewKey, Renewal};
use crate::filter::Filter;
use crate::proto::apache::rocketmq::v2;
use crate::proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use crate::protocol::route::{self, GroupRoute, status};
use crate::raft::consume::{self, Pop};
use crate::raft::state_machine::{InternalCommand, TopicConfig};
use crate::storage::StoreError;
use crate::storage::message::MessageView;

/// Invisible duration used when a request does not give one.
const DEFAULT_INVISIBLE: Duration = Duration::from_secs(30);
/// Upper bound of a receive's long polling.
const MAX_LONG_POLL: Duration = Duration::from_secs(20);

/// Serialises picking for one (group, topic) on the leader.
pub(super) type PickLock = Arc<AsyncMutex<()>>;

/// One message handed out by a receive.
pub(super) struct Delivery {
    pub(super) queue: u32,
    pub(super) offset: u64,
    pub(super) attempt: u32,
    pub(super) seq: u64,
    pub(super) msg: MessageView,
}

/// What a receive asks for.
struct PopRequest<'a> {
    /// The group's delivery-state key (`consume::state_key`).
    group: &'a str,
    /// The group's configuration.
    config: &'a consume::GroupConfig,
    topic: &'a TopicConfig,
    first_queue: u32,
    batch: usize,
    filter: &'a Filter,
    invisible: Duration,
}

impl MessagingSvc {
    /// A unique delivery sequence: leader clock in the high bits, a counter in the low ones,
    /// so sequences from different leaders practically never collide.
    fn next_seq(&self) -> u64 {
        ((now_ms() as u64) << 20) | (self.seq.fetch_add(1, Ordering::Relaxed) & 0xf_ffff)
    }

    fn pick_lock(&self, group: &str, topic: &str) -> Arc<AsyncMutex<()>> {
        let mut g = match self.pick_locks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        Arc::clone(g.entry((group.to_string(), topic.to_string())).or_default())
    }

    /// The ReceiveMessage RPC (`MessagingService::receive_message`).
    pub(super) async fn receive(
        &self,
        req: Request<v2::ReceiveMessageRequest>,
    ) -> Result<Response<BoxStream<v2::ReceiveMessageResponse>>, Status> {
        let node = self.node()?;
        // The long poll is spent on the leader: the client's deadline covers it.
        let poll = req
            .get_ref()
            .long_polling_timeout
            .as_ref()
            .map(dur)
            .unwrap_or(Duration::ZERO)
            .min(MAX_LONG_POLL);
        let forward = |mut c: MessagingServiceClient<Channel>, r| async move {
            let s = c.receive_message(r).await?;
            Ok(s.map(|s| Box::pin(s) as BoxStream<_>))
        };
        let req = match self
            .here_or_leader(&node, req, poll, forward, |st| one(receive_status(st)))
            .await?
        {
            Ok(req) => req,
            Err(reply) => return Ok(reply),
        };
        let client_id = Self::client_id(&req);
        self.sessions.touch(&client_id);
        let r = req.into_inner();
        let group = r.group.as_ref().map(|g| g.name.clone()).unwrap_or_default();
        if group.is_empty() || group.contains('@') {
            return Ok(Response::new(one(receive_status(status(
                v2::Code::IllegalConsumerGroup,
                format!("bad consumer group `{group}`"),
            )))));
        }
        let gc = node.sm.group_config(&group);
        if gc.broadcast && client_id.is_empty() {
            return Ok(Response::new(one(receive_status(status(
                v2::Code::ClientIdRequired,
                "a broadcasting group keeps progress per client: x-mq-client-id is required",
            )))));
        }
        let state_key = consume::state_key(&gc, &client_id);
        let mq = r.message_queue.clone().unwrap_or_default();
        let topic_res = mq.topic.clone().unwrap_or_default();
        let Some(topic) = node.sm.topic(&topic_res.name) else {
            return Ok(Response::new(one(receive_status(status(
                v2::Code::TopicNotFound,
                format!("topic `{}` does not exist", topic_res.name),
            )))));
        };
        if !topic.perm.readable() {
            return Ok(Response::new(one(receive_status(status(
                v2::Code::Forbidden,
                format!("topic `{}` is not readable", topic.name),
            )))));
        }
        let filter = match parse_filter(r.filter_expression.as_ref()) {
            Ok(f) => f,
            Err(st) => return Ok(Response::new(one(receive_status(st)))),
        };
        // Auto-renew without a duration (PushConsumer): the broker chooses, and renews it
        // while the client holds the message (`pending_ops::renew_loop`).
        let renew = r.auto_renew;
        let invisible = match r.invisible_duration.as_ref().map(dur) {
            Some(d) => d,
            None if renew => RENEW_SLICE,
            None => DEFAULT_INVISIBLE,
        };
        if invisible.is_zero() && !r.auto_renew {
            return Ok(Response::new(one(receive_status(status(
                v2::Code::IllegalInvisibleTime,
                "invisible duration must be positive",
            )))));
        }
        let batch = r.batch_size.clamp(1, 1024) as usize;
        // Only groups configured FIFO consume in order; any other group consumes a FIFO topic
        // concurrently. Like the RocketMQ proxy, a receive pops from every queue of this
        // group's share of the topic (the queue it names only says where to start): an
        // orderly group skips queues that have a delivery in flight, so one blocked queue
        // never stalls the others.
        // A receive that names no queue (id -1, as PushConsumer assignments do) starts at a
        // rotating queue so that no queue is always served first.
        let first_queue = if mq.id >= 0 {
            mq.id as u32 % topic.queues.max(1)
        } else {
            (self.seq.fetch_add(1, Ordering::Relaxed) % u64::from(topic.queues.max(1))) as u32
        };
        let deadline = tokio::time::Instant::now() + poll;
        let mut applied = node.sm.subscribe_applied();
        let mut stop = node.shutdown_signal();
        loop {
            let pr = PopRequest {
                group: &state_key,
                config: &gc,
                topic: &topic,
                first_queue,
                batch,
                filter: &filter,
                invisible,
            };
            match self.try_pop(&node, &pr).await {
                Ok(Some(msgs)) => {
                    // Counted here, on the leader that recorded the delivery (a forwarding
                    // follower only relays the stream): once per message handed out,
                    // redeliveries included.
                    let bytes: u64 = msgs.iter().map(|d| d.msg.body.len() as u64).sum();
                    let labels = [
                        ("topic", topic.name.clone()),
                        ("consumer_group", group.clone()),
                    ];
                    metrics::counter!(crate::broker::http::MESSAGES_OUT, &labels)
                        .increment(msgs.len() as u64);
                    metrics::counter!(crate::broker::http::THROUGHPUT_OUT, &labels)
                        .increment(bytes);
                    if renew {
                        let until = now_ms() + invisible.as_millis() as i64;
                        for d in &msgs {
                            self.sessions.renew(
                                RenewKey {
                                    group: state_key.clone(),
                                    topic: topic.name.clone(),
                                    queue: d.queue,
                                    offset: d.offset,
                                },
                                Renewal {
                                    seq: d.seq,
                                    client_id: client_id.clone(),
                                    until_ms: until,
                                },
                            );
                        }
                    }
                    let host = node.config.advertise.clone();
                    let mut items = vec![Ok(receive_status(ok()))];
                    for d in &msgs {
                        let m = delivered(&topic_res.resource_namespace, d, &host, invisible);
                        items.push(Ok(v2::ReceiveMessageResponse {
                            content: Some(v2::receive_message_response::Content::Message(m)),
                        }));
                    }
                    items.push(Ok(v2::ReceiveMessageResponse {
                        content: Some(v2::receive_message_response::Content::DeliveryTimestamp(
                            ts(now_ms()),
                        )),
                    }));
                    return Ok(Response::new(Box::pin(futures::stream::iter(items))));
                }
                Ok(None) => {}
                Err(e) => return Ok(Response::new(one(receive_status(error_status(&e))))),
            }
            let now = tokio::time::Instant::now();
            // A node that stops serving (a graceful leave) ends its long polls at once, as if
            // they had run out, so that its drain does not wait for them.
            if now >= deadline || *stop.borrow() {
                return Ok(Response::new(one(receive_status(status(
                    v2::Code::MessageNotFound,
                    "no new message",
                )))));
            }
            // Wake on a new applied entry, or in a while to catch expiring deliveries.
            let wake = (now + Duration::from_millis(200)).min(deadline);
            tokio::select! {
                _ = tokio::time::timeout_at(wake, applied.changed()) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
    }

    /// Pick and record one delivery for a receive; `None` if nothing is ready.
    async fn try_pop(
        &self,
        node: &Node,
        r: &PopRequest<'_>,
    ) -> Result<Option<Vec<Delivery>>, BrokerError> {
        let PopRequest {
            group,
            config: gc,
            topic,
            first_queue,
            batch,
            filter,
            invisible,
        } = *r;
        let lock = self.pick_lock(group, &topic.name);
        let _g = lock.lock().await;
        let fifo = gc.fifo;
        let now = now_ms();
        let until = now + invisible.as_millis() as i64;
        let mut out = Vec::new();
        let queues: Vec<u32> = (0..topic.queues)
            .map(|i| (first_queue + i) % topic.queues.max(1))
            .collect();
        for q in queues {
            if out.len() >= batch {
                break;
            }
            let state = node.sm.queue_state(group, &topic.name, q);
            let mut deliver: Vec<(u64, u32)> = Vec::new();
            let mut to_dlq: Vec<(u64, u64)> = Vec::new();
            // In-flight offsets that retention deleted: nothing to redeliver, settle them.
            let (_, min_offset, _) = node.sm.units(&topic.name, q, 0, 0);
            let mut gone: Vec<(u32, u64, u64)> = Vec::new();
            // Expired deliveries come back first, with the next attempt number.
            for (off, f) in &state.inflight {
                if deliver.len() + out.len() >= batch {
                    break;
                }
                if *off < min_offset {
                    gone.push((q, *off, f.seq));
                    continue;
                }
                if f.invisible_until_ms <= now {
                    if f.attempt >= gc.max_delivery_attempts {
                        to_dlq.push((*off, f.seq));
                    } else {
                        deliver.push((*off, f.attempt + 1));
                    }
                } else if fifo {
                    break; // an invisible message blocks its queue for orderly groups
                }
            }
            for (off, seq) in to_dlq {
                node.dead_letter(group, &topic.name, q, off, seq).await?;
            }
            if !gone.is_empty() {
                tracing::warn!(
                    "{} in-flight message(s) of {}:{q} for {group} were deleted by retention before an ack",
                    gone.len(),
                    topic.name
                );
                node.propose(InternalCommand::AckMany {
                    group: group.to_string(),
                    topic: topic.name.clone(),
                    items: gone,
                })
                .await?;
            }
            let blocked = fifo && state.inflight.values().any(|f| f.invisible_until_ms > now);
            let mut skip_to = state.next_offset;
            if !fifo || (!blocked && deliver.is_empty()) {
                let room = batch.saturating_sub(out.len() + deliver.len());
                if room > 0 {
                    let (units, min, max) =
                        node.sm
                            .units(&topic.name, q, state.next_offset, room * 4 + 16);
                    let mut off = state.next_offset.max(min);
                    for u in units {
                        if deliver.len() + out.len() >= batch {
                            break;
                        }
                        if filter.may_match_hash(u.tag_hash) {
                            // Deleted by retention since `units` looked: expired, skip it.
                            let m = match node.sm.message_at(u.pos, u.size) {
                                Err(StoreError::NotFound { .. }) => {
                                    off += 1;
                                    skip_to = off;
                                    continue;
                                }
                                r => r?,
                            };
                            if filter.matches_message(&m) {
                                deliver.push((off, 1));
                            }
                        }
                        off += 1;
                        skip_to = off;
                    }
                    let _ = max;
                }
            }
            if deliver.is_empty() && skip_to <= state.next_offset {
                continue;
            }
            let seq = self.next_seq();
            let pop = Pop {
                group: group.to_string(),
                topic: topic.name.clone(),
                queue: q,
                deliver: deliver.clone(),
                skip_to,
                invisible_until_ms: until,
                seq,
            };
            node.propose(InternalCommand::Pop(pop)).await?;
            for (off, attempt) in deliver {
                let (units, min, _) = node.sm.units(&topic.name, q, off, 1);
                // `units` starts at the queue's minimum: an offset below it is gone.
                let Some(u) = units.first().filter(|_| off >= min) else {
                    continue;
                };
                let m = match node.sm.message_at(u.pos, u.size) {
                    Err(StoreError::NotFound { .. }) => continue, // deleted by retention meanwhile
                    r => r?,
                };
                out.push(Delivery {
                    queue: q,
                    offset: off,
                    attempt,
                    seq,
                    msg: m,
                });
            }
        }
        Ok(if out.is_empty() { None } else { Some(out) })
    }

    /// The QueryAssignment RPC (`MessagingService::query_assignment`).
    pub(super) async fn assign(
        &self,
        req: Request<v2::QueryAssignmentRequest>,
    ) -> Result<Response<v2::QueryAssignmentResponse>, Status> {
        let node = self.node()?;
        self.sessions.touch(&Self::client_id(&req));
        let r = req.into_inner();
        let reply = |st: v2::Status, assignments: Vec<v2::Assignment>| {
            Ok(Response::new(v2::QueryAssignmentResponse {
                status: Some(st),
                assignments,
            }))
        };
        let topic_res = r.topic.unwrap_or_default();
        let group = r.group.map(|g| g.name).unwrap_or_default();
        if group.is_empty() || group.contains('@') {
            return reply(
                status(
                    v2::Code::IllegalConsumerGroup,
                    format!("bad consumer group `{group}`"),
                ),
                vec![],
            );
        }
        let Some(topic) = node.sm.topic(&topic_res.name) else {
            return reply(
                status(
                    v2::Code::TopicNotFound,
                    format!("topic `{}` does not exist", topic_res.name),
                ),
                vec![],
            );
        };
        if !topic.perm.readable() {
            return reply(status(v2::Code::Forbidden, "no readable queue"), vec![]);
        }
        // Consumers receive through the leader (any member would forward there); naming it
        // saves a hop, and the next assignment (every 5 s) follows a leader change.
        let addr = match node.route() {
            Ok(Route::Leader(_, a)) => a,
            _ => node.config.advertise.clone(),
        };
        let queues = route::message_queues(
            &topic_res,
            &[GroupRoute::new(&node.config.group, &topic, vec![addr])],
        );
        let fifo = node.sm.group_config(&group).fifo;
        // Orderly groups get every queue (one receive loop each, so each queue's order is
        // one consumer's order); others one entry with queue id -1: the broker pops from all
        // queues, as the RocketMQ proxy does.
        let assignments = if fifo {
            queues
                .into_iter()
                .map(|q| v2::Assignment {
                    message_queue: Some(q),
                })
                .collect()
        } else {
            queues
                .into_iter()
                .take(1)
                .map(|mut q| {
                    q.id = -1;
                    v2::Assignment {
                        message_queue: Some(q),
                    }
                })
                .collect()
        };
        reply(ok(), assignments)
    }

    /// The ForwardMessageToDeadLetterQueue RPC
    /// (`MessagingService::forward_message_to_dead_letter_queue`).
    pub(super) async fn to_dead_letter_queue(
        &self,
        req: Request<v2::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<v2::ForwardMessageToDeadLetterQueueResponse>, Status> {
        let node = self.node()?;
        let reply = |st: v2::Status| {
            Ok(Response::new(v2::ForwardMessageToDeadLetterQueueResponse {
                status: Some(st),
            }))
        };
        let forward = |mut c: MessagingServiceClient<Channel>, r| async move {
            c.forward_message_to_dead_letter_queue(r).await
        };
        let failed = |st| v2::ForwardMessageToDeadLetterQueueResponse { status: Some(st) };
        let req = match self
            .here_or_leader(&node, req, Duration::ZERO, forward, failed)
            .await?
        {
            Ok(req) => req,
            Err(reply) => return Ok(reply),
        };
        let client_id = Self::client_id(&req);
        let r = req.into_inner();
        let group = r.group.map(|g| g.name).unwrap_or_default();
        let key = consume::state_key(&node.sm.group_config(&group), &client_id);
        let topic = r.topic.map(|t| t.name).unwrap_or_default();
        let Some((queue, offset, seq)) = consume::decode_handle(&r.receipt_handle) else {
            return reply(status(
                v2::Code::InvalidReceiptHandle,
                "malformed receipt handle",
            ));
        };
        let current = node
            .sm
            .queue_state(&key, &topic, queue)
            .inflight
            .get(&offset)
            .is_some_and(|f| f.seq == seq);
        if !current {
            return reply(status(
                v2::Code::InvalidReceiptHandle,
                "receipt handle is stale (redelivered or acked)",
            ));
        }
        match node.dead_letter(&key, &topic, queue, offset, seq).await {
            Ok(()) => reply(ok()),
            Err(e) => reply(error_status(&e)),
        }
    }

    /// The AckMessage RPC (`MessagingService::ack_message`).
    pub(super) async fn ack(
        &self,
        req: Request<v2::AckMessageRequest>,
    ) -> Result<Response<v2::AckMessageResponse>, Status> {
        let node = self.node()?;
        let forward =
            |mut c: MessagingServiceClient<Channel>, r| async move { c.ack_message(r).await };
        let failed = |st| v2::AckMessageResponse {
            status: Some(st),
            entries: vec![],
        };
        let req = match self
            .here_or_leader(&node, req, Duration::ZERO, forward, failed)
            .await?
        {
            Ok(req) => req,
            Err(reply) => return Ok(reply),
        };
        let client_id = Self::client_id(&req);
        let r = req.into_inner();
        let group = r.group.map(|g| g.name).unwrap_or_default();
        let group = consume::state_key(&node.sm.group_config(&group), &client_id);
        let topic = r.topic.map(|t| t.name).unwrap_or_default();
        // Every entry of one request is acked by one Raft command.
        let decoded: Vec<Option<(u32, u64, u64)>> = r
            .entries
            .iter()
            .map(|e| consume::decode_handle(&e.receipt_handle))
            .collect();
        let items: Vec<(u32, u64, u64)> = decoded.iter().flatten().copied().collect();
        let applied: Result<Vec<u8>, BrokerError> = if items.is_empty() {
            Ok(Vec::new())
        } else {
            node.propose(InternalCommand::AckMany {
                group: group.clone(),
                topic: topic.clone(),
                items,
            })
            .await
            .map(|resp| resp.data.to_vec())
        };
        let mut results = applied.as_ref().map(|v| v.iter());
        let mut entries = Vec::with_capacity(r.entries.len());
        let mut all_ok = true;
        for (e, d) in r.entries.into_iter().zip(decoded) {
            let st = match (d, &mut results) {
                (None, _) => status(v2::Code::InvalidReceiptHandle, "malformed receipt handle"),
                (Some(_), Ok(it)) => match it.next() {
                    Some(1) => ok(),
                    Some(_) => status(
                        v2::Code::InvalidReceiptHandle,
                        "receipt handle is stale (redelivered or acked)",
                    ),
                    None => status(v2::Code::InternalServerError, "ack result missing"),
                },
                (Some(_), Err(err)) => error_status(err),
            };
            all_ok &= st.code == v2::Code::Ok as i32;
            entries.push(v2::AckMessageResultEntry {
                message_id: e.message_id,
                receipt_handle: e.receipt_handle,
                status: Some(st),
            });
        }
        let top = if all_ok {
            ok()
        } else if entries.len() == 1 {
            entries[0].status.clone().unwrap_or_else(ok)
        } else {
            status(v2::Code::MultipleResults, "some entries failed")
        };
        Ok(Response::new(v2::AckMessageResponse {
            status: Some(top),
            entries,
        }))
    }

    /// The ChangeInvisibleDuration RPC (`MessagingService::change_invisible_duration`).
    pub(super) async fn change_invisible(
        &self,
        req: Request<v2::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<v2::ChangeInvisibleDurationResponse>, Status> {
        let node = self.node()?;
        let handle = req.get_ref().receipt_handle.clone();
        let forward = |mut c: MessagingServiceClient<Channel>, r| async move {
            c.change_invisible_duration(r).await
        };
        // A failed forward keeps the handle the client sent: it is still the valid one.
        let failed = |st| v2::ChangeInvisibleDurationResponse {
            status: Some(st),
            receipt_handle: handle,
        };
        let req = match self
            .here_or_leader(&node, req, Duration::ZERO, forward, failed)
            .await?
        {
            Ok(req) => req,
            Err(reply) => return Ok(reply),
        };
        let client_id = Self::client_id(&req);
        let r = req.into_inner();
        // The reply always carries a usable handle: the new one, or the one sent.
        let reply = |st: v2::Status, h: String| {
            Ok(Response::new(v2::ChangeInvisibleDurationResponse {
                status: Some(st),
                receipt_handle: h,
            }))
        };
        let Some((queue, offset, seq)) = consume::decode_handle(&r.receipt_handle) else {
            return reply(
                status(v2::Code::InvalidReceiptHandle, "malformed receipt handle"),
                r.receipt_handle,
            );
        };
        let Some(d) = r.invisible_duration.as_ref().map(dur) else {
            return reply(
                status(
                    v2::Code::IllegalInvisibleTime,
                    "invisible duration is required",
                ),
                r.receipt_handle,
            );
        };
        let new_seq = self.next_seq();
        let group = r.group.map(|g| g.name).unwrap_or_default();
        let cmd = InternalCommand::ChangeInvisible {
            group: consume::state_key(&node.sm.group_config(&group), &client_id),
            topic: r.topic.map(|t| t.name).unwrap_or_default(),
            queue,
            offset,
            seq,
            until_ms: now_ms() + d.as_millis() as i64,
            new_seq,
        };
        match node.propose(cmd).await {
            Ok(resp) if &resp.data[..] == b"ok" => {
                reply(ok(), consume::encode_handle(queue, offset, new_seq))
            }
            Ok(_) => reply(
                status(
                    v2::Code::InvalidReceiptHandle,
                    "receipt handle is stale (redelivered or acked)",
                ),
                r.receipt_handle,
            ),
            Err(e) => reply(error_status(&e), r.receipt_handle),
        }
    }
}
