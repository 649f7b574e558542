//! `raftmq.admin.Admin`: status, produce/read for tests and tools, topics, offsets,
//! membership and leadership, users and policies. Writes that reach a follower are forwarded
//! to the leader.
//!
//! With ACL on each RPC needs an action on a resource: topics and groups `Create`/`Update`/
//! `Delete`/`Get` on `Topic:NAME`/`Group:NAME`; `produce` `Pub` and `read_queue` `Sub` on the
//! topic; listings `List` on `Cluster`; status `Get` on `Cluster`; membership, leadership
//! and retention `Update` on `Cluster`; users and policies super users only.

use std::sync::{Arc, Weak};

use tonic::{Request, Response, Status};

use super::auth::as_caller;
use super::error::BrokerError;
use super::node::Node;
use crate::acl::{AclError, Action, Principal, Resource};
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

    /// The node, once the caller may take every `(resource, action)` of `needs` (ACL on);
    /// `None` = super users only (users and policies). A caller with a certificate of the
    /// cluster CA (an operator, or a member forwarding a write) is a super user here.
    fn allowed<T>(
        &self,
        req: &Request<T>,
        needs: Option<&[(Resource, Action)]>,
    ) -> Result<Arc<Node>, Status> {
        let node = self.node()?;
        if !node.acl_enabled() {
            return Ok(node);
        }
        let p = if req.peer_certs().is_some_and(|c| !c.is_empty()) {
            Principal::cluster_member()
        } else {
            match node.principal(req.metadata()).map_err(BrokerError::from)? {
                Some(p) => p,
                None => return Ok(node),
            }
        };
        match needs {
            Some(n) => node.authorize_as(&p, n)?,
            None if !p.superuser => {
                return Err(BrokerError::Acl(AclError::Forbidden(format!(
                    "user {} is not a super user: only super users manage users and policies",
                    p.name
                )))
                .into());
            }
            None => {}
        }
        Ok(node)
    }
}

fn cluster(a: Action) -> [(Resource, Action); 1] {
    [(Resource::cluster(), a)]
}

fn topic(name: &str, a: Action) -> [(Resource, Action); 1] {
    [(Resource::topic(name), a)]
}

fn group(name: &str, a: Action) -> [(Resource, Action); 1] {
    [(Resource::group(name), a)]
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        let node = self.allowed(&req, Some(&cluster(Action::Get)))?;
        Ok(Response::new(node.status()))
    }

    async fn produce(
        &self,
        req: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceReply>, Status> {
        let needs =
            super::auth::publish_needs(req.get_ref().messages.iter().map(|m| m.topic.as_str()));
        let node = self.allowed(&req, Some(&needs))?;
        Ok(Response::new(node.produce(req.into_inner()).await?))
    }

    async fn read_queue(
        &self,
        req: Request<pb::ReadQueueRequest>,
    ) -> Result<Response<pb::ReadQueueReply>, Status> {
        let node = self.allowed(&req, Some(&topic(&req.get_ref().topic, Action::Sub)))?;
        Ok(Response::new(node.read_queue(req.into_inner())?))
    }

    async fn upsert_topic(
        &self,
        req: Request<pb::TopicConfig>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let name = &req.get_ref().name;
        let action = match self.node()?.sm.topic(name) {
            Some(_) => Action::Update,
            None => Action::Create,
        };
        let node = self.allowed(&req, Some(&topic(name, action)))?;
        let (md, _, body) = req.into_parts();
        Ok(Response::new(
            as_caller(&md, node.upsert_topic(body)).await?,
        ))
    }

    async fn delete_topic(
        &self,
        req: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.allowed(&req, Some(&topic(&req.get_ref().name, Action::Delete)))?;
        let (md, _, body) = req.into_parts();
        Ok(Response::new(
            as_caller(&md, node.delete_topic(body)).await?,
        ))
    }

    async fn list_topics(
        &self,
        req: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsReply>, Status> {
        let node = self.allowed(&req, Some(&cluster(Action::List)))?;
        Ok(Response::new(node.list_topics()))
    }

    async fn commit_offset(
        &self,
        req: Request<pb::CommitOffsetRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.allowed(&req, Some(&group(&req.get_ref().group, Action::Update)))?;
        let (md, _, body) = req.into_parts();
        Ok(Response::new(
            as_caller(&md, node.commit_offset(body)).await?,
        ))
    }

    async fn get_offset(
        &self,
        req: Request<pb::GetOffsetRequest>,
    ) -> Result<Response<pb::GetOffsetReply>, Status> {
        let node = self.allowed(&req, Some(&group(&req.get_ref().group, Action::Get)))?;
        let r = req.into_inner();
        Ok(Response::new(pb::GetOffsetReply {
            offset: node.sm.offset(&r.group, &r.topic, r.queue_id),
        }))
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.allowed(&req, Some(&cluster(Action::Update)))?;
        let (md, _, body) = req.into_parts();
        Ok(Response::new(as_caller(&md, node.add_learner(body)).await?))
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.allowed(&req, Some(&cluster(Action::Update)))?;
        let (md, _, body) = req.into_parts();
        Ok(Response::new(
            as_caller(&md, node.change_membership(body)).await?,
        ))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.allowed(&req, Some(&cluster(Action::Update)))?;
        let (md, _, body) = req.into_parts();
        Ok(Response::new(
            as_caller(&md, node.transfer_leader(body)).await?,
        ))
    }

    async fn upsert_group(
        &self,
        req: Request<pb::GroupConfig>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let name = &req.get_ref().name;
        let action = match self.node()?.sm.group_exists(name) {
            true => Action::Update,
            false => Action::Create,
        };
        let node = self.allowed(&req, Some(&group(name, action)))?;
        let (md, _, body) = req.into_parts();
        Ok(Response::new(
            as_caller(&md, node.upsert_group(body)).await?,
        ))
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.allowed(&req, Some(&group(&req.get_ref().name, Action::Delete)))?;
        let (md, _, body) = req.into_parts();
        Ok(Response::new(
            as_caller(&md, node.delete_group(body)).await?,
        ))
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsReply>, Status> {
        let node = self.allowed(&req, Some(&cluster(Action::List)))?;
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
        let r = req.get_ref();
        let needs = [
            (Resource::group(&r.group), Action::Get),
            (Resource::topic(&r.topic), Action::Get),
        ];
        let node = self.allowed(&req, Some(&needs))?;
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
        let node = self.allowed(&req, Some(&topic(&req.get_ref().topic, Action::Get)))?;
        Ok(Response::new(node.query_messages(&req.into_inner())?))
    }

    async fn trace_message(
        &self,
        req: Request<pb::QueryMessageRequest>,
    ) -> Result<Response<pb::TraceMessageReply>, Status> {
        let node = self.allowed(&req, Some(&topic(&req.get_ref().topic, Action::Get)))?;
        Ok(Response::new(node.trace_message(&req.into_inner())?))
    }

    async fn run_retention(
        &self,
        req: Request<pb::RetentionRequest>,
    ) -> Result<Response<pb::RetentionReply>, Status> {
        let node = self.allowed(&req, Some(&cluster(Action::Update)))?;
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

    async fn change_acl(
        &self,
        req: Request<pb::AclChange>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = self.allowed(&req, None)?;
        let (md, _, body) = req.into_parts();
        Ok(Response::new(as_caller(&md, node.change_acl(body)).await?))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersReply>, Status> {
        Ok(Response::new(self.allowed(&req, None)?.list_users()))
    }

    async fn list_acls(
        &self,
        req: Request<pb::ListAclsRequest>,
    ) -> Result<Response<pb::ListAclsReply>, Status> {
        let node = self.allowed(&req, None)?;
        Ok(Response::new(node.list_acls(req.get_ref())))
    }
}
