//! Serving a request here or forwarding it to the Raft leader: the forwarding clients, the
//! wait for a leader within the client's deadline, and the race against a leader change.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::MessagingSvc;
use super::convert::error_status;
use crate::broker::node::Node;
use crate::broker::ops::Route;
use crate::proto::apache::rocketmq::v2;
use crate::proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use crate::protocol::route::status;
use crate::raft::NodeId;

/// How often a request waiting for a leader looks again (besides waking on a leader change):
/// a new leader refuses writes until a quorum has acknowledged it.
pub(super) const LEADER_POLL: Duration = Duration::from_millis(100);
/// Time left to the leader beyond the forwarding node's own budget, so that the leader's
/// answer (not a deadline error) reaches the client.
pub(super) const FORWARD_SLACK: Duration = Duration::from_millis(200);
/// Ping interval and timeout of the channels that forward requests to the leader.
const FORWARD_KEEPALIVE: Duration = Duration::from_millis(300);
/// Leader-wait budget of a request that carries no `grpc-timeout`.
const DEFAULT_LEADER_WAIT: Duration = Duration::from_millis(2500);
/// Kept free of the client's deadline for the answer's way back.
const DEADLINE_MARGIN: Duration = Duration::from_millis(400);
/// Header marking a request that a follower forwarded to its leader.
pub(super) const FORWARDED: &str = "x-raftmq-forwarded";

impl MessagingSvc {
    pub(super) fn leader_client(
        &self,
        addr: &str,
    ) -> Result<MessagingServiceClient<Channel>, Status> {
        let mut g = self
            .leader_clients
            .lock()
            .map_err(|_| Status::internal("client cache lock poisoned"))?;
        if let Some(c) = g.get(addr) {
            return Ok(c.clone());
        }
        let tls = self.node()?.config.tls.clone();
        let ep = crate::tls::endpoint(addr, tls.as_ref())
            .map_err(|e| Status::internal(format!("bad leader address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            // A frozen leader (SIGSTOP, a hung host) keeps its TCP connections open: pings
            // fail the channel, and every request forwarded over it, within a second, so the
            // requests go to the next leader instead of hanging until the client gives up.
            .http2_keep_alive_interval(FORWARD_KEEPALIVE)
            .keep_alive_timeout(FORWARD_KEEPALIVE)
            .keep_alive_while_idle(true);
        let c = MessagingServiceClient::new(ep.connect_lazy())
            .max_decoding_message_size(crate::broker::MAX_GRPC_MESSAGE)
            .max_encoding_message_size(crate::broker::MAX_GRPC_MESSAGE);
        g.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Serve here or answer from the leader: `Ok(req)` hands the request back to be served on
    /// this node; `Err(reply)` is the answer — the leader's (the request forwarded with the
    /// client's headers by `call`), or `failed(status)` when no leader could take it within
    /// the request's budget (`HA_NOT_AVAILABLE`: the client retries).
    ///
    /// While the group has no leader, or the leader this node knows does not answer (killed,
    /// frozen: the forwarding channel's keepalive fails it), the request waits for the next
    /// leader instead of failing, as long as the client's own deadline allows
    /// ([`leader_wait_budget`]); an election takes well under a second.
    pub(super) async fn here_or_leader<Req, Resp, Fut>(
        &self,
        node: &Node,
        req: Request<Req>,
        reserved: Duration,
        call: impl Fn(MessagingServiceClient<Channel>, Request<Req>) -> Fut,
        failed: impl FnOnce(v2::Status) -> Resp,
    ) -> Result<Result<Request<Req>, Response<Resp>>, Status>
    where
        Req: Clone,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        let forwarded = req.metadata().get(FORWARDED).is_some();
        let deadline = tokio::time::Instant::now() + leader_wait_budget(req.metadata(), reserved);
        loop {
            let mut tried = None;
            let last = match node.route() {
                Ok(Route::Local) => return Ok(Ok(req)),
                Ok(Route::Leader(id, addr)) if !forwarded => {
                    tried = Some(id);
                    let c = self.leader_client(&addr)?;
                    let mut fwd = Request::new(req.get_ref().clone());
                    *fwd.metadata_mut() = Self::forward_metadata(req.metadata());
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    fwd.set_timeout(left + reserved + FORWARD_SLACK);
                    let until = deadline + reserved + FORWARD_SLACK;
                    match unless_leader_changes(node, id, until, call(c, fwd)).await {
                        // Only the message: the leader's response headers must not be re-sent.
                        Some(Ok(r)) => return Ok(Err(Response::new(r.into_inner()))),
                        Some(Err(e)) => status(
                            v2::Code::HaNotAvailable,
                            format!("leader {addr}: {}", e.message()),
                        ),
                        None => status(
                            v2::Code::HaNotAvailable,
                            format!("leader {addr} was replaced while it held the request"),
                        ),
                    }
                }
                // A forwarded request is never forwarded again: a transport-level error tells
                // the forwarding node to wait for the next leader and retry.
                Ok(Route::Leader(..)) => {
                    return Err(Status::unavailable(
                        "not the leader; leadership is changing",
                    ));
                }
                Err(e) if forwarded => return Err(Status::unavailable(e.to_string())),
                Err(e) => error_status(&e),
            };
            if tokio::time::Instant::now() >= deadline {
                return Ok(Err(Response::new(failed(last))));
            }
            let step = (tokio::time::Instant::now() + LEADER_POLL).min(deadline);
            node.wait_leader_change(tried, step).await;
        }
    }

    /// The client's `x-mq-*` and `authorization` headers plus the forwarded mark.
    pub(super) fn forward_metadata(
        md: &tonic::metadata::MetadataMap,
    ) -> tonic::metadata::MetadataMap {
        let mut out = tonic::metadata::MetadataMap::new();
        for kv in md.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv
                && k.as_str().starts_with("x-mq-")
            {
                out.insert(k.clone(), v.clone());
            }
        }
        // The leader checks the signature again (ACL): nothing marks a request as checked.
        crate::broker::auth::copy_auth_headers(md, &mut out);
        out.insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        out
    }
}

/// `fut` (a request forwarded to `leader`) raced against a leader change: `None` when another
/// node leads before `leader` answered (or `until` passed). A frozen leader keeps its
/// connections open until keepalives fail them; the election that replaces it usually ends
/// first, and the request then goes to the new leader at once instead of waiting out the
/// old one.
pub(super) async fn unless_leader_changes<F: std::future::Future>(
    node: &Node,
    leader: NodeId,
    until: tokio::time::Instant,
    fut: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        r = fut => Some(r),
        _ = node.wait_leader_change(Some(leader), until) => None,
    }
}

/// How long a request may wait for a leader: the client's deadline (`grpc-timeout`) less
/// `reserved` (a receive's long poll, which the leader spends) and a margin for the way
/// back; [`DEFAULT_LEADER_WAIT`] when the client sent no deadline.
pub(super) fn leader_wait_budget(
    md: &tonic::metadata::MetadataMap,
    reserved: Duration,
) -> Duration {
    match crate::protocol::grpc_timeout(md) {
        Some(t) => t
            .saturating_sub(reserved)
            .saturating_sub(DEADLINE_MARGIN)
            .min(Duration::from_secs(30)),
        None => DEFAULT_LEADER_WAIT,
    }
}
