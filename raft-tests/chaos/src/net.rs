//! Network topology. With root and `ip` available each broker node runs in its own network
//! namespace, joined to a per-run bridge in the root namespace (where the nameserver and the
//! clients live). Partitions are made per direction by pointing a node's neighbour entry for a
//! peer at a MAC address nobody has: packets from that node to that peer are silently dropped
//! (established connections included), like a lost link, and nothing else changes.
//! (`tc` classifiers and iptables are not available here.)
//!
//! Names carry the pid (`rmq<pid>…`), so parallel runs cannot collide; everything is deleted
//! on drop, and namespaces left by a run that died are swept at start.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, bail};

/// A MAC address no interface has (locally administered).
const BLACKHOLE_MAC: &str = "02:00:5e:00:de:ad";

fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("run ip {args:?}"))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Per-run namespaces and bridge.
pub struct Netns {
    pid: u32,
    /// 10.A.B.0/24 for this run.
    prefix: String,
    bridge: String,
    /// Node slots created: slot → namespace name.
    slots: Vec<(u32, String)>,
    /// Directed blocks in force: (from slot, to slot).
    blocked: BTreeSet<(u32, u32)>,
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Delete namespaces and bridges of earlier runs whose process is gone.
fn sweep_stale() {
    if let Ok(out) = ip(&["netns", "list"]) {
        for line in out.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(rest) = name.strip_prefix("rmq")
                && let Some(pid) = rest.split('n').next().and_then(|p| p.parse::<u32>().ok())
                && !pid_alive(pid)
            {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(out) = ip(&["-o", "link", "show", "type", "bridge"]) {
        for line in out.lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            if let Some(pid) = name
                .strip_prefix("rmq")
                .and_then(|r| r.strip_suffix("br"))
                .and_then(|p| p.parse::<u32>().ok())
                && !pid_alive(pid)
            {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

impl Netns {
    /// Set up the bridge (or fail: no root, no `ip`, no namespaces).
    pub fn new() -> anyhow::Result<Netns> {
        sweep_stale();
        let pid = std::process::id();
        // A /24 in 10.64.0.0/10 picked from the pid; skip ones already routed here.
        let routes = ip(&["route", "show"]).unwrap_or_default();
        let mut k = pid;
        let prefix = loop {
            let p = format!("10.{}.{}", 64 + (k >> 8) % 64, k % 256);
            if !routes.contains(&format!("{p}.0/24")) {
                break p;
            }
            k = k.wrapping_add(7919);
        };
        let bridge = format!("rmq{pid}br");
        let n = Netns {
            pid,
            prefix,
            bridge,
            slots: Vec::new(),
            blocked: BTreeSet::new(),
        };
        ip(&["link", "add", &n.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", n.prefix),
            "dev",
            &n.bridge,
        ])?;
        ip(&["link", "set", &n.bridge, "up"])?;
        Ok(n)
    }

    /// The root namespace's address on the bridge (nameserver, clients).
    pub fn host_ip(&self) -> String {
        format!("{}.254", self.prefix)
    }

    /// The address of node slot `slot` (1..=200).
    pub fn node_ip(&self, slot: u32) -> String {
        format!("{}.{slot}", self.prefix)
    }

    /// The namespace name of a slot.
    pub fn ns_name(&self, slot: u32) -> String {
        format!("rmq{}n{slot}", self.pid)
    }

    /// Create the namespace of `slot` with its veth on the bridge.
    pub fn add_node(&mut self, slot: u32) -> anyhow::Result<()> {
        let ns = self.ns_name(slot);
        let host_end = format!("rmq{}h{slot}", self.pid);
        ip(&["netns", "add", &ns])?;
        self.slots.push((slot, ns.clone()));
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &host_end, "master", &self.bridge])?;
        ip(&["link", "set", &host_end, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", self.node_ip(slot)),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// The path of a slot's namespace (for `setns`).
    pub fn ns_path(&self, slot: u32) -> String {
        format!("/run/netns/{}", self.ns_name(slot))
    }

    /// Drop every packet from `from` to `to` (one direction).
    pub fn block(&mut self, from: u32, to: u32) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.ns_name(from),
            "neigh",
            "replace",
            &self.node_ip(to),
            "lladdr",
            BLACKHOLE_MAC,
            "nud",
            "permanent",
            "dev",
            "eth0",
        ])?;
        self.blocked.insert((from, to));
        Ok(())
    }

    /// Lift every block.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        let blocked: Vec<(u32, u32)> = self.blocked.iter().copied().collect();
        for (from, to) in blocked {
            ip(&[
                "-n",
                &self.ns_name(from),
                "neigh",
                "del",
                &self.node_ip(to),
                "dev",
                "eth0",
            ])?;
            self.blocked.remove(&(from, to));
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for (_, ns) in &self.slots {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
