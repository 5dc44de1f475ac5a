//! One episode: start the nodes, play the schedule, heal, wait, check.

use std::time::{Duration, Instant};

use crate::check;
use crate::cluster::Cluster;
use crate::ops::{self, Acked, World};
use crate::schedule::{Plan, Step};

/// How long the healed nodes get to agree.
const CONVERGENCE_LIMIT: Duration = Duration::from_secs(90);
/// How long the freshly joined nodes get to agree before the chaos starts.
const SETUP_LIMIT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Outcome {
    pub seed: u64,
    pub nodes: usize,
    pub rooms: usize,
    pub partitions: usize,
    pub partitions_diverged: usize,
    pub kills: usize,
    pub acked: usize,
    pub refused: usize,
    /// Rooms whose final state differs between nodes.
    pub divergences: usize,
    pub lost: usize,
    /// Acknowledged events some node holds soft-failed (the spec allows it; counted only).
    pub soft_failed_acked: usize,
    pub auth_checked: usize,
    pub auth_violations: usize,
    pub converged_after: Option<Duration>,
    pub wall: Duration,
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn line(&self) -> String {
        let conv = match self.converged_after {
            Some(d) => format!("{:.1} s", d.as_secs_f64()),
            None => "NO".into(),
        };
        format!(
            "episode seed {}: {} nodes, {} room(s), {} partitions ({} diverged), {} kills, {} acked, \
             {} refused; converged {conv}; divergences {}, lost {}, soft-failed acked {}, \
             auth violations {} of {} checked; {:.1} s{}",
            self.seed,
            self.nodes,
            self.rooms,
            self.partitions,
            self.partitions_diverged,
            self.kills,
            self.acked,
            self.refused,
            self.divergences,
            self.lost,
            self.soft_failed_acked,
            self.auth_violations,
            self.auth_checked,
            self.wall.as_secs_f64(),
            if self.failures.is_empty() { "" } else { " FAILED" }
        )
    }
}

fn up_nodes(cluster: &Cluster) -> Vec<usize> {
    (0..cluster.len()).filter(|&i| cluster.is_up(i)).collect()
}

/// Whether two running nodes on different sides of `groups` hold different room state.
fn diverged(cluster: &Cluster, world: &World, groups: &[usize]) -> anyhow::Result<bool> {
    let up = up_nodes(cluster);
    let states = check::states(cluster, world, &up)?;
    Ok(states.iter().any(|by_node| {
        up.iter().enumerate().any(|(x, &i)| {
            up.iter()
                .enumerate()
                .any(|(y, &j)| groups[i] != groups[j] && by_node[x] != by_node[y])
        })
    }))
}

/// Waits until every node holds the same state of every room and every acknowledged
/// event; returns how long that took, or `None` at `limit`.
async fn wait_converged(
    cluster: &Cluster,
    world: &World,
    acked: &[Acked],
    limit: Duration,
) -> anyhow::Result<Option<Duration>> {
    let start = Instant::now();
    let all: Vec<usize> = (0..cluster.len()).collect();
    loop {
        let states = check::states(cluster, world, &all)?;
        let same = states.iter().all(|s| s.windows(2).all(|w| w[0] == w[1]));
        if same && check::missing_acked(cluster, world, acked)?.0.is_empty() {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > limit {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn run(plan: &Plan) -> Outcome {
    let t0 = Instant::now();
    let mut out = Outcome {
        seed: plan.seed,
        nodes: plan.nodes,
        rooms: 1 + usize::from(plan.two_rooms),
        ..Outcome::default()
    };
    if let Err(e) = play(plan, &mut out).await {
        out.failures.push(format!("episode aborted: {e:#}"));
    }
    out.wall = t0.elapsed();
    out
}

async fn play(plan: &Plan, out: &mut Outcome) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(plan.nodes, plan.seed).await?;
    let world = ops::setup(&cluster, plan).await?;
    if wait_converged(&cluster, &world, &[], SETUP_LIMIT)
        .await?
        .is_none()
    {
        anyhow::bail!("the nodes did not agree on the room after setup");
    }
    let mut acked: Vec<Acked> = Vec::new();
    let mut groups: Option<Vec<usize>> = None;
    let mut current_diverged = false;
    for step in &plan.steps {
        match step {
            Step::Partition(g) => {
                if let Some(old) = &groups {
                    current_diverged |= diverged(&cluster, &world, old)?;
                    out.partitions_diverged += usize::from(current_diverged);
                }
                cluster.partition(g);
                groups = Some(g.clone());
                current_diverged = false;
                out.partitions += 1;
            }
            Step::Heal => {
                if let Some(old) = groups.take() {
                    current_diverged |= diverged(&cluster, &world, &old)?;
                    out.partitions_diverged += usize::from(current_diverged);
                }
                cluster.heal_all();
            }
            Step::Kill(i) => {
                cluster.kill(*i);
                out.kills += 1;
            }
            Step::Restart(i) => cluster.restart(*i).await?,
            Step::Ops(list) => {
                let results =
                    futures::future::join_all(list.iter().map(|op| ops::run(&cluster, &world, op))).await;
                for r in results {
                    match r {
                        Ok(Some(a)) => acked.push(a),
                        Ok(None) => {}
                        Err(_) => out.refused += 1,
                    }
                }
            }
            Step::PauseMs(ms) => {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
                if let Some(g) = &groups {
                    current_diverged |= diverged(&cluster, &world, g)?;
                }
            }
        }
    }
    if let Some(old) = groups.take() {
        current_diverged |= diverged(&cluster, &world, &old)?;
        out.partitions_diverged += usize::from(current_diverged);
    }
    out.acked = acked.len();

    // The final heal: every link up, every node running.
    cluster.heal_all();
    for i in 0..cluster.len() {
        cluster.restart(i).await?;
    }
    out.converged_after = wait_converged(&cluster, &world, &acked, CONVERGENCE_LIMIT).await?;
    if out.converged_after.is_none() {
        out.failures.push(format!(
            "not converged within {CONVERGENCE_LIMIT:?} of the final heal"
        ));
    }
    // 1 (over HTTP): the resolved state every node serves, byte for byte.
    for r in 0..world.rooms.len() {
        let first = check::http_state(&cluster, &world, 0, r).await?;
        for i in 1..cluster.len() {
            let other = check::http_state(&cluster, &world, i, r).await?;
            if other != first {
                out.failures.push(format!(
                    "room {} state over HTTP differs, node 0 vs node {i}:\n{}",
                    world.rooms[r],
                    check::diff(&first, &other)
                ));
            }
        }
    }
    cluster.stop_all().await?;

    // 1 (in the files): the stored current state.
    let all: Vec<usize> = (0..cluster.len()).collect();
    let states = check::states(&cluster, &world, &all)?;
    for (r, by_node) in states.iter().enumerate() {
        let mut differs = false;
        for (i, s) in by_node.iter().enumerate().skip(1) {
            if *s != by_node[0] {
                differs = true;
                out.failures.push(format!(
                    "room {} stored state differs, node 0 vs node {i}:\n{}",
                    world.rooms[r],
                    check::diff(&by_node[0], s)
                ));
            }
        }
        out.divergences += usize::from(differs);
    }
    // 2: every acknowledged event on every node still in its room.
    let (missing, lost, soft) = check::missing_acked(&cluster, &world, &acked)?;
    out.lost = lost;
    out.soft_failed_acked = soft;
    out.failures.extend(missing);
    // 3: every accepted event passes auth (and the check itself catches a forgery).
    check::auth_check_catches_forgery(&cluster.slots[0].db_path())?;
    for (i, slot) in cluster.slots.iter().enumerate() {
        let (checked, violations) = check::auth_violations(&slot.db_path())?;
        out.auth_checked += checked;
        out.auth_violations += violations.len();
        out.failures
            .extend(violations.into_iter().map(|v| format!("node {i}: {v}")));
    }
    Ok(())
}
