//! raftmq's own Rust client over the RocketMQ 5 gRPC protocol (`MessagingService`): the same
//! path the official SDKs take, used by the CLI and the benchmark.
//!
//! * [`Producer`]: resolves a topic's route through the access point (a nameserver or any
//!   broker node), sends each message to a queue entry chosen round robin, and retries a
//!   failed send on the next entry (neighbouring entries name different nodes), keeping the
//!   message id so a retry is stored once.
//! * [`SimpleConsumer`]: receive with an invisible duration and long polling, ack, change
//!   invisibility.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tonic::transport::Channel;

use crate::proto::apache::rocketmq::v2;
use crate::proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;

/// Client errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Transport failure.
    #[error("rpc to {addr} failed: {message}")]
    Rpc {
        /// The endpoint.
        addr: String,
        /// What gRPC said.
        message: String,
    },
    /// The broker answered with a RocketMQ status.
    #[error("broker status {code}: {message}")]
    Status {
        /// RocketMQ status code.
        code: i32,
        /// Its message.
        message: String,
    },
    /// Bad input or an unusable answer.
    #[error("{0}")]
    Invalid(String),
}

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct OutMessage {
    /// Topic.
    pub topic: String,
    /// Optional tag.
    pub tag: Option<String>,
    /// Keys.
    pub keys: Vec<String>,
    /// User properties.
    pub properties: HashMap<String, String>,
    /// Message group (FIFO topics).
    pub message_group: Option<String>,
    /// Body.
    pub body: Bytes,
    /// Message id; generated when empty. Retries reuse it.
    pub message_id: String,
}

/// Where a sent message was stored.
#[derive(Debug, Clone)]
pub struct SendReceipt {
    /// Message id.
    pub message_id: String,
    /// Queue offset.
    pub offset: i64,
    /// Broker group this attempt addressed.
    pub broker_group: String,
    /// Queue this attempt addressed. The protocol's send result does not name the queue: if an
    /// earlier attempt of the same message id was stored after all (`attempts > 1`, or an
    /// earlier `send` call), the broker deduplicates and `offset` is that copy's, possibly in
    /// another queue.
    pub queue_id: i32,
    /// Attempts this call made (1 = the first succeeded).
    pub attempts: u32,
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic.
    pub topic: String,
    /// Message id.
    pub message_id: String,
    /// Tag.
    pub tag: Option<String>,
    /// Keys.
    pub keys: Vec<String>,
    /// User properties.
    pub properties: HashMap<String, String>,
    /// Message group.
    pub message_group: Option<String>,
    /// Body.
    pub body: Bytes,
    /// Queue id and offset.
    pub queue: i32,
    /// Queue offset.
    pub offset: i64,
    /// Delivery attempt (1 = first).
    pub delivery_attempt: i32,
    /// Receipt handle for ack / change invisibility.
    pub receipt_handle: String,
    /// The node it came from (acks go there).
    pub endpoint: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn check(st: Option<&v2::Status>) -> Result<(), ClientError> {
    match st {
        Some(s) if s.code == v2::Code::Ok as i32 || s.code == v2::Code::MultipleResults as i32 => {
            Ok(())
        }
        Some(s) => Err(ClientError::Status {
            code: s.code,
            message: s.message.clone(),
        }),
        None => Err(ClientError::Invalid("response without status".into())),
    }
}

/// Connections to broker endpoints and the access point, shared by producer and consumer.
struct Channels {
    access: Vec<String>,
    clients: Mutex<HashMap<String, MessagingServiceClient<Channel>>>,
    timeout: Duration,
    /// `https://` with the cluster CA (and a client certificate if it has one); `None` =
    /// plaintext.
    tls: Option<crate::tls::TlsSettings>,
}

impl Channels {
    fn new(access_point: &str, timeout: Duration) -> Result<Self, ClientError> {
        let access: Vec<String> = access_point
            .split([',', ';'])
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if access.is_empty() {
            return Err(ClientError::Invalid("empty access point".into()));
        }
        Ok(Channels {
            access,
            clients: Mutex::new(HashMap::new()),
            timeout,
            tls: None,
        })
    }

    fn client(&self, addr: &str) -> Result<MessagingServiceClient<Channel>, ClientError> {
        let mut g = self
            .clients
            .lock()
            .map_err(|_| ClientError::Invalid("client cache lock poisoned".into()))?;
        if let Some(c) = g.get(addr) {
            return Ok(c.clone());
        }
        let ep = crate::tls::endpoint(addr, self.tls.as_ref())
            .map_err(|e| ClientError::Invalid(format!("bad address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(self.timeout)
            .tcp_nodelay(true);
        let c = MessagingServiceClient::new(ep.connect_lazy())
            .max_decoding_message_size(80 << 20)
            .max_encoding_message_size(80 << 20);
        g.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// The route of `topic`, asked of each access point in turn.
    async fn route(&self, topic: &str) -> Result<Vec<v2::MessageQueue>, ClientError> {
        let mut last = ClientError::Invalid("no access point answered".into());
        for ap in &self.access {
            let mut c = self.client(ap)?;
            let req = v2::QueryRouteRequest {
                topic: Some(v2::Resource {
                    resource_namespace: String::new(),
                    name: topic.to_string(),
                }),
                endpoints: None,
            };
            match c.query_route(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    check(r.status.as_ref())?;
                    return Ok(r.message_queues);
                }
                Err(e) => {
                    last = ClientError::Rpc {
                        addr: ap.clone(),
                        message: e.message().to_string(),
                    }
                }
            }
        }
        Err(last)
    }
}

fn endpoint_of(q: &v2::MessageQueue) -> Option<String> {
    let a = q.broker.as_ref()?.endpoints.as_ref()?.addresses.first()?;
    Some(if a.host.contains(':') {
        format!("[{}]:{}", a.host, a.port)
    } else {
        format!("{}:{}", a.host, a.port)
    })
}

/// The broker group of a route entry (`broker.name` is `<group>@<address>`).
fn broker_group(q: &v2::MessageQueue) -> &str {
    let name = q.broker.as_ref().map(|b| b.name.as_str()).unwrap_or("");
    name.split('@').next().unwrap_or(name)
}

/// The entry a message goes to: round robin over all entries, except that a message with a
/// message group always goes to the same broker group (chosen by a hash of the message group;
/// FIFO order holds only within one group's queue) and round robin over that group's members.
fn pick_entry<'a, T>(
    writable: &'a [T],
    group_of: impl Fn(&T) -> &str,
    message_group: Option<&str>,
    mut next: impl FnMut() -> u64,
) -> &'a T {
    let n = next() as usize;
    let Some(mg) = message_group else {
        return &writable[n % writable.len()];
    };
    let mut groups: Vec<&str> = writable.iter().map(&group_of).collect();
    groups.sort_unstable();
    groups.dedup();
    // FNV-1a: stable across processes and releases.
    let h = mg.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let g = groups[(h % groups.len() as u64) as usize];
    let members: Vec<&'a T> = writable.iter().filter(|q| group_of(q) == g).collect();
    members[n % members.len()]
}

/// One writable route entry, resolved once per route lookup so that a send does no string
/// formatting, map lookup or route copy (the client's CPU per message matters: it shares the
/// machine with the brokers in every benchmark and in most deployments' sidecars).
struct SendTarget {
    queue_id: i32,
    broker_group: Arc<str>,
    addr: Arc<str>,
    client: MessagingServiceClient<Channel>,
}

/// A topic's writable entries: `first` holds the first entry of each (broker group, queue) —
/// routes list the leader first, so a first attempt normally skips a follower's forwarding
/// hop — and `all` every member, for retries.
struct TopicRoute {
    first: Vec<Arc<SendTarget>>,
    all: Vec<Arc<SendTarget>>,
}

impl TopicRoute {
    fn build(
        topic: &str,
        queues: &[v2::MessageQueue],
        ch: &Channels,
    ) -> Result<TopicRoute, ClientError> {
        let mut all = Vec::new();
        let mut first = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for q in queues {
            if q.permission != v2::Permission::ReadWrite as i32
                && q.permission != v2::Permission::Write as i32
            {
                continue;
            }
            let Some(addr) = endpoint_of(q) else {
                continue;
            };
            let t = Arc::new(SendTarget {
                queue_id: q.id,
                broker_group: Arc::from(broker_group(q)),
                client: ch.client(&addr)?,
                addr: Arc::from(addr),
            });
            if seen.insert((t.broker_group.clone(), q.id)) {
                first.push(t.clone());
            }
            all.push(t);
        }
        if all.is_empty() {
            return Err(ClientError::Invalid(format!(
                "topic `{topic}` has no writable queue with an endpoint"
            )));
        }
        Ok(TopicRoute { first, all })
    }
}

/// A producer.
pub struct Producer {
    ch: Channels,
    routes: Mutex<HashMap<String, Arc<TopicRoute>>>,
    next: AtomicU64,
    seq: AtomicU64,
    /// Send attempts per message (default 3).
    pub max_attempts: u32,
}

impl Producer {
    /// A producer for the access point `host:port[,host:port]`.
    pub fn new(access_point: &str) -> Result<Self, ClientError> {
        Ok(Producer {
            ch: Channels::new(access_point, Duration::from_secs(10))?,
            routes: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            max_attempts: 3,
        })
    }

    /// Connect with TLS (`Some`): verify the servers against the CA in `tls`.
    pub fn with_tls(mut self, tls: Option<crate::tls::TlsSettings>) -> Self {
        self.ch.tls = tls;
        self
    }

    /// A producer whose every RPC (and each send attempt) is bounded by `timeout` instead of
    /// the default 10 s.
    pub fn with_timeout(access_point: &str, timeout: Duration) -> Result<Self, ClientError> {
        let mut p = Producer::new(access_point)?;
        p.ch.timeout = timeout;
        Ok(p)
    }

    async fn targets(&self, topic: &str, refresh: bool) -> Result<Arc<TopicRoute>, ClientError> {
        if !refresh && let Some(r) = self.routes.lock().ok().and_then(|g| g.get(topic).cloned()) {
            return Ok(r);
        }
        let q = self.ch.route(topic).await?;
        let r = Arc::new(TopicRoute::build(topic, &q, &self.ch)?);
        if let Ok(mut g) = self.routes.lock() {
            g.insert(topic.to_string(), r.clone());
        }
        Ok(r)
    }

    fn new_id(&self) -> String {
        let s = self.seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "01{:012X}{:08X}{:012X}",
            std::process::id() as u64,
            now_ms() as u32,
            s
        )
    }

    /// Send one message; retries on another queue entry (another node) on failure.
    pub async fn send(&self, m: OutMessage) -> Result<SendReceipt, ClientError> {
        crate::hops::mark(crate::hops::Hop::ClientSend, 0);
        let OutMessage {
            topic,
            tag,
            keys,
            properties,
            message_group,
            body,
            mut message_id,
        } = m;
        if message_id.is_empty() {
            message_id = self.new_id();
        }
        let now = now_ms();
        let message_type = if message_group.is_some() {
            v2::MessageType::Fifo
        } else {
            v2::MessageType::Normal
        };
        // Kept for route lookups and entry choice; the message owns the originals.
        let group_key = message_group.clone();
        let mut msg = v2::Message {
            topic: Some(v2::Resource {
                resource_namespace: String::new(),
                name: topic.clone(),
            }),
            user_properties: properties,
            system_properties: Some(v2::SystemProperties {
                tag,
                keys,
                message_id,
                body_encoding: v2::Encoding::Identity as i32,
                message_type: message_type as i32,
                born_timestamp: Some(prost_types::Timestamp {
                    seconds: now / 1000,
                    nanos: ((now % 1000) * 1_000_000) as i32,
                }),
                message_group,
                queue_id: -1,
                ..Default::default()
            }),
            body,
        };
        let attempts = self.max_attempts.max(1);
        let mut last = ClientError::Invalid("no attempt made".into());
        for attempt in 0..attempts {
            let route = self.targets(&topic, attempt > 0).await?;
            let candidates = if attempt == 0 {
                &route.first
            } else {
                &route.all
            };
            let t = pick_entry(
                candidates,
                |t| &t.broker_group,
                group_key.as_deref(),
                || self.next.fetch_add(1, Ordering::Relaxed),
            );
            if let Some(sp) = msg.system_properties.as_mut() {
                sp.queue_id = t.queue_id;
            }
            // The last attempt gives the message away; earlier ones keep it for a retry.
            let one = if attempt + 1 == attempts {
                std::mem::take(&mut msg)
            } else {
                msg.clone()
            };
            let mut c = t.client.clone();
            match c
                .send_message(v2::SendMessageRequest {
                    messages: vec![one],
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    match check(r.status.as_ref()) {
                        Ok(()) => {
                            let mut entries = r.entries.into_iter();
                            let e = entries.next().ok_or_else(|| {
                                ClientError::Invalid("send result without entry".into())
                            })?;
                            check(e.status.as_ref())?;
                            crate::hops::mark(crate::hops::Hop::ClientAck, 0);
                            return Ok(SendReceipt {
                                message_id: e.message_id,
                                offset: e.offset,
                                broker_group: t.broker_group.to_string(),
                                queue_id: t.queue_id,
                                attempts: attempt + 1,
                            });
                        }
                        // Only unavailability is worth another attempt; a bad request is final.
                        Err(ClientError::Status { code, message })
                            if code == v2::Code::HaNotAvailable as i32
                                || code == v2::Code::InternalServerError as i32 =>
                        {
                            last = ClientError::Status { code, message };
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => {
                    last = ClientError::Rpc {
                        addr: t.addr.to_string(),
                        message: e.message().to_string(),
                    }
                }
            }
        }
        Err(last)
    }
}

/// A simple consumer (RocketMQ 5 "pop" consumption).
pub struct SimpleConsumer {
    ch: Channels,
    group: String,
    topic: String,
    filter: String,
    queues: Mutex<Vec<v2::MessageQueue>>,
    next: AtomicU64,
}

impl SimpleConsumer {
    /// A consumer of `topic` in `group`, with tag filter `filter` (`*` for all).
    pub fn new(
        access_point: &str,
        group: &str,
        topic: &str,
        filter: &str,
    ) -> Result<Self, ClientError> {
        Ok(SimpleConsumer {
            ch: Channels::new(access_point, Duration::from_secs(60))?,
            group: group.to_string(),
            topic: topic.to_string(),
            filter: filter.to_string(),
            queues: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        })
    }

    /// Connect with TLS (`Some`): verify the servers against the CA in `tls`.
    pub fn with_tls(mut self, tls: Option<crate::tls::TlsSettings>) -> Self {
        self.ch.tls = tls;
        self
    }

    /// A consumer whose RPCs are bounded by `timeout` (default 60 s; it must exceed the long
    /// polling wait given to [`SimpleConsumer::receive`]).
    pub fn with_timeout(
        access_point: &str,
        group: &str,
        topic: &str,
        filter: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut c = SimpleConsumer::new(access_point, group, topic, filter)?;
        c.ch.timeout = timeout;
        Ok(c)
    }

    async fn pick(&self) -> Result<v2::MessageQueue, ClientError> {
        let cached = self.queues.lock().map(|g| g.clone()).unwrap_or_default();
        let queues = if cached.is_empty() {
            let q: Vec<v2::MessageQueue> = self
                .ch
                .route(&self.topic)
                .await?
                .into_iter()
                .filter(|q| {
                    q.permission == v2::Permission::ReadWrite as i32
                        || q.permission == v2::Permission::Read as i32
                })
                .collect();
            if let Ok(mut g) = self.queues.lock() {
                *g = q.clone();
            }
            q
        } else {
            cached
        };
        if queues.is_empty() {
            return Err(ClientError::Invalid(format!(
                "topic `{}` has no readable queue",
                self.topic
            )));
        }
        Ok(queues[(self.next.fetch_add(1, Ordering::Relaxed) as usize) % queues.len()].clone())
    }

    /// Receive up to `max` messages, invisible for `invisible`, waiting up to `wait`.
    pub async fn receive(
        &self,
        max: i32,
        invisible: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, ClientError> {
        let q = self.pick().await?;
        let addr = endpoint_of(&q)
            .ok_or_else(|| ClientError::Invalid("route without endpoints".into()))?;
        let mut c = self.ch.client(&addr)?;
        let req = v2::ReceiveMessageRequest {
            group: Some(v2::Resource {
                resource_namespace: String::new(),
                name: self.group.clone(),
            }),
            message_queue: Some(q),
            filter_expression: Some(v2::FilterExpression {
                r#type: v2::FilterType::Tag as i32,
                expression: self.filter.clone(),
            }),
            batch_size: max,
            invisible_duration: Some(prost_types::Duration {
                seconds: invisible.as_secs() as i64,
                nanos: invisible.subsec_nanos() as i32,
            }),
            auto_renew: false,
            long_polling_timeout: Some(prost_types::Duration {
                seconds: wait.as_secs() as i64,
                nanos: wait.subsec_nanos() as i32,
            }),
            attempt_id: None,
        };
        let mut stream = match c.receive_message(req).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                // Drop the cached route: the node may be gone.
                if let Ok(mut g) = self.queues.lock() {
                    g.clear();
                }
                return Err(ClientError::Rpc {
                    addr,
                    message: e.message().to_string(),
                });
            }
        };
        let mut out = Vec::new();
        while let Some(item) = stream.message().await.map_err(|e| ClientError::Rpc {
            addr: addr.clone(),
            message: e.message().to_string(),
        })? {
            match item.content {
                Some(v2::receive_message_response::Content::Status(s))
                    if s.code != v2::Code::Ok as i32
                        && s.code != v2::Code::MessageNotFound as i32 =>
                {
                    return Err(ClientError::Status {
                        code: s.code,
                        message: s.message,
                    });
                }
                Some(v2::receive_message_response::Content::Message(m)) => {
                    let sp = m.system_properties.unwrap_or_default();
                    out.push(Received {
                        topic: m.topic.map(|t| t.name).unwrap_or_default(),
                        message_id: sp.message_id,
                        tag: sp.tag,
                        keys: sp.keys,
                        properties: m.user_properties,
                        message_group: sp.message_group,
                        body: m.body,
                        queue: sp.queue_id,
                        offset: sp.queue_offset.unwrap_or(-1),
                        delivery_attempt: sp.delivery_attempt.unwrap_or(1),
                        receipt_handle: sp.receipt_handle.unwrap_or_default(),
                        endpoint: addr.clone(),
                    });
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Ack one received message.
    pub async fn ack(&self, m: &Received) -> Result<(), ClientError> {
        self.ack_all(std::slice::from_ref(m)).await
    }

    /// Ack several received messages; those received from one endpoint go in one
    /// AckMessage request (which the broker applies as one Raft command). Fails on the first
    /// request that fails; the status of each entry is checked.
    pub async fn ack_all(&self, msgs: &[Received]) -> Result<(), ClientError> {
        let mut by_endpoint: HashMap<&str, Vec<&Received>> = HashMap::new();
        for m in msgs {
            by_endpoint.entry(m.endpoint.as_str()).or_default().push(m);
        }
        for (endpoint, ms) in by_endpoint {
            let mut c = self.ch.client(endpoint)?;
            let r = c
                .ack_message(v2::AckMessageRequest {
                    group: Some(v2::Resource {
                        resource_namespace: String::new(),
                        name: self.group.clone(),
                    }),
                    topic: Some(v2::Resource {
                        resource_namespace: String::new(),
                        name: self.topic.clone(),
                    }),
                    entries: ms
                        .iter()
                        .map(|m| v2::AckMessageEntry {
                            message_id: m.message_id.clone(),
                            receipt_handle: m.receipt_handle.clone(),
                            lite_topic: None,
                        })
                        .collect(),
                })
                .await
                .map_err(|e| ClientError::Rpc {
                    addr: endpoint.to_string(),
                    message: e.message().to_string(),
                })?
                .into_inner();
            check(r.status.as_ref())?;
            for e in &r.entries {
                check(e.status.as_ref())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(group: &str, addr: &str, id: i32) -> v2::MessageQueue {
        v2::MessageQueue {
            id,
            broker: Some(v2::Broker {
                name: format!("{group}@{addr}"),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_message_group_sticks_to_one_broker_group() {
        let all: Vec<v2::MessageQueue> = ["a", "b"]
            .iter()
            .flat_map(|g| (0..3).map(move |m| entry(g, &format!("{g}{m}:1"), m)))
            .collect();
        let writable: Vec<&v2::MessageQueue> = all.iter().collect();
        fn group_of<'a>(q: &'a &v2::MessageQueue) -> &'a str {
            broker_group(q)
        }
        for mg in ["order-1", "order-2", "x", "y", "z"] {
            let mut n = 0u64;
            let picked: Vec<String> = (0..12)
                .map(|_| {
                    let q = pick_entry(&writable, group_of, Some(mg), || {
                        n += 1;
                        n
                    });
                    q.broker
                        .as_ref()
                        .map(|b| b.name.clone())
                        .unwrap_or_default()
                })
                .collect();
            let groups: std::collections::BTreeSet<&str> = picked
                .iter()
                .map(|s| s.split('@').next().unwrap_or(""))
                .collect();
            assert_eq!(groups.len(), 1, "{mg} went to {picked:?}");
            let members: std::collections::BTreeSet<&String> = picked.iter().collect();
            assert_eq!(members.len(), 3, "retries rotate over the group's members");
        }
        // Without a message group every entry is used.
        let mut n = 0u64;
        let names: std::collections::BTreeSet<String> = (0..6)
            .map(|_| {
                let q = pick_entry(&writable, group_of, None, || {
                    n += 1;
                    n
                });
                q.broker
                    .as_ref()
                    .map(|b| b.name.clone())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(names.len(), 6);
    }
}
