//! The protocol floor: a `MessagingService` that stores nothing and replicates nothing.
//!
//! It answers `QueryRoute` with one broker (itself) holding the topic's queues, and every
//! `SendMessage` with OK at once — the same response shape a raftmq leader gives, built the
//! same way (tonic server with raftmq's HTTP/2 settings, multi-thread tokio runtime). Driven
//! by the same client and workload as a real cluster (`cluster --floor`), it measures what one
//! RocketMQ gRPC request per message costs on this machine before any storage or Raft work:
//! the throughput no broker speaking this protocol through this stack can exceed here, and the
//! client and server CPU that every message pays regardless of what the broker does with it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use raftmq::proto::apache::rocketmq::v2;
use raftmq::proto::apache::rocketmq::v2::messaging_service_server::{
    MessagingService, MessagingServiceServer,
};
use raftmq::protocol::route::{self, GroupRoute};
use raftmq::protocol::settings;
use raftmq::raft::state_machine::{Perm, TopicConfig, TopicMessageType};
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = tonic::codegen::BoxStream<T>;

use crate::cluster::{Proc, Procs, free_port};

/// Queues the floor server reports for every topic.
const QUEUES: u32 = 8;

struct Floor {
    addr: String,
    offset: AtomicI64,
}

#[tonic::async_trait]
impl MessagingService for Floor {
    async fn query_route(
        &self,
        req: Request<v2::QueryRouteRequest>,
    ) -> Result<Response<v2::QueryRouteResponse>, Status> {
        let topic = req.into_inner().topic.unwrap_or_default();
        let cfg = TopicConfig {
            name: topic.name.clone(),
            queues: QUEUES,
            perm: Perm::ReadWrite,
            message_type: TopicMessageType::Normal,
        };
        let g = GroupRoute::new("floor", &cfg, vec![self.addr.clone()]);
        Ok(Response::new(route::query_route_response(&topic, &[g])))
    }

    async fn heartbeat(
        &self,
        _: Request<v2::HeartbeatRequest>,
    ) -> Result<Response<v2::HeartbeatResponse>, Status> {
        Ok(Response::new(v2::HeartbeatResponse {
            status: Some(route::status(v2::Code::Ok, "OK")),
        }))
    }

    /// The official clients open a Telemetry stream before their first request and wait for
    /// its response headers: answer every Settings command as a broker does, ignore the rest.
    async fn telemetry(
        &self,
        req: Request<Streaming<v2::TelemetryCommand>>,
    ) -> Result<Response<BoxStream<v2::TelemetryCommand>>, Status> {
        let out = req.into_inner().filter_map(|c| async move {
            match c {
                Ok(v2::TelemetryCommand {
                    command: Some(v2::telemetry_command::Command::Settings(s)),
                    ..
                }) => Some(Ok(settings::settings_reply(s))),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn send_message(
        &self,
        req: Request<v2::SendMessageRequest>,
    ) -> Result<Response<v2::SendMessageResponse>, Status> {
        let msgs = req.into_inner().messages;
        let first = self.offset.fetch_add(msgs.len() as i64, Ordering::Relaxed);
        let entries = msgs
            .into_iter()
            .enumerate()
            .map(|(i, m)| v2::SendResultEntry {
                status: Some(route::status(v2::Code::Ok, "OK")),
                message_id: m
                    .system_properties
                    .map(|s| s.message_id)
                    .unwrap_or_default(),
                transaction_id: String::new(),
                offset: first + i as i64,
                recall_handle: String::new(),
            })
            .collect();
        Ok(Response::new(v2::SendMessageResponse {
            status: Some(route::status(v2::Code::Ok, "OK")),
            entries,
        }))
    }
}

/// Serve on `listen` until killed (the hidden `protocol-floor-server` subcommand).
pub fn serve(listen: SocketAddr) -> Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let svc = Floor {
            addr: listen.to_string(),
            offset: AtomicI64::new(0),
        };
        raftmq::raft::grpc::configure_server(tonic::transport::Server::builder())
            .add_service(
                MessagingServiceServer::new(svc)
                    .max_decoding_message_size(80 << 20)
                    .max_encoding_message_size(80 << 20),
            )
            .serve(listen)
            .await
            .context("serving")
    })
}

/// A running floor server process (killed on drop).
pub struct FloorServer {
    pub addr: String,
    pub procs: Procs,
}

impl FloorServer {
    /// Start this executable's `protocol-floor-server` with its log in `dir`; returns once it
    /// accepts connections.
    pub fn start(dir: &Path) -> Result<FloorServer> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let child = crate::cluster::spawn(
            &exe,
            &dir.join("floor.log"),
            &[
                "protocol-floor-server".into(),
                "--listen".into(),
                addr.clone(),
            ],
            &[],
        )?;
        let mut procs = Procs(vec![Proc {
            name: "floor".into(),
            child,
        }]);
        procs.wait_listening(&addr, dir, Duration::from_secs(30))?;
        Ok(FloorServer { addr, procs })
    }
}
