//! Tests of the factory, channel cache and unary RPCs.

use super::test_util::{append_request, option, vote};
use super::*;

#[test]
fn peer_uris() {
    assert_eq!(
        peer_uri("raftmq-1.raftmq.default.svc:8081"),
        "http://raftmq-1.raftmq.default.svc:8081"
    );
    assert_eq!(peer_uri("10.1.2.3:8081"), "http://10.1.2.3:8081");
    assert_eq!(peer_uri("[::1]:8081"), "http://[::1]:8081");
    assert_eq!(peer_uri("http://a:1"), "http://a:1");
    let config = GrpcNetworkConfig::default();
    for addr in [
        "raftmq-1.raftmq.default.svc:8081",
        "10.1.2.3:8081",
        "[::1]:8081",
    ] {
        peer_endpoint(addr, &config).expect(addr);
    }
    assert!(peer_endpoint("not a uri", &config).is_err());
}

/// A port nothing listens on (bound, then released).
fn closed_port_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr.to_string()
}

#[tokio::test]
async fn dead_peer_is_unreachable() {
    let mut factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());
    let node = BasicNode::new(closed_port_addr());
    // Creating clients does not connect, so it does not block on a dead peer.
    let mut net = tokio::time::timeout(Duration::from_secs(5), factory.new_client(2, &node))
        .await
        .expect("new_client must not block");
    let req = VoteRequest::new(vote(2, 1, false), None);
    let err = RaftNetworkV2::vote(&mut net, req, option(5_000))
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");

    let req = append_request(None, vec![]);
    let err = RaftNetworkV2::append_entries(&mut net, req, option(5_000))
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
}

#[tokio::test]
async fn bad_address_is_unreachable() {
    let mut factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());
    let mut net = factory
        .new_heartbeat_client(2, &BasicNode::new("not a uri"))
        .await;
    let req = VoteRequest::new(vote(2, 1, false), None);
    let err = RaftNetworkV2::vote(&mut net, req, option(1_000))
        .await
        .expect_err("bad address");
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
}

#[tokio::test]
async fn silent_peer_times_out() {
    // Accepts TCP connections (kernel backlog) but never speaks HTTP/2.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let node = BasicNode::new(listener.local_addr().expect("addr").to_string());
    let factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());

    let mut control = factory.network(2, &node, Lane::Control);
    let req = VoteRequest::new(vote(2, 1, false), None);
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        RaftNetworkV2::vote(&mut control, req, option(400)),
    )
    .await
    .expect("bounded by soft_ttl")
    .expect_err("no answer");
    assert!(matches!(err, RPCError::Timeout(_)), "{err:?}");

    let mut replication = factory.network(2, &node, Lane::Replication);
    let input = futures::stream::iter(vec![append_request(None, vec![])]);
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        RaftNetworkV2::stream_append(&mut replication, input, option(400)),
    )
    .await
    .expect("bounded by soft_ttl");
    assert!(
        matches!(result, Err(RPCError::Timeout(_))),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn channels_are_cached_per_peer_and_lane() {
    let factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());
    let count = || factory.channels.lock().expect("lock").len();
    let node = BasicNode::new("127.0.0.1:1");
    let _ = factory.network(2, &node, Lane::Replication);
    assert_eq!(count(), 2, "replication + control");
    let _ = factory.network(2, &node, Lane::Control);
    let _ = factory.network(2, &node, Lane::Replication);
    assert_eq!(count(), 2, "reused");
    let _ = factory.network(2, &node, Lane::Snapshot);
    assert_eq!(count(), 3);
    let _ = factory.network(3, &node, Lane::Control);
    assert_eq!(count(), 4);
    // A changed address replaces the cached channel.
    let moved = BasicNode::new("127.0.0.1:2");
    let _ = factory.network(2, &moved, Lane::Snapshot);
    assert_eq!(count(), 4);
    let cached = factory.channels.lock().expect("lock");
    assert_eq!(cached[&(2, Lane::Snapshot)].addr, "127.0.0.1:2");
}
