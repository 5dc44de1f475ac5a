//! The plan of a run, drawn entirely from the seed before any node starts: the graph,
//! the rooms and their members, and a timeline of sends, sleeps, wakes, splits, heals,
//! late starts and mobility ticks. Same seed, same plan ([`Plan::fingerprint`]).

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::scenario::{Placement, Scenario};
use crate::topology::{self, Graph, Mobility};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Message `msg` (an index into the plan's sends) is created on `node` in `room`.
    Send {
        msg: usize,
        room: usize,
        node: usize,
        state: bool,
    },
    Sleep {
        node: usize,
    },
    Wake {
        node: usize,
    },
    Split {
        partition: usize,
    },
    Heal {
        partition: usize,
    },
    /// A late joiner starts and joins its rooms.
    Start {
        node: usize,
    },
    /// Mobile topology: links follow tick `tick`'s positions.
    Move {
        tick: usize,
    },
    /// End of the workload: every node awake, every partition healed, every link up.
    FinalHeal,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timed {
    pub at_ms: u64,
    #[serde(flatten)]
    pub action: Action,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoomPlan {
    pub creator: usize,
    /// Members in join order, each with the member it joins through (`None`: the creator).
    pub members: Vec<(usize, Option<usize>)>,
    pub senders: Vec<usize>,
}

#[derive(Serialize)]
pub struct Plan {
    #[serde(skip)]
    pub graph: Graph,
    pub edges: usize,
    pub rooms: Vec<RoomPlan>,
    pub late: BTreeSet<usize>,
    pub churners: BTreeSet<usize>,
    /// Per partition: each node's group.
    pub partitions: Vec<Vec<usize>>,
    pub timeline: Vec<Timed>,
    /// Sends planned but dropped because no sender of the room was up then.
    pub skipped_sends: usize,
    #[serde(skip)]
    pub mobility: Option<Mobility>,
}

impl Plan {
    pub fn new(s: &Scenario, seed: u64) -> Plan {
        let n = s.topology.nodes();
        let graph = topology::build(&s.topology, seed);
        let mobility = Mobility::new(&s.topology, s.duration_s, seed);
        let duration_ms = (s.duration_s * 1000.0) as u64;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x726f_6f6d);

        let late: BTreeSet<usize> = match &s.late_join {
            Some(l) => topology::sample(n, l.count, &mut StdRng::seed_from_u64(seed ^ 0x6c61_7465))
                .into_iter()
                .collect(),
            None => BTreeSet::new(),
        };
        // Creators must be up from the start: late joiners cannot create rooms.
        let early: Vec<usize> = (0..n).filter(|i| !late.contains(i)).collect();
        let mut rooms = Vec::new();
        for _ in 0..s.workload.rooms {
            let creator = early[rng.random_range(0..early.len())];
            rooms.push(plan_room(s, &graph, creator, &mut rng));
        }

        let mut timeline = Vec::new();
        let creators: BTreeSet<usize> = rooms.iter().map(|r| r.creator).collect();
        let mut churn_rng = StdRng::seed_from_u64(seed ^ 0x6368_726e);
        let churners: BTreeSet<usize> = match &s.churn {
            Some(c) => {
                let pool: Vec<usize> = (0..n)
                    .filter(|i| !creators.contains(i) && !late.contains(i))
                    .collect();
                let want = ((c.fraction * n as f64).round() as usize).min(pool.len());
                topology::sample(pool.len(), want, &mut churn_rng)
                    .into_iter()
                    .map(|i| pool[i])
                    .collect()
            }
            None => BTreeSet::new(),
        };
        // Down intervals per node, to know who can send when.
        let mut down: Vec<Vec<(u64, u64)>> = vec![Vec::new(); n];
        if let Some(c) = &s.churn {
            for &node in &churners {
                let mut t = exp_ms(&mut churn_rng, c.mean_up_s);
                while t < duration_ms {
                    let wake = t + exp_ms(&mut churn_rng, c.mean_down_s).max(1);
                    timeline.push(Timed {
                        at_ms: t,
                        action: Action::Sleep { node },
                    });
                    if wake < duration_ms {
                        timeline.push(Timed {
                            at_ms: wake,
                            action: Action::Wake { node },
                        });
                    }
                    down[node].push((t, wake.min(duration_ms)));
                    t = wake + exp_ms(&mut churn_rng, c.mean_up_s).max(1);
                }
            }
        }
        let late_at = s.late_join.as_ref().map_or(0, |l| (l.at_s * 1000.0) as u64);
        for &node in &late {
            down[node].push((0, late_at));
            timeline.push(Timed {
                at_ms: late_at,
                action: Action::Start { node },
            });
        }

        let mut part_rng = StdRng::seed_from_u64(seed ^ 0x7061_7274);
        let mut partitions = Vec::new();
        for (i, p) in s.partition.iter().enumerate() {
            let mut group = vec![usize::MAX; n];
            if p.groups.is_empty() {
                let order = topology::sample(n, n, &mut part_rng);
                for (rank, node) in order.into_iter().enumerate() {
                    group[node] = rank * p.random_groups / n;
                }
            } else {
                for (g, members) in p.groups.iter().enumerate() {
                    for &m in members {
                        group[m] = g;
                    }
                }
                let rest = p.groups.len();
                group
                    .iter_mut()
                    .filter(|g| **g == usize::MAX)
                    .for_each(|g| *g = rest);
            }
            partitions.push(group);
            let (at, heal) = ((p.at_s * 1000.0) as u64, (p.heal_s * 1000.0) as u64);
            timeline.push(Timed {
                at_ms: at.min(duration_ms),
                action: Action::Split { partition: i },
            });
            if heal < duration_ms {
                timeline.push(Timed {
                    at_ms: heal,
                    action: Action::Heal { partition: i },
                });
            }
        }

        if let Some(m) = &mobility {
            let ticks = duration_ms / m.tick_ms;
            for tick in 1..=ticks {
                timeline.push(Timed {
                    at_ms: tick * m.tick_ms,
                    action: Action::Move { tick: tick as usize },
                });
            }
        }

        let mut send_rng = StdRng::seed_from_u64(seed ^ 0x7365_6e64);
        let stop_ms = s
            .workload
            .stop_sending_s
            .map_or(duration_ms, |t| ((t * 1000.0) as u64).min(duration_ms));
        let is_up = |node: usize, t: u64| !down[node].iter().any(|&(a, b)| a <= t && t < b);
        let mut sends = Vec::new();
        let mut skipped_sends = 0;
        for (room, r) in rooms.iter().enumerate() {
            // A node's join follows its start; give late joiners a second to get in.
            let mut t = exp_ms(&mut send_rng, 1.0 / s.workload.rate_per_room);
            while t < stop_ms {
                let state = send_rng.random::<f64>() < s.workload.state_fraction;
                let first = send_rng.random_range(0..r.senders.len());
                let up = (0..r.senders.len())
                    .map(|k| r.senders[(first + k) % r.senders.len()])
                    .find(|&node| is_up(node, t) && (!late.contains(&node) || t >= late_at + 1000));
                match up {
                    Some(node) => sends.push((t, room, node, state)),
                    None => skipped_sends += 1,
                }
                t += exp_ms(&mut send_rng, 1.0 / s.workload.rate_per_room).max(1);
            }
        }
        sends.sort_by_key(|&(t, room, ..)| (t, room));
        for (msg, (at_ms, room, node, state)) in sends.into_iter().enumerate() {
            timeline.push(Timed {
                at_ms,
                action: Action::Send {
                    msg,
                    room,
                    node,
                    state,
                },
            });
        }
        timeline.push(Timed {
            at_ms: duration_ms,
            action: Action::FinalHeal,
        });
        // Stable: at equal times the order above (churn, late, partitions, moves, sends) holds.
        timeline.sort_by_key(|t| t.at_ms);
        Plan {
            edges: graph.edges.len(),
            graph,
            rooms,
            late,
            churners,
            partitions,
            timeline,
            skipped_sends,
            mobility,
        }
    }

    pub fn sends(&self) -> impl Iterator<Item = (u64, usize, usize, usize, bool)> + '_ {
        self.timeline.iter().filter_map(|t| match t.action {
            Action::Send {
                msg,
                room,
                node,
                state,
            } => Some((t.at_ms, msg, room, node, state)),
            _ => None,
        })
    }

    /// A hash of everything drawn from the seed: equal fingerprints, equal schedules.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(&(self, &self.graph.edges)).unwrap_or_default();
        blake3::hash(&json).to_hex()[..16].to_owned()
    }
}

fn plan_room(s: &Scenario, graph: &Graph, creator: usize, rng: &mut StdRng) -> RoomPlan {
    let n = s.topology.nodes();
    let want = s.members_per_room();
    let chosen: BTreeSet<usize> = match s.workload.placement {
        Placement::Local => graph
            .bfs(creator, &|_| true)
            .into_iter()
            .take(want)
            .map(|(v, _)| v)
            .collect(),
        Placement::Random => {
            let mut set: BTreeSet<usize> = topology::sample(n, want, rng).into_iter().collect();
            if !set.contains(&creator) {
                let drop = *set.iter().next_back().unwrap_or(&creator);
                set.remove(&drop);
                set.insert(creator);
            }
            set
        }
    };
    // Join through a member already in, over the members' own links where they connect
    // (gossip only flows among members); the rest join through the creator directly.
    let mut members = graph.bfs(creator, &|v| chosen.contains(&v));
    let reached: BTreeSet<usize> = members.iter().map(|m| m.0).collect();
    for &v in &chosen {
        if !reached.contains(&v) {
            members.push((v, Some(creator)));
        }
    }
    let pool: Vec<usize> = members.iter().map(|m| m.0).collect();
    let k = s.workload.senders.min(pool.len());
    let picked = topology::sample(pool.len(), k, rng);
    let senders = picked.into_iter().map(|i| pool[i]).collect::<Vec<_>>();
    RoomPlan {
        creator,
        members,
        senders,
    }
}

fn exp_ms(rng: &mut StdRng, mean_s: f64) -> u64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    (-u.ln() * mean_s * 1000.0) as u64
}
