//! Writing metrics out: a CSV per table and one JSON with everything, per variant; a
//! summary (JSON and a Markdown table) over all variants.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};

use crate::metrics::{Metrics, Summary};

/// Rows of flat structs as CSV (columns in the order serde_json gives: by name).
pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> anyhow::Result<()> {
    let mut out = String::new();
    let mut header: Option<Vec<String>> = None;
    for row in rows {
        let Value::Object(map) = serde_json::to_value(row)? else {
            anyhow::bail!("CSV rows must be structs");
        };
        let cols = header.get_or_insert_with(|| {
            let cols: Vec<String> = map.keys().cloned().collect();
            out.push_str(&cols.join(","));
            out.push('\n');
            cols
        });
        let cells: Vec<String> = cols
            .iter()
            .map(|c| cell(map.get(c).unwrap_or(&Value::Null)))
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) if s.contains([',', '"', '\n']) => format!("\"{}\"", s.replace('"', "\"\"")),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

pub fn write_variant(dir: &Path, m: &Metrics) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_csv(&dir.join("deliveries.csv"), &m.deliveries)?;
    write_csv(&dir.join("messages.csv"), &m.messages)?;
    write_csv(&dir.join("nodes.csv"), &m.nodes)?;
    write_csv(&dir.join("heals.csv"), &m.heals)?;
    write_csv(&dir.join("progress.csv"), &m.progress)?;
    let all = json!({
        "summary": m.summary,
        "deliveries": m.deliveries,
        "messages": m.messages,
        "nodes": m.nodes,
        "heals": m.heals,
        "progress": m.progress,
    });
    std::fs::write(dir.join("metrics.json"), serde_json::to_vec_pretty(&all)?)?;
    Ok(())
}

fn opt(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.0}"))
}

/// The comparison table BENCHMARKS.md quotes.
pub fn markdown(name: &str, seed: u64, fingerprint: &str, summaries: &[&Summary]) -> String {
    let mut s = format!("### {name} (seed {seed}, schedule {fingerprint})\n\n");
    s.push_str(
        "| variant | nodes | links | msgs | delivered | p50 ms | p99 ms | max ms | dup/delivery | \
         B sent/msg/member | B recv/msg/member | heal conv. ms | final conv. ms | RSS/node MiB | \
         CPU ms/node/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for m in summaries {
        let heals: Vec<String> = m.heal_convergence_ms.iter().map(|h| opt(*h)).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.4} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {} | {} | {:.1} | {:.2} |",
            m.variant,
            m.nodes,
            m.links,
            m.messages_sent,
            m.delivery_ratio,
            m.latency_ms.p50,
            m.latency_ms.p99,
            m.latency_ms.max,
            m.duplicates_per_delivery,
            m.bytes_sent_per_msg_per_member,
            m.bytes_received_per_msg_per_member,
            if heals.is_empty() {
                "—".into()
            } else {
                heals.join(" / ")
            },
            opt(m.final_convergence_ms),
            m.rss_per_node_bytes as f64 / (1024.0 * 1024.0),
            m.cpu_per_node_per_s * 1000.0,
        );
    }
    s.push_str(
        "\nB …/msg/member: UDP payload bytes a member node sent (received) per message sent in its \
         own rooms, mean over member nodes. \
         RSS/node is the marginal RSS of a started node; only the first variant's is clean \
         (later ones reuse the heap the earlier one freed). CPU is the process's, divided by nodes.\n",
    );
    s
}
