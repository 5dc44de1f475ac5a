//! Heads to connected co-members after a room changes: anti-entropy that follows activity.
//!
//! Gossip and the outbox deliver an origin's own events to the nodes it reaches, and
//! reconcile-on-connect covers new connections. An event a node stores later (gossip, a
//! fetch, a catch-up) reaches a neighbour that missed it only if someone tells that
//! neighbour: so once a room's forward extremities change, the node sends `heads` to each
//! *connected* peer whose server has a joined member there, unless that peer's last known
//! heads already equal its own. The answer carries the peer's heads, so both sides fetch
//! what they lack, and a repair on one node is a change that travels on, hop by hop.
//!
//! Debounced per room: a round fires [`QUIET`] (plus up to [`JITTER`], so two neighbours
//! rarely ask each other at once) after the room's last change, or [`MAX_HOLD`] after the
//! first change of a burst that goes on. Rounds follow only changes, and a round between
//! nodes that agree stores nothing, so they fall silent: a converged quiet room has no
//! timer and sends nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use ruma::{OwnedServerName, ServerName};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::candidates;
use crate::p2p::PeerEvent;
use crate::p2p::reconcile::catch_up;
use crate::p2p::wire::{MAX_EVENT_IDS, Request, Response, RoomHeads};
use crate::services::AppState;
use crate::storage::anti_entropy::max_depth;
use crate::storage::events::forward_extremities;
use crate::storage::replication::{has_local_member, held};

/// How long a room must be still before its round.
pub const QUIET: Duration = Duration::from_secs(1);
/// Most random delay added to [`QUIET`].
pub const JITTER: Duration = Duration::from_secs(1);
/// Longest a changing room waits for its round.
pub const MAX_HOLD: Duration = Duration::from_secs(5);
/// Rounds running at once; other due rooms wait their turn.
const MAX_ROUNDS: usize = 16;
/// Retries of a round some peer did not answer, each after twice the last pause.
const MAX_RETRIES: u32 = 3;
const RETRY: Duration = Duration::from_secs(2);
/// Bounds on what is remembered of peers' heads; past them it is forgotten (which costs
/// at most one extra round per room).
const MAX_KNOWN_PEERS: usize = 1024;
const MAX_KNOWN_ROOMS: usize = 4096;

/// A digest of a sorted list of extremities.
pub type Digest = [u8; 32];

/// Sorts `ids`, keeps the first [`MAX_EVENT_IDS`] and digests them: the same heads give
/// the same digest on every node.
pub fn digest(ids: &mut Vec<String>) -> Digest {
    ids.sort();
    ids.dedup();
    ids.truncate(MAX_EVENT_IDS);
    let mut h = blake3::Hasher::new();
    for id in ids.iter() {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    *h.finalize().as_bytes()
}

/// A room waiting for its round.
struct Pending {
    first: Instant,
    last: Instant,
    jitter: Duration,
    /// Set for a retry: when it is due.
    retry: Option<Instant>,
}

impl Pending {
    fn due(&self) -> Instant {
        match self.retry {
            Some(at) => at,
            None => (self.last + QUIET + self.jitter).min(self.first + MAX_HOLD),
        }
    }
}

#[derive(Default)]
struct Inner {
    pending: HashMap<String, Pending>,
    /// Per peer and room, the digest of the peer's heads as it last told them.
    known: HashMap<OwnedServerName, HashMap<String, Digest>>,
    /// Rooms being caught up from an answer.
    catching_up: HashSet<String>,
}

/// The shared side of the task: changes in, peers' heads learnt from requests and answers.
#[derive(Default)]
pub struct Neighbours {
    inner: Mutex<Inner>,
    wake: Notify,
}

impl Neighbours {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a cache: a panic elsewhere leaves it usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The room's forward extremities may have changed (an event of it was stored).
    pub fn changed(&self, room_id: &str) {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.pending.get_mut(room_id) {
            Some(p) => {
                p.last = now;
                p.retry = None;
            }
            None => {
                let jitter = JITTER.mul_f64(rand::random_range(0.0..1.0));
                inner.pending.insert(
                    room_id.to_owned(),
                    Pending {
                        first: now,
                        last: now,
                        jitter,
                        retry: None,
                    },
                );
            }
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// `peer` holds heads of `room_id` whose digest is `d`.
    pub fn learn(&self, peer: &ServerName, room_id: &str, d: Digest) {
        let mut inner = self.lock();
        if inner.known.len() >= MAX_KNOWN_PEERS && !inner.known.contains_key(peer) {
            inner.known.clear();
        }
        let rooms = inner.known.entry(peer.to_owned()).or_default();
        if rooms.len() >= MAX_KNOWN_ROOMS && !rooms.contains_key(room_id) {
            rooms.clear();
        }
        rooms.insert(room_id.to_owned(), d);
    }

    fn agrees(&self, peer: &ServerName, room_id: &str, d: &Digest) -> bool {
        self.lock()
            .known
            .get(peer)
            .and_then(|r| r.get(room_id))
            .is_some_and(|k| k == d)
    }

    fn forget(&self, peer: &ServerName) {
        self.lock().known.remove(peer);
    }

    /// Takes up to `room` due rooms; returns them and when the next one falls due.
    fn take_due(
        &self,
        now: Instant,
        room: usize,
        running: &HashSet<String>,
    ) -> (Vec<String>, Option<Instant>) {
        let mut inner = self.lock();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for (id, p) in &inner.pending {
            let at = p.due();
            if at <= now && due.len() < room && !running.contains(id) {
                due.push(id.clone());
            } else if !running.contains(id) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        for id in &due {
            inner.pending.remove(id);
        }
        (due, next)
    }

    /// A round of `room_id` left a peer unanswered (the `attempts`-th time): try again.
    fn retry(&self, room_id: &str, attempts: u32) {
        let at = Instant::now() + RETRY * 2u32.pow(attempts.min(8));
        let mut inner = self.lock();
        // A change that came meanwhile schedules its own round.
        if inner.pending.contains_key(room_id) {
            return;
        }
        let now = Instant::now();
        inner.pending.insert(
            room_id.to_owned(),
            Pending {
                first: now,
                last: now,
                jitter: Duration::ZERO,
                retry: Some(at),
            },
        );
    }
}

/// Runs rounds as rooms fall due, until the node stops (`node.rs` spawns it).
pub async fn run(s: AppState) {
    let n = s.p2p.neighbours.clone();
    let mut events = Some(s.p2p.subscribe_events());
    let mut tasks: JoinSet<bool> = JoinSet::new();
    let mut ids: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut running: HashSet<String> = HashSet::new();
    let mut attempts: HashMap<String, u32> = HashMap::new();
    loop {
        let (due, next) = n.take_due(Instant::now(), MAX_ROUNDS - running.len(), &running);
        for room in due {
            running.insert(room.clone());
            let (s, r) = (s.clone(), room.clone());
            let handle = tasks.spawn(async move { round(&s, &r).await });
            ids.insert(handle.id(), room);
        }
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let peer_event = async {
            match events.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = n.wake.notified() => {}
            _ = sleep => {}
            ev = peer_event => match ev {
                // Heads a peer told on an earlier connection may be stale by its next one.
                Ok(PeerEvent::Disconnected(server)) => n.forget(&server),
                Ok(PeerEvent::Seen(_)) => {}
                Err(RecvError::Lagged(_)) => n.lock().known.clear(),
                Err(RecvError::Closed) => events = None,
            },
            Some(done) = tasks.join_next_with_id() => {
                let (id, ok) = match done {
                    Ok((id, ok)) => (id, ok),
                    Err(e) => {
                        tracing::error!(error = %e, "a heads round failed");
                        (e.id(), true)
                    }
                };
                let Some(room) = ids.remove(&id) else { continue };
                running.remove(&room);
                let tried = attempts.remove(&room).unwrap_or(0);
                if !ok && tried < MAX_RETRIES {
                    n.retry(&room, tried);
                    attempts.insert(room, tried + 1);
                }
            }
        }
    }
}

/// This node's heads of a room it is joined to, sorted, with their digest.
async fn own_heads(s: &AppState, room_id: &str) -> Option<(RoomHeads, Digest)> {
    let room = room_id.to_owned();
    let read =
        s.db.read(move |c| {
            if !has_local_member(c, &room)? {
                return Ok(None);
            }
            Ok(Some((forward_extremities(c, &room)?, max_depth(c, &room)?)))
        })
        .await;
    let (mut extremities, depth) = read.ok()??;
    let d = digest(&mut extremities);
    Some((
        RoomHeads {
            room_id: room_id.to_owned(),
            extremities,
            depth,
        },
        d,
    ))
}

/// The answer to a `heads` request: this node's heads of the room, or `None` when it is
/// not in it.
pub async fn answer(s: &AppState, room_id: &str) -> Option<Response> {
    let (heads, _) = own_heads(s, room_id).await?;
    Some(Response::Extremities { rooms: vec![heads] })
}

/// One round: `heads` to every connected co-member not known to agree. `false` when some
/// peer could not be asked.
async fn round(s: &AppState, room_id: &str) -> bool {
    let Some((mine, d)) = own_heads(s, room_id).await else {
        return true;
    };
    if mine.extremities.is_empty() {
        return true;
    }
    let Ok(members) = candidates(s, room_id, None).await else {
        return false;
    };
    let connected = s.p2p.info().await.peers;
    let mut asks = JoinSet::new();
    for server in connected
        .into_iter()
        .filter_map(|p| OwnedServerName::try_from(p.server_name?).ok())
    {
        if !members.contains(&server) || s.p2p.neighbours.agrees(&server, room_id, &d) {
            continue;
        }
        let (s, room, ids) = (s.clone(), room_id.to_owned(), mine.extremities.clone());
        asks.spawn(async move { ask(&s, &server, &room, ids).await });
    }
    let mut ok = true;
    while let Some(r) = asks.join_next().await {
        ok &= r.unwrap_or(false);
    }
    ok
}

/// Sends `server` this node's heads and catches up on what its answer names that this
/// node lacks. `false` when it did not answer (worth a retry).
async fn ask(s: &AppState, server: &ServerName, room_id: &str, extremities: Vec<String>) -> bool {
    let req = Request::Heads {
        room_id: room_id.to_owned(),
        extremities,
    };
    match s.p2p.request(server, req).await {
        Ok(Response::Extremities { rooms }) => {
            if let Some(theirs) = learn_answer(s, server, room_id, rooms) {
                catch_up_if_lacking(s, server, theirs).await;
            }
            true
        }
        // Refused for good (no member left there) or answered without heads.
        Ok(Response::Error { errcode, .. }) if errcode == "M_FORBIDDEN" => true,
        Ok(Response::Error { errcode, error }) => {
            tracing::debug!(%server, room_id, errcode, error, "peer refused a heads round");
            false
        }
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(%server, room_id, error = %e.message, "heads round failed");
            false
        }
    }
}

/// Records the heads of `room_id` that `peer` answered with; returns them when well
/// formed. What an answer says about other rooms is ignored.
pub fn learn_answer(
    s: &AppState,
    peer: &ServerName,
    room_id: &str,
    rooms: Vec<RoomHeads>,
) -> Option<RoomHeads> {
    let mut theirs = rooms.into_iter().find(|h| h.room_id == room_id)?;
    if theirs.extremities.len() > MAX_EVENT_IDS {
        return None;
    }
    let d = digest(&mut theirs.extremities);
    s.p2p.neighbours.learn(peer, room_id, d);
    Some(theirs)
}

/// Fetches from `peer` what of its heads `theirs` this node lacks (a long gap by set
/// reconciliation), unless the room is already being caught up.
pub async fn catch_up_if_lacking(s: &AppState, peer: &ServerName, theirs: RoomHeads) {
    let ids = theirs.extremities.clone();
    let n = ids.len();
    let lacking = s.db.read(move |c| held(c, &ids)).await.is_ok_and(|h| h.len() < n);
    if !lacking {
        return;
    }
    let room = theirs.room_id.clone();
    if !s.p2p.neighbours.lock().catching_up.insert(room.clone()) {
        // The running catch-up stores events; the round after it asks this peer again.
        return;
    }
    let _done = CatchingUp(s, room);
    catch_up(s, peer, theirs).await;
}

/// Clears a room's catching-up mark however its catch-up ends (cancelled included).
struct CatchingUp<'a>(&'a AppState, String);

impl Drop for CatchingUp<'_> {
    fn drop(&mut self) {
        self.0.p2p.neighbours.lock().catching_up.remove(&self.1);
    }
}

#[cfg(test)]
mod tests;
