//! The checker's summary table, as printed after a run.

use super::Analysis;

/// The summary table.
pub fn table(a: &Analysis) -> String {
    let mut s = String::new();
    let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<40} {v}\n"));
    let faults: Vec<String> = a.faults.iter().map(|(k, v)| format!("{k}={v}")).collect();
    row(
        "faults injected",
        format!(
            "{} ({})",
            a.faults.values().sum::<usize>(),
            faults.join(", ")
        ),
    );
    row(
        "messages sent / acked / indeterminate",
        format!("{} / {} / {}", a.sent, a.acked, a.indeterminate),
    );
    row("send calls (retries included)", a.send_calls.to_string());
    row(
        "indeterminate sends stored anyway",
        a.indeterminate_stored.to_string(),
    );
    row(
        "delivered (group, msg) / deliveries",
        format!("{} / {}", a.delivered, a.deliveries),
    );
    row("LOST", a.lost_count.to_string());
    row(
        "expired by retention undelivered",
        a.expired_undelivered.to_string(),
    );
    row("unseen by a subscribed group", a.unseen_count.to_string());
    row(
        "stored duplicates (explained by retry)",
        format!(
            "{} ({})",
            a.stored_duplicates, a.stored_duplicates_explained_by_retry
        ),
    );
    row(
        "redelivered (group, msg) / acked then redelivered",
        format!("{} / {}", a.redelivered, a.acked_redelivered),
    );
    row("ORDER VIOLATIONS", a.order_violation_count.to_string());
    row(
        "INCONSISTENT OFFSETS",
        a.inconsistent_offset_count.to_string(),
    );
    row(
        "RTO p50 / p99 / max (ms)",
        format!("{} / {} / {}", a.rto_p50_ms, a.rto_p99_ms, a.rto_max_ms),
    );
    let by_kind: Vec<String> = a
        .rto_max_by_kind_ms
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    row("RTO max by fault kind (ms)", by_kind.join(", "));
    row("faults with no later ack", a.rto_unrecovered.to_string());
    for (client, c) in &a.clients {
        row(
            &format!("{client} sends: calls / failed / longest gap"),
            format!(
                "{} / {} / {} ms ({} producers)",
                c.send_calls, c.failed_sends, c.longest_gap_ms, c.producers
            ),
        );
        let by_kind: Vec<String> = c
            .by_fault_kind
            .iter()
            .map(|(k, f)| format!("{k}={}/{}/{}", f.failed_sends, f.gap_max_ms, f.gap_p99_ms))
            .collect();
        row(
            &format!("{client} failed / gap max / p99 (ms) by fault"),
            by_kind.join(", "),
        );
    }
    for g in &a.liveness {
        row(
            &format!("progress {}", g.consumer_group),
            format!(
                "{} of {} received, longest stall {} ms ({}..{} ms), {} stalls > {} ms",
                g.expected - g.missing_at_end,
                g.expected,
                g.longest_stall_ms,
                g.longest_stall_at.0,
                g.longest_stall_at.1,
                g.stalls_over_bound,
                a.liveness_stall_bound_ms
            ),
        );
    }
    row("LIVENESS FAILURES", a.liveness_failure_count.to_string());
    for (name, v) in [
        ("lost", &a.lost),
        ("unseen", &a.unseen),
        ("order", &a.order_violations),
        ("offsets", &a.inconsistent_offsets),
        ("liveness", &a.liveness_failures),
    ] {
        for x in v {
            s.push_str(&format!("  ! {name}: {x}\n"));
        }
    }
    s
}
