//! Membership and leadership: adding learners, changing the voter set and transferring
//! leadership (each forwarded to the leader from a follower).

use openraft::type_config::async_runtime::watch::WatchReceiver;
use std::collections::BTreeSet;

use openraft::BasicNode;

use super::forward::Route;
use crate::broker::error::BrokerError;
use crate::broker::node::Node;
use crate::proto::raftmq::admin as pb;
use crate::raft::NodeId;

impl Node {
    /// Add a learner (forwarded to the leader). Blocks until it has caught up.
    pub async fn add_learner(
        &self,
        r: pb::AddLearnerRequest,
    ) -> Result<pb::AdminReply, BrokerError> {
        match self.route()? {
            Route::Leader(id, addr) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.add_learner(crate::broker::auth::signed(r)).await
                })
                .await
            }
            Route::Local => {
                let out = self
                    .raft
                    .add_learner(
                        r.node_id,
                        BasicNode {
                            addr: r.addr.clone(),
                        },
                        true,
                    )
                    .await
                    .map_err(|e| BrokerError::Raft(e.to_string()))?;
                Ok(pb::AdminReply {
                    raft_index: out.log_id.index,
                    message: format!("node {} added as learner", r.node_id),
                })
            }
        }
    }

    /// Replace the voter set (forwarded to the leader).
    pub async fn change_membership(
        &self,
        r: pb::ChangeMembershipRequest,
    ) -> Result<pb::AdminReply, BrokerError> {
        if r.voters.is_empty() {
            return Err(BrokerError::BadRequest("voters must not be empty".into()));
        }
        match self.route()? {
            Route::Leader(id, addr) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.change_membership(crate::broker::auth::signed(r)).await
                })
                .await
            }
            Route::Local => {
                let voters: BTreeSet<NodeId> = r.voters.iter().copied().collect();
                let out = self
                    .raft
                    .change_membership(voters, false)
                    .await
                    .map_err(|e| BrokerError::Raft(e.to_string()))?;
                Ok(pb::AdminReply {
                    raft_index: out.log_id.index,
                    message: format!("voters are now {:?}", r.voters),
                })
            }
        }
    }

    /// Move leadership to `to` (forwarded to the leader).
    pub async fn transfer_leader(
        &self,
        r: pb::TransferLeaderRequest,
    ) -> Result<pb::AdminReply, BrokerError> {
        match self.route()? {
            Route::Leader(id, addr) => {
                self.forwarded(id, addr, |mut c| async move {
                    c.transfer_leader(crate::broker::auth::signed(r)).await
                })
                .await
            }
            Route::Local => {
                let m = self.raft.metrics().borrow_watched().clone();
                if !m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == r.to)
                {
                    return Err(BrokerError::BadRequest(format!(
                        "node {} is not a voter",
                        r.to
                    )));
                }
                self.raft
                    .trigger()
                    .transfer_leader(r.to)
                    .await
                    .map_err(|e| BrokerError::Raft(e.to_string()))?;
                Ok(pb::AdminReply {
                    raft_index: 0,
                    message: format!("leadership transfer to {} started", r.to),
                })
            }
        }
    }
}
