//! `raftmq-bench codec`: what the consume path's internal commands cost to encode (leader,
//! once) and decode (every replica, on apply) as JSON — their encoding before the binary
//! layout of `raftmq::raft::state_machine::codec` — and in that binary layout, in one run.
//!
//! Rounds alternate JSON and binary; each prints the median of the rounds in ns per command
//! and the encoded size. CPU time on a shared machine varies: compare the two columns of the
//! same run, not runs.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Result, bail};
use raftmq::raft::consume::Pop;
use raftmq::raft::state_machine::InternalCommand;
use raftmq::raft::state_machine::codec;

#[derive(clap::Args)]
pub struct CodecArgs {
    /// Commands encoded and decoded per case and round.
    #[arg(long, default_value_t = 200_000)]
    pub iterations: u32,
    /// Rounds (JSON and binary alternate within each).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Messages per receive (Pop) and per AckMessage request (AckMany).
    #[arg(long, default_value_t = 32)]
    pub batch: u32,
}

fn cases(batch: u32) -> Vec<(&'static str, InternalCommand)> {
    let group = "GID_bench_consumers".to_string();
    let topic = "bench-topic-orders".to_string();
    vec![
        (
            "Pop (a receive)",
            InternalCommand::Pop(Pop {
                group: group.clone(),
                topic: topic.clone(),
                queue: 3,
                deliver: (0..batch).map(|i| (1_000_000 + u64::from(i), 1)).collect(),
                skip_to: 1_000_000,
                invisible_until_ms: 1_796_684_967_000,
                seq: 123_456,
            }),
        ),
        (
            "Ack (one message)",
            InternalCommand::Ack {
                group: group.clone(),
                topic: topic.clone(),
                queue: 3,
                offset: 1_000_017,
                seq: 123_456,
            },
        ),
        (
            "AckMany (one AckMessage request)",
            InternalCommand::AckMany {
                group,
                topic,
                items: (0..batch)
                    .map(|i| (i % 8, 1_000_000 + u64::from(i), 123_456 + u64::from(i)))
                    .collect(),
            },
        ),
    ]
}

/// ns per (encode, decode) of `cmd` with `json` or the binary codec.
fn time(cmd: &InternalCommand, json: bool, n: u32) -> Result<(f64, f64, usize)> {
    // Record kind and bytes as the log stores them (the kind only matters for binary).
    let (kind, encoded) = if json {
        (0, serde_json::to_vec(cmd)?)
    } else {
        codec::encode(cmd).map_err(anyhow::Error::msg)?
    };
    let back: InternalCommand = if json {
        serde_json::from_slice(&encoded)?
    } else {
        codec::decode(kind, &encoded).map_err(anyhow::Error::msg)?
    };
    if &back != cmd {
        bail!("round trip changed the command");
    }
    let t = Instant::now();
    for _ in 0..n {
        let bytes = if json {
            serde_json::to_vec(black_box(cmd))?
        } else {
            codec::encode(black_box(cmd)).map_err(anyhow::Error::msg)?.1
        };
        black_box(bytes);
    }
    let enc = t.elapsed().as_nanos() as f64 / f64::from(n);
    let t = Instant::now();
    for _ in 0..n {
        let c: InternalCommand = if json {
            serde_json::from_slice(black_box(&encoded))?
        } else {
            codec::decode(kind, black_box(&encoded)).map_err(anyhow::Error::msg)?
        };
        black_box(c);
    }
    let dec = t.elapsed().as_nanos() as f64 / f64::from(n);
    Ok((enc, dec, encoded.len()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: CodecArgs) -> Result<()> {
    if a.iterations == 0 || a.rounds == 0 {
        bail!("--iterations and --rounds must be at least 1");
    }
    println!(
        "## raftmq-bench codec: consume-path internal commands, JSON vs binary ({} per case and round, {} rounds, medians)\n",
        a.iterations, a.rounds
    );
    println!(
        "| command | JSON bytes | binary bytes | JSON encode ns | binary encode ns | JSON decode ns | binary decode ns | decode JSON / binary |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, cmd) in cases(a.batch) {
        let (mut je, mut jd, mut be, mut bd) = (vec![], vec![], vec![], vec![]);
        let (mut jb, mut bb) = (0, 0);
        for _ in 0..a.rounds {
            let (e, d, b) = time(&cmd, true, a.iterations)?;
            je.push(e);
            jd.push(d);
            jb = b;
            let (e, d, b) = time(&cmd, false, a.iterations)?;
            be.push(e);
            bd.push(d);
            bb = b;
        }
        let (je, jd, be, bd) = (median(je), median(jd), median(be), median(bd));
        println!(
            "| {name} | {jb} | {bb} | {je:.0} | {be:.0} | {jd:.0} | {bd:.0} | {:.1}× |",
            jd / bd
        );
    }
    Ok(())
}
