//! The nameserver's in-memory registry: the last report of every live broker node, and the
//! groups and routes derived from them.
//!
//! Nothing is persisted and nameservers never talk to each other: every node reports its
//! full state to every nameserver once per heartbeat interval, so a restarted nameserver is
//! complete again after one interval. A node whose last report is older than the node
//! timeout (3 heartbeat intervals) is dropped.
//!
//! Per group:
//! * **term** = the highest term any live member reports;
//! * **leader** = the node that reports itself leader at that term if it is live, else the
//!   leader named by the freshest report at that term (none while an election runs);
//! * **topics** = those of the leader's report, else of the member with the highest
//!   (term, applied index);
//! * **members** = the live members' addresses, leader first, then by node id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::NameserverError;
use crate::proto::raftmq::nameserver as pb;
use crate::protocol::route::GroupRoute;
use crate::raft::state_machine::{Perm, TopicMessageType};

struct Entry {
    report: pb::NodeReport,
    at: Instant,
}

/// One group as the registry sees it now.
#[derive(Debug, Clone)]
pub struct GroupView {
    /// Group name.
    pub group: String,
    /// Highest term reported by a live member.
    pub term: u64,
    /// The leader, if known.
    pub leader_id: Option<u64>,
    /// The leader's address (empty if unknown).
    pub leader_addr: String,
    /// Live members' last reports and their ages, by node id.
    pub nodes: Vec<(pb::NodeReport, Duration)>,
    /// The group's topics (from the most authoritative report).
    pub topics: Vec<pb::TopicInfo>,
    /// Live members' addresses, leader first.
    pub members: Vec<String>,
}

impl GroupView {
    /// The route of `topic` in this group, if the group holds it.
    pub fn route(&self, topic: &str) -> Option<GroupRoute> {
        let t = self.topics.iter().find(|t| t.name == topic)?;
        Some(GroupRoute {
            group: self.group.clone(),
            queues: t.queues,
            perm: t.perm.parse().ok()?,
            message_type: t.message_type.parse().ok()?,
            leader_id: self.leader_id,
            leader_addr: self.leader_addr.clone(),
            term: self.term,
            members: self.members.clone(),
        })
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::GroupState {
        pb::GroupState {
            group: self.group.clone(),
            leader_id: self.leader_id,
            leader_addr: self.leader_addr.clone(),
            term: self.term,
            nodes: self
                .nodes
                .iter()
                .map(|(r, age)| pb::NodeState {
                    report: Some(r.clone()),
                    age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                })
                .collect(),
        }
    }
}

/// Reports of live broker nodes, keyed by (group, node id).
pub struct Registry {
    node_timeout: Duration,
    nodes: Mutex<BTreeMap<(String, u64), Entry>>,
    /// [`Registry::groups`] as last computed for [`Registry::routing_groups`], and the last
    /// instant it still holds: the next report replaces it, and no node can expire before
    /// then.
    cache: Mutex<Option<(Instant, Arc<Vec<GroupView>>)>>,
}

impl Registry {
    /// An empty registry dropping nodes silent for `node_timeout`.
    pub fn new(node_timeout: Duration) -> Self {
        Registry {
            node_timeout,
            nodes: Mutex::new(BTreeMap::new()),
            cache: Mutex::new(None),
        }
    }

    /// How long a silent node stays registered.
    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// Record a node's report (replacing its previous one).
    pub fn heartbeat(&self, report: pb::NodeReport) -> Result<(), NameserverError> {
        validate(&report)?;
        let mut g = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        g.retain(|_, e| now.duration_since(e.at) <= self.node_timeout);
        g.insert(
            (report.group.clone(), report.node_id),
            Entry { report, at: now },
        );
        // Not while holding `nodes`: `routing_groups` takes `cache`, then `nodes`.
        drop(g);
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }

    /// Every group with a live member, by name.
    pub fn groups(&self) -> Vec<GroupView> {
        self.compute(Instant::now()).0
    }

    /// [`Registry::groups`] for routing a request: the same groups, leaders, members and
    /// topics, computed once per report rather than once per call (the proxy asks for every
    /// relayed request). Only the report ages in [`GroupView::nodes`] may be stale: they are
    /// as of the computation.
    pub fn routing_groups(&self) -> Arc<Vec<GroupView>> {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((until, groups)) = cache.as_ref()
            && now <= *until
        {
            return Arc::clone(groups);
        }
        let (groups, until) = self.compute(now);
        let groups = Arc::new(groups);
        *cache = Some((until, Arc::clone(&groups)));
        groups
    }

    /// The groups as of `now`, and the last instant at which no node of them has expired.
    fn compute(&self, now: Instant) -> (Vec<GroupView>, Instant) {
        let mut by_group: BTreeMap<String, Vec<(pb::NodeReport, Duration)>> = BTreeMap::new();
        let mut until = now + self.node_timeout;
        {
            let mut g = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
            g.retain(|_, e| now.duration_since(e.at) <= self.node_timeout);
            for ((group, _), e) in g.iter() {
                until = until.min(e.at + self.node_timeout);
                by_group
                    .entry(group.clone())
                    .or_default()
                    .push((e.report.clone(), now.duration_since(e.at)));
            }
        }
        let groups = by_group
            .into_iter()
            .map(|(group, nodes)| view(group, nodes))
            .collect();
        (groups, until)
    }

    /// The groups holding `topic`, as routes (ordered by group name).
    pub fn group_routes(&self, topic: &str) -> Vec<GroupRoute> {
        self.routing_groups()
            .iter()
            .filter_map(|g| g.route(topic))
            .collect()
    }

    /// Routes of `topics` (every topic if empty); topics no group holds are left out.
    pub fn routes(&self, topics: &[String]) -> Vec<pb::TopicRoute> {
        let groups = self.groups();
        let mut names: Vec<String> = if topics.is_empty() {
            groups
                .iter()
                .flat_map(|g| g.topics.iter().map(|t| t.name.clone()))
                .collect()
        } else {
            topics.to_vec()
        };
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let routes: Vec<pb::GroupRoute> = groups
                    .iter()
                    .filter_map(|g| g.route(&name))
                    .map(|r| r.to_proto())
                    .collect();
                (!routes.is_empty()).then_some(pb::TopicRoute {
                    topic: name,
                    groups: routes,
                })
            })
            .collect()
    }
}

fn validate(r: &pb::NodeReport) -> Result<(), NameserverError> {
    if r.group.is_empty() {
        return Err(NameserverError::BadRequest(
            "group must not be empty".into(),
        ));
    }
    if r.addr.is_empty() {
        return Err(NameserverError::BadRequest("addr must not be empty".into()));
    }
    for t in &r.topics {
        t.perm
            .parse::<Perm>()
            .map_err(|e| NameserverError::BadRequest(format!("topic `{}`: {e}", t.name)))?;
        t.message_type
            .parse::<TopicMessageType>()
            .map_err(|e| NameserverError::BadRequest(format!("topic `{}`: {e}", t.name)))?;
    }
    Ok(())
}

fn view(group: String, mut nodes: Vec<(pb::NodeReport, Duration)>) -> GroupView {
    nodes.sort_by_key(|(r, _)| r.node_id);
    let live: Vec<&(pb::NodeReport, Duration)> =
        nodes.iter().filter(|(r, _)| r.role != "shutdown").collect();
    let term = live.iter().map(|(r, _)| r.term).max().unwrap_or(0);
    let self_leader = live
        .iter()
        .find(|(r, _)| r.term == term && r.role == "leader")
        .map(|(r, _)| (r.node_id, r.addr.clone()));
    let leader = self_leader.or_else(|| {
        live.iter()
            .filter(|(r, _)| r.term == term && r.leader_id.is_some())
            .min_by_key(|(_, age)| *age)
            .and_then(|(r, _)| {
                let id = r.leader_id?;
                let addr = live
                    .iter()
                    .find(|(m, _)| m.node_id == id)
                    .map(|(m, _)| m.addr.clone())
                    .unwrap_or_else(|| r.leader_addr.clone());
                Some((id, addr))
            })
    });
    let (leader_id, leader_addr) = match leader {
        Some((id, addr)) => (Some(id), addr),
        None => (None, String::new()),
    };
    let authority = live
        .iter()
        .find(|(r, _)| Some(r.node_id) == leader_id)
        .or_else(|| {
            live.iter()
                .max_by_key(|(r, _)| (r.term, r.applied.unwrap_or(0)))
        })
        .map(|(r, _)| r);
    let mut topics = authority.map(|r| r.topics.clone()).unwrap_or_default();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let mut members: Vec<String> = Vec::new();
    if let Some(l) = live.iter().find(|(r, _)| Some(r.node_id) == leader_id) {
        members.push(l.0.addr.clone());
    }
    for (r, _) in &live {
        if !members.contains(&r.addr) {
            members.push(r.addr.clone());
        }
    }
    GroupView {
        group,
        term,
        leader_id,
        leader_addr,
        nodes,
        topics,
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: u64, role: &str, term: u64, leader: Option<u64>) -> pb::NodeReport {
        pb::NodeReport {
            group: "g1".into(),
            node_id: id,
            addr: format!("127.0.0.1:{}", 9000 + id),
            role: role.into(),
            term,
            leader_id: leader,
            leader_addr: leader
                .map(|l| format!("127.0.0.1:{}", 9000 + l))
                .unwrap_or_default(),
            applied: Some(10),
            topics: vec![pb::TopicInfo {
                name: "T".into(),
                queues: 4,
                perm: "rw".into(),
                message_type: "normal".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn leader_and_members() {
        let r = Registry::new(Duration::from_secs(60));
        r.heartbeat(report(1, "follower", 2, Some(2))).unwrap();
        r.heartbeat(report(2, "leader", 2, Some(2))).unwrap();
        r.heartbeat(report(3, "follower", 1, Some(1))).unwrap();
        let g = &r.groups()[0];
        assert_eq!((g.term, g.leader_id), (2, Some(2)));
        assert_eq!(g.members[0], "127.0.0.1:9002");
        assert_eq!(g.members.len(), 3);
        let routes = r.group_routes("T");
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].queues, 4);
        assert!(r.group_routes("U").is_empty());
        assert_eq!(r.routes(&[]).len(), 1);
        assert!(r.routes(&["U".into()]).is_empty());
    }

    #[test]
    fn leader_from_followers_when_leader_unregistered() {
        let r = Registry::new(Duration::from_secs(60));
        r.heartbeat(report(1, "follower", 3, Some(2))).unwrap();
        let g = &r.groups()[0];
        assert_eq!(g.leader_id, Some(2));
        assert_eq!(g.leader_addr, "127.0.0.1:9002");
        assert_eq!(g.members, vec!["127.0.0.1:9001".to_string()]);
    }

    #[test]
    fn silent_nodes_expire() {
        let r = Registry::new(Duration::from_millis(1));
        r.heartbeat(report(1, "leader", 1, Some(1))).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(r.groups().is_empty());
        assert!(r.routing_groups().is_empty());
    }

    #[test]
    fn routing_view_follows_reports_and_expiry() {
        let r = Registry::new(Duration::from_millis(300));
        r.heartbeat(report(1, "leader", 1, Some(1))).unwrap();
        let a = r.routing_groups();
        assert_eq!(a[0].members, vec!["127.0.0.1:9001".to_string()]);
        // Unchanged registry: the same computation is handed out again.
        assert!(Arc::ptr_eq(&a, &r.routing_groups()));
        // A report is seen at once.
        r.heartbeat(report(2, "follower", 1, Some(1))).unwrap();
        let b = r.routing_groups();
        assert_eq!(b[0].members.len(), 2);
        assert_eq!(b[0].leader_id, Some(1));
        // So is a node's expiry, without any new report.
        std::thread::sleep(Duration::from_millis(350));
        assert!(r.routing_groups().is_empty());
    }

    #[test]
    fn bad_reports_rejected() {
        let r = Registry::new(Duration::from_secs(1));
        let mut x = report(1, "leader", 1, Some(1));
        x.topics[0].perm = "rwx".into();
        assert!(r.heartbeat(x).is_err());
        let mut x = report(1, "leader", 1, Some(1));
        x.group.clear();
        assert!(r.heartbeat(x).is_err());
    }
}
