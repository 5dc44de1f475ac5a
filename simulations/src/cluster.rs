//! One variant's live network: a real meshserver node per index (own data dir, SQLite
//! file, key, swarm), and one netem relay per link. A node reaches a neighbour only
//! through the relay: the relay's port is that neighbour's static peer address on both
//! sides (each side may dial; QUIC tells the two connections apart by connection ID), and
//! nodes do not learn each other's real addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use meshserver::config::Config;
use meshserver::identity::Identity;
use meshserver::netem::{HostAddr, LinkModel, Relay, RelayStats};
use meshserver::node::Node;
use meshserver::password::Passwords;
use ruma::{OwnedServerName, OwnedUserId, UserId};
use tokio::sync::RwLock;

use crate::observe::Observer;
use crate::scenario::{Scenario, Variant};
use crate::topology::{Edge, Graph, edge};

pub struct Slot {
    pub dir: PathBuf,
    pub peer_id: String,
    pub server: OwnedServerName,
    pub user: OwnedUserId,
    pub node: RwLock<Option<Node>>,
    /// Set once the node has started for the first time (late joiners start later).
    pub host: Arc<HostAddr>,
}

/// Link `(a, b)`: the relay's `forward` direction is a→b, `backward` b→a.
pub struct Link {
    pub relay: Relay,
}

pub struct Cluster {
    pub variant: Variant,
    pub graph: Graph,
    pub slots: Vec<Slot>,
    pub links: BTreeMap<Edge, Link>,
    pub observer: Arc<Observer>,
    /// Active partitions (each node's group), by partition index.
    split: std::sync::Mutex<BTreeMap<usize, Vec<usize>>>,
    /// Mobile topology: the links within range now (`None`: every link is in range).
    in_range: std::sync::Mutex<Option<BTreeSet<Edge>>>,
    /// One password-hashing thread for every node: a thread each costs a thousand threads
    /// and their stacks at 1,000 nodes.
    passwords: Passwords,
}

impl Cluster {
    /// Creates the data dirs and keys, binds the relays; starts no node.
    pub async fn new(
        s: &Scenario,
        variant: Variant,
        graph: Graph,
        root: PathBuf,
        seed: u64,
        observer: Arc<Observer>,
    ) -> anyhow::Result<Cluster> {
        let mut slots = Vec::new();
        for i in 0..graph.n {
            let dir = root.join(format!("node-{i:04}"));
            std::fs::create_dir_all(&dir)?;
            let identity = Identity::load_or_create(&dir)?;
            let peer_id = meshserver::p2p::peer_id::keypair(&identity)
                .public()
                .to_peer_id()
                .to_string();
            let server = identity.server_name().to_owned();
            let user = UserId::parse(format!("@u{i}:{server}"))?;
            slots.push(Slot {
                dir,
                peer_id,
                server,
                user,
                node: RwLock::new(None),
                host: HostAddr::new(None),
            });
        }
        let overrides: BTreeMap<Edge, LinkModel> = s
            .link_override
            .iter()
            .map(|o| (edge(o.a, o.b), o.model.clone()))
            .collect();
        let mut links = BTreeMap::new();
        for &(a, b) in &graph.edges {
            let model = overrides.get(&(a, b)).unwrap_or(&s.link).clone();
            let (ha, hb) = (slots[a].host.clone(), slots[b].host.clone());
            let link_seed = seed ^ ((a as u64) << 32 | b as u64);
            let relay = Relay::start(ha, hb, model, link_seed).await?;
            links.insert((a, b), Link { relay });
        }
        Ok(Cluster {
            variant,
            graph,
            slots,
            links,
            observer,
            split: Default::default(),
            in_range: Default::default(),
            passwords: Passwords::start()?,
        })
    }

    /// The static peer addresses of node `i`: each neighbour, through the relay `i` dials.
    fn peers_of(&self, i: usize) -> Vec<String> {
        let mut out = Vec::new();
        for (&(a, b), l) in &self.links {
            let (other, relay) = match (a == i, b == i) {
                (true, _) => (b, &l.relay),
                (_, true) => (a, &l.relay),
                _ => continue,
            };
            out.push(format!(
                "/ip4/127.0.0.1/udp/{}/quic-v1/p2p/{}",
                relay.port(),
                self.slots[other].peer_id
            ));
        }
        out
    }

    /// Starts (or restarts, on the same data dir) node `i` on a fresh port.
    pub async fn start(&self, i: usize) -> anyhow::Result<()> {
        let slot = &self.slots[i];
        let mut guard = slot.node.write().await;
        if guard.is_some() {
            return Ok(());
        }
        // A fresh port each start: a stopped node's old socket may still be bound.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut config = Config::for_data_dir(&slot.dir);
        config.p2p_listen = vec![format!("/ip4/127.0.0.1/udp/{port}/quic-v1").parse()?];
        config.peers = self
            .peers_of(i)
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_, _>>()?;
        config.learn_peer_addresses = false;
        config.gossip = self.variant == Variant::Gossip;
        slot.host.set(Some(SocketAddr::from(([127, 0, 0, 1], port))));
        let node = Node::start_with(config, self.passwords.clone())
            .await
            .with_context(|| format!("starting node {i}"))?;
        let user = slot.user.to_string();
        node.services
            .db
            .write(move |tx| {
                if !meshserver::storage::accounts::user_exists(tx, &user)? {
                    meshserver::storage::accounts::insert_user(tx, &user, None, 0)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating the user of node {i}: {}", e.message))?;
        self.observer.watch(i, node.services.clone());
        *guard = Some(node);
        Ok(())
    }

    /// Stops node `i` as a device going to sleep: off the air first, then shut down.
    pub async fn stop(&self, i: usize) {
        let slot = &self.slots[i];
        slot.host.set(None);
        let node = slot.node.write().await.take();
        self.observer.unwatch(i);
        if let Some(n) = node {
            n.stop().await;
        }
    }

    pub async fn is_up(&self, i: usize) -> bool {
        self.slots[i].node.read().await.is_some()
    }

    pub async fn services(&self, i: usize) -> Option<meshserver::services::AppState> {
        self.slots[i]
            .node
            .read()
            .await
            .as_ref()
            .map(|n| n.services.clone())
    }

    pub fn split(&self, partition: usize, groups: Vec<usize>) {
        if let Ok(mut s) = self.split.lock() {
            s.insert(partition, groups);
        }
        self.apply();
    }

    pub fn heal(&self, partition: usize) {
        if let Ok(mut s) = self.split.lock() {
            s.remove(&partition);
        }
        self.apply();
    }

    pub fn set_in_range(&self, links: Option<BTreeSet<Edge>>) {
        if let Ok(mut r) = self.in_range.lock() {
            *r = links;
        }
        self.apply();
    }

    /// Cuts every link a partition separates or that is out of range; heals the rest.
    fn apply(&self) {
        let split = self.split.lock().map(|s| s.clone()).unwrap_or_default();
        let range = self.in_range.lock().map(|r| r.clone()).unwrap_or_default();
        for (&(a, b), l) in &self.links {
            let separated = split.values().any(|g| g[a] != g[b]);
            let out_of_range = range.as_ref().is_some_and(|r| !r.contains(&(a, b)));
            if separated || out_of_range {
                l.relay.cut();
            } else {
                l.relay.heal();
            }
        }
    }

    /// Every relay's counters, by link.
    pub fn relay_stats(&self) -> BTreeMap<Edge, RelayStats> {
        self.links.iter().map(|(&e, l)| (e, l.relay.stats())).collect()
    }

    pub fn links_up(&self) -> usize {
        self.links.values().filter(|l| l.relay.is_up()).count()
    }

    pub async fn stop_all(&self) {
        for i in 0..self.slots.len() {
            self.stop(i).await;
        }
    }
}
