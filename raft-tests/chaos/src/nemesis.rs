//! The nemesis: one fault at a time, on a schedule drawn from the seed; each fault is
//! injected, held, healed, and the cluster is given time to converge before the next.

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use raftmq::proto::raftmq::admin as pb;
use serde::Serialize;

use super::cluster::{Cluster, admin};
use super::history::{Event, History};
use super::rng::Rng;
use super::workload::{self, Control, FILLER_TOPIC};

/// Fault kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// kill -9 the leader; restart it.
    KillLeader,
    /// kill -9 a random node; restart it.
    KillNode,
    /// SIGSTOP the leader; SIGCONT.
    PauseLeader,
    /// SIGSTOP a random node; SIGCONT.
    PauseNode,
    /// Cut the leader off from its peers (both directions).
    PartitionLeader,
    /// Split the nodes into two halves (1|2 in a 3-node group).
    PartitionHalves,
    /// Drop packets in one direction between two nodes of a group.
    PartitionOneWay,
    /// kill -9 a node, tear the tail of its active segment, restart it.
    TornTail,
    /// Fill the disk of the node on a tmpfs; free it.
    DiskFull,
    /// Keep a follower down while the others delete segments past its log; restart it.
    RetentionLag,
}

/// Every kind.
pub const ALL: &[Kind] = &[
    Kind::KillLeader,
    Kind::KillNode,
    Kind::PauseLeader,
    Kind::PauseNode,
    Kind::PartitionLeader,
    Kind::PartitionHalves,
    Kind::PartitionOneWay,
    Kind::TornTail,
    Kind::DiskFull,
    Kind::RetentionLag,
];

impl Kind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::KillLeader => "kill-leader",
            Kind::KillNode => "kill-node",
            Kind::PauseLeader => "pause-leader",
            Kind::PauseNode => "pause-node",
            Kind::PartitionLeader => "partition-leader",
            Kind::PartitionHalves => "partition-halves",
            Kind::PartitionOneWay => "partition-oneway",
            Kind::TornTail => "torn-tail",
            Kind::DiskFull => "disk-full",
            Kind::RetentionLag => "retention-lag",
        }
    }

    /// Parse a name.
    pub fn parse(s: &str) -> Option<Kind> {
        ALL.iter().copied().find(|k| k.name() == s)
    }

    /// Needs network namespaces (partitions) or a tmpfs (disk full).
    pub fn needs_netns(self) -> bool {
        matches!(
            self,
            Kind::PartitionLeader | Kind::PartitionHalves | Kind::PartitionOneWay | Kind::DiskFull
        )
    }
}

/// Parse `all` or a comma-separated list of kinds.
pub fn parse_faults(s: &str) -> anyhow::Result<Vec<Kind>> {
    if s == "all" {
        return Ok(ALL.to_vec());
    }
    s.split(',')
        .map(|x| Kind::parse(x.trim()).with_context(|| format!("unknown fault `{x}`")))
        .collect()
}

/// What the nemesis saw besides the faults themselves (liveness, crashes).
#[derive(Debug, Clone, Default, Serialize)]
pub struct NemesisStats {
    /// Faults whose group did not converge within the deadline after healing.
    pub recovery_failures: Vec<String>,
    /// Nodes that exited without being killed by the nemesis.
    pub unexpected_exits: Vec<String>,
    /// Convergence time after healing, ms (max).
    pub converge_max_ms: u64,
    /// Nodes found stuck (Raft stopped or store poisoned) and restarted.
    pub stuck_restarts: Vec<String>,
    /// Faults skipped (no leader found, ...).
    pub skipped: Vec<String>,
}

/// The nemesis.
pub struct Nemesis {
    /// Schedule generator.
    pub rng: Rng,
    /// Stats.
    pub stats: NemesisStats,
    filler_seq: u64,
}

fn phase(h: &History, name: &str) {
    h.record(Event::Phase {
        t: h.now(),
        name: name.into(),
    });
}

fn hold(rng: &mut Rng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.range(lo, hi))
}

/// The schedule's head: `leader_kills` leader kills and one of each other kind, shuffled.
pub fn plan(rng: &mut Rng, kinds: &[Kind], leader_kills: usize) -> Vec<Kind> {
    let mut p = Vec::new();
    if kinds.contains(&Kind::KillLeader) {
        p.extend(std::iter::repeat_n(Kind::KillLeader, leader_kills));
    }
    p.extend(kinds.iter().copied().filter(|k| *k != Kind::KillLeader));
    rng.shuffle(&mut p);
    p
}

/// After the plan: leader kills weighted 3, the rest 1.
pub fn next_random(rng: &mut Rng, kinds: &[Kind]) -> Kind {
    let mut w: Vec<Kind> = Vec::new();
    for k in kinds {
        let n = if *k == Kind::KillLeader { 3 } else { 1 };
        w.extend(std::iter::repeat_n(*k, n));
    }
    *rng.pick(&w)
}

/// Zero the last `n` bytes of the last record of a stopped node's active segment.
pub fn tear_tail(dir: &std::path::Path, rng: &mut Rng) -> anyhow::Result<String> {
    let insp = raftmq::storage::commitlog::inspect(dir)?;
    let Some(last) = insp.entries.last() else {
        bail!("no record to tear");
    };
    let seg = insp.segment_size;
    let base = last.pos - last.pos % seg;
    let len = 48 + last.payload_len as u64;
    let n = rng.range(1, len.min(256) + 1);
    let end = last.pos - base + len;
    let file = dir.join("commitlog").join(format!("{base:020}"));
    let mut f = std::fs::OpenOptions::new().write(true).open(&file)?;
    f.seek(SeekFrom::Start(end - n))?;
    f.write_all(&vec![0u8; n as usize])?;
    f.sync_all()?;
    Ok(format!(
        "zeroed the last {n} of {len} bytes of index {} at {}",
        last.id.index, last.pos
    ))
}

fn fill_disk(dir: &std::path::Path) -> anyhow::Result<u64> {
    let path = dir.join("ballast");
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs(3) into a zeroed struct with a valid C string.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        bail!("statvfs: {}", std::io::Error::last_os_error());
    }
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0xEEu8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(_) => break, // ENOSPC: full
        }
        if written > free + (64 << 20) {
            break;
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

impl Nemesis {
    /// A nemesis for `seed`.
    pub fn new(seed: u64) -> Nemesis {
        Nemesis {
            rng: Rng::new(seed),
            stats: NemesisStats::default(),
            filler_seq: 0,
        }
    }

    fn start(&self, h: &History, kind: Kind, detail: &str) {
        h.record(Event::Fault {
            t: h.now(),
            kind: kind.name().into(),
            detail: detail.into(),
            start: true,
        });
    }

    fn end(&self, h: &History, kind: Kind, detail: &str) {
        h.record(Event::Fault {
            t: h.now(),
            kind: kind.name().into(),
            detail: detail.into(),
            start: false,
        });
    }

    /// Bring everything back: resume, heal the network, restart dead nodes (noting the ones
    /// that died on their own), wait for every group to converge.
    pub async fn heal_all(&mut self, c: &mut Cluster, what: &str, within: Duration) {
        if let Some(n) = c.net.as_mut()
            && let Err(e) = n.heal()
        {
            self.stats
                .recovery_failures
                .push(format!("{what}: heal: {e:#}"));
        }
        let keys: Vec<(String, u64)> = c.nodes.keys().cloned().collect();
        for (g, i) in &keys {
            if c.node(g, *i).paused {
                c.resume(g, *i);
            }
            let had = c.node(g, *i).child.is_some();
            if !c.alive(g, *i) {
                if had {
                    self.stats
                        .unexpected_exits
                        .push(format!("{what}: {g}-{i} exited by itself"));
                }
                if let Err(e) = c.spawn(g, *i) {
                    self.stats
                        .recovery_failures
                        .push(format!("{what}: respawn {g}-{i}: {e:#}"));
                }
            }
        }
        let t = Instant::now();
        for g in c.groups() {
            if let Err(e) = c.converge(&g, within).await {
                self.stats.recovery_failures.push(format!("{what}: {e:#}"));
                // A node whose Raft stopped (a fatal storage error, e.g. after disk full) or
                // whose store is poisoned stays useless until restarted.
                for i in c.ids(&g) {
                    let st = c.status(&g, i).await;
                    if st
                        .as_ref()
                        .is_none_or(|s| s.role == "shutdown" || !s.poisoned.is_empty())
                    {
                        self.stats.stuck_restarts.push(format!(
                            "{what}: {g}-{i} restarted ({:?})",
                            st.map(|s| (s.role, s.poisoned))
                        ));
                        c.kill(&g, i);
                        let _ = c.spawn(&g, i);
                    }
                }
                if let Err(e) = c.converge(&g, within).await {
                    self.stats
                        .recovery_failures
                        .push(format!("{what}: after restarts: {e:#}"));
                }
            }
        }
        self.stats.converge_max_ms = self
            .stats
            .converge_max_ms
            .max(t.elapsed().as_millis() as u64);
    }

    /// Inject one fault, hold it, heal it.
    pub async fn fault(
        &mut self,
        kind: Kind,
        c: &mut Cluster,
        h: &History,
        ctl: &Control,
    ) -> anyhow::Result<()> {
        let groups = c.groups();
        let g = self.rng.pick(&groups).clone();
        let ids = c.ids(&g);
        let leader = c.leader(&g).await;
        let need_leader = matches!(
            kind,
            Kind::KillLeader | Kind::PauseLeader | Kind::PartitionLeader | Kind::RetentionLag
        );
        if need_leader && leader.is_none() {
            self.stats
                .skipped
                .push(format!("{}: no leader in {g}", kind.name()));
            return Ok(());
        }
        let l = leader.unwrap_or(ids[0]);
        let r = *self.rng.pick(&ids);
        match kind {
            Kind::KillLeader | Kind::KillNode => {
                let v = if kind == Kind::KillLeader { l } else { r };
                let d = format!("{g}-{v}");
                self.start(h, kind, &d);
                c.kill(&g, v);
                tokio::time::sleep(hold(&mut self.rng, 500, 2000)).await;
                c.spawn(&g, v)?;
                self.end(h, kind, &d);
            }
            Kind::PauseLeader | Kind::PauseNode => {
                let v = if kind == Kind::PauseLeader { l } else { r };
                let d = format!("{g}-{v}");
                self.start(h, kind, &d);
                c.pause(&g, v);
                tokio::time::sleep(hold(&mut self.rng, 1000, 3000)).await;
                c.resume(&g, v);
                self.end(h, kind, &d);
            }
            Kind::PartitionLeader => {
                let slots: BTreeMap<u64, u32> =
                    ids.iter().map(|i| (*i, c.node(&g, *i).slot)).collect();
                let d = format!("{g}-{l} isolated");
                let net = c.net.as_mut().context("partitions need netns")?;
                self.start(h, kind, &d);
                for (i, s) in &slots {
                    if *i != l {
                        net.block(slots[&l], *s)?;
                        net.block(*s, slots[&l])?;
                    }
                }
                tokio::time::sleep(hold(&mut self.rng, 1500, 3000)).await;
                net.heal()?;
                self.end(h, kind, &d);
            }
            Kind::PartitionHalves => {
                let mut all: Vec<(String, u64, u32)> = c
                    .nodes
                    .values()
                    .map(|n| (n.group.clone(), n.id, n.slot))
                    .collect();
                self.rng.shuffle(&mut all);
                let cut = self.rng.range(1, all.len() as u64) as usize;
                let (a, b) = all.split_at(cut);
                let d = format!(
                    "{:?} | {:?}",
                    a.iter()
                        .map(|x| format!("{}-{}", x.0, x.1))
                        .collect::<Vec<_>>(),
                    b.iter()
                        .map(|x| format!("{}-{}", x.0, x.1))
                        .collect::<Vec<_>>()
                );
                let net = c.net.as_mut().context("partitions need netns")?;
                self.start(h, kind, &d);
                for x in a {
                    for y in b {
                        net.block(x.2, y.2)?;
                        net.block(y.2, x.2)?;
                    }
                }
                tokio::time::sleep(hold(&mut self.rng, 1500, 3000)).await;
                net.heal()?;
                self.end(h, kind, &d);
            }
            Kind::PartitionOneWay => {
                let others: Vec<u64> = ids.iter().copied().filter(|i| *i != l).collect();
                let o = *self.rng.pick(&others);
                // Either the leader cannot reach a follower, or a follower cannot reach it.
                let (from, to) = if self.rng.range(0, 2) == 0 {
                    (l, o)
                } else {
                    (o, l)
                };
                let d = format!("{g}-{from} -/-> {g}-{to}");
                let (fs, ts) = (c.node(&g, from).slot, c.node(&g, to).slot);
                let net = c.net.as_mut().context("partitions need netns")?;
                self.start(h, kind, &d);
                net.block(fs, ts)?;
                tokio::time::sleep(hold(&mut self.rng, 1500, 3000)).await;
                net.heal()?;
                self.end(h, kind, &d);
            }
            Kind::TornTail => {
                // Only with every replica caught up: losing the fsynced tail of one node is
                // outside Raft's fault model unless the others hold it.
                c.converge(&g, Duration::from_secs(30)).await?;
                self.start(h, kind, &format!("{g}-{r}"));
                c.kill(&g, r);
                let d = match tear_tail(c.dir(&g, r), &mut self.rng) {
                    Ok(d) => format!("{g}-{r}: {d}"),
                    Err(e) => format!("{g}-{r}: not torn: {e:#}"),
                };
                tokio::time::sleep(hold(&mut self.rng, 200, 1000)).await;
                c.spawn(&g, r)?;
                self.end(h, kind, &d);
            }
            Kind::DiskFull => {
                let victim = c
                    .nodes
                    .values()
                    .find(|n| n.tmpfs)
                    .map(|n| (n.group.clone(), n.id, n.dir.clone()))
                    .context("no node on a tmpfs")?;
                let d0 = format!("{}-{}", victim.0, victim.1);
                self.start(h, kind, &d0);
                let written = fill_disk(&victim.2)?;
                tokio::time::sleep(hold(&mut self.rng, 2000, 3000)).await;
                let st = c.status(&victim.0, victim.1).await;
                let alive = c.alive(&victim.0, victim.1);
                let _ = std::fs::remove_file(victim.2.join("ballast"));
                let poisoned = st.as_ref().map(|s| s.poisoned.clone()).unwrap_or_default();
                let role = st.as_ref().map(|s| s.role.clone()).unwrap_or_default();
                // A node that stopped accepting writes comes back by a restart.
                if !alive || !poisoned.is_empty() || role == "shutdown" || st.is_none() {
                    c.kill(&victim.0, victim.1);
                    c.spawn(&victim.0, victim.1)?;
                }
                self.end(
                    h,
                    kind,
                    &format!(
                        "{d0}: ballast {written} B; afterwards alive={alive} role={role:?} poisoned={poisoned:?}"
                    ),
                );
            }
            Kind::RetentionLag => {
                let followers: Vec<u64> = ids.iter().copied().filter(|i| *i != l).collect();
                let f = *self.rng.pick(&followers);
                c.converge(&g, Duration::from_secs(30)).await?;
                let f_last = c
                    .status(&g, f)
                    .await
                    .and_then(|s| s.last_log_index)
                    .unwrap_or(0);
                self.start(h, kind, &format!("{g}-{f}"));
                c.kill(&g, f);
                // Let consumers catch up so retention deletes nothing they still need.
                ctl.hold_producers.store(true, Ordering::SeqCst);
                phase(h, "hold-producers");
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut drained = false;
                let mut holding = false;
                while Instant::now() < deadline {
                    // Only once no send is in flight: one acknowledged after the check could
                    // be in what retention deletes before anyone received it.
                    holding = holding || ctl.producers_holding();
                    if holding && workload::all_acked_delivered(&h.events()) {
                        drained = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // Only purge once consumers have everything: otherwise retention would delete
                // messages no one received and the checker could not tell them from lost ones.
                let r = if drained {
                    self.fill_past(c, &g, f, f_last).await
                } else if !holding {
                    Err(anyhow::anyhow!("producers did not hold within 60 s"))
                } else {
                    Err(anyhow::anyhow!("consumers did not drain within 60 s"))
                };
                ctl.hold_producers.store(false, Ordering::SeqCst);
                phase(h, "release-producers");
                let d = match r {
                    Ok(first) => {
                        format!("{g}-{f} (last index {f_last}); others now start at {first}")
                    }
                    Err(e) => format!("{g}-{f}: retention not past its log: {e:#}"),
                };
                c.spawn(&g, f)?;
                self.end(h, kind, &d);
            }
        }
        Ok(())
    }

    /// Write filler through the leader and run retention on the live nodes until their logs
    /// start after `f_last`. Returns the new first index.
    async fn fill_past(
        &mut self,
        c: &Cluster,
        g: &str,
        down: u64,
        f_last: u64,
    ) -> anyhow::Result<u64> {
        let live: Vec<u64> = c.ids(g).into_iter().filter(|i| *i != down).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut min_first = u64::MAX;
            for i in &live {
                let mut a = admin(&c.node(g, *i).addr, Duration::from_secs(10))?;
                if let Ok(r) = a.run_retention(pb::RetentionRequest {}).await {
                    min_first = min_first.min(r.into_inner().first_index);
                }
            }
            if min_first != u64::MAX && min_first > f_last + 1 {
                return Ok(min_first);
            }
            if Instant::now() > deadline {
                bail!("first index {min_first} after 60 s");
            }
            let l = c.leader(g).await.context("no leader")?;
            let mut a = admin(&c.node(g, l).addr, Duration::from_secs(10))?;
            let msgs: Vec<pb::ProduceMessage> = (0..16)
                .map(|_| {
                    self.filler_seq += 1;
                    pb::ProduceMessage {
                        topic: FILLER_TOPIC.into(),
                        queue_id: -1,
                        message_id: format!("filler-{:012}", self.filler_seq),
                        tag: "f".into(),
                        body: vec![0x5Au8; 16 << 10].into(),
                        ..Default::default()
                    }
                })
                .collect();
            let _ = a.produce(pb::ProduceRequest { messages: msgs }).await;
        }
    }
}
