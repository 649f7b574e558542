//! Request spans: every log line a RocketMQ client's request causes carries the RPC and the
//! client's `x-mq-client-id` (here with `--log-format json`, where spans are fields).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftmq::proto::apache::rocketmq::v2;
use raftmq::proto::apache::rocketmq::v2::messaging_service_client::MessagingServiceClient;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_of_a_request_name_the_client() {
    let t = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = t.path().join("node.log");
    let _node = Kill(
        Command::new(env!("CARGO_BIN_EXE_raftmq"))
            .args([
                "--log-format",
                "json",
                "broker",
                "--group",
                "spans",
                "--node-id",
                "1",
            ])
            .args(["--listen", &addr, "--peers", &format!("1={addr}")])
            .arg("--data-dir")
            .arg(t.path().join("data"))
            .args(["--segment-size", "64K"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn broker"),
    );
    wait_for("the broker to serve", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("serving on"))
    });

    let mut c = MessagingServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let settings = v2::TelemetryCommand {
        status: None,
        command: Some(v2::telemetry_command::Command::Settings(v2::Settings {
            client_type: Some(v2::ClientType::Producer as i32),
            pub_sub: Some(v2::settings::PubSub::Publishing(v2::Publishing::default())),
            ..Default::default()
        })),
    };
    let mut req = tonic::Request::new(futures::stream::iter(vec![settings]));
    req.metadata_mut().insert(
        "x-mq-client-id",
        "span-test@1@0@abc".parse().expect("header"),
    );
    req.metadata_mut()
        .insert("x-mq-request-id", "req-42".parse().expect("header"));
    let mut replies = c.telemetry(req).await.expect("telemetry").into_inner();
    let first = replies.message().await.expect("stream").expect("a reply");
    assert!(matches!(
        first.command,
        Some(v2::telemetry_command::Command::Settings(_))
    ));

    // The "client settings" line carries the request span with the client id.
    let mut line = None;
    wait_for("the client's log line", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        line = text
            .lines()
            .find(|l| l.contains("client settings"))
            .map(str::to_string);
        line.is_some()
    });
    let line = line.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
    let span = &v["span"];
    assert_eq!(span["name"], "request", "{line}");
    assert_eq!(span["client_id"], "span-test@1@0@abc", "{line}");
    assert_eq!(span["request_id"], "req-42", "{line}");
    assert_eq!(span["rpc"], "Telemetry", "{line}");
}
