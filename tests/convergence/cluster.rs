//! An episode's nodes: `meshserver run` processes, each pair linked only through a netem
//! relay, so a cut link loses real packets and a killed node loses its unsynced memory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use meshserver::netem::{HostAddr, LinkModel, Relay};
use serde_json::Value;

use crate::support::{BIN, Client, NodeProcess, free_port};

/// Every request of the fuzzer gives up after this long: a hung node must fail an
/// operation, not the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Slot {
    pub dir: tempfile::TempDir,
    config: PathBuf,
    client_port: u16,
    /// Fixed for the node's life, so the relays' view of it stays right across restarts.
    p2p_addr: SocketAddr,
    host: Arc<HostAddr>,
    pub server_name: String,
    pub client: Client,
    process: Option<NodeProcess>,
}

impl Slot {
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("meshserver.db")
    }
}

pub struct Cluster {
    pub slots: Vec<Slot>,
    /// The relay between nodes `i < j`.
    relays: BTreeMap<(usize, usize), Relay>,
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?)
}

/// A loopback UDP port nobody holds at the moment.
fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `meshserver info --json` on a fresh data dir: creates the node's key, names its peer ID.
fn identity_of(dir: &std::path::Path) -> anyhow::Result<(String, String)> {
    let out = Command::new(BIN)
        .args(["info", "--json", "--data-dir"])
        .arg(dir)
        .env_remove("MESHSERVER_CONFIG")
        .stderr(Stdio::null())
        .output()
        .context("running meshserver info")?;
    ensure!(out.status.success(), "meshserver info failed: {}", out.status);
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let peer = v["peer_id"].as_str().context("no peer_id")?.to_owned();
    let server = v["server_name"].as_str().context("no server_name")?.to_owned();
    Ok((peer, server))
}

impl Cluster {
    /// Creates `n` nodes and their relays, writes their configs and starts them all.
    pub async fn start(n: usize, seed: u64) -> anyhow::Result<Cluster> {
        let mut ids = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let dir = tempfile::Builder::new()
                .prefix(&format!("convergence-n{i}-"))
                .tempdir()?;
            ids.push(identity_of(dir.path())?);
            dirs.push(dir);
        }
        let mut relays = BTreeMap::new();
        let mut hosts = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..n {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
            hosts.push(HostAddr::new(None));
            addrs.push(addr);
        }
        for i in 0..n {
            for j in i + 1..n {
                let relay_seed = seed ^ ((i as u64) << 8 | j as u64);
                let relay = Relay::start(
                    hosts[i].clone(),
                    hosts[j].clone(),
                    LinkModel::default(),
                    relay_seed,
                )
                .await?;
                relays.insert((i, j), relay);
            }
        }
        let mut slots = Vec::new();
        for (i, dir) in dirs.into_iter().enumerate() {
            let peers: Vec<String> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let port = relays[&(i.min(j), i.max(j))].port();
                    format!("\"/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{}\"", ids[j].0)
                })
                .collect();
            let client_port = free_port()?;
            let config = dir.path().join("config.toml");
            std::fs::write(
                &config,
                format!(
                    "client_listen = \"127.0.0.1:{client_port}\"\n\
                     p2p_listen = [\"/ip4/127.0.0.1/udp/{}/quic-v1\"]\n\
                     peers = [{}]\n\
                     mdns = false\n\
                     learn_peer_addresses = false\n",
                    addrs[i].port(),
                    peers.join(", ")
                ),
            )?;
            slots.push(Slot {
                dir,
                config,
                client_port,
                p2p_addr: addrs[i],
                host: hosts[i].clone(),
                server_name: ids[i].1.clone(),
                client: Client::new(http_client()?, format!("http://127.0.0.1:{client_port}")),
                process: None,
            });
        }
        let mut cluster = Cluster { slots, relays };
        let starts: Vec<_> = (0..n).map(|i| cluster.spawn(i)).collect();
        for (i, p) in futures::future::join_all(starts).await.into_iter().enumerate() {
            cluster.slots[i].process = Some(p.with_context(|| format!("starting node {i}"))?);
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.slots[i].process.is_some()
    }

    fn spawn(&self, i: usize) -> impl Future<Output = anyhow::Result<NodeProcess>> + use<> {
        let slot = &self.slots[i];
        slot.host.set(Some(slot.p2p_addr));
        let client = slot.client.clone();
        let dir = slot.dir.path().to_owned();
        let args = vec!["--config".to_owned(), slot.config.display().to_string()];
        async move { NodeProcess::spawn(&client, &dir, &args, None, Duration::from_millis(50)).await }
    }

    /// SIGKILL: no shutdown path runs, whatever was not committed is gone.
    pub fn kill(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.host.set(None);
        // NodeProcess's drop is `kill -9` and a wait.
        drop(slot.process.take());
    }

    /// Starts node `i` again on its data dir, with the same config.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.is_up(i) {
            return Ok(());
        }
        // The old process's pooled connections died with it.
        let base = format!("http://127.0.0.1:{}", self.slots[i].client_port);
        self.slots[i].client = Client::new(http_client()?, base);
        let p = self
            .spawn(i)
            .await
            .with_context(|| format!("restarting node {i}"))?;
        self.slots[i].process = Some(p);
        Ok(())
    }

    /// Cuts every link between nodes in different groups, heals the rest.
    pub fn partition(&self, groups: &[usize]) {
        for (&(i, j), relay) in &self.relays {
            if groups[i] == groups[j] {
                relay.heal();
            } else {
                relay.cut();
            }
        }
    }

    pub fn heal_all(&self) {
        for relay in self.relays.values() {
            relay.heal();
        }
    }

    /// Stops every running node (SIGTERM, then SIGKILL after 10 s).
    pub async fn stop_all(&mut self) -> anyhow::Result<()> {
        for slot in &mut self.slots {
            slot.host.set(None);
            if let Some(p) = slot.process.take() {
                p.terminate().await?;
            }
        }
        Ok(())
    }
}
