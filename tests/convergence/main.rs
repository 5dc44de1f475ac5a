//! The convergence fuzzer (issue 5): 3–5 `meshserver run` processes linked pairwise through
//! netem relays; seeded schedules of concurrent sends, conflicting state changes, joins,
//! leaves and kicks under random partitions and SIGKILL-and-restart; then a final heal and
//! three checks: byte-identical resolved state on every node, every acknowledged event on
//! every node in its room, and no stored accepted event that fails the auth rules. The run
//! fails too if no partition ever produced divergent state (the checks would be vacuous).
//!
//!   cargo test --test convergence                                      the short CI run
//!   cargo test --release --test convergence -- --episodes 100 --seed 7  a long one
//!   cargo test --test convergence -- --seed <episode seed> --episodes 1 replays an episode
//!   cargo test --test convergence -- --regressions                    replays the seeds that found bugs
//!
//! Every draw comes from the seed; episode 0 of a run uses the run's seed itself. The nodes'
//! logs go to `$MESHSERVER_BENCH_LOGS/<data dir>.log` when that variable names a directory.

#[path = "../../benches/support/mod.rs"]
mod support;

mod check;
mod cluster;
mod episode;
mod ops;
mod schedule;

use std::time::{Duration, Instant};

use episode::Outcome;

/// The seed of the CI run, fixed so CI is reproducible.
const DEFAULT_SEED: u64 = 1;
const DEFAULT_EPISODES: usize = 3;
/// Episodes that found bugs, replayed by `--regressions` (timing decides whether a schedule
/// hits its bug, so a replay can pass on a buggy tree; it never fails on a fixed one).
/// 10684377812132142481: a soft-failed state event is left out of its own state group
/// (src/room/mod.rs `persist`), so a peer rejects the events built on it and never converges.
const REGRESSIONS: &[u64] = &[10684377812132142481];

struct Args {
    seed: u64,
    episodes: usize,
    regressions: bool,
}

/// `--episodes N`, `--seed S`; anything else (libtest's flags, a filter) is ignored, so
/// `cargo test` may pass what it likes.
fn args() -> Result<Args, String> {
    let mut out = Args {
        seed: DEFAULT_SEED,
        episodes: DEFAULT_EPISODES,
        regressions: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (a.clone(), None),
        };
        if key == "--regressions" {
            out.regressions = true;
            continue;
        }
        if key != "--seed" && key != "--episodes" {
            continue;
        }
        let value = inline
            .or_else(|| it.next())
            .ok_or_else(|| format!("{key} needs a value"))?;
        match key.as_str() {
            "--seed" => out.seed = value.parse().map_err(|_| format!("bad seed `{value}`"))?,
            _ => {
                out.episodes = value
                    .parse()
                    .map_err(|_| format!("bad episode count `{value}`"))?
            }
        }
    }
    Ok(out)
}

fn table(outcomes: &[Outcome], wall: Duration) {
    let sum = |f: fn(&Outcome) -> usize| outcomes.iter().map(f).sum::<usize>();
    let failed = outcomes.iter().filter(|o| !o.failures.is_empty()).count();
    let conv: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o.converged_after.map(|d| d.as_secs_f64()))
        .collect();
    let max_conv = conv.iter().cloned().fold(0.0, f64::max);
    println!(
        "| episodes | failed | divergences | lost acknowledged events | auth violations (events checked) | partitions (diverged) | kills | acknowledged | soft-failed acknowledged | slowest convergence | wall time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {failed} | {} | {} | {} ({}) | {} ({}) | {} | {} | {} | {max_conv:.1} s | {:.0} s |",
        outcomes.len(),
        sum(|o| o.divergences),
        sum(|o| o.lost),
        sum(|o| o.auth_violations),
        sum(|o| o.auth_checked),
        sum(|o| o.partitions),
        sum(|o| o.partitions_diverged),
        sum(|o| o.kills),
        sum(|o| o.acked),
        sum(|o| o.soft_failed_acked),
        wall.as_secs_f64()
    );
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("convergence: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("convergence: no runtime: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "convergence fuzzer: seed {}, {} episode(s)",
        args.seed, args.episodes
    );
    let start = Instant::now();
    let mut outcomes = Vec::new();
    let seeds: Vec<u64> = if args.regressions {
        REGRESSIONS.to_vec()
    } else {
        (0..args.episodes)
            .map(|i| schedule::episode_seed(args.seed, i))
            .collect()
    };
    for (i, seed) in seeds.into_iter().enumerate() {
        let plan = schedule::plan(seed);
        let outcome = rt.block_on(episode::run(&plan));
        println!("{}", outcome.line());
        if !outcome.failures.is_empty() {
            println!(
                "--- episode {i} failed; replay: cargo test --test convergence -- --seed {} --episodes 1",
                plan.seed
            );
            print!("{plan}");
            for f in &outcome.failures {
                println!("  {f}");
            }
        }
        outcomes.push(outcome);
    }
    table(&outcomes, start.elapsed());
    let failed = outcomes.iter().any(|o| !o.failures.is_empty());
    let vacuous = outcomes.iter().all(|o| o.partitions_diverged == 0);
    if vacuous {
        println!("anti-vacuity: no partition ever produced divergent state; the checks proved nothing");
    }
    if failed || vacuous {
        std::process::exit(1);
    }
}
