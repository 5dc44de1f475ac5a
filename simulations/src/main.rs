//! `simulations run scenarios/<name>.toml [--seed N] [--out DIR] [--repeat N]`

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use simulations::scenario::Scenario;

#[derive(Parser)]
#[command(about = "Many real meshserver nodes in one process, with metrics and plots")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a scenario: every variant, one after the other, on the same schedule.
    Run {
        scenario: PathBuf,
        /// Overrides the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Output directory (default: out/<scenario name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Runs the scenario this many times with the same seed and reports the spread.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cmd::Run {
        scenario,
        seed,
        out,
        repeat,
    } = Cli::parse().cmd;
    let s = Scenario::load(&scenario)?;
    let seed = seed.unwrap_or(s.seed);
    let out = out.unwrap_or_else(|| PathBuf::from("out").join(&s.name));
    let mut reports = Vec::new();
    for k in 0..repeat.max(1) {
        let dir = if repeat > 1 {
            out.join(format!("run-{k}"))
        } else {
            out.clone()
        };
        let r = simulations::run(&s, seed, &dir).await?;
        println!("{}", std::fs::read_to_string(dir.join("summary.md"))?);
        reports.push(r);
    }
    if reports.len() > 1 {
        let same = reports.iter().all(|r| r.fingerprint == reports[0].fingerprint);
        let spread = simulations::spread(&reports);
        println!("schedules identical across runs: {same}");
        for sp in &spread {
            println!(
                "{:>9} {:<28} mean {:>10.2}  sd {:>9.2}  cv {:>6.3}",
                sp.variant, sp.metric, sp.mean, sp.sd, sp.cv
            );
        }
        let doc = serde_json::json!({ "schedules_identical": same, "spread": spread });
        std::fs::write(out.join("repeat.json"), serde_json::to_vec_pretty(&doc)?)?;
    }
    Ok(())
}
