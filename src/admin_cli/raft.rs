//! `raftmq admin raft`: leadership transfer and membership changes of a broker group.

use super::client::Ctx;
use super::{AdminError, Output, RaftCmd};
use crate::proto::raftmq::admin as apb;

pub(super) async fn raft_cmd(ctx: &Ctx, cmd: RaftCmd) -> Result<Output, AdminError> {
    let wanted = match &cmd {
        RaftCmd::TransferLeader { group, .. }
        | RaftCmd::AddNode { group, .. }
        | RaftCmd::RemoveNode { group, .. } => group.clone(),
    };
    let groups = ctx.groups().await?;
    let g = match (&wanted, groups.len()) {
        (Some(w), _) => groups
            .iter()
            .find(|g| &g.name == w)
            .ok_or_else(|| AdminError::Usage(format!("no broker group `{w}`")))?,
        (None, 1) => &groups[0],
        (None, n) => {
            return Err(AdminError::Usage(format!(
                "{n} broker groups known: give --group"
            )));
        }
    };
    let (action, write) = match cmd {
        RaftCmd::TransferLeader { to, .. } => (
            format!("transfer leadership to {to}"),
            ctx.write_group(g, |mut c| async move {
                c.transfer_leader(apb::TransferLeaderRequest { to }).await
            })
            .await,
        ),
        RaftCmd::AddNode {
            id, addr, voter, ..
        } => {
            let a = addr.clone();
            let w = ctx
                .write_group(g, |mut c| {
                    let addr = a.clone();
                    async move {
                        c.add_learner(apb::AddLearnerRequest { node_id: id, addr })
                            .await
                    }
                })
                .await;
            if voter && w.ok {
                let mut voters: Vec<u64> = g.nodes.keys().copied().collect();
                if let Some(st) = g.targets().first()
                    && let Ok(s) = ctx.status(st).await
                {
                    voters = s.voters.clone();
                }
                voters.push(id);
                voters.sort_unstable();
                voters.dedup();
                let v2 = voters.clone();
                let w2 = ctx
                    .write_group(g, |mut c| {
                        let voters = v2.clone();
                        async move {
                            c.change_membership(apb::ChangeMembershipRequest { voters })
                                .await
                        }
                    })
                    .await;
                (
                    format!("add node {id} at {addr} as voter (voters {voters:?})"),
                    w2,
                )
            } else {
                (format!("add node {id} at {addr} as learner"), w)
            }
        }
        RaftCmd::RemoveNode { id, .. } => {
            let mut voters: Vec<u64> = Vec::new();
            for t in g.targets() {
                if let Ok(s) = ctx.status(&t).await {
                    voters = s.voters.clone();
                    break;
                }
            }
            voters.retain(|v| *v != id);
            if voters.is_empty() {
                return Err(AdminError::Usage("cannot remove the last voter".into()));
            }
            let v2 = voters.clone();
            (
                format!("remove node {id} (voters {voters:?})"),
                ctx.write_group(g, |mut c| {
                    let voters = v2.clone();
                    async move {
                        c.change_membership(apb::ChangeMembershipRequest { voters })
                            .await
                    }
                })
                .await,
            )
        }
    };
    let v = serde_json::json!({
        "group": g.name, "action": action, "ok": write.ok, "via": write.via,
        "raft_index": write.raft_index, "error": write.error,
    });
    let text = if ctx.args.json {
        format!("{}\n", serde_json::to_string_pretty(&v)?)
    } else {
        format!(
            "{}: {} {}\n",
            g.name,
            action,
            if write.ok {
                "ok".to_string()
            } else {
                format!("FAILED: {}", write.error.unwrap_or_default())
            }
        )
    };
    Ok(Output { ok: write.ok, text })
}
