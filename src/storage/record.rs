//! The CommitLog record: a hand-specified, versioned binary layout.
//!
//! Every record is a 48-byte header followed by its payload. All integers are little-endian.
//!
//! ```text
//! offset size field
//!      0    4 magic            0x4C514D52 (bytes "RMQL")
//!      4    1 format version   1
//!      5    1 kind             1 blank, 2 membership, 3 message batch, 16..=255 internal command
//!      6    2 flags            0 (reserved; a reader of version 1 rejects non-zero)
//!      8    4 payload length   bytes after the header
//!     12    4 crc32c           Castagnoli CRC over bytes 0..12, 16..48 and the payload
//!     16    8 term             Raft term of the leader that created the entry
//!     24    8 leader node id   node id of that leader (openraft's "advanced" leader id)
//!     32    8 raft index       the entry's log index
//!     40    8 position         absolute byte offset of this record in the CommitLog
//!     48    n payload
//! ```
//!
//! The CRC covers everything but itself, so a flipped bit anywhere in a record is caught.
//! The position field lets a reader that lands on a record by any route (index file, scan,
//! replica comparison) prove it is where it claims to be.
//!
//! **Segment padding rule.** A record never straddles two segments. When a record of total
//! size `T` does not fit in the `R` bytes left in the current segment (`T > R`), the writer
//! puts the 4-byte padding marker `0x44415052` ("RPAD") at the current offset if `R >= 4`,
//! leaves the rest zero, and writes the record at the start of the next segment. A reader
//! that finds fewer than 48 bytes left in a segment, or the padding marker, continues at the
//! next segment. Positions therefore depend only on the sequence of record sizes, so a given
//! Raft index sits at the same byte offset on every replica.

use bytes::Bytes;

/// Size of the fixed record header in bytes.
pub const HEADER_LEN: usize = 48;
/// Magic number that starts every record.
pub const RECORD_MAGIC: u32 = 0x4C51_4D52;
/// Marker that pads the tail of a segment.
pub const PAD_MAGIC: u32 = 0x4441_5052;
/// The only format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// What a record holds. The storage layer treats payloads as opaque; the kind only lets
/// dispatch skip entries that carry no messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKind(pub u8);

impl RecordKind {
    /// Raft blank entry (written by every new leader).
    pub const BLANK: RecordKind = RecordKind(1);
    /// Raft membership change.
    pub const MEMBERSHIP: RecordKind = RecordKind(2);
    /// A batch of producer messages.
    pub const MESSAGE_BATCH: RecordKind = RecordKind(3);
    /// First kind reserved for internal commands (topic config, offsets, ...).
    pub const FIRST_INTERNAL: u8 = 16;

    /// Whether a reader of this format version knows this kind.
    pub fn is_known(self) -> bool {
        matches!(self.0, 1..=3) || self.0 >= Self::FIRST_INTERNAL
    }

    /// Short human name, used by `store dump`.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "blank",
            2 => "membership",
            3 => "messages",
            k if k >= Self::FIRST_INTERNAL => "internal",
            _ => "unknown",
        }
    }
}

/// The identity of a record: which leader wrote it at which index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordId {
    /// Raft term.
    pub term: u64,
    /// Leader node id of that term.
    pub node: u64,
    /// Raft log index.
    pub index: u64,
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Entry kind.
    pub kind: RecordKind,
    /// Payload length in bytes.
    pub payload_len: u32,
    /// Stored checksum.
    pub crc: u32,
    /// Log identity.
    pub id: RecordId,
    /// Absolute position the record claims.
    pub pos: u64,
}

impl Header {
    /// Total encoded size of the record.
    pub fn total_len(&self) -> u64 {
        HEADER_LEN as u64 + self.payload_len as u64
    }
}

/// A record read back from the log; the payload is a zero-copy view of the mapped segment.
#[derive(Debug, Clone)]
pub struct Record {
    /// Log identity.
    pub id: RecordId,
    /// Entry kind.
    pub kind: RecordKind,
    /// Absolute position of the record header.
    pub pos: u64,
    /// The payload bytes.
    pub payload: Bytes,
}

impl Record {
    /// Absolute position of the first payload byte.
    pub fn payload_pos(&self) -> u64 {
        self.pos + HEADER_LEN as u64
    }
}

/// Why a byte range is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than a header.
    Short,
    /// All-zero header: nothing was ever written here.
    Empty,
    /// The padding marker: the rest of the segment is unused.
    Padding,
    /// Anything else, with a reason for error messages.
    Bad(String),
}

fn crc_of(header: &[u8], payload: &[u8]) -> u32 {
    let c = crc32c::crc32c(&header[0..12]);
    let c = crc32c::crc32c_append(c, &header[16..HEADER_LEN]);
    crc32c::crc32c_append(c, payload)
}

/// The 48-byte header of a record with this payload (CRC included), for writers that send
/// header and payload to the file separately (vectored write, no copy of the payload).
pub fn encode_header(kind: RecordKind, id: RecordId, pos: u64, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4] = FORMAT_VERSION;
    h[5] = kind.0;
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&id.term.to_le_bytes());
    h[24..32].copy_from_slice(&id.node.to_le_bytes());
    h[32..40].copy_from_slice(&id.index.to_le_bytes());
    h[40..48].copy_from_slice(&pos.to_le_bytes());
    let crc = crc_of(&h, payload);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Write a record (header + payload) into `dst`, which must be exactly `HEADER_LEN + payload.len()`.
pub fn encode_into(dst: &mut [u8], kind: RecordKind, id: RecordId, pos: u64, payload: &[u8]) {
    debug_assert_eq!(dst.len(), HEADER_LEN + payload.len());
    let (h, body) = dst.split_at_mut(HEADER_LEN);
    h[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    h[4] = FORMAT_VERSION;
    h[5] = kind.0;
    h[6..8].copy_from_slice(&0u16.to_le_bytes());
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&0u32.to_le_bytes());
    h[16..24].copy_from_slice(&id.term.to_le_bytes());
    h[24..32].copy_from_slice(&id.node.to_le_bytes());
    h[32..40].copy_from_slice(&id.index.to_le_bytes());
    h[40..48].copy_from_slice(&pos.to_le_bytes());
    body.copy_from_slice(payload);
    let crc = crc_of(h, body);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decode and check the header at the start of `buf` without looking at the payload.
pub fn decode_header(buf: &[u8]) -> Result<Header, DecodeError> {
    if buf.len() >= 4 && u32_at(buf, 0) == PAD_MAGIC {
        return Err(DecodeError::Padding);
    }
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Short);
    }
    let h = &buf[..HEADER_LEN];
    let magic = u32_at(h, 0);
    if magic != RECORD_MAGIC {
        if h.iter().all(|b| *b == 0) {
            return Err(DecodeError::Empty);
        }
        return Err(DecodeError::Bad(format!("bad magic {magic:#010x}")));
    }
    if h[4] != FORMAT_VERSION {
        return Err(DecodeError::Bad(format!(
            "unsupported format version {}",
            h[4]
        )));
    }
    let kind = RecordKind(h[5]);
    if !kind.is_known() {
        return Err(DecodeError::Bad(format!("unknown record kind {}", h[5])));
    }
    if h[6] != 0 || h[7] != 0 {
        return Err(DecodeError::Bad("non-zero reserved flags".into()));
    }
    Ok(Header {
        kind,
        payload_len: u32_at(h, 8),
        crc: u32_at(h, 12),
        id: RecordId {
            term: u64_at(h, 16),
            node: u64_at(h, 24),
            index: u64_at(h, 32),
        },
        pos: u64_at(h, 40),
    })
}

/// Decode the record at the start of `buf`, checking length, CRC and that it claims `expected_pos`.
/// Returns the header; the payload is `buf[HEADER_LEN..header.total_len()]`.
pub fn decode(buf: &[u8], expected_pos: u64) -> Result<Header, DecodeError> {
    let h = decode_header(buf)?;
    let total = h.total_len();
    if total > buf.len() as u64 {
        return Err(DecodeError::Bad(format!(
            "length {} runs past the segment end ({} bytes left)",
            total,
            buf.len()
        )));
    }
    let payload = &buf[HEADER_LEN..total as usize];
    let crc = crc_of(&buf[..HEADER_LEN], payload);
    if crc != h.crc {
        return Err(DecodeError::Bad(format!(
            "crc mismatch: stored {:#010x}, computed {crc:#010x}",
            h.crc
        )));
    }
    if h.pos != expected_pos {
        return Err(DecodeError::Bad(format!(
            "record claims position {} but sits at {expected_pos}",
            h.pos
        )));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(payload: &[u8], pos: u64) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_LEN + payload.len()];
        let id = RecordId {
            term: 3,
            node: 2,
            index: 77,
        };
        encode_into(&mut v, RecordKind::MESSAGE_BATCH, id, pos, payload);
        v
    }

    #[test]
    fn header_encoder_matches_the_contiguous_encoder() {
        let v = enc(b"hello", 4096);
        let h = encode_header(
            RecordKind::MESSAGE_BATCH,
            RecordId {
                term: 3,
                node: 2,
                index: 77,
            },
            4096,
            b"hello",
        );
        assert_eq!(&v[..HEADER_LEN], &h[..]);
    }

    #[test]
    fn roundtrip() {
        let v = enc(b"hello", 4096);
        let h = decode(&v, 4096).unwrap();
        assert_eq!(
            h.id,
            RecordId {
                term: 3,
                node: 2,
                index: 77
            }
        );
        assert_eq!(h.kind, RecordKind::MESSAGE_BATCH);
        assert_eq!(h.total_len(), (HEADER_LEN + 5) as u64);
        assert_eq!(&v[HEADER_LEN..], b"hello");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let v = enc(b"payload bytes", 0);
        for i in 0..v.len() {
            for bit in 0..8 {
                let mut w = v.clone();
                w[i] ^= 1 << bit;
                assert!(
                    decode(&w, 0).is_err(),
                    "flip of byte {i} bit {bit} not detected"
                );
            }
        }
    }

    #[test]
    fn wrong_position_is_rejected() {
        let v = enc(b"x", 100);
        assert!(matches!(decode(&v, 101), Err(DecodeError::Bad(_))));
    }

    #[test]
    fn zero_and_padding_are_recognised() {
        assert_eq!(decode(&[0u8; 64], 0), Err(DecodeError::Empty));
        let mut p = vec![0u8; 64];
        p[..4].copy_from_slice(&PAD_MAGIC.to_le_bytes());
        assert_eq!(decode(&p, 0), Err(DecodeError::Padding));
        assert_eq!(decode(&[0u8; 10], 0), Err(DecodeError::Short));
    }
}
