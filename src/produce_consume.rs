//! `raftmq produce` and `raftmq consume`: send and receive messages from the command line
//! through raftmq's own client (`raftmq::client`), i.e. over the RocketMQ 5 gRPC protocol the
//! official SDKs use.
//!
//! ```text
//! raftmq produce (--nameservers A[,B] | --endpoint A) --topic T [--tag TAG] [--key K]...
//!                [--property k=v]... [--message-group G] [--json] [-q] [--concurrency C]
//!                [MESSAGE... | --count N [--size BYTES]]
//! raftmq consume (--nameservers A[,B] | --endpoint A) --topic T --group G [--filter 'A||B']
//!                [--max N] [--wait-secs S] [--invisible-secs I] [--no-ack] [--json]
//! ```
//!
//! `produce` sends each MESSAGE argument as one body, or with none each non-empty line of
//! stdin, or with `--count N` a generated load of N bodies of `--size` bytes (each starting
//! with its number), with progress and a summary (sent, failed, msgs/s, MB/s) on stderr. For
//! every message stored it prints `<message_id> <queue offset>`, or with `--json`
//! `{"index", "message_id", "offset"}` (`index` = the message's position in the input, from
//! 0), in input order. Failed sends are reported on stderr; the exit status is non-zero if any
//! send failed.
//!
//! `consume` receives as consumer group G, prints each message as
//! `<message_id> <tag or -> <body>` (body decoded as UTF-8 lossily, with `\n` and `\r`
//! written as the two characters `\n` / `\r` so one message is one line), or with `--json`
//! `{"message_id", "topic", "tag", "keys", "properties", "message_group", "body", "queue",
//! "offset", "delivery_attempt"}`, and acks it after printing (unless `--no-ack`). It stops
//! after `--max` messages, or when a receive that long-polled `--wait-secs` found nothing (and
//! when the topic lives in several broker groups, a quick sweep of the others found nothing
//! too). Exit status 0, unless an ack failed or receiving kept failing for 30 s.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use raftmq::client::{ClientError, OutMessage, Producer, Received, SimpleConsumer};
use raftmq::proto::apache::rocketmq::v2;

/// Where the client connects: the nameservers, or one node.
#[derive(clap::Args, Debug)]
pub struct Access {
    /// Nameservers, `HOST:PORT[,HOST:PORT]` (any broker node works too).
    #[arg(
        long,
        env = "RAFTMQ_NAMESERVERS",
        value_delimiter = ',',
        required_unless_present = "endpoint"
    )]
    pub nameservers: Vec<String>,
    /// One access point `HOST:PORT` (a broker node or a nameserver); overrides --nameservers.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// TLS (`--tls-ca`, `--tls-cert`, `--tls-key`).
    #[command(flatten)]
    pub tls: raftmq::cli_tls::TlsArgs,
}

impl Access {
    fn tls(&self) -> anyhow::Result<Option<raftmq::tls::TlsSettings>> {
        Ok(self.tls.load()?)
    }

    fn access_point(&self) -> anyhow::Result<String> {
        let list: Vec<String> = match &self.endpoint {
            Some(e) => vec![e.trim().to_string()],
            None => self
                .nameservers
                .iter()
                .map(|s| s.trim().to_string())
                .collect(),
        };
        let list: Vec<String> = list.into_iter().filter(|s| !s.is_empty()).collect();
        anyhow::ensure!(
            !list.is_empty(),
            "no access point: give --nameservers or --endpoint"
        );
        Ok(list.join(","))
    }
}

/// Flags of `raftmq produce`.
#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    access: Access,
    /// Topic to send to.
    #[arg(long)]
    topic: String,
    /// Tag of every message.
    #[arg(long)]
    tag: Option<String>,
    /// A key of every message (repeat for several).
    #[arg(long = "key")]
    keys: Vec<String>,
    /// A user property `KEY=VALUE` of every message (repeat for several).
    #[arg(long = "property", value_parser = parse_property)]
    properties: Vec<(String, String)>,
    /// Message group (FIFO topics); messages are then sent one at a time, in order.
    #[arg(long)]
    message_group: Option<String>,
    /// Print one JSON object per sent message: {"index", "message_id", "offset"}.
    #[arg(long)]
    json: bool,
    /// Do not print a line per sent message (failures and the summary still go to stderr).
    #[arg(short, long)]
    quiet: bool,
    /// Send a generated load of this many messages instead of MESSAGE arguments or stdin.
    #[arg(long, conflicts_with = "messages")]
    count: Option<u64>,
    /// Body size of the generated load, in bytes (`64`, `4K`, `1M`).
    #[arg(long, requires = "count", default_value = "128", value_parser = parse_body_size)]
    size: usize,
    /// Sends in flight at once (default: 16 with --count, else 1). Output stays in input order.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: Option<u64>,
    /// Message bodies; without any (and without --count), each non-empty stdin line is one.
    messages: Vec<String>,
}

/// Flags of `raftmq consume`.
#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    access: Access,
    /// Topic to receive from.
    #[arg(long)]
    topic: String,
    /// Consumer group.
    #[arg(long)]
    group: String,
    /// Tag filter: `*` (all) or `TAG||TAG`.
    #[arg(long, default_value = "*")]
    filter: String,
    /// Stop after this many messages.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max: Option<u64>,
    /// Long-polling time of a receive; stop when one waited this long and found nothing.
    #[arg(long, default_value_t = 3)]
    wait_secs: u64,
    /// How long a received message stays invisible to the group before redelivery (when not
    /// acked).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    invisible_secs: u64,
    /// Do not ack: the messages come back after --invisible-secs.
    #[arg(long)]
    no_ack: bool,
    /// Print one JSON object per message.
    #[arg(long)]
    json: bool,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn parse_body_size(s: &str) -> Result<usize, String> {
    let n = crate::parse_size(s)?;
    if n == 0 {
        return Err("the body size must be at least 1 byte".into());
    }
    usize::try_from(n).map_err(|_| format!("`{s}` is too large"))
}

/// Body `i` of a generated load: its number, then filler, exactly `size` bytes.
fn load_body(i: u64, size: usize) -> Bytes {
    let mut b = format!("{i:010} ").into_bytes();
    b.truncate(size);
    let mut c = 0u8;
    while b.len() < size {
        b.push(b'a' + c);
        c = (c + 1) % 26;
    }
    Bytes::from(b)
}

/// Stdin, one body per non-empty line (`\n` or `\r\n` stripped); bytes need not be UTF-8.
fn stdin_bodies() -> BoxStream<'static, std::io::Result<Bytes>> {
    use tokio::io::AsyncBufReadExt;
    let reader = tokio::io::BufReader::new(tokio::io::stdin());
    stream::unfold(Some(reader), |r| async move {
        let mut r = r?;
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line).await {
                Ok(0) => return None,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if line.is_empty() {
                        continue;
                    }
                    return Some((Ok(Bytes::from(line)), Some(r)));
                }
                Err(e) => return Some((Err(e), None)),
            }
        }
    })
    .boxed()
}

/// Counters shared with the progress printer.
#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
}

/// Prints the load's progress on stderr until `stop` fires: rewriting one line on a
/// terminal, else one line a second.
async fn show_progress(
    p: Arc<Progress>,
    total: u64,
    start: Instant,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let tty = std::io::stderr().is_terminal();
    let every = Duration::from_millis(if tty { 200 } else { 1000 });
    let mut drawn = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = &mut stop => break,
        }
        let sent = p.sent.load(Ordering::Relaxed);
        let failed = p.failed.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let pct = if total == 0 {
            100.0
        } else {
            (sent + failed) as f64 * 100.0 / total as f64
        };
        let line = format!(
            "sent {sent}/{total} ({pct:.0}%), failed {failed}, {:.0} msgs/s",
            sent as f64 / secs
        );
        if tty {
            eprint!("\r{line}\x1b[K");
            drawn = true;
        } else {
            eprintln!("{line}");
        }
    }
    if drawn {
        eprint!("\r\x1b[K");
    }
}

/// How many failures are reported one by one before only counting.
const SHOWN_FAILURES: u64 = 20;

/// `raftmq produce`.
pub fn produce(a: ProduceArgs) -> anyhow::Result<ExitCode> {
    let ap = a.access.access_point()?;
    if a.count.is_none() && a.messages.iter().any(|m| m.is_empty()) {
        anyhow::bail!("empty MESSAGE: a message body must not be empty");
    }
    let concurrency = match (a.concurrency, &a.message_group) {
        (Some(c), Some(_)) if c > 1 => anyhow::bail!(
            "--concurrency {c} with --message-group would reorder the group; messages of a \
             group are sent one at a time"
        ),
        (_, Some(_)) => 1,
        (Some(c), None) => c as usize,
        (None, None) if a.count.is_some() => 16,
        (None, None) => 1,
    };
    let producer = Producer::new(&ap)?.with_tls(a.access.tls()?);
    let template = OutMessage {
        topic: a.topic.clone(),
        tag: a.tag.clone(),
        keys: a.keys.clone(),
        properties: a.properties.iter().cloned().collect::<HashMap<_, _>>(),
        message_group: a.message_group.clone(),
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let bodies: BoxStream<'static, std::io::Result<Bytes>> = match a.count {
            Some(n) => {
                let size = a.size;
                stream::iter((0..n).map(move |i| Ok(load_body(i, size)))).boxed()
            }
            None if !a.messages.is_empty() => {
                let v: Vec<std::io::Result<Bytes>> =
                    a.messages.into_iter().map(|m| Ok(Bytes::from(m))).collect();
                stream::iter(v).boxed()
            }
            None => stdin_bodies(),
        };
        let progress = Arc::new(Progress::default());
        let start = Instant::now();
        let (stop_printer, stop) = tokio::sync::oneshot::channel();
        let printer = a
            .count
            .map(|n| tokio::spawn(show_progress(progress.clone(), n, start, stop)));
        let producer = &producer;
        let template = &template;
        let mut results = bodies
            .enumerate()
            .map(|(i, body)| async move {
                match body {
                    Ok(body) => {
                        let len = body.len() as u64;
                        let m = OutMessage {
                            body,
                            ..template.clone()
                        };
                        (i, Ok((producer.send(m).await, len)))
                    }
                    Err(e) => (i, Err(e)),
                }
            })
            .buffered(concurrency);
        let mut stdout = std::io::stdout();
        let mut input_error = None;
        while let Some((i, r)) = results.next().await {
            let (r, len) = match r {
                Ok(x) => x,
                Err(e) => {
                    input_error = Some(e);
                    break;
                }
            };
            match r {
                Ok(receipt) => {
                    progress.sent.fetch_add(1, Ordering::Relaxed);
                    progress.bytes.fetch_add(len, Ordering::Relaxed);
                    if !a.quiet {
                        let line = if a.json {
                            serde_json::json!({
                                "index": i,
                                "message_id": receipt.message_id,
                                "offset": receipt.offset,
                            })
                            .to_string()
                        } else {
                            format!("{} {}", receipt.message_id, receipt.offset)
                        };
                        writeln!(stdout, "{line}").context("writing to stdout")?;
                    }
                }
                Err(e) => {
                    let f = progress.failed.fetch_add(1, Ordering::Relaxed) + 1;
                    if f <= SHOWN_FAILURES {
                        eprintln!("message {i}: send failed: {e}");
                    } else if f == SHOWN_FAILURES + 1 {
                        eprintln!("(further failures are only counted)");
                    }
                }
            }
        }
        drop(results);
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let _ = stop_printer.send(());
        if let Some(p) = printer {
            let _ = p.await;
        }
        stdout.flush().context("writing to stdout")?;
        let sent = progress.sent.load(Ordering::Relaxed);
        let failed = progress.failed.load(Ordering::Relaxed);
        if a.count.is_some() {
            let bytes = progress.bytes.load(Ordering::Relaxed) as f64;
            eprintln!(
                "sent {sent}, failed {failed} in {secs:.2} s: {:.0} msgs/s, {:.2} MB/s",
                sent as f64 / secs,
                bytes / 1e6 / secs
            );
        } else if failed > 0 {
            eprintln!("{failed} of {} sends failed", sent + failed);
        }
        if let Some(e) = input_error {
            return Err(anyhow::Error::new(e).context("reading stdin"));
        }
        Ok(if failed > 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}

/// Worth another receive: the node or the group's leader is unavailable for now.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Rpc { .. } => true,
        ClientError::Status { code, .. } => {
            *code == v2::Code::HaNotAvailable as i32
                || *code == v2::Code::InternalServerError as i32
                || *code == v2::Code::ProxyTimeout as i32
        }
        _ => false,
    }
}

/// Number of route entries of `topic` when its queues live in more than one broker group
/// (a route lists each queue once per member, `broker.name = <group>@<member>`), else 0. A
/// receive on one entry pops from one group only, so after an empty long poll the other
/// entries are swept (without waiting) before concluding the topic is drained.
async fn sweep_len(
    access_point: &str,
    topic: &str,
    tls: Option<&raftmq::tls::TlsSettings>,
) -> usize {
    use v2::messaging_service_client::MessagingServiceClient;
    for ap in access_point.split(',') {
        let Ok(ep) = raftmq::tls::endpoint(ap, tls) else {
            continue;
        };
        let ep = ep
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        let Ok(ch) = ep.connect().await else { continue };
        let req = v2::QueryRouteRequest {
            topic: Some(v2::Resource {
                resource_namespace: String::new(),
                name: topic.to_string(),
            }),
            endpoints: None,
        };
        let Ok(r) = MessagingServiceClient::new(ch).query_route(req).await else {
            continue;
        };
        let queues = r.into_inner().message_queues;
        let mut groups: Vec<&str> = queues
            .iter()
            .filter_map(|q| q.broker.as_ref())
            .map(|b| b.name.split('@').next().unwrap_or(""))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        return if groups.len() > 1 { queues.len() } else { 0 };
    }
    // Unknown: the receives will report what is wrong.
    0
}

/// `\n` and `\r` as two characters each, so a body stays on one line.
fn one_line(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn consumed_line(m: &Received, json: bool) -> String {
    if json {
        serde_json::json!({
            "message_id": m.message_id,
            "topic": m.topic,
            "tag": m.tag,
            "keys": m.keys,
            "properties": m.properties,
            "message_group": m.message_group,
            "body": String::from_utf8_lossy(&m.body),
            "queue": m.queue,
            "offset": m.offset,
            "delivery_attempt": m.delivery_attempt,
        })
        .to_string()
    } else {
        let tag = match m.tag.as_deref() {
            Some(t) if !t.is_empty() => t,
            _ => "-",
        };
        format!("{} {tag} {}", m.message_id, one_line(&m.body))
    }
}

/// Ack `m`, retrying while its node or the group's leader is unavailable.
async fn ack(consumer: &SimpleConsumer, m: &Received) -> Result<(), (String, ClientError)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match consumer.ack(m).await {
            Ok(()) => return Ok(()),
            Err(e) if transient(&e) && attempt < 5 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err((m.message_id.clone(), e)),
        }
    }
}

/// How long receives may keep failing before `consume` gives up.
const RECEIVE_RETRY_FOR: Duration = Duration::from_secs(30);
/// Largest batch asked for in one receive.
const RECEIVE_BATCH: u64 = 32;

/// `raftmq consume`.
pub fn consume(a: ConsumeArgs) -> anyhow::Result<ExitCode> {
    let ap = a.access.access_point()?;
    let tls = a.access.tls()?;
    let consumer = SimpleConsumer::new(&ap, &a.group, &a.topic, &a.filter)?.with_tls(tls.clone());
    let invisible = Duration::from_secs(a.invisible_secs);
    let wait = Duration::from_secs(a.wait_secs);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let sweep = sweep_len(&ap, &a.topic, tls.as_ref()).await;
        let mut stdout = std::io::stdout();
        let mut received = 0u64;
        let mut ack_failed = 0u64;
        let mut empty_in_row = 0usize;
        let mut failing_since: Option<Instant> = None;
        loop {
            let want = match a.max {
                Some(max) if received >= max => break,
                Some(max) => (max - received).min(RECEIVE_BATCH),
                None => RECEIVE_BATCH,
            };
            // Long-poll first; while sweeping the other groups' entries, do not wait.
            let poll = if empty_in_row == 0 {
                wait
            } else {
                Duration::ZERO
            };
            let batch = match consumer.receive(want as i32, invisible, poll).await {
                Ok(b) => {
                    failing_since = None;
                    b
                }
                Err(e) if transient(&e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > RECEIVE_RETRY_FOR {
                        anyhow::bail!(
                            "receive kept failing for {} s: {e}",
                            RECEIVE_RETRY_FOR.as_secs()
                        );
                    }
                    eprintln!("receive failed (retrying): {e}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                Err(e) => return Err(anyhow::Error::new(e).context("receive")),
            };
            if batch.is_empty() {
                empty_in_row += 1;
                if empty_in_row > sweep {
                    break;
                }
                continue;
            }
            empty_in_row = 0;
            if batch.len() as u64 > want {
                // Not expected (the broker honours the batch size): the extra messages stay
                // unacked and come back after the invisible time.
                eprintln!(
                    "received {} messages for a batch of {want}; leaving the extra ones",
                    batch.len()
                );
            }
            let batch: Vec<Received> = batch.into_iter().take(want as usize).collect();
            for m in &batch {
                writeln!(stdout, "{}", consumed_line(m, a.json)).context("writing to stdout")?;
            }
            stdout.flush().context("writing to stdout")?;
            received += batch.len() as u64;
            if !a.no_ack {
                // After printing (a crash in between redelivers rather than loses); the acks
                // of a batch run together so that the broker commits them together.
                let consumer = &consumer;
                let acks = batch.iter().map(|m| async move { ack(consumer, m).await });
                for r in futures::future::join_all(acks).await {
                    if let Err((id, e)) = r {
                        eprintln!("ack of {id} failed: {e}");
                        ack_failed += 1;
                    }
                }
            }
        }
        stdout.flush().context("writing to stdout")?;
        if ack_failed > 0 {
            eprintln!(
                "received {received} messages; {ack_failed} acks failed (they will be redelivered)"
            );
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_bodies_are_numbered_and_sized() {
        assert_eq!(&load_body(7, 14)[..], b"0000000007 abc");
        assert_eq!(load_body(7, 3).len(), 3);
        assert_eq!(load_body(123, 4096).len(), 4096);
        assert!(load_body(123, 4096).starts_with(b"0000000123 "));
    }

    #[test]
    fn properties_parse() {
        assert_eq!(
            parse_property("a=b=c"),
            Ok(("a".to_string(), "b=c".to_string()))
        );
        assert_eq!(parse_property("k="), Ok(("k".to_string(), String::new())));
        assert!(parse_property("=v").is_err());
        assert!(parse_property("novalue").is_err());
    }

    #[test]
    fn bodies_stay_on_one_line() {
        assert_eq!(one_line(b"a\nb\r\nc"), "a\\nb\\r\\nc");
        assert_eq!(one_line(&[0xff, b'x']), "\u{fffd}x");
    }
}
