//! Routes in the shape RocketMQ clients expect (`QueryRoute`), shared by the nameserver's
//! and the broker's `MessagingService`.
//!
//! A topic's route is one [`GroupRoute`] per broker group holding the topic. Each group
//! becomes `queues` [`api::MessageQueue`]s (ids `0..queues`, so queue 0 is always present, which
//! the Node client requires) under a broker named after the group, with broker id 0 (clients
//! drop other ids) and the group's live member addresses as endpoints: any member accepts
//! every RPC and a follower forwards to its leader, so a route stays usable across leader
//! changes.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::proto::apache::rocketmq::v2 as api;
use crate::proto::raftmq::nameserver as pb;
use crate::raft::state_machine::{Perm, TopicConfig, TopicMessageType};

/// One broker group's share of a topic, with where to reach the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRoute {
    /// Broker group name (the RocketMQ broker name).
    pub group: String,
    /// Queues of the topic in this group.
    pub queues: u32,
    /// The topic's permission.
    pub perm: Perm,
    /// The topic's message type.
    pub message_type: TopicMessageType,
    /// The group's current leader, if known.
    pub leader_id: Option<u64>,
    /// The leader's address (empty if unknown).
    pub leader_addr: String,
    /// The highest term a live member reported.
    pub term: u64,
    /// Addresses (`host:port`) of the group's live members, leader first.
    pub members: Vec<String>,
}

impl GroupRoute {
    /// The route of `topic` in `group` reachable at `members` (a broker describing its own
    /// group: members = its voters' and learners' addresses, leader first).
    pub fn new(group: &str, topic: &TopicConfig, members: Vec<String>) -> Self {
        GroupRoute {
            group: group.to_string(),
            queues: topic.queues,
            perm: topic.perm,
            message_type: topic.message_type,
            leader_id: None,
            leader_addr: String::new(),
            term: 0,
            members,
        }
    }

    /// The wire form of `raftmq.nameserver`.
    pub fn to_proto(&self) -> pb::GroupRoute {
        pb::GroupRoute {
            group: self.group.clone(),
            queues: self.queues,
            perm: self.perm.to_string(),
            message_type: self.message_type.to_string(),
            leader_id: self.leader_id,
            leader_addr: self.leader_addr.clone(),
            term: self.term,
            members: self.members.clone(),
        }
    }

    /// From the wire form; `Err` names the field that does not parse.
    pub fn from_proto(p: &pb::GroupRoute) -> Result<Self, String> {
        Ok(GroupRoute {
            group: p.group.clone(),
            queues: p.queues,
            perm: p.perm.parse()?,
            message_type: p.message_type.parse()?,
            leader_id: p.leader_id,
            leader_addr: p.leader_addr.clone(),
            term: p.term,
            members: p.members.clone(),
        })
    }
}

/// A topic permission as a RocketMQ [`api::Permission`].
pub fn permission(p: Perm) -> api::Permission {
    match p {
        Perm::ReadWrite => api::Permission::ReadWrite,
        Perm::Read => api::Permission::Read,
        Perm::Write => api::Permission::Write,
    }
}

/// A topic message type as a RocketMQ [`api::MessageType`].
pub fn message_type(t: TopicMessageType) -> api::MessageType {
    match t {
        TopicMessageType::Normal => api::MessageType::Normal,
        TopicMessageType::Fifo => api::MessageType::Fifo,
        TopicMessageType::Delay => api::MessageType::Delay,
        TopicMessageType::Transaction => api::MessageType::Transaction,
    }
}

/// The form of a `host:port` address: its scheme and the host as RocketMQ writes it (IPv6
/// without brackets). `None` if there is no valid port.
pub fn parse_address(addr: &str) -> Option<(api::AddressScheme, api::Address)> {
    let addr = addr.trim();
    let addr = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if port == 0 || host.is_empty() {
        return None;
    }
    let (scheme, host) = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
    {
        v6.parse::<Ipv6Addr>().ok()?;
        (api::AddressScheme::IPv6, v6)
    } else if host.parse::<Ipv4Addr>().is_ok() {
        (api::AddressScheme::IPv4, host)
    } else if host.parse::<Ipv6Addr>().is_ok() {
        (api::AddressScheme::IPv6, host)
    } else {
        (api::AddressScheme::DomainName, host)
    };
    Some((
        scheme,
        api::Address {
            host: host.to_string(),
            port: i32::from(port),
        },
    ))
}

/// `Endpoints` for a list of `host:port` addresses, with the scheme matching the host form
/// (`IPv4`, `IPv6` or `DOMAIN_NAME`).
///
/// One `Endpoints` has one scheme, so only the addresses of the first valid address's form are
/// kept. Under `DOMAIN_NAME` only that first address is kept: the Python client refuses
/// several addresses with a domain scheme (and gRPC's `dns:` target names a single host).
/// Pass the leader first so that it is the one kept.
pub fn endpoints<S: AsRef<str>>(addrs: &[S]) -> api::Endpoints {
    let mut scheme = None;
    let mut addresses = Vec::new();
    for a in addrs {
        let Some((s, address)) = parse_address(a.as_ref()) else {
            continue;
        };
        match scheme {
            None => scheme = Some(s),
            Some(first) if first != s => continue,
            Some(_) => {}
        }
        if s == api::AddressScheme::DomainName && !addresses.is_empty() {
            break;
        }
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    api::Endpoints {
        scheme: scheme.unwrap_or(api::AddressScheme::Unspecified) as i32,
        addresses,
    }
}

/// The `MessageQueue`s of `topic` over `groups`: per group, per live member (leader
/// first), one queue per queue id `0..queues`; broker `{name = "<group>@<member address>",
/// id = 0, endpoints = that one member}`; the topic echoed as given (namespace included), the
/// topic's permission and its one accepted message type.
///
/// Why one broker entry per member rather than one entry listing every member: gRPC clients
/// put a multi-address target into the HTTP/2 `:authority` (`h1:p1,h2:p2`), which a strict
/// HTTP/2 server (ours, hyper/h2) rejects as malformed. With one member per entry every
/// client channel names a single node; any member serves any queue (followers forward to the
/// leader), so when a node dies the client's own retry on another queue entry reaches a live
/// member — failover without a client change. All entries of a group share queue ids: a
/// message sent through any of them lands in the same queue.
pub fn message_queues(topic: &api::Resource, groups: &[GroupRoute]) -> Vec<api::MessageQueue> {
    let mut out = Vec::new();
    for g in groups {
        // Queue-major order: neighbouring entries name different members, so a client that
        // retries a failed send on the next entry reaches another node.
        for q in 0..g.queues {
            for member in &g.members {
                out.push(api::MessageQueue {
                    topic: Some(topic.clone()),
                    id: i32::try_from(q).unwrap_or(i32::MAX),
                    permission: permission(g.perm) as i32,
                    broker: Some(api::Broker {
                        name: format!("{}@{}", g.group, member),
                        id: 0,
                        endpoints: Some(endpoints(std::slice::from_ref(member))),
                    }),
                    accept_message_types: vec![message_type(g.message_type) as i32],
                });
            }
        }
    }
    out
}

/// A `Status` with `code` and `message`.
pub fn status(code: api::Code, message: impl Into<String>) -> api::Status {
    api::Status {
        code: code as i32,
        message: message.into(),
    }
}

/// The whole `QueryRouteResponse` for `topic` over `groups`: `OK` with the queues, or
/// `TOPIC_NOT_FOUND` when no group holds it (errors always inside a gRPC-OK reply).
pub fn query_route_response(
    topic: &api::Resource,
    groups: &[GroupRoute],
) -> api::QueryRouteResponse {
    let queues = message_queues(topic, groups);
    if queues.is_empty() {
        return api::QueryRouteResponse {
            status: Some(status(
                api::Code::TopicNotFound,
                format!("topic `{}` does not exist", topic.name),
            )),
            message_queues: Vec::new(),
        };
    }
    api::QueryRouteResponse {
        status: Some(status(api::Code::Ok, "OK")),
        message_queues: queues,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        let (s, a) = parse_address("127.0.0.1:8081").unwrap();
        assert_eq!(
            (s, a.host.as_str(), a.port),
            (api::AddressScheme::IPv4, "127.0.0.1", 8081)
        );
        let (s, a) = parse_address("[::1]:9").unwrap();
        assert_eq!(
            (s, a.host.as_str(), a.port),
            (api::AddressScheme::IPv6, "::1", 9)
        );
        let (s, a) = parse_address("broker-0.raftmq.svc:8081").unwrap();
        assert_eq!(
            (s, a.host.as_str()),
            (api::AddressScheme::DomainName, "broker-0.raftmq.svc")
        );
        assert!(parse_address("nohost").is_none());
        assert!(parse_address("h:0").is_none());
        assert!(parse_address(":80").is_none());
    }

    #[test]
    fn endpoints_keep_one_scheme() {
        let e = endpoints(&["127.0.0.1:1", "127.0.0.1:2", "[::1]:3", "127.0.0.1:1"]);
        assert_eq!(e.scheme, api::AddressScheme::IPv4 as i32);
        assert_eq!(e.addresses.len(), 2);
        let e = endpoints(&["a.example:1", "b.example:2"]);
        assert_eq!(e.scheme, api::AddressScheme::DomainName as i32);
        assert_eq!(e.addresses.len(), 1);
        assert_eq!(e.addresses[0].host, "a.example");
        let e = endpoints::<&str>(&[]);
        assert_eq!(e.scheme, api::AddressScheme::Unspecified as i32);
    }

    #[test]
    fn queues_per_group() {
        let topic = api::Resource {
            resource_namespace: "ns".into(),
            name: "T".into(),
        };
        let mut a = GroupRoute::new(
            "g1",
            &TopicConfig {
                name: "T".into(),
                queues: 2,
                perm: Perm::ReadWrite,
                message_type: TopicMessageType::Fifo,
            },
            vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
        );
        a.leader_id = Some(1);
        let mut b = a.clone();
        b.group = "g2".into();
        b.perm = Perm::Read;
        b.queues = 1;
        let qs = message_queues(&topic, &[a.clone(), b.clone()]);
        // g1: 2 queues x 2 members (queue-major), g2: 1 queue x 2 members.
        let got: Vec<(String, i32)> = qs
            .iter()
            .map(|q| {
                (
                    q.broker
                        .as_ref()
                        .map(|b| b.name.clone())
                        .unwrap_or_default(),
                    q.id,
                )
            })
            .collect();
        let want: Vec<(String, i32)> = [
            ("g1@127.0.0.1:1", 0),
            ("g1@127.0.0.1:2", 0),
            ("g1@127.0.0.1:1", 1),
            ("g1@127.0.0.1:2", 1),
            ("g2@127.0.0.1:1", 0),
            ("g2@127.0.0.1:2", 0),
        ]
        .iter()
        .map(|(n, i)| (n.to_string(), *i))
        .collect();
        assert_eq!(got, want);
        assert_eq!(qs[0].topic.as_ref(), Some(&topic));
        assert_eq!(qs[0].permission, api::Permission::ReadWrite as i32);
        assert_eq!(qs[4].permission, api::Permission::Read as i32);
        assert_eq!(
            qs[0].accept_message_types,
            vec![api::MessageType::Fifo as i32]
        );
        for q in &qs {
            let broker = q.broker.as_ref().unwrap();
            assert_eq!(broker.id, 0);
            assert_eq!(broker.endpoints.as_ref().unwrap().addresses.len(), 1);
        }
        assert_eq!(GroupRoute::from_proto(&a.to_proto()), Ok(a));
        let r = query_route_response(&topic, &[]);
        assert_eq!(r.status.unwrap().code, api::Code::TopicNotFound as i32);
    }
}
