//! The one task that owns the libp2p Swarm. Other tasks talk to it through
//! [`super::Command`]s on a bounded channel; it never awaits storage or handlers itself
//! (those run in spawned tasks that answer with commands), so a slow disk cannot stall
//! the network.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, ValidationMode};
use libp2p::kad::{self, store::MemoryStore};
use libp2p::multiaddr::Protocol as AddrProtocol;
use libp2p::request_response::{self as rr, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, ping};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::wire::{self, Codec, Protocol, Request, Response};
use super::{Command, NetInfo, P2p, PeerEvent, PeerInfo, peer_id};
use crate::services::AppState;
use crate::{Error, Result};

/// Inbound requests and gossip messages handled at once; beyond it requests are refused
/// with `M_LIMIT_EXCEEDED` and gossip is ignored (gossip is repaired by fetching).
const MAX_INBOUND_IN_FLIGHT: usize = 64;
/// Most addresses remembered per peer.
const MAX_ADDRS_PER_PEER: usize = 8;
/// First redial delay of an unreachable known peer; doubles up to [`REDIAL_MAX`].
const REDIAL_MIN: Duration = Duration::from_secs(2);
const REDIAL_MAX: Duration = Duration::from_secs(60);
/// Connections stay open while idle: reconnecting costs more battery than keeping one.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    /// Off without address learning: the DHT is a way to learn addresses, and would hand
    /// the dialer ones (another pair's relay, in a test mesh) that the node must not use.
    kad: Toggle<kad::Behaviour<MemoryStore>>,
    join: rr::Behaviour<Codec>,
    invite: rr::Behaviour<Codec>,
    events: rr::Behaviour<Codec>,
    missing: rr::Behaviour<Codec>,
    state: rr::Behaviour<Codec>,
    backfill: rr::Behaviour<Codec>,
    heads: rr::Behaviour<Codec>,
    directory: rr::Behaviour<Codec>,
    profile: rr::Behaviour<Codec>,
    keys: rr::Behaviour<Codec>,
    devices: rr::Behaviour<Codec>,
    to_device: rr::Behaviour<Codec>,
    reconcile: rr::Behaviour<Codec>,
    mailbox: rr::Behaviour<Codec>,
}

impl Behaviour {
    /// One request-response behaviour per protocol: libp2p offers all of a behaviour's
    /// protocols on every outbound stream, so distinct IDs need distinct behaviours.
    fn rpc(&mut self, p: Protocol) -> &mut rr::Behaviour<Codec> {
        match p {
            Protocol::Join => &mut self.join,
            Protocol::Invite => &mut self.invite,
            Protocol::Events => &mut self.events,
            Protocol::Missing => &mut self.missing,
            Protocol::State => &mut self.state,
            Protocol::Backfill => &mut self.backfill,
            Protocol::Heads => &mut self.heads,
            Protocol::Directory => &mut self.directory,
            Protocol::Profile => &mut self.profile,
            Protocol::Keys => &mut self.keys,
            Protocol::Devices => &mut self.devices,
            Protocol::ToDevice => &mut self.to_device,
            Protocol::Reconcile => &mut self.reconcile,
            Protocol::Mailbox => &mut self.mailbox,
        }
    }
}

fn rpc_behaviour(p: Protocol, counters: &Arc<super::Counters>) -> rr::Behaviour<Codec> {
    let cfg = rr::Config::default()
        .with_request_timeout(super::REQUEST_TIMEOUT)
        .with_max_concurrent_streams(MAX_INBOUND_IN_FLIGHT);
    rr::Behaviour::with_codec(
        Codec::counting(counters.clone()),
        [(p.stream_protocol(), ProtocolSupport::Full)],
        cfg,
    )
}

fn build_behaviour(
    key: &libp2p::identity::Keypair,
    learn_addrs: bool,
    counters: &Arc<super::Counters>,
) -> anyhow::Result<Behaviour> {
    let local = key.public().to_peer_id();
    let gossip_cfg = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(wire::MAX_GOSSIP_BYTES + 1024)
        .message_id_fn(|m: &gossipsub::Message| gossipsub::MessageId::from(wire::gossip_message_id(&m.data)))
        .build()
        .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
    // Signed: the message's `source` is the publishing node, which EDUs are checked against.
    let gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_cfg)
        .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
    let mut kad_cfg = kad::Config::new(StreamProtocol::new("/meshserver/kad/1"));
    // Idle traffic costs phone batteries: refresh the routing table every 30 min, not 5.
    kad_cfg.set_periodic_bootstrap_interval(Some(Duration::from_secs(30 * 60)));
    let mut kad = kad::Behaviour::with_config(local, MemoryStore::new(local), kad_cfg);
    kad.set_mode(Some(kad::Mode::Server));
    Ok(Behaviour {
        gossipsub,
        // Without address learning, peers must not hear (or cache) our listen addresses either.
        identify: identify::Behaviour::new(
            identify::Config::new("/meshserver/1".into(), key.public())
                .with_agent_version(agent_version())
                .with_hide_listen_addrs(!learn_addrs)
                .with_cache_size(if learn_addrs { 100 } else { 0 }),
        ),
        ping: ping::Behaviour::default(),
        kad: Toggle::from(learn_addrs.then_some(kad)),
        join: rpc_behaviour(Protocol::Join, counters),
        invite: rpc_behaviour(Protocol::Invite, counters),
        events: rpc_behaviour(Protocol::Events, counters),
        missing: rpc_behaviour(Protocol::Missing, counters),
        state: rpc_behaviour(Protocol::State, counters),
        backfill: rpc_behaviour(Protocol::Backfill, counters),
        heads: rpc_behaviour(Protocol::Heads, counters),
        directory: rpc_behaviour(Protocol::Directory, counters),
        profile: rpc_behaviour(Protocol::Profile, counters),
        keys: rpc_behaviour(Protocol::Keys, counters),
        devices: rpc_behaviour(Protocol::Devices, counters),
        to_device: rpc_behaviour(Protocol::ToDevice, counters),
        reconcile: rpc_behaviour(Protocol::Reconcile, counters),
        mailbox: rpc_behaviour(Protocol::Mailbox, counters),
    })
}

/// An outbound request waiting for its answer; `retried` once a DHT lookup found the peer.
struct Pending {
    peer: PeerId,
    req: Request,
    reply: oneshot::Sender<Result<Response>>,
    retried: bool,
}

struct Known {
    addrs: Vec<Multiaddr>,
    next_dial: Instant,
    backoff: Duration,
    /// Configured with `--peer`: always dialled, whatever the PeerId order.
    static_peer: bool,
}

/// The swarm task's state.
struct Task {
    swarm: Swarm<Behaviour>,
    services: AppState,
    p2p: P2p,
    /// By protocol too: each request-response behaviour numbers its requests from 1.
    pending: HashMap<(Protocol, OutboundRequestId), Pending>,
    lookups: HashMap<kad::QueryId, Vec<Pending>>,
    known: HashMap<PeerId, Known>,
    /// Open connections per peer, and the boot ID each peer last identified with.
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    boots: HashMap<PeerId, String>,
    /// Static peers given without `/p2p/`: dialled by address until their PeerId is known.
    anonymous_peers: Vec<Multiaddr>,
    anonymous_next: Instant,
    inbound: Arc<Semaphore>,
    listen_addrs: Vec<Multiaddr>,
    mdns: Option<super::discovery::Mdns>,
    commands: mpsc::Sender<Command>,
}

/// Builds the swarm, starts listening and spawns the task. The caller aborts the returned
/// task to stop the network: `Services` keeps a command sender, so the channel never closes.
pub async fn spawn(
    services: AppState,
    commands: mpsc::Receiver<Command>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let key = peer_id::keypair(&services.identity);
    let learn_addrs = services.config.learn_peer_addresses;
    let counters = services.p2p.counters.clone();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_quic()
        .with_behaviour(|k| {
            build_behaviour(k, learn_addrs, &counters)
                .map_err(|e| Box::<dyn std::error::Error + Send + Sync>::from(e.to_string()))
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    let p2p = services.p2p.clone();
    let mut task = Task {
        swarm,
        p2p: p2p.clone(),
        pending: HashMap::new(),
        lookups: HashMap::new(),
        known: HashMap::new(),
        connections: HashMap::new(),
        boots: HashMap::new(),
        anonymous_peers: Vec::new(),
        anonymous_next: Instant::now(),
        inbound: Arc::new(Semaphore::new(MAX_INBOUND_IN_FLIGHT)),
        listen_addrs: Vec::new(),
        mdns: None,
        commands: p2p.command_sender(),
        services,
    };
    for addr in task.services.config.p2p_listen.clone() {
        if let Err(e) = task.swarm.listen_on(addr.clone()) {
            // A second node on the same machine finds the default port taken: any free port
            // serves it as well (mDNS and the address book carry the real one).
            let fallback = with_udp_port(&addr, crate::config::DEFAULT_P2P_PORT, 0)
                .ok_or_else(|| anyhow::anyhow!("p2p listen on {addr}: {e:?}"))?;
            tracing::warn!(%addr, error = ?e, "p2p port busy; listening on a free port instead");
            task.swarm
                .listen_on(fallback)
                .map_err(|e| anyhow::anyhow!("p2p listen on {addr}: {e:?}"))?;
        }
    }
    // Wait for the listeners so that callers (and `info`) see the bound ports.
    let wanted = task.services.config.p2p_listen.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while task.listen_addrs.len() < wanted {
        match tokio::time::timeout_at(deadline, task.swarm.select_next_some()).await {
            Ok(ev) => task.on_swarm_event(ev),
            Err(_) => break,
        }
    }
    task.load_address_book().await;
    for addr in task.services.config.peers.clone() {
        task.add_static_peer(addr);
    }
    task.subscribe_joined_rooms().await;
    if task.services.config.mdns {
        match super::discovery::Mdns::start(
            p2p.local_peer_id(),
            &task.services.config.p2p_listen,
            &task.listen_addrs,
            task.commands.clone(),
        ) {
            Ok(m) => task.mdns = Some(m),
            Err(e) => tracing::warn!(error = %e, "mDNS discovery unavailable"),
        }
    }
    // The span names the node in its swarm's logs (simulations/ counts gossip duplicates by it).
    let span = tracing::info_span!("swarm", node = %p2p.local_peer_id());
    Ok(tokio::spawn(tracing::Instrument::instrument(
        task.run(commands),
        span,
    )))
}

impl Task {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut redial = tokio::time::interval(Duration::from_secs(1));
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                _ = redial.tick() => self.redial(),
            }
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Publish { .. } | Command::Subscribe { .. } if !self.services.config.gossip => {}
            Command::Request { peer, req, reply } => self.send_request(Pending {
                peer,
                req,
                reply,
                retried: false,
            }),
            Command::Respond {
                channel,
                protocol,
                res,
            } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .rpc(protocol)
                    .send_response(channel, res)
                    .is_err()
                {
                    tracing::debug!(protocol = protocol.id(), "response channel closed");
                }
            }
            Command::Publish { room_id, data } => {
                let topic = IdentTopic::new(wire::room_topic(&room_id));
                let g = &mut self.swarm.behaviour_mut().gossipsub;
                let _ = g.subscribe(&topic);
                if let Err(e) = g.publish(topic, data) {
                    // No subscribed peer, full queues or a duplicate: the outbox repairs it.
                    tracing::debug!(room_id, error = %e, "gossip publish failed");
                }
            }
            Command::Subscribe { room_id } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&IdentTopic::new(wire::room_topic(&room_id)));
            }
            Command::Unsubscribe { room_id } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .unsubscribe(&IdentTopic::new(wire::room_topic(&room_id)));
            }
            Command::Validated {
                msg_id,
                source,
                verdict,
            } => {
                let verdict = match verdict {
                    super::Verdict::Accept => MessageAcceptance::Accept,
                    super::Verdict::Reject => MessageAcceptance::Reject,
                    super::Verdict::Ignore => MessageAcceptance::Ignore,
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&msg_id, &source, verdict);
            }
            Command::Dial { peer, addr } => match peer {
                Some(p) => {
                    self.learn(p, std::slice::from_ref(&addr));
                    self.dial(p);
                }
                None => {
                    let _ = self.swarm.dial(addr);
                }
            },
            Command::Discovered { peer, addrs } => self.on_discovered(peer, addrs),
            Command::Info { reply } => {
                let _ = reply.send(self.info());
            }
        }
    }

    fn send_request(&mut self, p: Pending) {
        if p.peer == *self.swarm.local_peer_id() {
            let _ = p.reply.send(Err(Error::invalid_param(
                "a node does not send requests to itself",
            )));
            return;
        }
        let protocol = p.req.protocol();
        let addrs = self
            .known
            .get(&p.peer)
            .map(|k| k.addrs.clone())
            .unwrap_or_default();
        let id = self
            .swarm
            .behaviour_mut()
            .rpc(protocol)
            .send_request_with_addresses(&p.peer, p.req.clone(), addrs);
        self.pending.insert((protocol, id), p);
    }

    fn info(&self) -> NetInfo {
        let peers = self
            .swarm
            .connected_peers()
            .map(|p| PeerInfo {
                peer_id: p.to_string(),
                server_name: peer_id::server_name_of(p).map(|s| s.to_string()),
                addrs: self
                    .known
                    .get(p)
                    .map(|k| k.addrs.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
            })
            .collect();
        let me = self.swarm.local_peer_id();
        NetInfo {
            peer_id: me.to_string(),
            listen_addrs: self
                .listen_addrs
                .iter()
                .map(|a| a.clone().with(AddrProtocol::P2p(*me)).to_string())
                .collect(),
            peers,
        }
    }

    /// Remembers addresses of a peer for dialling and the DHT, and persists them.
    fn learn(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let k = self.known.entry(peer).or_insert_with(|| Known {
            addrs: Vec::new(),
            // Give a peer that discovered us too the time to dial first.
            next_dial: Instant::now() + REDIAL_MIN,
            backoff: REDIAL_MIN,
            static_peer: false,
        });
        let mut fresh = Vec::new();
        for a in addrs {
            let a = strip_p2p(a);
            if !k.addrs.contains(&a) {
                if k.addrs.len() >= MAX_ADDRS_PER_PEER {
                    k.addrs.remove(0);
                }
                k.addrs.push(a.clone());
                fresh.push(a);
            }
        }
        for a in &fresh {
            self.swarm.add_peer_address(peer, a.clone());
            if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                kad.add_address(&peer, a.clone());
            }
        }
        if !fresh.is_empty() {
            let db = self.services.db.clone();
            let (peer_s, fresh): (String, Vec<String>) =
                (peer.to_string(), fresh.iter().map(ToString::to_string).collect());
            tokio::spawn(async move {
                let r = db
                    .write(move |tx| crate::storage::peers::remember(tx, &peer_s, &fresh, MAX_ADDRS_PER_PEER))
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "saving peer addresses");
                }
            });
        }
    }

    fn dial(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        let addrs = self.known.get(&peer).map(|k| k.addrs.clone()).unwrap_or_default();
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .build();
        let _ = self.swarm.dial(opts);
    }

    /// mDNS found a peer. Only the smaller PeerId dials, so a pair that discovers each
    /// other holds one connection; either way the peer counts as seen.
    fn on_discovered(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        if self.services.config.learn_peer_addresses {
            self.learn(peer, &routable(&addrs));
        }
        if let Some(server) = peer_id::server_name_of(&peer) {
            self.p2p.emit(PeerEvent::Seen(server));
        }
        if self.swarm.local_peer_id().to_bytes() < peer.to_bytes() {
            self.dial(peer);
        }
    }

    fn add_static_peer(&mut self, addr: Multiaddr) {
        match addr.iter().last() {
            Some(AddrProtocol::P2p(peer)) => {
                self.learn(peer, std::slice::from_ref(&addr));
                if let Some(k) = self.known.get_mut(&peer) {
                    k.static_peer = true;
                }
                self.dial(peer);
            }
            _ => {
                self.anonymous_peers.push(addr.clone());
                let _ = self.swarm.dial(addr);
            }
        }
    }

    /// Redials known peers that are not connected, each on its own backoff.
    fn redial(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .known
            .iter_mut()
            .filter(|(_, k)| k.next_dial <= now && !k.addrs.is_empty())
            .map(|(p, k)| {
                k.next_dial = now + k.backoff;
                k.backoff = (k.backoff * 2).min(REDIAL_MAX);
                *p
            })
            .collect();
        for p in due {
            if !self.swarm.is_connected(&p) {
                self.dial(p);
            }
        }
        // Address-only static peers are dropped from this list once a dial to them succeeds.
        if now >= self.anonymous_next {
            self.anonymous_next = now + REDIAL_MIN * 2;
            for a in self.anonymous_peers.clone() {
                let _ = self.swarm.dial(a);
            }
        }
    }

    async fn load_address_book(&mut self) {
        let book = self
            .services
            .db
            .read(crate::storage::peers::address_book)
            .await
            .unwrap_or_default();
        for (peer, addrs) in book {
            let Ok(peer) = peer.parse::<PeerId>() else {
                continue;
            };
            let addrs: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
            self.learn(peer, &addrs);
            if let Some(k) = self.known.get_mut(&peer) {
                k.next_dial = Instant::now();
            }
        }
    }

    async fn subscribe_joined_rooms(&mut self) {
        if !self.services.config.gossip {
            return;
        }
        let rooms = self
            .services
            .db
            .read(crate::storage::peers::rooms_with_local_members)
            .await
            .unwrap_or_default();
        for room in rooms {
            let _ = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&IdentTopic::new(wire::room_topic(&room)));
        }
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "p2p listening");
                self.listen_addrs.push(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } => {
                self.connections.entry(peer_id).or_default().push(connection_id);
                if endpoint.is_dialer() {
                    self.learn(peer_id, &[endpoint.get_remote_address().clone()]);
                    self.anonymous_peers
                        .retain(|a| a != endpoint.get_remote_address());
                }
                if let Some(k) = self.known.get_mut(&peer_id) {
                    k.backoff = REDIAL_MIN;
                }
                match peer_id::server_name_of(&peer_id) {
                    Some(server) => self.p2p.emit(PeerEvent::Seen(server)),
                    None => {
                        // Not a meshserver identity: nothing it says can be attributed.
                        tracing::info!(%peer_id, "closing connection from a non-ed25519 peer");
                        let _ = self.swarm.disconnect_peer_id(peer_id);
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(c) = self.connections.get_mut(&peer_id) {
                    c.retain(|id| *id != connection_id);
                }
                if num_established > 0 {
                    return;
                }
                self.connections.remove(&peer_id);
                if let Some(server) = peer_id::server_name_of(&peer_id) {
                    self.p2p.emit(PeerEvent::Disconnected(server));
                }
                if let Some(k) = self.known.get_mut(&peer_id) {
                    k.next_dial = Instant::now() + REDIAL_MIN;
                    k.backoff = REDIAL_MIN;
                }
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(propagation_source, message_id, message),
            BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            }) => {
                self.close_stale_connections(peer_id, connection_id, info.agent_version.clone());
                if self.services.config.learn_peer_addresses {
                    self.learn(peer_id, &routable(&info.listen_addrs));
                }
                if let Some(server) = peer_id::server_name_of(&peer_id) {
                    self.p2p.emit(PeerEvent::Seen(server));
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, step, .. }) => {
                if let kad::QueryResult::GetClosestPeers(Ok(ok)) = &result
                    && self.services.config.learn_peer_addresses
                {
                    for p in &ok.peers {
                        self.learn(p.peer_id, &p.addrs);
                    }
                }
                if step.last
                    && let Some(waiting) = self.lookups.remove(&id)
                {
                    for p in waiting {
                        self.send_request(p);
                    }
                }
            }
            BehaviourEvent::Join(e) => self.on_rpc(Protocol::Join, e),
            BehaviourEvent::Invite(e) => self.on_rpc(Protocol::Invite, e),
            BehaviourEvent::Events(e) => self.on_rpc(Protocol::Events, e),
            BehaviourEvent::Missing(e) => self.on_rpc(Protocol::Missing, e),
            BehaviourEvent::State(e) => self.on_rpc(Protocol::State, e),
            BehaviourEvent::Backfill(e) => self.on_rpc(Protocol::Backfill, e),
            BehaviourEvent::Heads(e) => self.on_rpc(Protocol::Heads, e),
            BehaviourEvent::Directory(e) => self.on_rpc(Protocol::Directory, e),
            BehaviourEvent::Profile(e) => self.on_rpc(Protocol::Profile, e),
            BehaviourEvent::Keys(e) => self.on_rpc(Protocol::Keys, e),
            BehaviourEvent::Devices(e) => self.on_rpc(Protocol::Devices, e),
            BehaviourEvent::ToDevice(e) => self.on_rpc(Protocol::ToDevice, e),
            BehaviourEvent::Reconcile(e) => self.on_rpc(Protocol::Reconcile, e),
            BehaviourEvent::Mailbox(e) => self.on_rpc(Protocol::Mailbox, e),
            _ => {}
        }
    }

    /// A peer that identifies with a new boot ID has restarted: its older connections are
    /// dead but QUIC would notice only at the idle timeout (10 s), and requests sent on
    /// them would wait that long. Close them now.
    fn close_stale_connections(&mut self, peer: PeerId, current: ConnectionId, boot: String) {
        let restarted = self
            .boots
            .insert(peer, boot)
            .is_some_and(|old| old != self.boots[&peer]);
        if !restarted {
            return;
        }
        let stale: Vec<ConnectionId> = self
            .connections
            .get(&peer)
            .into_iter()
            .flatten()
            .filter(|id| **id != current)
            .copied()
            .collect();
        if !stale.is_empty() {
            tracing::info!(%peer, n = stale.len(), "peer restarted; closing its stale connections");
        }
        for id in stale {
            self.swarm.close_connection(id);
        }
    }

    fn on_gossip(&mut self, via: PeerId, msg_id: gossipsub::MessageId, message: gossipsub::Message) {
        let Ok(permit) = self.inbound.clone().try_acquire_owned() else {
            // Overloaded: neither forward nor penalise; fetching repairs the gap.
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(&msg_id, &via, MessageAcceptance::Ignore);
            return;
        };
        let s = self.services.clone();
        let p2p = self.p2p.clone();
        let source = message.source.unwrap_or(via);
        tokio::spawn(async move {
            let verdict = super::replicate::on_gossip(&s, source, message.data).await;
            p2p.validated(msg_id, via, verdict).await;
            drop(permit);
        });
    }

    fn on_rpc(&mut self, protocol: Protocol, ev: rr::Event<Request, Response>) {
        match ev {
            rr::Event::Message {
                peer,
                message: rr::Message::Request { request, channel, .. },
                ..
            } => {
                let Some(origin) = peer_id::server_name_of(&peer) else {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .rpc(protocol)
                        .send_response(channel, Response::error("M_FORBIDDEN", "unknown identity"));
                    return;
                };
                let Ok(permit) = self.inbound.clone().try_acquire_owned() else {
                    super::Counters::bump(&self.p2p.counters.refused_requests);
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .rpc(protocol)
                        .send_response(channel, Response::error("M_LIMIT_EXCEEDED", "busy"));
                    return;
                };
                let s = self.services.clone();
                let p2p = self.p2p.clone();
                tokio::spawn(async move {
                    let res = super::serve::handle(&s, &origin, request).await;
                    p2p.respond(channel, protocol, res).await;
                    drop(permit);
                });
            }
            rr::Event::Message {
                message: rr::Message::Response { request_id, response },
                ..
            } => {
                if let Some(p) = self.pending.remove(&(protocol, request_id)) {
                    let _ = p.reply.send(Ok(response));
                }
            }
            rr::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let Some(p) = self.pending.remove(&(protocol, request_id)) else {
                    return;
                };
                if matches!(error, rr::OutboundFailure::DialFailure)
                    && !p.retried
                    && let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
                {
                    // Unknown or stale addresses: ask the DHT where the peer is, then retry once.
                    let q = kad.get_closest_peers(peer);
                    self.lookups
                        .entry(q)
                        .or_default()
                        .push(Pending { retried: true, ..p });
                    return;
                }
                let _ = p
                    .reply
                    .send(Err(Error::internal(format!("request to {peer} failed: {error}"))));
            }
            rr::Event::InboundFailure { peer, error, .. } => {
                super::Counters::bump(&self.p2p.counters.bad_frames);
                tracing::debug!(%peer, protocol = protocol.id(), %error, "inbound request failed");
            }
            rr::Event::ResponseSent { .. } => {}
        }
    }
}

/// `meshserver/<version> boot/<random>`: the boot ID changes with every start, so a peer
/// can tell a restart from a second connection of the same process.
fn agent_version() -> String {
    format!(
        "meshserver/{} boot/{:016x}",
        env!("CARGO_PKG_VERSION"),
        rand::random::<u64>()
    )
}

/// `addr` with its UDP port `from` replaced by `to`; `None` if it has another port.
fn with_udp_port(addr: &Multiaddr, from: u16, to: u16) -> Option<Multiaddr> {
    let mut changed = false;
    let out = addr
        .iter()
        .map(|p| match p {
            AddrProtocol::Udp(port) if port == from => {
                changed = true;
                AddrProtocol::Udp(to)
            }
            p => p,
        })
        .collect();
    changed.then_some(out)
}

/// The addresses worth dialling among those a peer announces: a loopback address is the
/// peer only on this host, and then its other addresses reach it too, so loopback is kept
/// only when it is all there is; scope-less IPv6 link-local addresses cannot be dialled.
fn routable(addrs: &[Multiaddr]) -> Vec<Multiaddr> {
    let ip_of = |a: &Multiaddr| match a.iter().next() {
        Some(AddrProtocol::Ip4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(AddrProtocol::Ip6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    };
    let usable: Vec<Multiaddr> = addrs
        .iter()
        .filter(|a| !matches!(ip_of(a), Some(std::net::IpAddr::V6(v6)) if v6.is_unicast_link_local()))
        .cloned()
        .collect();
    let (loopback, other): (Vec<_>, Vec<_>) = usable
        .into_iter()
        .partition(|a| ip_of(a).is_some_and(|ip| ip.is_loopback()));
    if other.is_empty() { loopback } else { other }
}

fn strip_p2p(a: &Multiaddr) -> Multiaddr {
    a.iter().filter(|p| !matches!(p, AddrProtocol::P2p(_))).collect()
}
