//! The replicated commands and their answers: topic configuration ([`TopicConfig`], [`Perm`],
//! [`TopicMessageType`]), the JSON-encoded [`InternalCommand`]s (kind [`INTERNAL_JSON_KIND`]),
//! and the per-message [`Place`]s a message batch answers with
//! ([`encode_batch_result`] / [`decode_batch_result`]).
//!
//! A new kind of replicated command (e.g. users and access policies) is a new
//! [`InternalCommand`] variant here, applied in `apply.rs` (`SmCore::apply_internal`).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::raft::consume::{GroupConfig, Pop};
use crate::raft::pending::TxOutcome;
use crate::storage::record::RecordKind;

/// Record kind of JSON-encoded internal commands.
pub const INTERNAL_JSON_KIND: u8 = RecordKind::FIRST_INTERNAL;

/// Record kind of the binary-encoded consume commands (see `codec`).
pub const INTERNAL_BIN_KIND: u8 = RecordKind::FIRST_INTERNAL + 1;

/// Record kind of several internal commands in one entry (see `command_batch`).
pub const INTERNAL_BATCH_KIND: u8 = RecordKind::FIRST_INTERNAL + 2;

/// Read/write permission of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Perm {
    /// Readable and writable.
    #[serde(rename = "rw")]
    ReadWrite,
    /// Read only.
    #[serde(rename = "r")]
    Read,
    /// Write only.
    #[serde(rename = "w")]
    Write,
}

impl Perm {
    /// Producers may write.
    pub fn writable(self) -> bool {
        matches!(self, Perm::ReadWrite | Perm::Write)
    }
    /// Consumers may read.
    pub fn readable(self) -> bool {
        matches!(self, Perm::ReadWrite | Perm::Read)
    }
}

impl std::fmt::Display for Perm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Perm::ReadWrite => "rw",
            Perm::Read => "r",
            Perm::Write => "w",
        })
    }
}

impl std::str::FromStr for Perm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rw" => Ok(Perm::ReadWrite),
            "r" => Ok(Perm::Read),
            "w" => Ok(Perm::Write),
            o => Err(format!("perm must be rw, r or w, not `{o}`")),
        }
    }
}

/// The message type a topic accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicMessageType {
    /// Normal messages.
    Normal,
    /// FIFO (message groups, in order).
    Fifo,
    /// Delay / timer messages.
    Delay,
    /// Transactional messages.
    Transaction,
}

impl std::fmt::Display for TopicMessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopicMessageType::Normal => "normal",
            TopicMessageType::Fifo => "fifo",
            TopicMessageType::Delay => "delay",
            TopicMessageType::Transaction => "transaction",
        })
    }
}

impl std::str::FromStr for TopicMessageType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "normal" => Ok(TopicMessageType::Normal),
            "fifo" => Ok(TopicMessageType::Fifo),
            "delay" => Ok(TopicMessageType::Delay),
            "transaction" => Ok(TopicMessageType::Transaction),
            o => Err(format!(
                "message type must be normal, fifo, delay or transaction, not `{o}`"
            )),
        }
    }
}

/// A topic's configuration (replicated through the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// Topic name.
    pub name: String,
    /// Number of queues.
    pub queues: u32,
    /// Permission.
    pub perm: Perm,
    /// Accepted message type.
    pub message_type: TopicMessageType,
}

impl TopicConfig {
    /// RocketMQ's topic naming rule and a sane queue count.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 127 {
            return Err("topic name must be 1..=127 characters".into());
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '%' | '|'))
        {
            return Err(format!(
                "topic name `{}` may only contain letters, digits, `_`, `-`, `%` and `|`",
                self.name
            ));
        }
        if self.queues == 0 || self.queues > 1024 {
            return Err(format!("queues must be 1..=1024, not {}", self.queues));
        }
        Ok(())
    }
}

/// Internal commands, JSON-encoded in entries of kind [`INTERNAL_JSON_KIND`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum InternalCommand {
    /// Create or update a topic.
    UpsertTopic {
        /// The new configuration.
        topic: TopicConfig,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Create or update a consumer group's configuration.
    UpsertGroup {
        /// The configuration.
        group: GroupConfig,
    },
    /// Delete a consumer group (its configuration and delivery state).
    DeleteGroup {
        /// Group name.
        name: String,
    },
    /// A delivery decided by the leader (see `consume`).
    Pop(Pop),
    /// Ack one delivery.
    Ack {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Queue id.
        queue: u32,
        /// Queue offset.
        offset: u64,
        /// Delivery sequence from the receipt handle.
        seq: u64,
    },
    /// Ack several deliveries of one group and topic at once (one AckMessage request).
    AckMany {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// (queue, offset, seq) of each delivery.
        items: Vec<(u32, u64, u64)>,
    },
    /// Change the invisible time of one delivery; it gets a new sequence (new handle).
    ChangeInvisible {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Queue id.
        queue: u32,
        /// Queue offset.
        offset: u64,
        /// Delivery sequence from the receipt handle.
        seq: u64,
        /// New deadline (ms since the epoch).
        until_ms: i64,
        /// New delivery sequence.
        new_seq: u64,
    },
    /// Extend the invisibility of deliveries a client still holds (auto-renew), keeping
    /// their sequences (the client's handles stay valid).
    Renew {
        /// Consumer group (the delivery-state key).
        group: String,
        /// Topic.
        topic: String,
        /// Queue id.
        queue: u32,
        /// (offset, seq) of each delivery.
        items: Vec<(u64, u64)>,
        /// New deadline (ms since the epoch).
        until_ms: i64,
    },
    /// Roll back (or discard) a transaction half message. COMMIT is not a command: it is the
    /// committed copy of the message, appended as a message batch (see `pending`).
    EndTransaction {
        /// Topic.
        topic: String,
        /// Message id.
        message_id: String,
        /// `rolled_back` or `discarded`.
        outcome: TxOutcome,
    },
    /// Check-backs of half messages were sent at `at_ms`.
    TxChecked {
        /// `pending::key`s of the half messages checked.
        keys: Vec<String>,
        /// When.
        at_ms: i64,
    },
    /// Set a consumer group's committed offset for one queue.
    CommitOffset {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Queue id.
        queue: u32,
        /// Next offset to consume.
        offset: u64,
    },
    /// Change users or access policies (ACL); applied by `AclState::apply`.
    Acl(crate::acl::AclCommand),
}

/// [`Place::offset`] of a message that is stored but in no queue yet (a delay message before
/// its time, a transaction half message).
pub const PENDING_OFFSET: u64 = u64::MAX;

/// Where one message of a batch ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue: u32,
    /// Queue offset; [`PENDING_OFFSET`] while the message waits (delay, transaction).
    pub offset: u64,
    /// The message id had been stored before; this is the original's place.
    pub duplicate: bool,
}

/// Encode the per-message results of a batch: `u32 count`, then per message `u16 topic
/// length, topic, u32 queue, u64 offset, u8 duplicate`.
pub fn encode_batch_result(places: &[Place]) -> Bytes {
    let mut v = Vec::with_capacity(4 + places.len() * 24);
    v.extend_from_slice(&(places.len() as u32).to_le_bytes());
    for p in places {
        v.extend_from_slice(&(p.topic.len() as u16).to_le_bytes());
        v.extend_from_slice(p.topic.as_bytes());
        v.extend_from_slice(&p.queue.to_le_bytes());
        v.extend_from_slice(&p.offset.to_le_bytes());
        v.push(p.duplicate as u8);
    }
    Bytes::from(v)
}

/// Inverse of [`encode_batch_result`].
pub fn decode_batch_result(b: &[u8]) -> Result<Vec<Place>, String> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = b.get(at..at + n).ok_or("truncated batch result")?;
        at += n;
        Ok(s)
    };
    let n = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "bad count")?) as usize;
    let mut out = Vec::with_capacity(n.min(65_536));
    for _ in 0..n {
        let tl = u16::from_le_bytes(take(2)?.try_into().map_err(|_| "bad length")?) as usize;
        let topic = String::from_utf8(take(tl)?.to_vec()).map_err(|_| "topic not utf-8")?;
        let queue = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "bad queue")?);
        let offset = u64::from_le_bytes(take(8)?.try_into().map_err(|_| "bad offset")?);
        let duplicate = take(1)?[0] != 0;
        out.push(Place {
            topic,
            queue,
            offset,
            duplicate,
        });
    }
    Ok(out)
}
