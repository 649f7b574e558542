//! The restart report: Markdown rendering of the runs (the JSON is their serde form).

use super::{JsonOut, RunOut, TARGET_MS};

pub(super) fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn ms(v: f64) -> String {
    format!("{v:.0}")
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), ms)
}

fn mmm(v: (f64, f64, f64)) -> String {
    format!("{} ({}–{})", ms(v.0), ms(v.1), ms(v.2))
}

pub(super) fn run_markdown(r: &RunOut) -> String {
    use std::fmt::Write;
    let m = &r.meta;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## raftmq-bench restart ({}){}\n",
        m.date,
        m.label
            .as_deref()
            .map_or_else(String::new, |l| format!(" — {l}"))
    );
    let _ = writeln!(
        s,
        "- git revision `{}`, binary `{}`\n- machine: {} CPUs, {} RAM, kernel {}, shared with other work; load average at start {} (per restart in the table below)\n- data: `{}` ({}), segment size {}, body {} KiB, {} messages per Produce request, {} in flight\n- {} restarts per kind; before each stop {} s of writes at {} MiB/s (one {} KiB message per request, one request in flight) so that the node stops with a checkpoint lag as under load (the state machine checkpoints at most every 10 s); node down {} ms before it is started again; page cache kept (a process restart) except for the kinds marked cold (page cache dropped before the start: as after a machine reboot){}",
        m.git_rev,
        m.raftmq_bin,
        m.cpus,
        m.mem_total,
        m.kernel,
        m.load_average_start,
        m.dir,
        m.filesystem,
        m.segment_size,
        m.body_kib,
        m.batch,
        m.inflight,
        m.rounds,
        m.preload_secs,
        m.preload_mib_s,
        m.body_kib,
        m.down_ms,
        if m.reused_data {
            "; data reused from an earlier run (`--reuse`)"
        } else {
            ""
        }
    );
    for n in &m.notes {
        let _ = writeln!(s, "- note: {n}");
    }
    if let Some(f) = &r.fill {
        let _ = writeln!(
            s,
            "- fill (brokers with `{}`, then every node restarted with the broker defaults — `--flush sync`, heartbeat 50 ms, election timeout 150 ms — for the measurements): {} messages, {} of bodies in {:.1} s ({:.0} MiB/s of bodies, 3 replicas on one disk)",
            f.broker_flags.join(" "),
            f.messages,
            gib(f.body_bytes),
            f.secs,
            f.mib_s
        );
        for (id, log, alloc, files, last) in &f.nodes {
            let _ = writeln!(
                s,
                "  - node {id}: CommitLog {} (write position − oldest position), {} allocated in {files} segment files, last index {last}",
                gib(*log),
                gib(*alloc)
            );
        }
    }
    let _ = writeln!(
        s,
        "\n| kind | restarts | ready ms median (min–max) | gRPC answering ms | leader known ms | storage open ms | state machine open ms | Raft::new ms (re-apply) | entries re-applied | serving ms | max < {} ms |",
        ms(TARGET_MS)
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for x in &r.summaries {
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            x.kind.name(),
            if x.cold { " (cold)" } else { "" },
            x.restarts,
            mmm(x.ready_ms),
            mmm(x.grpc_ms),
            mmm(x.leader_known_ms),
            opt_ms(x.storage_ms),
            opt_ms(x.state_machine_ms),
            opt_ms(x.raft_ms),
            x.reapply_entries
                .map_or_else(|| "n/a".into(), |n| format!("{n:.0}")),
            opt_ms(x.serving_ms),
            if x.meets_target { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(
        s,
        "\nPhase columns are medians. Storage, state machine, Raft::new and serving come from the node's own log (ms since `Node::start` began; serving includes the phases before it); gRPC, leader known and ready are measured by the benchmark from the spawn (process start included), polling every 20 ms.\n"
    );
    let _ = writeln!(
        s,
        "| kind | round | node | load avg | written before stop | CommitLog (log / allocated, segments) | stop ms | election ms | storage ms (records scanned) | SM open ms | checkpoint → committed (re-applied) | Raft::new ms | serving ms | gRPC ms | leader known ms | ready ms | /readyz 503 answers seen (first at ms) |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---|---|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---|"
    );
    for x in &r.samples {
        let p = &x.phases;
        let idx = |v: Option<u64>| v.map_or_else(|| "none".into(), |i| i.to_string());
        let _ = writeln!(
            s,
            "| {}{} | {} | {} | {} | {} | {} / {}, {} | {} | {} | {} ({}) | {} | {} → {} ({}) | {} | {} | {} | {} | {} | {} |",
            x.kind.name(),
            if x.cold { " (cold)" } else { "" },
            x.round + 1,
            x.node,
            x.load_average,
            x.preloaded.map_or_else(
                || "—".into(),
                |(n, b, t)| format!(
                    "{n} msgs, {:.0} MiB in {t:.0} s",
                    b as f64 / (1 << 20) as f64
                )
            ),
            gib(x.log_bytes),
            gib(x.disk_bytes),
            x.segments,
            ms(x.stop_ms),
            opt_ms(x.election_ms),
            opt_ms(p.storage_ms),
            p.records_scanned
                .map_or_else(|| "n/a".into(), |n| n.to_string()),
            opt_ms(p.state_machine_ms),
            idx(p.checkpoint_index),
            idx(p.committed_index),
            p.reapply_entries
                .map_or_else(|| "n/a".into(), |n| n.to_string()),
            opt_ms(p.raft_ms),
            opt_ms(p.serving_ms),
            ms(x.grpc_ms),
            ms(x.leader_known_ms),
            ms(x.ready_ms),
            x.not_ready
                .iter()
                .map(|(at, c)| format!("{c} ({at:.0})"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    s
}

pub(super) fn markdown(out: &JsonOut) -> String {
    let mut s = String::new();
    s.push_str(
        "# Restart of a node with a large CommitLog (issue #16: `/readyz` 200 in < 5 s)\n\n\
         Measured by `raftmq-bench restart` (bench/README.md). Figures are what was measured on this \
         shared 2-core machine; other work ran at the same time (see the load averages).\n\n",
    );
    for r in &out.runs {
        s.push_str(&run_markdown(r));
        s.push('\n');
    }
    s
}
