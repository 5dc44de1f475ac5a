//! Room replication: gossip in and out, the repair path (fetching what a received event
//! lacks from its sender or any member, `heads`), and serving events to other nodes.
//!
//! Stored first, published second ([`publish`]); verified and stored before forwarded
//! ([`gossip`]); gaps fetched in pages and stored a page per transaction ([`fetch`]),
//! jumped with the state at their edge when too long ([`jump`]); events served only as
//! the room's history visibility allows the asking server ([`view`], [`serving`]). A room
//! whose heads changed sends them to its connected co-members ([`neighbours`]), so a
//! repair travels on hop by hop.

mod fetch;
mod gossip;
mod inflight;
mod jump;
pub mod neighbours;
mod publish;
mod serving;
pub mod view;

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use ruma::ServerName;

use super::wire::{MAX_EVENT_IDS, Response};
use crate::services::AppState;
use crate::storage::replication::{held, server_members};

pub(crate) use fetch::{candidates, fetch_events, fetch_heads, holds_all, ingest_with_repair, keyed};
pub use gossip::{REMOTE_TYPING, on_gossip};
pub use inflight::InFlight;
pub use neighbours::Neighbours;
pub use publish::{publish_receipt, publish_typing, run_publisher};
pub use serving::serve;

/// `/meshserver/heads/1`: fetches whatever of `extremities` this node lacks (from `origin`
/// first; a long gap by set reconciliation), and answers only once it holds them all, so
/// the answer confirms delivery. The answer is this node's own heads of the room
/// (`extremities`), so the asker fetches what it lacks in turn.
pub async fn serve_heads(
    s: &AppState,
    origin: &ServerName,
    room_id: String,
    extremities: Vec<String>,
) -> Response {
    if extremities.len() > MAX_EVENT_IDS {
        return Response::error("M_INVALID_PARAM", format!("at most {MAX_EVENT_IDS} extremities"));
    }
    let (room, server, ids) = (room_id.clone(), origin.to_owned(), extremities.clone());
    let known =
        s.db.read(move |c| {
            let joined = server_members(c, &room, server.as_str())?
                .iter()
                .any(|(_, m)| m == "join");
            let have = held(c, &ids)?;
            Ok((
                joined,
                ids.into_iter()
                    .filter(|id| !have.contains(id))
                    .collect::<Vec<_>>(),
            ))
        })
        .await;
    let unknown = match known {
        Ok((false, _)) => return fetch::forbidden(s),
        Ok((true, unknown)) => unknown,
        Err(e) => return e.into(),
    };
    // What the asker holds now: this node's next round skips it if they come to agree.
    let mut theirs = extremities;
    s.p2p
        .neighbours
        .learn(origin, &room_id, neighbours::digest(&mut theirs));
    let unknown = match gossip_grace(s, &room_id, unknown).await {
        Ok(u) => u,
        Err(e) => return e.into(),
    };
    if !unknown.is_empty() {
        if let Err(e) = fetch::fetch_heads(s, origin, &room_id, unknown.clone()).await {
            return e.into();
        }
        match fetch::holds_all(s, &unknown).await {
            Ok(true) => {}
            Ok(false) => return Response::error("M_NOT_FOUND", "could not fetch every head"),
            Err(e) => return e.into(),
        }
    }
    neighbours::answer(s, &room_id).await.unwrap_or(Response::Ok {})
}

/// How long heads wait for events that gossip is still bringing.
const GOSSIP_GRACE: Duration = Duration::from_millis(300);

/// Of `unknown`, those still missing once gossip, while it flows in the room, has had
/// [`GOSSIP_GRACE`] to bring them: in a burst, the sender's heads overtake the gossip
/// frames of its last events, and fetching those would move them twice.
async fn gossip_grace(s: &AppState, room_id: &str, mut unknown: Vec<String>) -> crate::Result<Vec<String>> {
    if unknown.is_empty() || !s.p2p.inflight.gossip_active(room_id) {
        return Ok(unknown);
    }
    let deadline = Instant::now() + GOSSIP_GRACE;
    let notifier = s.db.notifier().clone();
    loop {
        let seen = notifier.current();
        let ids = unknown.clone();
        let have = s.db.read(move |c| held(c, &ids)).await?;
        unknown.retain(|id| !have.contains(id));
        let left = deadline.saturating_duration_since(Instant::now());
        if unknown.is_empty() || left.is_zero() {
            return Ok(unknown);
        }
        notifier.wait_past(seen, left).await;
    }
}
