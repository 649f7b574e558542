//! The recent-id window behind idempotent sends.
//!
//! A producer that retries a send (its first attempt timed out during a failover, say) reuses
//! the message id; apply recognises the id and answers with the first copy's place instead of
//! storing it twice. The window is part of the replicated state — every replica must make the
//! same decision — so it is checkpointed, written into segment marks and carried by
//! snapshots, and it is the largest part of all of them. It is therefore kept compact:
//!
//! * a key is the 128-bit MD5 digest of `topic ‖ 0x00 ‖ message id`, not the strings. An
//!   accidental collision inside a window of [`DEDUPE_WINDOW`] ids has probability about
//!   n²/2¹²⁹ ≈ 10⁻²⁹; a producer able to craft colliding ids can only make its *own* second
//!   message look like a retry of its first.
//! * an entry is 28 bytes: key (16, little endian), queue id (4), queue offset (8).
//! * on disk (inside the JSON state) the window is `{"format": 2, "entries": "<base64>"}`,
//!   the entries concatenated oldest first. The first format (`{"order": [["topic\u0000id",
//!   {place}], …]}`) is still read, so older data directories open.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use base64::Engine as _;
use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize, Serializer};

use super::state_machine::Place;

/// How many recent message ids are remembered for idempotent sends.
pub const DEDUPE_WINDOW: usize = 100_000;

/// Encoded entry size: key, queue, offset.
const ENTRY: usize = 16 + 4 + 8;

/// The window key of a message id in a topic.
pub fn key(topic: &str, id: &str) -> u128 {
    let mut h = Md5::new();
    h.update(topic.as_bytes());
    h.update([0u8]);
    h.update(id.as_bytes());
    u128::from_le_bytes(h.finalize().into())
}

/// Keys are digests already: hash by taking their low bits.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used for keys; mix anything else in conservatively.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, k: u128) {
        self.0 = k as u64;
    }
}

/// Recently stored message ids → their place, bounded, oldest evicted first.
#[derive(Debug, Clone, Default)]
pub struct DedupeWindow {
    /// (key, queue, offset), oldest first.
    order: VecDeque<(u128, u32, u64)>,
    /// key → position in `order` counted from the first entry ever inserted.
    index: HashMap<u128, usize, BuildHasherDefault<KeyHasher>>,
    /// Entries evicted from the front of `order` since `index` was built.
    evicted: usize,
}

impl DedupeWindow {
    fn from_order(order: VecDeque<(u128, u32, u64)>) -> DedupeWindow {
        let mut w = DedupeWindow {
            order,
            ..Default::default()
        };
        w.index.reserve(w.order.len());
        for (i, (k, _, _)) in w.order.iter().enumerate() {
            w.index.insert(*k, i);
        }
        w
    }

    /// The place of a recent message, if any (`duplicate` is false; callers set it).
    pub fn get(&self, topic: &str, k: u128) -> Option<Place> {
        let i = *self.index.get(&k)?;
        self.order
            .get(i.checked_sub(self.evicted)?)
            .map(|(_, queue, offset)| Place {
                topic: topic.to_string(),
                queue: *queue,
                offset: *offset,
                duplicate: false,
            })
    }

    /// Whether `k` is in the window.
    pub fn contains(&self, k: u128) -> bool {
        self.index.contains_key(&k)
    }

    /// Remember `k` at `(queue, offset)`, evicting the oldest beyond [`DEDUPE_WINDOW`].
    pub fn insert(&mut self, k: u128, queue: u32, offset: u64) {
        self.index.insert(k, self.evicted + self.order.len());
        self.order.push_back((k, queue, offset));
        while self.order.len() > DEDUPE_WINDOW {
            if let Some((old, _, _)) = self.order.pop_front() {
                if self.index.get(&old) == Some(&self.evicted) {
                    self.index.remove(&old);
                }
                self.evicted += 1;
            }
        }
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl Serialize for DedupeWindow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut raw = Vec::with_capacity(self.order.len() * ENTRY);
        for (k, q, o) in &self.order {
            raw.extend_from_slice(&k.to_le_bytes());
            raw.extend_from_slice(&q.to_le_bytes());
            raw.extend_from_slice(&o.to_le_bytes());
        }
        Wire::Compact {
            format: 2,
            entries: base64::engine::general_purpose::STANDARD.encode(raw),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for DedupeWindow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let order = match Wire::deserialize(d)? {
            Wire::Compact { format: 2, entries } => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(entries.as_bytes())
                    .map_err(|e| D::Error::custom(format!("dedupe window: {e}")))?;
                if raw.len() % ENTRY != 0 {
                    return Err(D::Error::custom(format!(
                        "dedupe window: {} bytes is not a whole number of {ENTRY}-byte entries",
                        raw.len()
                    )));
                }
                raw.chunks_exact(ENTRY)
                    .map(|c| {
                        let mut k = [0u8; 16];
                        let mut q = [0u8; 4];
                        let mut o = [0u8; 8];
                        k.copy_from_slice(&c[..16]);
                        q.copy_from_slice(&c[16..20]);
                        o.copy_from_slice(&c[20..]);
                        (
                            u128::from_le_bytes(k),
                            u32::from_le_bytes(q),
                            u64::from_le_bytes(o),
                        )
                    })
                    .collect()
            }
            Wire::Compact { format, .. } => {
                return Err(D::Error::custom(format!(
                    "dedupe window: unknown format {format}"
                )));
            }
            Wire::Legacy { order } => order
                .into_iter()
                .map(|(key_str, p)| {
                    // The first format keyed by `topic \0 id`, exactly the digest's input.
                    let (topic, id) = key_str.split_once('\u{0}').unwrap_or(("", &key_str));
                    (key(topic, id), p.queue, p.offset)
                })
                .collect(),
        };
        Ok(DedupeWindow::from_order(order))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Wire {
    Compact { format: u32, entries: String },
    Legacy { order: Vec<(String, Place)> },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_topic_and_id() {
        assert_eq!(key("t", "a"), key("t", "a"));
        assert_ne!(key("t", "a"), key("t", "b"));
        assert_ne!(key("t", "a"), key("u", "a"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(key("ab", "c"), key("a", "bc"));
    }

    #[test]
    fn evicts_oldest_beyond_the_window() {
        let mut w = DedupeWindow::default();
        for i in 0..(DEDUPE_WINDOW as u64 + 10) {
            w.insert(key("t", &i.to_string()), (i % 3) as u32, i);
        }
        assert_eq!(w.len(), DEDUPE_WINDOW);
        assert!(w.get("t", key("t", "0")).is_none());
        assert!(w.get("t", key("t", "9")).is_none());
        let p = w.get("t", key("t", "10")).expect("kept");
        assert_eq!((p.topic.as_str(), p.queue, p.offset), ("t", 1, 10));
        // Re-inserting an id points it at its newest place.
        w.insert(key("t", "10"), 2, 999);
        assert_eq!(w.get("t", key("t", "10")).map(|p| p.offset), Some(999));
    }

    #[test]
    fn round_trips_through_json() {
        let mut w = DedupeWindow::default();
        for i in 0..1000u64 {
            w.insert(key("topic", &format!("id-{i}")), (i % 4) as u32, i * 7);
        }
        let json = serde_json::to_string(&w).expect("encode");
        assert!(json.starts_with(r#"{"format":2,"entries":""#), "{json:.40}");
        // 28 bytes per entry, base64: about 37.
        assert!(json.len() < 1000 * 38 + 64, "{}", json.len());
        let back: DedupeWindow = serde_json::from_str(&json).expect("decode");
        assert_eq!(back.order, w.order);
        for i in (0..1000u64).step_by(97) {
            let p = back.get("topic", key("topic", &format!("id-{i}")));
            assert_eq!(
                p.map(|p| (p.queue, p.offset)),
                Some(((i % 4) as u32, i * 7))
            );
        }
    }

    #[test]
    fn reads_the_first_format() {
        let old = r#"{"order":[["orders\u0000m1",{"topic":"orders","queue":2,"offset":5,"duplicate":false}],
                               ["orders\u0000m2",{"topic":"orders","queue":0,"offset":9,"duplicate":false}]]}"#;
        let w: DedupeWindow = serde_json::from_str(old).expect("decode");
        assert_eq!(w.len(), 2);
        let p = w.get("orders", key("orders", "m1")).expect("m1");
        assert_eq!((p.queue, p.offset), (2, 5));
        assert_eq!(
            w.get("orders", key("orders", "m2")).map(|p| p.offset),
            Some(9)
        );
    }

    #[test]
    fn rejects_a_torn_window() {
        let bad = r#"{"format":2,"entries":"AAAA"}"#;
        assert!(serde_json::from_str::<DedupeWindow>(bad).is_err());
        let unknown = r#"{"format":3,"entries":""}"#;
        assert!(serde_json::from_str::<DedupeWindow>(unknown).is_err());
    }
}
