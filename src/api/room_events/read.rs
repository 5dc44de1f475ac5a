//! Reading state and single events: `GET /state`, `GET /state/{eventType}[/{stateKey}]`,
//! `GET /event/{eventId}`.

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::routing::get;
use axum::{Json, Router};
use rusqlite::Connection;
use serde_json::Value;

use super::send::{put_state, put_state_empty_key};
use super::{parse_event_id, parse_room_id, query_map};
use crate::api::client;
use crate::api::extract::Auth;
use crate::api::render::{Viewer, client_event};
use crate::room::visibility::{RoomAccess, Visibility, room_access};
use crate::services::AppState;
use crate::storage::events::{StoredEvent, get_event, state_entry_at};
use crate::storage::state::{current_state_id, current_state_ids, load_group};
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/rooms/{room_id}/state", get(all_state));
    let r = client(
        r,
        "/rooms/{room_id}/state/{event_type}/{state_key}",
        get(state_event).put(put_state),
    );
    // An empty state key may drop its segment, with or without the trailing slash.
    let r = client(
        r,
        "/rooms/{room_id}/state/{event_type}",
        get(state_event_empty_key).put(put_state_empty_key),
    );
    let r = client(
        r,
        "/rooms/{room_id}/state/{event_type}/",
        get(state_event_empty_key).put(put_state_empty_key),
    );
    client(r, "/rooms/{room_id}/event/{event_id}", get(event))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
async fn all_state(
    State(s): State<AppState>,
    auth: Auth,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    s.db.read(move |c| {
        let ids = match room_access(c, room.as_str(), auth.user_id.as_str())? {
            RoomAccess::Joined | RoomAccess::WorldReadable => current_state_ids(c, room.as_str())?,
            RoomAccess::Departed { state_group, .. } => load_group(c, state_group)?,
        };
        let mut events: Vec<StoredEvent> = Vec::with_capacity(ids.len());
        for id in ids.values() {
            events.extend(get_event(c, id)?);
        }
        events.sort_by_key(|e| e.stream_ordering);
        let viewer = viewer(&auth);
        let rendered = events
            .iter()
            .map(|e| client_event(c, e, Some(viewer), true))
            .collect::<Result<Vec<_>>>()?;
        Ok(Json(Value::Array(rendered)))
    })
    .await
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
async fn state_event(
    State(s): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path((room_id, event_type, state_key)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    state_event_inner(s, auth, uri, room_id, event_type, state_key).await
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}` (empty state key)
async fn state_event_empty_key(
    State(s): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path((room_id, event_type)): Path<(String, String)>,
) -> Result<Json<Value>> {
    state_event_inner(s, auth, uri, room_id, event_type, String::new()).await
}

async fn state_event_inner(
    s: AppState,
    auth: Auth,
    uri: Uri,
    room_id: String,
    event_type: String,
    state_key: String,
) -> Result<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let whole_event = match query_map(&uri)?.get("format").map(String::as_str) {
        None | Some("content") => false,
        Some("event") => true,
        Some(f) => return Err(Error::invalid_param(format!("unknown format {f:?}"))),
    };
    s.db.read(move |c| {
        let id = match room_access(c, room.as_str(), auth.user_id.as_str())? {
            RoomAccess::Joined | RoomAccess::WorldReadable => {
                current_state_id(c, room.as_str(), &event_type, &state_key)?
            }
            RoomAccess::Departed { state_group, .. } => {
                state_entry_at(c, state_group, &event_type, &state_key)?
            }
        };
        let ev = match id {
            Some(id) => get_event(c, &id)?,
            None => None,
        }
        .ok_or_else(|| Error::not_found("No such state event"))?;
        if whole_event {
            Ok(Json(client_event(c, &ev, Some(viewer(&auth)), true)?))
        } else {
            Ok(Json(ev.pdu.content_value()))
        }
    })
    .await
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
async fn event(
    State(s): State<AppState>,
    auth: Auth,
    Path((room_id, event_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let event_id = parse_event_id(&event_id)?;
    s.db.read(move |c| {
        let ev = visible_event(c, room.as_str(), event_id.as_str(), auth.user_id.as_str())?;
        Ok(Json(client_event(c, &ev, Some(viewer(&auth)), true)?))
    })
    .await
}

/// An event of `room_id` that `user_id` may see; `M_NOT_FOUND` otherwise, so a reader
/// cannot tell hidden events from missing ones.
pub(super) fn visible_event(
    c: &Connection,
    room_id: &str,
    event_id: &str,
    user_id: &str,
) -> Result<StoredEvent> {
    let not_found = || Error::not_found("Event not found");
    let ev = get_event(c, event_id)?.ok_or_else(not_found)?;
    if ev.pdu.room.as_str() != room_id || !Visibility::new(c, room_id, user_id)?.can_see(&ev)? {
        return Err(not_found());
    }
    Ok(ev)
}

pub(super) fn viewer(auth: &Auth) -> Viewer<'_> {
    Viewer {
        user_id: auth.user_id.as_str(),
        device_id: &auth.device_id,
    }
}
