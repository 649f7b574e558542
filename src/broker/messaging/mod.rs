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
//!
//! * **ACL** (`acl_enabled`): every RPC is authenticated and authorized here, at its entry
//!   point, before any work (see `broker::auth`); a refusal is `UNAUTHORIZED` or `FORBIDDEN`.
//!
//! Layout: this file holds the service and the RPC entry points; `forward` serves a request
//! here or forwards it to the leader, `send` produces, `receive` consumes, `telemetry` keeps
//! the clients' settings streams, and `convert` holds the protocol conversions.

mod convert;
mod forward;
mod receive;
mod send;
mod telemetry;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};

use futures::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use self::convert::ok;
use self::receive::PickLock;
use super::auth::consume_needs;
use super::error::BrokerError;
use super::node::Node;
use super::sessions::Sessions;
use crate::acl::{Action, Resource};
use crate::proto::apache::rocketmq::v2;
use crate::proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use crate::proto::apache::rocketmq::v2::messaging_service_server::{
    MessagingService, MessagingServiceServer,
};
use crate::protocol::route::{self, GroupRoute, status};

pub use self::convert::error_status;
pub(crate) use self::convert::to_v2_message;
pub use self::send::MAX_BODY_SIZE;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

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

    fn client_id<T>(req: &Request<T>) -> String {
        req.metadata()
            .get("x-mq-client-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

/// A response that carries only a refusal: the ACL check failed.
trait Refused: Default {
    fn refused(st: v2::Status) -> Self;
}

macro_rules! refused {
    ($($t:ty),*) => {$(
        impl Refused for $t {
            fn refused(st: v2::Status) -> Self {
                let mut r = Self::default();
                r.status = Some(st);
                r
            }
        }
    )*};
}

refused!(
    v2::QueryRouteResponse,
    v2::HeartbeatResponse,
    v2::NotifyClientTerminationResponse,
    v2::SendMessageResponse,
    v2::EndTransactionResponse,
    v2::QueryAssignmentResponse,
    v2::ForwardMessageToDeadLetterQueueResponse,
    v2::AckMessageResponse,
    v2::ChangeInvisibleDurationResponse
);

/// `Err(response)` when the ACL check `check` fails: the RocketMQ status (UNAUTHORIZED or
/// FORBIDDEN) inside a gRPC-OK answer, as for every other refusal.
fn guard<R: Refused>(check: Result<(), BrokerError>) -> Result<(), Response<R>> {
    check.map_err(|e| {
        tracing::info!("refused: {e}");
        Response::new(R::refused(error_status(&e)))
    })
}

/// The topics of a send, each once.
fn send_topics(r: &v2::SendMessageRequest) -> Vec<(Resource, Action)> {
    super::auth::publish_needs(
        r.messages
            .iter()
            .filter_map(|m| m.topic.as_ref().map(|t| t.name.as_str())),
    )
}

fn name(r: &Option<v2::Resource>) -> &str {
    r.as_ref().map_or("", |r| r.name.as_str())
}

#[tonic::async_trait]
impl MessagingService for MessagingSvc {
    async fn query_route(
        &self,
        req: Request<v2::QueryRouteRequest>,
    ) -> Result<Response<v2::QueryRouteResponse>, Status> {
        let node = self.node()?;
        let topic = Resource::topic(name(&req.get_ref().topic));
        if let Err(r) =
            guard(node.authorize_any(req.metadata(), &topic, &[Action::Pub, Action::Sub]))
        {
            return Ok(r);
        }
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
        if let Err(r) = guard(self.node()?.authorize(req.metadata(), &[])) {
            return Ok(r);
        }
        self.sessions.touch(&Self::client_id(&req));
        Ok(Response::new(v2::HeartbeatResponse { status: Some(ok()) }))
    }

    async fn notify_client_termination(
        &self,
        req: Request<v2::NotifyClientTerminationRequest>,
    ) -> Result<Response<v2::NotifyClientTerminationResponse>, Status> {
        if let Err(r) = guard(self.node()?.authorize(req.metadata(), &[])) {
            return Ok(r);
        }
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
        self.open_telemetry(req).await
    }

    async fn send_message(
        &self,
        req: Request<v2::SendMessageRequest>,
    ) -> Result<Response<v2::SendMessageResponse>, Status> {
        crate::hops::mark(crate::hops::Hop::SendIn, 0);
        let needs = send_topics(req.get_ref());
        if let Err(r) = guard(self.node()?.authorize(req.metadata(), &needs)) {
            return Ok(r);
        }
        self.send(req).await
    }

    async fn receive_message(
        &self,
        req: Request<v2::ReceiveMessageRequest>,
    ) -> Result<Response<BoxStream<v2::ReceiveMessageResponse>>, Status> {
        let r = req.get_ref();
        let topic = r
            .message_queue
            .as_ref()
            .map_or("", |q| name(&q.topic))
            .to_string();
        let needs = consume_needs(&topic, name(&r.group));
        if let Err(e) = self.node()?.authorize(req.metadata(), &needs) {
            tracing::info!("refused: {e}");
            return Ok(Response::new(convert::one(convert::receive_status(
                error_status(&e),
            ))));
        }
        self.receive(req).await
    }

    async fn end_transaction(
        &self,
        req: Request<v2::EndTransactionRequest>,
    ) -> Result<Response<v2::EndTransactionResponse>, Status> {
        let needs = [(Resource::topic(name(&req.get_ref().topic)), Action::Pub)];
        if let Err(r) = guard(self.node()?.authorize(req.metadata(), &needs)) {
            return Ok(r);
        }
        self.resolve_transaction(req).await
    }

    async fn query_assignment(
        &self,
        req: Request<v2::QueryAssignmentRequest>,
    ) -> Result<Response<v2::QueryAssignmentResponse>, Status> {
        let r = req.get_ref();
        let needs = consume_needs(name(&r.topic), name(&r.group));
        if let Err(r) = guard(self.node()?.authorize(req.metadata(), &needs)) {
            return Ok(r);
        }
        self.assign(req).await
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        req: Request<v2::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<v2::ForwardMessageToDeadLetterQueueResponse>, Status> {
        let r = req.get_ref();
        let needs = consume_needs(name(&r.topic), name(&r.group));
        if let Err(r) = guard(self.node()?.authorize(req.metadata(), &needs)) {
            return Ok(r);
        }
        self.to_dead_letter_queue(req).await
    }

    async fn ack_message(
        &self,
        req: Request<v2::AckMessageRequest>,
    ) -> Result<Response<v2::AckMessageResponse>, Status> {
        let r = req.get_ref();
        let needs = consume_needs(name(&r.topic), name(&r.group));
        if let Err(r) = guard(self.node()?.authorize(req.metadata(), &needs)) {
            return Ok(r);
        }
        self.ack(req).await
    }

    async fn change_invisible_duration(
        &self,
        req: Request<v2::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<v2::ChangeInvisibleDurationResponse>, Status> {
        let r = req.get_ref();
        let needs = consume_needs(name(&r.topic), name(&r.group));
        if let Err(r) = guard(self.node()?.authorize(req.metadata(), &needs)) {
            return Ok(r);
        }
        self.change_invisible(req).await
    }
}
