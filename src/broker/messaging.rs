//! `apache.rocketmq.v2.MessagingService`: what the official RocketMQ 5 clients speak.
//!
//! * **Any node answers any RPC.** Routes list every member of the group as the broker's
//!   endpoints, so a client keeps working when the leader changes. A follower forwards writes
//!   and consume RPCs (SendMessage, ReceiveMessage, AckMessage, ChangeInvisibleDuration) to
//!   its leader over the same service and relays the answer; a request that was already
//!   forwarded once is never forwarded again (`x-raftmq-forwarded`), so two nodes with stale
//!   views cannot bounce a request between them.
//! * **Errors** are RocketMQ `Status` codes inside a gRPC-OK response (the clients treat a
//!   gRPC error as a transport failure).
//! * **Produce**: validated (topic exists and is writable, type matches, body size), then one
//!   Raft entry per request (see `ops::produce`); a retried message id is stored once.
//! * **Consume** (SimpleConsumer "pop"): the leader picks messages for the group — expired
//!   deliveries first (with `delivery_attempt + 1`), then new ones — writes the delivery as a
//!   Raft command and answers; acks and invisibility changes are Raft commands too
//!   (`raft::consume`). A message that reached the group's max attempts is copied to
//!   `%DLQ%<group>` and acked instead of being delivered again.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::Stream;
use md5::{Digest as _, Md5};
use tokio::sync::Mutex as AsyncMutex;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::error::BrokerError;
use super::node::Node;
use super::ops::Route;
use super::pending_ops::RENEW_SLICE;
use super::sessions::{RenewKey, Renewal, Sessions};
use crate::filter::Filter;
use crate::proto::apache::rocketmq::v2;
use crate::proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use crate::proto::apache::rocketmq::v2::messaging_service_server::{
    MessagingService, MessagingServiceServer,
};
use crate::proto::raftmq::admin as pb;
use crate::protocol::route::{self, GroupRoute, status};
use crate::protocol::settings::{self, settings_reply};
use crate::raft::NodeId;
use crate::raft::consume::{self, Pop};
use crate::raft::state_machine::{InternalCommand, TopicConfig};
use crate::storage::StoreError;
use crate::storage::message::{MessageType, MessageView};

/// Largest message body accepted (advertised to clients in the Settings reply).
pub const MAX_BODY_SIZE: usize = settings::MAX_BODY_SIZE as usize;
/// Invisible duration used when a request does not give one.
const DEFAULT_INVISIBLE: Duration = Duration::from_secs(30);
/// Upper bound of a receive's long polling.
const MAX_LONG_POLL: Duration = Duration::from_secs(20);
/// How often a request waiting for a leader looks again (besides waking on a leader change):
/// a new leader refuses writes until a quorum has acknowledged it.
const LEADER_POLL: Duration = Duration::from_millis(100);
/// Time left to the leader beyond the forwarding node's own budget, so that the leader's
/// answer (not a deadline error) reaches the client.
const FORWARD_SLACK: Duration = Duration::from_millis(200);
/// Ping interval and timeout of the channels that forward requests to the leader.
const FORWARD_KEEPALIVE: Duration = Duration::from_millis(300);
/// Leader-wait budget of a request that carries no `grpc-timeout`.
const DEFAULT_LEADER_WAIT: Duration = Duration::from_millis(2500);
/// Kept free of the client's deadline for the answer's way back.
const DEADLINE_MARGIN: Duration = Duration::from_millis(400);
/// Header marking a request that a follower forwarded to its leader.
const FORWARDED: &str = "x-raftmq-forwarded";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn ok() -> v2::Status {
    status(v2::Code::Ok, "OK")
}

/// The one mapping of broker errors onto RocketMQ status codes.
pub fn error_status(e: &BrokerError) -> v2::Status {
    let code = match e {
        BrokerError::BadRequest(_) | BrokerError::Config(_) => v2::Code::BadRequest,
        BrokerError::TopicNotFound(_) => v2::Code::TopicNotFound,
        BrokerError::Forbidden(..) => v2::Code::Forbidden,
        BrokerError::IllegalDeliveryTime(_) => v2::Code::IllegalDeliveryTime,
        BrokerError::Transaction(_) => v2::Code::InvalidTransactionId,
        BrokerError::NoLeader(_) | BrokerError::Forward { .. } | BrokerError::Raft(_) => {
            v2::Code::HaNotAvailable
        }
        _ => v2::Code::InternalServerError,
    };
    status(code, e.to_string())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn ts_ms(t: &prost_types::Timestamp) -> i64 {
    t.seconds.saturating_mul(1000) + i64::from(t.nanos) / 1_000_000
}

fn dur(d: &prost_types::Duration) -> Duration {
    Duration::from_secs(d.seconds.max(0) as u64) + Duration::from_nanos(d.nanos.max(0) as u64)
}

fn md5_hex(b: &[u8]) -> String {
    let d = Md5::digest(b);
    d.iter().map(|x| format!("{x:02X}")).collect()
}

/// Serialises picking for one (group, topic) on the leader.
type PickLock = Arc<AsyncMutex<()>>;

/// One message handed out by a receive.
struct Delivery {
    queue: u32,
    offset: u64,
    attempt: u32,
    seq: u64,
    msg: MessageView,
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

/// The MessagingService of one node.
pub struct MessagingSvc {
    node: Weak<Node>,
    sessions: Arc<Sessions>,
    leader_clients: std::sync::Mutex<HashMap<String, MessagingServiceClient<Channel>>>,
    /// One receive at a time per (group, topic) on the leader: picking and recording a
    /// delivery must not interleave with another pick.
    pick_locks: std::sync::Mutex<HashMap<(String, String), PickLock>>,
    seq: AtomicU64,
}

impl MessagingSvc {
    /// A service bound to `node`.
    pub fn new(node: Weak<Node>, sessions: Arc<Sessions>) -> Self {
        MessagingSvc {
            node,
            sessions,
            leader_clients: Default::default(),
            pick_locks: Default::default(),
            seq: AtomicU64::new(0),
        }
    }

    /// The tonic server with raised message limits.
    pub fn into_server(self) -> MessagingServiceServer<Self> {
        MessagingServiceServer::new(self)
            .max_decoding_message_size(super::MAX_GRPC_MESSAGE)
            .max_encoding_message_size(super::MAX_GRPC_MESSAGE)
    }

    fn node(&self) -> Result<Arc<Node>, Status> {
        self.node
            .upgrade()
            .ok_or_else(|| Status::unavailable("node is shutting down"))
    }

    /// A unique delivery sequence: leader clock in the high bits, a counter in the low ones,
    /// so sequences from different leaders practically never collide.
    fn next_seq(&self) -> u64 {
        ((now_ms() as u64) << 20) | (self.seq.fetch_add(1, Ordering::Relaxed) & 0xf_ffff)
    }

    fn leader_client(&self, addr: &str) -> Result<MessagingServiceClient<Channel>, Status> {
        let mut g = self
            .leader_clients
            .lock()
            .map_err(|_| Status::internal("client cache lock poisoned"))?;
        if let Some(c) = g.get(addr) {
            return Ok(c.clone());
        }
        let ep = tonic::transport::Endpoint::from_shared(crate::raft::network::peer_uri(addr))
            .map_err(|e| Status::internal(format!("bad leader address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            // A frozen leader (SIGSTOP, a hung host) keeps its TCP connections open: pings
            // fail the channel, and every request forwarded over it, within a second, so the
            // requests go to the next leader instead of hanging until the client gives up.
            .http2_keep_alive_interval(FORWARD_KEEPALIVE)
            .keep_alive_timeout(FORWARD_KEEPALIVE)
            .keep_alive_while_idle(true);
        let c = MessagingServiceClient::new(ep.connect_lazy())
            .max_decoding_message_size(super::MAX_GRPC_MESSAGE)
            .max_encoding_message_size(super::MAX_GRPC_MESSAGE);
        g.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Serve here or answer from the leader: `Ok(req)` hands the request back to be served on
    /// this node; `Err(reply)` is the answer — the leader's (the request forwarded with the
    /// client's headers by `call`), or `failed(status)` when no leader could take it within
    /// the request's budget (`HA_NOT_AVAILABLE`: the client retries).
    ///
    /// While the group has no leader, or the leader this node knows does not answer (killed,
    /// frozen: the forwarding channel's keepalive fails it), the request waits for the next
    /// leader instead of failing, as long as the client's own deadline allows
    /// ([`leader_wait_budget`]); an election takes well under a second.
    async fn here_or_leader<Req, Resp, Fut>(
        &self,
        node: &Node,
        req: Request<Req>,
        reserved: Duration,
        call: impl Fn(MessagingServiceClient<Channel>, Request<Req>) -> Fut,
        failed: impl FnOnce(v2::Status) -> Resp,
    ) -> Result<Result<Request<Req>, Response<Resp>>, Status>
    where
        Req: Clone,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let forwarded = req.metadata().get(FORWARDED).is_some();
        let deadline = tokio::time::Instant::now() + leader_wait_budget(req.metadata(), reserved);
        loop {
            let mut tried = None;
            let last = match node.route() {
                Ok(Route::Local) => return Ok(Ok(req)),
                Ok(Route::Leader(id, addr)) if !forwarded => {
                    tried = Some(id);
                    let c = self.leader_client(&addr)?;
                    let mut fwd = Request::new(req.get_ref().clone());
                    *fwd.metadata_mut() = Self::forward_metadata(req.metadata());
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    fwd.set_timeout(left + reserved + FORWARD_SLACK);
                    let until = deadline + reserved + FORWARD_SLACK;
                    match unless_leader_changes(node, id, until, call(c, fwd)).await {
                        // Only the message: the leader's response headers must not be re-sent.
                        Some(Ok(r)) => return Ok(Err(Response::new(r.into_inner()))),
                        Some(Err(e)) => status(
                            v2::Code::HaNotAvailable,
                            format!("leader {addr}: {}", e.message()),
                        ),
                        None => status(
                            v2::Code::HaNotAvailable,
                            format!("leader {addr} was replaced while it held the request"),
                        ),
                    }
                }
                // A forwarded request is never forwarded again: a transport-level error tells
                // the forwarding node to wait for the next leader and retry.
                Ok(Route::Leader(..)) => {
                    return Err(Status::unavailable(
                        "not the leader; leadership is changing",
                    ));
                }
                Err(e) if forwarded => return Err(Status::unavailable(e.to_string())),
                Err(e) => error_status(&e),
            };
            if tokio::time::Instant::now() >= deadline {
                return Ok(Err(Response::new(failed(last))));
            }
            let step = (tokio::time::Instant::now() + LEADER_POLL).min(deadline);
            node.wait_leader_change(tried, step).await;
        }
    }

    /// The client's `x-mq-*` headers plus the forwarded mark.
    fn forward_metadata(md: &tonic::metadata::MetadataMap) -> tonic::metadata::MetadataMap {
        let mut out = tonic::metadata::MetadataMap::new();
        for kv in md.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv
                && k.as_str().starts_with("x-mq-")
            {
                out.insert(k.clone(), v.clone());
            }
        }
        out.insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        out
    }

    fn pick_lock(&self, group: &str, topic: &str) -> Arc<AsyncMutex<()>> {
        let mut g = match self.pick_locks.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        Arc::clone(g.entry((group.to_string(), topic.to_string())).or_default())
    }

    fn client_id<T>(req: &Request<T>) -> String {
        req.metadata()
            .get("x-mq-client-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }

    async fn send_local(&self, node: &Node, msgs: &[v2::Message]) -> v2::SendMessageResponse {
        let fail = |st: v2::Status, n: usize| v2::SendMessageResponse {
            status: Some(st.clone()),
            entries: (0..n)
                .map(|_| v2::SendResultEntry {
                    status: Some(st.clone()),
                    ..Default::default()
                })
                .collect(),
        };
        if msgs.is_empty() {
            return fail(status(v2::Code::BadRequest, "no message"), 0);
        }
        let n = msgs.len();
        let mut req = pb::ProduceRequest::default();
        let no_props = v2::SystemProperties::default();
        for m in msgs {
            let topic_name = m.topic.as_ref().map(|t| t.name.clone()).unwrap_or_default();
            let Some(topic) = node.sm.topic(&topic_name) else {
                return fail(
                    status(
                        v2::Code::TopicNotFound,
                        format!("topic `{topic_name}` does not exist"),
                    ),
                    n,
                );
            };
            if !topic.perm.writable() {
                return fail(
                    status(
                        v2::Code::Forbidden,
                        format!("topic `{topic_name}` is not writable"),
                    ),
                    n,
                );
            }
            let sp = m.system_properties.as_ref().unwrap_or(&no_props);
            if sp.message_id.is_empty() {
                return fail(
                    status(v2::Code::IllegalMessageId, "message id is required"),
                    n,
                );
            }
            if m.body.len() > MAX_BODY_SIZE {
                return fail(
                    status(
                        v2::Code::MessageBodyTooLarge,
                        format!("body of {} bytes exceeds {MAX_BODY_SIZE}", m.body.len()),
                    ),
                    n,
                );
            }
            let sent_type =
                v2::MessageType::try_from(sp.message_type).unwrap_or(v2::MessageType::Unspecified);
            let want = route::message_type(topic.message_type);
            let sent_type = if sent_type == v2::MessageType::Unspecified {
                if sp.message_group.is_some() {
                    v2::MessageType::Fifo
                } else {
                    v2::MessageType::Normal
                }
            } else {
                sent_type
            };
            if sent_type != want {
                return fail(
                    status(
                        v2::Code::MessagePropertyConflictWithType,
                        format!(
                            "topic `{topic_name}` accepts {} messages, not {}",
                            want.as_str_name(),
                            sent_type.as_str_name()
                        ),
                    ),
                    n,
                );
            }
            if want == v2::MessageType::Fifo && sp.message_group.as_deref().unwrap_or("").is_empty()
            {
                return fail(
                    status(
                        v2::Code::IllegalMessageGroup,
                        "FIFO messages need a message group",
                    ),
                    n,
                );
            }
            let delivery_timestamp_ms = match (want, sp.delivery_timestamp.as_ref()) {
                (v2::MessageType::Delay, Some(t)) => ts_ms(t).max(1),
                (v2::MessageType::Delay, None) => {
                    return fail(
                        status(
                            v2::Code::IllegalDeliveryTime,
                            "a DELAY message needs a delivery timestamp",
                        ),
                        n,
                    );
                }
                (_, Some(_)) => {
                    return fail(
                        status(
                            v2::Code::MessagePropertyConflictWithType,
                            format!(
                                "only DELAY messages carry a delivery timestamp, not {}",
                                want.as_str_name()
                            ),
                        ),
                        n,
                    );
                }
                (_, None) => 0,
            };
            let queue_id = if sp.queue_id >= 0
                && (sp.queue_id as u32) < topic.queues
                && want != v2::MessageType::Fifo
            {
                sp.queue_id
            } else {
                -1
            };
            req.messages.push(pb::ProduceMessage {
                topic: topic_name,
                queue_id,
                message_id: sp.message_id.clone(),
                tag: sp.tag.clone().unwrap_or_default(),
                keys: sp.keys.clone(),
                properties: m.user_properties.clone(),
                body: m.body.clone(),
                message_group: sp.message_group.clone().unwrap_or_default(),
                born_timestamp_ms: sp.born_timestamp.as_ref().map(ts_ms).unwrap_or(0),
                delivery_timestamp_ms,
                transaction: want == v2::MessageType::Transaction,
            });
        }
        let transactional: Vec<bool> = req.messages.iter().map(|m| m.transaction).collect();
        match node.produce(req).await {
            Ok(reply) => v2::SendMessageResponse {
                status: Some(ok()),
                entries: reply
                    .results
                    .into_iter()
                    .zip(&transactional)
                    .map(|(r, tx)| v2::SendResultEntry {
                        status: Some(ok()),
                        // The transaction is named by its message id (EndTransaction carries
                        // both; see `end_transaction`).
                        transaction_id: if *tx {
                            r.message_id.clone()
                        } else {
                            String::new()
                        },
                        message_id: r.message_id,
                        // A message still waiting (delay, half) has no queue offset yet.
                        offset: if r.pending { -1 } else { r.offset as i64 },
                        recall_handle: String::new(),
                    })
                    .collect(),
            },
            Err(e) => fail(error_status(&e), n),
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
}

/// `fut` (a request forwarded to `leader`) raced against a leader change: `None` when another
/// node leads before `leader` answered (or `until` passed). A frozen leader keeps its
/// connections open until keepalives fail them; the election that replaces it usually ends
/// first, and the request then goes to the new leader at once instead of waiting out the
/// old one.
async fn unless_leader_changes<F: std::future::Future>(
    node: &Node,
    leader: NodeId,
    until: tokio::time::Instant,
    fut: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        r = fut => Some(r),
        _ = node.wait_leader_change(Some(leader), until) => None,
    }
}

/// How long a request may wait for a leader: the client's deadline (`grpc-timeout`) less
/// `reserved` (a receive's long poll, which the leader spends) and a margin for the way
/// back; [`DEFAULT_LEADER_WAIT`] when the client sent no deadline.
fn leader_wait_budget(md: &tonic::metadata::MetadataMap, reserved: Duration) -> Duration {
    match crate::protocol::grpc_timeout(md) {
        Some(t) => t
            .saturating_sub(reserved)
            .saturating_sub(DEADLINE_MARGIN)
            .min(Duration::from_secs(30)),
        None => DEFAULT_LEADER_WAIT,
    }
}

/// The subscription filter of a receive: tag expressions (`*`, `a || b`) are checked on the
/// ConsumeQueue's tag hash before the message is read, SQL92 on its properties after.
fn parse_filter(f: Option<&v2::FilterExpression>) -> Result<Filter, v2::Status> {
    let Some(f) = f else { return Ok(Filter::All) };
    let parsed = match v2::FilterType::try_from(f.r#type).unwrap_or(v2::FilterType::Unspecified) {
        v2::FilterType::Sql => Filter::parse_sql(&f.expression),
        _ => Filter::parse_tag(&f.expression),
    };
    parsed.map_err(|e| {
        status(
            v2::Code::IllegalFilterExpression,
            format!("bad filter expression `{}`: {e}", f.expression),
        )
    })
}

/// A stored message as the RocketMQ protocol carries it (no delivery fields): what a
/// check-back of a transaction sends, and the base of every delivered message.
pub(crate) fn to_v2_message(ns: &str, m: &MessageView, store_host: &str) -> v2::Message {
    let message_type = match m.msg_type {
        MessageType::Fifo => v2::MessageType::Fifo,
        MessageType::Delay => v2::MessageType::Delay,
        MessageType::TransactionHalf | MessageType::TransactionCommitted => {
            v2::MessageType::Transaction
        }
        MessageType::Normal => v2::MessageType::Normal,
    };
    let body: Bytes = m.body.clone();
    v2::Message {
        topic: Some(v2::Resource {
            resource_namespace: ns.to_string(),
            name: m.topic.to_string(),
        }),
        user_properties: m
            .properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        system_properties: Some(v2::SystemProperties {
            tag: m.tag().map(str::to_string),
            keys: m.keys.iter().map(|k| k.to_string()).collect(),
            message_id: m.message_id.to_string(),
            body_digest: Some(v2::Digest {
                r#type: v2::DigestType::Md5 as i32,
                checksum: md5_hex(&body),
            }),
            body_encoding: v2::Encoding::Identity as i32,
            message_type: message_type as i32,
            born_timestamp: Some(ts(m.born_timestamp_ms)),
            born_host: m.born_host.to_string(),
            store_timestamp: Some(ts(m.store_timestamp_ms)),
            store_host: store_host.to_string(),
            delivery_timestamp: m.delivery_timestamp_ms().map(ts),
            queue_id: m.queue_id as i32,
            message_group: m.message_group().map(str::to_string),
            ..Default::default()
        }),
        body,
    }
}

fn delivered(ns: &str, d: &Delivery, store_host: &str, invisible: Duration) -> v2::Message {
    let mut out = to_v2_message(ns, &d.msg, store_host);
    if let Some(sp) = out.system_properties.as_mut() {
        sp.receipt_handle = Some(consume::encode_handle(d.queue, d.offset, d.seq));
        sp.queue_id = d.queue as i32;
        sp.queue_offset = Some(d.offset as i64);
        sp.invisible_duration = Some(prost_types::Duration {
            seconds: invisible.as_secs() as i64,
            nanos: invisible.subsec_nanos() as i32,
        });
        sp.delivery_attempt = Some(d.attempt as i32);
    }
    out
}

/// Fill a consumer's Settings reply from its group's replicated configuration.
fn group_settings(node: &Node, reply: &mut v2::TelemetryCommand) {
    let Some(v2::telemetry_command::Command::Settings(s)) = &mut reply.command else {
        return;
    };
    let Some(v2::settings::PubSub::Subscription(sub)) = &s.pub_sub else {
        return;
    };
    let Some(group) = sub.group.as_ref().map(|g| g.name.clone()) else {
        return;
    };
    let gc = node.sm.group_config(&group);
    let delays: Vec<Duration> = gc
        .retry_backoff_ms
        .iter()
        .map(|ms| Duration::from_millis(*ms))
        .collect();
    settings::apply_group(s, gc.fifo, gc.max_delivery_attempts, &delays);
}

fn one<T: Send + 'static>(item: T) -> BoxStream<T> {
    Box::pin(futures::stream::iter([Ok(item)]))
}

fn receive_status(st: v2::Status) -> v2::ReceiveMessageResponse {
    v2::ReceiveMessageResponse {
        content: Some(v2::receive_message_response::Content::Status(st)),
    }
}

#[tonic::async_trait]
impl MessagingService for MessagingSvc {
    async fn query_route(
        &self,
        req: Request<v2::QueryRouteRequest>,
    ) -> Result<Response<v2::QueryRouteResponse>, Status> {
        let node = self.node()?;
        let r = req.into_inner();
        let Some(topic_res) = r.topic else {
            return Ok(Response::new(v2::QueryRouteResponse {
                status: Some(status(v2::Code::IllegalTopic, "topic is required")),
                message_queues: vec![],
            }));
        };
        let groups: Vec<GroupRoute> = node
            .sm
            .topic(&topic_res.name)
            .map(|t| {
                vec![GroupRoute::new(
                    &node.config.group,
                    &t,
                    node.member_addresses(),
                )]
            })
            .unwrap_or_default();
        Ok(Response::new(route::query_route_response(
            &topic_res, &groups,
        )))
    }

    async fn heartbeat(
        &self,
        req: Request<v2::HeartbeatRequest>,
    ) -> Result<Response<v2::HeartbeatResponse>, Status> {
        self.sessions.touch(&Self::client_id(&req));
        Ok(Response::new(v2::HeartbeatResponse { status: Some(ok()) }))
    }

    async fn notify_client_termination(
        &self,
        req: Request<v2::NotifyClientTerminationRequest>,
    ) -> Result<Response<v2::NotifyClientTerminationResponse>, Status> {
        tracing::info!("client terminated");
        self.sessions.remove(&Self::client_id(&req));
        Ok(Response::new(v2::NotifyClientTerminationResponse {
            status: Some(ok()),
        }))
    }

    async fn telemetry(
        &self,
        req: Request<tonic::Streaming<v2::TelemetryCommand>>,
    ) -> Result<Response<BoxStream<v2::TelemetryCommand>>, Status> {
        let client_id = Self::client_id(&req);
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<v2::TelemetryCommand, Status>>(64);
        let node = self.node.clone();
        let sessions = Arc::clone(&self.sessions);
        // Settings are recorded per client id with the stream (check-backs of transactions
        // go out on it) and each Settings command is answered at once; the stream stays open
        // until the client closes it.
        // The task keeps the request's span, so its log lines name the client.
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    let msg = match inbound.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) | Err(_) => break,
                    };
                    let Some(n) = node.upgrade() else { break };
                    if let Some(v2::telemetry_command::Command::Settings(s)) = msg.command {
                        tracing::info!(
                            client_type = ?s.client_type.and_then(|t| v2::ClientType::try_from(t).ok()),
                            "client settings"
                        );
                        sessions.set_settings(&client_id, &s, &tx);
                        let mut reply = settings_reply(s);
                        group_settings(&n, &mut reply);
                        if tx.send(Ok(reply)).await.is_err() {
                            break;
                        }
                    } else {
                        sessions.touch(&client_id);
                    }
                }
                tracing::info!("telemetry stream closed");
            },
            span,
        ));
        let out = tokio_stream_from(rx);
        Ok(Response::new(out))
    }

    async fn send_message(
        &self,
        req: Request<v2::SendMessageRequest>,
    ) -> Result<Response<v2::SendMessageResponse>, Status> {
        let node = self.node()?;
        let forwarded = req.metadata().get(FORWARDED).is_some();
        let client_id = Self::client_id(&req);
        let (meta, _, body) = req.into_parts();
        let msgs = body.messages;
        for m in &msgs {
            if let Some(t) = &m.topic {
                self.sessions.add_topic(&client_id, &t.name);
            }
        }
        // During an election a send waits for the new leader, within the client's deadline,
        // instead of failing at once: the client's own retries are few and fast.
        let deadline = tokio::time::Instant::now() + leader_wait_budget(&meta, Duration::ZERO);
        loop {
            let mut tried = None;
            let reply = match node.route() {
                Ok(Route::Local) => {
                    tried = Some(node.config.node_id);
                    self.send_local(&node, &msgs).await
                }
                Ok(Route::Leader(id, addr)) if !forwarded => {
                    tried = Some(id);
                    let mut c = self.leader_client(&addr)?;
                    let mut fwd = Request::new(v2::SendMessageRequest {
                        messages: msgs.clone(),
                    });
                    *fwd.metadata_mut() = Self::forward_metadata(&meta);
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    fwd.set_timeout(left + FORWARD_SLACK);
                    let until = deadline + FORWARD_SLACK;
                    let msg = match unless_leader_changes(&node, id, until, c.send_message(fwd))
                        .await
                    {
                        // Only the message: the leader's response headers must not be re-sent.
                        Some(Ok(r)) => Ok(r.into_inner()),
                        Some(Err(e)) => Err(format!("leader {addr}: {}", e.message())),
                        // Sent again to the new leader; a copy the old one stored after all
                        // is the same message id, stored once.
                        None => Err(format!("leader {addr} was replaced while it held the send")),
                    };
                    msg.unwrap_or_else(|e| v2::SendMessageResponse {
                        status: Some(status(v2::Code::HaNotAvailable, e)),
                        entries: vec![],
                    })
                }
                Ok(Route::Leader(..)) => v2::SendMessageResponse {
                    status: Some(status(
                        v2::Code::HaNotAvailable,
                        "leadership is changing; retry",
                    )),
                    entries: vec![],
                },
                Err(e) => v2::SendMessageResponse {
                    status: Some(error_status(&e)),
                    entries: vec![],
                },
            };
            let retry = reply
                .status
                .as_ref()
                .is_some_and(|s| s.code == v2::Code::HaNotAvailable as i32);
            if !retry || forwarded || tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(reply));
            }
            // Retry as soon as another leader is known, and at least every LEADER_POLL.
            let step = (tokio::time::Instant::now() + LEADER_POLL).min(deadline);
            node.wait_leader_change(tried, step).await;
        }
    }

    async fn receive_message(
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
                    metrics::counter!(super::http::MESSAGES_OUT, &labels)
                        .increment(msgs.len() as u64);
                    metrics::counter!(super::http::THROUGHPUT_OUT, &labels).increment(bytes);
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
            if now >= deadline {
                return Ok(Response::new(one(receive_status(status(
                    v2::Code::MessageNotFound,
                    "no new message",
                )))));
            }
            // Wake on a new applied entry, or in a while to catch expiring deliveries.
            let wake = (now + Duration::from_millis(200)).min(deadline);
            let _ = tokio::time::timeout_at(wake, applied.changed()).await;
        }
    }

    async fn end_transaction(
        &self,
        req: Request<v2::EndTransactionRequest>,
    ) -> Result<Response<v2::EndTransactionResponse>, Status> {
        let node = self.node()?;
        let reply = |st: v2::Status| {
            Ok(Response::new(v2::EndTransactionResponse {
                status: Some(st),
            }))
        };
        let forward =
            |mut c: MessagingServiceClient<Channel>, r| async move { c.end_transaction(r).await };
        let failed = |st| v2::EndTransactionResponse { status: Some(st) };
        let req = match self
            .here_or_leader(&node, req, Duration::ZERO, forward, failed)
            .await?
        {
            Ok(req) => req,
            Err(reply) => return Ok(reply),
        };
        let r = req.into_inner();
        let topic = r.topic.map(|t| t.name).unwrap_or_default();
        if r.message_id.is_empty() {
            return reply(status(v2::Code::IllegalMessageId, "message id is required"));
        }
        // The transaction id handed out by SendMessage is the message id.
        if !r.transaction_id.is_empty() && r.transaction_id != r.message_id {
            return reply(status(
                v2::Code::InvalidTransactionId,
                format!(
                    "transaction id `{}` does not belong to message {}",
                    r.transaction_id, r.message_id
                ),
            ));
        }
        let commit = match v2::TransactionResolution::try_from(r.resolution) {
            Ok(v2::TransactionResolution::Commit) => true,
            Ok(v2::TransactionResolution::Rollback) => false,
            _ => {
                return reply(status(
                    v2::Code::BadRequest,
                    "resolution must be COMMIT or ROLLBACK",
                ));
            }
        };
        match node.end_transaction(&topic, &r.message_id, commit).await {
            Ok(what) => reply(status(v2::Code::Ok, what)),
            Err(e) => reply(error_status(&e)),
        }
    }

    async fn query_assignment(
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

    async fn forward_message_to_dead_letter_queue(
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

    async fn ack_message(
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

    async fn change_invisible_duration(
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

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<Result<T, Status>>,
) -> BoxStream<T> {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}
