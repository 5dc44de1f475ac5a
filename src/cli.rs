//! The offline subcommands: `meshserver info` and `meshserver user add`.

use std::sync::Arc;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::config::Config;
use crate::node::open_services;

pub fn info(config: Config, json: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let identity = crate::identity::Identity::load_or_create(&config.data_dir)?;
    let client_url = format!("http://{}", config.client_listen);
    let peer_id = crate::p2p::peer_id::keypair(&identity).public().to_peer_id();
    let addrs = dialable_addrs(&config.p2p_listen, peer_id);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "server_name": identity.server_name(),
                "peer_id": peer_id.to_string(),
                "p2p_addrs": addrs,
                "data_dir": config.data_dir,
                "client_url": client_url,
                "key_id": identity.key_id(),
            })
        );
    } else {
        println!("server_name: {}", identity.server_name());
        println!("peer_id:     {peer_id}");
        println!("data_dir:    {}", config.data_dir.display());
        println!("client_url:  {client_url}");
        for a in &addrs {
            println!("p2p_addr:    {a}");
        }
    }
    Ok(())
}

/// The multiaddrs other nodes can `--peer` to reach this one once it runs: unspecified
/// listen addresses expand to each interface's address, each ends in `/p2p/<PeerId>`.
fn dialable_addrs(listen: &[Multiaddr], peer_id: PeerId) -> Vec<String> {
    let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
    let mut out = Vec::new();
    for addr in listen {
        let mut parts = addr.iter();
        let wanted_v4 = match parts.next() {
            Some(Protocol::Ip4(ip)) if ip.is_unspecified() => Some(true),
            Some(Protocol::Ip6(ip)) if ip.is_unspecified() => Some(false),
            _ => None,
        };
        let rest: Vec<Protocol> = parts.collect();
        match wanted_v4 {
            None => out.push(addr.clone()),
            Some(v4) => {
                for i in interfaces.iter().filter(|i| i.ip().is_ipv4() == v4) {
                    let ip = match i.ip() {
                        std::net::IpAddr::V4(a) => Protocol::Ip4(a),
                        std::net::IpAddr::V6(a) => Protocol::Ip6(a),
                    };
                    out.push(std::iter::once(ip).chain(rest.iter().cloned()).collect());
                }
            }
        }
    }
    out.into_iter()
        .map(|a| a.with(Protocol::P2p(peer_id)).to_string())
        .collect()
}

pub async fn user_add(config: Config, name: &str, password: String) -> anyhow::Result<()> {
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    let services = Arc::new(open_services(config)?.0);
    let user_id = crate::api::account::user_id_for(&services, name).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::api::account::create_user(&services, &user_id, Some(password))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{user_id}");
    Ok(())
}
