//! Workload drivers shared by raftmq and NATS: produce with a bounded number of requests in
//! flight (optionally at a fixed rate), consume with an ack per message, and both at once.
//!
//! Every message body starts with its send time (unix nanoseconds, 8 bytes little-endian) so
//! that a consumer in the same process measures send-to-receive latency.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use raftmq::client::{OutMessage, Producer, SimpleConsumer};
use raftmq::proto::apache::rocketmq::v2;
use raftmq::proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;
use tonic::transport::Channel;

use crate::report;

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A body of `size` bytes (at least 8) stamped with the current time.
pub fn body(size: usize, pattern: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(size.max(8));
    v.extend_from_slice(&unix_nanos().to_le_bytes());
    if size > 8 {
        v.extend_from_slice(&pattern[..size - 8]);
    }
    Bytes::from(v)
}

fn stamp_age(body: &[u8]) -> Option<Duration> {
    let b: [u8; 8] = body.get(..8)?.try_into().ok()?;
    let sent = u64::from_le_bytes(b);
    Some(Duration::from_nanos(unix_nanos().saturating_sub(sent)))
}

/// Sends one request of one or more messages and waits for its acknowledgement.
pub enum Sender {
    /// raftmq through the project client (one message per request).
    Raftmq { producer: Producer, topic: String },
    /// raftmq, several messages per `SendMessageRequest` (raw generated client; the project
    /// client sends one message per request).
    RaftmqBatch(RawBatch),
    /// raftmq through the official Apache RocketMQ Rust client (crate `rocketmq`,
    /// apache/rocketmq-clients `rust/`): `Producer::send`, one message per request. Only with
    /// the `official-rust` feature (its dependency tree is large and old: kept out of CI).
    #[cfg(feature = "official-rust")]
    OfficialRust {
        producer: Box<rocketmq::Producer>,
        topic: String,
    },
    /// NATS JetStream publish + PubAck (a batch is that many pipelined publishes).
    Nats {
        js: async_nats::jetstream::Context,
        subject: String,
    },
}

impl Sender {
    async fn send(&self, bodies: Vec<Bytes>) -> Result<()> {
        match self {
            Sender::Raftmq { producer, topic } => {
                for b in bodies {
                    producer
                        .send(OutMessage {
                            topic: topic.clone(),
                            body: b,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| anyhow!("send: {e}"))?;
                }
                Ok(())
            }
            Sender::RaftmqBatch(r) => r.send(bodies).await,
            #[cfg(feature = "official-rust")]
            Sender::OfficialRust { producer, topic } => {
                for b in bodies {
                    let m = rocketmq::model::message::MessageBuilder::builder()
                        .set_topic(topic.as_str())
                        .set_body(b.to_vec())
                        .build()
                        .map_err(|e| anyhow!("message: {e}"))?;
                    producer.send(m).await.map_err(|e| anyhow!("send: {e}"))?;
                }
                Ok(())
            }
            Sender::Nats { js, subject } => {
                let mut acks = Vec::with_capacity(bodies.len());
                for b in bodies {
                    acks.push(
                        js.publish(subject.clone(), b)
                            .await
                            .map_err(|e| anyhow!("publish: {e}"))?,
                    );
                }
                for a in acks {
                    a.await.map_err(|e| anyhow!("puback: {e}"))?;
                }
                Ok(())
            }
        }
    }
}

/// A started official Rust client producer whose access point is `access` (HOST:PORT: the
/// nameserver, i.e. the proxy, or a broker), with the route of `topic` prefetched.
#[cfg(not(feature = "official-rust"))]
pub async fn official_rust(_access: &str, _topic: &str) -> Result<Sender> {
    Err(anyhow!(
        "--client official-rust needs the bench built with `--features official-rust`"
    ))
}

/// A started official Rust client producer whose access point is `access` (HOST:PORT: the
/// nameserver, i.e. the proxy, or a broker), with the route of `topic` prefetched.
#[cfg(feature = "official-rust")]
pub async fn official_rust(access: &str, topic: &str) -> Result<Sender> {
    let mut po = rocketmq::conf::ProducerOption::default();
    po.set_topics(vec![topic]);
    let mut co = rocketmq::conf::ClientOption::default();
    co.set_access_url(access);
    co.set_enable_tls(false);
    let mut producer =
        rocketmq::Producer::new(po, co).map_err(|e| anyhow!("official client: {e}"))?;
    producer
        .start()
        .await
        .map_err(|e| anyhow!("official client start: {e}"))?;
    Ok(Sender::OfficialRust {
        producer: Box::new(producer),
        topic: topic.into(),
    })
}

/// raftmq batches: `SendMessageRequest` with many messages, round robin over the route's
/// entries (like the project client).
pub struct RawBatch {
    topic: String,
    targets: Vec<(MessagingServiceClient<Channel>, i32)>,
    next: Cell<usize>,
    seq: Cell<u64>,
}

impl RawBatch {
    pub async fn new(nameserver: &str, topic: &str) -> Result<RawBatch> {
        let connect = |addr: &str| -> Result<MessagingServiceClient<Channel>> {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .timeout(Duration::from_secs(10))
                .tcp_nodelay(true);
            Ok(MessagingServiceClient::new(ep.connect_lazy())
                .max_decoding_message_size(80 << 20)
                .max_encoding_message_size(80 << 20))
        };
        let mut ns = connect(nameserver)?;
        let r = ns
            .query_route(v2::QueryRouteRequest {
                topic: Some(v2::Resource {
                    resource_namespace: String::new(),
                    name: topic.into(),
                }),
                endpoints: None,
            })
            .await
            .context("query route")?
            .into_inner();
        let mut targets = Vec::new();
        let mut cache: std::collections::HashMap<String, MessagingServiceClient<Channel>> =
            Default::default();
        for q in r.message_queues {
            let Some(a) = q
                .broker
                .as_ref()
                .and_then(|b| b.endpoints.as_ref())
                .and_then(|e| e.addresses.first())
            else {
                continue;
            };
            let addr = format!("{}:{}", a.host, a.port);
            let c = match cache.get(&addr) {
                Some(c) => c.clone(),
                None => {
                    let c = connect(&addr)?;
                    cache.insert(addr, c.clone());
                    c
                }
            };
            targets.push((c, q.id));
        }
        if targets.is_empty() {
            bail!("topic {topic} has no route entries");
        }
        Ok(RawBatch {
            topic: topic.into(),
            targets,
            next: Cell::new(0),
            seq: Cell::new(0),
        })
    }

    async fn send(&self, bodies: Vec<Bytes>) -> Result<()> {
        let i = self.next.get();
        self.next.set(i.wrapping_add(1));
        let (client, queue) = &self.targets[i % self.targets.len()];
        let messages = bodies
            .into_iter()
            .map(|body| {
                let s = self.seq.get();
                self.seq.set(s + 1);
                v2::Message {
                    topic: Some(v2::Resource {
                        resource_namespace: String::new(),
                        name: self.topic.clone(),
                    }),
                    user_properties: Default::default(),
                    system_properties: Some(v2::SystemProperties {
                        message_id: format!("BENCH{:08X}{:016X}", std::process::id(), s),
                        body_encoding: v2::Encoding::Identity as i32,
                        message_type: v2::MessageType::Normal as i32,
                        queue_id: *queue,
                        ..Default::default()
                    }),
                    body,
                }
            })
            .collect();
        let r = client
            .clone()
            .send_message(v2::SendMessageRequest { messages })
            .await
            .map_err(|e| anyhow!("send: {}", e.message()))?
            .into_inner();
        let ok = |s: Option<&v2::Status>| {
            s.is_some_and(|s| {
                s.code == v2::Code::Ok as i32 || s.code == v2::Code::MultipleResults as i32
            })
        };
        if !ok(r.status.as_ref()) || !r.entries.iter().all(|e| ok(e.status.as_ref())) {
            bail!("send batch failed: {:?}", r.status);
        }
        Ok(())
    }
}

/// Produce parameters.
#[derive(Clone, Copy)]
pub struct ProduceShape {
    pub messages: u64,
    pub size: usize,
    /// Requests in flight per producer.
    pub inflight: usize,
    /// Messages per request.
    pub batch: usize,
    /// Messages per second over all producers (None: as fast as the in-flight bound allows).
    pub rate: Option<f64>,
    pub max: Duration,
}

pub struct ProduceOut {
    pub sent: u64,
    pub secs: f64,
    /// Per request: from the start of the send to its acknowledgement.
    pub lat: Histogram<u64>,
    pub stopped_by_time_limit: bool,
}

/// Counters shared by the producers of one run.
struct Shared<'a> {
    shape: ProduceShape,
    t0: Instant,
    pattern: &'a [u8],
    lat: RefCell<Histogram<u64>>,
    issued: Cell<u64>,
    sent: Cell<u64>,
    stopped: Cell<bool>,
    pb: &'a ProgressBar,
}

/// Produce `shape.messages` messages; `senders` has one entry per producer.
pub async fn produce(
    senders: &[Sender],
    shape: ProduceShape,
    pb: &ProgressBar,
) -> Result<ProduceOut> {
    let pattern = crate::ceiling::pattern(shape.size.max(8));
    let sh = Shared {
        shape,
        t0: Instant::now(),
        pattern: &pattern,
        lat: RefCell::new(report::new_histogram()?),
        issued: Cell::new(0),
        sent: Cell::new(0),
        stopped: Cell::new(false),
        pb,
    };
    futures::future::try_join_all(senders.iter().map(|s| one_producer(s, &sh))).await?;
    Ok(ProduceOut {
        sent: sh.sent.get(),
        secs: sh.t0.elapsed().as_secs_f64(),
        lat: sh.lat.into_inner(),
        stopped_by_time_limit: sh.stopped.get(),
    })
}

async fn one_producer(sender: &Sender, sh: &Shared<'_>) -> Result<()> {
    let shape = sh.shape;
    let mut inflight = FuturesUnordered::new();
    loop {
        let next = sh.issued.get();
        let more = next < shape.messages && !sh.stopped.get();
        if more && inflight.len() < shape.inflight {
            if sh.t0.elapsed() > shape.max {
                sh.stopped.set(true);
                continue;
            }
            if let Some(rate) = shape.rate {
                let due = sh.t0 + Duration::from_secs_f64(next as f64 / rate);
                if due > Instant::now() {
                    // Wait for the schedule, but keep collecting acks meanwhile.
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        Some(r) = inflight.next(), if !inflight.is_empty() => r?,
                    }
                    continue;
                }
            }
            let n = (shape.messages - next).min(shape.batch as u64);
            sh.issued.set(next + n);
            let bodies: Vec<Bytes> = (0..n).map(|_| body(shape.size, sh.pattern)).collect();
            inflight.push(async move {
                let t = Instant::now();
                sender.send(bodies).await?;
                report::record(&mut sh.lat.borrow_mut(), t.elapsed());
                sh.sent.set(sh.sent.get() + n);
                sh.pb.inc(n);
                anyhow::Ok(())
            });
        } else if let Some(r) = inflight.next().await {
            r?;
        } else {
            return Ok(());
        }
    }
}

/// Receives and acknowledges messages.
// One per workload run: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Receiver {
    /// raftmq SimpleConsumer: `receive(batch)` with long polling, then the batch's acks in one
    /// AckMessage request (one entry per message), or with `ack_each` one AckMessage request
    /// per message, all sent at once; `concurrency` receive loops.
    Raftmq {
        consumer: SimpleConsumer,
        batch: i32,
        concurrency: usize,
        ack_each: bool,
    },
    /// NATS durable pull consumer with explicit acks (`ack()` per message).
    Nats {
        consumer: async_nats::jetstream::consumer::Consumer<
            async_nats::jetstream::consumer::pull::Config,
        >,
        batch: usize,
    },
}

pub struct ConsumeOut {
    pub received: u64,
    pub secs: f64,
    /// Send (body stamp) to receive.
    pub lat: Histogram<u64>,
}

/// Consume until `n` distinct messages were received and acked, or `max` passed (error).
pub async fn consume(r: &Receiver, n: u64, max: Duration, pb: &ProgressBar) -> Result<ConsumeOut> {
    let lat = RefCell::new(report::new_histogram()?);
    let got = Cell::new(0u64);
    let t0 = Instant::now();
    let deadline = t0 + max;
    match r {
        Receiver::Raftmq {
            consumer,
            batch,
            concurrency,
            ack_each,
        } => {
            let seen = RefCell::new(HashSet::<String>::new());
            let one = || async {
                while got.get() < n {
                    if Instant::now() > deadline {
                        bail!("consumed {} of {n} within {max:?}", got.get());
                    }
                    let msgs = match consumer
                        .receive(*batch, Duration::from_secs(120), Duration::from_millis(500))
                        .await
                    {
                        Ok(m) => m,
                        Err(e) => {
                            eprintln!("receive: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    for m in &msgs {
                        if let Some(age) = stamp_age(&m.body) {
                            report::record(&mut lat.borrow_mut(), age);
                        }
                    }
                    // Every message is acked: the acks of one received batch in one
                    // AckMessage request (`ack_all`), or one request per message, concurrently.
                    if *ack_each {
                        futures::future::try_join_all(msgs.iter().map(|m| consumer.ack(m)))
                            .await
                            .map_err(|e| anyhow!("ack: {e}"))?;
                    } else {
                        consumer
                            .ack_all(&msgs)
                            .await
                            .map_err(|e| anyhow!("ack: {e}"))?;
                    }
                    let mut s = seen.borrow_mut();
                    for m in &msgs {
                        if s.insert(m.message_id.clone()) {
                            got.set(got.get() + 1);
                            pb.inc(1);
                        }
                    }
                }
                anyhow::Ok(())
            };
            futures::future::try_join_all((0..*concurrency).map(|_| one())).await?;
        }
        Receiver::Nats { consumer, batch } => {
            let mut stream = consumer
                .stream()
                .max_messages_per_batch(*batch)
                .messages()
                .await
                .map_err(|e| anyhow!("pull: {e}"))?;
            while got.get() < n {
                let left = deadline.saturating_duration_since(Instant::now());
                let m = match tokio::time::timeout(left, stream.next()).await {
                    Err(_) => bail!("consumed {} of {n} within {max:?}", got.get()),
                    Ok(None) => bail!("NATS message stream ended"),
                    Ok(Some(m)) => m.map_err(|e| anyhow!("pull: {e}"))?,
                };
                if let Some(age) = stamp_age(&m.payload) {
                    report::record(&mut lat.borrow_mut(), age);
                }
                m.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
                got.set(got.get() + 1);
                pb.inc(1);
            }
        }
    }
    Ok(ConsumeOut {
        received: got.get(),
        secs: t0.elapsed().as_secs_f64(),
        lat: lat.into_inner(),
    })
}
