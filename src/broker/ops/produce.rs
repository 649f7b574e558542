//! Message appends: produce (forwarded to the leader from a follower), broker-made copies of
//! stored messages, delivery times, message ids, and dead-lettering.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::forward::{Route, fwd_err};
use crate::broker::error::BrokerError;
use crate::broker::node::Node;
use crate::proto::raftmq::admin as pb;
use crate::raft::Command;
use crate::raft::consume;
use crate::raft::state_machine::{self, InternalCommand, Perm, TopicConfig, TopicMessageType};
use crate::storage::message::{self, MessageType, NewMessage};

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

impl Node {
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
        // One result per message, in request order: messages already stored first (leader
        // fast path of idempotent sends), the others once the batch is applied.
        let mut results: Vec<Option<pb::ProduceResult>> = vec![None; req.messages.len()];
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
                results[i] = Some(produce_result(message_id, place, true));
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
                let duplicate = p.duplicate;
                results[i] = Some(produce_result(message_id, p, duplicate));
            }
        }
        Ok(Ok(pb::ProduceReply {
            results: results.into_iter().flatten().collect(),
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

/// The answer for one message stored at (or, `duplicate`, found stored before at) `place`; a
/// message still waiting (delay, transaction) has no offset yet.
fn produce_result(
    message_id: String,
    place: state_machine::Place,
    duplicate: bool,
) -> pb::ProduceResult {
    let pending = place.offset == state_machine::PENDING_OFFSET;
    pb::ProduceResult {
        message_id,
        topic: place.topic,
        queue_id: place.queue,
        offset: if pending { 0 } else { place.offset },
        duplicate,
        pending,
    }
}
