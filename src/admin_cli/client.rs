//! gRPC clients and the `Ctx` through which the commands talk to nameservers and brokers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::output::{GroupWrite, RouteGroup};
use super::{AdminArgs, AdminError};
use crate::proto::raftmq::admin as apb;
use crate::proto::raftmq::admin::admin_client::AdminClient;
use crate::proto::raftmq::nameserver as npb;
use crate::proto::raftmq::nameserver::nameserver_client::NameserverClient;

// ---------------------------------------------------------------------------------------------

/// Signs every admin request the way the RocketMQ clients sign theirs (ACL), when the
/// command has credentials (`--access-key`, `--secret-key`).
#[derive(Clone, Debug, Default)]
pub(super) struct Signer {
    pub(super) creds: Option<(String, String)>,
}

impl tonic::service::Interceptor for Signer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some((ak, sk)) = &self.creds {
            let now = crate::acl::signature::date_time_now();
            let auth = crate::acl::signature::sign(ak, sk, &now);
            let md = req.metadata_mut();
            for (k, v) in [
                (crate::acl::signature::SIGNED_HEADER, now),
                ("authorization", auth),
            ] {
                let v = v
                    .parse()
                    .map_err(|_| tonic::Status::invalid_argument("credentials are not ASCII"))?;
                md.insert(k, v);
            }
        }
        Ok(req)
    }
}

/// An Admin client whose requests are signed.
pub(super) type Admin = AdminClient<InterceptedService<Channel, Signer>>;

fn admin_client(
    addr: &str,
    timeout: Duration,
    tls: Option<&crate::tls::TlsSettings>,
    signer: &Signer,
) -> Result<Admin, AdminError> {
    let ep = crate::tls::endpoint(addr, tls)
        .map_err(|e| AdminError::Usage(format!("bad address `{addr}`: {e}")))?
        .connect_timeout(Duration::from_secs(2).min(timeout))
        .timeout(timeout);
    Ok(AdminClient::with_interceptor(
        ep.connect_lazy(),
        signer.clone(),
    ))
}

pub(super) fn nameserver_client(
    addr: &str,
    timeout: Duration,
    tls: Option<&crate::tls::TlsSettings>,
) -> Result<NameserverClient<Channel>, AdminError> {
    let ep = crate::tls::endpoint(addr, tls)
        .map_err(|e| AdminError::Usage(format!("bad address `{addr}`: {e}")))?
        .connect_timeout(Duration::from_secs(2).min(timeout))
        .timeout(timeout);
    Ok(NameserverClient::new(ep.connect_lazy()))
}

pub(super) fn rpc_err(addr: &str, s: &tonic::Status) -> AdminError {
    AdminError::Rpc {
        addr: addr.to_string(),
        message: format!("{:?}: {}", s.code(), s.message()),
    }
}

/// A group as the admin tool sees it.
#[derive(Debug, Clone)]
pub(super) struct Group {
    pub(super) name: String,
    pub(super) term: u64,
    pub(super) leader_id: Option<u64>,
    pub(super) leader_addr: String,
    /// Node id → (report, age).
    pub(super) nodes: BTreeMap<u64, (npb::NodeReport, Option<u64>)>,
}

impl Group {
    /// Addresses to send a write to: leader first, then the other members.
    pub(super) fn targets(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.leader_addr.is_empty() {
            out.push(self.leader_addr.clone());
        }
        for (r, _) in self.nodes.values() {
            if !out.contains(&r.addr) {
                out.push(r.addr.clone());
            }
        }
        out
    }
}

pub(super) struct Ctx {
    pub(super) args: AdminArgs,
    pub(super) deadline: Instant,
    pub(super) tls: Option<crate::tls::TlsSettings>,
    pub(super) signer: Signer,
}

impl Ctx {
    /// An Admin client for `addr` (per-call timeout, TLS and signature of this command).
    pub(super) fn admin(&self, addr: &str) -> Result<Admin, AdminError> {
        admin_client(addr, self.call_timeout(), self.tls.as_ref(), &self.signer)
    }

    pub(super) fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100))
    }

    /// Per-call timeout.
    pub(super) fn call_timeout(&self) -> Duration {
        self.remaining().min(Duration::from_secs(5))
    }

    pub(super) fn nameservers(&self) -> Vec<String> {
        self.args
            .nameservers
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Ask every nameserver concurrently; the answers of those that answered, or an error
    /// naming every failure if none did.
    pub(super) async fn ask_all<T, F, Fut>(&self, f: F) -> Result<Vec<T>, AdminError>
    where
        F: Fn(NameserverClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let list = self.nameservers();
        if list.is_empty() {
            return Err(AdminError::Usage(
                "give --nameservers HOST:PORT[,HOST:PORT] or --broker HOST:PORT".into(),
            ));
        }
        let timeout = self.call_timeout();
        let calls = list.iter().map(|a| {
            let client = nameserver_client(a, timeout, self.tls.as_ref());
            let f = &f;
            async move {
                let c = client?;
                f(c).await
                    .map(|r| r.into_inner())
                    .map_err(|s| rpc_err(a, &s))
            }
        });
        let results = futures::future::join_all(calls).await;
        let mut ok = Vec::new();
        let mut errs = Vec::new();
        for r in results {
            match r {
                Ok(v) => ok.push(v),
                Err(e) => errs.push(e.to_string()),
            }
        }
        if ok.is_empty() {
            return Err(AdminError::NoNameserver(errs.join("; ")));
        }
        Ok(ok)
    }

    /// Groups known to the nameservers, merged (per node the freshest report).
    pub(super) async fn groups(&self) -> Result<Vec<Group>, AdminError> {
        if let Some(b) = &self.args.broker {
            return Ok(vec![self.broker_group(b).await?]);
        }
        let replies = self
            .ask_all(|mut c| async move { c.list_groups(npb::ListGroupsRequest {}).await })
            .await?;
        let mut out: BTreeMap<String, Group> = BTreeMap::new();
        for reply in replies {
            for g in reply.groups {
                let e = out.entry(g.group.clone()).or_insert_with(|| Group {
                    name: g.group.clone(),
                    term: 0,
                    leader_id: None,
                    leader_addr: String::new(),
                    nodes: BTreeMap::new(),
                });
                if g.term > e.term || (g.term == e.term && e.leader_id.is_none()) {
                    e.term = g.term;
                    if g.leader_id.is_some() {
                        e.leader_id = g.leader_id;
                        e.leader_addr = g.leader_addr.clone();
                    }
                }
                for n in g.nodes {
                    let Some(r) = n.report else { continue };
                    let fresher = e
                        .nodes
                        .get(&r.node_id)
                        .is_none_or(|(_, age)| age.is_none_or(|a| n.age_ms < a));
                    if fresher {
                        e.nodes.insert(r.node_id, (r, Some(n.age_ms)));
                    }
                }
            }
        }
        Ok(out.into_values().collect())
    }

    pub(super) async fn status(&self, addr: &str) -> Result<apb::NodeStatus, AdminError> {
        let mut c = admin_client(
            addr,
            self.call_timeout().min(Duration::from_secs(2)),
            self.tls.as_ref(),
            &self.signer,
        )?;
        c.status(apb::StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| rpc_err(addr, &s))
    }

    /// `--broker`: the node's group as the node itself sees it.
    pub(super) async fn broker_group(&self, addr: &str) -> Result<Group, AdminError> {
        let st = self.status(addr).await?;
        let mut nodes = BTreeMap::new();
        nodes.insert(st.node_id, (status_report(&st, addr), None));
        if let Some(l) = st.leader_id
            && l != st.node_id
            && !st.leader_addr.is_empty()
            && let Ok(ls) = self.status(&st.leader_addr).await
        {
            nodes.insert(ls.node_id, (status_report(&ls, &st.leader_addr), None));
        }
        Ok(Group {
            name: st.group.clone(),
            term: st.term,
            leader_id: st.leader_id,
            leader_addr: st.leader_addr.clone(),
            nodes,
        })
    }

    /// Topics per group, from the nameservers' routes or the `--broker` node.
    pub(super) async fn topics(&self) -> Result<BTreeMap<String, Vec<RouteGroup>>, AdminError> {
        let mut out: BTreeMap<String, BTreeMap<String, RouteGroup>> = BTreeMap::new();
        if let Some(b) = &self.args.broker {
            let g = self.broker_group(b).await?;
            let mut c = self.admin(b)?;
            let topics = c
                .list_topics(apb::ListTopicsRequest {})
                .await
                .map_err(|s| rpc_err(b, &s))?
                .into_inner()
                .topics;
            let members = g.targets();
            for t in topics {
                out.entry(t.name.clone()).or_default().insert(
                    g.name.clone(),
                    RouteGroup {
                        group: g.name.clone(),
                        queues: t.queues,
                        perm: t.perm,
                        message_type: t.message_type,
                        leader_id: g.leader_id,
                        leader_addr: g.leader_addr.clone(),
                        term: g.term,
                        members: members.clone(),
                    },
                );
            }
        } else {
            let replies = self
                .ask_all(|mut c| async move {
                    c.get_routes(npb::GetRoutesRequest { topics: Vec::new() })
                        .await
                })
                .await?;
            for reply in replies {
                for r in reply.routes {
                    let e = out.entry(r.topic.clone()).or_default();
                    for g in r.groups {
                        let newer = e.get(&g.group).is_none_or(|old| g.term > old.term);
                        if newer {
                            e.insert(
                                g.group.clone(),
                                RouteGroup {
                                    group: g.group,
                                    queues: g.queues,
                                    perm: g.perm,
                                    message_type: g.message_type,
                                    leader_id: g.leader_id,
                                    leader_addr: g.leader_addr,
                                    term: g.term,
                                    members: g.members,
                                },
                            );
                        }
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|(t, gs)| (t, gs.into_values().collect()))
            .collect())
    }

    /// Send the same write to every group of `groups`, one after the other.
    pub(super) async fn write_groups<F, Fut>(&self, groups: &[Group], f: F) -> Vec<GroupWrite>
    where
        F: Fn(Admin) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<apb::AdminReply>, tonic::Status>>,
    {
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            out.push(self.write_group(g, &f).await);
        }
        out
    }

    /// Send a write to a group: leader first, then the others, retrying while the group
    /// has no leader, until the deadline.
    pub(super) async fn write_group<F, Fut>(&self, g: &Group, f: F) -> GroupWrite
    where
        F: Fn(Admin) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<apb::AdminReply>, tonic::Status>>,
    {
        let targets = g.targets();
        let mut last = String::from("no member address known");
        loop {
            for addr in &targets {
                let c = match self.admin(addr) {
                    Ok(c) => c,
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                };
                match f(c).await {
                    Ok(r) => {
                        return GroupWrite {
                            group: g.name.clone(),
                            ok: true,
                            deleted: None,
                            via: Some(addr.clone()),
                            raft_index: Some(r.into_inner().raft_index),
                            error: None,
                            not_found: false,
                        };
                    }
                    Err(s) => {
                        last = rpc_err(addr, &s).to_string();
                        // The group's own answer (bad request, no such topic, refused
                        // credentials): final.
                        if matches!(
                            s.code(),
                            tonic::Code::InvalidArgument
                                | tonic::Code::NotFound
                                | tonic::Code::PermissionDenied
                                | tonic::Code::Unauthenticated
                                | tonic::Code::AlreadyExists
                        ) {
                            return GroupWrite {
                                group: g.name.clone(),
                                ok: false,
                                deleted: None,
                                via: Some(addr.clone()),
                                raft_index: None,
                                error: Some(last),
                                not_found: s.code() == tonic::Code::NotFound,
                            };
                        }
                    }
                }
            }
            if Instant::now() + Duration::from_millis(200) >= self.deadline {
                return GroupWrite {
                    group: g.name.clone(),
                    ok: false,
                    deleted: None,
                    via: None,
                    raft_index: None,
                    error: Some(last),
                    not_found: false,
                };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until `check` holds on the current topic view; false on deadline.
    pub(super) async fn wait_topics<F>(&self, check: F) -> bool
    where
        F: Fn(&BTreeMap<String, Vec<RouteGroup>>) -> bool,
    {
        loop {
            if let Ok(t) = self.topics().await
                && check(&t)
            {
                return true;
            }
            if Instant::now() + Duration::from_millis(100) >= self.deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub(super) fn status_report(st: &apb::NodeStatus, addr: &str) -> npb::NodeReport {
    npb::NodeReport {
        group: st.group.clone(),
        node_id: st.node_id,
        addr: addr.to_string(),
        role: st.role.clone(),
        term: st.term,
        leader_id: st.leader_id,
        leader_addr: st.leader_addr.clone(),
        committed: st.committed,
        applied: st.applied,
        last_log_index: st.last_log_index,
        topics: Vec::new(),
        version: st.version.clone(),
        voters: st.voters.clone(),
        learners: st.learners.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_targets_leader_first() {
        let mut nodes = BTreeMap::new();
        for id in 1..=3u64 {
            nodes.insert(
                id,
                (
                    npb::NodeReport {
                        node_id: id,
                        addr: format!("h:{id}"),
                        ..Default::default()
                    },
                    Some(1),
                ),
            );
        }
        let g = Group {
            name: "g".into(),
            term: 1,
            leader_id: Some(2),
            leader_addr: "h:2".into(),
            nodes,
        };
        assert_eq!(g.targets(), vec!["h:2", "h:1", "h:3"]);
    }
}
