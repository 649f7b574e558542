//! The proxy's Telemetry relay: one client stream ↔ one stream to every member of every
//! broker group.
//!
//! Every member gets the client's commands (its latest Settings first, when a stream to a
//! member is opened or reopened), because the leader of a group — whichever member that is
//! after a failover — pushes transaction check-backs on the streams it holds. Of the
//! members' Settings replies one goes back per Settings command the client sent; other
//! server commands go back as they come, transaction ids tagged with their group. The set
//! of members is re-read from the registry every [`RESYNC`]; a stream that ends is reopened
//! then.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status, Streaming};

use super::{BoxStream, Inner, tag};
use crate::proto::apache::rocketmq::v2 as api;
use crate::proto::apache::rocketmq::v2::telemetry_command::Command;
use crate::protocol::settings::settings_reply;

/// How often the relay re-reads the members and reopens ended streams.
const RESYNC: Duration = Duration::from_secs(1);

/// What a member's stream reports back: (group, member address, stream generation, the
/// command, or `None` when the stream ended).
type UpItem = (String, String, u64, Option<api::TelemetryCommand>);

struct Upstream {
    generation: u64,
    tx: mpsc::Sender<api::TelemetryCommand>,
    /// Numbers of the client's Settings commands sent on this stream and not answered yet,
    /// in order: a member answers each Settings once, in the order it got them.
    pending: VecDeque<u64>,
}

/// Relay `inbound` (the client's half) to the members; the returned stream is the client's
/// other half.
pub(super) fn relay(
    inner: Arc<Inner>,
    md: MetadataMap,
    mut inbound: Streaming<api::TelemetryCommand>,
) -> BoxStream<api::TelemetryCommand> {
    let (out_tx, mut out_rx) = mpsc::channel::<Result<api::TelemetryCommand, Status>>(64);
    tokio::spawn(async move {
        let (up_tx, mut up_rx) = mpsc::channel::<UpItem>(64);
        let mut ups: HashMap<String, Upstream> = HashMap::new();
        let mut generation = 0u64;
        // The client's latest Settings and its number; the numbers already answered.
        let mut last_settings: Option<(u64, api::TelemetryCommand)> = None;
        let mut seen = 0u64;
        let mut answered: HashSet<u64> = HashSet::new();
        // Streams to the members are open before the client's first Settings is read: a
        // member, not the defaults, must answer it. The official Python PushConsumer, for
        // one, stops reading its stream after the first Settings reply (its metrics hook
        // fails when metrics are off), so the first reply is the one it keeps, and only a
        // member's carries the group's retry policy and FIFO flag.
        resync(
            &inner,
            &md,
            &mut ups,
            &mut generation,
            &last_settings,
            &up_tx,
        );
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
        let mut shutdown = inner.shutdown.clone();
        loop {
            tokio::select! {
                m = inbound.message() => {
                    let Ok(Some(cmd)) = m else { break };
                    let mut number = None;
                    if let Some(Command::Settings(s)) = &cmd.command {
                        seen += 1;
                        number = Some(seen);
                        last_settings = Some((seen, cmd.clone()));
                        if ups.is_empty() {
                            // No broker registered yet: answer from the defaults so that
                            // clients that wait for a reply start; the members answer again
                            // once streams to them are open.
                            answered.insert(seen);
                            if out_tx.send(Ok(settings_reply(s.clone()))).await.is_err() {
                                break;
                            }
                            continue;
                        }
                    }
                    for u in ups.values_mut() {
                        if u.tx.try_send(cmd.clone()).is_ok()
                            && let Some(n) = number
                        {
                            u.pending.push_back(n);
                        }
                    }
                }
                Some((group, addr, g, item)) = up_rx.recv() => {
                    let Some(mut cmd) = item else {
                        if ups.get(&addr).is_some_and(|u| u.generation == g) {
                            ups.remove(&addr);
                        }
                        continue;
                    };
                    let forward = match &mut cmd.command {
                        // The first member to answer a Settings command answers it.
                        Some(Command::Settings(_)) => ups
                            .get_mut(&addr)
                            .filter(|u| u.generation == g)
                            .and_then(|u| u.pending.pop_front())
                            .is_some_and(|n| answered.insert(n)),
                        Some(Command::RecoverOrphanedTransactionCommand(c)) => {
                            c.transaction_id = tag(&group, &c.transaction_id);
                            true
                        }
                        _ => true,
                    };
                    if forward && out_tx.send(Ok(cmd)).await.is_err() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    resync(&inner, &md, &mut ups, &mut generation, &last_settings, &up_tx);
                }
                _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => break,
            }
        }
        // Dropping `ups` ends the members' request streams.
    });
    Box::pin(futures::stream::poll_fn(move |cx| out_rx.poll_recv(cx)))
}

/// Drop the streams of members that left, open streams to members that have none.
fn resync(
    inner: &Inner,
    md: &MetadataMap,
    ups: &mut HashMap<String, Upstream>,
    generation: &mut u64,
    last_settings: &Option<(u64, api::TelemetryCommand)>,
    up_tx: &mpsc::Sender<UpItem>,
) {
    let members = inner.all_members();
    ups.retain(|addr, _| members.iter().any(|(_, a)| a == addr));
    for (group, addr) in members {
        if ups.contains_key(&addr) {
            continue;
        }
        *generation += 1;
        if let Some(u) = open(
            inner,
            md,
            &group,
            &addr,
            *generation,
            last_settings.clone(),
            up_tx.clone(),
        ) {
            ups.insert(addr, u);
        }
    }
}

/// Open a stream to one member, sending `first` (the client's latest Settings) on it.
fn open(
    inner: &Inner,
    md: &MetadataMap,
    group: &str,
    addr: &str,
    generation: u64,
    first: Option<(u64, api::TelemetryCommand)>,
    up_tx: mpsc::Sender<UpItem>,
) -> Option<Upstream> {
    let mut c = inner.client(addr).ok()?;
    let (tx, mut rx) = mpsc::channel::<api::TelemetryCommand>(16);
    let mut pending = VecDeque::new();
    if let Some((n, f)) = first
        && tx.try_send(f).is_ok()
    {
        pending.push_back(n);
    }
    let (group, addr) = (group.to_string(), addr.to_string());
    let mut req = Request::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    *req.metadata_mut() = md.clone();
    tokio::spawn(async move {
        let run = async {
            if let Ok(resp) = c.telemetry(req).await {
                let mut s = resp.into_inner();
                while let Ok(Some(m)) = s.message().await {
                    if up_tx
                        .send((group.clone(), addr.clone(), generation, Some(m)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            let _ = up_tx
                .send((group.clone(), addr.clone(), generation, None))
                .await;
        };
        // The member may keep its half open after ours ends: stop with the relay.
        tokio::select! {
            _ = run => {}
            _ = up_tx.closed() => {}
        }
    });
    Some(Upstream {
        generation,
        tx,
        pending,
    })
}
