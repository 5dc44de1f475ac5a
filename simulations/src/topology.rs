//! Graphs of who links to whom, drawn from the scenario's seed: the same seed gives the
//! same graph. A mobile topology's links change over time ([`Mobility`]).

use std::collections::{BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::scenario::Topology;

/// An undirected link, smaller index first.
pub type Edge = (usize, usize);

pub fn edge(a: usize, b: usize) -> Edge {
    (a.min(b), a.max(b))
}

#[derive(Debug, Clone)]
pub struct Graph {
    pub n: usize,
    pub edges: BTreeSet<Edge>,
}

impl Graph {
    pub fn complete(n: usize) -> Graph {
        let edges = (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b))).collect();
        Graph { n, edges }
    }

    pub fn neighbours(&self) -> Vec<Vec<usize>> {
        let mut adj = vec![Vec::new(); self.n];
        for &(a, b) in &self.edges {
            adj[a].push(b);
            adj[b].push(a);
        }
        adj
    }

    /// Nodes in breadth-first order from `from`, each with its parent (the node it was
    /// reached through), over the links among `allowed` nodes only.
    pub fn bfs(&self, from: usize, allowed: &dyn Fn(usize) -> bool) -> Vec<(usize, Option<usize>)> {
        let adj = self.neighbours();
        let mut seen = vec![false; self.n];
        let mut out = vec![(from, None)];
        seen[from] = true;
        let mut q = VecDeque::from([from]);
        while let Some(u) = q.pop_front() {
            for &v in &adj[u] {
                if !seen[v] && allowed(v) {
                    seen[v] = true;
                    out.push((v, Some(u)));
                    q.push_back(v);
                }
            }
        }
        out
    }

    pub fn connected(&self) -> bool {
        self.bfs(0, &|_| true).len() == self.n
    }

    pub fn mean_degree(&self) -> f64 {
        2.0 * self.edges.len() as f64 / self.n as f64
    }
}

/// The static links of `t` (for a mobile topology: every pair, since any two nodes may
/// come within range; [`Mobility`] says which are up when).
pub fn build(t: &Topology, seed: u64) -> Graph {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x746f_706f);
    match *t {
        Topology::FullMesh { nodes } | Topology::Mobile { nodes, .. } => Graph::complete(nodes),
        Topology::Ring { nodes } => Graph {
            n: nodes,
            edges: (0..nodes).map(|i| edge(i, (i + 1) % nodes)).collect(),
        },
        Topology::Grid { nodes, width } => {
            let mut edges = BTreeSet::new();
            for i in 0..nodes {
                if (i + 1) % width != 0 {
                    edges.insert(edge(i, i + 1));
                }
                if i + width < nodes {
                    edges.insert(edge(i, i + width));
                }
            }
            Graph { n: nodes, edges }
        }
        Topology::KRegular { nodes, k } => k_regular(nodes, k, &mut rng),
        Topology::SmallWorld { nodes, k, rewire } => small_world(nodes, k, rewire, &mut rng),
    }
}

/// Pairs random free stubs of nodes not yet linked; starts over when stuck (rare for
/// k ≪ n), until the graph is simple and connected.
fn k_regular(n: usize, k: usize, rng: &mut StdRng) -> Graph {
    'attempt: loop {
        let mut edges = BTreeSet::new();
        let mut stubs: Vec<usize> = (0..n).flat_map(|i| std::iter::repeat_n(i, k)).collect();
        while !stubs.is_empty() {
            let mut placed = false;
            for _ in 0..100 {
                let i = rng.random_range(0..stubs.len());
                let j = rng.random_range(0..stubs.len());
                let (a, b) = (stubs[i], stubs[j]);
                if i == j || a == b || edges.contains(&edge(a, b)) {
                    continue;
                }
                edges.insert(edge(a, b));
                let (hi, lo) = (i.max(j), i.min(j));
                stubs.swap_remove(hi);
                stubs.swap_remove(lo);
                placed = true;
                break;
            }
            if !placed {
                continue 'attempt;
            }
        }
        let g = Graph { n, edges };
        if g.connected() {
            return g;
        }
    }
}

/// Watts–Strogatz; redrawn until connected.
fn small_world(n: usize, k: usize, beta: f64, rng: &mut StdRng) -> Graph {
    loop {
        let mut edges: BTreeSet<Edge> = (0..n)
            .flat_map(|i| (1..=k / 2).map(move |j| edge(i, (i + j) % n)))
            .collect();
        for i in 0..n {
            for j in 1..=k / 2 {
                let e = edge(i, (i + j) % n);
                if !edges.contains(&e) || rng.random::<f64>() >= beta {
                    continue;
                }
                let target = rng.random_range(0..n);
                if target == i || edges.contains(&edge(i, target)) {
                    continue;
                }
                edges.remove(&e);
                edges.insert(edge(i, target));
            }
        }
        let g = Graph { n, edges };
        if g.connected() {
            return g;
        }
    }
}

/// Random waypoint mobility, precomputed tick by tick from the seed.
pub struct Mobility {
    pub tick_ms: u64,
    /// Positions per tick.
    pub positions: Vec<Vec<(f64, f64)>>,
    radius: f64,
}

impl Mobility {
    pub fn new(t: &Topology, duration_s: f64, seed: u64) -> Option<Mobility> {
        let Topology::Mobile {
            nodes,
            side,
            radius,
            speed,
            pause_s,
            tick_ms,
        } = *t
        else {
            return None;
        };
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6d6f_6269);
        let draw = |rng: &mut StdRng| (rng.random_range(0.0..side), rng.random_range(0.0..side));
        let mut pos: Vec<(f64, f64)> = (0..nodes).map(|_| draw(&mut rng)).collect();
        let mut target: Vec<(f64, f64)> = (0..nodes).map(|_| draw(&mut rng)).collect();
        let (lo, hi) = (speed[0].min(speed[1]), speed[0].max(speed[1]));
        let mut v: Vec<f64> = (0..nodes).map(|_| rng.random_range(lo..=hi)).collect();
        let mut paused = vec![0.0f64; nodes];
        let dt = tick_ms as f64 / 1000.0;
        let ticks = (duration_s / dt).ceil() as usize + 1;
        let mut positions = Vec::with_capacity(ticks);
        for _ in 0..ticks {
            positions.push(pos.clone());
            for i in 0..nodes {
                if paused[i] > 0.0 {
                    paused[i] -= dt;
                    continue;
                }
                let (dx, dy) = (target[i].0 - pos[i].0, target[i].1 - pos[i].1);
                let dist = (dx * dx + dy * dy).sqrt();
                let step = v[i] * dt;
                if dist <= step {
                    pos[i] = target[i];
                    paused[i] = pause_s;
                    target[i] = draw(&mut rng);
                    v[i] = rng.random_range(lo..=hi);
                } else {
                    pos[i] = (pos[i].0 + dx / dist * step, pos[i].1 + dy / dist * step);
                }
            }
        }
        Some(Mobility {
            tick_ms,
            positions,
            radius,
        })
    }

    /// The links within range at `tick` (the last tick's beyond the end).
    pub fn links_at(&self, tick: usize) -> BTreeSet<Edge> {
        let p = &self.positions[tick.min(self.positions.len() - 1)];
        let r2 = self.radius * self.radius;
        let mut out = BTreeSet::new();
        for a in 0..p.len() {
            for b in a + 1..p.len() {
                let (dx, dy) = (p[a].0 - p[b].0, p[a].1 - p[b].1);
                if dx * dx + dy * dy <= r2 {
                    out.insert((a, b));
                }
            }
        }
        out
    }
}

/// `k` distinct indices below `n`, drawn with `rng`.
pub fn sample(n: usize, k: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    all.shuffle(rng);
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graphs_have_their_shape_and_repeat_per_seed() {
        let kr = build(&Topology::KRegular { nodes: 100, k: 4 }, 9);
        assert!(kr.connected());
        assert!(kr.neighbours().iter().all(|a| a.len() == 4));
        assert_eq!(kr.edges, build(&Topology::KRegular { nodes: 100, k: 4 }, 9).edges);
        let sw = build(
            &Topology::SmallWorld {
                nodes: 200,
                k: 6,
                rewire: 0.1,
            },
            3,
        );
        assert!(sw.connected());
        assert_eq!(sw.edges.len(), 600);
        let g = build(&Topology::Grid { nodes: 12, width: 4 }, 0);
        assert_eq!(g.edges.len(), 3 * 3 + 2 * 4);
        assert_eq!(build(&Topology::Ring { nodes: 5 }, 0).edges.len(), 5);
    }

    #[test]
    fn mobile_nodes_stay_in_the_square_and_links_follow_distance() {
        let t = Topology::Mobile {
            nodes: 20,
            side: 100.0,
            radius: 30.0,
            speed: [5.0, 10.0],
            pause_s: 1.0,
            tick_ms: 500,
        };
        let m = Mobility::new(&t, 20.0, 1).unwrap();
        assert!(
            m.positions
                .iter()
                .flatten()
                .all(|&(x, y)| (0.0..=100.0).contains(&x) && (0.0..=100.0).contains(&y))
        );
        assert_ne!(m.links_at(0), m.links_at(40), "links change as nodes move");
    }
}
