//! SVG chart of a cluster run: produce throughput vs. in-flight (left) and the latency
//! percentiles of each system's largest in-flight produce run (right), medians over rounds.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::suite::{Meta, Summary};

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn e<E: std::fmt::Debug>(x: E) -> anyhow::Error {
    anyhow!("chart: {x:?}")
}

pub fn draw(path: &Path, s: &[Summary], meta: &Meta) -> Result<()> {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (title, body) = root.split_vertically(40);
    title
        .draw_text(
            &format!(
                "raftmq vs NATS JetStream R3, {} B messages, 3 nodes + client on {} CPUs ({}; git {}; medians of {} rounds)",
                meta.size, meta.cpus, meta.date, meta.git_rev, meta.rounds
            ),
            &("sans-serif", 16).into_font().color(&BLACK),
            (10, 12),
        )
        .map_err(e)?;
    let (left, right) = body.split_horizontally(600);
    let systems: Vec<String> = meta.systems.clone();

    // Left: msgs/s vs in-flight (log2 x).
    let produce: Vec<&Summary> = s.iter().filter(|x| x.workload == "produce").collect();
    let max_rate = produce.iter().map(|x| x.msgs_s.max).fold(1.0f64, f64::max);
    let max_if = produce.iter().map(|x| x.inflight).max().unwrap_or(1).max(2) as f64;
    let mut c = ChartBuilder::on(&left)
        .caption("produce throughput vs. in-flight", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0.8f64..max_if * 1.25).log_scale(), 0f64..max_rate * 1.15)
        .map_err(e)?;
    c.configure_mesh()
        .x_desc("requests in flight")
        .y_desc("msgs/s")
        .draw()
        .map_err(e)?;
    for (i, sys) in systems.iter().enumerate() {
        let col = COLORS[i % COLORS.len()];
        let mut pts: Vec<(f64, f64)> = produce
            .iter()
            .filter(|x| &x.system == sys)
            .map(|x| (x.inflight as f64, x.msgs_s.median))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        if pts.is_empty() {
            continue;
        }
        c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
            .map_err(e)?
            .label(sys.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, col.filled())))
            .map_err(e)?;
        // Spread over rounds.
        c.draw_series(produce.iter().filter(|x| &x.system == sys).map(|x| {
            PathElement::new(
                vec![
                    (x.inflight as f64, x.msgs_s.min),
                    (x.inflight as f64, x.msgs_s.max),
                ],
                col.stroke_width(1),
            )
        }))
        .map_err(e)?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;

    // Right: latency percentiles at the largest in-flight (log y, ms).
    let top = produce.iter().map(|x| x.inflight).max().unwrap_or(1);
    let at_top: Vec<&&Summary> = produce.iter().filter(|x| x.inflight == top).collect();
    let pcts = |x: &Summary| -> Vec<Option<f64>> {
        [x.p50_us, x.p90_us, x.p99_us, x.p999_us, x.max_us]
            .iter()
            .map(|s| s.map(|s| s.median / 1000.0))
            .collect()
    };
    let all: Vec<f64> = at_top.iter().flat_map(|x| pcts(x)).flatten().collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.01);
    let hi = all.iter().copied().fold(0.0f64, f64::max).max(lo * 2.0);
    let labels = ["p50", "p90", "p99", "p99.9", "max"];
    let mut c = ChartBuilder::on(&right)
        .caption(
            format!("produce latency percentiles, in-flight {top}"),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.3f64..4.3f64, (lo / 1.5..hi * 1.5).log_scale())
        .map_err(e)?;
    c.configure_mesh()
        .x_labels(5)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && (0.0..5.0).contains(&i) {
                labels[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_desc("ms (send → ack)")
        .draw()
        .map_err(e)?;
    for (i, sys) in systems.iter().enumerate() {
        let col = COLORS[i % COLORS.len()];
        let Some(x) = at_top.iter().find(|x| &x.system == sys) else {
            continue;
        };
        let pts: Vec<(f64, f64)> = pcts(x)
            .into_iter()
            .enumerate()
            .filter_map(|(j, v)| v.map(|v| (j as f64, v)))
            .collect();
        c.draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
            .map_err(e)?
            .label(sys.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
        c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, col.filled())))
            .map_err(e)?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
