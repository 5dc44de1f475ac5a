//! The extremities exchange: per room both servers are in, each side's forward
//! extremities and greatest depth, in pages of [`MAX_ROOMS_PER_FRAME`] rooms sorted by ID.
//!
//! A page covers the room IDs after `after` up to its last room (to the end when
//! `complete`); the answer lists the answerer's rooms shared with the asker in that span,
//! so a room only the answerer knows to be shared is still exchanged. Each side then
//! catches up from the other ([`super::sync::catch_up`]) on the rooms whose extremities it
//! lacks.

use ruma::{OwnedServerName, ServerName};

use super::sync::catch_up;
use crate::p2p::wire::{MAX_EVENT_IDS, MAX_ROOMS_PER_FRAME, Request, Response, RoomHeads};
use crate::services::AppState;
use crate::storage::anti_entropy::{max_depth, shared_rooms};
use crate::storage::events::forward_extremities;
use crate::storage::replication::held;
use crate::{Error, Result};

/// This node's heads of the rooms it shares with `server`, sorted by room ID.
async fn own_heads(s: &AppState, server: &ServerName) -> Result<Vec<RoomHeads>> {
    let server = server.to_string();
    s.db.read(move |c| {
        let mut out = Vec::new();
        for room_id in shared_rooms(c, &server)? {
            let mut extremities = forward_extremities(c, &room_id)?;
            extremities.truncate(MAX_EVENT_IDS);
            let depth = max_depth(c, &room_id)?;
            out.push(RoomHeads {
                room_id,
                extremities,
                depth,
            });
        }
        Ok(out)
    })
    .await
}

/// Whether any of `heads`' extremities is unknown here.
async fn lacks(s: &AppState, heads: &RoomHeads) -> bool {
    let ids = heads.extremities.clone();
    let n = ids.len();
    match s.db.read(move |c| held(c, &ids)).await {
        Ok(have) => have.len() < n,
        Err(_) => false,
    }
}

/// Catches up, one room after another, on those of `theirs` that are shared and lacked.
async fn catch_up_all(s: &AppState, peer: &ServerName, theirs: Vec<RoomHeads>, shared: &[RoomHeads]) {
    for heads in theirs {
        if shared.iter().any(|h| h.room_id == heads.room_id) && lacks(s, &heads).await {
            catch_up(s, peer, heads).await;
        }
    }
}

/// Sends `server` this node's heads of every shared room and catches up on its answer.
/// `false` when the peer could not be asked (retried at its next sighting).
pub async fn exchange(s: &AppState, server: &OwnedServerName) -> bool {
    let mine = match own_heads(s, server).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "reading rooms for an extremities exchange");
            return false;
        }
    };
    let pages: Vec<&[RoomHeads]> = if mine.is_empty() {
        // Still ask: the peer may know of rooms we share that this node does not.
        vec![&[]]
    } else {
        mine.chunks(MAX_ROOMS_PER_FRAME).collect()
    };
    let mut after: Option<String> = None;
    for (i, page) in pages.iter().enumerate() {
        let req = Request::Extremities {
            after: after.clone(),
            rooms: page.to_vec(),
            complete: i + 1 == pages.len(),
        };
        let theirs = match s.p2p.request(server, req).await {
            Ok(Response::Extremities { rooms }) => rooms,
            Ok(other) => {
                tracing::debug!(%server, ?other, "peer refused an extremities exchange");
                return true;
            }
            Err(e) => {
                tracing::debug!(%server, error = %e.message, "extremities exchange failed");
                return false;
            }
        };
        // What the answer says is shared counts only if our own state agrees.
        let shared = match own_heads(s, server).await {
            Ok(h) => h,
            Err(_) => return false,
        };
        catch_up_all(s, server, theirs, &shared).await;
        after = page.last().map(|h| h.room_id.clone());
    }
    true
}

/// Answers an `extremities` page from `origin` and then, in the background, catches up
/// on the rooms whose extremities it names that this node lacks.
pub async fn serve(
    s: &AppState,
    origin: &ServerName,
    after: Option<String>,
    rooms: Vec<RoomHeads>,
    complete: bool,
) -> Response {
    if rooms.len() > MAX_ROOMS_PER_FRAME || rooms.iter().any(|r| r.extremities.len() > MAX_EVENT_IDS) {
        return Error::invalid_param(format!(
            "at most {MAX_ROOMS_PER_FRAME} rooms of at most {MAX_EVENT_IDS} extremities"
        ))
        .into();
    }
    let shared = match own_heads(s, origin).await {
        Ok(h) => h,
        Err(e) => return e.into(),
    };
    let upper = if complete {
        None
    } else {
        rooms.iter().map(|r| r.room_id.clone()).max()
    };
    let in_span =
        |id: &str| after.as_deref().is_none_or(|a| id > a) && upper.as_deref().is_none_or(|u| id <= u);
    let asked = |id: &str| rooms.iter().any(|r| r.room_id == id);
    // The asked rooms we share, then (bounded) the shared ones the asker did not name.
    let mut answer: Vec<RoomHeads> = shared.iter().filter(|h| asked(&h.room_id)).cloned().collect();
    answer.extend(
        shared
            .iter()
            .filter(|h| !asked(&h.room_id) && in_span(&h.room_id))
            .take(MAX_ROOMS_PER_FRAME)
            .cloned(),
    );
    let (s2, origin2) = (s.clone(), origin.to_owned());
    tokio::spawn(async move { catch_up_all(&s2, &origin2, rooms, &shared).await });
    Response::Extremities { rooms: answer }
}
