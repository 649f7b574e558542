//! Several internal commands in one Raft entry (record kind [`INTERNAL_BATCH_KIND`]).
//!
//! Each consume RPC (ReceiveMessage's delivery, AckMessage, ChangeInvisibleDuration) is one
//! internal command, and the official clients send one AckMessage per message. As separate
//! entries every one of them pays a proposal, a log record, replication bookkeeping, an
//! fsync round and an apply on every replica; the broker's command batcher therefore puts
//! the commands that arrive while earlier ones are in flight into one entry of this kind.
//! Apply runs the commands in order, exactly as if they were consecutive entries, and
//! answers with one response per command.
//!
//! Layout, little-endian:
//!
//! ```text
//! entry:    u8 version (1) | u32 n | n × (u8 kind | u32 len | len bytes)
//!           kind: INTERNAL_JSON_KIND or INTERNAL_BIN_KIND (no nesting)
//! response: u32 n | n × (u32 len | len bytes)
//! ```
//!
//! A node of an earlier version skips entries of this kind (identically on every such
//! replica, see `apply`), so a group must not mix versions with and without it while
//! consumers run: deliveries and acks would not apply there (messages come again:
//! at-least-once).

use bytes::Bytes;

use super::commands::{INTERNAL_BATCH_KIND, INTERNAL_BIN_KIND, INTERNAL_JSON_KIND};

const VERSION: u8 = 1;

/// One entry holding `cmds` (each: record kind, payload).
pub fn encode(cmds: &[(u8, Bytes)]) -> Result<Vec<u8>, String> {
    let body: usize = cmds.iter().map(|(_, d)| 5 + d.len()).sum();
    let mut out = Vec::with_capacity(5 + body);
    out.push(VERSION);
    out.extend_from_slice(&len32(cmds.len())?.to_le_bytes());
    for (kind, data) in cmds {
        if !is_batchable(*kind) {
            return Err(format!("kind {kind} cannot go into a command batch"));
        }
        out.push(*kind);
        out.extend_from_slice(&len32(data.len())?.to_le_bytes());
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// The commands of an entry of kind `kind`: itself for a single internal command, its
/// members for a batch.
pub fn split(kind: u8, data: &[u8]) -> Result<Vec<(u8, &[u8])>, String> {
    if kind != INTERNAL_BATCH_KIND {
        return Ok(vec![(kind, data)]);
    }
    let mut r = data;
    let v = take(&mut r, 1)?[0];
    if v != VERSION {
        return Err(format!("command batch version {v} is not known"));
    }
    let n = u32_le(take(&mut r, 4)?) as usize;
    // Each member takes at least 5 bytes: a corrupt count must not make us allocate.
    if n.saturating_mul(5) > r.len() {
        return Err("command count beyond the payload".into());
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let k = take(&mut r, 1)?[0];
        if !is_batchable(k) {
            return Err(format!("kind {k} inside a command batch"));
        }
        let len = u32_le(take(&mut r, 4)?) as usize;
        out.push((k, take(&mut r, len)?));
    }
    if !r.is_empty() {
        return Err(format!("{} bytes after the command batch", r.len()));
    }
    Ok(out)
}

/// The apply response of a batch: one response per command, in order.
pub fn encode_responses(rs: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(4 + rs.iter().map(|r| 4 + r.len()).sum::<usize>());
    // A batch never holds more than u32::MAX commands (see `encode`), nor a response more
    // than its own size in the log.
    out.extend_from_slice(&(rs.len() as u32).to_le_bytes());
    for r in rs {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    Bytes::from(out)
}

/// The per-command responses of a batch's apply response (slices of `data`, no copies).
pub fn decode_responses(data: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut r: &[u8] = data;
    let n = u32_le(take(&mut r, 4)?) as usize;
    if n.saturating_mul(4) > r.len() {
        return Err("response count beyond the payload".into());
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = u32_le(take(&mut r, 4)?) as usize;
        let start = data.len() - r.len();
        take(&mut r, len)?;
        out.push(data.slice(start..start + len));
    }
    if !r.is_empty() {
        return Err(format!("{} bytes after the batch response", r.len()));
    }
    Ok(out)
}

fn is_batchable(kind: u8) -> bool {
    kind == INTERNAL_JSON_KIND || kind == INTERNAL_BIN_KIND
}

fn len32(n: usize) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("{n} does not fit a command batch"))
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if r.len() < n {
        return Err("truncated command batch".into());
    }
    let (a, b) = r.split_at(n);
    *r = b;
    Ok(a)
}

fn u32_le(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_single_command_is_its_own_split() {
        let s = split(INTERNAL_BIN_KIND, b"abc").unwrap();
        assert_eq!(s, vec![(INTERNAL_BIN_KIND, &b"abc"[..])]);
    }

    #[test]
    fn refuses_nesting_and_foreign_kinds() {
        let inner = encode(&[(INTERNAL_BIN_KIND, Bytes::from_static(b"x"))]).unwrap();
        assert!(encode(&[(INTERNAL_BATCH_KIND, Bytes::from(inner.clone()))]).is_err());
        let mut forged = vec![VERSION, 1, 0, 0, 0, INTERNAL_BATCH_KIND, 0, 0, 0, 0];
        assert!(split(INTERNAL_BATCH_KIND, &forged).is_err());
        forged[5] = 1; // the message batch kind
        assert!(split(INTERNAL_BATCH_KIND, &forged).is_err());
    }

    #[test]
    fn refuses_damage() {
        let ok = encode(&[
            (INTERNAL_BIN_KIND, Bytes::from_static(b"one")),
            (INTERNAL_JSON_KIND, Bytes::from_static(b"{}")),
        ])
        .unwrap();
        assert_eq!(split(INTERNAL_BATCH_KIND, &ok).unwrap().len(), 2);
        for cut in 0..ok.len() {
            assert!(
                split(INTERNAL_BATCH_KIND, &ok[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = ok.clone();
        longer.push(0);
        assert!(split(INTERNAL_BATCH_KIND, &longer).is_err());
        let mut huge = ok;
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(split(INTERNAL_BATCH_KIND, &huge).is_err());
        let mut v2 = vec![2];
        v2.extend_from_slice(&0u32.to_le_bytes());
        assert!(split(INTERNAL_BATCH_KIND, &v2).is_err());
    }

    proptest! {
        #[test]
        fn commands_and_responses_round_trip(
            cmds in proptest::collection::vec(
                (prop_oneof![Just(INTERNAL_JSON_KIND), Just(INTERNAL_BIN_KIND)],
                 proptest::collection::vec(any::<u8>(), 0..64)),
                0..20,
            )
        ) {
            let cmds: Vec<(u8, Bytes)> =
                cmds.into_iter().map(|(k, d)| (k, Bytes::from(d))).collect();
            let enc = encode(&cmds).unwrap();
            let back = split(INTERNAL_BATCH_KIND, &enc).unwrap();
            prop_assert_eq!(back.len(), cmds.len());
            for ((k, d), (bk, bd)) in cmds.iter().zip(&back) {
                prop_assert_eq!(k, bk);
                prop_assert_eq!(&d[..], *bd);
            }
            let rs: Vec<Bytes> = cmds.iter().map(|(_, d)| d.clone()).collect();
            let dec = decode_responses(&encode_responses(&rs)).unwrap();
            prop_assert_eq!(dec, rs);
        }
    }
}
