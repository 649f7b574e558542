//! Routing of writes: finding the leader, proposing on this node when it leads, and
//! forwarding whole requests to the leader from a follower.

use openraft::type_config::async_runtime::watch::WatchReceiver;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use tonic::transport::Channel;

use crate::broker::error::BrokerError;
use crate::broker::node::Node;
use crate::proto::raftmq::admin as pb;
use crate::proto::raftmq::admin::admin_client::AdminClient;
use crate::raft::state_machine::{self, InternalCommand};
use crate::raft::{Command, CommandResponse, NodeId, TypeConfig};

/// Cached clients to other nodes' admin services, for forwarding.
#[derive(Default)]
pub struct Forwarder {
    clients: std::sync::Mutex<HashMap<String, AdminClient<Channel>>>,
    pub(super) round_robin: AtomicU64,
    pub(super) id_seq: AtomicU64,
}

impl Forwarder {
    pub(super) fn client(
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
            .max_decoding_message_size(crate::broker::MAX_GRPC_MESSAGE)
            .max_encoding_message_size(crate::broker::MAX_GRPC_MESSAGE);
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

pub(super) fn fwd_err(leader: NodeId, addr: &str, s: tonic::Status) -> BrokerError {
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
        // Borrowed, not cloned: this runs for every request, and the metrics hold the
        // membership and the replication map.
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
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
        crate::hops::mark(crate::hops::Hop::ClientWrite, 0);
        match self.raft.client_write(cmd).await {
            Ok(r) => {
                crate::hops::mark(crate::hops::Hop::ClientWriteDone, r.data.index);
                metrics::histogram!(crate::broker::http::APPEND_LATENCY, "command" => command)
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
        let (kind, bytes) = state_machine::codec::encode(&cmd).map_err(BrokerError::Internal)?;
        let cmd = Command {
            kind,
            data: Bytes::from(bytes),
        };
        // Concurrent commands share Raft entries (see `command_batcher`).
        match self.command_batcher.get() {
            Some(b) => b.write(cmd).await,
            None => self.write_local(cmd).await,
        }
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

    pub(super) async fn forwarded<T, F, Fut>(
        &self,
        id: NodeId,
        addr: String,
        f: F,
    ) -> Result<T, BrokerError>
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
                    c.upsert_topic(crate::broker::auth::signed(t)).await
                })
                .await
            }
            Fwd::Delete(d) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.delete_topic(crate::broker::auth::signed(d)).await
                })
                .await
            }
            Fwd::UpsertGroup(g) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.upsert_group(crate::broker::auth::signed(g)).await
                })
                .await
            }
            Fwd::DeleteGroup(g) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.delete_group(crate::broker::auth::signed(g)).await
                })
                .await
            }
            Fwd::Offset(o) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.commit_offset(crate::broker::auth::signed(o)).await
                })
                .await
            }
            Fwd::Acl(a) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.change_acl(crate::broker::auth::signed(a)).await
                })
                .await
            }
        }
    }
}
