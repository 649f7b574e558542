//! Tests of the `StreamAppend` client against real and scripted peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use openraft::errors::{Fatal, RPCError};
use openraft::raft::{AppendEntriesRequest, StreamAppendError, StreamAppendResult};
use openraft::{BasicNode, EntryPayload, RaftNetworkV2};

use crate::proto::raftmq as pb;
use crate::raft::network::convert::{log_id_from_pb, stream_result_to_pb};
use crate::raft::network::test_util::{append_request, log_id, option, vote};
use crate::raft::network::{GrpcNetwork, GrpcNetworkConfig, GrpcNetworkFactory, Lane, RpcError};
use crate::raft::types::{Command, Entry, TypeConfig};

/// openraft's backoff from an unreachable peer is a wait in the request stream before its
/// first request: the stream must not connect before that request exists, or a dead peer
/// is redialled in a hot loop.
#[tokio::test]
async fn stream_connects_only_once_a_request_is_there() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let node = BasicNode::new(listener.local_addr().expect("addr").to_string());
    let factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());
    let mut net = factory.network(2, &node, Lane::Replication);
    let (tx, rx) = futures::channel::mpsc::unbounded::<AppendEntriesRequest<TypeConfig>>();
    let opening = tokio::spawn(async move {
        let _ = RaftNetworkV2::stream_append(&mut net, rx, option(400)).await;
    });
    // Nothing to send yet (openraft is backing off): no connection is attempted.
    let early = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(early.is_err(), "connected before any request was there");
    // The first request opens the connection.
    tx.unbounded_send(append_request(None, vec![]))
        .expect("send");
    tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .expect("connects once a request is there")
        .expect("accept");
    opening.abort();
}

/// A fake peer whose `StreamAppend` answers each request with `script(request)` (no answer
/// if `None`) and counts the requests it received.
type Script = dyn Fn(&pb::AppendEntriesRequest) -> Option<pb::StreamAppendResponse> + Send + Sync;

struct ScriptedPeer {
    script: Arc<Script>,
    received: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl pb::raft_service_server::RaftService for ScriptedPeer {
    async fn append_entries(
        &self,
        _: tonic::Request<pb::AppendEntriesRequest>,
    ) -> Result<tonic::Response<pb::AppendEntriesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }

    type StreamAppendStream = std::pin::Pin<
        Box<dyn Stream<Item = Result<pb::StreamAppendResponse, tonic::Status>> + Send>,
    >;

    async fn stream_append(
        &self,
        request: tonic::Request<tonic::Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<tonic::Response<Self::StreamAppendStream>, tonic::Status> {
        let script = self.script.clone();
        let received = self.received.clone();
        let responses = request
            .into_inner()
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(move |r| {
                received.fetch_add(1, Ordering::SeqCst);
                let response = r.ok().and_then(|req| script(&req));
                futures::future::ready(response.map(Ok))
            });
        Ok(tonic::Response::new(Box::pin(responses)))
    }

    async fn vote(
        &self,
        _: tonic::Request<pb::VoteRequest>,
    ) -> Result<tonic::Response<pb::VoteResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }

    async fn pre_vote(
        &self,
        _: tonic::Request<pb::VoteRequest>,
    ) -> Result<tonic::Response<pb::VoteResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }

    async fn install_snapshot(
        &self,
        _: tonic::Request<tonic::Streaming<pb::SnapshotChunk>>,
    ) -> Result<tonic::Response<pb::SnapshotResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }

    async fn transfer_leader(
        &self,
        _: tonic::Request<pb::TransferLeaderRequest>,
    ) -> Result<tonic::Response<pb::TransferLeaderResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("scripted"))
    }
}

struct Peer {
    node: BasicNode,
    received: Arc<AtomicU64>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn scripted_peer(
    script: impl Fn(&pb::AppendEntriesRequest) -> Option<pb::StreamAppendResponse>
    + Send
    + Sync
    + 'static,
) -> Peer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let node = BasicNode::new(listener.local_addr().expect("addr").to_string());
    let received = Arc::new(AtomicU64::new(0));
    let service = pb::raft_service_server::RaftServiceServer::new(ScriptedPeer {
        script: Arc::new(script),
        received: received.clone(),
    });
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Peer {
        node,
        received,
        server,
    }
}

fn flushed(req: &pb::AppendEntriesRequest) -> Option<pb::StreamAppendResponse> {
    let last = req
        .entries
        .last()
        .map(|e| pb::LogId {
            term: e.term,
            node_id: e.node_id,
            index: e.index,
        })
        .or(req.prev_log_id);
    Some(stream_result_to_pb(Ok(Ok(last.map(log_id_from_pb)))))
}

/// 3 entries of 10 KB each with a 16 KB budget: 3 wire requests (prev 10, 11, 12).
fn three_chunk_request() -> AppendEntriesRequest<TypeConfig> {
    let entries = (11..=13)
        .map(|i| Entry {
            log_id: log_id(2, 1, i),
            payload: EntryPayload::Normal(Command {
                kind: 3,
                data: Bytes::from(vec![0; 10_000]),
            }),
        })
        .collect();
    append_request(Some(log_id(1, 1, 10)), entries)
}

fn small_append_config() -> GrpcNetworkConfig {
    GrpcNetworkConfig {
        max_append_bytes: 16 << 10,
        ..Default::default()
    }
}

async fn collect_stream(
    net: &mut GrpcNetwork,
    input: impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
) -> Vec<Result<StreamAppendResult<TypeConfig>, RpcError>> {
    let stream = RaftNetworkV2::stream_append(net, input, option(4_000))
        .await
        .expect("stream opened");
    tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
        .await
        .expect("stream ends")
}

#[tokio::test]
async fn stream_merges_split_requests() {
    let peer = scripted_peer(flushed).await;
    let factory = GrpcNetworkFactory::new(1, small_append_config());
    let mut net = factory.network(2, &peer.node, Lane::Replication);
    let input = futures::stream::iter(vec![
        three_chunk_request(),
        append_request(Some(log_id(2, 1, 13)), vec![]),
    ]);
    let results = collect_stream(&mut net, input).await;
    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("no rpc error"))
        .collect();
    assert_eq!(
        results,
        vec![Ok(Some(log_id(2, 1, 13))), Ok(Some(log_id(2, 1, 13)))],
        "one result per openraft request"
    );
    assert_eq!(
        peer.received.load(Ordering::SeqCst),
        4,
        "3 chunks + 1 heartbeat"
    );
    assert_eq!(factory.split_append_count(), 1);
}

#[tokio::test]
async fn stream_reports_conflict_in_later_chunk_as_partial_progress() {
    // Accept the first chunk (prev 10), conflict on the second (prev 11).
    let peer = scripted_peer(|req| match req.prev_log_id.map(|p| p.index) {
        Some(10) => flushed(req),
        Some(_) => Some(stream_result_to_pb(Ok(Err(StreamAppendError::Conflict(
            log_id_from_pb(req.prev_log_id.unwrap_or_default()),
        ))))),
        None => None,
    })
    .await;
    let factory = GrpcNetworkFactory::new(1, small_append_config());
    let mut net = factory.network(2, &peer.node, Lane::Replication);
    let input = futures::stream::iter(vec![three_chunk_request()]);
    let results = collect_stream(&mut net, input).await;
    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("no rpc error"))
        .collect();
    assert_eq!(results, vec![Ok(Some(log_id(2, 1, 11)))]);
}

#[tokio::test]
async fn stream_passes_through_first_chunk_errors_and_remote_fatal() {
    let higher = vote(9, 3, true);
    let peer = scripted_peer(move |_| {
        Some(stream_result_to_pb(Ok(Err(StreamAppendError::HigherVote(
            higher,
        )))))
    })
    .await;
    let factory = GrpcNetworkFactory::new(1, small_append_config());
    let mut net = factory.network(2, &peer.node, Lane::Replication);
    let results =
        collect_stream(&mut net, futures::stream::iter(vec![three_chunk_request()])).await;
    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("no rpc error"))
        .collect();
    assert_eq!(results, vec![Err(StreamAppendError::HigherVote(higher))]);

    let peer = scripted_peer(|_| Some(stream_result_to_pb(Err(Fatal::Stopped)))).await;
    let mut net = factory.network(3, &peer.node, Lane::Replication);
    let results =
        collect_stream(&mut net, futures::stream::iter(vec![three_chunk_request()])).await;
    assert_eq!(results.len(), 1);
    assert!(
        matches!(&results[0], Err(RPCError::Unreachable(_))),
        "{results:?}"
    );
}

#[tokio::test]
async fn stream_times_out_only_while_requests_are_outstanding() {
    let ttl_option = option(400);
    let soft_ttl = ttl_option.soft_ttl();
    let peer = scripted_peer(|_| None).await;
    let factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());

    // Idle: no request sent, nothing outstanding, no timeout.
    let mut net = factory.network(2, &peer.node, Lane::Replication);
    let input = futures::stream::pending::<AppendEntriesRequest<TypeConfig>>();
    assert!(
        tokio::time::timeout(
            soft_ttl * 3,
            RaftNetworkV2::stream_append(&mut net, input, ttl_option.clone())
        )
        .await
        .is_err(),
        "an idle stream must not time out"
    );

    // A request the peer never answers: Timeout after about soft_ttl.
    let mut net = factory.network(2, &peer.node, Lane::Replication);
    let input =
        futures::stream::iter(vec![append_request(None, vec![])]).chain(futures::stream::pending());
    let mut stream = RaftNetworkV2::stream_append(&mut net, input, ttl_option)
        .await
        .expect("stream opened");
    let first = tokio::time::timeout(soft_ttl * 10, stream.next())
        .await
        .expect("bounded by soft_ttl")
        .expect("an item");
    assert!(matches!(first, Err(RPCError::Timeout(_))), "{first:?}");
    assert!(
        stream.next().await.is_none(),
        "the stream ends after an error"
    );
}

/// A request stream that reports when it is dropped.
struct DropSignal<S> {
    inner: S,
    dropped: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<S: Stream + Unpin> Stream for DropSignal<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl<S> Drop for DropSignal<S> {
    fn drop(&mut self) {
        if let Some(tx) = self.dropped.take() {
            let _ = tx.send(());
        }
    }
}

/// openraft ends a replication session by dropping the response stream, then starts the
/// next session, whose request stream reads the same shared replication state. The old
/// request stream must be dropped with it: left inside the HTTP/2 transport (which keeps
/// sending a request body after its response was dropped, as long as the peer keeps reading)
/// it competes with the new session for entries and sends some of them where no one reads
/// the answers, and the group stops committing.
#[tokio::test]
async fn dropping_the_responses_drops_the_request_stream() {
    let peer = scripted_peer(flushed).await;
    let factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());
    let mut net = factory.network(2, &peer.node, Lane::Replication);
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel();
    let input = DropSignal {
        inner: futures::stream::iter(vec![append_request(None, vec![])])
            .chain(futures::stream::pending()),
        dropped: Some(dropped_tx),
    };
    let mut stream = RaftNetworkV2::stream_append(&mut net, input, option(4_000))
        .await
        .expect("stream opened");
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an answer")
        .expect("an item");
    assert!(matches!(first, Ok(Ok(None))), "{first:?}");
    drop(stream);
    tokio::time::timeout(Duration::from_secs(10), dropped_rx)
        .await
        .expect("the request stream is dropped with the responses")
        .expect("drop signal");
}
