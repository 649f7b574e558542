//! The message batch: the payload of a [`RecordKind::MESSAGE_BATCH`] CommitLog record.
//!
//! A hand-specified, versioned binary layout. All integers are little-endian; there is no
//! padding and no alignment. Strings are UTF-8, prefixed by their byte length.
//!
//! # Batch
//!
//! ```text
//! offset size field
//!      0    1 batch format version   1
//!      1    4 message count          u32, >= 1
//!      5    . messages, back to back, exactly `count` of them, nothing after the last
//! ```
//!
//! # Message (format version 1)
//!
//! Every message is self-delimiting and carries its own layout version, so a single message
//! can be decoded from its CommitLog position alone (the consume path reads it through a
//! ConsumeQueue unit, which gives position and size but not the batch header).
//!
//! ```text
//! offset size field
//!      0    4 total length            u32, bytes of the whole message including this field
//!      4    1 layout version          1 (equal to the batch version)
//!      5    1 message type            0 normal, 1 fifo, 2 delay, 3 transaction half,
//!                                     4 transaction committed (copy written by the broker)
//!      6    2 flags                   u16, 0 (reserved; a version 1 reader rejects non-zero)
//!      8    4 queue id                u32
//!     12    8 born timestamp          i64, ms since the Unix epoch, set by the producer
//!     20    8 store timestamp         i64, ms, set by the leader when it builds the batch
//!     28    8 delivery timestamp      i64, ms; 0 = none; > 0 exactly for delay messages
//!     36    4 body crc32c             Castagnoli CRC of the body bytes
//!     40    . variable part, in this order:
//!             topic          u8  length (1..=255)   + bytes
//!             message id     u8  length (1..=255)   + bytes
//!             tag            u16 length (0..=1024)  + bytes   empty = no tag
//!             message group  u16 length (0..=1024)  + bytes   empty = none; required for fifo
//!             born host      u8  length (0..=255)   + bytes
//!             key count      u16 (0..=64), then per key:       u16 length (1..=1024) + bytes
//!             property count u16 (0..=128), then per property: u16 key length (1..=1024)
//!                                   + key bytes, u16 value length (0..=16384) + value bytes
//!             body           u32 length (0..=64 MiB) + bytes (opaque, not UTF-8 checked)
//! ```
//!
//! The total length must equal the sum of the parts exactly (no trailing bytes), so the
//! smallest message is [`MIN_MESSAGE_LEN`] = 57 bytes. Properties keep their order and may
//! repeat a key; keys may repeat. The encoding is canonical: decoding and re-encoding a valid
//! message reproduces it byte for byte.
//!
//! Rules checked by both [`encode_batch`] and the decoders (so a batch that decodes is one the
//! encoder could have produced): all limits above, UTF-8 for every string, the body CRC, a
//! fifo message has a non-empty group, a delay message has a positive delivery timestamp and
//! every other type has 0.
//!
//! # Why this shape
//!
//! * The fixed 40-byte head holds everything dispatch and filtering need at fixed offsets.
//! * The body comes last so that a reader can hand it out as a zero-copy [`Bytes`] slice of
//!   the mapped CommitLog segment ([`MessageView::body`]); the strings are zero-copy too
//!   ([`ByteStr`]).
//! * The body CRC is end to end: it is computed once when the batch is built and checked on
//!   every decode, independently of the CommitLog record CRC.
//! * A message's absolute CommitLog position is `record.payload_pos() + offset_in_batch`,
//!   and that position plus [`MessageView::len`] is what a ConsumeQueue unit stores.
//!
//! A future layout gets a new version number; a version 1 reader rejects it instead of
//! guessing.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

#[cfg(doc)]
use crate::storage::record::RecordKind;

/// Batch (and per-message layout) format version written and accepted by this build.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes before the first message of a batch: version u8 + count u32.
pub const BATCH_HEADER_LEN: usize = 5;
/// Bytes of the fixed head of a message (before the topic).
pub const MESSAGE_FIXED_LEN: usize = 40;
/// Smallest possible encoded message (one-byte topic and message id, everything else empty).
pub const MIN_MESSAGE_LEN: usize = MESSAGE_FIXED_LEN + 2 + 2 + 2 + 2 + 1 + 2 + 2 + 4;
/// Longest topic, bytes.
pub const MAX_TOPIC_LEN: usize = 255;
/// Longest message id, bytes.
pub const MAX_MESSAGE_ID_LEN: usize = 255;
/// Longest tag, bytes.
pub const MAX_TAG_LEN: usize = 1024;
/// Longest message group, bytes.
pub const MAX_GROUP_LEN: usize = 1024;
/// Longest born host, bytes.
pub const MAX_BORN_HOST_LEN: usize = 255;
/// Most keys per message.
pub const MAX_KEYS: usize = 64;
/// Longest key, bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Most user properties per message.
pub const MAX_PROPERTIES: usize = 128;
/// Longest property key, bytes.
pub const MAX_PROPERTY_KEY_LEN: usize = 1024;
/// Longest property value, bytes.
pub const MAX_PROPERTY_VALUE_LEN: usize = 16 * 1024;
/// Largest body, bytes.
pub const MAX_BODY_LEN: usize = 64 * 1024 * 1024;

/// Why bytes are not a valid message batch, or a message cannot be encoded.
///
/// Offsets are byte offsets inside the buffer handed to the decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// A field runs past the end of its message or batch.
    #[error("{field} at byte {offset} needs {need} bytes but only {have} remain")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Where it starts.
        offset: usize,
        /// Bytes it needs.
        need: usize,
        /// Bytes that were left.
        have: usize,
    },
    /// Batch or message layout version this build does not know.
    #[error("unsupported message format version {version} at byte {offset}")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
        /// Where it was found.
        offset: usize,
    },
    /// A batch must hold at least one message.
    #[error("empty message batch")]
    EmptyBatch,
    /// The message count cannot possibly fit in the bytes given.
    #[error("batch claims {count} messages but {len} bytes hold at most {max}")]
    BadCount {
        /// Declared count.
        count: u32,
        /// Payload length.
        len: usize,
        /// Most messages that length can hold.
        max: usize,
    },
    /// Message type byte outside 0..=4.
    #[error("unknown message type {kind} at byte {offset}")]
    UnknownType {
        /// The type byte.
        kind: u8,
        /// Where it was found.
        offset: usize,
    },
    /// Reserved flag bits are set.
    #[error("reserved flags {flags:#06x} set in message at byte {offset}")]
    ReservedFlags {
        /// The flag word.
        flags: u16,
        /// Message start.
        offset: usize,
    },
    /// The message's declared total length is impossible.
    #[error("message at byte {offset} declares length {declared}, outside {min}..={available}")]
    BadLength {
        /// Message start.
        offset: usize,
        /// Declared total length.
        declared: u32,
        /// Smallest valid message.
        min: usize,
        /// Bytes available from `offset`.
        available: usize,
    },
    /// A string, list or body exceeds its limit.
    #[error("{field} is {len} long, limit {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length (bytes, or items for lists).
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field that must not be empty is.
    #[error("{field} must not be empty")]
    Empty {
        /// Which field.
        field: &'static str,
    },
    /// A string is not UTF-8.
    #[error("{field} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which field.
        field: &'static str,
        /// Where its bytes start.
        offset: usize,
    },
    /// The body does not match its stored checksum.
    #[error(
        "body crc mismatch in message at byte {offset}: stored {stored:#010x}, computed {computed:#010x}"
    )]
    BodyCrc {
        /// Message start.
        offset: usize,
        /// CRC in the message head.
        stored: u32,
        /// CRC of the body bytes.
        computed: u32,
    },
    /// Bytes left over inside a message or after the last message of a batch.
    #[error("{unused} unused bytes at the end of the {what} starting at byte {offset}")]
    Trailing {
        /// "message" or "batch".
        what: &'static str,
        /// Start of that message or batch.
        offset: usize,
        /// Bytes left over.
        unused: usize,
    },
    /// Type-specific rule broken (fifo without group, delay without delivery time, ...).
    #[error("invalid message: {0}")]
    Invalid(&'static str),
    /// The encoded batch would not fit the CommitLog's u32 payload length.
    #[error("batch of {0} bytes is too large")]
    BatchTooLarge(u64),
}

type MResult<T> = std::result::Result<T, MessageError>;

/// What kind of message this is. Stored as one byte (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MessageType {
    /// Ordinary message.
    #[default]
    Normal,
    /// Ordered within its message group.
    Fifo,
    /// Delivered at `delivery_timestamp_ms`.
    Delay,
    /// First phase of a transactional message.
    TransactionHalf,
    /// The committed copy of a transaction half message, appended by the broker on COMMIT
    /// (see `raft::pending`); consumers see it as a transactional message.
    TransactionCommitted,
}

impl MessageType {
    /// The stored byte.
    pub fn as_u8(self) -> u8 {
        match self {
            MessageType::Normal => 0,
            MessageType::Fifo => 1,
            MessageType::Delay => 2,
            MessageType::TransactionHalf => 3,
            MessageType::TransactionCommitted => 4,
        }
    }

    /// Parse the stored byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => MessageType::Normal,
            1 => MessageType::Fifo,
            2 => MessageType::Delay,
            3 => MessageType::TransactionHalf,
            4 => MessageType::TransactionCommitted,
            _ => return None,
        })
    }
}

/// A message to encode (owned, as it arrives from a producer request).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewMessage {
    /// Message type.
    pub msg_type: MessageType,
    /// Target queue of the topic.
    pub queue_id: u32,
    /// Producer-side creation time, ms.
    pub born_timestamp_ms: i64,
    /// Leader-side store time, ms.
    pub store_timestamp_ms: i64,
    /// Delivery time for delay messages, ms; 0 for all other types.
    pub delivery_timestamp_ms: i64,
    /// Topic, 1..=255 bytes.
    pub topic: String,
    /// Message id, 1..=255 bytes.
    pub message_id: String,
    /// Tag; empty = none.
    pub tag: String,
    /// Message group; empty = none; required for fifo.
    pub message_group: String,
    /// Index keys (each non-empty).
    pub keys: Vec<String>,
    /// User properties, in order.
    pub properties: Vec<(String, String)>,
    /// Producer host, free-form.
    pub born_host: String,
    /// Opaque body.
    pub body: Bytes,
}

/// A UTF-8 string that is a zero-copy slice of a payload.
///
/// Only constructible from bytes that passed UTF-8 validation.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// Wrap `b` after checking it is UTF-8.
    pub fn from_utf8(b: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&b)?;
        Ok(ByteStr(b))
    }

    /// A static string.
    pub fn from_static(s: &'static str) -> Self {
        ByteStr(Bytes::from_static(s.as_bytes()))
    }

    /// The string. (The bytes were validated at construction; the check repeated here cannot
    /// fail and is kept only to avoid `unsafe`.)
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Give back the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ByteStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ByteStr {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// A decoded message: every field is a zero-copy view of the payload it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// Byte offset of the message inside the batch payload (0 for [`decode_one`]).
    /// Absolute CommitLog position = `record.payload_pos() + offset_in_batch`.
    pub offset_in_batch: u32,
    /// Encoded length of the message (what a ConsumeQueue unit stores as size).
    pub len: u32,
    /// Message type.
    pub msg_type: MessageType,
    /// Queue id.
    pub queue_id: u32,
    /// Producer-side creation time, ms.
    pub born_timestamp_ms: i64,
    /// Leader-side store time, ms.
    pub store_timestamp_ms: i64,
    /// Delivery time, ms; 0 = none.
    pub delivery_timestamp_ms: i64,
    /// Stored (and verified) body CRC32C.
    pub body_crc: u32,
    /// Topic.
    pub topic: ByteStr,
    /// Message id.
    pub message_id: ByteStr,
    /// Tag; empty = none.
    pub tag: ByteStr,
    /// Message group; empty = none.
    pub message_group: ByteStr,
    /// Producer host.
    pub born_host: ByteStr,
    /// Index keys.
    pub keys: Vec<ByteStr>,
    /// User properties, in order.
    pub properties: Vec<(ByteStr, ByteStr)>,
    /// The body.
    pub body: Bytes,
}

impl MessageView {
    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        (!self.tag.is_empty()).then(|| self.tag.as_str())
    }

    /// The message group, if any.
    pub fn message_group(&self) -> Option<&str> {
        (!self.message_group.is_empty()).then(|| self.message_group.as_str())
    }

    /// The delivery timestamp, if any.
    pub fn delivery_timestamp_ms(&self) -> Option<i64> {
        (self.delivery_timestamp_ms != 0).then_some(self.delivery_timestamp_ms)
    }

    /// First value of property `key`.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Copy into an owned [`NewMessage`] (the body stays shared).
    pub fn to_new_message(&self) -> NewMessage {
        NewMessage {
            msg_type: self.msg_type,
            queue_id: self.queue_id,
            born_timestamp_ms: self.born_timestamp_ms,
            store_timestamp_ms: self.store_timestamp_ms,
            delivery_timestamp_ms: self.delivery_timestamp_ms,
            topic: self.topic.to_string(),
            message_id: self.message_id.to_string(),
            tag: self.tag.to_string(),
            message_group: self.message_group.to_string(),
            keys: self.keys.iter().map(|k| k.to_string()).collect(),
            properties: self
                .properties
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            born_host: self.born_host.to_string(),
            body: self.body.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation shared by encoder and decoder
// ---------------------------------------------------------------------------------------------

fn check_len(field: &'static str, len: usize, min: usize, max: usize) -> MResult<()> {
    if len > max {
        return Err(MessageError::TooLong { field, len, max });
    }
    if len < min {
        return Err(MessageError::Empty { field });
    }
    Ok(())
}

fn check_semantics(msg_type: MessageType, group_len: usize, delivery: i64) -> MResult<()> {
    if msg_type == MessageType::Fifo && group_len == 0 {
        return Err(MessageError::Invalid(
            "a fifo message needs a message group",
        ));
    }
    if msg_type == MessageType::Delay {
        if delivery <= 0 {
            return Err(MessageError::Invalid(
                "a delay message needs a positive delivery timestamp",
            ));
        }
    } else if delivery != 0 {
        return Err(MessageError::Invalid(
            "only delay messages carry a delivery timestamp",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Validate `m` and return its exact encoded length.
pub fn encoded_len(m: &NewMessage) -> MResult<usize> {
    check_len("topic", m.topic.len(), 1, MAX_TOPIC_LEN)?;
    check_len("message id", m.message_id.len(), 1, MAX_MESSAGE_ID_LEN)?;
    check_len("tag", m.tag.len(), 0, MAX_TAG_LEN)?;
    check_len("message group", m.message_group.len(), 0, MAX_GROUP_LEN)?;
    check_len("born host", m.born_host.len(), 0, MAX_BORN_HOST_LEN)?;
    check_len("keys", m.keys.len(), 0, MAX_KEYS)?;
    check_len("properties", m.properties.len(), 0, MAX_PROPERTIES)?;
    check_len("body", m.body.len(), 0, MAX_BODY_LEN)?;
    check_semantics(m.msg_type, m.message_group.len(), m.delivery_timestamp_ms)?;
    let mut n = MESSAGE_FIXED_LEN
        + 1
        + m.topic.len()
        + 1
        + m.message_id.len()
        + 2
        + m.tag.len()
        + 2
        + m.message_group.len()
        + 1
        + m.born_host.len()
        + 2
        + 2
        + 4
        + m.body.len();
    for k in &m.keys {
        check_len("key", k.len(), 1, MAX_KEY_LEN)?;
        n += 2 + k.len();
    }
    for (k, v) in &m.properties {
        check_len("property key", k.len(), 1, MAX_PROPERTY_KEY_LEN)?;
        check_len("property value", v.len(), 0, MAX_PROPERTY_VALUE_LEN)?;
        n += 4 + k.len() + v.len();
    }
    Ok(n)
}

/// Encode a batch: validates every message, computes the exact size, allocates once.
pub fn encode_batch(msgs: &[NewMessage]) -> MResult<Vec<u8>> {
    if msgs.is_empty() {
        return Err(MessageError::EmptyBatch);
    }
    let mut lens = Vec::with_capacity(msgs.len());
    let mut total: u64 = BATCH_HEADER_LEN as u64;
    for m in msgs {
        let n = encoded_len(m)?;
        total += n as u64;
        lens.push(n);
    }
    let count = u32::try_from(msgs.len()).map_err(|_| MessageError::BatchTooLarge(total))?;
    if total > u64::from(u32::MAX) {
        return Err(MessageError::BatchTooLarge(total));
    }
    let total = total as usize;
    let mut out = Vec::with_capacity(total);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&count.to_le_bytes());
    for (m, n) in msgs.iter().zip(lens) {
        write_message(&mut out, m, n);
    }
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

// The casts below are lossless: `encoded_len` checked every length against limits that fit
// the prefix widths (u8 <= 255, u16 <= 65535, u32 for the body and the message).
fn write_message(out: &mut Vec<u8>, m: &NewMessage, len: usize) {
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(FORMAT_VERSION);
    out.push(m.msg_type.as_u8());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&m.queue_id.to_le_bytes());
    out.extend_from_slice(&m.born_timestamp_ms.to_le_bytes());
    out.extend_from_slice(&m.store_timestamp_ms.to_le_bytes());
    out.extend_from_slice(&m.delivery_timestamp_ms.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&m.body).to_le_bytes());
    put_u8_str(out, &m.topic);
    put_u8_str(out, &m.message_id);
    put_u16_str(out, &m.tag);
    put_u16_str(out, &m.message_group);
    put_u8_str(out, &m.born_host);
    out.extend_from_slice(&(m.keys.len() as u16).to_le_bytes());
    for k in &m.keys {
        put_u16_str(out, k);
    }
    out.extend_from_slice(&(m.properties.len() as u16).to_le_bytes());
    for (k, v) in &m.properties {
        put_u16_str(out, k);
        put_u16_str(out, v);
    }
    out.extend_from_slice(&(m.body.len() as u32).to_le_bytes());
    out.extend_from_slice(&m.body);
    debug_assert_eq!(out.len() - start, len);
}

fn put_u8_str(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn put_u16_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Bounds-checked little-endian cursor over `buf[pos..end]`.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, field: &'static str) -> MResult<usize> {
        let start = self.pos;
        let have = self.end.saturating_sub(start);
        if n > have {
            return Err(MessageError::Truncated {
                field,
                offset: start,
                need: n,
                have,
            });
        }
        self.pos = start + n;
        Ok(start)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> MResult<[u8; N]> {
        let at = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[at..at + N]);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> MResult<u8> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> MResult<u16> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> MResult<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> MResult<i64> {
        Ok(i64::from_le_bytes(self.array(field)?))
    }

    fn bytes(&mut self, n: usize, field: &'static str) -> MResult<Bytes> {
        let at = self.take(n, field)?;
        Ok(self.buf.slice(at..at + n))
    }

    fn str(&mut self, n: usize, min: usize, max: usize, field: &'static str) -> MResult<ByteStr> {
        check_len(field, n, min, max)?;
        let offset = self.pos;
        let b = self.bytes(n, field)?;
        ByteStr::from_utf8(b).map_err(|_| MessageError::InvalidUtf8 { field, offset })
    }

    fn u8_str(&mut self, min: usize, max: usize, field: &'static str) -> MResult<ByteStr> {
        let n = self.u8(field)? as usize;
        self.str(n, min, max, field)
    }

    fn u16_str(&mut self, min: usize, max: usize, field: &'static str) -> MResult<ByteStr> {
        let n = self.u16(field)? as usize;
        self.str(n, min, max, field)
    }
}

/// Decode the message starting at `buf[at..]`, not reading past `limit`.
fn decode_at(buf: &Bytes, at: usize, limit: usize, offset_in_batch: u32) -> MResult<MessageView> {
    let available = limit.saturating_sub(at);
    let mut head = Reader {
        buf,
        pos: at,
        end: limit,
    };
    let declared = head.u32("message length")?;
    let len = declared as usize;
    if len < MIN_MESSAGE_LEN || len > available {
        return Err(MessageError::BadLength {
            offset: at,
            declared,
            min: MIN_MESSAGE_LEN,
            available,
        });
    }
    let mut r = Reader {
        buf,
        pos: at + 4,
        end: at + len,
    };
    let version = r.u8("layout version")?;
    if version != FORMAT_VERSION {
        return Err(MessageError::UnsupportedVersion {
            version,
            offset: at + 4,
        });
    }
    let kind = r.u8("message type")?;
    let msg_type = MessageType::from_u8(kind).ok_or(MessageError::UnknownType {
        kind,
        offset: at + 5,
    })?;
    let flags = r.u16("flags")?;
    if flags != 0 {
        return Err(MessageError::ReservedFlags { flags, offset: at });
    }
    let queue_id = r.u32("queue id")?;
    let born_timestamp_ms = r.i64("born timestamp")?;
    let store_timestamp_ms = r.i64("store timestamp")?;
    let delivery_timestamp_ms = r.i64("delivery timestamp")?;
    let body_crc = r.u32("body crc")?;
    let topic = r.u8_str(1, MAX_TOPIC_LEN, "topic")?;
    let message_id = r.u8_str(1, MAX_MESSAGE_ID_LEN, "message id")?;
    let tag = r.u16_str(0, MAX_TAG_LEN, "tag")?;
    let message_group = r.u16_str(0, MAX_GROUP_LEN, "message group")?;
    let born_host = r.u8_str(0, MAX_BORN_HOST_LEN, "born host")?;
    check_semantics(msg_type, message_group.len(), delivery_timestamp_ms)?;

    let nkeys = r.u16("key count")? as usize;
    check_len("keys", nkeys, 0, MAX_KEYS)?;
    let mut keys = Vec::with_capacity(nkeys);
    for _ in 0..nkeys {
        keys.push(r.u16_str(1, MAX_KEY_LEN, "key")?);
    }
    let nprops = r.u16("property count")? as usize;
    check_len("properties", nprops, 0, MAX_PROPERTIES)?;
    let mut properties = Vec::with_capacity(nprops);
    for _ in 0..nprops {
        let k = r.u16_str(1, MAX_PROPERTY_KEY_LEN, "property key")?;
        let v = r.u16_str(0, MAX_PROPERTY_VALUE_LEN, "property value")?;
        properties.push((k, v));
    }
    let body_len = r.u32("body length")? as usize;
    check_len("body", body_len, 0, MAX_BODY_LEN)?;
    let body = r.bytes(body_len, "body")?;
    if r.pos != r.end {
        return Err(MessageError::Trailing {
            what: "message",
            offset: at,
            unused: r.end - r.pos,
        });
    }
    let computed = crc32c::crc32c(&body);
    if computed != body_crc {
        return Err(MessageError::BodyCrc {
            offset: at,
            stored: body_crc,
            computed,
        });
    }
    Ok(MessageView {
        offset_in_batch,
        len: declared,
        msg_type,
        queue_id,
        born_timestamp_ms,
        store_timestamp_ms,
        delivery_timestamp_ms,
        body_crc,
        topic,
        message_id,
        tag,
        message_group,
        born_host,
        keys,
        properties,
        body,
    })
}

/// Decode a whole batch payload. Every returned field is a zero-copy slice of `payload`.
pub fn decode_batch(payload: &Bytes) -> MResult<Vec<MessageView>> {
    let len = payload.len();
    if len as u64 > u64::from(u32::MAX) {
        return Err(MessageError::BatchTooLarge(len as u64));
    }
    let mut r = Reader {
        buf: payload,
        pos: 0,
        end: len,
    };
    let version = r.u8("batch version")?;
    if version != FORMAT_VERSION {
        return Err(MessageError::UnsupportedVersion { version, offset: 0 });
    }
    let count = r.u32("message count")?;
    if count == 0 {
        return Err(MessageError::EmptyBatch);
    }
    let max = (len - BATCH_HEADER_LEN) / MIN_MESSAGE_LEN;
    if count as usize > max {
        return Err(MessageError::BadCount { count, len, max });
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut at = BATCH_HEADER_LEN;
    for _ in 0..count {
        // `at <= len <= u32::MAX`, checked above.
        let m = decode_at(payload, at, len, at as u32)?;
        at += m.len as usize;
        out.push(m);
    }
    if at != len {
        return Err(MessageError::Trailing {
            what: "batch",
            offset: 0,
            unused: len - at,
        });
    }
    Ok(out)
}

/// Decode the single message at the start of `buf` (for example the `size` bytes a
/// ConsumeQueue unit points at). Bytes after the message are ignored; compare
/// [`MessageView::len`] with the expected size if that matters. `offset_in_batch` is 0.
pub fn decode_one(buf: &Bytes) -> MResult<MessageView> {
    decode_at(buf, 0, buf.len(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(i: u32) -> NewMessage {
        NewMessage {
            msg_type: MessageType::Normal,
            queue_id: i % 4,
            born_timestamp_ms: 1_700_000_000_000 + i as i64,
            store_timestamp_ms: 1_700_000_000_500 + i as i64,
            delivery_timestamp_ms: 0,
            topic: "TopicTest".into(),
            message_id: format!("MID-{i:08}"),
            tag: if i % 2 == 0 {
                "TagA".into()
            } else {
                String::new()
            },
            message_group: String::new(),
            keys: vec![format!("k{i}"), "shared".into()],
            properties: vec![("a".into(), "1".into()), ("b".into(), String::new())],
            born_host: "10.0.0.1:5555".into(),
            body: Bytes::from(format!("body number {i}")),
        }
    }

    #[test]
    fn layout_of_a_minimal_message_is_as_documented() {
        let m = NewMessage {
            topic: "T".into(),
            message_id: "M".into(),
            queue_id: 0x0102_0304,
            born_timestamp_ms: 7,
            ..Default::default()
        };
        let b = encode_batch(std::slice::from_ref(&m)).unwrap();
        assert_eq!(b.len(), BATCH_HEADER_LEN + MIN_MESSAGE_LEN);
        assert_eq!(MIN_MESSAGE_LEN, 57);
        assert_eq!(b[0], 1);
        assert_eq!(&b[1..5], &1u32.to_le_bytes());
        let msg = &b[5..];
        assert_eq!(&msg[0..4], &57u32.to_le_bytes());
        assert_eq!(msg[4], 1); // layout version
        assert_eq!(msg[5], 0); // type
        assert_eq!(&msg[6..8], &[0, 0]); // flags
        assert_eq!(&msg[8..12], &[4, 3, 2, 1]); // queue id LE
        assert_eq!(&msg[12..20], &7i64.to_le_bytes());
        assert_eq!(&msg[36..40], &crc32c::crc32c(b"").to_le_bytes());
        assert_eq!(&msg[40..44], &[1, b'T', 1, b'M']);
        assert_eq!(&msg[44..53], &[0; 9]); // tag, group, host, key count, prop count
        assert_eq!(&msg[53..57], &[0; 4]); // body length
    }

    #[test]
    fn roundtrip_positions_and_zero_copy_body() {
        let msgs: Vec<_> = (0..5).map(sample).collect();
        let payload = Bytes::from(encode_batch(&msgs).unwrap());
        let views = decode_batch(&payload).unwrap();
        assert_eq!(views.len(), 5);
        let mut at = BATCH_HEADER_LEN as u32;
        for (v, m) in views.iter().zip(&msgs) {
            assert_eq!(v.offset_in_batch, at);
            assert_eq!(&v.to_new_message(), m);
            // body points into the payload buffer (zero copy)
            let base = payload.as_ptr() as usize;
            let body = v.body.as_ptr() as usize;
            assert!(body >= base && body + v.body.len() <= base + payload.len());
            // decode_one from the message's own bytes gives the same message
            let one = payload.slice(at as usize..(at + v.len) as usize);
            let single = decode_one(&one).unwrap();
            assert_eq!(single.offset_in_batch, 0);
            assert_eq!(single.to_new_message(), *m);
            at += v.len;
        }
        assert_eq!(at as usize, payload.len());
        assert_eq!(views[0].tag(), Some("TagA"));
        assert_eq!(views[1].tag(), None);
        assert_eq!(views[0].property("a"), Some("1"));
        assert_eq!(views[0].property("zz"), None);
    }

    #[test]
    fn encoder_rejects_invalid_messages() {
        let ok = sample(1);
        let cases: Vec<(NewMessage, &str)> = vec![
            (
                NewMessage {
                    topic: String::new(),
                    ..ok.clone()
                },
                "empty topic",
            ),
            (
                NewMessage {
                    topic: "t".repeat(256),
                    ..ok.clone()
                },
                "long topic",
            ),
            (
                NewMessage {
                    message_id: String::new(),
                    ..ok.clone()
                },
                "empty id",
            ),
            (
                NewMessage {
                    keys: vec![String::new()],
                    ..ok.clone()
                },
                "empty key",
            ),
            (
                NewMessage {
                    keys: vec!["k".into(); 65],
                    ..ok.clone()
                },
                "many keys",
            ),
            (
                NewMessage {
                    properties: vec![(String::new(), "v".into())],
                    ..ok.clone()
                },
                "empty prop key",
            ),
            (
                NewMessage {
                    msg_type: MessageType::Fifo,
                    ..ok.clone()
                },
                "fifo without group",
            ),
            (
                NewMessage {
                    msg_type: MessageType::Delay,
                    ..ok.clone()
                },
                "delay without time",
            ),
            (
                NewMessage {
                    delivery_timestamp_ms: 5,
                    ..ok.clone()
                },
                "normal with time",
            ),
            (
                NewMessage {
                    tag: "x".repeat(MAX_TAG_LEN + 1),
                    ..ok.clone()
                },
                "long tag",
            ),
        ];
        for (m, what) in cases {
            assert!(encode_batch(&[m]).is_err(), "{what} accepted");
        }
        assert_eq!(encode_batch(&[]), Err(MessageError::EmptyBatch));
        let fifo = NewMessage {
            msg_type: MessageType::Fifo,
            message_group: "g".into(),
            ..ok.clone()
        };
        let delay = NewMessage {
            msg_type: MessageType::Delay,
            delivery_timestamp_ms: 99,
            ..ok
        };
        let b = Bytes::from(encode_batch(&[fifo, delay]).unwrap());
        let v = decode_batch(&b).unwrap();
        assert_eq!(v[0].message_group(), Some("g"));
        assert_eq!(v[1].delivery_timestamp_ms(), Some(99));
    }

    #[test]
    fn decoder_rejects_specific_damage() {
        let b = encode_batch(&[sample(3)]).unwrap();
        // body bit flip is caught by the body crc
        let mut w = b.clone();
        let last = w.len() - 1;
        w[last] ^= 0x01;
        assert!(matches!(
            decode_batch(&Bytes::from(w)),
            Err(MessageError::BodyCrc { .. })
        ));
        // wrong batch version
        let mut w = b.clone();
        w[0] = 2;
        assert!(matches!(
            decode_batch(&Bytes::from(w)),
            Err(MessageError::UnsupportedVersion {
                version: 2,
                offset: 0
            })
        ));
        // trailing garbage after the last message
        let mut w = b.clone();
        w.push(0);
        assert!(matches!(
            decode_batch(&Bytes::from(w)),
            Err(MessageError::Trailing { what: "batch", .. })
        ));
        // count of zero
        let mut w = b.clone();
        w[1..5].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode_batch(&Bytes::from(w)), Err(MessageError::EmptyBatch));
        // absurd count is refused before any allocation
        let mut w = b.clone();
        w[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_batch(&Bytes::from(w)),
            Err(MessageError::BadCount { .. })
        ));
        // invalid UTF-8 in the topic
        let mut w = b.clone();
        w[BATCH_HEADER_LEN + MESSAGE_FIXED_LEN + 1] = 0xFF;
        assert!(matches!(
            decode_batch(&Bytes::from(w)),
            Err(MessageError::InvalidUtf8 { field: "topic", .. })
        ));
        // reserved flags
        let mut w = b.clone();
        w[BATCH_HEADER_LEN + 6] = 1;
        assert!(matches!(
            decode_batch(&Bytes::from(w)),
            Err(MessageError::ReservedFlags { .. })
        ));
        // every truncation is an error, for the batch and the single message
        for cut in 0..b.len() {
            let t = Bytes::copy_from_slice(&b[..cut]);
            assert!(decode_batch(&t).is_err(), "truncation at {cut} accepted");
            let one = Bytes::copy_from_slice(&b[BATCH_HEADER_LEN..cut.max(BATCH_HEADER_LEN)]);
            assert!(
                decode_one(&one).is_err(),
                "single truncated at {cut} accepted"
            );
        }
    }

    fn arb_message() -> impl Strategy<Value = NewMessage> {
        let kind = 0u8..5;
        (
            (
                kind,
                any::<u32>(),
                any::<i64>(),
                any::<i64>(),
                1i64..i64::MAX,
            ),
            "[A-Za-z0-9_%|-]{1,40}|\\PC{1,20}",
            "[0-9A-F]{1,40}",
            "[a-zA-Z]{0,8}",
            "[a-z0-9]{1,12}",
            "[0-9.:]{0,21}",
            prop::collection::vec("\\PC{1,10}", 0..4),
            prop::collection::vec(("[a-z]{1,6}", "\\PC{0,10}"), 0..4),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(
                |((k, q, born, store, due), topic, id, tag, group, host, keys, props, body)| {
                    let msg_type = MessageType::from_u8(k).unwrap_or_default();
                    NewMessage {
                        msg_type,
                        queue_id: q,
                        born_timestamp_ms: born,
                        store_timestamp_ms: store,
                        delivery_timestamp_ms: if msg_type == MessageType::Delay {
                            due
                        } else {
                            0
                        },
                        topic,
                        message_id: id,
                        tag,
                        message_group: if msg_type == MessageType::Fifo {
                            group
                        } else {
                            String::new()
                        },
                        keys,
                        properties: props,
                        born_host: host,
                        body: Bytes::from(body),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn prop_roundtrip(msgs in prop::collection::vec(arb_message(), 1..6)) {
            let enc = encode_batch(&msgs).unwrap();
            let payload = Bytes::from(enc.clone());
            let views = decode_batch(&payload).unwrap();
            prop_assert_eq!(views.len(), msgs.len());
            let back: Vec<NewMessage> = views.iter().map(|v| v.to_new_message()).collect();
            prop_assert_eq!(&back, &msgs);
            for v in &views {
                let at = v.offset_in_batch as usize;
                let one = decode_one(&payload.slice(at..)).unwrap();
                prop_assert_eq!(one.len, v.len);
                prop_assert_eq!(one.to_new_message(), v.to_new_message());
            }
            // canonical: re-encoding gives the same bytes
            prop_assert_eq!(encode_batch(&back).unwrap(), enc);
        }

        #[test]
        fn prop_random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
            let b = Bytes::from(data);
            match decode_batch(&b) {
                Ok(views) => {
                    // only possible if the bytes happen to be a valid batch: then it is canonical
                    let back: Vec<_> = views.iter().map(|v| v.to_new_message()).collect();
                    prop_assert_eq!(encode_batch(&back).unwrap(), b.to_vec());
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            if let Ok(v) = decode_one(&b) {
                prop_assert!(v.len as usize <= b.len());
            }
        }

        #[test]
        fn prop_truncated_batches_are_rejected(
            msgs in prop::collection::vec(arb_message(), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let enc = encode_batch(&msgs).unwrap();
            let n = cut.index(enc.len());
            prop_assert!(decode_batch(&Bytes::copy_from_slice(&enc[..n])).is_err());
        }

        #[test]
        fn prop_bit_flips_never_panic(
            msgs in prop::collection::vec(arb_message(), 1..4),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut enc = encode_batch(&msgs).unwrap();
            let i = at.index(enc.len());
            enc[i] ^= 1 << bit;
            let b = Bytes::from(enc.clone());
            // a flip can land in a field with no redundancy (a timestamp, say) and still decode;
            // then the decoded messages must re-encode to exactly the flipped bytes.
            if let Ok(views) = decode_batch(&b) {
                let back: Vec<_> = views.iter().map(|v| v.to_new_message()).collect();
                prop_assert_eq!(encode_batch(&back).unwrap(), enc);
            }
        }
    }
}
