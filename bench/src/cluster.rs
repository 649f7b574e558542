//! The servers under test, as child processes on 127.0.0.1: a raftmq nameserver + 3-node
//! broker group, or a 3-node NATS JetStream cluster. Every process is killed on drop; waits
//! poll a condition with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a benchmark).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One server process.
pub struct Proc {
    /// Label in the report (`ns`, `n1`, ...).
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Processes killed (SIGTERM, then SIGKILL after 5 s) on drop.
#[derive(Default)]
pub struct Procs(pub Vec<Proc>);

impl Procs {
    fn check_alive(&mut self, logs: &Path) -> Result<()> {
        for p in &mut self.0 {
            if let Ok(Some(st)) = p.child.try_wait() {
                bail!(
                    "{} exited ({st}); see the logs in {}",
                    p.name,
                    logs.display()
                );
            }
        }
        Ok(())
    }

    /// Wait until `addr` accepts TCP connections, failing early if a process exits (its log
    /// is under `logs`) and after `within`.
    pub fn wait_listening(&mut self, addr: &str, logs: &Path, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while std::net::TcpStream::connect(addr).is_err() {
            self.check_alive(logs)?;
            if Instant::now() > deadline {
                bail!(
                    "nothing listens on {addr} after {within:?}; see the logs in {}",
                    logs.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        for p in &self.0 {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in &mut self.0 {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.0.clear();
    }

    /// `(name, pid)` of every process.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.0.iter().map(|p| (p.name.clone(), p.pid())).collect()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn spawn(exe: &Path, log: &Path, args: &[String], env: &[(&str, &str)]) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Servers die with the benchmark even when it is killed (Drop does not run then). The
    // death signal follows the spawning *thread*: spawn only from a thread that lives as long
    // as the run (the main thread; `block_on` runs its future there).
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", exe.display()))
}

/// A raftmq nameserver + 3-node broker group.
pub struct Raftmq {
    pub exe: PathBuf,
    pub nameserver: String,
    pub procs: Procs,
}

impl Raftmq {
    /// Start in `dir` (data and logs) with the given flush mode; returns once the nameserver
    /// knows the group's leader.
    pub fn start(exe: &Path, dir: &Path, flush: &str) -> Result<Raftmq> {
        let ns = format!("127.0.0.1:{}", free_port()?);
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
        let peers = (1..=3)
            .map(|i| format!("{i}=127.0.0.1:{}", ports[i - 1]))
            .collect::<Vec<_>>()
            .join(",");
        let env = [("RUST_LOG", "warn")];
        let mut procs = Procs::default();
        procs.0.push(Proc {
            name: "ns".into(),
            child: spawn(
                exe,
                &dir.join("nameserver.log"),
                &["nameserver".into(), "--listen".into(), ns.clone()],
                &env,
            )?,
        });
        for i in 1..=3usize {
            let addr = format!("127.0.0.1:{}", ports[i - 1]);
            let args = vec![
                "broker".to_string(),
                "--group".into(),
                "bench".into(),
                "--node-id".into(),
                i.to_string(),
                "--listen".into(),
                addr.clone(),
                "--advertise".into(),
                addr,
                "--peers".into(),
                peers.clone(),
                "--data-dir".into(),
                dir.join(format!("node{i}")).display().to_string(),
                "--segment-size".into(),
                "1G".into(),
                "--flush".into(),
                flush.into(),
                "--nameservers".into(),
                ns.clone(),
            ];
            procs.0.push(Proc {
                name: format!("n{i}"),
                child: spawn(exe, &dir.join(format!("node{i}.log")), &args, &env)?,
            });
        }
        let mut c = Raftmq {
            exe: exe.to_path_buf(),
            nameserver: ns,
            procs,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            c.procs.check_alive(dir)?;
            if c.leader_addr().is_ok_and(|l| !l.is_empty()) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "no raftmq leader after 60 s; see the logs in {}",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(c)
    }

    /// The group leader's address as the nameserver reports it.
    pub fn leader_addr(&self) -> Result<String> {
        leader_addr(&self.exe, &self.nameserver)
    }
}

/// `raftmq admin --json cluster` → the first group's leader address.
pub fn leader_addr(exe: &Path, ns: &str) -> Result<String> {
    let out = Command::new(exe)
        .args([
            "admin",
            "--nameservers",
            ns,
            "--json",
            "--timeout-ms",
            "2000",
            "cluster",
        ])
        .output()
        .context("running raftmq admin cluster")?;
    if !out.status.success() {
        bail!("admin cluster: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["groups"][0]["leader_addr"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// `raftmq admin topic create`, retried for up to 30 s.
pub fn create_topic(exe: &Path, ns: &str, topic: &str, queues: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(exe)
            .args([
                "admin",
                "--nameservers",
                ns,
                "topic",
                "create",
                topic,
                "--queues",
                &queues.to_string(),
            ])
            .output()
            .context("running raftmq admin topic create")?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "topic create {topic}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A 3-node NATS JetStream cluster (configs as in perf-peers.md §2).
pub struct Nats {
    pub urls: String,
    pub procs: Procs,
}

impl Nats {
    /// Start in `dir`; `sync_always` adds `sync_interval: always` to the jetstream block.
    /// Returns once every server listens; the JetStream meta leader may still be electing
    /// (stream creation retries).
    pub fn start(exe: &Path, dir: &Path, sync_always: bool) -> Result<Nats> {
        let ports: Vec<[u16; 3]> = (0..3)
            .map(|_| Ok([free_port()?, free_port()?, free_port()?]))
            .collect::<Result<_>>()?;
        let routes = ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{}", p[2]))
            .collect::<Vec<_>>()
            .join(", ");
        let mut procs = Procs::default();
        for (i, [client, http, cluster]) in ports.iter().enumerate() {
            let n = i + 1;
            let store = dir.join(format!("data/n{n}"));
            std::fs::create_dir_all(&store)?;
            let conf = format!(
                "server_name: n{n}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 1GB\n  max_file_store: 20GB\n{}}}\n\
                 cluster {{\n  name: bench\n  listen: 127.0.0.1:{cluster}\n  routes: [ {routes} ]\n}}\n",
                store.display(),
                if sync_always {
                    "  sync_interval: always\n"
                } else {
                    ""
                }
            );
            let path = dir.join(format!("n{n}.conf"));
            std::fs::write(&path, conf)?;
            procs.0.push(Proc {
                name: format!("n{n}"),
                child: spawn(
                    exe,
                    &dir.join(format!("n{n}.log")),
                    &["-c".into(), path.display().to_string()],
                    &[],
                )?,
            });
        }
        for [client, ..] in &ports {
            procs.wait_listening(&format!("127.0.0.1:{client}"), dir, Duration::from_secs(30))?;
        }
        Ok(Nats {
            urls: ports
                .iter()
                .map(|p| format!("nats://127.0.0.1:{}", p[0]))
                .collect::<Vec<_>>()
                .join(","),
            procs,
        })
    }
}

/// utime + stime of process `pid`, in seconds (`/proc/PID/stat`).
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may contain spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) as f64 / hz)
}
