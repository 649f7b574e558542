//! How internal commands are encoded in the log.
//!
//! The consume path's commands — [`InternalCommand::Pop`], `Ack`, `AckMany`,
//! `ChangeInvisible` and `Renew`, one or more per ReceiveMessage / AckMessage — are written in
//! a fixed binary layout (kind [`INTERNAL_BIN_KIND`]): they are the most frequent entries
//! after messages, and JSON cost every replica a parse per entry on apply. Every other
//! command (topics, groups, transactions, offsets, ACL: rare, and easier to inspect) stays
//! JSON (kind [`INTERNAL_JSON_KIND`]). Both kinds are decoded into the same
//! [`InternalCommand`].
//!
//! Binary layout, little-endian; `str` = `u16` byte length + UTF-8:
//!
//! ```text
//! u8 version (1) | u8 op | fields
//! op 1 Pop:             str group | str topic | u32 queue | u64 skip_to | i64 invisible_until_ms
//!                       | u64 seq | u32 n | n × (u64 offset, u32 attempt)
//! op 2 Ack:             str group | str topic | u32 queue | u64 offset | u64 seq
//! op 3 AckMany:         str group | str topic | u32 n | n × (u32 queue, u64 offset, u64 seq)
//! op 4 ChangeInvisible: str group | str topic | u32 queue | u64 offset | u64 seq
//!                       | i64 until_ms | u64 new_seq
//! op 5 Renew:           str group | str topic | u32 queue | i64 until_ms | u32 n
//!                       | n × (u64 offset, u64 seq)
//! ```
//!
//! A node of an earlier version skips entries of an unknown kind (identically on every such
//! replica), so a group must not mix versions with and without this kind while consumers
//! run: their acks and deliveries would not apply there (messages come again: at-least-once).

use super::commands::{
    INTERNAL_BATCH_KIND, INTERNAL_BIN_KIND, INTERNAL_JSON_KIND, InternalCommand,
};
use crate::raft::consume::Pop;

const VERSION: u8 = 1;

/// Encode `cmd`: (record kind, payload).
pub fn encode(cmd: &InternalCommand) -> Result<(u8, Vec<u8>), String> {
    match binary(cmd) {
        Some(b) => Ok((INTERNAL_BIN_KIND, b)),
        None => serde_json::to_vec(cmd)
            .map(|b| (INTERNAL_JSON_KIND, b))
            .map_err(|e| e.to_string()),
    }
}

/// Decode a payload of record kind `kind` (either internal kind).
pub fn decode(kind: u8, data: &[u8]) -> Result<InternalCommand, String> {
    match kind {
        INTERNAL_JSON_KIND => serde_json::from_slice(data).map_err(|e| e.to_string()),
        INTERNAL_BIN_KIND => decode_binary(data),
        k => Err(format!("kind {k} is not an internal command")),
    }
}

/// Whether `kind` holds internal commands (one, or a batch of them).
pub fn is_internal(kind: u8) -> bool {
    kind == INTERNAL_JSON_KIND || kind == INTERNAL_BIN_KIND || kind == INTERNAL_BATCH_KIND
}

struct W(Vec<u8>);

impl W {
    fn str(&mut self, s: &str) -> Option<()> {
        let n = u16::try_from(s.len()).ok()?;
        self.0.extend_from_slice(&n.to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        Some(())
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) -> Option<()> {
        self.u32(u32::try_from(n).ok()?);
        Some(())
    }
}

/// The binary form, for the consume commands; `None` for the others (and for names too long
/// for a `u16` length, which then go as JSON).
fn binary(cmd: &InternalCommand) -> Option<Vec<u8>> {
    let mut w = W(Vec::with_capacity(64));
    w.0.push(VERSION);
    match cmd {
        InternalCommand::Pop(p) => {
            w.0.push(1);
            w.str(&p.group)?;
            w.str(&p.topic)?;
            w.u32(p.queue);
            w.u64(p.skip_to);
            w.i64(p.invisible_until_ms);
            w.u64(p.seq);
            w.len(p.deliver.len())?;
            for (o, a) in &p.deliver {
                w.u64(*o);
                w.u32(*a);
            }
        }
        InternalCommand::Ack {
            group,
            topic,
            queue,
            offset,
            seq,
        } => {
            w.0.push(2);
            w.str(group)?;
            w.str(topic)?;
            w.u32(*queue);
            w.u64(*offset);
            w.u64(*seq);
        }
        InternalCommand::AckMany {
            group,
            topic,
            items,
        } => {
            w.0.push(3);
            w.str(group)?;
            w.str(topic)?;
            w.len(items.len())?;
            for (q, o, s) in items {
                w.u32(*q);
                w.u64(*o);
                w.u64(*s);
            }
        }
        InternalCommand::ChangeInvisible {
            group,
            topic,
            queue,
            offset,
            seq,
            until_ms,
            new_seq,
        } => {
            w.0.push(4);
            w.str(group)?;
            w.str(topic)?;
            w.u32(*queue);
            w.u64(*offset);
            w.u64(*seq);
            w.i64(*until_ms);
            w.u64(*new_seq);
        }
        InternalCommand::Renew {
            group,
            topic,
            queue,
            items,
            until_ms,
        } => {
            w.0.push(5);
            w.str(group)?;
            w.str(topic)?;
            w.u32(*queue);
            w.i64(*until_ms);
            w.len(items.len())?;
            for (o, s) in items {
                w.u64(*o);
                w.u64(*s);
            }
        }
        _ => return None,
    }
    Some(w.0)
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated internal command".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }
    fn str(&mut self) -> Result<String, String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "name is not UTF-8".into())
    }
    /// A count of items of `size` bytes each, checked against what is left (a corrupt count
    /// must not make us allocate).
    fn count(&mut self, size: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n.saturating_mul(size) > self.0.len() {
            return Err("item count beyond the payload".into());
        }
        Ok(n)
    }
}

fn decode_binary(data: &[u8]) -> Result<InternalCommand, String> {
    let mut r = R(data);
    let v = r.u8()?;
    if v != VERSION {
        return Err(format!("binary internal command version {v} is not known"));
    }
    let op = r.u8()?;
    let cmd = match op {
        1 => {
            let (group, topic, queue) = (r.str()?, r.str()?, r.u32()?);
            let (skip_to, invisible_until_ms, seq) = (r.u64()?, r.i64()?, r.u64()?);
            let n = r.count(12)?;
            let mut deliver = Vec::with_capacity(n);
            for _ in 0..n {
                deliver.push((r.u64()?, r.u32()?));
            }
            InternalCommand::Pop(Pop {
                group,
                topic,
                queue,
                deliver,
                skip_to,
                invisible_until_ms,
                seq,
            })
        }
        2 => InternalCommand::Ack {
            group: r.str()?,
            topic: r.str()?,
            queue: r.u32()?,
            offset: r.u64()?,
            seq: r.u64()?,
        },
        3 => {
            let (group, topic) = (r.str()?, r.str()?);
            let n = r.count(20)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push((r.u32()?, r.u64()?, r.u64()?));
            }
            InternalCommand::AckMany {
                group,
                topic,
                items,
            }
        }
        4 => InternalCommand::ChangeInvisible {
            group: r.str()?,
            topic: r.str()?,
            queue: r.u32()?,
            offset: r.u64()?,
            seq: r.u64()?,
            until_ms: r.i64()?,
            new_seq: r.u64()?,
        },
        5 => {
            let (group, topic, queue, until_ms) = (r.str()?, r.str()?, r.u32()?, r.i64()?);
            let n = r.count(16)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push((r.u64()?, r.u64()?));
            }
            InternalCommand::Renew {
                group,
                topic,
                queue,
                items,
                until_ms,
            }
        }
        op => return Err(format!("binary internal command op {op} is not known")),
    };
    if !r.0.is_empty() {
        return Err(format!("{} bytes after the internal command", r.0.len()));
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_%|-]{0,40}"
    }

    fn hot() -> impl Strategy<Value = InternalCommand> {
        prop_oneof![
            (
                name(),
                name(),
                any::<u32>(),
                prop::collection::vec((any::<u64>(), any::<u32>()), 0..40),
                any::<u64>(),
                any::<i64>(),
                any::<u64>()
            )
                .prop_map(|(group, topic, queue, deliver, skip_to, inv, seq)| {
                    InternalCommand::Pop(Pop {
                        group,
                        topic,
                        queue,
                        deliver,
                        skip_to,
                        invisible_until_ms: inv,
                        seq,
                    })
                }),
            (name(), name(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
                |(group, topic, queue, offset, seq)| InternalCommand::Ack {
                    group,
                    topic,
                    queue,
                    offset,
                    seq
                }
            ),
            (
                name(),
                name(),
                prop::collection::vec((any::<u32>(), any::<u64>(), any::<u64>()), 0..40)
            )
                .prop_map(|(group, topic, items)| InternalCommand::AckMany {
                    group,
                    topic,
                    items
                }),
            (
                name(),
                name(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<i64>(),
                any::<u64>()
            )
                .prop_map(|(group, topic, queue, offset, seq, until_ms, new_seq)| {
                    InternalCommand::ChangeInvisible {
                        group,
                        topic,
                        queue,
                        offset,
                        seq,
                        until_ms,
                        new_seq,
                    }
                }),
            (
                name(),
                name(),
                any::<u32>(),
                prop::collection::vec((any::<u64>(), any::<u64>()), 0..40),
                any::<i64>()
            )
                .prop_map(|(group, topic, queue, items, until_ms)| {
                    InternalCommand::Renew {
                        group,
                        topic,
                        queue,
                        items,
                        until_ms,
                    }
                }),
        ]
    }

    proptest! {
        #[test]
        fn consume_commands_round_trip_in_binary(cmd in hot()) {
            let (kind, bytes) = encode(&cmd).unwrap();
            prop_assert_eq!(kind, INTERNAL_BIN_KIND);
            prop_assert_eq!(decode(kind, &bytes).unwrap(), cmd);
        }

        #[test]
        fn truncated_or_extended_payloads_are_rejected(cmd in hot(), cut in 1usize..64) {
            let (kind, bytes) = encode(&cmd).unwrap();
            let n = bytes.len().saturating_sub(cut);
            prop_assert!(decode(kind, &bytes[..n]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(decode(kind, &longer).is_err());
        }
    }

    #[test]
    fn other_commands_stay_json() {
        let cmd = InternalCommand::DeleteTopic { name: "t".into() };
        let (kind, bytes) = encode(&cmd).unwrap();
        assert_eq!(kind, INTERNAL_JSON_KIND);
        assert_eq!(decode(kind, &bytes).unwrap(), cmd);
    }

    #[test]
    fn a_huge_item_count_is_refused_without_allocating() {
        let mut b = vec![VERSION, 3, 0, 0, 0, 0];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(INTERNAL_BIN_KIND, &b).is_err());
    }
}
