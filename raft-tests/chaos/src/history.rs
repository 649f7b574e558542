//! The history: every send outcome, delivery, ack, fault and final read, as JSON lines.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One recorded event. Times are milliseconds since the start of the run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A consumer group subscribes to a topic (fifo: orderly consumption is checked).
    Subscribe {
        consumer_group: String,
        topic: String,
        fifo: bool,
    },
    /// One send call of a message (`attempt` counts the calls for this message id, from 1).
    Send {
        t0: u64,
        t1: u64,
        producer: String,
        /// The client library that made the call: absent for the Rust workload
        /// (`raftmq::client`), `python` for the official Python client.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        id: String,
        topic: String,
        message_group: Option<String>,
        seq: u64,
        attempt: u32,
        outcome: SendOutcome,
    },
    /// A message handed to a consumer.
    Deliver {
        t: u64,
        consumer_group: String,
        consumer: String,
        id: String,
        topic: String,
        broker_group: String,
        queue: i32,
        offset: i64,
        attempt: i32,
    },
    /// The outcome of acking a delivery.
    Ack {
        t: u64,
        consumer_group: String,
        id: String,
        ok: bool,
    },
    /// A fault: injected (`start`) or healed (`end`).
    Fault {
        t: u64,
        kind: String,
        detail: String,
        start: bool,
    },
    /// A queue's bounds as served by one node at the end.
    FinalQueue {
        broker_group: String,
        node: u64,
        topic: String,
        queue: u32,
        min: u64,
        max: u64,
    },
    /// A step of the run: `nemesis-start`, `nemesis-end` (faults over, producers stop),
    /// `drain-start` (everything healed, consumers catch up), `drain-end` (consumers stop).
    Phase { t: u64, name: String },
    /// One message as served by one node at the end.
    Final {
        broker_group: String,
        node: u64,
        topic: String,
        queue: u32,
        offset: u64,
        id: String,
    },
}

/// What a send call returned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SendOutcome {
    /// Acknowledged at this queue offset (of `queue` in `broker_group`, when the client
    /// said; histories written before those fields existed lack them).
    Ok {
        offset: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        broker_group: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<u32>,
        /// Attempts the client made inside this call (each may have stored a copy).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempts: Option<u32>,
    },
    /// Failed or timed out: it may or may not have been stored.
    Unknown {
        error: String,
        /// Attempts the client made inside this call, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempts: Option<u32>,
    },
}

/// A shared, append-only history, streamed to a file as it grows.
#[derive(Clone)]
pub struct History {
    start: Instant,
    start_epoch_ms: u64,
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    events: Vec<Event>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl History {
    /// A history written to `path` (if any).
    pub fn new(path: Option<&std::path::Path>) -> anyhow::Result<History> {
        let file = match path {
            Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p)?)),
            None => None,
        };
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Ok(History {
            start: Instant::now(),
            start_epoch_ms: epoch,
            inner: Arc::new(Mutex::new(Inner {
                events: Vec::new(),
                file,
            })),
        })
    }

    /// Milliseconds since the history began.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The history's time 0 as Unix epoch milliseconds (for clients in other processes).
    pub fn start_epoch_ms(&self) -> u64 {
        self.start_epoch_ms
    }

    /// Append an event.
    pub fn record(&self, e: Event) {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(f) = g.file.as_mut()
            && let Ok(line) = serde_json::to_string(&e)
        {
            let _ = writeln!(f, "{line}");
        }
        g.events.push(e);
    }

    /// A copy of every event so far (and a flush of the file).
    pub fn events(&self) -> Vec<Event> {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(f) = g.file.as_mut() {
            let _ = f.flush();
        }
        g.events.clone()
    }
}

/// Read a history file back.
pub fn load(path: &std::path::Path) -> anyhow::Result<Vec<Event>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}
