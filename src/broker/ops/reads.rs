//! Reads of applied state on this node: node status, message query and trace, and queue
//! reads.

use openraft::type_config::async_runtime::watch::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};

use crate::broker::error::BrokerError;
use crate::broker::node::Node;
use crate::proto::raftmq::admin as pb;
use crate::raft::NodeId;
use crate::raft::state_machine;
use crate::storage::message::MessageType;

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

impl Node {
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
}
