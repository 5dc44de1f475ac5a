//! Durable delivery: what peers must receive is queued ([`crate::storage::outbox`]) in the
//! transaction that stores it, and sent from here until the peer confirms.
//!
//! Destinations are served concurrently, each by one task with at most one request in
//! flight, in order: messages first (to-device messages carry the room keys that decrypt
//! the events that follow), then room heads. A destination that cannot be reached backs
//! off as a whole (jittered, 250 ms doubling to 4 s, never given up on); seeing the peer
//! again ([`PeerEvent::Seen`]) makes everything it is owed due at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ruma::OwnedServerName;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;

mod to_device;

use super::PeerEvent;
use super::replicate::neighbours;
use super::wire::{self, Request, Response};
use crate::Error;
use crate::api::account::now_ms;
use crate::services::AppState;
use crate::storage::events::forward_extremities;
use crate::storage::outbox::{self as store, Message, RoomHead};

/// Most rows of each table one destination's task reads at a time.
const BATCH: usize = 64;
/// Most destinations served at once.
const MAX_PARALLEL: usize = 64;
/// The longest the worker sleeps with nothing scheduled (a safety net; commits and peer
/// events wake it sooner).
const IDLE: Duration = Duration::from_secs(30);
/// How long a destination's task pauses after its storage failed, so a broken database
/// is not retried in a tight loop.
const FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// Errors after which resending the same row cannot succeed: it is dropped. M_FORBIDDEN
/// on heads means the peer has no member left in the room.
const PERMANENT: &[&str] = &[
    "M_FORBIDDEN",
    "M_BAD_JSON",
    "M_NOT_JSON",
    "M_TOO_LARGE",
    "M_INVALID_PARAM",
    "M_MISSING_PARAM",
    "M_UNRECOGNIZED",
    "M_UNSUPPORTED_ROOM_VERSION",
];

/// Sends the outbox until the node stops (`node.rs` spawns it).
pub async fn run(s: AppState) {
    let mut events = Some(s.p2p.subscribe_events());
    let mut tasks = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, OwnedServerName> = HashMap::new();
    // Per destination being served: set when the peer is seen during a request.
    let mut seen_flags: HashMap<OwnedServerName, Arc<AtomicBool>> = HashMap::new();
    loop {
        // Read before scheduling, so a commit in between still wakes the wait below.
        let pos = s.db.notifier().current();
        let now = now_ms();
        let schedule = match s.db.read(store::schedule).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "reading the outbox failed");
                Vec::new()
            }
        };
        let mut next: Option<i64> = None;
        for (dest, due) in schedule {
            let Ok(server) = OwnedServerName::try_from(dest) else {
                continue;
            };
            if seen_flags.contains_key(&server) {
                continue;
            }
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
            } else if in_flight.len() < MAX_PARALLEL {
                let flag = Arc::new(AtomicBool::new(false));
                seen_flags.insert(server.clone(), flag.clone());
                let handle = tasks.spawn(drain(s.clone(), server.clone(), flag));
                in_flight.insert(handle.id(), server);
            }
        }
        let wait = next.map_or(IDLE, |t| Duration::from_millis((t - now).max(0) as u64).min(IDLE));
        let peer_event = async {
            match events.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = s.db.notifier().wait_past(pos, wait) => {}
            ev = peer_event => match ev {
                Ok(PeerEvent::Seen(server)) => {
                    if let Some(flag) = seen_flags.get(&server) {
                        flag.store(true, Ordering::SeqCst);
                    }
                    reset(&s, Some(server.to_string())).await;
                }
                Ok(PeerEvent::Disconnected(_)) => {}
                // Sightings were missed: treat every peer as seen.
                Err(RecvError::Lagged(_)) => reset(&s, None).await,
                Err(RecvError::Closed) => events = None,
            },
            Some(done) = tasks.join_next_with_id() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(e) => {
                        tracing::error!(error = %e, "outbox task failed");
                        e.id()
                    }
                };
                if let Some(server) = in_flight.remove(&id) {
                    seen_flags.remove(&server);
                }
            }
        }
    }
}

/// Makes the backed-off rows of `dest` (of everyone for `None`) due now.
async fn reset(s: &AppState, dest: Option<String>) {
    let d = dest.clone();
    // Peers are seen often; only a peer actually owed retries costs a write.
    if !s
        .db
        .read(move |c| store::backing_off(c, d.as_deref()))
        .await
        .unwrap_or(true)
    {
        return;
    }
    let now = now_ms();
    if let Err(e) =
        s.db.write(move |tx| store::reset_destination(tx, dest.as_deref(), now))
            .await
    {
        tracing::warn!(error = %e, "resetting outbox backoff failed");
    }
}

/// How one request ended.
enum Sent {
    Ok,
    /// Delivered; the peer's own heads of the room came back (answer to `heads`).
    Heads(Vec<wire::RoomHeads>),
    /// The peer answered with an error.
    Refused {
        errcode: String,
        error: String,
    },
    /// No answer: unreachable, timed out, or a bad frame.
    Unreachable(Error),
}

async fn send(s: &AppState, dest: &OwnedServerName, req: Request, seen: &AtomicBool) -> Sent {
    seen.store(false, Ordering::SeqCst);
    match s.p2p.request(dest, req).await {
        // An invite comes back countersigned; the room already has it, so done is done.
        Ok(Response::Ok {} | Response::Invite { .. }) => Sent::Ok,
        Ok(Response::Extremities { rooms }) => Sent::Heads(rooms),
        Ok(Response::Error { errcode, error }) => Sent::Refused { errcode, error },
        Ok(_) => Sent::Refused {
            errcode: "M_UNKNOWN".into(),
            error: "unexpected response".into(),
        },
        Err(e) => Sent::Unreachable(e),
    }
}

/// A room row with what to send for it: the room's forward extremities now.
struct Head {
    row: RoomHead,
    extremities: Vec<String>,
}

/// Sends `dest` everything due until nothing is, or until it cannot be reached.
async fn drain(s: AppState, dest: OwnedServerName, seen: Arc<AtomicBool>) {
    let d = dest.to_string();
    loop {
        let now = now_ms();
        let key = d.clone();
        // One snapshot: each row's `stream` covers exactly the extremities read with it.
        let batch =
            s.db.read(move |c| {
                let messages = store::due_messages(c, &key, now, BATCH)?;
                let mut heads = Vec::new();
                for row in store::due_rooms(c, &key, now, BATCH)? {
                    let mut extremities = forward_extremities(c, &row.room_id)?;
                    extremities.truncate(wire::MAX_EVENT_IDS);
                    heads.push(Head { row, extremities });
                }
                Ok((messages, heads))
            })
            .await;
        let (messages, heads) = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "reading the outbox failed");
                tokio::time::sleep(FAILURE_PAUSE).await;
                return;
            }
        };
        if messages.is_empty() && heads.is_empty() {
            return;
        }
        match send_batch(&s, &dest, &seen, messages, heads).await {
            Ok(()) => {}
            Err(Stop::Retry) => continue,
            Err(Stop::BackOff(attempts)) => {
                let (key, at) = (d.clone(), now_ms() + store::jittered_backoff_ms(attempts));
                let backed =
                    s.db.write(move |tx| store::back_off_destination(tx, &key, attempts, at))
                        .await;
                if let Err(e) = backed {
                    tracing::warn!(error = %e, "recording outbox backoff failed");
                }
                return;
            }
            Err(Stop::Fatal(e)) => {
                tracing::warn!(error = %e, destination = %dest, "outbox storage failed");
                tokio::time::sleep(FAILURE_PAUSE).await;
                return;
            }
        }
    }
}

/// Why a destination's batch stopped early.
enum Stop {
    /// The peer was seen while the failed request was out: retry at once.
    Retry,
    /// Back the destination off, counting this many failures.
    BackOff(i64),
    Fatal(Error),
}

async fn send_batch(
    s: &AppState,
    dest: &OwnedServerName,
    seen: &AtomicBool,
    messages: Vec<Message>,
    heads: Vec<Head>,
) -> std::result::Result<(), Stop> {
    let d = dest.to_string();
    let failed = |attempts: i64, seen: &AtomicBool| {
        if seen.load(Ordering::SeqCst) {
            Stop::Retry
        } else {
            Stop::BackOff(attempts.saturating_add(1))
        }
    };
    for m in messages {
        let outcome = match message_request(&m) {
            Some(req) => send(s, dest, req, seen).await,
            None => Sent::Refused {
                errcode: "M_BAD_JSON".into(),
                error: "unreadable queued message".into(),
            },
        };
        match outcome {
            Sent::Ok | Sent::Heads(_) => {}
            Sent::Refused { errcode, error } if PERMANENT.contains(&errcode.as_str()) => {
                tracing::warn!(destination = %dest, kind = m.kind, errcode, error, "peer refused a message; dropped");
            }
            Sent::Refused { errcode, error } => {
                // In order per destination: a passing refusal holds back what follows.
                tracing::debug!(destination = %dest, errcode, error, "peer refused a message for now");
                return Err(failed(m.attempts, seen));
            }
            Sent::Unreachable(e) => {
                tracing::debug!(destination = %dest, error = %e, "peer unreachable");
                return Err(failed(m.attempts, seen));
            }
        }
        s.db.write(move |tx| store::delete_message(tx, m.id))
            .await
            .map_err(Stop::Fatal)?;
    }
    for h in heads {
        let req = Request::Heads {
            room_id: h.row.room_id.clone(),
            extremities: h.extremities,
        };
        let row = h.row;
        let now = now_ms();
        let (key, room) = (d.clone(), row.room_id.clone());
        let settled = match send(s, dest, req, seen).await {
            answer @ (Sent::Ok | Sent::Heads(_)) => {
                if let Sent::Heads(rooms) = answer {
                    caught_up_from(s, dest, &row.room_id, rooms);
                }
                s.db.write(move |tx| store::confirm_room(tx, &key, &room, row.stream, now))
                    .await
                    .map(|_| ())
            }
            Sent::Refused { errcode, error } if PERMANENT.contains(&errcode.as_str()) => {
                tracing::debug!(destination = %dest, room = row.room_id, errcode, error, "peer refused heads; dropped");
                s.db.write(move |tx| store::confirm_room(tx, &key, &room, row.stream, now))
                    .await
                    .map(|_| ())
            }
            // Rooms are independent: one the peer cannot take yet waits alone.
            Sent::Refused { errcode, error } => {
                tracing::debug!(destination = %dest, room = row.room_id, errcode, error, "peer refused heads for now");
                let attempts = row.attempts.saturating_add(1);
                let at = now + store::jittered_backoff_ms(attempts);
                s.db.write(move |tx| store::retry_room(tx, &key, &room, attempts, at))
                    .await
            }
            Sent::Unreachable(e) => {
                tracing::debug!(destination = %dest, error = %e, "peer unreachable");
                return Err(failed(row.attempts, seen));
            }
        };
        settled.map_err(Stop::Fatal)?;
    }
    Ok(())
}

/// Learns the heads a peer answered with and, in the background, fetches what of them
/// this node lacks: the origin of the heads may be the one that missed something.
fn caught_up_from(s: &AppState, dest: &OwnedServerName, room_id: &str, rooms: Vec<wire::RoomHeads>) {
    if let Some(theirs) = neighbours::learn_answer(s, dest, room_id, rooms) {
        let (s, dest) = (s.clone(), dest.clone());
        tokio::spawn(async move { neighbours::catch_up_if_lacking(&s, &dest, theirs).await });
    }
}

/// The request carrying a queued message; `None` for one that cannot be read.
fn message_request(m: &Message) -> Option<Request> {
    let content: Value = serde_json::from_str(&m.body).ok()?;
    match m.kind.as_str() {
        store::KIND_TO_DEVICE => Some(Request::ToDevice { content }),
        store::KIND_DEVICE_LIST_UPDATE => Some(Request::DeviceListUpdate { content }),
        store::KIND_INVITE => super::mailbox::invite_request(content),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

pub use to_device::{UserMessages, to_device_edus};
