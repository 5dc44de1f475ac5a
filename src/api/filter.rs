//! Filters: `POST/GET /user/{userId}/filter[/{filterId}]`, and the matching of events
//! against a filter definition (ruma's `FilterDefinition` types), shared by /sync and
//! /messages.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::api::client::filter::{Filter, FilterDefinition, RoomEventFilter, RoomFilter};
use serde_json::{Value, json};

use super::client;
use super::extract::{Auth, JsonBody};
use crate::pdu::Pdu;
use crate::services::AppState;
use crate::storage::sync as store;
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/user/{user_id}/filter", post(create_filter));
    client(r, "/user/{user_id}/filter/{filter_id}", get(get_filter))
}

fn ensure_self(auth: &Auth, user_id: &str) -> Result<()> {
    if auth.user_id.as_str() == user_id {
        Ok(())
    } else {
        Err(Error::forbidden("Cannot use filters of other users"))
    }
}

/// `POST /_matrix/client/v3/user/{userId}/filter`
async fn create_filter(
    State(s): State<AppState>,
    auth: Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>> {
    ensure_self(&auth, &user_id)?;
    serde_json::from_value::<FilterDefinition>(body.clone())
        .map_err(|e| Error::bad_json(format!("invalid filter: {e}")))?;
    // The definition is kept as the client wrote it, so a download returns it unchanged.
    let text = serde_json::to_string(&body)?;
    let id =
        s.db.write(move |tx| store::put_filter(tx, &user_id, &text))
            .await?;
    Ok(Json(json!({"filter_id": id.to_string()})))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
async fn get_filter(
    State(s): State<AppState>,
    auth: Auth,
    Path((user_id, filter_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    ensure_self(&auth, &user_id)?;
    let text = stored(&s, user_id, &filter_id)
        .await?
        .ok_or_else(|| Error::not_found("Unknown filter"))?;
    Ok(Json(serde_json::from_str(&text)?))
}

/// A stored filter's JSON. IDs this node never issues (not a number) are simply unknown.
async fn stored(s: &AppState, user_id: String, filter_id: &str) -> Result<Option<String>> {
    let Ok(id) = filter_id.parse::<i64>() else {
        return Ok(None);
    };
    s.db.read(move |c| store::get_filter(c, &user_id, id)).await
}

/// The `filter` parameter of /sync: a filter ID of the user, or a definition inline as
/// JSON (it starts with `{`). An unknown ID is `M_INVALID_PARAM`, as in Synapse: the
/// request, not a resource, is at fault.
pub async fn resolve(s: &AppState, user_id: &str, param: Option<&str>) -> Result<FilterDefinition> {
    match param {
        None => Ok(FilterDefinition::default()),
        Some(p) if p.starts_with('{') => parse_inline(p),
        Some(id) => {
            let text = stored(s, user_id.to_owned(), id)
                .await?
                .ok_or_else(|| Error::invalid_param(format!("No such filter {id:?}")))?;
            serde_json::from_str(&text).map_err(|e| Error::internal(format!("stored filter unreadable: {e}")))
        }
    }
}

/// Parses a filter given inline as JSON (the `filter` query parameter).
pub fn parse_inline(json: &str) -> Result<FilterDefinition> {
    serde_json::from_str(json).map_err(|e| Error::bad_json(format!("invalid filter: {e}")))
}

/// `*` in a filter type matches any run of characters, as the spec says.
fn glob_match(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((head, tail)) => {
            value.starts_with(head) && {
                let rest = &value[head.len()..];
                (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob_match(tail, &rest[i..]))
            }
        }
    }
}

fn type_and_sender_match(
    types: &Option<Vec<String>>,
    not_types: &[String],
    senders: &Option<Vec<ruma::OwnedUserId>>,
    not_senders: &[ruma::OwnedUserId],
    kind: &str,
    sender: &str,
) -> bool {
    if not_types.iter().any(|t| glob_match(t, kind)) || not_senders.iter().any(|s| s.as_str() == sender) {
        return false;
    }
    if let Some(t) = types
        && !t.iter().any(|t| glob_match(t, kind))
    {
        return false;
    }
    if let Some(s) = senders
        && !s.iter().any(|s| s.as_str() == sender)
    {
        return false;
    }
    true
}

/// Whether a room event passes a `RoomEventFilter` (types, senders, rooms, contains_url).
pub fn room_event_matches(f: &RoomEventFilter, pdu: &Pdu) -> bool {
    if f.not_rooms.contains(&pdu.room) {
        return false;
    }
    if let Some(rooms) = &f.rooms
        && !rooms.contains(&pdu.room)
    {
        return false;
    }
    if let Some(url_filter) = &f.url_filter {
        let has_url = pdu.content_value().get("url").is_some();
        let want = matches!(url_filter, ruma::api::client::filter::UrlFilter::EventsWithUrl);
        if has_url != want {
            return false;
        }
    }
    type_and_sender_match(
        &f.types,
        &f.not_types,
        &f.senders,
        &f.not_senders,
        &pdu.kind.to_string(),
        pdu.sender.as_str(),
    )
}

/// Whether `room` passes the room filter's `rooms`/`not_rooms` (every /sync room section).
pub fn room_allowed(f: &RoomFilter, room: &str) -> bool {
    !f.not_rooms.iter().any(|r| r.as_str() == room)
        && f.rooms
            .as_ref()
            .is_none_or(|rs| rs.iter().any(|r| r.as_str() == room))
}

/// Whether a room event with no sender of its own (typing, receipts, room account data)
/// of `kind` in `room` passes a `RoomEventFilter`: rooms and types only.
pub fn room_kind_matches(f: &RoomEventFilter, room: &str, kind: &str) -> bool {
    !f.not_rooms.iter().any(|r| r.as_str() == room)
        && f.rooms
            .as_ref()
            .is_none_or(|rs| rs.iter().any(|r| r.as_str() == room))
        && !f.not_types.iter().any(|t| glob_match(t, kind))
        && f.types
            .as_ref()
            .is_none_or(|ts| ts.iter().any(|t| glob_match(t, kind)))
}

/// Whether a non-room event (presence, account data) of `kind` from `sender` passes a `Filter`.
pub fn event_matches(f: &Filter, kind: &str, sender: &str) -> bool {
    type_and_sender_match(&f.types, &f.not_types, &f.senders, &f.not_senders, kind, sender)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("m.*", "m.room.message"));
        assert!(glob_match("m.room.message", "m.room.message"));
        assert!(!glob_match("m.room.message", "m.room.member"));
        assert!(glob_match("*.member", "m.room.member"));
        assert!(!glob_match("x.*", "m.room.member"));
    }
}
