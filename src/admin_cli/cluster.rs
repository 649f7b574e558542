//! `raftmq admin cluster`: the nameservers' view of every node, refreshed live.

use super::AdminError;
use super::client::Ctx;
use super::output::{ClusterGroup, ClusterNode, ClusterOut};

pub(super) async fn cluster(ctx: &Ctx) -> Result<ClusterOut, AdminError> {
    let groups = ctx.groups().await?;
    let mut out = Vec::new();
    for g in groups {
        let live = futures::future::join_all(
            g.nodes
                .values()
                .map(|(r, _)| async move { ctx.status(&r.addr).await.ok() }),
        )
        .await;
        let mut nodes: Vec<ClusterNode> = g
            .nodes
            .values()
            .zip(live)
            .map(|((r, age), st)| match st {
                Some(s) => ClusterNode {
                    node_id: s.node_id,
                    addr: r.addr.clone(),
                    role: s.role,
                    term: s.term,
                    leader_id: s.leader_id,
                    committed: s.committed,
                    applied: s.applied,
                    last_log_index: s.last_log_index,
                    lag: None,
                    version: s.version,
                    age_ms: *age,
                    reachable: true,
                },
                None => ClusterNode {
                    node_id: r.node_id,
                    addr: r.addr.clone(),
                    role: r.role.clone(),
                    term: r.term,
                    leader_id: r.leader_id,
                    committed: r.committed,
                    applied: r.applied,
                    last_log_index: r.last_log_index,
                    lag: None,
                    version: r.version.clone(),
                    age_ms: *age,
                    reachable: false,
                },
            })
            .collect();
        // The group's leader: the live view's self-declared leader at the highest term first.
        let term = nodes
            .iter()
            .map(|n| n.term)
            .max()
            .unwrap_or(g.term)
            .max(g.term);
        let leader_id = nodes
            .iter()
            .filter(|n| n.role == "leader" && n.term == term)
            .map(|n| n.node_id)
            .next()
            .or(g.leader_id);
        let leader_last = nodes
            .iter()
            .find(|n| Some(n.node_id) == leader_id)
            .and_then(|n| n.last_log_index);
        for n in &mut nodes {
            n.lag = leader_last.map(|l| l.saturating_sub(n.applied.unwrap_or(0)));
        }
        let leader_addr = nodes
            .iter()
            .find(|n| Some(n.node_id) == leader_id)
            .map(|n| n.addr.clone())
            .unwrap_or(g.leader_addr);
        out.push(ClusterGroup {
            group: g.name,
            term,
            leader_id,
            leader_addr,
            nodes,
        });
    }
    Ok(ClusterOut { groups: out })
}
