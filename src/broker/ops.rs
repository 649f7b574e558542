//! What a node does for each admin request: local Raft writes on the leader, forwarding from
//! followers, and reads of applied state.

use openraft::type_config::async_runtime::watch::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use openraft::BasicNode;
use openraft::error::{ClientWriteError, RaftError};
use tonic::transport::Channel;

use super::error::BrokerError;
use super::node::Node;
use crate::proto::raftmq::admin as pb;
use crate::proto::raftmq::admin::admin_client::AdminClient;
use crate::raft::consume;
use crate::raft::state_machine::{self, InternalCommand, Perm, TopicConfig, TopicMessageType};
use crate::raft::{Command, CommandResponse, NodeId, TypeConfig};
use crate::storage::message::{self, MessageType, NewMessage};

/// Cached clients to other nodes' admin services, for forwarding.
#[derive(Default)]
pub struct Forwarder {
    clients: std::sync::Mutex<HashMap<String, AdminClient<Channel>>>,
    round_robin: AtomicU64,
    id_seq: AtomicU64,
}

impl Forwarder {
    fn client(
        &self,
        addr: &str,
        tls: Option<&crate::tls::TlsSettings>,
    ) -> Result<AdminClient<Channel>, BrokerError> {
        let mut g = self
            .clients
            .lock()
            .map_err(|_| BrokerError::Internal("forwarder lock poisoned".into()))?;
        if let Some(c) = g.get(addr) {
            return Ok(c.clone());
        }
        let ep = crate::tls::endpoint(addr, tls)
            .map_err(|e| BrokerError::Config(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(30));
        let c = AdminClient::new(ep.connect_lazy())
            .max_decoding_message_size(super::MAX_GRPC_MESSAGE)
            .max_encoding_message_size(super::MAX_GRPC_MESSAGE);
        g.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// The original request of an internal write, kept to forward it unchanged.
pub(crate) enum Fwd {
    Upsert(pb::TopicConfig),
    UpsertGroup(pb::GroupConfig),
    DeleteGroup(pb::DeleteGroupRequest),
    Delete(pb::DeleteTopicRequest),
    Offset(pb::CommitOffsetRequest),
    Acl(pb::AclChange),
}

/// Where a write must go.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// This node leads.
    Local,
    /// Another node leads: (id, address).
    Leader(NodeId, String),
}

type WriteError = RaftError<TypeConfig, ClientWriteError<TypeConfig>>;

/// Most log entries a message trace scans for deliveries and acks.
const TRACE_SCAN_LIMIT: u64 = 1_000_000;

fn stored_message(f: &state_machine::FoundMessage) -> pb::StoredMessage {
    let v = &f.message;
    pb::StoredMessage {
        topic: v.topic.to_string(),
        queue_id: v.queue_id,
        queue_offset: f.queue_offset.map_or(-1, |o| o as i64),
        message_id: v.message_id.to_string(),
        tag: v.tag.to_string(),
        keys: v.keys.iter().map(|k| k.to_string()).collect(),
        properties: v
            .properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: v.body.clone(),
        born_timestamp_ms: v.born_timestamp_ms,
        store_timestamp_ms: v.store_timestamp_ms,
        delivery_timestamp_ms: v.delivery_timestamp_ms,
        message_group: v.message_group.to_string(),
        commitlog_position: f.pos,
        message_type: match v.msg_type {
            MessageType::Normal => "normal",
            MessageType::Fifo => "fifo",
            MessageType::Delay => "delay",
            MessageType::TransactionHalf | MessageType::TransactionCommitted => "transaction",
        }
        .to_string(),
        born_host: v.born_host.to_string(),
    }
}

/// RocketMQ 4's delay-level property (`MessageConst.PROPERTY_DELAY_TIME_LEVEL`).
pub const DELAY_LEVEL_PROPERTY: &str = "DELAY";

/// RocketMQ 4's default delay levels 1..=18: 1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m
/// 20m 30m 1h 2h, in ms.
pub const DELAY_LEVELS_MS: [i64; 18] = [
    1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000,
    480_000, 540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
];

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn fwd_err(leader: NodeId, addr: &str, s: tonic::Status) -> BrokerError {
    match s.code() {
        // The leader's own answer (bad request, unknown topic ...) is passed through as is.
        tonic::Code::InvalidArgument => BrokerError::BadRequest(s.message().to_string()),
        // ACL answers keep their kind (their messages carry the kind's prefix).
        tonic::Code::NotFound => match s.message().strip_prefix("not found: ") {
            Some(m) => BrokerError::Acl(crate::acl::AclError::NotFound(m.to_string())),
            None => BrokerError::TopicNotFound(s.message().to_string()),
        },
        tonic::Code::AlreadyExists => BrokerError::Acl(crate::acl::AclError::Conflict(
            s.message().trim_start_matches("exists: ").to_string(),
        )),
        tonic::Code::PermissionDenied => BrokerError::Acl(crate::acl::AclError::Forbidden(
            s.message().trim_start_matches("forbidden: ").to_string(),
        )),
        tonic::Code::Unauthenticated => BrokerError::Acl(crate::acl::AclError::Unauthenticated(
            s.message().trim_start_matches("unauthorized: ").to_string(),
        )),
        _ => BrokerError::Forward {
            leader,
            addr: addr.to_string(),
            reason: s.message().to_string(),
        },
    }
}

impl Node {
    pub(crate) fn route(&self) -> Result<Route, BrokerError> {
        let m = self.raft.metrics().borrow_watched().clone();
        match m.current_leader {
            Some(id) if id == self.config.node_id => Ok(Route::Local),
            Some(id) => {
                let addr = m
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
                    .ok_or_else(|| BrokerError::NoLeader(self.config.group.clone()))?;
                Ok(Route::Leader(id, addr))
            }
            None => Err(BrokerError::NoLeader(self.config.group.clone())),
        }
    }

    /// Propose a command on this node (which must be the leader).
    ///
    /// A successful write is timed from proposal to applied (when `client_write` returns) into
    /// `raftmq_append_latency_seconds{command="messages"|"internal"}`; failed writes are not.
    pub(crate) async fn write_local(
        &self,
        cmd: Command,
    ) -> Result<Result<CommandResponse, Route>, BrokerError> {
        let command = if cmd.kind == crate::storage::record::RecordKind::MESSAGE_BATCH.0 {
            "messages"
        } else {
            "internal"
        };
        let started = std::time::Instant::now();
        match self.raft.client_write(cmd).await {
            Ok(r) => {
                metrics::histogram!(super::http::APPEND_LATENCY, "command" => command)
                    .record(started.elapsed().as_secs_f64());
                Ok(Ok(r.data))
            }
            Err(e) => self.write_error(e).map(Err),
        }
    }

    fn write_error(&self, e: WriteError) -> Result<Route, BrokerError> {
        if let Some(f) = e.forward_to_leader() {
            return match (f.leader_id, &f.leader_node) {
                (Some(id), Some(n)) if id != self.config.node_id => {
                    Ok(Route::Leader(id, n.addr.clone()))
                }
                _ => Err(BrokerError::NoLeader(self.config.group.clone())),
            };
        }
        Err(BrokerError::Raft(e.to_string()))
    }

    async fn write_internal(
        &self,
        cmd: InternalCommand,
    ) -> Result<Result<CommandResponse, Route>, BrokerError> {
        let bytes = serde_json::to_vec(&cmd).map_err(|e| BrokerError::Internal(e.to_string()))?;
        self.write_local(Command {
            kind: state_machine::INTERNAL_JSON_KIND,
            data: Bytes::from(bytes),
        })
        .await
    }

    /// Propose an internal command on this node, which must lead (callers forward whole
    /// requests to the leader first).
    pub(crate) async fn propose(
        &self,
        cmd: InternalCommand,
    ) -> Result<CommandResponse, BrokerError> {
        match self.write_internal(cmd).await? {
            Ok(r) => Ok(r),
            Err(_) => Err(BrokerError::NoLeader(self.config.group.clone())),
        }
    }

    /// This node's status.
    pub fn status(&self) -> pb::NodeStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let role = if m.state.is_leader() {
            "leader"
        } else if m.state.is_candidate() {
            "candidate"
        } else if m.state.is_follower() {
            "follower"
        } else if m.state.is_learner() {
            "learner"
        } else {
            "shutdown"
        };
        let leader_addr = m
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|n| n.addr.clone()))
            .unwrap_or_default();
        let (oldest, write_pos) = self.log_positions();
        pb::NodeStatus {
            node_id: self.config.node_id,
            group: self.config.group.clone(),
            role: role.to_string(),
            term: m.current_term,
            leader_id: m.current_leader,
            leader_addr,
            last_log_index: m.last_log_index,
            committed: m.cluster_committed.or(m.local_committed).map(|l| l.index),
            applied: m.last_applied.map(|l| l.index),
            first_index: self.log.first_index().unwrap_or(0),
            voters: voters.into_iter().collect(),
            learners,
            oldest_position: oldest,
            write_position: write_pos,
            snapshot_index: m.snapshot.map(|l| l.index),
            version: env!("CARGO_PKG_VERSION").to_string(),
            poisoned: self.log.poisoned().unwrap_or_default(),
            topics: self.sm.topics().len() as u64,
        }
    }

    fn log_positions(&self) -> (u64, u64) {
        let oldest = self
            .log
            .segment_files()
            .ok()
            .and_then(|v| v.first().map(|(b, _)| *b))
            .unwrap_or(0);
        (oldest, self.log.write_pos().unwrap_or(0))
    }

    /// Append messages through Raft (forwarded to the leader from a follower).
    pub async fn produce(&self, req: pb::ProduceRequest) -> Result<pb::ProduceReply, BrokerError> {
        if req.messages.is_empty() {
            return Err(BrokerError::BadRequest("empty batch".into()));
        }
        let route = match self.route()? {
            Route::Local => match self.produce_local(&req).await? {
                Ok(reply) => return Ok(reply),
                Err(route) => route,
            },
            r => r,
        };
        let Route::Leader(id, addr) = route else {
            return Err(BrokerError::NoLeader(self.config.group.clone()));
        };
        let mut c = self.forwarder.client(&addr, self.config.tls.as_ref())?;
        c.produce(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| fwd_err(id, &addr, s))
    }

    async fn produce_local(
        &self,
        req: &pb::ProduceRequest,
    ) -> Result<Result<pb::ProduceReply, Route>, BrokerError> {
        let now = now_ms();
        let mut msgs = Vec::with_capacity(req.messages.len());
        // Results for messages already stored (leader fast path of idempotent sends).
        let mut dups: BTreeMap<usize, pb::ProduceResult> = BTreeMap::new();
        for (i, m) in req.messages.iter().enumerate() {
            let topic = self
                .sm
                .topic(&m.topic)
                .ok_or_else(|| BrokerError::TopicNotFound(m.topic.clone()))?;
            if !topic.perm.writable() {
                return Err(BrokerError::Forbidden(m.topic.clone(), "writable"));
            }
            let message_id = if m.message_id.is_empty() {
                self.new_message_id()
            } else {
                m.message_id.clone()
            };
            if let Some(place) = self.sm.find_duplicate(&m.topic, &message_id) {
                dups.insert(
                    i,
                    pb::ProduceResult {
                        message_id,
                        topic: place.topic,
                        queue_id: place.queue,
                        offset: if place.offset == state_machine::PENDING_OFFSET {
                            0
                        } else {
                            place.offset
                        },
                        duplicate: true,
                        pending: place.offset == state_machine::PENDING_OFFSET,
                    },
                );
                continue;
            }
            let queue_id = if m.queue_id >= 0 {
                let q = m.queue_id as u32;
                if q >= topic.queues {
                    return Err(BrokerError::BadRequest(format!(
                        "queue {q} out of range: topic `{}` has {} queues",
                        topic.name, topic.queues
                    )));
                }
                q
            } else if !m.message_group.is_empty() {
                // Same message group → same queue, so FIFO order is one queue's order.
                (crc32c::crc32c(m.message_group.as_bytes()) % topic.queues.max(1)) as u32
            } else {
                (self.forwarder.round_robin.fetch_add(1, Ordering::Relaxed)
                    % topic.queues.max(1) as u64) as u32
            };
            let delivery = self.delivery_time(m, now)?.unwrap_or_default();
            let msg_type = if m.transaction {
                MessageType::TransactionHalf
            } else if delivery > 0 {
                MessageType::Delay
            } else {
                match topic.message_type {
                    TopicMessageType::Fifo => MessageType::Fifo,
                    _ if !m.message_group.is_empty() => MessageType::Fifo,
                    _ => MessageType::Normal,
                }
            };
            if msg_type == MessageType::Fifo && m.message_group.is_empty() {
                return Err(BrokerError::BadRequest(format!(
                    "topic `{}` is FIFO: messages need a message group",
                    topic.name
                )));
            }
            msgs.push((
                i,
                NewMessage {
                    msg_type,
                    queue_id,
                    born_timestamp_ms: if m.born_timestamp_ms > 0 {
                        m.born_timestamp_ms
                    } else {
                        now
                    },
                    store_timestamp_ms: now,
                    delivery_timestamp_ms: delivery,
                    topic: m.topic.clone(),
                    message_id,
                    tag: m.tag.clone(),
                    message_group: m.message_group.clone(),
                    keys: m.keys.clone(),
                    properties: m
                        .properties
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    born_host: String::new(),
                    body: m.body.clone(),
                },
            ));
        }
        let mut raft_index = 0;
        let mut stored: BTreeMap<usize, pb::ProduceResult> = BTreeMap::new();
        if !msgs.is_empty() {
            // The batch takes the messages; only their ids stay for the results.
            let (ids, batch): (Vec<(usize, String)>, Vec<NewMessage>) = msgs
                .into_iter()
                .map(|(i, m)| ((i, m.message_id.clone()), m))
                .unzip();
            // Concurrent requests share Raft entries (see `batcher`).
            let Some(batcher) = self.batcher.get() else {
                return Err(BrokerError::Internal(
                    "the batch writer is not running".into(),
                ));
            };
            let (index, places) = match batcher.write(batch).await? {
                Ok(r) => r,
                Err(route) => return Ok(Err(route)),
            };
            raft_index = index;
            if places.len() != ids.len() {
                return Err(BrokerError::Internal(
                    "apply result does not match the batch".into(),
                ));
            }
            for ((i, message_id), p) in ids.into_iter().zip(places) {
                stored.insert(
                    i,
                    pb::ProduceResult {
                        message_id,
                        topic: p.topic,
                        queue_id: p.queue,
                        offset: if p.offset == state_machine::PENDING_OFFSET {
                            0
                        } else {
                            p.offset
                        },
                        duplicate: p.duplicate,
                        pending: p.offset == state_machine::PENDING_OFFSET,
                    },
                );
            }
        }
        stored.extend(dups);
        Ok(Ok(pb::ProduceReply {
            results: stored.into_values().collect(),
            raft_index,
        }))
    }

    /// Append broker-made copies of stored messages (fired delay messages, committed
    /// transaction messages) on this node, which must lead. Returns where each ended up; a
    /// copy that apply dropped (fired or resolved before) comes back as a duplicate.
    pub(crate) async fn write_copies(
        &self,
        msgs: &[NewMessage],
    ) -> Result<Vec<state_machine::Place>, BrokerError> {
        let payload =
            message::encode_batch(msgs).map_err(|e| BrokerError::Internal(e.to_string()))?;
        let resp = match self
            .write_local(Command::messages(Bytes::from(payload)))
            .await?
        {
            Ok(r) => r,
            Err(_) => return Err(BrokerError::NoLeader(self.config.group.clone())),
        };
        let places = state_machine::decode_batch_result(&resp.data)
            .map_err(|e| BrokerError::Internal(format!("bad apply result: {e}")))?;
        if places.len() != msgs.len() {
            return Err(BrokerError::Internal(
                "apply result does not match the batch".into(),
            ));
        }
        Ok(places)
    }

    /// The delivery time of a message (ms), from its delivery timestamp or a RocketMQ 4 `DELAY`
    /// level property; `None` for an immediate message. A time beyond `max_delay` is refused.
    fn delivery_time(&self, m: &pb::ProduceMessage, now: i64) -> Result<Option<i64>, BrokerError> {
        let at = if m.delivery_timestamp_ms > 0 {
            m.delivery_timestamp_ms
        } else if let Some(level) = m.properties.get(DELAY_LEVEL_PROPERTY) {
            let ms = level
                .trim()
                .parse::<usize>()
                .ok()
                .and_then(|l| l.checked_sub(1))
                .and_then(|i| DELAY_LEVELS_MS.get(i))
                .ok_or_else(|| {
                    BrokerError::IllegalDeliveryTime(format!(
                        "`{DELAY_LEVEL_PROPERTY}` must be a delay level 1..=18, not `{level}`"
                    ))
                })?;
            now + ms
        } else {
            return Ok(None);
        };
        let max = self.config.max_delay.as_millis() as i64;
        if at - now > max {
            return Err(BrokerError::IllegalDeliveryTime(format!(
                "delivery time {at} is {} ms ahead; the maximum delay is {} ms",
                at - now,
                max
            )));
        }
        Ok(Some(at))
    }

    fn new_message_id(&self) -> String {
        let seq = self.forwarder.id_seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:04X}{:012X}{:08X}",
            self.config.node_id & 0xffff,
            now_ms(),
            seq & 0xffff_ffff
        )
    }

    /// Messages by id or key (`QueryMessage`), as applied on this node.
    pub fn query_messages(
        &self,
        r: &pb::QueryMessageRequest,
    ) -> Result<pb::QueryMessageReply, BrokerError> {
        let key = match (r.message_id.is_empty(), r.key.is_empty()) {
            (false, true) => &r.message_id,
            (true, false) => &r.key,
            _ => {
                return Err(BrokerError::BadRequest(
                    "give exactly one of message id and key".into(),
                ));
            }
        };
        if self.sm.topic(&r.topic).is_none() {
            return Err(BrokerError::TopicNotFound(r.topic.clone()));
        }
        let max = if r.max == 0 { 32 } else { r.max.min(1000) } as usize;
        let mut found = self.sm.find_messages(&r.topic, key, max)?;
        // A delay or transactional message is stored twice: the waiting original and the
        // copy that entered its queue. Show one per id: the queued copy once it exists.
        let queued: BTreeSet<String> = found
            .iter()
            .filter(|f| f.queue_offset.is_some())
            .map(|f| f.message.message_id.to_string())
            .collect();
        let mut seen = BTreeSet::new();
        found.retain(|f| {
            let id = f.message.message_id.to_string();
            (f.queue_offset.is_some() || !queued.contains(&id)) && seen.insert(id)
        });
        Ok(pb::QueryMessageReply {
            messages: found
                .into_iter()
                // By id: only the message itself, not others that carry it as a key.
                .filter(|f| r.message_id.is_empty() || f.message.message_id.as_str() == key)
                .map(|f| stored_message(&f))
                .collect(),
        })
    }

    /// One message's trace (`TraceMessage`): where it was stored, and every delivery and
    /// ack per group from the log.
    pub fn trace_message(
        &self,
        r: &pb::QueryMessageRequest,
    ) -> Result<pb::TraceMessageReply, BrokerError> {
        if r.message_id.is_empty() {
            return Err(BrokerError::BadRequest("a message id is required".into()));
        }
        let found = self.sm.find_messages(&r.topic, &r.message_id, 8)?;
        let Some(f) = found
            .into_iter()
            .find(|f| f.message.message_id.as_str() == r.message_id)
        else {
            return Err(BrokerError::BadRequest(format!(
                "no message {} in topic `{}` on this node",
                r.message_id, r.topic
            )));
        };
        let (raft_index, term, leader_node) = self.sm.record_of(f.pos)?.unwrap_or((0, 0, 0));
        let mut groups: BTreeMap<String, pb::GroupTrace> = BTreeMap::new();
        let mut scanned = raft_index;
        if let Some(offset) = f.queue_offset {
            let (events, last) = self.sm.consume_history(
                &r.topic,
                f.message.queue_id,
                offset,
                raft_index + 1,
                TRACE_SCAN_LIMIT,
            )?;
            scanned = last;
            for e in events {
                match e {
                    state_machine::ConsumeEvent::Delivered {
                        group,
                        attempt,
                        at_ms,
                        invisible_until_ms,
                        raft_index,
                    } => {
                        let g = groups
                            .entry(group.clone())
                            .or_insert_with(|| pb::GroupTrace {
                                group,
                                ..Default::default()
                            });
                        g.deliveries.push(pb::TraceDelivery {
                            attempt,
                            at_ms,
                            invisible_until_ms,
                            raft_index,
                        });
                    }
                    state_machine::ConsumeEvent::Acked { group, raft_index } => {
                        let g = groups
                            .entry(group.clone())
                            .or_insert_with(|| pb::GroupTrace {
                                group,
                                ..Default::default()
                            });
                        g.acked = true;
                        g.acked_at_index = raft_index;
                    }
                }
            }
        }
        Ok(pb::TraceMessageReply {
            message: Some(stored_message(&f)),
            raft_index,
            term,
            leader_node,
            answered_by: self.config.node_id,
            groups: groups.into_values().collect(),
            scanned_to_index: scanned,
        })
    }

    /// Read applied messages of one queue from this node.
    pub fn read_queue(&self, req: pb::ReadQueueRequest) -> Result<pb::ReadQueueReply, BrokerError> {
        let max = req.max.clamp(1, 10_000) as usize;
        let (msgs, min, max_off) = self
            .sm
            .read_queue(&req.topic, req.queue_id, req.offset, max)?;
        Ok(pb::ReadQueueReply {
            messages: msgs
                .into_iter()
                .map(|(offset, pos, v)| pb::QueueMessage {
                    offset,
                    message_id: v.message_id.to_string(),
                    tag: v.tag.to_string(),
                    keys: v.keys.iter().map(|k| k.to_string()).collect(),
                    properties: v
                        .properties
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    body: v.body.clone(),
                    commitlog_position: pos,
                    store_timestamp_ms: v.store_timestamp_ms,
                    message_group: v.message_group.to_string(),
                })
                .collect(),
            min_offset: min,
            max_offset: max_off,
        })
    }

    async fn forwarded<T, F, Fut>(&self, id: NodeId, addr: String, f: F) -> Result<T, BrokerError>
    where
        F: FnOnce(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let c = self.forwarder.client(&addr, self.config.tls.as_ref())?;
        f(c).await
            .map(|r| r.into_inner())
            .map_err(|s| fwd_err(id, &addr, s))
    }

    pub(crate) async fn internal(
        &self,
        cmd: InternalCommand,
        fwd: Fwd,
    ) -> Result<pb::AdminReply, BrokerError> {
        let route = match self.route()? {
            Route::Local => match self.write_internal(cmd).await? {
                Ok(r) => {
                    return Ok(pb::AdminReply {
                        raft_index: r.index,
                        message: String::from_utf8_lossy(&r.data).into_owned(),
                    });
                }
                Err(route) => route,
            },
            r => r,
        };
        let Route::Leader(id, addr) = route else {
            return Err(BrokerError::NoLeader(self.config.group.clone()));
        };
        match fwd {
            Fwd::Upsert(t) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.upsert_topic(super::auth::signed(t)).await
                })
                .await
            }
            Fwd::Delete(d) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.delete_topic(super::auth::signed(d)).await
                })
                .await
            }
            Fwd::UpsertGroup(g) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.upsert_group(super::auth::signed(g)).await
                })
                .await
            }
            Fwd::DeleteGroup(g) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.delete_group(super::auth::signed(g)).await
                })
                .await
            }
            Fwd::Offset(o) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.commit_offset(super::auth::signed(o)).await
                })
                .await
            }
            Fwd::Acl(a) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.change_acl(super::auth::signed(a)).await
                })
                .await
            }
        }
    }

    /// Create or update a topic.
    pub async fn upsert_topic(&self, t: pb::TopicConfig) -> Result<pb::AdminReply, BrokerError> {
        let topic = TopicConfig {
            name: t.name.clone(),
            queues: t.queues,
            perm: if t.perm.is_empty() {
                Perm::ReadWrite
            } else {
                t.perm.parse().map_err(BrokerError::BadRequest)?
            },
            message_type: if t.message_type.is_empty() {
                TopicMessageType::Normal
            } else {
                t.message_type.parse().map_err(BrokerError::BadRequest)?
            },
        };
        topic.validate().map_err(BrokerError::BadRequest)?;
        self.internal(InternalCommand::UpsertTopic { topic }, Fwd::Upsert(t))
            .await
    }

    /// Delete a topic.
    pub async fn delete_topic(
        &self,
        d: pb::DeleteTopicRequest,
    ) -> Result<pb::AdminReply, BrokerError> {
        if self.sm.topic(&d.name).is_none() {
            return Err(BrokerError::TopicNotFound(d.name));
        }
        self.internal(
            InternalCommand::DeleteTopic {
                name: d.name.clone(),
            },
            Fwd::Delete(d),
        )
        .await
    }

    /// Topics as applied here.
    pub fn list_topics(&self) -> pb::ListTopicsReply {
        pb::ListTopicsReply {
            topics: self
                .sm
                .topics()
                .into_iter()
                .map(|t| pb::TopicConfig {
                    name: t.name,
                    queues: t.queues,
                    perm: t.perm.to_string(),
                    message_type: t.message_type.to_string(),
                })
                .collect(),
        }
    }

    /// Create or update a consumer group.
    pub async fn upsert_group(&self, g: pb::GroupConfig) -> Result<pb::AdminReply, BrokerError> {
        if g.name.is_empty() || g.name.len() > 255 || g.name.contains(['\0', '/', '@']) {
            return Err(BrokerError::BadRequest(format!(
                "bad group name `{}`",
                g.name
            )));
        }
        let mut cfg = crate::raft::consume::GroupConfig::default_for(&g.name);
        if g.max_delivery_attempts > 0 {
            cfg.max_delivery_attempts = g.max_delivery_attempts;
        }
        cfg.fifo = g.fifo;
        cfg.broadcast = g.broadcast;
        if !g.retry_backoff_ms.is_empty() {
            if g.retry_backoff_ms.len() > 64 || g.retry_backoff_ms.iter().any(|&d| d < 1000) {
                return Err(BrokerError::BadRequest(
                    "retry backoff: 1..=64 delays of at least 1s each (clients read whole seconds)"
                        .into(),
                ));
            }
            cfg.retry_backoff_ms = g.retry_backoff_ms.clone();
        }
        self.internal(
            InternalCommand::UpsertGroup { group: cfg },
            Fwd::UpsertGroup(g),
        )
        .await
    }

    /// Delete a consumer group.
    pub async fn delete_group(
        &self,
        g: pb::DeleteGroupRequest,
    ) -> Result<pb::AdminReply, BrokerError> {
        self.internal(
            InternalCommand::DeleteGroup {
                name: g.name.clone(),
            },
            Fwd::DeleteGroup(g),
        )
        .await
    }

    /// Commit a consumer group offset.
    pub async fn commit_offset(
        &self,
        o: pb::CommitOffsetRequest,
    ) -> Result<pb::AdminReply, BrokerError> {
        if o.group.is_empty() {
            return Err(BrokerError::BadRequest("group must not be empty".into()));
        }
        let cmd = InternalCommand::CommitOffset {
            group: o.group.clone(),
            topic: o.topic.clone(),
            queue: o.queue_id,
            offset: o.offset,
        };
        self.internal(cmd, Fwd::Offset(o)).await
    }

    /// Add a learner (forwarded to the leader). Blocks until it has caught up.
    pub async fn add_learner(
        &self,
        r: pb::AddLearnerRequest,
    ) -> Result<pb::AdminReply, BrokerError> {
        match self.route()? {
            Route::Leader(id, addr) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.add_learner(super::auth::signed(r)).await
                })
                .await
            }
            Route::Local => {
                let out = self
                    .raft
                    .add_learner(
                        r.node_id,
                        BasicNode {
                            addr: r.addr.clone(),
                        },
                        true,
                    )
                    .await
                    .map_err(|e| BrokerError::Raft(e.to_string()))?;
                Ok(pb::AdminReply {
                    raft_index: out.log_id.index,
                    message: format!("node {} added as learner", r.node_id),
                })
            }
        }
    }

    /// Replace the voter set (forwarded to the leader).
    pub async fn change_membership(
        &self,
        r: pb::ChangeMembershipRequest,
    ) -> Result<pb::AdminReply, BrokerError> {
        if r.voters.is_empty() {
            return Err(BrokerError::BadRequest("voters must not be empty".into()));
        }
        match self.route()? {
            Route::Leader(id, addr) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.change_membership(super::auth::signed(r)).await
                })
                .await
            }
            Route::Local => {
                let voters: BTreeSet<NodeId> = r.voters.iter().copied().collect();
                let out = self
                    .raft
                    .change_membership(voters, false)
                    .await
                    .map_err(|e| BrokerError::Raft(e.to_string()))?;
                Ok(pb::AdminReply {
                    raft_index: out.log_id.index,
                    message: format!("voters are now {:?}", r.voters),
                })
            }
        }
    }

    /// Move leadership to `to` (forwarded to the leader).
    pub async fn transfer_leader(
        &self,
        r: pb::TransferLeaderRequest,
    ) -> Result<pb::AdminReply, BrokerError> {
        match self.route()? {
            Route::Leader(id, addr) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.transfer_leader(super::auth::signed(r)).await
                })
                .await
            }
            Route::Local => {
                let m = self.raft.metrics().borrow_watched().clone();
                if !m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == r.to)
                {
                    return Err(BrokerError::BadRequest(format!(
                        "node {} is not a voter",
                        r.to
                    )));
                }
                self.raft
                    .trigger()
                    .transfer_leader(r.to)
                    .await
                    .map_err(|e| BrokerError::Raft(e.to_string()))?;
                Ok(pb::AdminReply {
                    raft_index: 0,
                    message: format!("leadership transfer to {} started", r.to),
                })
            }
        }
    }

    /// Copy an exhausted message to the group's dead-letter topic, then ack it.
    pub(crate) async fn dead_letter(
        &self,
        group: &str,
        topic: &str,
        queue: u32,
        offset: u64,
        seq: u64,
    ) -> Result<(), BrokerError> {
        let dlq = consume::dlq_topic(consume::group_of_key(group));
        if self.sm.topic(&dlq).is_none() {
            self.propose(InternalCommand::UpsertTopic {
                topic: TopicConfig {
                    name: dlq.clone(),
                    queues: 1,
                    perm: Perm::ReadWrite,
                    message_type: TopicMessageType::Normal,
                },
            })
            .await?;
        }
        let (units, _, _) = self.sm.units(topic, queue, offset, 1);
        if let Some(u) = units.first() {
            let m = self.sm.message_at(u.pos, u.size)?;
            let mut props: HashMap<String, String> = m
                .properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            props.insert("ORIGIN_TOPIC".into(), topic.to_string());
            props.insert("ORIGIN_QUEUE_OFFSET".into(), format!("{queue}:{offset}"));
            self.produce(pb::ProduceRequest {
                messages: vec![pb::ProduceMessage {
                    topic: dlq,
                    queue_id: 0,
                    message_id: m.message_id.to_string(),
                    tag: m.tag.to_string(),
                    keys: m.keys.iter().map(|k| k.to_string()).collect(),
                    properties: props,
                    body: m.body.clone(),
                    message_group: String::new(),
                    born_timestamp_ms: m.born_timestamp_ms,
                    ..Default::default()
                }],
            })
            .await?;
        }
        self.propose(InternalCommand::Ack {
            group: group.to_string(),
            topic: topic.to_string(),
            queue,
            offset,
            seq,
        })
        .await?;
        Ok(())
    }
}
