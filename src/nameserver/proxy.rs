//! The nameserver as a RocketMQ 5 **proxy**: official clients that use nameservers as their
//! access point send every RPC here, and each is relayed to the broker group that serves it.
//!
//! Why: the official clients open one HTTP/2 connection per route endpoint, with no
//! keepalive, and retry a failed send on the same queue's endpoint (always, for a FIFO
//! message). A leader that is frozen (SIGSTOP, a hung host) keeps that connection open, so
//! a client talking to it directly waits out its whole request timeout (3 s) on every
//! attempt. Behind the proxy the client's connection is to a process that is not a Raft
//! member; the proxy's own channels ping every [`KEEPALIVE`], give a request
//! [`PER_TRY`] per member before trying the next, and members wait for a new leader within
//! the request's deadline, so a leader change costs about one election.
//!
//! * **Routes**: a `QueryRoute` that names the endpoints the client used (every official
//!   client does) is answered with those endpoints as every queue's broker
//!   (`<group>@<endpoint>`); one without (raftmq's own client, which routes to leaders
//!   itself) gets the brokers' addresses.
//! * **Which group**: sends go to a group holding the topic (by message group for FIFO
//!   messages, round robin otherwise); a client's concurrent normal sends to one group are
//!   relayed as one batch request ([`coalesce`]); receives to the group named in the queue's broker;
//!   acks, invisibility changes, dead-lettering and transaction ends to the group named in
//!   the receipt handle or transaction id, which the proxy prefixes with `<group>|` on the
//!   way out and strips on the way in.
//! * **Telemetry**: each client stream is relayed to every member of every group (the
//!   leader runs transaction check-backs on the streams it holds); one Settings reply goes
//!   back per Settings command.
//!
//! Nothing here is durable: a proxy restart only makes clients reconnect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;
use tonic::metadata::{KeyAndValueRef, MetadataMap};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::registry::Registry;
use crate::proto::apache::rocketmq::v2 as api;
use crate::proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use crate::proto::apache::rocketmq::v2::messaging_service_server::MessagingService;
use crate::protocol::route::{GroupRoute, query_route_response, status};

mod coalesce;
mod telemetry;
mod unary;

/// Ping interval and timeout of the proxy's channels to broker nodes: a frozen node's
/// channel, and every request on it, fails within two of these.
pub const KEEPALIVE: Duration = Duration::from_millis(200);
/// How long one member gets to answer a unary request before the next is tried. Sends
/// answer in milliseconds; a retried send is stored once (message ids are deduplicated).
pub const PER_TRY: Duration = Duration::from_millis(300);
/// Kept free of the client's deadline for the answer's way back.
const MARGIN: Duration = Duration::from_millis(300);
/// Budget of a request that carries no deadline.
const DEFAULT_BUDGET: Duration = Duration::from_millis(2700);
/// A member that failed a request is tried last for this long.
const SUSPECT_FOR: Duration = Duration::from_secs(2);
/// Pause before asking again when a member answered "no leader".
const HA_PAUSE: Duration = Duration::from_millis(50);
/// Separator between the group and the broker's own receipt handle or transaction id.
const SEP: char = '|';
/// Largest gRPC message relayed (as the brokers).
pub const MAX_MESSAGE: usize = 80 << 20;

type BoxStream<T> = tonic::codegen::BoxStream<T>;

/// `apache.rocketmq.v2.MessagingService` relayed to the broker groups of a [`Registry`].
pub struct ProxyService {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    channels: Mutex<HashMap<String, MessagingServiceClient<Channel>>>,
    suspects: Mutex<HashMap<String, Instant>>,
    rr: AtomicU64,
    shutdown: watch::Receiver<bool>,
    /// Mutual TLS to the brokers; `None` = plaintext.
    tls: Option<crate::tls::TlsSettings>,
    /// Sends waiting to share a batch ([`coalesce`]).
    coalescer: coalesce::Coalescer,
}

impl ProxyService {
    /// A proxy over `registry`; its Telemetry streams end when `shutdown` turns true.
    pub fn new(registry: Arc<Registry>, shutdown: watch::Receiver<bool>) -> Self {
        Self::with_tls(registry, shutdown, None)
    }

    /// [`ProxyService::new`] whose channels to the brokers use mutual TLS when `tls` is set.
    pub fn with_tls(
        registry: Arc<Registry>,
        shutdown: watch::Receiver<bool>,
        tls: Option<crate::tls::TlsSettings>,
    ) -> Self {
        ProxyService {
            inner: Arc::new(Inner {
                registry,
                channels: Mutex::default(),
                suspects: Mutex::default(),
                rr: AtomicU64::new(0),
                shutdown,
                tls,
                coalescer: coalesce::Coalescer::default(),
            }),
        }
    }
}

/// `<group>|<id>` as handed to clients.
fn tag(group: &str, id: &str) -> String {
    if id.is_empty() {
        return String::new();
    }
    format!("{group}{SEP}{id}")
}

/// `(group, broker id)` of a tagged id; `None` for an id the proxy did not tag.
fn untag(s: &str) -> Option<(&str, &str)> {
    s.rsplit_once(SEP)
}

/// The broker group of a route's broker name (`<group>@<endpoint>`).
fn group_of_broker(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

/// The client headers a broker needs (`x-mq-*`, `authorization`), nothing else: hop headers
/// and the client's deadline are not copied (each try sets its own).
fn relay_metadata(md: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    for kv in md.iter() {
        if let KeyAndValueRef::Ascii(k, v) = kv
            && (k.as_str().starts_with("x-mq-") || k.as_str() == "authorization")
        {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn budget(md: &MetadataMap, reserved: Duration) -> Duration {
    match crate::protocol::grpc_timeout(md) {
        Some(t) => t.saturating_sub(reserved).saturating_sub(MARGIN),
        None => DEFAULT_BUDGET,
    }
}

fn is_ha(st: Option<&api::Status>) -> bool {
    st.is_some_and(|s| s.code == api::Code::HaNotAvailable as i32)
}

impl Inner {
    fn client(&self, addr: &str) -> Result<MessagingServiceClient<Channel>, Status> {
        let mut g = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = g.get(addr) {
            return Ok(c.clone());
        }
        let ep = crate::tls::endpoint(addr, self.tls.as_ref())
            .map_err(|e| Status::internal(format!("bad broker address {addr}: {e}")))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true);
        let c = MessagingServiceClient::new(ep.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        g.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn suspect(&self, addr: &str) {
        self.suspects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(addr.to_string(), Instant::now() + SUSPECT_FOR);
    }

    fn has_group(&self, name: &str) -> bool {
        self.registry
            .routing_groups()
            .iter()
            .any(|g| g.group == name)
    }

    /// Members of `group` in the order to try them: the reported leader first, then the
    /// others; members that failed recently go last.
    fn candidates(&self, group: &str) -> Vec<String> {
        let groups = self.registry.routing_groups();
        let Some(g) = groups.iter().find(|g| g.group == group) else {
            return Vec::new();
        };
        let now = Instant::now();
        let sus = self.suspects.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<(bool, usize, String)> = g
            .members
            .iter()
            .enumerate()
            .map(|(i, a)| (sus.get(a).is_some_and(|t| *t > now), i, a.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, _, a)| a).collect()
    }

    /// The groups holding `topic`, by name.
    fn topic_groups(&self, topic: &str) -> Vec<GroupRoute> {
        self.registry.group_routes(topic)
    }

    /// The group of a tagged id, or the first group holding `topic` for an untagged one.
    fn group_for<'a>(&self, tagged: &'a str, topic: &str) -> Option<(String, &'a str)> {
        match untag(tagged) {
            Some((g, id)) => Some((g.to_string(), id)),
            None => self
                .topic_groups(topic)
                .first()
                .map(|g| (g.group.clone(), tagged)),
        }
    }

    /// Every live member of every group.
    fn all_members(&self) -> Vec<(String, String)> {
        self.registry
            .routing_groups()
            .iter()
            .cloned()
            .flat_map(|g| {
                let name = g.group.clone();
                g.members.into_iter().map(move |a| (name.clone(), a))
            })
            .collect()
    }
}

fn no_group(topic: &str) -> api::Status {
    status(
        api::Code::TopicNotFound,
        format!("topic `{topic}` does not exist"),
    )
}

#[tonic::async_trait]
impl MessagingService for ProxyService {
    async fn query_route(
        &self,
        req: Request<api::QueryRouteRequest>,
    ) -> Result<Response<api::QueryRouteResponse>, Status> {
        let (md, _, req) = req.into_parts();
        let Some(topic) = req.topic.filter(|t| !t.name.is_empty()) else {
            return Ok(Response::new(api::QueryRouteResponse {
                status: Some(status(api::Code::IllegalTopic, "topic must not be empty")),
                message_queues: Vec::new(),
            }));
        };
        // Right after a (re)start no broker has reported yet: wait for the first report
        // rather than calling every topic unknown.
        let deadline = tokio::time::Instant::now() + budget(&md, Duration::ZERO);
        while self.inner.registry.routing_groups().is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(HA_PAUSE).await;
        }
        let mut groups = self.inner.topic_groups(&topic.name);
        let via: Vec<String> = req
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter())
            .map(|a| {
                if a.host.contains(':') {
                    format!("[{}]:{}", a.host, a.port)
                } else {
                    format!("{}:{}", a.host, a.port)
                }
            })
            .collect();
        if !via.is_empty() {
            for g in &mut groups {
                g.members = via.clone();
            }
        }
        Ok(Response::new(query_route_response(&topic, &groups)))
    }

    async fn heartbeat(
        &self,
        _: Request<api::HeartbeatRequest>,
    ) -> Result<Response<api::HeartbeatResponse>, Status> {
        // The brokers know the client alive through the relayed Telemetry streams.
        Ok(Response::new(api::HeartbeatResponse {
            status: Some(status(api::Code::Ok, "OK")),
        }))
    }

    async fn send_message(
        &self,
        req: Request<api::SendMessageRequest>,
    ) -> Result<Response<api::SendMessageResponse>, Status> {
        let (md, _, body) = req.into_parts();
        let fail = |st: api::Status| {
            Ok(Response::new(api::SendMessageResponse {
                status: Some(st),
                entries: vec![],
            }))
        };
        let Some(first) = body.messages.first() else {
            return fail(status(api::Code::BadRequest, "no message"));
        };
        let topic = first
            .topic
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let mut groups: Vec<String> = self
            .inner
            .topic_groups(&topic)
            .into_iter()
            .map(|g| g.group)
            .collect();
        if groups.is_empty() {
            return fail(no_group(&topic));
        }
        groups.sort();
        // A message group always goes to one broker group (order holds within a group's
        // queue); other messages are spread round robin.
        let pick = match first
            .system_properties
            .as_ref()
            .and_then(|p| p.message_group.as_deref())
        {
            Some(mg) => mg.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            }),
            None => self.inner.rr.fetch_add(1, Ordering::Relaxed),
        };
        let group = groups[(pick % groups.len() as u64) as usize].clone();
        let r = match coalesce::key(&group, &md, &body) {
            Some(key) => self.inner.coalesced_send(key, md, body).await,
            None => {
                self.inner
                    .unary(
                        &group,
                        &md,
                        body,
                        Duration::ZERO,
                        |mut c, r| async move { c.send_message(r).await },
                        |r: &api::SendMessageResponse| is_ha(r.status.as_ref()),
                    )
                    .await
            }
        };
        match r {
            Ok(mut resp) => {
                for e in &mut resp.entries {
                    e.transaction_id = tag(&group, &e.transaction_id);
                }
                Ok(Response::new(resp))
            }
            Err(st) => fail(st),
        }
    }

    async fn query_assignment(
        &self,
        req: Request<api::QueryAssignmentRequest>,
    ) -> Result<Response<api::QueryAssignmentResponse>, Status> {
        let (md, _, body) = req.into_parts();
        let topic = body
            .topic
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let groups = self.inner.topic_groups(&topic);
        if groups.is_empty() {
            return Ok(Response::new(api::QueryAssignmentResponse {
                status: Some(no_group(&topic)),
                assignments: vec![],
            }));
        }
        let proxy_endpoints = body.endpoints.clone();
        let mut assignments = Vec::new();
        let mut last = None;
        for g in &groups {
            let r = self
                .inner
                .unary(
                    &g.group,
                    &md,
                    body.clone(),
                    Duration::ZERO,
                    |mut c, r| async move { c.query_assignment(r).await },
                    |r: &api::QueryAssignmentResponse| is_ha(r.status.as_ref()),
                )
                .await;
            match r {
                Ok(resp)
                    if resp
                        .status
                        .as_ref()
                        .is_some_and(|s| s.code == api::Code::Ok as i32) =>
                {
                    for mut a in resp.assignments {
                        // The client must keep talking to the proxy, not the member.
                        if let (Some(mq), Some(ep)) = (a.message_queue.as_mut(), &proxy_endpoints)
                            && let Some(b) = mq.broker.as_mut()
                        {
                            let via = ep
                                .addresses
                                .first()
                                .map(|x| format!("{}:{}", x.host, x.port));
                            b.name = format!("{}@{}", g.group, via.unwrap_or_default());
                            b.endpoints = Some(ep.clone());
                        }
                        assignments.push(a);
                    }
                }
                Ok(resp) => last = resp.status,
                Err(st) => last = Some(st),
            }
        }
        let st = if assignments.is_empty() {
            last.unwrap_or_else(|| status(api::Code::Forbidden, "no readable queue"))
        } else {
            status(api::Code::Ok, "OK")
        };
        Ok(Response::new(api::QueryAssignmentResponse {
            status: Some(st),
            assignments,
        }))
    }

    async fn receive_message(
        &self,
        req: Request<api::ReceiveMessageRequest>,
    ) -> Result<Response<BoxStream<api::ReceiveMessageResponse>>, Status> {
        let (md, _, body) = req.into_parts();
        let one = |st: api::Status| {
            let item = api::ReceiveMessageResponse {
                content: Some(api::receive_message_response::Content::Status(st)),
            };
            Ok(Response::new(
                Box::pin(futures::stream::iter([Ok(item)])) as BoxStream<_>
            ))
        };
        let mq = body.message_queue.clone().unwrap_or_default();
        let topic = mq
            .topic
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let named = mq
            .broker
            .as_ref()
            .map(|b| group_of_broker(&b.name).to_string())
            .unwrap_or_default();
        let group = if self.inner.has_group(&named) {
            named
        } else {
            match self.inner.topic_groups(&topic).first() {
                Some(g) => g.group.clone(),
                None => return one(no_group(&topic)),
            }
        };
        let poll = body
            .long_polling_timeout
            .as_ref()
            .map(|d| {
                Duration::from_secs(d.seconds.max(0) as u64)
                    + Duration::from_nanos(d.nanos.max(0) as u64)
            })
            .unwrap_or(Duration::ZERO);
        // The whole response is collected (a receive answers at most one batch): a member
        // that fails mid-stream is retried like one that never answered, and a broken
        // stream never reaches the client.
        let r = self
            .inner
            .unary(
                &group,
                &md,
                body,
                poll,
                |mut c, r| async move {
                    let s = c.receive_message(r).await?;
                    let (m, s, e) = s.into_parts();
                    let items: Vec<api::ReceiveMessageResponse> = s
                        .collect::<Vec<_>>()
                        .await
                        .into_iter()
                        .collect::<Result<_, _>>()?;
                    Ok(Response::from_parts(m, items, e))
                },
                |items: &Vec<api::ReceiveMessageResponse>| {
                    items.iter().any(|i| match &i.content {
                        Some(api::receive_message_response::Content::Status(s)) => is_ha(Some(s)),
                        _ => false,
                    })
                },
            )
            .await;
        match r {
            Ok(mut items) => {
                for i in &mut items {
                    if let Some(api::receive_message_response::Content::Message(m)) = &mut i.content
                        && let Some(sp) = m.system_properties.as_mut()
                        && let Some(h) = sp.receipt_handle.as_mut()
                    {
                        *h = tag(&group, h);
                    }
                }
                Ok(Response::new(
                    Box::pin(futures::stream::iter(items.into_iter().map(Ok))) as BoxStream<_>,
                ))
            }
            Err(st) => one(st),
        }
    }

    async fn ack_message(
        &self,
        req: Request<api::AckMessageRequest>,
    ) -> Result<Response<api::AckMessageResponse>, Status> {
        let (md, _, body) = req.into_parts();
        let topic = body
            .topic
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        // Entries may come from several groups: one request per group.
        let mut by_group: Vec<(String, api::AckMessageRequest)> = Vec::new();
        for e in &body.entries {
            let Some((g, h)) = self.inner.group_for(&e.receipt_handle, &topic) else {
                return Ok(Response::new(api::AckMessageResponse {
                    status: Some(no_group(&topic)),
                    entries: vec![],
                }));
            };
            let mut e = e.clone();
            e.receipt_handle = h.to_string();
            match by_group.iter_mut().find(|(x, _)| *x == g) {
                Some((_, r)) => r.entries.push(e),
                None => by_group.push((
                    g,
                    api::AckMessageRequest {
                        entries: vec![e],
                        ..body.clone()
                    },
                )),
            }
        }
        let mut out = api::AckMessageResponse {
            status: Some(status(api::Code::Ok, "OK")),
            entries: vec![],
        };
        for (g, r) in by_group {
            let resp = self
                .inner
                .unary(
                    &g,
                    &md,
                    r,
                    Duration::ZERO,
                    |mut c, r| async move { c.ack_message(r).await },
                    |r: &api::AckMessageResponse| is_ha(r.status.as_ref()),
                )
                .await;
            match resp {
                Ok(resp) => {
                    if resp
                        .status
                        .as_ref()
                        .is_some_and(|s| s.code != api::Code::Ok as i32)
                    {
                        out.status = resp.status;
                    }
                    out.entries.extend(resp.entries.into_iter().map(|mut e| {
                        e.receipt_handle = tag(&g, &e.receipt_handle);
                        e
                    }));
                }
                Err(st) => out.status = Some(st),
            }
        }
        Ok(Response::new(out))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        req: Request<api::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<api::ForwardMessageToDeadLetterQueueResponse>, Status> {
        let (md, _, mut body) = req.into_parts();
        let topic = body
            .topic
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let Some((g, h)) = self.inner.group_for(&body.receipt_handle, &topic) else {
            return Ok(Response::new(
                api::ForwardMessageToDeadLetterQueueResponse {
                    status: Some(no_group(&topic)),
                },
            ));
        };
        body.receipt_handle = h.to_string();
        let r = self
            .inner
            .unary(
                &g,
                &md,
                body,
                Duration::ZERO,
                |mut c, r| async move { c.forward_message_to_dead_letter_queue(r).await },
                |r: &api::ForwardMessageToDeadLetterQueueResponse| is_ha(r.status.as_ref()),
            )
            .await;
        Ok(Response::new(r.unwrap_or_else(|st| {
            api::ForwardMessageToDeadLetterQueueResponse { status: Some(st) }
        })))
    }

    async fn end_transaction(
        &self,
        req: Request<api::EndTransactionRequest>,
    ) -> Result<Response<api::EndTransactionResponse>, Status> {
        let (md, _, mut body) = req.into_parts();
        let topic = body
            .topic
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let Some((g, tid)) = self.inner.group_for(&body.transaction_id, &topic) else {
            return Ok(Response::new(api::EndTransactionResponse {
                status: Some(no_group(&topic)),
            }));
        };
        body.transaction_id = tid.to_string();
        let r = self
            .inner
            .unary(
                &g,
                &md,
                body,
                Duration::ZERO,
                |mut c, r| async move { c.end_transaction(r).await },
                |r: &api::EndTransactionResponse| is_ha(r.status.as_ref()),
            )
            .await;
        Ok(Response::new(r.unwrap_or_else(|st| {
            api::EndTransactionResponse { status: Some(st) }
        })))
    }

    async fn telemetry(
        &self,
        req: Request<Streaming<api::TelemetryCommand>>,
    ) -> Result<Response<BoxStream<api::TelemetryCommand>>, Status> {
        let (md, _, inbound) = req.into_parts();
        let out = telemetry::relay(Arc::clone(&self.inner), relay_metadata(&md), inbound);
        Ok(Response::new(out))
    }

    async fn notify_client_termination(
        &self,
        req: Request<api::NotifyClientTerminationRequest>,
    ) -> Result<Response<api::NotifyClientTerminationResponse>, Status> {
        let (md, _, body) = req.into_parts();
        // Best effort to every member (each may hold renewals or a session for the client).
        let relay = relay_metadata(&md);
        let calls = self
            .inner
            .all_members()
            .into_iter()
            .filter_map(|(_, addr)| {
                let mut c = self.inner.client(&addr).ok()?;
                let mut r = Request::new(body.clone());
                *r.metadata_mut() = relay.clone();
                r.set_timeout(PER_TRY);
                Some(async move {
                    let _ = c.notify_client_termination(r).await;
                })
            });
        futures::future::join_all(calls).await;
        Ok(Response::new(api::NotifyClientTerminationResponse {
            status: Some(status(api::Code::Ok, "OK")),
        }))
    }

    async fn change_invisible_duration(
        &self,
        req: Request<api::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<api::ChangeInvisibleDurationResponse>, Status> {
        let (md, _, mut body) = req.into_parts();
        let original = body.receipt_handle.clone();
        let topic = body
            .topic
            .as_ref()
            .map(|t| t.name.clone())
            .unwrap_or_default();
        // Python copies the reply's handle before it checks the status: always return one.
        let Some((g, h)) = self.inner.group_for(&body.receipt_handle, &topic) else {
            return Ok(Response::new(api::ChangeInvisibleDurationResponse {
                status: Some(no_group(&topic)),
                receipt_handle: original,
            }));
        };
        body.receipt_handle = h.to_string();
        let r = self
            .inner
            .unary(
                &g,
                &md,
                body,
                Duration::ZERO,
                |mut c, r| async move { c.change_invisible_duration(r).await },
                |r: &api::ChangeInvisibleDurationResponse| is_ha(r.status.as_ref()),
            )
            .await;
        Ok(Response::new(match r {
            Ok(mut resp) => {
                resp.receipt_handle = if resp.receipt_handle.is_empty() {
                    original
                } else {
                    tag(&g, &resp.receipt_handle)
                };
                resp
            }
            Err(st) => api::ChangeInvisibleDurationResponse {
                status: Some(st),
                receipt_handle: original,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_untagged_ids_pass() {
        let h = "r1.3.17.abc.0011aabb";
        let t = tag("g-1", h);
        assert_eq!(untag(&t), Some(("g-1", h)));
        assert_eq!(untag(h), None);
        assert_eq!(tag("g", ""), "");
        assert_eq!(group_of_broker("g1@127.0.0.1:9876"), "g1");
        assert_eq!(group_of_broker("g1"), "g1");
    }

    #[test]
    fn relayed_headers_are_the_clients_own() {
        let mut md = MetadataMap::new();
        md.insert("x-mq-client-id", "c1".parse().unwrap());
        md.insert("authorization", "MQv2-HMAC-SHA1 x".parse().unwrap());
        md.insert("grpc-timeout", "3S".parse().unwrap());
        md.insert("user-agent", "grpc-python".parse().unwrap());
        let out = relay_metadata(&md);
        assert_eq!(out.len(), 2);
        assert!(out.get("x-mq-client-id").is_some() && out.get("authorization").is_some());
        assert_eq!(
            budget(&md, Duration::from_secs(1)),
            Duration::from_millis(1700)
        );
    }
}
