//! Plots (SVG and PNG) with every variant side by side: latency CDF, convergence over time,
//! bytes per node. Pure Rust: plotters' SVG and bitmap backends, a font compiled in, PNG
//! encoded with the `png` crate.

use std::path::Path;
use std::sync::Once;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::metrics::Metrics;

const SIZE: (u32, u32) = (960, 600);
const FONT: &str = "sans-serif";

fn color(variant: &str) -> RGBColor {
    match variant {
        "gossip" => RGBColor(31, 119, 180),
        _ => RGBColor(214, 39, 40),
    }
}

fn init_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font ships inside the binary (epaint_default_fonts): no system font needed.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT);
    });
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Writes `<dir>/<name>.svg` and `<dir>/<name>.png`.
macro_rules! render {
    ($dir:expr, $name:expr, $f:ident, $runs:expr, $marks:expr) => {{
        let svg = $dir.join(format!("{}.svg", $name));
        {
            let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            $f(&root, $runs, $marks)?;
            root.present().map_err(err)?;
        }
        let mut buf = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
            root.fill(&WHITE).map_err(err)?;
            $f(&root, $runs, $marks)?;
            root.present().map_err(err)?;
        }
        write_png(&$dir.join(format!("{}.png", $name)), &buf)?;
    }};
}

fn write_png(path: &Path, rgb: &[u8]) -> anyhow::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, SIZE.0, SIZE.1);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(rgb)?;
    Ok(())
}

/// All three plots; `marks` are (time ms, label) of heals for the convergence plot.
pub fn write_all(dir: &Path, runs: &[(&str, &Metrics)], marks: &[(f64, String)]) -> anyhow::Result<()> {
    init_font();
    render!(dir, "latency_cdf", latency_cdf, runs, marks);
    render!(dir, "convergence", convergence, runs, marks);
    render!(dir, "bytes_per_node", bytes_per_node, runs, marks);
    Ok(())
}

fn latency_cdf<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[(&str, &Metrics)],
    _: &[(f64, String)],
) -> anyhow::Result<()> {
    let max = runs
        .iter()
        .flat_map(|(_, m)| m.deliveries.iter().map(|d| d.latency_ms))
        .fold(10.0f64, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption("Delivery latency to each member node (CDF)", (FONT, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0f64..max * 1.2).log_scale(), 0.0f64..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of deliveries")
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    for (name, m) in runs {
        let mut v: Vec<f64> = m.deliveries.iter().map(|d| d.latency_ms.max(1.0)).collect();
        v.sort_by(f64::total_cmp);
        // Over expected pairs, so an undelivered tail keeps the curve below 1.
        let total = m.summary.expected_pairs.max(1) as f64;
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(i, &x)| (x, (i + 1) as f64 / total))
            .collect();
        let c = color(name);
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(format!(
                "{name}: p50 {:.0} ms, p99 {:.0} ms, delivered {:.2}%",
                m.summary.latency_ms.p50,
                m.summary.latency_ms.p99,
                m.summary.delivery_ratio * 100.0
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    legend(&mut chart)
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

fn convergence<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[(&str, &Metrics)],
    marks: &[(f64, String)],
) -> anyhow::Result<()> {
    let (top, bottom) = root.split_vertically(SIZE.1 * 3 / 5);
    let t_max = runs
        .iter()
        .flat_map(|(_, m)| m.progress.iter().map(|p| p.t_ms / 1000.0))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&top)
        .caption("Convergence over time", (FONT, 24))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0f64..1.05)
        .map_err(err)?;
    chart
        .configure_mesh()
        .y_desc("delivered / due")
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    for (t, _) in marks {
        let x = t / 1000.0;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x, 0.0), (x, 1.05)],
                6,
                4,
                RGBColor(255, 127, 14).stroke_width(2),
            ))
            .map_err(err)?;
    }
    for (name, m) in runs {
        let c = color(name);
        let pts: Vec<(f64, f64)> = m
            .progress
            .iter()
            .map(|p| (p.t_ms / 1000.0, p.delivered_fraction))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(format!("{name} (dashed: heals, final heal)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    legend(&mut chart)?;

    let s_max = runs
        .iter()
        .flat_map(|(_, m)| m.progress.iter().map(|p| p.max_distinct_states as f64))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..s_max + 0.5)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time since the workload started (s)")
        .y_desc("distinct states / room")
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    for (name, m) in runs {
        let c = color(name);
        let pts: Vec<(f64, f64)> = m
            .progress
            .iter()
            .map(|p| (p.t_ms / 1000.0, p.mean_distinct_states))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(format!("{name}: mean over rooms"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    legend(&mut chart)
}

fn bytes_per_node<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[(&str, &Metrics)],
    _: &[(f64, String)],
) -> anyhow::Result<()> {
    let n = runs.iter().map(|(_, m)| m.nodes.len()).max().unwrap_or(1);
    let y_max = runs
        .iter()
        .flat_map(|(_, m)| {
            m.nodes
                .iter()
                .map(|r| r.bytes_sent_per_msg.max(r.bytes_received_per_msg))
        })
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Bytes on the wire per message sent, per node (nodes ranked)",
            (FONT, 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..n as f64, 0.0..y_max * 1.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("node rank (most bytes first)")
        .y_desc("bytes / message")
        .label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    for (name, m) in runs {
        let c = color(name);
        for (sent, style) in [(true, c.stroke_width(2)), (false, c.mix(0.5).stroke_width(2))] {
            let mut v: Vec<f64> = m
                .nodes
                .iter()
                .map(|r| {
                    if sent {
                        r.bytes_sent_per_msg
                    } else {
                        r.bytes_received_per_msg
                    }
                })
                .collect();
            v.sort_by(|a, b| b.total_cmp(a));
            let pts: Vec<(f64, f64)> = v
                .into_iter()
                .enumerate()
                .map(|(i, y)| (i as f64 + 0.5, y))
                .collect();
            let mean = pts.iter().map(|p| p.1).sum::<f64>() / pts.len().max(1) as f64;
            chart
                .draw_series(LineSeries::new(pts.clone(), style).point_size(if n <= 50 { 3 } else { 0 }))
                .map_err(err)?
                .label(format!(
                    "{name} {}: mean {mean:.0} B",
                    if sent { "sent" } else { "received" }
                ))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}
