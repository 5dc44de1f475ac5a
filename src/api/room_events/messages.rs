//! Timeline pagination: `GET /rooms/{roomId}/messages` and `GET /rooms/{roomId}/context/{eventId}`.

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::routing::get;
use axum::{Json, Router};
use ruma::api::client::filter::RoomEventFilter;
use rusqlite::Connection;
use serde_json::{Value, json};

use super::read::{viewer, visible_event};
use super::{
    MAX_LIMIT, limit_param, parse_event_id, parse_room_id, parse_stream_token, query_map, room_filter,
    stream_token,
};
use crate::api::client;
use crate::api::extract::Auth;
use crate::api::filter::room_event_matches;
use crate::api::render::client_events;
use crate::room::visibility::{RoomAccess, Visibility, room_access};
use crate::services::AppState;
use crate::storage::events::{StoredEvent, get_event, room_events, state_group_of, stream_position};
use crate::storage::state::load_group;
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/rooms/{room_id}/messages", get(messages));
    client(r, "/rooms/{room_id}/context/{event_id}", get(context))
}

const DEFAULT_LIMIT: usize = 10;
/// Rows read per query while filling a page; filtered-out events make a page need more.
const BATCH: usize = 100;

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
async fn messages(
    State(s): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let q = query_map(&uri)?;
    let backwards = match q.get("dir").map(String::as_str) {
        Some("b") => true,
        Some("f") => false,
        Some(d) => return Err(Error::invalid_param(format!("dir must be `b` or `f`, not {d:?}"))),
        None => return Err(Error::missing_param("dir is required")),
    };
    let from_token = q.get("from").cloned();
    let from = from_token.as_deref().map(parse_stream_token).transpose()?;
    let to = q.get("to").map(|t| parse_stream_token(t)).transpose()?;
    let filter = room_filter(&q)?;
    let limit = limit_param(&q, default_limit(&filter))?;
    s.db.read(move |c| {
        let user = auth.user_id.as_str();
        let access = room_access(c, room.as_str(), user)?;
        let now = stream_position(c)?;
        let cap = visible_until(access);
        // A departed user pages no later than their leave.
        let from = if backwards {
            from.unwrap_or(now).min(cap)
        } else {
            from.unwrap_or(0)
        };
        let (after, before) = if backwards {
            (to.unwrap_or(0), from.saturating_add(1))
        } else {
            (from, to.unwrap_or(i64::MAX).min(cap).saturating_add(1))
        };
        let start = from_token.unwrap_or_else(|| stream_token(from));
        let mut vis = Visibility::new(c, room.as_str(), user)?;
        let page = paginate(
            c,
            room.as_str(),
            &mut vis,
            &filter,
            (after, before),
            backwards,
            limit,
        )?;
        let mut res = json!({
            "chunk": client_events(c, &page.events, Some(viewer(&auth)), true)?,
            "start": start,
        });
        if page.more {
            res["end"] = stream_token(page.reached).into();
        }
        Ok(Json(res))
    })
    .await
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
async fn context(
    State(s): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path((room_id, event_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let event_id = parse_event_id(&event_id)?;
    let q = query_map(&uri)?;
    let filter = room_filter(&q)?;
    let limit = limit_param(&q, default_limit(&filter))?;
    s.db.read(move |c| {
        let (room, user) = (room.as_str(), auth.user_id.as_str());
        let cap = visible_until(room_access(c, room, user)?);
        let ev = visible_event(c, room, event_id.as_str(), user)?;
        let mut vis = Visibility::new(c, room, user)?;
        let before_limit = limit / 2;
        let before = paginate(
            c,
            room,
            &mut vis,
            &filter,
            (0, ev.stream_ordering),
            true,
            before_limit,
        )?;
        let after_window = (ev.stream_ordering, cap.saturating_add(1));
        let after = paginate(
            c,
            room,
            &mut vis,
            &filter,
            after_window,
            false,
            limit - before_limit,
        )?;
        // "The state of the room at the last event returned."
        let last = after.events.last().unwrap_or(&ev);
        let state = match state_group_of(c, last.pdu.event_id.as_str())? {
            Some(group) => {
                let mut state = Vec::new();
                for id in load_group(c, group)?.values() {
                    state.extend(get_event(c, id)?.filter(|e| room_event_matches(&filter, &e.pdu)));
                }
                state.sort_by_key(|e| e.stream_ordering);
                state
            }
            None => Vec::new(),
        };
        let viewer = Some(viewer(&auth));
        Ok(Json(json!({
            "event": crate::api::render::client_event(c, &ev, viewer, true)?,
            "events_before": client_events(c, &before.events, viewer, true)?,
            "events_after": client_events(c, &after.events, viewer, true)?,
            "start": stream_token(before.reached),
            "end": stream_token(after.reached),
            "state": client_events(c, &state, viewer, true)?,
        })))
    })
    .await
}

fn default_limit(filter: &RoomEventFilter) -> usize {
    filter
        .limit
        .and_then(|l| usize::try_from(u64::from(l)).ok())
        .unwrap_or(DEFAULT_LIMIT)
        .min(MAX_LIMIT)
}

/// The last stream position a reader may page to.
fn visible_until(access: RoomAccess) -> i64 {
    match access {
        RoomAccess::Departed { stream, .. } => stream,
        RoomAccess::Joined | RoomAccess::WorldReadable => i64::MAX - 1,
    }
}

/// One page of a room's timeline.
pub(super) struct Page {
    pub events: Vec<StoredEvent>,
    /// The token position just past the last event looked at (returned or filtered out).
    pub reached: i64,
    /// Whether events remain in the window past `reached`.
    pub more: bool,
}

/// Fills a page with up to `limit` events of the window `(after, before)` (exclusive
/// stream positions) that match `filter` and the reader may see, walking from `before`
/// down when `backwards`, else from `after` up. Each event is looked at once, so
/// consecutive pages neither repeat nor skip events.
fn paginate(
    c: &Connection,
    room_id: &str,
    vis: &mut Visibility<'_>,
    filter: &RoomEventFilter,
    window: (i64, i64),
    backwards: bool,
    limit: usize,
) -> Result<Page> {
    let fetch = |after, before, n| room_events(c, room_id, after, before, backwards, n);
    paginate_with(fetch, vis, filter, window, backwards, limit)
}

/// [`paginate`] over any ordered source: `fetch(after, before, n)` returns up to `n`
/// events strictly inside the window, in the direction of travel.
pub(super) fn paginate_with(
    mut fetch: impl FnMut(i64, i64, usize) -> Result<Vec<StoredEvent>>,
    vis: &mut Visibility<'_>,
    filter: &RoomEventFilter,
    (mut after, mut before): (i64, i64),
    backwards: bool,
    limit: usize,
) -> Result<Page> {
    let mut events = Vec::new();
    while events.len() < limit {
        let batch = fetch(after, before, BATCH)?;
        if batch.is_empty() {
            break;
        }
        for ev in batch {
            if backwards {
                before = ev.stream_ordering;
            } else {
                after = ev.stream_ordering;
            }
            if room_event_matches(filter, &ev.pdu) && vis.can_see(&ev)? {
                events.push(ev);
                if events.len() == limit {
                    break;
                }
            }
        }
    }
    let more = !fetch(after, before, 1)?.is_empty();
    let reached = if backwards {
        before.saturating_sub(1)
    } else {
        after
    };
    Ok(Page {
        events,
        reached,
        more,
    })
}
