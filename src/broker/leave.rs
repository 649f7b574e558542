//! Graceful leave (SIGTERM, a rolling restart): hand over what this node does before it
//! stops, so that clients see at most one short leader change and no error.
//!
//! 1. The node is marked leaving: `/readyz` answers 503 and every report to the nameservers
//!    says `shutdown`, which drops it from routes and from the members a nameserver proxy
//!    relays to (see `nameserver::registry`).
//! 2. A leader transfers leadership to the most up-to-date voter (openraft's TransferLeader:
//!    the target campaigns at once and the others drop the old leader's lease, so this costs
//!    one vote round, not an election timeout) and waits until another node leads.
//! 3. The node stops campaigning (it will hear no heartbeats once its server stops), and the
//!    leaving report goes to every nameserver at once, not at the next heartbeat.
//! 4. In-flight requests drain: the gRPC server stops accepting, Telemetry streams and local
//!    long polls end (they watch the same shutdown signal), and what else it holds finishes,
//!    bounded (a receive forwarded to the new leader lasts as long as that leader's long
//!    poll); then Raft stops. Until then the node still serves as a follower, forwarding to
//!    the new leader.
//!
//! Every step is bounded, so a leave never takes much longer than [`LeaveTimeouts::total`];
//! a step that times out is logged and the leave goes on.

use openraft::type_config::async_runtime::watch::WatchReceiver;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::node::Node;
use crate::raft::NodeId;

/// Bounds of the steps of a graceful leave.
#[derive(Debug, Clone, Copy)]
pub struct LeaveTimeouts {
    /// Longest wait for another node to become leader after the transfer was asked for.
    pub transfer: Duration,
    /// Longest wait for the nameservers to take the leaving report.
    pub announce: Duration,
    /// Longest wait for in-flight requests to finish.
    pub drain: Duration,
}

impl Default for LeaveTimeouts {
    fn default() -> Self {
        LeaveTimeouts {
            transfer: Duration::from_secs(3),
            announce: Duration::from_secs(1),
            drain: Duration::from_secs(3),
        }
    }
}

impl LeaveTimeouts {
    /// The longest a leave can take (plus Raft's own shutdown).
    pub fn total(&self) -> Duration {
        self.transfer + self.announce + self.drain
    }
}

impl Node {
    /// True once [`Node::leave`] began.
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// Leave gracefully (see the module docs), then shut down.
    pub async fn leave(&self, t: LeaveTimeouts) {
        self.leaving.store(true, Ordering::Release);
        let started = Instant::now();
        if let Some(to) = self.transfer_target() {
            tracing::info!("leaving: transferring leadership to node {to}");
            match self.raft.trigger().transfer_leader(to).await {
                Ok(()) => {
                    if self.wait_other_leader(started + t.transfer).await {
                        tracing::info!(
                            "leaving: node {:?} leads after {:?}",
                            self.raft.metrics().borrow_watched().current_leader,
                            started.elapsed()
                        );
                    } else {
                        tracing::warn!(
                            "leaving: no other leader within {:?}; stopping anyway",
                            t.transfer
                        );
                    }
                }
                Err(e) => tracing::warn!("leaving: leadership transfer failed: {e}"),
            }
        }
        // From here on this node must not campaign: once its server stops it hears no
        // heartbeats, and a term it raised would outlive the restart.
        self.raft.runtime_config().elect(false);
        super::register::announce(self, t.announce).await;
        self.stop_serving(t.drain).await;
        tracing::info!("leaving: drained after {:?}", started.elapsed());
        self.shutdown().await;
    }

    /// If this node leads, the voter to hand over to: the one whose replicated log is
    /// longest (it can win the vote, and clients lose the least time waiting on it).
    fn transfer_target(&self) -> Option<NodeId> {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.config.node_id) {
            return None;
        }
        let repl = m.replication.as_ref()?;
        m.membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.config.node_id)
            .max_by_key(|id| repl.get(id).cloned().flatten().map(|l| l.index))
    }

    /// Wait (until `deadline`) until a node other than this one leads; true if one does.
    async fn wait_other_leader(&self, deadline: Instant) -> bool {
        let me = self.config.node_id;
        let mut m = self.raft.metrics();
        tokio::time::timeout_at(deadline, async {
            loop {
                let l = m.borrow_watched().current_leader;
                if l.is_some() && l != Some(me) {
                    return;
                }
                if m.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }
}
