//! The nameserver: a stateless route registry (`raftmq nameserver --listen HOST:PORT`, or
//! `--config FILE`; see [`NameserverArgs`] and [`crate::config`]).
//!
//! Several nameservers run side by side and never talk to each other. Every broker node
//! reports its full state (group, node id, advertised address, Raft role, term, leader,
//! commit/applied/last log index, the group's topics) to every nameserver once per heartbeat
//! interval (`crate::broker::register`); a node silent for the node timeout (3 intervals,
//! `node_timeout_ms`, default 3000) is dropped.
//!
//! One port serves
//! * `raftmq.nameserver.Nameserver` (`proto/raftmq/nameserver.proto`): `Heartbeat` from the
//!   nodes, `GetRoutes` / `ListGroups` for tools ([`registry`]);
//! * `apache.rocketmq.v2.MessagingService`, so RocketMQ clients use nameservers as their
//!   endpoints: by default as their **proxy** ([`proxy`]: routes name the nameserver and
//!   every client RPC is relayed to the broker group serving it, which keeps official
//!   clients working through a frozen or killed leader), or with `proxy = false` only the
//!   access-point RPCs: `QueryRoute` ([`route`]), `Telemetry` ([`settings`]), `Heartbeat`,
//!   `NotifyClientTermination`, with routes naming the brokers.
//!
//! [`route`] and [`settings`] are shared with the broker's own `MessagingService`.

pub mod proxy;
pub mod registry;
pub mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::protocol::route::GroupRoute;
pub use registry::Registry;

use crate::config::{ConfigError, NameserverSettings};

use crate::proto::apache::rocketmq::v2::messaging_service_server::MessagingServiceServer;
use crate::proto::raftmq::nameserver::nameserver_server::NameserverServer;

/// How long a shutdown waits for in-flight calls.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Default `node_timeout_ms`: a node silent this long is dropped.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything the nameserver can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NameserverError {
    /// A malformed request (empty group, unknown permission, ...).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Invalid settings at start.
    #[error("invalid config: {0}")]
    Config(String),
    /// Binding or serving the port failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<NameserverError> for tonic::Status {
    fn from(e: NameserverError) -> tonic::Status {
        match &e {
            NameserverError::BadRequest(_) | NameserverError::Config(_) => {
                tonic::Status::invalid_argument(e.to_string())
            }
            _ => tonic::Status::internal(e.to_string()),
        }
    }
}

/// Settings of one nameserver.
#[derive(Debug, Clone)]
pub struct NameserverConfig {
    /// Address to bind (port 0 picks a free port; see [`Nameserver::local_addr`]).
    pub listen: SocketAddr,
    /// Drop a node whose last report is older than this (3 heartbeat intervals).
    pub node_timeout: Duration,
    /// Relay every client RPC to the broker groups ([`proxy`]) instead of answering only
    /// the access-point RPCs ([`service::AccessPointService`]).
    pub proxy: bool,
    /// TLS on the gRPC port (the registration service then demands a client certificate of
    /// the cluster CA) and mutual TLS on the proxy's channels to the brokers; `None` =
    /// plaintext.
    pub tls: Option<crate::tls::TlsSettings>,
}

impl NameserverConfig {
    /// Defaults for `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        NameserverConfig {
            listen,
            node_timeout: DEFAULT_NODE_TIMEOUT,
            proxy: true,
            tls: None,
        }
    }
}

/// Flags of `raftmq nameserver`. Every setting can also come from a TOML file (`--config`) or
/// a `RAFTMQ_NAMESERVER_*` environment variable; flags override the environment, which
/// overrides the file, key by key. Keys and defaults: [`crate::config::NameserverSettings`];
/// commented example: `deploy/conf/nameserver.toml`.
#[derive(clap::Args, Debug, Clone)]
pub struct NameserverArgs {
    /// TOML config file (keys: the flag names with `_` instead of `-`).
    #[arg(long, env = "RAFTMQ_NAMESERVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to bind the gRPC port (registry + RocketMQ access point), IP:PORT
    /// (default 0.0.0.0:9876).
    #[arg(long, env = "RAFTMQ_NAMESERVER_LISTEN")]
    pub listen: Option<String>,
    /// Drop a broker node silent for this many milliseconds (default 3000, at least 150;
    /// nodes heartbeat every third of it, at most every second).
    #[arg(long, env = "RAFTMQ_NAMESERVER_NODE_TIMEOUT_MS")]
    pub node_timeout_ms: Option<u64>,
    /// Act as the clients' proxy: routes name this nameserver and it relays every client RPC
    /// to the broker groups (default true; false answers only QueryRoute, Heartbeat,
    /// Telemetry and NotifyClientTermination, and routes name the brokers).
    #[arg(long, env = "RAFTMQ_NAMESERVER_PROXY")]
    pub proxy: Option<bool>,
    /// PEM certificate chain of this nameserver (with --tls-key and --tls-ca: TLS on).
    #[arg(long, env = "RAFTMQ_NAMESERVER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "RAFTMQ_NAMESERVER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle of the cluster (verifies brokers and client certificates).
    #[arg(long, env = "RAFTMQ_NAMESERVER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl NameserverArgs {
    /// These flags (and their environment variables) as one settings source.
    pub fn settings(&self) -> NameserverSettings {
        NameserverSettings {
            listen: self.listen.clone(),
            node_timeout_ms: self.node_timeout_ms,
            proxy: self.proxy,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_ca: self.tls_ca.clone(),
        }
    }

    /// The configuration: the `--config` file, overridden by the environment and flags,
    /// validated; errors name the key.
    pub fn config(&self) -> Result<NameserverConfig, ConfigError> {
        let file = match &self.config {
            Some(p) => NameserverSettings::from_file(p)?,
            None => NameserverSettings::default(),
        };
        self.settings().over(file).into_nameserver_config()
    }
}

/// A running nameserver.
pub struct Nameserver {
    local_addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Nameserver {
    /// Bind the port and serve. Returns once the port is bound.
    pub async fn start(config: NameserverConfig) -> Result<Nameserver, NameserverError> {
        if config.node_timeout.is_zero() {
            return Err(NameserverError::Config("node timeout must be > 0".into()));
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| NameserverError::Config(format!("listen {}: {e}", config.listen)))?;
        let local_addr = listener.local_addr()?;
        let registry = Arc::new(Registry::new(config.node_timeout));
        let (shutdown, mut rx) = watch::channel(false);
        let streams_rx = rx.clone();
        // Broker registration is for cluster members only (with TLS: a cluster certificate).
        let registry_svc = tonic::service::interceptor::InterceptedService::new(
            NameserverServer::new(service::RegistryService::new(Arc::clone(&registry))),
            crate::tls::ClusterOnly::new(config.tls.as_ref()),
        );
        let (proxy_svc, access_svc) = if config.proxy {
            let svc = proxy::ProxyService::with_tls(
                Arc::clone(&registry),
                streams_rx,
                config.tls.clone(),
            );
            let svc = MessagingServiceServer::new(svc)
                .max_decoding_message_size(proxy::MAX_MESSAGE)
                .max_encoding_message_size(proxy::MAX_MESSAGE);
            (Some(svc), None)
        } else {
            let svc = service::AccessPointService::new(Arc::clone(&registry), streams_rx);
            (None, Some(MessagingServiceServer::new(svc)))
        };
        let incoming = futures::stream::unfold(listener, |l| async move {
            let r = l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                s
            });
            Some((r, l))
        });
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            let c = tls
                .server_config()
                .map_err(|e| NameserverError::Config(e.to_string()))?;
            builder = builder
                .tls_config(c)
                .map_err(|e| NameserverError::Config(format!("tls: {e}")))?;
        }
        let server = tokio::spawn(async move {
            builder
                .tcp_nodelay(true)
                .http2_keepalive_interval(Some(Duration::from_secs(5)))
                .http2_keepalive_timeout(Some(Duration::from_secs(5)))
                .add_service(registry_svc)
                .add_optional_service(proxy_svc)
                .add_optional_service(access_svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        });
        Ok(Nameserver {
            local_addr,
            registry,
            shutdown,
            server,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The registry it serves.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Stop serving: in-flight calls get [`SHUTDOWN_GRACE`] to finish, then the server is
    /// stopped.
    pub async fn shutdown(mut self) -> Result<(), NameserverError> {
        let _ = self.shutdown.send(true);
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server).await {
            Ok(Ok(r)) => r.map_err(NameserverError::from),
            Ok(Err(e)) => Err(NameserverError::Io(std::io::Error::other(e.to_string()))),
            Err(_) => {
                self.server.abort();
                Ok(())
            }
        }
    }
}
