//! Recovery at open: the anchor, short tail segments, and the scan of the last segments that
//! cuts a torn tail and refuses damage in the middle of the log (see the module docs of
//! [`super`]).

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::{ANCHOR, CommitLogConfig, RECOVERY_WINDOW, RecoveryReport, State, describe};
use crate::storage::error::{Result, StoreError};
use crate::storage::fsutil;
use crate::storage::index::Slot;
use crate::storage::record::{self, DecodeError, HEADER_LEN, RecordId};
use crate::storage::segment::Segment;

fn read_anchor(log_dir: &Path) -> Result<Option<(u64, u64)>> {
    let p = log_dir.join(ANCHOR);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&p, e)),
    };
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    match (it.next(), it.next()) {
        (Some(Ok(i)), Some(Ok(pos))) => Ok(Some((i, pos))),
        _ => Err(StoreError::corrupt(
            &p,
            0,
            "anchor is not `<index> <position>`",
        )),
    }
}

/// A last segment shorter than the segment size (its tail was cut off, e.g. by a crash of a
/// copy or by an operator) is extended with zeroes; the missing bytes are then an ordinary
/// torn tail for recovery. Earlier segments of the wrong size are refused by `Segment::open`.
pub(super) fn extend_short_tail(path: &Path, size: u64, report: &mut RecoveryReport) -> Result<()> {
    let len = std::fs::metadata(path)
        .map_err(|e| StoreError::io(path, e))?
        .len();
    if len >= size {
        return Ok(());
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io(path, e))?;
    f.set_len(size).map_err(|e| StoreError::io(path, e))?;
    fsutil::preallocate(&f, path, size)?;
    f.sync_all().map_err(|e| StoreError::io(path, e))?;
    report.extended_tail_segment = Some((path.to_path_buf(), len));
    Ok(())
}

/// Position of a scan inside the segment map.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cursor {
    pub(super) base: u64,
    pub(super) off: u64,
}

/// Recovery: scan the tail, cut a torn tail, refuse mid-log damage, check/rebuild the index.
pub(super) fn recover(
    cfg: &CommitLogConfig,
    st: &mut State,
    report: &mut RecoveryReport,
) -> Result<()> {
    let seg_size = cfg.segment_size;
    let bases: Vec<u64> = st.segments.keys().copied().collect();
    if bases.is_empty() {
        st.index.clear_from(0)?;
        return Ok(());
    }
    // Scan window: the last `recovery_scan_segments` segments, widened backwards until it
    // contains at least one record (a freshly rolled, empty active segment has none).
    let mut start = bases.len().saturating_sub(cfg.recovery_scan_segments);
    // (last record id and its end position, first position that is not a valid record)
    let (last, stop) = loop {
        let (l, s, scanned) = scan(st, &bases[start..], seg_size)?;
        report.records_scanned = scanned;
        if l.is_some() || start == 0 {
            break (l, s);
        }
        start -= 1;
    };

    // Is the stop a torn tail or damage in the middle? Any valid record after it decides.
    let expected = last.map(|(id, _)| id.index + 1);
    let found = find_valid_after(&st.segments, stop, seg_size, Some(RECOVERY_WINDOW))
        .or_else(|| expected.and_then(|e| indexed_record_after(st, e, stop, seg_size)));
    if let Some(found) = found {
        let seg = &st.segments[&stop.base];
        let found_seg = &st.segments[&found.base];
        let why = match record::decode(&seg.bytes()[stop.off as usize..], stop.base + stop.off) {
            Err(e) => describe(&e),
            Ok(h) => format!("record {} breaks the index sequence", h.id.index),
        };
        return Err(StoreError::corrupt(
            seg.path(),
            stop.off,
            format!(
                "{why}; a valid record follows at {} offset {}, so this is not a torn tail",
                found_seg.path().display(),
                found.off
            ),
        ));
    }
    // Torn tail (or clean end): zero whatever non-zero bytes follow the stop point.
    let seg = Arc::clone(&st.segments[&stop.base]);
    let end = last_nonzero(seg.bytes(), stop.off, RECOVERY_WINDOW);
    if end > stop.off {
        report.torn_tail_at = Some((seg.path().to_path_buf(), stop.off));
        report.torn_bytes = end - stop.off;
        seg.zero(stop.off, end);
        seg.flush_range(stop.off, end)
            .map_err(|e| StoreError::io(seg.path(), e))?;
    }
    // Later segments hold no valid record (checked above): remove them.
    let later: Vec<u64> = st
        .segments
        .range(stop.base + 1..)
        .map(|(b, _)| *b)
        .collect();
    for b in later {
        if let Some(s) = st.segments.remove(&b) {
            std::fs::remove_file(s.path()).map_err(|e| StoreError::io(s.path(), e))?;
        }
    }

    match last {
        Some((id, end_pos)) => {
            st.next_index = id.index + 1;
            st.write_pos = end_pos;
        }
        None => {
            // No record at all: a log emptied by `reset` (its anchor says where it restarts),
            // or one whose records were never written.
            let (next_index, pos) =
                read_anchor(&cfg.dir.join("commitlog"))?.unwrap_or((0, bases[0]));
            st.next_index = next_index;
            st.write_pos = if pos - pos % seg_size == bases[0] {
                pos
            } else {
                bases[0]
            };
        }
    }
    // First retained index: the first record of the first segment.
    let first_seg = &st.segments[&bases[0]];
    st.first_index = match (record::decode(first_seg.bytes(), bases[0]), last) {
        (Ok(h), _) => h.id.index,
        (Err(_), None) => st.next_index,
        (Err(e), Some(_)) => {
            // The log has records, so the oldest segment must begin with one.
            return Err(StoreError::corrupt(
                first_seg.path(),
                0,
                format!("first record of the oldest segment: {}", describe(&e)),
            ));
        }
    };
    st.index.clear_from(st.next_index)?;
    // The index below the scan window must agree with the data; spot-check both ends of it.
    let ok = |i: u64| -> bool {
        let Some(s) = st.index.get(i) else {
            return false;
        };
        let base = s.pos - s.pos % seg_size;
        st.segments.get(&base).is_some_and(|seg| {
            record::decode(&seg.bytes()[(s.pos - base) as usize..], s.pos)
                .is_ok_and(|h| h.id.index == i && h.total_len() == s.len as u64)
        })
    };
    let healthy = st.first_index >= st.next_index || (ok(st.first_index) && ok(st.next_index - 1));
    if !healthy {
        tracing::warn!(target: "raftmq::storage", "index does not match the commitlog; rebuilding it by a full scan");
        st.index.wipe()?;
        let (_, _, scanned) = scan(st, &bases, seg_size)?;
        report.records_scanned = scanned;
        report.index_rebuilt = true;
    }
    Ok(())
}

/// Scan records from the start of `bases[0]` through the last base, (re)writing their index
/// slots. Returns the last valid record (id, end position), the first position that is not a
/// valid record, and how many records were scanned.
/// Outcome of [`scan`]: last valid record (id, end position), where scanning stopped, and how
/// many records were scanned.
type ScanOutcome = (Option<(RecordId, u64)>, Cursor, u64);

fn scan(st: &mut State, bases: &[u64], seg_size: u64) -> Result<ScanOutcome> {
    let mut last: Option<(RecordId, u64)> = None;
    let mut scanned = 0u64;
    let mut bi = 0usize;
    let mut off = 0u64;
    loop {
        let base = bases[bi];
        let seg = Arc::clone(&st.segments[&base]);
        let next_segment = |bi: &mut usize, off: &mut u64| -> bool {
            if *bi + 1 < bases.len() {
                *bi += 1;
                *off = 0;
                true
            } else {
                false
            }
        };
        if seg_size - off < HEADER_LEN as u64 {
            if next_segment(&mut bi, &mut off) {
                continue;
            }
            return Ok((last, Cursor { base, off }, scanned));
        }
        match record::decode(&seg.bytes()[off as usize..], base + off) {
            // Indexes may jump forward (an empty log restarts at a later index after a purge
            // past its end) but never go backwards.
            Ok(h) if last.is_none_or(|(l, _)| h.id.index > l.index) => {
                st.index.put(
                    h.id.index,
                    Slot {
                        pos: base + off,
                        len: h.total_len() as u32,
                        kind: h.kind.0,
                        term: h.id.term,
                        node: h.id.node,
                    },
                )?;
                scanned += 1;
                off += h.total_len();
                last = Some((h.id, base + off));
            }
            Err(DecodeError::Padding) => {
                if !next_segment(&mut bi, &mut off) {
                    return Ok((last, Cursor { base, off }, scanned));
                }
            }
            _ => return Ok((last, Cursor { base, off }, scanned)),
        }
    }
}

/// Search every byte position after `stop` (this segment, then all later ones) for a valid
/// record. Only runs when recovery found a bad or empty position, so its cost is paid rarely.
pub(super) fn find_valid_after(
    segments: &BTreeMap<u64, Arc<Segment>>,
    stop: Cursor,
    seg_size: u64,
    window: Option<u64>,
) -> Option<Cursor> {
    let magic0 = record::RECORD_MAGIC.to_le_bytes()[0];
    for (&base, seg) in segments.range(stop.base..) {
        let bytes = seg.bytes();
        let start = if base == stop.base { stop.off + 1 } else { 0 };
        let mut p = start as usize;
        let mut limit = (seg_size as usize).saturating_sub(HEADER_LEN);
        if let Some(w) = window {
            // Recovery: a bounded scan after the stop point; a later segment can only hold
            // data from its first byte on, so its first record is all that is checked.
            let w = if base == stop.base { w } else { 1 };
            limit = limit.min((start + w) as usize);
        }
        while p <= limit {
            match bytes[p..=limit].iter().position(|b| *b == magic0) {
                None => break,
                Some(d) => p += d,
            }
            if record::decode(&bytes[p..], base + p as u64).is_ok() {
                return Some(Cursor {
                    base,
                    off: p as u64,
                });
            }
            p += 1;
        }
    }
    None
}

/// Index slots written before a crash can name records beyond the stop point that a bounded
/// scan would not reach: if one of the next few indexes points at a valid record past the
/// stop, the log continues after damage.
fn indexed_record_after(st: &State, expected: u64, stop: Cursor, seg_size: u64) -> Option<Cursor> {
    let stop_abs = stop.base + stop.off;
    (expected..expected + 8).find_map(|i| {
        let s = st.index.get(i)?;
        if s.pos <= stop_abs {
            return None;
        }
        let base = s.pos - s.pos % seg_size;
        let seg = st.segments.get(&base)?;
        let off = s.pos - base;
        let h = record::decode(seg.bytes().get(off as usize..)?, s.pos).ok()?;
        (h.id.index == i).then_some(Cursor { base, off })
    })
}

/// One past the last non-zero byte in `from..from + window` (or `from` if all zero).
pub(super) fn last_nonzero(bytes: &[u8], from: u64, window: u64) -> u64 {
    let end = (from.saturating_add(window) as usize).min(bytes.len());
    let tail = &bytes[from as usize..end];
    const CHUNK: usize = 64 * 1024;
    let mut end = tail.len();
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        if let Some(i) = tail[start..end].iter().rposition(|b| *b != 0) {
            return from + (start + i + 1) as u64;
        }
        end = start;
    }
    from
}
