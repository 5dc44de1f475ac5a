//! Who is in a room: `/joined_rooms`, `/rooms/{roomId}/members` (optionally at a past
//! point, or as of when the user left) and `/rooms/{roomId}/joined_members`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::Uri;
use rusqlite::Connection;
use serde_json::{Map, Value, json};

use crate::api::extract::Auth;
use crate::api::render::{Viewer, client_event};
use crate::api::room_events::{parse_room_id, parse_stream_token, query_map};
use crate::room::visibility::{RoomAccess, room_access};
use crate::services::AppState;
use crate::storage::events::{get_event, get_pdu};
use crate::storage::rooms as store;
use crate::storage::state::load_group;
use crate::storage::sync::state_group_at;
use crate::{Error, Result};

/// `GET /_matrix/client/v3/joined_rooms`
pub async fn joined_rooms(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>> {
    let rooms =
        s.db.read(move |c| store::joined_rooms(c, auth.user_id.as_str()))
            .await?;
    Ok(Json(json!({"joined_rooms": rooms})))
}

const MEMBERSHIPS: &[&str] = &["join", "invite", "knock", "leave", "ban"];

fn membership_param(q: &HashMap<String, String>, name: &str) -> Result<Option<String>> {
    match q.get(name) {
        Some(m) if !MEMBERSHIPS.contains(&m.as_str()) => {
            Err(Error::invalid_param(format!("unknown {name} {m}")))
        }
        v => Ok(v.cloned()),
    }
}

/// IDs of the member events in the state a user may see at `at` (a stream position):
/// the current state for members and readers of a world-readable room, for former
/// members the state when they left (or earlier). A user who forgot the room sees nothing.
fn member_ids_at(conn: &Connection, room_id: &str, user: &str, at: Option<i64>) -> Result<Vec<String>> {
    if store::local_membership(conn, user, room_id)?.is_some_and(|m| m.forgotten) {
        return Err(Error::forbidden("You have forgotten this room"));
    }
    let group = match (room_access(conn, room_id, user)?, at) {
        (RoomAccess::Departed { stream, state_group }, at) if at.is_none_or(|a| a >= stream) => {
            Some(state_group)
        }
        (RoomAccess::Departed { .. }, Some(a)) => state_group_at(conn, room_id, a)?,
        (_, Some(a)) => state_group_at(conn, room_id, a)?,
        (_, None) => {
            let current = store::member_event_ids(conn, room_id)?;
            return Ok(current.into_iter().map(|(id, _)| id).collect());
        }
    };
    let state = match group {
        Some(g) => load_group(conn, g)?,
        None => Default::default(),
    };
    let mut members: Vec<_> = state
        .into_iter()
        .filter(|((t, _), _)| t == "m.room.member")
        .collect();
    members.sort();
    Ok(members.into_iter().map(|(_, id)| id).collect())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`
pub async fn members(
    State(s): State<AppState>,
    auth: Auth,
    Path(room_id): Path<String>,
    uri: Uri,
) -> Result<Json<Value>> {
    let q = query_map(&uri)?;
    let room_id = parse_room_id(&room_id)?;
    let want = membership_param(&q, "membership")?;
    let not = membership_param(&q, "not_membership")?;
    let at = q.get("at").map(|t| parse_stream_token(t)).transpose()?;
    let chunk =
        s.db.read(move |c| {
            let ids = member_ids_at(c, room_id.as_str(), auth.user_id.as_str(), at)?;
            let viewer = Viewer {
                user_id: auth.user_id.as_str(),
                device_id: &auth.device_id,
            };
            let mut chunk = Vec::new();
            for id in ids {
                let Some(ev) = get_event(c, &id)? else { continue };
                let content = ev.pdu.content_value();
                let m = content
                    .get("membership")
                    .and_then(Value::as_str)
                    .unwrap_or("leave");
                let keep = match (&want, &not) {
                    (None, None) => true,
                    (Some(w), None) => m == w,
                    (None, Some(n)) => m != n,
                    (Some(w), Some(n)) => m == w || m != n,
                };
                if keep {
                    chunk.push(client_event(c, &ev, Some(viewer), true)?);
                }
            }
            Ok(chunk)
        })
        .await?;
    Ok(Json(json!({"chunk": chunk})))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`
pub async fn joined_members(
    State(s): State<AppState>,
    auth: Auth,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let joined =
        s.db.read(move |c| {
            let room = room_id.as_str();
            if store::membership(c, room, auth.user_id.as_str())?.as_deref() != Some("join") {
                return Err(Error::forbidden("You are not in this room"));
            }
            let mut joined = HashMap::new();
            for (id, m) in store::member_event_ids(c, room)? {
                if m.as_deref() != Some("join") {
                    continue;
                }
                let Some(pdu) = get_pdu(c, &id) else { continue };
                let Some(user) = pdu.state_key.clone() else {
                    continue;
                };
                let content = pdu.content_value();
                let mut info = Map::new();
                if let Some(d) = content.get("displayname").and_then(Value::as_str) {
                    info.insert("display_name".into(), d.into());
                }
                if let Some(a) = content.get("avatar_url").and_then(Value::as_str) {
                    info.insert("avatar_url".into(), a.into());
                }
                joined.insert(user, Value::Object(info));
            }
            Ok(joined)
        })
        .await?;
    Ok(Json(json!({"joined": joined})))
}
