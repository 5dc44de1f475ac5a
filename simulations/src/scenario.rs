//! A scenario file (TOML): the network, its link model, what happens to it and when, the
//! workload, and how long to run. README.md documents every key with its default.

use std::path::Path;

use anyhow::{Context, bail};
use meshserver::netem::LinkModel;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default = "one")]
    pub seed: u64,
    /// Seconds of workload (sends, churn, partitions, mobility), after setup.
    pub duration_s: f64,
    /// After the workload (every node woken, every partition healed): the longest wait for
    /// every message to reach every member node.
    #[serde(default = "twenty")]
    pub settle_s: f64,
    /// How often state divergence is sampled.
    #[serde(default = "five_hundred")]
    pub sample_ms: u64,
    /// Seconds of quiet between setup and workload, to measure what idle nodes cost.
    #[serde(default)]
    pub idle_s: f64,
    /// Which replication designs run, one after the other, on the same schedule.
    #[serde(default = "both_variants")]
    pub variants: Vec<Variant>,
    pub topology: Topology,
    #[serde(default)]
    pub link: LinkModel,
    #[serde(default)]
    pub link_override: Vec<LinkOverride>,
    pub workload: Workload,
    #[serde(default)]
    pub churn: Option<Churn>,
    #[serde(default)]
    pub partition: Vec<Partition>,
    #[serde(default)]
    pub late_join: Option<LateJoin>,
}

fn one() -> u64 {
    1
}
fn twenty() -> f64 {
    20.0
}
fn five_hundred() -> u64 {
    500
}
fn both_variants() -> Vec<Variant> {
    vec![Variant::Gossip, Variant::Fullmesh]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// meshserver as it is: gossipsub over the topology's links, plus the outbox's heads.
    Gossip,
    /// The baseline: gossip off, every pair of nodes linked, each event sent by its origin
    /// straight to every member node (the outbox's heads, then a fetch).
    Fullmesh,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Gossip => "gossip",
            Variant::Fullmesh => "fullmesh",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum Topology {
    FullMesh {
        nodes: usize,
    },
    Ring {
        nodes: usize,
    },
    /// Random k-regular graph (configuration model, retried until simple and connected).
    KRegular {
        nodes: usize,
        k: usize,
    },
    /// `nodes` must be `width * height`; each node links to its 4 neighbours.
    Grid {
        nodes: usize,
        width: usize,
    },
    /// Watts–Strogatz: a ring where each node links to `k` nearest, each edge rewired with
    /// probability `rewire`.
    SmallWorld {
        nodes: usize,
        k: usize,
        rewire: f64,
    },
    /// Random waypoint in a `side`×`side` square (metres); a link exists while two nodes
    /// are within `radius`; recomputed every `tick_ms`.
    Mobile {
        nodes: usize,
        side: f64,
        radius: f64,
        #[serde(default = "speed")]
        speed: [f64; 2],
        #[serde(default)]
        pause_s: f64,
        #[serde(default = "thousand")]
        tick_ms: u64,
    },
}

fn speed() -> [f64; 2] {
    [1.0, 3.0]
}
fn thousand() -> u64 {
    1000
}

impl Topology {
    pub fn nodes(&self) -> usize {
        match *self {
            Topology::FullMesh { nodes }
            | Topology::Ring { nodes }
            | Topology::KRegular { nodes, .. }
            | Topology::Grid { nodes, .. }
            | Topology::SmallWorld { nodes, .. }
            | Topology::Mobile { nodes, .. } => nodes,
        }
    }
}

/// A link model for one link (both directions), replacing the default. (No
/// `deny_unknown_fields` here: serde does not support it with `flatten`; the model itself
/// refuses unknown keys.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkOverride {
    pub a: usize,
    pub b: usize,
    #[serde(flatten)]
    pub model: LinkModel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Members drawn uniformly from all nodes.
    Random,
    /// Members are the creator and the nodes nearest it (breadth-first over the topology),
    /// so a room is a connected neighbourhood.
    Local,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub rooms: usize,
    /// Member nodes per room (one user each); 0 means every node.
    #[serde(default)]
    pub members: usize,
    #[serde(default = "placement")]
    pub placement: Placement,
    /// Nodes per room that send; drawn from its members.
    #[serde(default = "three")]
    pub senders: usize,
    /// Events per second per room (Poisson arrivals), over all its senders.
    pub rate_per_room: f64,
    /// Fraction of events that are state changes (`m.room.topic`), the rest messages.
    #[serde(default)]
    pub state_fraction: f64,
    /// Message body size in bytes.
    #[serde(default = "hundred")]
    pub body_bytes: usize,
    /// No sends after this many seconds of the workload (default: its whole duration),
    /// leaving time for the schedule's last heals to be measured.
    #[serde(default)]
    pub stop_sending_s: Option<f64>,
}

fn placement() -> Placement {
    Placement::Random
}
fn three() -> usize {
    3
}
fn hundred() -> usize {
    100
}

/// Nodes that sleep (stopped, restarted later on the same data dir) and wake.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Fraction of nodes that churn; room creators are exempt so every room stays joinable.
    pub fraction: f64,
    /// Mean up and down times, seconds (exponentially distributed).
    pub mean_up_s: f64,
    pub mean_down_s: f64,
}

/// A split into groups at `at_s`, healed at `heal_s`: links between groups are cut.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub at_s: f64,
    pub heal_s: f64,
    /// Explicit groups of node indices; nodes in none form one more group.
    #[serde(default)]
    pub groups: Vec<Vec<usize>>,
    /// Or: split into this many random groups of equal size.
    #[serde(default)]
    pub random_groups: usize,
}

/// Nodes that start only at `at_s` and then join their rooms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LateJoin {
    pub count: usize,
    pub at_s: f64,
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let s: Scenario = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let n = self.topology.nodes();
        if n < 2 {
            bail!("a scenario needs at least 2 nodes");
        }
        if self.duration_s <= 0.0 || self.settle_s < 0.0 {
            bail!("duration_s must be > 0 and settle_s >= 0");
        }
        if self.variants.is_empty() {
            bail!("variants must name at least one of gossip, fullmesh");
        }
        self.link.validate().map_err(anyhow::Error::msg)?;
        for o in &self.link_override {
            o.model.validate().map_err(anyhow::Error::msg)?;
            if o.a >= n || o.b >= n || o.a == o.b {
                bail!("link_override {}–{}: no such link", o.a, o.b);
            }
        }
        match self.topology {
            Topology::KRegular { k, .. } if k == 0 || k >= n || (n * k) % 2 == 1 => {
                bail!("k_regular needs 0 < k < nodes and nodes·k even")
            }
            Topology::SmallWorld { k, rewire, .. }
                if k < 2 || k % 2 == 1 || k >= n || !(0.0..=1.0).contains(&rewire) =>
            {
                bail!("small_world needs an even k with 2 <= k < nodes and 0 <= rewire <= 1")
            }
            Topology::Grid { width, .. } if width == 0 || !n.is_multiple_of(width) => {
                bail!("grid needs nodes = width × height")
            }
            Topology::Mobile { side, radius, .. } if side <= 0.0 || radius <= 0.0 => {
                bail!("mobile needs side > 0 and radius > 0")
            }
            _ => {}
        }
        let w = &self.workload;
        if w.rooms == 0 || w.members == 1 || w.members > n || w.senders == 0 {
            bail!("workload needs rooms >= 1, members 0 (all) or 2..=nodes, senders >= 1");
        }
        if w.rate_per_room <= 0.0 || !(0.0..=1.0).contains(&w.state_fraction) {
            bail!("workload needs rate_per_room > 0 and 0 <= state_fraction <= 1");
        }
        if w.body_bytes > 32 * 1024 {
            bail!("body_bytes must be at most 32768 (a PDU is at most 64 KiB)");
        }
        if let Some(c) = &self.churn
            && (!(0.0..=1.0).contains(&c.fraction) || c.mean_up_s <= 0.0 || c.mean_down_s <= 0.0)
        {
            bail!("churn needs 0 <= fraction <= 1 and positive mean times");
        }
        for p in &self.partition {
            if p.at_s >= p.heal_s || p.at_s.is_nan() {
                bail!("partition at {} s must heal after it starts", p.at_s);
            }
            if p.groups.iter().flatten().any(|&i| i >= n) {
                bail!("partition groups name a node beyond {n}");
            }
            if p.groups.is_empty() && p.random_groups < 2 {
                bail!("a partition needs groups or random_groups >= 2");
            }
        }
        if let Some(l) = &self.late_join
            && (l.count >= n || l.at_s < 0.0)
        {
            bail!("late_join.count must be below the node count");
        }
        Ok(())
    }

    /// Member nodes per room.
    pub fn members_per_room(&self) -> usize {
        match self.workload.members {
            0 => self.topology.nodes(),
            m => m,
        }
    }
}
