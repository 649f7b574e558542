//! TLS end to end: a nameserver and a 3-node group with TLS (real processes, certificates
//! generated in the temp dir); the CLIs work with the CA, and the cluster refuses outsiders:
//! no client certificate on Raft/Admin → UNAUTHENTICATED, a certificate of another CA → no
//! handshake, plaintext → no answer. And a broker's HTTP port with TLS: HTTPS for a client
//! that trusts the CA and presents no certificate, nothing for plain HTTP or a client that
//! does not trust the CA.

mod http_probe;
mod ns_harness;

use std::process::{Command, Stdio};
use std::time::Duration;

use http_probe::{https_get, plain_raw};
use ns_harness::{Env, Proc, free_port, wait_until};
use raftmq::proto::raftmq::admin::StatusRequest;
use raftmq::proto::raftmq::admin::admin_client::AdminClient;
use raftmq::proto::raftmq::raft_service_client::RaftServiceClient;
use raftmq::proto::raftmq::{Vote, VoteRequest};
use raftmq::tls::{TlsSettings, dev_certs};
use serde_json::Value;
use std::error::Error as _;

fn raftmq(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args(args)
        .env_remove("RAFTMQ_NAMESERVERS")
        .env_remove("RAFTMQ_TLS_CA")
        .env_remove("RAFTMQ_TLS_CERT")
        .env_remove("RAFTMQ_TLS_KEY")
        .output()
        .expect("run raftmq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_cluster_serves_clients_and_refuses_outsiders() {
    let mut env = Env::new();
    let certs =
        dev_certs(&env.tmp.path().join("tls"), &["127.0.0.1", "localhost"]).expect("certificates");
    let other =
        dev_certs(&env.tmp.path().join("other"), &["127.0.0.1", "localhost"]).expect("other CA");
    let (cert, key, ca) = (
        certs.cert.to_str().expect("utf-8"),
        certs.key.to_str().expect("utf-8"),
        certs.ca.to_str().expect("utf-8"),
    );
    let flags = ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca];
    let ns = env.start_nameserver_with(1500, &flags);
    env.start_group_with("g1", 3, &flags);

    // The group registers (mutual TLS broker → nameserver) and elects a leader (mutual TLS
    // between the peers); `admin cluster` needs the client certificate too.
    let admin = |args: &[&str]| {
        let mut all = vec!["admin", "--nameservers", &ns];
        all.extend_from_slice(&flags);
        all.push("--json");
        all.extend_from_slice(args);
        raftmq(&all)
    };
    wait_until(Duration::from_secs(30), "TLS cluster settles", || {
        let (ok, out, _) = admin(&["cluster"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        let nodes = v["groups"][0]["nodes"].as_array()?;
        (ok && nodes.len() == 3
            && nodes.iter().all(|n| n["reachable"] == true)
            && nodes.iter().filter(|n| n["role"] == "leader").count() == 1)
            .then_some(())
    });
    let (ok, out, err) = admin(&["topic", "create", "Secure", "--queues", "2"]);
    assert!(ok, "{out}{err}\n{}", env.logs());

    // Produce and consume through the nameserver with only the CA (like an SDK client).
    let bodies: Vec<String> = (0..10).map(|i| format!("secret-{i}")).collect();
    let mut args = vec!["produce", "--nameservers", &ns, "--tls-ca", ca];
    args.extend(["--topic", "Secure", "--quiet"]);
    args.extend(bodies.iter().map(String::as_str));
    let (ok, out, err) = raftmq(&args);
    assert!(ok, "{out}{err}\n{}", env.logs());
    let (ok, out, err) = raftmq(&[
        "consume",
        "--nameservers",
        &ns,
        "--tls-ca",
        ca,
        "--topic",
        "Secure",
        "--group",
        "cg",
        "--max",
        "10",
        "--json",
    ]);
    assert!(ok, "{out}{err}\n{}", env.logs());
    for b in &bodies {
        assert!(out.contains(b.as_str()), "{b} not consumed: {out}{err}");
    }

    // Outsiders.
    let node = env.addr("g1", 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ca_only = TlsSettings::client(&certs.ca, None).expect("CA");
        let vote = || VoteRequest {
            vote: Some(Vote {
                term: 1_000_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let timeout = Duration::from_secs(5);
        let channel = |tls: Option<&TlsSettings>| {
            raftmq::tls::endpoint(&node, tls)
                .expect("endpoint")
                .connect_timeout(timeout)
                .timeout(timeout)
                .connect_lazy()
        };

        // TLS without a client certificate: the handshake succeeds (SDK clients have none)
        // but Raft and Admin answer UNAUTHENTICATED.
        let st = RaftServiceClient::new(channel(Some(&ca_only)))
            .vote(vote())
            .await
            .expect_err("vote without a client certificate");
        assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
        assert!(st.message().contains("client certificate"), "{st:?}");
        let st = AdminClient::new(channel(Some(&ca_only)))
            .status(StatusRequest {})
            .await
            .expect_err("admin without a client certificate");
        assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");

        // The member certificate works on the same port.
        let full = TlsSettings::client(&certs.ca, Some((&certs.cert, &certs.key))).expect("TLS");
        AdminClient::new(channel(Some(&full)))
            .status(StatusRequest {})
            .await
            .expect("admin with the cluster certificate");

        // A certificate of another CA (trusting the right CA for the server): the server
        // refuses the handshake, so the RPC fails at the transport without reaching the
        // service (with TLS 1.3 the client learns of it from the server's alert or the closed
        // connection, after its own half of the handshake: never an answer from the service).
        let stranger =
            TlsSettings::client(&certs.ca, Some((&other.cert, &other.key))).expect("TLS");
        for _ in 0..2 {
            let st = RaftServiceClient::new(channel(Some(&stranger)))
                .vote(vote())
                .await
                .expect_err("vote with a foreign certificate");
            assert!(
                matches!(
                    st.code(),
                    tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                ),
                "{st:?}"
            );
            // The error comes from the connection (a TLS alert or the closed connection),
            // not from a gRPC answer.
            assert!(st.source().is_some(), "{st:?}");
        }

        // Plaintext to the TLS port.
        let st = AdminClient::new(channel(None))
            .status(StatusRequest {})
            .await
            .expect_err("plaintext to a TLS port");
        assert_ne!(st.code(), tonic::Code::Ok, "{st:?}");
        let st = RaftServiceClient::new(channel(None))
            .vote(vote())
            .await
            .expect_err("plaintext vote");
        assert!(
            st.code() == tonic::Code::Unavailable || st.code() == tonic::Code::Unknown,
            "{st:?}"
        );
    });
    // Every process is killed when `env` drops.
}

#[test]
fn http_port_serves_https_with_the_cluster_certificate() {
    let mut env = Env::new();
    let certs =
        dev_certs(&env.tmp.path().join("tls"), &["127.0.0.1", "localhost"]).expect("certificates");
    let other =
        dev_certs(&env.tmp.path().join("other"), &["127.0.0.1", "localhost"]).expect("other CA");
    // One node, its own group: it elects itself, so /readyz turns 200.
    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(env.tmp.path().join("https-1.log")).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args([
            "broker",
            "--group",
            "h",
            "--node-id",
            "1",
            "--listen",
            &grpc,
        ])
        .args(["--peers", &format!("1={grpc}"), "--segment-size", "16M"])
        .arg("--data-dir")
        .arg(env.tmp.path().join("https-1"))
        .args(["--http-listen", &http])
        .arg("--tls-cert")
        .arg(&certs.cert)
        .arg("--tls-key")
        .arg(&certs.key)
        .arg("--tls-ca")
        .arg(&certs.ca)
        .env_remove("RAFTMQ_NAMESERVERS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn raftmq broker");
    // Killed when `env` drops.
    env.nodes.insert(
        ("h".into(), 1),
        Proc {
            addr: grpc,
            child: Some(child),
        },
    );

    // HTTPS, trusting the CA, no client certificate (a probe, a Prometheus scrape).
    let get = |path: &str| https_get(&http, path, &certs.ca);
    let body = wait_until(
        Duration::from_secs(30),
        "https /healthz answers 200",
        || {
            get("/healthz")
                .ok()
                .and_then(|(c, b)| (c == 200).then_some(b))
        },
    );
    assert_eq!(body.trim(), "ok");
    wait_until(Duration::from_secs(30), "https /readyz answers 200", || {
        get("/readyz")
            .ok()
            .and_then(|(c, _)| (c == 200).then_some(()))
    });
    let (code, body) = get("/metrics").expect("https /metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("raftmq_raft_term{group=\"h\"}"), "{body}");
    let (code, body) = get("/raftz").expect("https /raftz");
    assert_eq!(code, 200, "{body}");
    let raftz: Value = serde_json::from_str(&body).expect("raftz JSON");
    assert_eq!(raftz["role"], "leader", "{body}");

    // Plain HTTP gets no HTTP answer at all (the bytes are not a TLS ClientHello).
    let raw = plain_raw(&http, "/healthz").unwrap_or_default();
    assert!(
        !raw.starts_with(b"HTTP/"),
        "plain HTTP answered: {:?}",
        String::from_utf8_lossy(&raw)
    );

    // A client trusting another CA refuses the server's certificate.
    let err = https_get(&http, "/healthz", &other.ca).expect_err("a foreign CA");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // A connection that never starts its handshake holds up no one; the port still serves
    // after the failed handshakes above.
    let idle = std::net::TcpStream::connect(&http).expect("idle connection");
    let (code, _) = get("/healthz").expect("https /healthz beside an idle connection");
    assert_eq!(code, 200);
    drop(idle);
}
