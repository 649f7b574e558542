//! The workload: producers (normal, and FIFO with message groups) and consumer groups over the
//! RocketMQ protocol through `raftmq::client`, every outcome recorded in the history.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use raftmq::client::{OutMessage, Producer, SimpleConsumer};

use super::history::{Event, History, SendOutcome};

/// Topic of normal messages.
pub const NORMAL_TOPIC: &str = "chaos-normal";
/// Topic of FIFO messages.
pub const FIFO_TOPIC: &str = "chaos-fifo";
/// Topic of the retention filler (not checked).
pub const FILLER_TOPIC: &str = "chaos-filler";
/// Queues per checked topic.
pub const QUEUES: u32 = 4;

/// Consumer groups: (name, topic, fifo, consumers).
pub const CONSUMER_GROUPS: &[(&str, &str, bool, u32)] = &[
    ("cg-normal-a", NORMAL_TOPIC, false, 2),
    ("cg-normal-b", NORMAL_TOPIC, false, 1),
    ("cg-fifo", FIFO_TOPIC, true, 2),
];

/// Shared switches.
#[derive(Clone, Default)]
pub struct Control {
    /// Producers stop.
    pub stop_producers: Arc<AtomicBool>,
    /// Producers hold (retention fault).
    pub hold_producers: Arc<AtomicBool>,
    /// Messages being sent now (a Rust producer's calls of one message), plus the Python
    /// producers asked to hold that have not yet said they do.
    pub inflight: Arc<AtomicI64>,
    /// Python producers (0: none).
    pub remote_producers: Arc<AtomicU64>,
    /// The Python producers have been asked to hold (the hold flag was passed on).
    pub hold_forwarded: Arc<AtomicBool>,
    /// Consumers stop.
    pub stop_consumers: Arc<AtomicBool>,
    /// Time (history ms) of the latest delivery.
    pub last_delivery: Arc<AtomicU64>,
}

/// Running workload tasks.
pub struct Workload {
    /// Switches.
    pub ctl: Control,
    producers: Vec<tokio::task::JoinHandle<()>>,
    consumers: Vec<tokio::task::JoinHandle<()>>,
}

/// Message ids: hex like the client's own (`01` + 30 hex digits), unique per run.
fn message_id(run: u32, producer: u32, seq: u64) -> String {
    format!("01{run:08X}{producer:06X}{seq:016X}")
}

#[allow(clippy::too_many_arguments)]
async fn producer_loop(
    h: History,
    ctl: Control,
    ns: String,
    run: u32,
    idx: u32,
    fifo: bool,
    groups: u32,
    gap: Duration,
) {
    let name = format!("{}{idx}", if fifo { "pf" } else { "pn" });
    let Ok(mut p) = Producer::with_timeout(&ns, Duration::from_secs(3)) else {
        return;
    };
    p.max_attempts = 3;
    let mut seq = 0u64;
    while !ctl.stop_producers.load(Ordering::Relaxed) {
        // Counted in flight before looking at the hold flag: whoever sets the flag and then
        // sees nothing in flight knows no send of this producer will start.
        ctl.inflight.fetch_add(1, Ordering::SeqCst);
        if ctl.hold_producers.load(Ordering::SeqCst) {
            ctl.inflight.fetch_sub(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let id = message_id(run, idx + if fifo { 1000 } else { 0 }, seq);
        let group = fifo.then(|| format!("{name}-mg{}", seq % groups as u64));
        let topic = if fifo { FIFO_TOPIC } else { NORMAL_TOPIC };
        let msg = OutMessage {
            topic: topic.into(),
            tag: Some("t".into()),
            keys: vec![format!("{name}-{seq}")],
            message_group: group.clone(),
            body: Bytes::from(format!("{name}:{seq}:{}", "x".repeat(100))),
            message_id: id.clone(),
            ..Default::default()
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let t0 = h.now();
            let r = p.send(msg.clone()).await;
            let t1 = h.now();
            let ok = r.is_ok();
            h.record(Event::Send {
                t0,
                t1,
                producer: name.clone(),
                client: None,
                id: id.clone(),
                topic: topic.into(),
                message_group: group.clone(),
                seq,
                attempt,
                outcome: match r {
                    // The queue is certain only when the first attempt stored the message
                    // (see `SendReceipt::queue_id`).
                    Ok(rc) => {
                        let first = rc.attempts == 1;
                        SendOutcome::Ok {
                            offset: rc.offset,
                            broker_group: first.then_some(rc.broker_group),
                            queue: u32::try_from(rc.queue_id).ok().filter(|_| first),
                            attempts: Some(rc.attempts),
                        }
                    }
                    Err(e) => SendOutcome::Unknown {
                        error: e.to_string(),
                        attempts: None,
                    },
                },
            });
            // A FIFO producer retries a message until it is acknowledged (moving on would let
            // a late copy land after its successor); a normal one gives up after 5 calls.
            if ok || (!fifo && attempt >= 5) || ctl.stop_producers.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ctl.inflight.fetch_sub(1, Ordering::SeqCst);
        seq += 1;
        tokio::time::sleep(gap).await;
    }
}

async fn consumer_loop(
    h: History,
    ctl: Control,
    ns: String,
    cg: &'static str,
    topic: &'static str,
    name: String,
    groups_by_addr: Arc<BTreeMap<String, String>>,
) {
    let Ok(c) = SimpleConsumer::with_timeout(&ns, cg, topic, "*", Duration::from_secs(6)) else {
        return;
    };
    while !ctl.stop_consumers.load(Ordering::Relaxed) {
        match c
            .receive(16, Duration::from_secs(5), Duration::from_secs(2))
            .await
        {
            Ok(msgs) => {
                for m in msgs {
                    let t = h.now();
                    ctl.last_delivery.store(t, Ordering::Relaxed);
                    h.record(Event::Deliver {
                        t,
                        consumer_group: cg.into(),
                        consumer: name.clone(),
                        id: m.message_id.clone(),
                        topic: topic.into(),
                        broker_group: groups_by_addr
                            .get(&m.endpoint)
                            .cloned()
                            .unwrap_or_else(|| m.endpoint.clone()),
                        queue: m.queue,
                        offset: m.offset,
                        attempt: m.delivery_attempt,
                    });
                    let ok = c.ack(&m).await.is_ok();
                    h.record(Event::Ack {
                        t: h.now(),
                        consumer_group: cg.into(),
                        id: m.message_id,
                        ok,
                    });
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

impl Workload {
    /// Start consumers and producers.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        h: &History,
        ctl: &Control,
        ns: &str,
        run: u32,
        normal_producers: u32,
        fifo_producers: u32,
        groups_per_fifo_producer: u32,
        gap: Duration,
        groups_by_addr: BTreeMap<String, String>,
    ) -> Workload {
        let ctl = ctl.clone();
        let by_addr = Arc::new(groups_by_addr);
        let mut consumers = Vec::new();
        for (cg, topic, fifo, n) in CONSUMER_GROUPS {
            h.record(Event::Subscribe {
                consumer_group: cg.to_string(),
                topic: topic.to_string(),
                fifo: *fifo,
            });
            for i in 0..*n {
                consumers.push(tokio::spawn(consumer_loop(
                    h.clone(),
                    ctl.clone(),
                    ns.to_string(),
                    cg,
                    topic,
                    format!("{cg}-{i}"),
                    Arc::clone(&by_addr),
                )));
            }
        }
        let mut producers = Vec::new();
        for i in 0..normal_producers {
            producers.push(tokio::spawn(producer_loop(
                h.clone(),
                ctl.clone(),
                ns.to_string(),
                run,
                i,
                false,
                1,
                gap,
            )));
        }
        for i in 0..fifo_producers {
            producers.push(tokio::spawn(producer_loop(
                h.clone(),
                ctl.clone(),
                ns.to_string(),
                run,
                i,
                true,
                groups_per_fifo_producer.max(1),
                gap,
            )));
        }
        Workload {
            ctl,
            producers,
            consumers,
        }
    }

    /// Stop producers and wait for them.
    pub async fn stop_producers(&mut self) {
        self.ctl.stop_producers.store(true, Ordering::Relaxed);
        for p in self.producers.drain(..) {
            let _ = p.await;
        }
    }

    /// Stop consumers and wait for them.
    pub async fn stop_consumers(&mut self) {
        self.ctl.stop_consumers.store(true, Ordering::Relaxed);
        for c in self.consumers.drain(..) {
            let _ = c.await;
        }
    }
}

impl Control {
    /// Whether every producer holds: none in the middle of a send, and the Python producers
    /// (if any) told to hold and confirmed it.
    pub fn producers_holding(&self) -> bool {
        self.inflight.load(Ordering::SeqCst) == 0
            && (self.remote_producers.load(Ordering::SeqCst) == 0
                || self.hold_forwarded.load(Ordering::SeqCst))
    }
}

/// Whether every acknowledged message of a topic has been delivered to every group subscribed
/// to it (by a `Subscribe` event: the Rust and the Python workload's groups), according to the
/// history so far.
pub fn all_acked_delivered(events: &[Event]) -> bool {
    let mut acked: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    let mut got: std::collections::BTreeSet<(&str, &str)> = Default::default();
    let mut subs: Vec<(&str, &str)> = Vec::new();
    for e in events {
        match e {
            Event::Subscribe {
                consumer_group,
                topic,
                ..
            } => subs.push((consumer_group, topic)),
            Event::Send {
                id,
                topic,
                outcome: SendOutcome::Ok { .. },
                ..
            } => {
                acked.entry(topic).or_default().insert(id);
            }
            Event::Deliver {
                consumer_group, id, ..
            } => {
                got.insert((consumer_group, id));
            }
            _ => {}
        }
    }
    subs.iter().all(|(cg, topic)| {
        acked
            .get(topic)
            .is_none_or(|ids| ids.iter().all(|id| got.contains(&(*cg, *id))))
    })
}
