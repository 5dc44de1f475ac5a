//! The peer side: libp2p over QUIC. One task owns the Swarm ([`swarm`]); everything else
//! reaches it through [`P2p`], a cloneable handle over a bounded command channel.
//!
//! Peer → validation ([`wire`] decoding, [`crate::room::ingest`]) → room state machine →
//! storage → notifier, exactly as for clients; outbound traffic leaves through the durable
//! outbox ([`outbox`]) and gossip.

pub mod discovery;
pub mod join;
pub mod mailbox;
pub mod outbox;
pub mod peer_id;
pub mod reconcile;
pub mod replicate;
pub mod serve;
pub mod swarm;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use ruma::{OwnedServerName, ServerName};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{Error, Result};
use wire::{Request, Response};

/// Depth of the command channel into the swarm task.
pub const COMMAND_QUEUE: usize = 1024;
/// How long a request may take end to end, dial included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the swarm task is asked to do.
pub enum Command {
    Request {
        peer: PeerId,
        req: Request,
        reply: oneshot::Sender<Result<Response>>,
    },
    Respond {
        channel: libp2p::request_response::ResponseChannel<Response>,
        protocol: wire::Protocol,
        res: Response,
    },
    /// Publish a gossip frame on a room's topic (subscribing first if needed).
    Publish {
        room_id: String,
        data: Vec<u8>,
    },
    Subscribe {
        room_id: String,
    },
    Unsubscribe {
        room_id: String,
    },
    /// The verdict on a gossip message held for validation: accepted messages are
    /// forwarded, rejected ones dropped and their source penalised.
    Validated {
        msg_id: libp2p::gossipsub::MessageId,
        source: PeerId,
        verdict: Verdict,
    },
    Dial {
        peer: Option<PeerId>,
        addr: Multiaddr,
    },
    /// Local discovery (mDNS) saw a peer at these addresses.
    Discovered {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    Info {
        reply: oneshot::Sender<NetInfo>,
    },
}

/// Connectivity, as `GET /_meshserver/v1/node` and `meshserver info` report it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetInfo {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
    pub peers: Vec<PeerInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    pub peer_id: String,
    pub server_name: Option<String>,
    pub addrs: Vec<String>,
}

/// What becomes of a gossip message once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and stored: forward it.
    Accept,
    /// Invalid (forged, malformed, unauthorised): drop it and penalise its sender.
    Reject,
    /// Not for us, or not checkable now (its ancestors could not be fetched): drop it
    /// without blaming the honest peer that relayed it.
    Ignore,
}

/// Things other parts of the node react to.
#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// A peer was seen (connected, identified or discovered): retry what it is owed now.
    Seen(OwnedServerName),
    Disconnected(OwnedServerName),
}

/// Counters for what peers sent that was refused.
#[derive(Debug, Default)]
pub struct Counters {
    pub rejected_events: AtomicU64,
    pub bad_frames: AtomicU64,
    pub refused_requests: AtomicU64,
    /// Request frames this node wrote, and their bytes; response bytes it read. What the
    /// anti-entropy tests and benchmarks weigh replication traffic by.
    pub requests_out: AtomicU64,
    pub request_bytes_out: AtomicU64,
    pub response_bytes_in: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The handle the rest of the node holds.
#[derive(Clone)]
pub struct P2p {
    cmd: mpsc::Sender<Command>,
    local_peer: PeerId,
    events: broadcast::Sender<PeerEvent>,
    pub counters: Arc<Counters>,
    /// Rooms whose heads changed, and co-members' last known heads (`replicate::neighbours`).
    pub(crate) neighbours: Arc<replicate::Neighbours>,
    /// Events being stored right now, and whose turn it is to fetch a room's heads.
    pub(crate) inflight: Arc<replicate::InFlight>,
}

impl P2p {
    /// A handle and the receiving end for the swarm task.
    pub fn channel(local_peer: PeerId) -> (P2p, mpsc::Receiver<Command>) {
        let (cmd, rx) = mpsc::channel(COMMAND_QUEUE);
        let (events, _) = broadcast::channel(256);
        (
            P2p {
                cmd,
                local_peer,
                events,
                counters: Arc::default(),
                neighbours: Arc::default(),
                inflight: Arc::default(),
            },
            rx,
        )
    }

    pub(crate) fn command_sender(&self) -> mpsc::Sender<Command> {
        self.cmd.clone()
    }

    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer
    }

    pub fn subscribe_events(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, ev: PeerEvent) {
        let _ = self.events.send(ev);
    }

    async fn send(&self, c: Command) -> Result<()> {
        self.cmd
            .send(c)
            .await
            .map_err(|_| Error::internal("peer network is not running"))
    }

    /// Sends `req` to the node of `server` and waits for its answer. A `Response::Error`
    /// comes back as `Ok`; transport failures (unreachable, timeout, bad frame) as `Err`.
    pub async fn request(&self, server: &ServerName, req: Request) -> Result<Response> {
        let peer = peer_id::peer_id_of(server)
            .ok_or_else(|| Error::invalid_param(format!("{server} is not a meshserver node")))?;
        self.request_peer(peer, req).await
    }

    pub async fn request_peer(&self, peer: PeerId, req: Request) -> Result<Response> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request { peer, req, reply }).await?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::internal("peer network stopped")),
            Err(_) => Err(Error::internal(format!("request to {peer} timed out"))),
        }
    }

    /// Best effort: gossip is repaired by the outbox and by fetching.
    pub async fn publish(&self, room_id: &str, data: Vec<u8>) {
        let _ = self
            .send(Command::Publish {
                room_id: room_id.to_owned(),
                data,
            })
            .await;
    }

    pub async fn subscribe(&self, room_id: &str) {
        let _ = self
            .send(Command::Subscribe {
                room_id: room_id.to_owned(),
            })
            .await;
    }

    pub async fn unsubscribe(&self, room_id: &str) {
        let _ = self
            .send(Command::Unsubscribe {
                room_id: room_id.to_owned(),
            })
            .await;
    }

    pub async fn dial(&self, peer: Option<PeerId>, addr: Multiaddr) {
        let _ = self.send(Command::Dial { peer, addr }).await;
    }

    pub(crate) async fn respond(
        &self,
        channel: libp2p::request_response::ResponseChannel<Response>,
        protocol: wire::Protocol,
        res: Response,
    ) {
        let _ = self
            .send(Command::Respond {
                channel,
                protocol,
                res,
            })
            .await;
    }

    pub(crate) async fn validated(
        &self,
        msg_id: libp2p::gossipsub::MessageId,
        source: PeerId,
        verdict: Verdict,
    ) {
        let _ = self
            .send(Command::Validated {
                msg_id,
                source,
                verdict,
            })
            .await;
    }

    /// Connectivity now; an empty report if the network is not running.
    pub async fn info(&self) -> NetInfo {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Info { reply }).await.is_err() {
            return NetInfo {
                peer_id: self.local_peer.to_string(),
                ..NetInfo::default()
            };
        }
        rx.await.unwrap_or_default()
    }
}
