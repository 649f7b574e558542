//! Registration with the nameservers: every heartbeat interval the node sends its full state
//! ([`report`]) to every nameserver in `NodeConfig::nameservers`, concurrently, each call
//! bounded by a short timeout, so a slow or dead nameserver never delays the others or the
//! node.
//!
//! The interval is [`DEFAULT_INTERVAL`] unless a nameserver asks for a shorter one (its node
//! timeout / 3, in every heartbeat reply), so a node is never dropped by a nameserver with a
//! short timeout. A nameserver that fails is retried with exponential backoff (one interval,
//! doubling, at most [`MAX_BACKOFF`]); the first failure is logged at `warn`, repeats at
//! `debug`, the recovery at `info`. The task ends when the node shuts down.

use openraft::type_config::async_runtime::watch::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::node::Node;
use crate::proto::raftmq::nameserver as pb;
use crate::proto::raftmq::nameserver::nameserver_client::NameserverClient;

/// Heartbeat interval when no nameserver asks for a shorter one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest interval a nameserver may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Longest wait between attempts to a failing nameserver.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The node's full state as a nameserver wants it: identity, advertised address, Raft
/// status and the group's topics as applied on this node.
pub fn report(node: &Node) -> pb::NodeReport {
    let st = node.status();
    pb::NodeReport {
        group: node.config.group.clone(),
        node_id: node.config.node_id,
        addr: node.config.advertise.clone(),
        // A leaving node says so: nameservers drop it from routes and proxy members at once.
        role: if node.is_leaving() {
            "shutdown".to_string()
        } else {
            st.role
        },
        term: st.term,
        leader_id: st.leader_id,
        leader_addr: st.leader_addr,
        committed: st.committed,
        applied: st.applied,
        last_log_index: st.last_log_index,
        topics: node
            .sm
            .topics()
            .into_iter()
            .map(|t| pb::TopicInfo {
                name: t.name,
                queues: t.queues,
                perm: t.perm.to_string(),
                message_type: t.message_type.to_string(),
            })
            .collect(),
        version: st.version,
        voters: st.voters,
        learners: st.learners,
    }
}

/// Send this node's report to every nameserver now, concurrently, and wait (at most
/// `timeout`) until each took it or failed. Used by a graceful leave, whose report says
/// `shutdown`, so that nameservers stop routing to the node before it stops serving.
pub async fn announce(node: &Node, timeout: Duration) {
    let report = report(node);
    let sends = node.config.nameservers.iter().filter_map(|addr| {
        let mut t = Target::new(addr, node.config.tls.as_ref())?;
        let report = report.clone();
        Some(async move {
            if let Err(e) = t.send(report, timeout).await {
                tracing::warn!("nameserver {}: the leaving report failed: {e}", t.addr);
            }
        })
    });
    let _ = tokio::time::timeout(timeout, futures::future::join_all(sends)).await;
}

/// One nameserver as this node sees it.
struct Target {
    addr: String,
    client: NameserverClient<Channel>,
    failures: u32,
    next_attempt: Instant,
    /// The interval the nameserver asked for in its last reply.
    asked: Option<Duration>,
}

impl Target {
    fn new(addr: &str, tls: Option<&crate::tls::TlsSettings>) -> Option<Target> {
        let ep = match crate::tls::endpoint(addr, tls) {
            Ok(ep) => ep,
            Err(e) => {
                tracing::warn!("nameserver `{addr}` is not a valid address, skipped: {e}");
                return None;
            }
        };
        let ep = ep.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true);
        Some(Target {
            addr: addr.to_string(),
            client: NameserverClient::new(ep.connect_lazy()),
            failures: 0,
            next_attempt: Instant::now(),
            asked: None,
        })
    }

    async fn send(
        &mut self,
        report: pb::NodeReport,
        timeout: Duration,
    ) -> Result<pb::HeartbeatReply, String> {
        let mut req = tonic::Request::new(report);
        req.set_timeout(timeout);
        match tokio::time::timeout(timeout, self.client.heartbeat(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(format!("{}: {}", s.code(), s.message())),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    fn record(&mut self, result: Result<pb::HeartbeatReply, String>, interval: Duration) {
        let now = Instant::now();
        match result {
            Ok(reply) => {
                if self.failures > 0 {
                    tracing::info!(
                        "registered with nameserver {} again after {} failed heartbeats",
                        self.addr,
                        self.failures
                    );
                }
                self.failures = 0;
                self.next_attempt = now;
                self.asked = (reply.heartbeat_interval_ms > 0)
                    .then(|| Duration::from_millis(reply.heartbeat_interval_ms));
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures == 1 {
                    tracing::warn!("heartbeat to nameserver {} failed: {e}", self.addr);
                } else {
                    tracing::debug!(
                        "heartbeat to nameserver {} failed ({} in a row): {e}",
                        self.addr,
                        self.failures
                    );
                }
                let backoff = interval
                    .saturating_mul(1 << (self.failures - 1).min(16))
                    .min(MAX_BACKOFF);
                self.next_attempt = now + backoff;
            }
        }
    }
}

/// Start the registration task of `node` (which must have nameservers configured). It ends
/// when the node shuts down; aborting the handle also stops it.
pub fn spawn(node: Arc<Node>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut shutdown = node.shutdown_signal();
        let mut targets: Vec<Target> = node
            .config
            .nameservers
            .iter()
            .filter_map(|a| Target::new(a, node.config.tls.as_ref()))
            .collect();
        if targets.is_empty() {
            return;
        }
        let mut leader = node.raft.metrics().borrow_watched().current_leader;
        loop {
            let tick = Instant::now();
            let interval = targets
                .iter()
                .filter_map(|t| t.asked)
                .fold(DEFAULT_INTERVAL, Duration::min)
                .max(MIN_INTERVAL);
            // Each call is bounded so that one tick never takes longer than the interval.
            let timeout = interval;
            let report = report(&node);
            let due = targets.iter_mut().filter(|t| t.next_attempt <= tick);
            let sends = due.map(|t| {
                let report = report.clone();
                async move {
                    let r = t.send(report, timeout).await;
                    t.record(r, interval);
                }
            });
            tokio::select! {
                _ = futures::future::join_all(sends) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            // A leader change is reported at once, not at the next tick: the nameservers'
            // proxies and routes then name the new leader within milliseconds.
            tokio::select! {
                _ = tokio::time::sleep_until(tick + interval) => {}
                _ = leader_change(&node, &mut leader) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    })
}

/// Wait until the node's view of the leader differs from `*leader`, and record it.
async fn leader_change(node: &Node, leader: &mut Option<crate::raft::NodeId>) {
    let mut metrics = node.raft.metrics();
    loop {
        let now = metrics.borrow_watched().current_leader;
        if now != *leader {
            *leader = now;
            return;
        }
        if metrics.changed().await.is_err() {
            // The Raft core stopped: nothing will change any more.
            std::future::pending::<()>().await;
        }
    }
}
