//! `raftmq.admin.Admin`: status, produce/read for tests and tools, topics, offsets,
//! membership and leadership. Writes that reach a follower are forwarded to the leader.

use std::sync::{Arc, Weak};

use tonic::{Request, Response, Status};

use super::node::Node;
use crate::proto::raftmq::admin as pb;
use crate::proto::raftmq::admin::admin_server::{Admin, AdminServer};

/// The admin service of one node.
pub struct AdminService {
    node: Weak<Node>,
}

impl AdminService {
    /// A service bound to `node` (weak: the node owns the server).
    pub fn new(node: Weak<Node>) -> Self {
        AdminService { node }
    }

    /// The tonic server with raised message limits.
    pub fn into_server(self) -> AdminServer<Self> {
        AdminServer::new(self)
            .max_decoding_message_size(crate::broker::MAX_GRPC_MESSAGE)
            .max_encoding_message_size(crate::broker::MAX_GRPC_MESSAGE)
    }

    fn node(&self) -> Result<Arc<Node>, Status> {
        self.node
            .upgrade()
            .ok_or_else(|| Status::unavailable("node is shutting down"))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        Ok(Response::new(self.node()?.status()))
    }

    async fn produce(
        &self,
        req: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(node.produce(req.into_inner()).await?))
    }

    async fn read_queue(
        &self,
        req: Request<pb::ReadQueueRequest>,
    ) -> Result<Response<pb::ReadQueueReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(node.read_queue(req.into_inner())?))
    }

    async fn upsert_topic(
        &self,
        req: Request<pb::TopicConfig>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(node.upsert_topic(req.into_inner()).await?))
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(node.delete_topic(req.into_inner()).await?))
    }

    async fn list_topics(
        &self,
        _: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(node.list_topics()))
    }

    async fn commit_offset(
        &self,
        req: Request<pb::CommitOffsetRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(node.commit_offset(req.into_inner()).await?))
    }

    async fn get_offset(
        &self,
        req: Request<pb::GetOffsetRequest>,
    ) -> Result<Response<pb::GetOffsetReply>, Status> {
        let node = self.node()?;
        let r = req.into_inner();
        Ok(Response::new(pb::GetOffsetReply {
            offset: node.sm.offset(&r.group, &r.topic, r.queue_id),
        }))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(node.add_learner(req.into_inner()).await?))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(
            node.change_membership(req.into_inner()).await?,
        ))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(node.transfer_leader(req.into_inner()).await?))
    }

    async fn upsert_group(
        &self,
        req: Request<pb::GroupConfig>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(node.upsert_group(req.into_inner()).await?))
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(node.delete_group(req.into_inner()).await?))
    }

    async fn list_groups(
        &self,
        _: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(pb::ListGroupsReply {
            groups: node
                .sm
                .groups()
                .into_iter()
                .map(|g| pb::GroupConfig {
                    name: g.name,
                    max_delivery_attempts: g.max_delivery_attempts,
                    fifo: g.fifo,
                    broadcast: g.broadcast,
                    retry_backoff_ms: g.retry_backoff_ms,
                })
                .collect(),
        }))
    }

    async fn group_progress(
        &self,
        req: Request<pb::GroupProgressRequest>,
    ) -> Result<Response<pb::GroupProgressReply>, Status> {
        let node = self.node()?;
        let r = req.into_inner();
        let topic = node
            .sm
            .topic(&r.topic)
            .ok_or_else(|| Status::not_found(format!("topic `{}` does not exist", r.topic)))?;
        let queues = (0..topic.queues)
            .map(|q| {
                let (_, min, max) = node.sm.units(&r.topic, q, 0, 0);
                let st = node.sm.queue_state(&r.group, &r.topic, q);
                // A group that never consumed starts at the queue's oldest retained offset.
                let ack = st.ack_offset().max(min);
                pb::QueueProgress {
                    queue_id: q,
                    min_offset: min,
                    max_offset: max,
                    ack_offset: ack,
                    next_offset: st.next_offset.max(min),
                    inflight: st.inflight.len() as u64,
                    lag: max.saturating_sub(ack),
                }
            })
            .collect();
        Ok(Response::new(pb::GroupProgressReply { queues }))
    }

    async fn query_message(
        &self,
        req: Request<pb::QueryMessageRequest>,
    ) -> Result<Response<pb::QueryMessageReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(node.query_messages(&req.into_inner())?))
    }

    async fn trace_message(
        &self,
        req: Request<pb::QueryMessageRequest>,
    ) -> Result<Response<pb::TraceMessageReply>, Status> {
        let node = self.node()?;
        Ok(Response::new(node.trace_message(&req.into_inner())?))
    }

    async fn run_retention(
        &self,
        _: Request<pb::RetentionRequest>,
    ) -> Result<Response<pb::RetentionReply>, Status> {
        let node = self.node()?;
        let out = node.run_retention().await?;
        Ok(Response::new(pb::RetentionReply {
            segments_deleted: out.segments_deleted,
            snapshot_index: out.snapshot_index,
            first_index: node
                .log
                .first_index()
                .map_err(crate::broker::BrokerError::from)?,
        }))
    }
}
