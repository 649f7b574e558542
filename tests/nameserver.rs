//! Nameservers with real broker processes: registration, routes in every nameserver, expiry
//! of a killed node, and the RocketMQ access point (`QueryRoute`, `Telemetry`, `Heartbeat`)
//! over gRPC.

mod ns_harness;

use std::time::{Duration, Instant};

use futures::StreamExt;
use ns_harness::Env;
use raftmq::proto::apache::rocketmq::v2 as api;
use raftmq::proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use raftmq::proto::raftmq::admin as apb;
use raftmq::proto::raftmq::admin::admin_client::AdminClient;
use raftmq::proto::raftmq::nameserver as npb;
use raftmq::proto::raftmq::nameserver::nameserver_client::NameserverClient;
use tonic::transport::Channel;

const NODE_TIMEOUT_MS: u64 = 1500;

fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

async fn groups(ns: &str) -> Option<npb::ListGroupsReply> {
    NameserverClient::new(channel(ns))
        .list_groups(npb::ListGroupsRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

async fn routes(ns: &str, topic: &str) -> Option<npb::GetRoutesReply> {
    NameserverClient::new(channel(ns))
        .get_routes(npb::GetRoutesRequest {
            topics: vec![topic.to_string()],
        })
        .await
        .ok()
        .map(|r| r.into_inner())
}

async fn status(addr: &str) -> Option<apb::NodeStatus> {
    AdminClient::new(channel(addr))
        .status(apb::StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Wait until every listed node agrees on one leader and term.
async fn wait_leader(env: &Env, group: &str, ids: &[u64]) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views = Vec::new();
        for id in ids {
            views.push(status(&env.addr(group, *id)).await);
        }
        if let Some(Some(first)) = views.first()
            && let Some(l) = first.leader_id
            && ids.contains(&l)
            && views.iter().all(|v| {
                v.as_ref()
                    .is_some_and(|s| s.leader_id == Some(l) && s.term == first.term)
            })
        {
            return (l, first.term);
        }
        assert!(
            Instant::now() < deadline,
            "group {group}: no agreed leader: {views:?}\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_topic(addr: &str, name: &str, queues: u32, perm: &str, message_type: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = AdminClient::new(channel(addr))
            .upsert_topic(apb::TopicConfig {
                name: name.into(),
                queues,
                perm: perm.into(),
                message_type: message_type.into(),
            })
            .await;
        match r {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "create topic {name}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until `ns` shows `topic` in `group` with `leader` and `members` live members.
async fn wait_route(
    env: &Env,
    ns: &str,
    topic: &str,
    group: &str,
    leader: u64,
    members: usize,
) -> npb::GroupRoute {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = routes(ns, topic).await;
        if let Some(g) = r
            .as_ref()
            .and_then(|r| r.routes.iter().find(|t| t.topic == topic))
            .and_then(|t| t.groups.iter().find(|g| g.group == group))
            && g.leader_id == Some(leader)
            && g.members.len() == members
        {
            return g.clone();
        }
        assert!(
            Instant::now() < deadline,
            "nameserver {ns}: no route of {topic} in {group} with leader {leader} and {members} \
             members: {r:?}\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn node_ids(reply: &npb::ListGroupsReply, group: &str) -> Vec<u64> {
    reply
        .groups
        .iter()
        .filter(|g| g.group == group)
        .flat_map(|g| {
            g.nodes
                .iter()
                .filter_map(|n| n.report.as_ref().map(|r| r.node_id))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_in_every_nameserver_and_expiry() {
    let mut env = Env::new();
    let ns = [
        env.start_nameserver(NODE_TIMEOUT_MS),
        env.start_nameserver(NODE_TIMEOUT_MS),
    ];
    env.start_group("g1", 3);
    let (leader, term) = wait_leader(&env, "g1", &[1, 2, 3]).await;
    create_topic(&env.addr("g1", 2), "Orders", 4, "rw", "fifo").await;

    // Both nameservers route the topic to the group with its leader and 3 members.
    for n in &ns {
        let g = wait_route(&env, n, "Orders", "g1", leader, 3).await;
        assert_eq!(g.queues, 4);
        assert_eq!(g.perm, "rw");
        assert_eq!(g.message_type, "fifo");
        assert_eq!(g.members[0], env.addr("g1", leader), "leader first");
        assert_eq!(g.leader_addr, env.addr("g1", leader));
        assert!(g.term >= term);
        // Every member's own report catches up with the topic (followers apply it too).
        let deadline = Instant::now() + Duration::from_secs(20);
        let gs = loop {
            let gs = groups(n).await.expect("list groups");
            let all_have_it = gs.groups.iter().all(|g| {
                g.nodes.len() == 3
                    && g.nodes.iter().all(|s| {
                        s.report
                            .as_ref()
                            .is_some_and(|r| r.topics.iter().any(|t| t.name == "Orders"))
                    })
            });
            if all_have_it {
                break gs;
            }
            assert!(Instant::now() < deadline, "reports lack the topic: {gs:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(node_ids(&gs, "g1"), vec![1, 2, 3]);
        assert_eq!(gs.node_timeout_ms, NODE_TIMEOUT_MS);
        for (i, s) in gs.groups[0].nodes.iter().enumerate() {
            let report = s.report.clone().expect("report");
            assert_eq!(report.addr, env.addr("g1", i as u64 + 1));
            assert_eq!(report.group, "g1");
            assert!(!report.version.is_empty());
            assert!(report.applied.is_some() && report.committed.is_some());
            assert_eq!(report.voters, vec![1, 2, 3]);
            assert!(s.age_ms <= NODE_TIMEOUT_MS);
        }
    }

    // Live nodes are never dropped: they heartbeat at a third of the timeout.
    let watch_until = Instant::now() + Duration::from_millis(2 * NODE_TIMEOUT_MS);
    while Instant::now() < watch_until {
        for n in &ns {
            let gs = groups(n).await.expect("list groups");
            assert_eq!(
                node_ids(&gs, "g1"),
                vec![1, 2, 3],
                "a live node was dropped"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Kill the leader: it disappears from both nameservers within the node timeout (plus
    // scheduling slack), and both route to the new leader.
    env.kill_node("g1", leader);
    let killed = Instant::now();
    let mut gone = [false, false];
    while gone.iter().any(|g| !g) {
        for (i, n) in ns.iter().enumerate() {
            if !gone[i] {
                let gs = groups(n).await.expect("list groups");
                if !node_ids(&gs, "g1").contains(&leader) {
                    gone[i] = true;
                    let after = killed.elapsed();
                    assert!(
                        after >= Duration::from_millis(NODE_TIMEOUT_MS / 3),
                        "dropped after {after:?}, sooner than possible"
                    );
                }
            }
        }
        assert!(
            killed.elapsed() < Duration::from_millis(NODE_TIMEOUT_MS + 2000),
            "killed node {leader} still registered after {:?}: {gone:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let (new_leader, new_term) = wait_leader(&env, "g1", &rest).await;
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    for n in &ns {
        let g = wait_route(&env, n, "Orders", "g1", new_leader, 2).await;
        assert!(!g.members.contains(&env.addr("g1", leader)));
        assert_eq!(g.members[0], env.addr("g1", new_leader));
        assert_eq!(node_ids(&groups(n).await.expect("groups"), "g1"), rest);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_route_and_telemetry_over_grpc() {
    let mut env = Env::new();
    let ns = env.start_nameserver(NODE_TIMEOUT_MS);
    env.start_group("g1", 3);
    env.start_group("g2", 1);
    let (l1, _) = wait_leader(&env, "g1", &[1, 2, 3]).await;
    let (l2, _) = wait_leader(&env, "g2", &[1]).await;
    create_topic(&env.addr("g1", 1), "Pay", 2, "rw", "transaction").await;
    create_topic(&env.addr("g2", 1), "Pay", 3, "rw", "transaction").await;
    create_topic(&env.addr("g2", 1), "Audit", 1, "r", "normal").await;
    wait_route(&env, &ns, "Pay", "g1", l1, 3).await;
    wait_route(&env, &ns, "Pay", "g2", l2, 1).await;
    wait_route(&env, &ns, "Audit", "g2", l2, 1).await;

    let mut c = MessagingServiceClient::new(channel(&ns));
    let topic = api::Resource {
        resource_namespace: "ns1".into(),
        name: "Pay".into(),
    };
    let r = c
        .query_route(api::QueryRouteRequest {
            topic: Some(topic.clone()),
            endpoints: None,
        })
        .await
        .expect("grpc ok")
        .into_inner();
    assert_eq!(
        r.status.as_ref().map(|s| s.code),
        Some(api::Code::Ok as i32)
    );
    // One broker entry per live member (leader first), each with that member only.
    let mut got: Vec<(String, String, i32)> = Vec::new();
    for q in &r.message_queues {
        assert_eq!(
            q.topic.as_ref(),
            Some(&topic),
            "topic echoed with its namespace"
        );
        assert_eq!(q.permission, api::Permission::ReadWrite as i32);
        assert_eq!(
            q.accept_message_types,
            vec![api::MessageType::Transaction as i32]
        );
        let b = q.broker.as_ref().expect("broker");
        assert_eq!(b.id, 0);
        let e = b.endpoints.as_ref().expect("endpoints");
        assert_eq!(e.scheme, api::AddressScheme::IPv4 as i32);
        assert_eq!(e.addresses.len(), 1, "one member per broker entry");
        let addr = format!("{}:{}", e.addresses[0].host, e.addresses[0].port);
        let group = b.name.split('@').next().unwrap_or_default().to_string();
        assert_eq!(b.name, format!("{group}@{addr}"));
        got.push((group, addr, q.id));
    }
    assert_eq!(
        got[0],
        ("g1".to_string(), env.addr("g1", l1), 0),
        "leader first"
    );
    let mut want: Vec<(String, String, i32)> = Vec::new();
    for id in 1..=3 {
        for q in 0..2 {
            want.push(("g1".into(), env.addr("g1", id), q));
        }
    }
    for q in 0..3 {
        want.push(("g2".into(), env.addr("g2", 1), q));
    }
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // A read-only normal topic.
    let r = c
        .query_route(api::QueryRouteRequest {
            topic: Some(api::Resource {
                resource_namespace: String::new(),
                name: "Audit".into(),
            }),
            endpoints: None,
        })
        .await
        .expect("grpc ok")
        .into_inner();
    assert_eq!(r.message_queues.len(), 1);
    assert_eq!(r.message_queues[0].permission, api::Permission::Read as i32);
    assert_eq!(
        r.message_queues[0].accept_message_types,
        vec![api::MessageType::Normal as i32]
    );

    // Unknown topic: TOPIC_NOT_FOUND inside a gRPC-OK reply.
    let r = c
        .query_route(api::QueryRouteRequest {
            topic: Some(api::Resource {
                resource_namespace: String::new(),
                name: "Nope".into(),
            }),
            endpoints: None,
        })
        .await
        .expect("grpc ok")
        .into_inner();
    assert_eq!(
        r.status.as_ref().map(|s| s.code),
        Some(api::Code::TopicNotFound as i32)
    );
    assert!(r.message_queues.is_empty());

    // Heartbeat and NotifyClientTermination: OK.
    let h = c
        .heartbeat(api::HeartbeatRequest {
            group: None,
            client_type: api::ClientType::Producer as i32,
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert_eq!(h.status.map(|s| s.code), Some(api::Code::Ok as i32));
    let t = c
        .notify_client_termination(api::NotifyClientTerminationRequest { group: None })
        .await
        .expect("notify")
        .into_inner();
    assert_eq!(t.status.map(|s| s.code), Some(api::Code::Ok as i32));

    // Telemetry: each settings command is answered at once, on a stream that stays open.
    let (tx, rx) = tokio::sync::mpsc::channel::<api::TelemetryCommand>(4);
    let outbound =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let mut inbound = c.telemetry(outbound).await.expect("telemetry").into_inner();
    let producer = api::Settings {
        client_type: Some(api::ClientType::Producer as i32),
        pub_sub: Some(api::settings::PubSub::Publishing(api::Publishing {
            topics: vec![topic.clone()],
            max_body_size: 0,
            validate_message_type: false,
        })),
        ..Default::default()
    };
    let consumer = api::Settings {
        client_type: Some(api::ClientType::SimpleConsumer as i32),
        pub_sub: Some(api::settings::PubSub::Subscription(api::Subscription {
            group: Some(api::Resource {
                resource_namespace: String::new(),
                name: "G".into(),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    for (settings, is_producer) in [(producer, true), (consumer, false)] {
        tx.send(api::TelemetryCommand {
            status: None,
            command: Some(api::telemetry_command::Command::Settings(settings)),
        })
        .await
        .expect("send settings");
        let reply = tokio::time::timeout(Duration::from_secs(5), inbound.next())
            .await
            .expect("settings answered at once")
            .expect("stream open")
            .expect("reply");
        assert_eq!(reply.status.map(|s| s.code), Some(api::Code::Ok as i32));
        let Some(api::telemetry_command::Command::Settings(s)) = reply.command else {
            panic!("no settings in the reply");
        };
        let Some(api::retry_policy::Strategy::ExponentialBackoff(_)) =
            s.backoff_policy.as_ref().and_then(|b| b.strategy.clone())
        else {
            panic!("backoff must be exponential: {s:?}");
        };
        match s.pub_sub {
            Some(api::settings::PubSub::Publishing(p)) if is_producer => {
                assert_eq!(p.max_body_size, 4 << 20);
                assert!(p.validate_message_type);
                assert_eq!(p.topics, vec![topic.clone()]);
                assert_eq!(s.backoff_policy.map(|b| b.max_attempts), Some(3));
            }
            Some(api::settings::PubSub::Subscription(sub)) if !is_producer => {
                assert_eq!(sub.receive_batch_size, Some(32));
                assert_eq!(sub.long_polling_timeout.map(|d| d.seconds), Some(20));
                assert_eq!(sub.fifo, Some(false));
                assert_eq!(sub.group.map(|g| g.name), Some("G".to_string()));
            }
            other => panic!("wrong settings kind: {other:?}"),
        }
    }
    drop(tx);
    // The client closed its side: the server ends the stream.
    let end = tokio::time::timeout(Duration::from_secs(5), inbound.next())
        .await
        .expect("stream ends after the client closes");
    assert!(end.is_none_or(|r| r.is_err()));

    // The nameserver is the clients' proxy: a route asked with the endpoints the client used
    // names those endpoints for every queue (broker `<group>@<endpoint>`), and sends go
    // through it; a malformed one is answered by it inside a gRPC-OK reply.
    let (host, port) = ns.rsplit_once(':').expect("host:port");
    let via = api::Endpoints {
        scheme: api::AddressScheme::IPv4 as i32,
        addresses: vec![api::Address {
            host: host.to_string(),
            port: port.parse().expect("port"),
        }],
    };
    let r = c
        .query_route(api::QueryRouteRequest {
            topic: Some(topic.clone()),
            endpoints: Some(via.clone()),
        })
        .await
        .expect("grpc ok")
        .into_inner();
    assert_eq!(r.message_queues.len(), 2 + 3, "one entry per queue: {r:?}");
    for q in &r.message_queues {
        let b = q.broker.as_ref().expect("broker");
        assert_eq!(b.endpoints.as_ref(), Some(&via), "{q:?}");
        assert!(
            b.name == format!("g1@{ns}") || b.name == format!("g2@{ns}"),
            "{q:?}"
        );
    }
    let r = c
        .send_message(api::SendMessageRequest { messages: vec![] })
        .await
        .expect("grpc ok")
        .into_inner();
    assert_eq!(r.status.map(|s| s.code), Some(api::Code::BadRequest as i32));
}

#[tokio::test]
async fn shutdown_ends_open_telemetry_streams() {
    use raftmq::nameserver::{Nameserver, NameserverConfig};
    let ns = Nameserver::start(NameserverConfig::new("127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("start");
    let addr = ns.local_addr().to_string();
    let mut c = MessagingServiceClient::new(channel(&addr));
    let (tx, rx) = tokio::sync::mpsc::channel::<api::TelemetryCommand>(1);
    let outbound =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let mut inbound = c.telemetry(outbound).await.expect("telemetry").into_inner();
    tx.send(api::TelemetryCommand {
        status: None,
        command: Some(api::telemetry_command::Command::Settings(api::Settings {
            client_type: Some(api::ClientType::Producer as i32),
            ..Default::default()
        })),
    })
    .await
    .expect("send");
    let first = tokio::time::timeout(Duration::from_secs(5), inbound.next())
        .await
        .expect("answered");
    assert!(matches!(first, Some(Ok(_))));
    // The client keeps its side open; shutdown must not wait for it.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(4), ns.shutdown())
        .await
        .expect("shutdown does not hang on an open stream")
        .expect("clean shutdown");
    assert!(started.elapsed() < Duration::from_secs(4));
    let end = tokio::time::timeout(Duration::from_secs(5), inbound.next())
        .await
        .expect("stream ended");
    assert!(end.is_none_or(|r| r.is_err()));
    drop(tx);
}

/// One client's concurrent sends through the proxy (relayed to the group in shared batches):
/// each request gets its own answer, and a request the group refuses fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_through_the_proxy_each_get_their_answer() {
    let mut env = Env::new();
    let ns = env.start_nameserver(NODE_TIMEOUT_MS);
    env.start_group("g1", 1);
    let (l1, _) = wait_leader(&env, "g1", &[1]).await;
    create_topic(&env.addr("g1", 1), "Orders", 4, "rw", "normal").await;
    wait_route(&env, &ns, "Orders", "g1", l1, 1).await;

    let c = MessagingServiceClient::new(channel(&ns));
    let send = |i: usize| {
        let mut c = c.clone();
        async move {
            // Request 150 has no message id: the broker refuses it.
            let id = if i == 150 {
                String::new()
            } else {
                format!("PROXYBATCH{i:06}")
            };
            let mut r = tonic::Request::new(api::SendMessageRequest {
                messages: vec![api::Message {
                    topic: Some(api::Resource {
                        resource_namespace: String::new(),
                        name: "Orders".into(),
                    }),
                    user_properties: Default::default(),
                    system_properties: Some(api::SystemProperties {
                        message_id: id.clone(),
                        message_type: api::MessageType::Normal as i32,
                        body_encoding: api::Encoding::Identity as i32,
                        queue_id: (i % 4) as i32,
                        ..Default::default()
                    }),
                    body: format!("body {i}").into_bytes().into(),
                }],
            });
            r.metadata_mut()
                .insert("x-mq-client-id", "batch-client".parse().expect("header"));
            let resp = c.send_message(r).await.expect("grpc ok").into_inner();
            (i, id, resp)
        }
    };
    let answers = futures::future::join_all((0..300).map(send)).await;
    for (i, id, r) in answers {
        let code = r.status.as_ref().map(|s| s.code);
        if i == 150 {
            assert_eq!(code, Some(api::Code::IllegalMessageId as i32), "{r:?}");
            continue;
        }
        assert_eq!(code, Some(api::Code::Ok as i32), "send {i}: {r:?}");
        assert_eq!(r.entries.len(), 1, "send {i}: one entry per message: {r:?}");
        assert_eq!(r.entries[0].message_id, id, "send {i}: its own entry");
        assert!(r.entries[0].offset >= 0, "send {i}: {r:?}");
    }
}
