//! The flusher thread: syncs the dirty ranges appends leave, group-committing every append
//! that arrived while a sync ran, fires their callbacks, and poisons the log on a failed sync.

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Instant;

use super::{FlushCallback, FlushMode, FlushMsg, Inner};
use crate::storage::segment::Segment;

pub(super) fn push_dirty(
    dirty: &mut Vec<(Arc<Segment>, u64, u64)>,
    seg: &Arc<Segment>,
    from: u64,
    to: u64,
) {
    if let Some(last) = dirty.last_mut()
        && Arc::ptr_eq(&last.0, seg)
    {
        last.1 = last.1.min(from);
        last.2 = last.2.max(to);
        return;
    }
    dirty.push((Arc::clone(seg), from, to));
}

pub(super) fn send_flush(
    tx: &Sender<FlushMsg>,
    seg: Arc<Segment>,
    from: u64,
    to: u64,
    index: u64,
    cb: Option<FlushCallback>,
) {
    if let Err(mpsc::SendError(FlushMsg::Range { cb: Some(cb), .. })) = tx.send(FlushMsg::Range {
        seg,
        from,
        to,
        index,
        cb,
    }) {
        cb(Err(io::Error::other("commitlog flusher is gone")));
    }
}

pub(super) fn poison(inner: &Inner, why: String) {
    tracing::error!(target: "raftmq::storage", "commitlog poisoned: {why}");
    if let Ok(mut g) = inner.poison.lock()
        && g.is_none()
    {
        *g = Some(why);
    }
}

/// Flusher: drains flush requests, syncs each touched range once, then completes callbacks.
pub(super) fn flusher_loop(inner: Arc<Inner>, rx: Receiver<FlushMsg>) {
    let sync_mode = inner.cfg.flush == FlushMode::Sync;
    let interval = inner.cfg.flush_interval;
    let mut pending: Vec<FlushMsg> = Vec::new();
    let mut last_flush = Instant::now();
    loop {
        let first = if sync_mode || pending.is_empty() {
            rx.recv().ok()
        } else {
            let wait = interval.saturating_sub(last_flush.elapsed());
            match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    flush_batch(&inner, std::mem::take(&mut pending));
                    return;
                }
            }
        };
        let closed = first.is_none() && (sync_mode || pending.is_empty());
        let mut barrier = false;
        if let Some(m) = first {
            barrier |= matches!(m, FlushMsg::Barrier(_));
            pending.push(m);
        }
        while let Ok(m) = rx.try_recv() {
            barrier |= matches!(m, FlushMsg::Barrier(_));
            pending.push(m);
        }
        let due = sync_mode || barrier || closed || last_flush.elapsed() >= interval;
        if due && !pending.is_empty() {
            flush_batch(&inner, std::mem::take(&mut pending));
            last_flush = Instant::now();
        }
        if closed {
            if !pending.is_empty() {
                flush_batch(&inner, std::mem::take(&mut pending));
            }
            return;
        }
    }
}

fn flush_batch(inner: &Inner, batch: Vec<FlushMsg>) {
    // Merge ranges per segment: one msync per segment covers every append in the batch.
    let mut ranges: Vec<(Arc<Segment>, u64, u64)> = Vec::new();
    let mut index = 0;
    for m in &batch {
        if let FlushMsg::Range {
            seg,
            from,
            to,
            index: i,
            ..
        } = m
        {
            index = index.max(*i);
            match ranges.iter_mut().find(|r| Arc::ptr_eq(&r.0, seg)) {
                Some(r) => {
                    r.1 = r.1.min(*from);
                    r.2 = r.2.max(*to);
                }
                None => ranges.push((Arc::clone(seg), *from, *to)),
            }
        }
    }
    let mut result: io::Result<()> = Ok(());
    crate::hops::mark(crate::hops::Hop::FsyncStart, index);
    for (seg, from, to) in &ranges {
        if let Err(e) = seg.flush_range(*from, *to) {
            let why = format!("msync of {} failed: {e}", seg.path().display());
            poison(inner, why.clone());
            result = Err(io::Error::new(e.kind(), why));
            break;
        }
    }
    crate::hops::mark(crate::hops::Hop::FsyncEnd, index);
    if result.is_ok()
        && let Ok(g) = inner.poison.lock()
        && let Some(why) = &*g
    {
        result = Err(io::Error::other(format!("store poisoned: {why}")));
    }
    for m in batch {
        let r = match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        match m {
            FlushMsg::Range { cb: Some(cb), .. } => cb(r),
            FlushMsg::Range { cb: None, .. } => {}
            FlushMsg::Barrier(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}
