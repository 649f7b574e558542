//! Read-only inspection of a data directory (`raftmq store verify|dump`).

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;

use super::describe;
use super::recovery::{Cursor, find_valid_after, last_nonzero};
use crate::storage::error::{Result, StoreError};
use crate::storage::fsutil;
use crate::storage::index::IndexFiles;
use crate::storage::record::{self, DecodeError, HEADER_LEN, Record, RecordId, RecordKind};
use crate::storage::segment::Segment;

/// Read-only inspection of a data directory for `raftmq store verify|dump`: every record of
/// every segment is decoded and checked (CRC, position, dense indexes) against the index file.
pub fn inspect(dir: &Path) -> Result<Inspection> {
    let log_dir = dir.join("commitlog");
    let files = fsutil::list_numbered(&log_dir, "")?;
    let mut out = Inspection::default();
    let Some((_, first_path)) = files.first() else {
        return Ok(out);
    };
    let seg_size = std::fs::metadata(first_path)
        .map_err(|e| StoreError::io(first_path, e))?
        .len();
    out.segment_size = seg_size;
    let index_dir = dir.join("index");
    let spf = fsutil::list_numbered(&index_dir, ".idx")
        .ok()
        .and_then(|v| v.first().cloned())
        .and_then(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len() / crate::storage::index::SLOT_LEN as u64);
    let index = match spf {
        Some(spf) if spf > 0 => Some(IndexFiles::open(&index_dir, spf)?),
        _ => None,
    };
    let mut segments = BTreeMap::new();
    for (i, (base, path)) in files.iter().enumerate() {
        if i > 0 && files[i - 1].0 + seg_size != *base {
            out.problems.push(format!(
                "gap: no segment between {} and {}",
                files[i - 1].1.display(),
                path.display()
            ));
        }
        segments.insert(*base, Segment::open(path, *base, seg_size)?);
    }
    out.segments = segments.len();
    let bases: Vec<u64> = segments.keys().copied().collect();
    let mut bi = 0usize;
    let mut off = 0u64;
    let stop = loop {
        let base = bases[bi];
        let seg = &segments[&base];
        let decoded = if seg_size - off < HEADER_LEN as u64 {
            Err(DecodeError::Padding)
        } else {
            record::decode(&seg.bytes()[off as usize..], base + off)
        };
        match decoded {
            Ok(h) => {
                if let Some(last) = out.last_index
                    && h.id.index != last + 1
                {
                    out.problems.push(format!(
                        "{} offset {off}: index {} follows {last}",
                        seg.path().display(),
                        h.id.index
                    ));
                }
                if let Some(ix) = &index {
                    match ix.get(h.id.index) {
                        Some(s) if s.pos == base + off && s.len as u64 == h.total_len() => {}
                        Some(s) => out.problems.push(format!(
                            "index slot {} says position {} length {}, record is at {} length {}",
                            h.id.index,
                            s.pos,
                            s.len,
                            base + off,
                            h.total_len()
                        )),
                        None => out.index_missing += 1,
                    }
                }
                out.first_index.get_or_insert(h.id.index);
                out.last_index = Some(h.id.index);
                out.records += 1;
                out.payload_bytes += h.payload_len as u64;
                *out.kinds.entry(h.kind.name()).or_default() += 1;
                out.entries.push(EntrySummary {
                    id: h.id,
                    kind: h.kind,
                    pos: base + off,
                    payload_len: h.payload_len,
                });
                off += h.total_len();
            }
            Err(DecodeError::Padding) | Err(DecodeError::Short) if bi + 1 < bases.len() => {
                bi += 1;
                off = 0;
            }
            Err(e) => break (Cursor { base, off }, e),
        }
    };
    let (at, why) = stop;
    let seg = &segments[&at.base];
    if let Some(found) = find_valid_after(&segments, at, seg_size, None) {
        out.problems.push(format!(
            "{} offset {}: {}; a valid record follows at {} offset {}",
            seg.path().display(),
            at.off,
            describe(&why),
            segments[&found.base].path().display(),
            found.off
        ));
    } else if at.off < seg_size && last_nonzero(seg.bytes(), at.off, seg_size) > at.off {
        out.torn_tail = Some(format!(
            "{} offset {}: {} (a torn tail; opening the store cuts it)",
            seg.path().display(),
            at.off,
            describe(&why)
        ));
    }
    Ok(out)
}

/// Result of [`inspect`].
#[derive(Debug, Default)]
pub struct Inspection {
    /// Segment size found.
    pub segment_size: u64,
    /// Segment files.
    pub segments: usize,
    /// Whole, valid records.
    pub records: u64,
    /// Sum of payload sizes.
    pub payload_bytes: u64,
    /// First record index seen.
    pub first_index: Option<u64>,
    /// Last record index seen.
    pub last_index: Option<u64>,
    /// Records per kind.
    pub kinds: BTreeMap<&'static str, u64>,
    /// Records with no index slot (allowed for a tail recovery will re-index).
    pub index_missing: u64,
    /// Every damage found, human readable.
    pub problems: Vec<String>,
    /// A torn tail after the last record, if any (not damage: recovery cuts it).
    pub torn_tail: Option<String>,
    /// One summary per record, in log order.
    pub entries: Vec<EntrySummary>,
}

/// One record, as listed by `store dump`.
#[derive(Debug, Clone)]
pub struct EntrySummary {
    /// Log identity.
    pub id: RecordId,
    /// Kind.
    pub kind: RecordKind,
    /// Absolute position.
    pub pos: u64,
    /// Payload length.
    pub payload_len: u32,
}

/// Convenience for tests and tools: the payload bytes of `records` concatenated.
pub fn payloads(records: &[Record]) -> Vec<Bytes> {
    records.iter().map(|r| r.payload.clone()).collect()
}
