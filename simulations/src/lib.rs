//! Many real meshserver nodes in one process, linked through emulated links
//! ([`meshserver::netem`]), under partitions, churn, loss and mobility; with metrics and
//! plots. README.md is the researcher's guide.

pub mod cluster;
pub mod driver;
pub mod metrics;
pub mod observe;
pub mod output;
pub mod plot;
pub mod scenario;
pub mod schedule;
pub mod setup;
pub mod topology;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use crate::metrics::{Metrics, Summary};
use crate::scenario::Scenario;
use crate::schedule::{Action, Plan};

/// What one run produced.
pub struct Report {
    pub fingerprint: String,
    pub out: PathBuf,
    pub runs: Vec<(&'static str, Metrics)>,
}

impl Report {
    pub fn summaries(&self) -> Vec<&Summary> {
        self.runs.iter().map(|(_, m)| &m.summary).collect()
    }
}

/// Runs every variant of `s` with `seed` and writes everything into `out`.
pub async fn run(s: &Scenario, seed: u64, out: &Path) -> anyhow::Result<Report> {
    observe::init_tracing();
    raise_fd_limit();
    std::fs::create_dir_all(out)?;
    let plan = Plan::new(s, seed);
    let fingerprint = plan.fingerprint();
    std::fs::write(out.join("schedule.json"), serde_json::to_vec_pretty(&plan)?)?;
    let work = tempfile::Builder::new().prefix("meshsim-").tempdir()?;
    let mut runs = Vec::new();
    for &v in &s.variants {
        eprintln!(
            "[{}] {}: {} nodes, {} links",
            s.name,
            v.name(),
            plan.graph.n,
            driver::links_for(v, &plan).edges.len()
        );
        let raw = driver::run(s, &plan, v, seed, &work.path().join(v.name())).await?;
        let m = metrics::compute(&raw, &plan, s.sample_ms);
        output::write_variant(&out.join(v.name()), &m)?;
        let sm = &m.summary;
        eprintln!(
            "[{}] {}: delivered {:.4} of {} pairs, p50 {:.0} ms, p99 {:.0} ms, {:.0} B sent/msg/node, converged {}",
            s.name,
            v.name(),
            sm.delivery_ratio,
            sm.expected_pairs,
            sm.latency_ms.p50,
            sm.latency_ms.p99,
            sm.bytes_sent_per_msg_per_node,
            sm.converged
        );
        runs.push((v.name(), m));
    }
    let marks: Vec<(f64, String)> = plan
        .timeline
        .iter()
        .filter_map(|t| match t.action {
            Action::Heal { partition } => Some((t.at_ms as f64, format!("heal {partition}"))),
            Action::FinalHeal => Some((t.at_ms as f64, "final".into())),
            _ => None,
        })
        .collect();
    let refs: Vec<(&str, &Metrics)> = runs.iter().map(|(n, m)| (*n, m)).collect();
    plot::write_all(out, &refs, &marks)?;
    let report = Report {
        fingerprint,
        out: out.to_path_buf(),
        runs,
    };
    let summary = json!({
        "scenario": s.name,
        "seed": seed,
        "schedule_fingerprint": report.fingerprint,
        "edges": plan.edges,
        "rooms": plan.rooms.len(),
        "churners": plan.churners.len(),
        "late_joiners": plan.late.len(),
        "variants": report.summaries(),
        "scenario_file": s,
    });
    std::fs::write(out.join("summary.json"), serde_json::to_vec_pretty(&summary)?)?;
    let md = output::markdown(&s.name, seed, &report.fingerprint, &report.summaries());
    std::fs::write(out.join("summary.md"), &md)?;
    Ok(report)
}

/// How close repeated runs of the same seed come, per variant and metric.
#[derive(Debug, Serialize)]
pub struct Spread {
    pub variant: String,
    pub metric: String,
    pub values: Vec<f64>,
    pub mean: f64,
    pub sd: f64,
    /// sd / mean.
    pub cv: f64,
}

type Pick = (&'static str, fn(&Summary) -> f64);

pub fn spread(reports: &[Report]) -> Vec<Spread> {
    let mut out = Vec::new();
    let Some(first) = reports.first() else { return out };
    for (k, (variant, _)) in first.runs.iter().enumerate() {
        let pick: [Pick; 7] = [
            ("delivery_ratio", |s| s.delivery_ratio),
            ("latency_p50_ms", |s| s.latency_ms.p50),
            ("latency_p99_ms", |s| s.latency_ms.p99),
            ("bytes_sent_per_msg_per_node", |s| s.bytes_sent_per_msg_per_node),
            ("duplicates_per_delivery", |s| s.duplicates_per_delivery),
            ("final_convergence_ms", |s| {
                s.final_convergence_ms.unwrap_or(f64::NAN)
            }),
            ("messages_sent", |s| s.messages_sent as f64),
        ];
        for (metric, f) in pick {
            let values: Vec<f64> = reports
                .iter()
                .filter_map(|r| r.runs.get(k))
                .map(|(_, m)| f(&m.summary))
                .collect();
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
            out.push(Spread {
                variant: variant.to_string(),
                metric: metric.into(),
                cv: if mean != 0.0 { sd / mean } else { 0.0 },
                values,
                mean,
                sd,
            });
        }
    }
    out
}

/// Each node holds sockets, SQLite files and a listener: lift the soft descriptor limit.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
