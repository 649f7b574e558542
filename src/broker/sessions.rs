//! Clients known to this node, keyed by `x-mq-client-id` (as the RocketMQ proxy keys them):
//! their Telemetry settings and stream, the topics they publish, when they were last heard
//! from, and the deliveries this node renews for them (PushConsumer auto-renew).
//!
//! This is soft, per-node state: it is rebuilt by clients reconnecting, never replicated.
//! What depends on it degrades safely when it is lost (a failover): a check-back waits for a
//! producer's stream to reappear, and a delivery that is no longer renewed becomes visible
//! again when its invisible time ends (at-least-once, as in RocketMQ).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::Status;

use crate::proto::apache::rocketmq::v2;

/// A client's Telemetry stream (server → client half).
pub type TelemetryTx = mpsc::Sender<Result<v2::TelemetryCommand, Status>>;

/// A client is alive while its Telemetry stream is open or it was heard from this recently
/// (clients heartbeat every 10 s).
pub const CLIENT_ALIVE: Duration = Duration::from_secs(30);

/// One client.
#[derive(Debug)]
pub struct Session {
    /// Last Settings it sent.
    pub settings: Option<v2::Settings>,
    /// Its open Telemetry stream, if any.
    pub telemetry: Option<TelemetryTx>,
    /// Topics it publishes (from Settings and from its sends).
    pub topics: BTreeSet<String>,
    /// When it was last heard from.
    pub last_seen: Instant,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            settings: None,
            telemetry: None,
            topics: BTreeSet::new(),
            last_seen: Instant::now(),
        }
    }
}

/// A delivery this node keeps invisible for a client that still holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RenewKey {
    /// Delivery-state key of the consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue: u32,
    /// Queue offset.
    pub offset: u64,
}

/// The renewal of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// Delivery sequence (the handle the client holds).
    pub seq: u64,
    /// Client holding it.
    pub client_id: String,
    /// Current invisible deadline (ms since the epoch).
    pub until_ms: i64,
}

/// All clients of this node.
#[derive(Debug, Default)]
pub struct Sessions {
    clients: Mutex<HashMap<String, Session>>,
    renewals: Mutex<HashMap<RenewKey, Renewal>>,
}

impl Sessions {
    fn with<R>(&self, id: &str, f: impl FnOnce(&mut Session) -> R) -> R {
        let mut g = match self.clients.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let s = g.entry(id.to_string()).or_default();
        s.last_seen = Instant::now();
        f(s)
    }

    /// The client was heard from (any RPC).
    pub fn touch(&self, id: &str) {
        if !id.is_empty() {
            self.with(id, |_| ());
        }
    }

    /// Record a client's Settings and its Telemetry stream.
    pub fn set_settings(&self, id: &str, s: &v2::Settings, tx: &TelemetryTx) {
        let topics: Vec<String> = match &s.pub_sub {
            Some(v2::settings::PubSub::Publishing(p)) => {
                p.topics.iter().map(|t| t.name.clone()).collect()
            }
            _ => Vec::new(),
        };
        self.with(id, |c| {
            c.settings = Some(s.clone());
            c.telemetry = Some(tx.clone());
            c.topics.extend(topics);
        });
    }

    /// The client sent to `topic` (Python's first Settings may list no topics).
    pub fn add_topic(&self, id: &str, topic: &str) {
        if id.is_empty() {
            return;
        }
        self.with(id, |c| {
            if !c.topics.contains(topic) {
                c.topics.insert(topic.to_string());
            }
        });
    }

    /// The client's Settings, if it sent any.
    pub fn settings(&self, id: &str) -> Option<v2::Settings> {
        let g = self.clients.lock().ok()?;
        g.get(id)?.settings.clone()
    }

    /// The client said goodbye.
    pub fn remove(&self, id: &str) {
        if let Ok(mut g) = self.clients.lock() {
            g.remove(id);
        }
    }

    /// Open Telemetry streams of producers of `topic`, client id first.
    pub fn producer_streams(&self, topic: &str) -> Vec<(String, TelemetryTx)> {
        let Ok(g) = self.clients.lock() else {
            return Vec::new();
        };
        let mut out: Vec<(String, TelemetryTx)> = g
            .iter()
            .filter(|(_, s)| s.topics.contains(topic))
            .filter_map(|(id, s)| {
                s.telemetry
                    .as_ref()
                    .filter(|t| !t.is_closed())
                    .map(|t| (id.clone(), t.clone()))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Whether the client is still there (see [`CLIENT_ALIVE`]).
    pub fn alive(&self, id: &str) -> bool {
        let Ok(g) = self.clients.lock() else {
            return false;
        };
        g.get(id).is_some_and(|s| {
            s.telemetry.as_ref().is_some_and(|t| !t.is_closed())
                || s.last_seen.elapsed() < CLIENT_ALIVE
        })
    }

    /// Keep a delivery invisible while `client_id` holds it.
    pub fn renew(&self, key: RenewKey, r: Renewal) {
        if let Ok(mut g) = self.renewals.lock() {
            g.insert(key, r);
        }
    }

    /// All renewals (a copy).
    pub fn renewals(&self) -> Vec<(RenewKey, Renewal)> {
        self.renewals
            .lock()
            .map(|g| g.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Stop renewing a delivery.
    pub fn forget_renewal(&self, key: &RenewKey) {
        if let Ok(mut g) = self.renewals.lock() {
            g.remove(key);
        }
    }

    /// Set a renewal's new deadline (if it is still the same delivery).
    pub fn renewed(&self, key: &RenewKey, seq: u64, until_ms: i64) {
        if let Ok(mut g) = self.renewals.lock()
            && let Some(r) = g.get_mut(key)
            && r.seq == seq
        {
            r.until_ms = until_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_of_a_topic_with_open_streams() {
        let s = Sessions::default();
        let (tx, rx) = mpsc::channel(1);
        let settings = v2::Settings {
            pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing {
                topics: vec![v2::Resource {
                    resource_namespace: String::new(),
                    name: "T".into(),
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        s.set_settings("p1", &settings, &tx);
        let (tx2, _rx2) = mpsc::channel(1);
        s.set_settings("p2", &v2::Settings::default(), &tx2);
        s.add_topic("p2", "U");
        assert_eq!(s.producer_streams("T").len(), 1);
        assert_eq!(s.producer_streams("U").len(), 1);
        assert!(s.producer_streams("V").is_empty());
        assert!(s.alive("p1"));
        assert!(!s.alive("nobody"));
        drop(rx);
        assert!(s.producer_streams("T").is_empty(), "closed stream skipped");
        s.remove("p2");
        assert!(s.producer_streams("U").is_empty());
    }

    #[test]
    fn renewals_follow_the_current_delivery() {
        let s = Sessions::default();
        let k = RenewKey {
            group: "g".into(),
            topic: "t".into(),
            queue: 1,
            offset: 7,
        };
        s.renew(
            k.clone(),
            Renewal {
                seq: 3,
                client_id: "c".into(),
                until_ms: 100,
            },
        );
        s.renewed(&k, 2, 500);
        assert_eq!(s.renewals()[0].1.until_ms, 100, "other delivery: unchanged");
        s.renewed(&k, 3, 500);
        assert_eq!(s.renewals()[0].1.until_ms, 500);
        s.forget_renewal(&k);
        assert!(s.renewals().is_empty());
    }
}
