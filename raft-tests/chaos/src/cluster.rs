//! The cluster under test: one nameserver and broker groups of real `raftmq` processes, each
//! node with its own data directory (and, with [`Netns`], its own network namespace). Every
//! process is killed, every namespace deleted and every mount unmounted on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use raftmq::proto::raftmq::admin as pb;
use raftmq::proto::raftmq::admin::admin_client::AdminClient;

use super::net::Netns;

/// Settings of the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The `raftmq` binary.
    pub bin: PathBuf,
    /// Broker groups (1 or 2), 3 nodes each.
    pub groups: u32,
    /// CommitLog segment size (flag value).
    pub segment_size: String,
    /// Segment size in bytes (for offline checks).
    pub segment_bytes: u64,
    /// `--retention-bytes`.
    pub retention_bytes: String,
    /// Size of the tmpfs holding one node's data directory (the disk-full victim).
    pub tmpfs_bytes: u64,
    /// Keep the data directory after the run.
    pub keep: bool,
}

/// One broker node.
pub struct Node {
    /// Broker group.
    pub group: String,
    /// Node id within the group.
    pub id: u64,
    /// Network slot (namespace / address suffix).
    pub slot: u32,
    /// gRPC address.
    pub addr: String,
    /// Data directory.
    pub dir: PathBuf,
    /// The running process.
    pub child: Option<Child>,
    /// SIGSTOPped.
    pub paused: bool,
    /// Data directory is a small tmpfs.
    pub tmpfs: bool,
    peers: String,
}

/// The running cluster.
pub struct Cluster {
    /// Configuration.
    pub cfg: ClusterConfig,
    tmp: Option<tempfile::TempDir>,
    /// Root of every data directory and log.
    pub root: PathBuf,
    /// Namespaces (None: everything on 127.0.0.1, partitions unavailable).
    pub net: Option<Netns>,
    nameserver: Option<Child>,
    /// Nameserver address (the clients' access point).
    pub ns_addr: String,
    /// Nodes by (group, id).
    pub nodes: BTreeMap<(String, u64), Node>,
    mounts: Vec<PathBuf>,
}

fn free_port(host: &str) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind(format!("{host}:0"))?;
    Ok(l.local_addr()?.port())
}

/// An admin client of `addr`, each RPC bounded by `timeout`.
pub fn admin(
    addr: &str,
    timeout: Duration,
) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout);
    Ok(AdminClient::new(ep.connect_lazy())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Children get SIGKILL when the harness dies, however it dies.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Unmount tmpfs mounts of earlier runs whose process is gone.
fn sweep_stale_mounts() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(path)) = (f.next(), f.next()) else {
            continue;
        };
        let Some(rest) = path.split("/raftmq-chaos-").nth(1) else {
            continue;
        };
        if let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok())
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("umount").arg("-l").arg(path).status();
        }
    }
}

impl Cluster {
    /// Start the nameserver and every group; `use_netns` asks for namespaces (falls back to
    /// loopback with a warning if they cannot be made).
    pub fn start(cfg: ClusterConfig, use_netns: bool) -> anyhow::Result<Cluster> {
        sweep_stale_mounts();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("raftmq-chaos-{}-", std::process::id()))
            .tempdir()?;
        let root = tmp.path().to_path_buf();
        let net = if use_netns {
            match Netns::new() {
                Ok(n) => Some(n),
                Err(e) => {
                    eprintln!("chaos: no network namespaces ({e:#}); partitions disabled");
                    None
                }
            }
        } else {
            None
        };
        let host = net
            .as_ref()
            .map(|n| n.host_ip())
            .unwrap_or_else(|| "127.0.0.1".into());
        let ns_addr = format!("{host}:{}", free_port(&host)?);
        let mut c = Cluster {
            cfg: cfg.clone(),
            tmp: Some(tmp),
            root,
            net,
            nameserver: None,
            ns_addr,
            nodes: BTreeMap::new(),
            mounts: Vec::new(),
        };
        let log = c.log_file("nameserver")?;
        let mut ns_cmd = Command::new(&cfg.bin);
        die_with_parent(&mut ns_cmd);
        c.nameserver = Some(
            ns_cmd
                .args([
                    "nameserver",
                    "--listen",
                    &c.ns_addr,
                    "--node-timeout-ms",
                    "3000",
                ])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("spawn nameserver")?,
        );
        for g in 1..=cfg.groups {
            let group = format!("g{g}");
            let mut addrs = Vec::new();
            for id in 1..=3u64 {
                let slot = g * 10 + id as u32;
                let addr = match c.net.as_mut() {
                    Some(n) => {
                        n.add_node(slot)?;
                        format!("{}:7000", n.node_ip(slot))
                    }
                    None => format!("127.0.0.1:{}", free_port("127.0.0.1")?),
                };
                addrs.push((id, slot, addr));
            }
            let peers = addrs
                .iter()
                .map(|(id, _, a)| format!("{id}={a}"))
                .collect::<Vec<_>>()
                .join(",");
            for (id, slot, addr) in addrs {
                let dir = c.root.join(format!("{group}-{id}"));
                std::fs::create_dir_all(&dir)?;
                // The disk-full victim: node 3 of the first group lives on a small tmpfs.
                let tmpfs = g == 1 && id == 3 && c.net.is_some();
                if tmpfs {
                    let st = Command::new("mount")
                        .args([
                            "-t",
                            "tmpfs",
                            "-o",
                            &format!("size={}", cfg.tmpfs_bytes),
                            "tmpfs",
                        ])
                        .arg(&dir)
                        .status()?;
                    if !st.success() {
                        bail!("mount tmpfs on {}", dir.display());
                    }
                    c.mounts.push(dir.clone());
                }
                c.nodes.insert(
                    (group.clone(), id),
                    Node {
                        group: group.clone(),
                        id,
                        slot,
                        addr,
                        dir,
                        child: None,
                        paused: false,
                        tmpfs,
                        peers: peers.clone(),
                    },
                );
            }
        }
        let keys: Vec<(String, u64)> = c.nodes.keys().cloned().collect();
        for k in keys {
            c.spawn(&k.0, k.1)?;
        }
        Ok(c)
    }

    fn log_file(&self, name: &str) -> anyhow::Result<std::fs::File> {
        Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("{name}.log")))?)
    }

    /// Groups.
    pub fn groups(&self) -> Vec<String> {
        (1..=self.cfg.groups).map(|g| format!("g{g}")).collect()
    }

    /// Node ids of a group.
    pub fn ids(&self, group: &str) -> Vec<u64> {
        self.nodes
            .keys()
            .filter(|(g, _)| g == group)
            .map(|(_, i)| *i)
            .collect()
    }

    /// A node.
    pub fn node(&self, group: &str, id: u64) -> &Node {
        &self.nodes[&(group.to_string(), id)]
    }

    /// Address → broker group, for deliveries.
    pub fn group_of_addr(&self) -> BTreeMap<String, String> {
        self.nodes
            .values()
            .map(|n| (n.addr.clone(), n.group.clone()))
            .collect()
    }

    /// Start a node's process.
    pub fn spawn(&mut self, group: &str, id: u64) -> anyhow::Result<()> {
        let log = self.log_file(&format!("{group}-{id}"))?;
        let ns_path = self
            .net
            .as_ref()
            .map(|n| n.ns_path(self.node(group, id).slot));
        let cfg = self.cfg.clone();
        let ns_addr = self.ns_addr.clone();
        let node = self
            .nodes
            .get_mut(&(group.to_string(), id))
            .context("unknown node")?;
        if node.child.is_some() {
            return Ok(());
        }
        let mut cmd = Command::new(&cfg.bin);
        die_with_parent(&mut cmd);
        cmd.args([
            "broker",
            "--group",
            group,
            "--node-id",
            &id.to_string(),
            "--listen",
            &node.addr,
            "--advertise",
            &node.addr,
            "--peers",
            &node.peers,
            "--data-dir",
            node.dir.to_str().context("utf-8 path")?,
            "--segment-size",
            &cfg.segment_size,
            "--retention-bytes",
            &cfg.retention_bytes,
            "--retention-interval-secs",
            "5",
            "--nameservers",
            &ns_addr,
        ])
        .env("RUST_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        if let Some(p) = ns_path {
            let f = std::fs::File::open(&p).with_context(|| format!("open {p}"))?;
            let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
            // SAFETY: setns(2) and close(2) are async-signal-safe; the fd is ours.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let r = cmd.spawn();
            // SAFETY: closing our own copy of the fd.
            unsafe { libc::close(fd) };
            node.child = Some(r.context("spawn broker")?);
        } else {
            node.child = Some(cmd.spawn().context("spawn broker")?);
        }
        node.paused = false;
        Ok(())
    }

    fn signal(&mut self, group: &str, id: u64, sig: i32) {
        if let Some(c) = self
            .nodes
            .get(&(group.to_string(), id))
            .and_then(|n| n.child.as_ref())
        {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGKILL a node and reap it.
    pub fn kill(&mut self, group: &str, id: u64) {
        if let Some(n) = self.nodes.get_mut(&(group.to_string(), id))
            && let Some(mut c) = n.child.take()
        {
            let _ = c.kill();
            let _ = c.wait();
            n.paused = false;
        }
    }

    /// SIGSTOP.
    pub fn pause(&mut self, group: &str, id: u64) {
        self.signal(group, id, libc::SIGSTOP);
        if let Some(n) = self.nodes.get_mut(&(group.to_string(), id)) {
            n.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self, group: &str, id: u64) {
        self.signal(group, id, libc::SIGCONT);
        if let Some(n) = self.nodes.get_mut(&(group.to_string(), id)) {
            n.paused = false;
        }
    }

    /// Whether a node's process is running (reaps it if it exited by itself).
    pub fn alive(&mut self, group: &str, id: u64) -> bool {
        let Some(n) = self.nodes.get_mut(&(group.to_string(), id)) else {
            return false;
        };
        match n.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                n.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGTERM every node and wait (SIGKILL after 20 s).
    pub fn stop_all(&mut self) {
        let keys: Vec<(String, u64)> = self.nodes.keys().cloned().collect();
        for (g, i) in &keys {
            self.resume(g, *i);
            self.signal(g, *i, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (g, i) in &keys {
            while self.alive(g, *i) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.kill(g, *i);
        }
    }

    /// A node's status, if it answers within a second.
    pub async fn status(&self, group: &str, id: u64) -> Option<pb::NodeStatus> {
        let mut c = admin(&self.node(group, id).addr, Duration::from_secs(1)).ok()?;
        c.status(pb::StatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// The agreed leader of `group` among its running nodes, if they agree.
    pub async fn leader(&self, group: &str) -> Option<u64> {
        let mut leader = None;
        for id in self.ids(group) {
            let n = self.node(group, id);
            if n.child.is_none() || n.paused {
                continue;
            }
            let s = self.status(group, id).await?;
            if s.role == "leader" {
                leader = Some(id);
            }
        }
        leader
    }

    /// Wait until every running node of `group` agrees on one running leader and has applied
    /// everything the leader had committed when the wait began. Returns the leader.
    pub async fn converge(&self, group: &str, within: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + within;
        let mut target: Option<u64> = None;
        loop {
            let running: Vec<u64> = self
                .ids(group)
                .into_iter()
                .filter(|i| {
                    let n = self.node(group, *i);
                    n.child.is_some() && !n.paused
                })
                .collect();
            let mut st = Vec::new();
            for id in &running {
                st.push((*id, self.status(group, *id).await));
            }
            let leaders: Vec<(u64, u64)> = st
                .iter()
                .filter_map(|(i, s)| {
                    s.as_ref()
                        .filter(|s| s.role == "leader")
                        .map(|s| (*i, s.term))
                })
                .collect();
            let agree = st.iter().all(|(_, s)| {
                s.as_ref().is_some_and(|s| {
                    leaders.len() == 1
                        && s.leader_id == Some(leaders[0].0)
                        && s.term == leaders[0].1
                })
            });
            if agree {
                let l = leaders[0].0;
                let lc = st
                    .iter()
                    .find(|(i, _)| *i == l)
                    .and_then(|(_, s)| s.as_ref()?.committed)
                    .unwrap_or(0);
                let t = *target.get_or_insert(lc);
                if st
                    .iter()
                    .all(|(_, s)| s.as_ref().and_then(|s| s.applied).unwrap_or(0) >= t)
                {
                    return Ok(l);
                }
            }
            let last = format!(
                "{:?}",
                st.iter()
                    .map(|(i, s)| (
                        *i,
                        s.as_ref().map(|s| (
                            s.role.clone(),
                            s.term,
                            s.leader_id,
                            s.committed,
                            s.applied,
                            s.poisoned.clone()
                        ))
                    ))
                    .collect::<Vec<_>>()
            );
            if Instant::now() > deadline {
                bail!("group {group} did not converge within {within:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Create a topic (and consumer groups) on every group, retrying until accepted.
    pub async fn setup_topic(
        &self,
        topic: &str,
        queues: u32,
        message_type: &str,
    ) -> anyhow::Result<()> {
        for g in self.groups() {
            let l = self.converge(&g, Duration::from_secs(30)).await?;
            let mut c = admin(&self.node(&g, l).addr, Duration::from_secs(10))?;
            c.upsert_topic(pb::TopicConfig {
                name: topic.into(),
                queues,
                perm: "rw".into(),
                message_type: message_type.into(),
            })
            .await?;
        }
        Ok(())
    }

    /// Create a consumer group on every broker group.
    pub async fn setup_group(&self, name: &str, fifo: bool) -> anyhow::Result<()> {
        for g in self.groups() {
            let l = self.converge(&g, Duration::from_secs(30)).await?;
            let mut c = admin(&self.node(&g, l).addr, Duration::from_secs(10))?;
            c.upsert_group(pb::GroupConfig {
                name: name.into(),
                max_delivery_attempts: 1000,
                fifo,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Every message of `topic` as one node serves it: (min, max) per queue and the messages.
    pub async fn read_all(
        &self,
        group: &str,
        id: u64,
        topic: &str,
        queues: u32,
    ) -> anyhow::Result<Vec<(u32, u64, u64, Vec<pb::QueueMessage>)>> {
        let mut c = admin(&self.node(group, id).addr, Duration::from_secs(20))?;
        let mut out = Vec::new();
        for q in 0..queues {
            let mut from = 0;
            let mut msgs = Vec::new();
            let (min, max) = loop {
                let r = c
                    .read_queue(pb::ReadQueueRequest {
                        topic: topic.into(),
                        queue_id: q,
                        offset: from,
                        max: 1000,
                    })
                    .await?
                    .into_inner();
                if from < r.min_offset {
                    from = r.min_offset;
                    continue;
                }
                let Some(last) = r.messages.last() else {
                    break (r.min_offset, r.max_offset);
                };
                from = last.offset + 1;
                msgs.extend(r.messages);
            };
            out.push((q, min, max, msgs));
        }
        Ok(out)
    }

    /// Data directory of a node.
    pub fn dir(&self, group: &str, id: u64) -> &Path {
        &self.node(group, id).dir
    }

    /// Keep the run directory (prints where).
    pub fn keep(&mut self) -> PathBuf {
        if let Some(t) = self.tmp.take() {
            let p = t.keep();
            eprintln!("chaos: kept {}", p.display());
            return p;
        }
        self.root.clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let keys: Vec<(String, u64)> = self.nodes.keys().cloned().collect();
        for (g, i) in keys {
            self.kill(&g, i);
        }
        if let Some(mut c) = self.nameserver.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for m in self.mounts.drain(..) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if self.cfg.keep {
            self.keep();
        }
        self.net.take();
    }
}
