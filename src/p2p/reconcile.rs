//! Anti-entropy: what any reachable member holds reaches this node, at the least traffic.
//!
//! Once per connection, the node with the smaller PeerId sends the other its forward
//! extremities of every room both are in (`extremities`, [`exchange`]); each side fetches
//! what it lacks from the other. A short gap is walked by the repair path
//! (`replicate::fetch`); a long one is settled by range-based set reconciliation of the
//! room's event IDs ([`set`], [`sync`]) and fetched in bulk, in key order. Nothing here is
//! periodic: a converged, quiet room costs no replication traffic at all.

mod exchange;
pub mod set;
mod sync;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use ruma::{OwnedServerName, ServerName};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;

use super::wire::{Request, Response};
use super::{PeerEvent, peer_id};
use crate::services::AppState;

pub use sync::{CatchUp, catch_up, reconcile_room};

/// `/meshserver/reconcile/1`: `extremities`, `reconcile` and `get_range` from `origin`.
pub async fn serve(s: &AppState, origin: &ServerName, req: Request) -> Response {
    match req {
        Request::Extremities {
            after,
            rooms,
            complete,
        } => exchange::serve(s, origin, after, rooms, complete).await,
        Request::Reconcile {
            room_id,
            key,
            lower,
            ranges,
        } => sync::serve_round(s, origin, &room_id, &key, lower, ranges).await,
        Request::GetRange {
            room_id,
            lo,
            hi,
            limit,
        } => sync::serve_range(s, origin, &room_id, lo, hi, limit).await,
        _ => Response::error("M_UNRECOGNIZED", "not a reconcile request"),
    }
}

/// Whether this node starts the exchange with `server`: the smaller PeerId does, so one
/// connection costs one exchange.
fn initiates(s: &AppState, server: &ServerName) -> bool {
    peer_id::peer_id_of(server).is_some_and(|p| s.p2p.local_peer_id().to_bytes() < p.to_bytes())
}

/// Exchanges extremities with each peer once per connection, until the node stops
/// (`node.rs` spawns it).
pub async fn run(s: AppState) {
    let mut events = s.p2p.subscribe_events();
    let mut state = Peers::default();
    // Peers that connected before this task subscribed.
    for p in s.p2p.info().await.peers {
        if let Some(name) = p.server_name.and_then(|n| OwnedServerName::try_from(n).ok()) {
            state.start(&s, name);
        }
    }
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(PeerEvent::Seen(server)) => state.start(&s, server),
                Ok(PeerEvent::Disconnected(server)) => {
                    state.done.remove(&server);
                    if state.running.values().any(|r| *r == server) {
                        state.stale.insert(server);
                    }
                }
                // Missed sightings: each peer's next one is handled as usual.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            Some(joined) = state.tasks.join_next_with_id() => {
                let (id, ok) = match joined {
                    Ok((id, ok)) => (id, ok),
                    Err(e) => (e.id(), false),
                };
                if let Some(server) = state.running.remove(&id)
                    && !state.stale.remove(&server)
                    && ok
                {
                    state.done.insert(server);
                }
            }
        }
    }
}

/// The exchange's bookkeeping: peers exchanged with on their current connection, the
/// exchanges running, and those whose peer disconnected meanwhile.
#[derive(Default)]
struct Peers {
    done: HashSet<OwnedServerName>,
    running: HashMap<tokio::task::Id, OwnedServerName>,
    stale: HashSet<OwnedServerName>,
    tasks: JoinSet<bool>,
}

impl Peers {
    fn start(&mut self, s: &AppState, server: OwnedServerName) {
        if self.done.contains(&server)
            || self.running.values().any(|r| *r == server)
            || !initiates(s, &server)
        {
            return;
        }
        let s = s.clone();
        let peer = server.clone();
        let handle = self
            .tasks
            .spawn(async move { exchange::exchange(&s, &peer).await });
        self.running.insert(handle.id(), server);
    }
}
