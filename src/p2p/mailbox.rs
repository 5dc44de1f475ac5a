//! Store-and-forward through any member: `/meshserver/mailbox/1` (proto/README.md §7.7).
//!
//! A message for a node that is away waits in the sender's outbox; once the destination
//! has failed [`sender::STALLED_ATTEMPTS`] times, it is also deposited, signed by its
//! origin ([`item`]), with connected nodes that share a room with the destination
//! ([`sender`]). A holder keeps it durably, within quotas, for a week ([`holder`]).
//!
//! Who collects when: a holder that sees the destination connect and holds mail for it
//! sends one `have_mail` notice (at most once a minute per destination); the destination
//! then collects from that holder only ([`collector`]). So an idle mesh pays one indexed
//! read per sighting and nothing on the wire, and a node never polls peers that hold
//! nothing for it. Collected items are opened by the handlers that serve to-device
//! messages and invites sent directly, which store each message once however many copies
//! arrive.

pub mod collector;
pub mod holder;
pub mod item;
pub mod sender;

use std::time::{Duration, Instant};

use ruma::ServerName;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use super::PeerEvent;
use super::wire::{Request, Response};
use crate::Error;
use crate::services::AppState;

pub use item::{request_for, sign_item, verify_item};

/// How often the sender looks again while some queued mail has not stalled yet.
const POLL: Duration = Duration::from_secs(1);
/// With nothing to watch, a safety-net round this often.
const IDLE: Duration = Duration::from_secs(3600);

/// Answers `/meshserver/mailbox/1` requests from `origin`, the connection's proven name.
pub async fn serve(s: &AppState, origin: &ServerName, req: Request) -> Response {
    let r = match req {
        Request::Deposit { items } => holder::deposit(s, origin, items).await,
        Request::Collect { ack, limit } => holder::collect(s, origin, ack, limit).await,
        Request::Ack { up_to } => holder::ack(s, origin, up_to).await,
        Request::HaveMail { count } => collector::have_mail(s, origin, count).await,
        _ => Err(Error::unrecognized()),
    };
    r.unwrap_or_else(|e| {
        tracing::info!(%origin, errcode = e.errcode, error = %e.message, "refused a mailbox request");
        Response::from(e)
    })
}

/// The outbox's request for a queued invite (`storage::outbox::KIND_INVITE`).
pub fn invite_request(body: Value) -> Option<Request> {
    request_for(crate::storage::outbox::KIND_INVITE, body)
}

/// Runs the sender's deposit rounds and the holder's notices until the node stops
/// (`node.rs` spawns it).
pub async fn run(s: AppState) {
    let mut events = s.p2p.subscribe_events();
    let mut sender = sender::Sender::default();
    let mut notices = holder::Notices::default();
    let mut due = true;
    let mut poll = false;
    let mut last_round: Option<Instant> = None;
    loop {
        let pos = s.db.notifier().current();
        if due {
            // Sightings and commits come in bursts: at most one round per POLL.
            if let Some(wait) = last_round.and_then(|t| POLL.checked_sub(t.elapsed())) {
                tokio::time::sleep(wait).await;
            }
            poll = sender.round(&s).await;
            last_round = Some(Instant::now());
            due = false;
        }
        tokio::select! {
            _ = s.db.notifier().wait_past(pos, if poll { POLL } else { IDLE }) => due = true,
            ev = events.recv() => match ev {
                Ok(PeerEvent::Seen(server)) => {
                    notices.seen(&s, server).await;
                    due = true;
                }
                Ok(PeerEvent::Disconnected(_)) => {}
                Err(RecvError::Lagged(_)) => due = true,
                Err(RecvError::Closed) => return,
            },
        }
    }
}
