//! The nameserver's two gRPC services on one port: `raftmq.nameserver.Nameserver` (broker
//! heartbeats, routes and groups for tools) and `apache.rocketmq.v2.MessagingService` (the
//! access-point subset RocketMQ clients send to a nameserver: `QueryRoute`, `Heartbeat`,
//! `Telemetry`, `NotifyClientTermination`; every other RPC answers `UNIMPLEMENTED`, clients
//! send those to the brokers named in the route).

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::registry::Registry;
use crate::proto::apache::rocketmq::v2 as api;
use crate::proto::apache::rocketmq::v2::messaging_service_server::MessagingService;
use crate::proto::raftmq::nameserver as pb;
use crate::proto::raftmq::nameserver::nameserver_server::Nameserver;
use crate::protocol::route::{self, query_route_response};
use crate::protocol::settings::settings_reply;

/// `raftmq.nameserver.Nameserver` over a [`Registry`].
pub struct RegistryService {
    registry: Arc<Registry>,
}

impl RegistryService {
    /// A service over `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        RegistryService { registry }
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[tonic::async_trait]
impl Nameserver for RegistryService {
    async fn heartbeat(
        &self,
        req: Request<pb::NodeReport>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        self.registry.heartbeat(req.into_inner())?;
        let timeout = self.registry.node_timeout();
        Ok(Response::new(pb::HeartbeatReply {
            node_timeout_ms: ms(timeout),
            heartbeat_interval_ms: ms(timeout / 3).max(1),
        }))
    }

    async fn get_routes(
        &self,
        req: Request<pb::GetRoutesRequest>,
    ) -> Result<Response<pb::GetRoutesReply>, Status> {
        Ok(Response::new(pb::GetRoutesReply {
            routes: self.registry.routes(&req.into_inner().topics),
        }))
    }

    async fn list_groups(
        &self,
        _: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsReply>, Status> {
        Ok(Response::new(pb::ListGroupsReply {
            groups: self
                .registry
                .groups()
                .iter()
                .map(|g| g.to_proto())
                .collect(),
            node_timeout_ms: ms(self.registry.node_timeout()),
        }))
    }
}

/// The access-point part of `apache.rocketmq.v2.MessagingService`, answered from a
/// [`Registry`].
pub struct AccessPointService {
    registry: Arc<Registry>,
    shutdown: watch::Receiver<bool>,
}

impl AccessPointService {
    /// A service over `registry`; its `Telemetry` streams end when `shutdown` turns true (so
    /// a graceful server shutdown does not wait for clients to close them).
    pub fn new(registry: Arc<Registry>, shutdown: watch::Receiver<bool>) -> Self {
        AccessPointService { registry, shutdown }
    }
}

/// `OK` status.
fn ok() -> Option<api::Status> {
    Some(route::status(api::Code::Ok, "OK"))
}

#[tonic::async_trait]
impl MessagingService for AccessPointService {
    async fn query_route(
        &self,
        req: Request<api::QueryRouteRequest>,
    ) -> Result<Response<api::QueryRouteResponse>, Status> {
        let req = req.into_inner();
        let Some(topic) = req.topic.filter(|t| !t.name.is_empty()) else {
            return Ok(Response::new(api::QueryRouteResponse {
                status: Some(route::status(
                    api::Code::IllegalTopic,
                    "topic must not be empty",
                )),
                message_queues: Vec::new(),
            }));
        };
        let groups = self.registry.group_routes(&topic.name);
        Ok(Response::new(query_route_response(&topic, &groups)))
    }

    async fn heartbeat(
        &self,
        _: Request<api::HeartbeatRequest>,
    ) -> Result<Response<api::HeartbeatResponse>, Status> {
        Ok(Response::new(api::HeartbeatResponse { status: ok() }))
    }

    async fn notify_client_termination(
        &self,
        _: Request<api::NotifyClientTerminationRequest>,
    ) -> Result<Response<api::NotifyClientTerminationResponse>, Status> {
        Ok(Response::new(api::NotifyClientTerminationResponse {
            status: ok(),
        }))
    }

    async fn telemetry(
        &self,
        req: Request<Streaming<api::TelemetryCommand>>,
    ) -> Result<Response<tonic::codegen::BoxStream<api::TelemetryCommand>>, Status> {
        let inbound = req.into_inner();
        let mut shutdown = self.shutdown.clone();
        // One reply per settings command, at once; other client commands need no answer. The
        // stream stays open until the client closes its side.
        let out = inbound
            .take_while(|c| futures::future::ready(c.is_ok()))
            .filter_map(|c| async move {
                match c {
                    Ok(api::TelemetryCommand {
                        command: Some(api::telemetry_command::Command::Settings(s)),
                        ..
                    }) => Some(Ok(settings_reply(s))),
                    _ => None,
                }
            })
            .take_until(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            });
        Ok(Response::new(Box::pin(out)))
    }
}
