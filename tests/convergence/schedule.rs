//! An episode's schedule, drawn entirely from its seed before anything runs: the same seed
//! gives the same steps whatever the nodes answer.

use std::collections::BTreeSet;
use std::fmt;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The users of a node: `A` never leaves the room (so every node stays in it and every
/// check applies to every node), `B` leaves, is kicked and joins again.
pub const A: usize = 0;
pub const B: usize = 1;

#[derive(Debug, Clone)]
pub enum Op {
    /// An `m.room.message` from user `user` of `node` in room `room`.
    Send {
        node: usize,
        user: usize,
        room: usize,
    },
    /// `m.room.name` (`topic: false`) or `m.room.topic`.
    Text {
        node: usize,
        user: usize,
        room: usize,
        topic: bool,
        value: String,
    },
    /// `m.room.power_levels` with `target`'s level set to `level` (read-modify-write on the
    /// acting node's current content).
    Power {
        node: usize,
        user: usize,
        target: (usize, usize),
        level: i64,
    },
    Leave {
        node: usize,
    },
    Join {
        node: usize,
    },
    /// A of `node` kicks B of `target`.
    Kick {
        node: usize,
        target: usize,
    },
}

#[derive(Debug, Clone)]
pub enum Step {
    /// The group of each node; links between groups are cut, links within healed.
    Partition(Vec<usize>),
    Heal,
    Kill(usize),
    Restart(usize),
    /// Run concurrently.
    Ops(Vec<Op>),
    PauseMs(u64),
}

pub struct Plan {
    pub seed: u64,
    pub nodes: usize,
    /// A second room (the A users only, messages and names).
    pub two_rooms: bool,
    pub steps: Vec<Step>,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} ({} nodes, {} room(s))",
            self.seed,
            self.nodes,
            1 + usize::from(self.two_rooms)
        )?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "  {i:3} {s:?}")?;
        }
        Ok(())
    }
}

/// The seed of episode `i` of a run seeded `seed`: episode 0 uses `seed` itself, so
/// `--seed <an episode's seed> --episodes 1` replays that episode.
pub fn episode_seed(seed: u64, i: usize) -> u64 {
    let mut s = seed;
    for _ in 0..i {
        s = splitmix(s);
    }
    s
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Gen {
    rng: StdRng,
    n: usize,
    two_rooms: bool,
    down: BTreeSet<usize>,
    /// (step index at which to restart, node)
    restarts: Vec<(usize, usize)>,
    counter: usize,
}

impl Gen {
    fn up_node(&mut self) -> usize {
        let up: Vec<usize> = (0..self.n).filter(|i| !self.down.contains(i)).collect();
        up[self.rng.random_range(0..up.len())]
    }

    fn label(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    /// A conflicting state change on `node`: name, topic or power levels.
    fn state_op(&mut self, node: usize) -> Op {
        let user = if self.rng.random::<f64>() < 0.8 { A } else { B };
        match self.rng.random_range(0..3) {
            0 | 1 => {
                let topic = self.rng.random::<f64>() < 0.4;
                let room = if self.two_rooms && user == A && self.rng.random::<f64>() < 0.3 {
                    1
                } else {
                    0
                };
                let value = self.label(if topic { "topic-" } else { "name-" });
                Op::Text {
                    node,
                    user,
                    room,
                    topic,
                    value,
                }
            }
            _ => {
                let t_node = self.rng.random_range(0..self.n);
                // Node 0's A created the room: its power is implied and cannot be listed.
                let t_user = if t_node == 0 || self.rng.random::<f64>() < 0.6 {
                    B
                } else {
                    A
                };
                let level = [0, 50, 100][self.rng.random_range(0..3)];
                Op::Power {
                    node,
                    user: A,
                    target: (t_node, t_user),
                    level,
                }
            }
        }
    }

    fn op(&mut self) -> Op {
        let node = self.up_node();
        let roll = self.rng.random::<f64>();
        if roll < 0.45 {
            let room = if self.two_rooms && self.rng.random::<f64>() < 0.3 {
                1
            } else {
                0
            };
            let user = if room == 0 && self.rng.random::<f64>() < 0.4 {
                B
            } else {
                A
            };
            Op::Send { node, user, room }
        } else if roll < 0.75 {
            self.state_op(node)
        } else if roll < 0.83 {
            Op::Leave { node }
        } else if roll < 0.93 {
            Op::Join { node }
        } else {
            let target = self.rng.random_range(0..self.n);
            Op::Kick { node, target }
        }
    }

    fn partition(&mut self) -> Vec<usize> {
        let k = if self.n >= 4 && self.rng.random::<f64>() < 0.3 {
            3
        } else {
            2
        };
        loop {
            let g: Vec<usize> = (0..self.n).map(|_| self.rng.random_range(0..k)).collect();
            if g.iter().collect::<BTreeSet<_>>().len() >= 2 {
                return g;
            }
        }
    }
}

pub fn plan(seed: u64) -> Plan {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = rng.random_range(3..=5);
    let two_rooms = rng.random::<f64>() < 0.5;
    let len = rng.random_range(8..=14);
    let mut g = Gen {
        rng,
        n,
        two_rooms,
        down: BTreeSet::new(),
        restarts: Vec::new(),
        counter: 0,
    };
    let mut steps = Vec::new();
    for k in 0..len {
        let due: Vec<usize> = g
            .restarts
            .iter()
            .filter(|(at, _)| *at <= k)
            .map(|(_, i)| *i)
            .collect();
        g.restarts.retain(|(at, _)| *at > k);
        for i in due {
            g.down.remove(&i);
            steps.push(Step::Restart(i));
        }
        let roll = g.rng.random::<f64>();
        // The first step always splits the nodes, so every episode has a partition to diverge.
        if k == 0 || roll < 0.25 {
            let groups = g.partition();
            // One state change on an up node of each group: the sides conflict for sure.
            let mut burst = Vec::new();
            for group in groups.iter().collect::<BTreeSet<_>>() {
                let members: Vec<usize> = (0..n)
                    .filter(|i| groups[*i] == *group && !g.down.contains(i))
                    .collect();
                if !members.is_empty() {
                    let node = members[g.rng.random_range(0..members.len())];
                    burst.push(g.state_op(node));
                }
            }
            steps.push(Step::Partition(groups));
            steps.push(Step::Ops(burst));
        } else if roll < 0.35 {
            steps.push(Step::Heal);
        } else if roll < 0.47 && g.down.len() < (n - 1) / 2 {
            let i = g.up_node();
            g.down.insert(i);
            let after = g.rng.random_range(1..=3);
            g.restarts.push((k + after, i));
            steps.push(Step::Kill(i));
        } else {
            let count = g.rng.random_range(2..=6);
            let ops: Vec<Op> = (0..count).map(|_| g.op()).collect();
            let first = match ops[0] {
                Op::Send { node, .. }
                | Op::Text { node, .. }
                | Op::Power { node, .. }
                | Op::Leave { node }
                | Op::Join { node }
                | Op::Kick { node, .. } => node,
            };
            steps.push(Step::Ops(ops));
            // Killed the moment its clients got their answers: what it acknowledged must
            // have been on disk, and may reach the others only after its restart.
            if g.rng.random::<f64>() < 0.2 && g.down.len() < (n - 1) / 2 {
                g.down.insert(first);
                let after = g.rng.random_range(1..=3);
                g.restarts.push((k + after, first));
                steps.push(Step::Kill(first));
            }
        }
        steps.push(Step::PauseMs(g.rng.random_range(200..=1200)));
    }
    Plan {
        seed,
        nodes: n,
        two_rooms,
        steps,
    }
}
