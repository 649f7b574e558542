//! `raftmq dev --tls`: the generated CA and certificate land in `<data-dir>/tls/`, every
//! process serves TLS (the CLIs work with the printed files, `admin` without a client
//! certificate is refused, and the HTTP ports serve HTTPS, printed as `https://`), and a
//! restart reuses the same files.
//!
//! Like `tests/cli_dev.rs` this uses the FIXED dev ports (nameserver 9876, nodes 8081-8083,
//! HTTP 9081-9083), so it fails at once if one is taken; cargo runs test binaries one after
//! another, so the two never overlap. The dev process runs in its own process group, which is
//! killed on drop whatever happens.

mod http_probe;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_raftmq");
const NS: &str = "127.0.0.1:9876";

struct Dev {
    child: Child,
    /// Reaped by `stop`: its pid may belong to someone else by now.
    reaped: bool,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
}

impl Dev {
    fn start(data: &Path) -> Dev {
        let mut child = Command::new(EXE)
            .args(["dev", "--tls", "--data-dir"])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start raftmq dev --tls");
        let out = child.stdout.take().expect("dev stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut dev = Dev {
            child,
            reaped: false,
            lines,
            stdout: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dev.stdout.iter().any(|l| l.contains("cluster is up")) {
            assert!(
                Instant::now() < deadline,
                "no \"cluster is up\" within 60 s: {:?}",
                dev.stdout
            );
            if let Ok(Some(st)) = dev.child.try_wait() {
                panic!("raftmq dev --tls exited ({st}): {:?}", dev.stdout);
            }
            if let Ok(l) = dev.lines.recv_timeout(Duration::from_millis(100)) {
                dev.stdout.push(l);
            }
        }
        // The rest of the banner (paths and hints) follows at once.
        while let Ok(l) = dev.lines.recv_timeout(Duration::from_millis(500)) {
            let done = l.contains("Ctrl-C");
            dev.stdout.push(l);
            if done {
                break;
            }
        }
        dev
    }

    /// SIGINT (Ctrl-C) and wait for a clean exit.
    fn stop(&mut self) {
        // SAFETY: kill(2) on the pid of our child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.reaped = true;
                    assert!(st.success(), "raftmq dev exited with {st}");
                    return;
                }
                _ if Instant::now() > deadline => panic!("raftmq dev did not stop"),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: signal 0 only checks whether the group still has a member (a group id is
        // not reused while it does).
        if !self.reaped || unsafe { libc::kill(-pgid, 0) } == 0 {
            // SAFETY: the process group of the dev process we started (children included).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn raftmq(args: &[&str]) -> (bool, String) {
    let out = Command::new(EXE)
        .args(args)
        .env_remove("RAFTMQ_NAMESERVERS")
        .env_remove("RAFTMQ_TLS_CA")
        .env_remove("RAFTMQ_TLS_CERT")
        .env_remove("RAFTMQ_TLS_KEY")
        .output()
        .expect("run raftmq");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn dev_tls_generates_and_reuses_certificates() {
    for p in [9876, 8081, 8082, 8083, 9081, 9082, 9083] {
        assert!(
            TcpListener::bind(("127.0.0.1", p)).is_ok(),
            "port {p} is taken: raftmq dev needs it"
        );
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut dev = Dev::start(&data);
    let tls = data.canonicalize().expect("data dir").join("tls");
    let (ca, cert, key) = (
        tls.join("ca.pem"),
        tls.join("node.pem"),
        tls.join("node-key.pem"),
    );
    let banner = dev.stdout.join("\n");
    for f in [&ca, &cert, &key] {
        assert!(f.is_file(), "{} missing", f.display());
        assert!(banner.contains(&*f.to_string_lossy()), "{banner}");
    }
    assert!(
        banner.contains("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"),
        "{banner}"
    );
    let (ca_s, cert_s, key_s) = (
        ca.to_str().expect("utf-8"),
        cert.to_str().expect("utf-8"),
        key.to_str().expect("utf-8"),
    );

    let admin = [
        "admin",
        "--nameservers",
        NS,
        "--tls-cert",
        cert_s,
        "--tls-key",
        key_s,
    ];
    let mut create = admin.to_vec();
    create.extend([
        "--tls-ca", ca_s, "topic", "create", "DevTls", "--queues", "2",
    ]);
    let (ok, out) = raftmq(&create);
    assert!(ok, "{out}");
    let (ok, out) = raftmq(&[
        "produce",
        "--nameservers",
        NS,
        "--tls-ca",
        ca_s,
        "--topic",
        "DevTls",
        "one",
        "two",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = raftmq(&[
        "consume",
        "--nameservers",
        NS,
        "--tls-ca",
        ca_s,
        "--topic",
        "DevTls",
        "--group",
        "g",
        "--max",
        "2",
    ]);
    assert!(ok && out.contains("one") && out.contains("two"), "{out}");
    // The CA alone is enough for clients, not for administration.
    let (ok, out) = raftmq(&["admin", "--nameservers", NS, "--tls-ca", ca_s, "cluster"]);
    assert!(!ok && out.contains("client certificate"), "{out}");

    // The HTTP ports serve HTTPS (printed so), with the CA alone; plain HTTP gets no answer.
    for i in 1..=3 {
        let http = format!("127.0.0.1:{}", 9080 + i);
        assert!(
            banner.contains(&format!("https://{http}/metrics")),
            "{banner}"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = http_probe::https_get(&http, "/readyz", &ca);
            if matches!(r, Ok((200, _))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "https://{http}/readyz not 200 within 30 s: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let raw = http_probe::plain_raw(&http, "/readyz").unwrap_or_default();
        assert!(
            !raw.starts_with(b"HTTP/"),
            "plain HTTP on {http} answered: {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    assert!(!banner.contains("http://"), "{banner}");
    dev.stop();

    // A restart keeps the files (clients configured with the CA keep working).
    let before = std::fs::read(&ca).expect("ca.pem");
    let mut dev = Dev::start(&data);
    assert_eq!(std::fs::read(&ca).expect("ca.pem"), before);
    let (ok, out) = raftmq(&[
        "produce",
        "--nameservers",
        NS,
        "--tls-ca",
        ca_s,
        "--topic",
        "DevTls",
        "three",
    ]);
    assert!(ok, "{out}");
    dev.stop();
}
