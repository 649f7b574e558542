//! Topic, consumer group and offset admin: validated writes through Raft (forwarded to the
//! leader from a follower) and the applied topic list.

use super::forward::Fwd;
use crate::broker::error::BrokerError;
use crate::broker::node::Node;
use crate::proto::raftmq::admin as pb;
use crate::raft::state_machine::{InternalCommand, Perm, TopicConfig, TopicMessageType};

impl Node {
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
}
