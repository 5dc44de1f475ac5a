//! Node configuration: TOML file, overridden by `MESHSERVER_*` environment variables,
//! overridden by command-line flags. README.md documents every key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use libp2p::Multiaddr;
use serde::Deserialize;

pub const DEFAULT_CLIENT_LISTEN: &str = "127.0.0.1:8008";

/// Settings as they may appear in the config file, the environment or on the command line.
/// Every field is optional so that the three sources can be layered.
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory holding the signing key and the SQLite database.
    #[arg(long, env = "MESHSERVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the Client-Server API listens on.
    #[arg(long, env = "MESHSERVER_CLIENT_LISTEN")]
    pub client_listen: Option<SocketAddr>,
    /// Allow registration without a token (default: only when listening on loopback).
    #[arg(long, env = "MESHSERVER_REGISTRATION_OPEN")]
    pub registration_open: Option<bool>,
    /// Token that lets a client register when registration is not open.
    #[arg(long, env = "MESHSERVER_REGISTRATION_TOKEN")]
    pub registration_token: Option<String>,
    /// SQLite `synchronous` mode: `normal` (durable across process crashes) or `full`
    /// (also across power loss, at the cost of an fsync per write).
    #[arg(long, env = "MESHSERVER_SQLITE_SYNCHRONOUS")]
    pub sqlite_synchronous: Option<String>,
    /// Maximum request body size in bytes for the Client-Server API.
    #[arg(long, env = "MESHSERVER_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Maximum size in bytes of one media upload (default 50 MiB).
    #[arg(long, env = "MESHSERVER_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// Multiaddr the peer network listens on (repeatable; default all interfaces, UDP 8449, QUIC).
    #[arg(long = "p2p-listen", env = "MESHSERVER_P2P_LISTEN", value_delimiter = ',')]
    pub p2p_listen: Option<Vec<String>>,
    /// A peer to dial at start and keep redialling, e.g. `/ip4/10.0.0.2/udp/8449/quic-v1`
    /// (repeatable).
    #[arg(long = "peer", env = "MESHSERVER_PEERS", value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Discover peers on the LAN by mDNS (default on; `--no-mdns` turns it off).
    #[arg(
        long = "no-mdns",
        env = "MESHSERVER_MDNS",
        num_args = 0,
        default_missing_value = "false"
    )]
    pub mdns: Option<bool>,
    /// Learn peers' addresses from identify, the DHT and mDNS (default on). Config file only:
    /// off where a harness (tests/convergence) must be the one path between nodes.
    #[arg(skip)]
    pub learn_peer_addresses: Option<bool>,
}

impl Settings {
    /// Fills every unset field from `other`.
    fn or(self, other: Settings) -> Settings {
        Settings {
            data_dir: self.data_dir.or(other.data_dir),
            client_listen: self.client_listen.or(other.client_listen),
            registration_open: self.registration_open.or(other.registration_open),
            registration_token: self.registration_token.or(other.registration_token),
            sqlite_synchronous: self.sqlite_synchronous.or(other.sqlite_synchronous),
            max_request_bytes: self.max_request_bytes.or(other.max_request_bytes),
            max_upload_bytes: self.max_upload_bytes.or(other.max_upload_bytes),
            p2p_listen: self.p2p_listen.or(other.p2p_listen),
            peers: self.peers.or(other.peers),
            mdns: self.mdns.or(other.mdns),
            learn_peer_addresses: self.learn_peer_addresses.or(other.learn_peer_addresses),
        }
    }
}

/// The resolved configuration a node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub client_listen: SocketAddr,
    pub registration_open: bool,
    pub registration_token: Option<String>,
    pub sqlite_full_sync: bool,
    pub max_request_bytes: usize,
    pub max_upload_bytes: u64,
    pub p2p_listen: Vec<Multiaddr>,
    pub peers: Vec<Multiaddr>,
    pub mdns: bool,
    /// Learn peers' addresses from identify, the DHT and mDNS (static peers always are).
    /// Off only where a harness must be the one path between nodes (simulations/).
    pub learn_peer_addresses: bool,
    /// Replicate rooms over gossipsub; off, events travel only as the outbox's direct
    /// heads from their origin (the simulator's full-mesh baseline).
    pub gossip: bool,
}

impl Config {
    /// Layers `cli` (flags and environment, as clap parsed them) over the TOML file.
    pub fn resolve(cli: Settings, config_file: Option<&Path>) -> anyhow::Result<Config> {
        let file = match config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?
            }
            None => Settings::default(),
        };
        Self::from_settings(cli.or(file))
    }

    pub fn from_settings(s: Settings) -> anyhow::Result<Config> {
        let data_dir = match s.data_dir {
            Some(d) => d,
            None => default_data_dir()?,
        };
        let client_listen = s.client_listen.unwrap_or_else(|| {
            DEFAULT_CLIENT_LISTEN
                .parse()
                .expect("default listen address parses")
        });
        let sqlite_full_sync = match s.sqlite_synchronous.as_deref().unwrap_or("normal") {
            "normal" => false,
            "full" => true,
            other => anyhow::bail!("sqlite_synchronous must be `normal` or `full`, not `{other}`"),
        };
        Ok(Config {
            data_dir,
            registration_open: s.registration_open.unwrap_or(client_listen.ip().is_loopback()),
            client_listen,
            registration_token: s.registration_token,
            sqlite_full_sync,
            max_request_bytes: s.max_request_bytes.unwrap_or(1024 * 1024),
            max_upload_bytes: s.max_upload_bytes.unwrap_or(50 * 1024 * 1024),
            p2p_listen: multiaddrs("p2p_listen", s.p2p_listen.unwrap_or_else(default_p2p_listen))?,
            peers: multiaddrs("peers", s.peers.unwrap_or_default())?,
            mdns: s.mdns.unwrap_or(true),
            learn_peer_addresses: s.learn_peer_addresses.unwrap_or(true),
            gossip: true,
        })
    }

    /// A configuration for tests and embedding: the given data dir, an ephemeral loopback port.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        Config::from_settings(Settings {
            data_dir: Some(data_dir.into()),
            client_listen: Some("127.0.0.1:0".parse().expect("literal address")),
            p2p_listen: Some(vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()]),
            mdns: Some(false),
            ..Settings::default()
        })
        .expect("defaults are valid")
    }
}

pub const DEFAULT_P2P_PORT: u16 = 8449;

fn default_p2p_listen() -> Vec<String> {
    vec![format!("/ip4/0.0.0.0/udp/{DEFAULT_P2P_PORT}/quic-v1")]
}

fn multiaddrs(key: &str, items: Vec<String>) -> anyhow::Result<Vec<Multiaddr>> {
    items
        .iter()
        .map(|a| {
            a.trim()
                .parse::<Multiaddr>()
                .with_context(|| format!("{key}: `{a}` is not a multiaddr"))
        })
        .collect()
}

/// `~/.local/share/meshserver` on Linux (the platform's data dir elsewhere).
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    let base = dirs::data_dir().context("no platform data directory; pass --data-dir")?;
    Ok(base.join("meshserver"))
}
