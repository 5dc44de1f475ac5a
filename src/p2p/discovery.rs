//! LAN discovery by mDNS, with the `mdns-sd` crate rather than libp2p's own mDNS: libp2p's
//! skips loopback interfaces (so two nodes on one machine never meet) and queries only every
//! five minutes; `mdns-sd` answers on loopback too, and we re-query every few seconds.
//!
//! Each node registers `<PeerId>._meshserver._udp.local.` with its QUIC port; a resolved
//! instance becomes `/ipX/<addr>/udp/<port>/quic-v1` addresses for the swarm task.

use std::net::IpAddr;
use std::time::Duration;

use libp2p::multiaddr::Protocol as AddrProtocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;

use super::Command;

pub const SERVICE_TYPE: &str = "_meshserver._udp.local.";
/// How often the network is asked again, so a peer that came back is found within seconds.
pub const QUERY_INTERVAL: Duration = Duration::from_secs(5);

pub struct Mdns {
    daemon: ServiceDaemon,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Mdns {
    /// Announces this node and starts browsing; discovered peers go to the swarm task.
    ///
    /// `configured` are the listen addresses as configured (an unspecified IP means every
    /// interface), `bound` those the swarm reported, which carry the real port.
    pub fn start(
        local: PeerId,
        configured: &[Multiaddr],
        bound: &[Multiaddr],
        commands: mpsc::Sender<Command>,
    ) -> anyhow::Result<Mdns> {
        let port = bound
            .iter()
            .find_map(|a| {
                a.iter().find_map(|p| match p {
                    AddrProtocol::Udp(port) => Some(port),
                    _ => None,
                })
            })
            .ok_or_else(|| anyhow::anyhow!("no UDP listen address to announce"))?;
        let daemon = ServiceDaemon::new()?;
        // Loopback too: several nodes on one machine (tests, simulations) must find each other.
        daemon.enable_interface(mdns_sd::IfKind::LoopbackV4)?;
        let name = local.to_string();
        let host = format!("{name}.local.");
        // Announce the addresses actually listened on; an unspecified one means every interface.
        let ips: Vec<IpAddr> = configured
            .iter()
            .filter_map(|a| match a.iter().next() {
                Some(AddrProtocol::Ip4(ip)) => Some(IpAddr::V4(ip)),
                Some(AddrProtocol::Ip6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            })
            .collect();
        let every_interface = ips.is_empty() || ips.iter().any(IpAddr::is_unspecified);
        let props = &[("peer_id", name.as_str())][..];
        let info = if every_interface {
            ServiceInfo::new(SERVICE_TYPE, &name, &host, "", port, props)?.enable_addr_auto()
        } else {
            ServiceInfo::new(SERVICE_TYPE, &name, &host, &ips[..], port, props)?
        };
        daemon.register(info)?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let browser = daemon.clone();
        tokio::spawn(browse(browser, local, commands, stop_rx));
        Ok(Mdns { daemon, stop })
    }
}

/// Dropped with the swarm task (also when it is aborted): stop announcing and browsing.
impl Drop for Mdns {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = self.daemon.shutdown();
    }
}

async fn browse(
    daemon: ServiceDaemon,
    local: PeerId,
    commands: mpsc::Sender<Command>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let Ok(events) = daemon.browse(SERVICE_TYPE) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + QUERY_INTERVAL;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(deadline) => break,
                ev = events.recv_async() => match ev {
                    Ok(ServiceEvent::ServiceResolved(svc)) => {
                        if let Some((peer, addrs)) = peer_of(&svc)
                            && peer != local
                            && commands.try_send(Command::Discovered { peer, addrs }).is_err()
                        {
                            tracing::debug!("swarm busy; mDNS discovery dropped");
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        // A fresh browse sends a new query and reports cached instances again.
        let _ = daemon.stop_browse(SERVICE_TYPE);
    }
}

fn peer_of(svc: &mdns_sd::ResolvedService) -> Option<(PeerId, Vec<Multiaddr>)> {
    let peer: PeerId = svc.get_property_val_str("peer_id")?.parse().ok()?;
    let port = svc.get_port();
    let addrs = svc
        .get_addresses()
        .iter()
        .take(8)
        .map(|ip| {
            let ip_proto = match ip.to_ip_addr() {
                IpAddr::V4(v4) => AddrProtocol::Ip4(v4),
                IpAddr::V6(v6) => AddrProtocol::Ip6(v6),
            };
            Multiaddr::empty()
                .with(ip_proto)
                .with(AddrProtocol::Udp(port))
                .with(AddrProtocol::QuicV1)
        })
        .collect();
    Some((peer, addrs))
}
