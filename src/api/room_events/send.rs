//! Writing events: `PUT /send/{eventType}/{txnId}`, `PUT /state/{eventType}[/{stateKey}]`
//! and `PUT /redact/{eventId}/{txnId}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::put;
use axum::{Json, Router};
use ruma::{OwnedRoomId, RoomAliasId, UserId};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{parse_event_id, parse_room_id};
use crate::api::client;
use crate::api::extract::{JsonBody, Token};
use crate::room::create::{power_needed, power_of};
use crate::room::{NewEvent, Txn, append_local};
use crate::services::AppState;
use crate::storage::events::{get_pdu, has_annotation, put_txn, txn_result};
use crate::storage::state::current_state_id;
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/rooms/{room_id}/send/{event_type}/{txn_id}", put(send));
    // The state PUTs share their paths with the state GETs: read.rs routes both.
    client(r, "/rooms/{room_id}/redact/{event_id}/{txn_id}", put(redact))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
async fn send(
    State(s): State<AppState>,
    token: Token,
    Path((room_id, event_type, txn_id)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> Result<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let mut ev = NewEvent::message(&event_type, content);
    if event_type == "m.room.redaction" {
        // Clients put `redacts` in the content in every room version; append_local moves
        // it to the top level where the version wants it there.
        let target = ev
            .content
            .get("redacts")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("m.room.redaction needs `redacts`: the event ID to redact"))?;
        ev.redacts = Some(parse_event_id(target)?.to_string());
    }
    let txn = ClientTxn::new("send", [room.as_str(), &event_type], txn_id);
    let event_id = send_event(&s, token, room, ev, Some(txn)).await?;
    Ok(Json(json!({"event_id": event_id})))
}

#[derive(Debug, Deserialize)]
struct RedactBody {
    reason: Option<String>,
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`
async fn redact(
    State(s): State<AppState>,
    token: Token,
    Path((room_id, event_id, txn_id)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<RedactBody>,
) -> Result<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let target = parse_event_id(&event_id)?;
    let mut content = json!({});
    if let Some(r) = body.reason {
        content["reason"] = r.into();
    }
    let mut ev = NewEvent::message("m.room.redaction", content);
    ev.redacts = Some(target.to_string());
    let txn = ClientTxn::new("redact", [room.as_str(), target.as_str()], txn_id);
    let event_id = send_event(&s, token, room, ev, Some(txn)).await?;
    Ok(Json(json!({"event_id": event_id})))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub(super) async fn put_state(
    State(s): State<AppState>,
    token: Token,
    Path((room_id, event_type, state_key)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> Result<Json<Value>> {
    put_state_inner(s, token, room_id, event_type, state_key, content).await
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}` (empty state key)
pub(super) async fn put_state_empty_key(
    State(s): State<AppState>,
    token: Token,
    Path((room_id, event_type)): Path<(String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> Result<Json<Value>> {
    put_state_inner(s, token, room_id, event_type, String::new(), content).await
}

async fn put_state_inner(
    s: AppState,
    token: Token,
    room_id: String,
    event_type: String,
    state_key: String,
    content: Value,
) -> Result<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let ev = NewEvent::state(&event_type, &state_key, content);
    let event_id = send_event(&s, token, room, ev, None).await?;
    Ok(Json(json!({"event_id": event_id})))
}

/// A client transaction. The spec scopes a transaction ID to one device and one request
/// path, so the stored key is the path's variable parts plus the ID, JSON-encoded to stay
/// unambiguous whatever characters they hold.
struct ClientTxn {
    kind: &'static str,
    key: String,
    txn_id: String,
}

impl ClientTxn {
    fn new<const N: usize>(kind: &'static str, path: [&str; N], txn_id: String) -> Self {
        let mut parts: Vec<&str> = path.to_vec();
        parts.push(&txn_id);
        let key = Value::from(parts).to_string();
        Self { kind, key, txn_id }
    }
}

/// Creates one event for a client. The access token is looked up on the writer's thread
/// just before the write (one trip to a blocking thread per send, not two). With a
/// transaction, the txn_ids lookup and record happen in the same write as the event, so a
/// retry returns the first event ID and creates nothing, even when two retries race.
async fn send_event(
    s: &AppState,
    token: Token,
    room: OwnedRoomId,
    ev: NewEvent,
    txn: Option<ClientTxn>,
) -> Result<String> {
    let services = s.clone();
    s.db.write_checked(
        move |c| token.owner(c),
        move |tx, auth| {
            let (user, device) = (auth.user_id.as_str(), auth.device_id.as_str());
            if let Some(t) = &txn
                && let Some(done) = txn_result(tx, user, device, t.kind, &t.key)?
            {
                return Ok(done);
            }
            check_client_rules(tx, room.as_str(), &auth.user_id, &ev)?;
            let origin = txn.as_ref().map(|t| Txn {
                user: user.to_owned(),
                device: device.to_owned(),
                txn_id: t.txn_id.clone(),
            });
            let pdu = append_local(tx, &services.identity, &room, &auth.user_id, ev, origin)?;
            let event_id = pdu.event_id.to_string();
            if let Some(t) = &txn {
                put_txn(tx, user, device, t.kind, &t.key, &event_id)?;
            }
            Ok(event_id)
        },
    )
    .await
}

/// What the Client-Server API asks beyond the room version's auth rules, which would accept
/// these events but not give them the effect the client wants.
fn check_client_rules(conn: &Connection, room_id: &str, sender: &UserId, ev: &NewEvent) -> Result<()> {
    if let Some(target) = &ev.redacts {
        check_redaction(conn, room_id, sender, target)?;
    }
    if let Some(rel) = ev.content.get("m.relates_to")
        && rel.get("rel_type").and_then(Value::as_str) == Some("m.annotation")
        && let (Some(parent), Some(key)) = (
            rel.get("event_id").and_then(Value::as_str),
            rel.get("key").and_then(Value::as_str),
        )
        && has_annotation(conn, parent, sender.as_str(), &ev.kind, key)?
    {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "M_DUPLICATE_ANNOTATION",
            "You already sent this annotation",
        ));
    }
    if ev.kind == "m.room.canonical_alias" && ev.state_key.as_deref() == Some("") {
        check_new_aliases(conn, room_id, &ev.content)?;
    }
    Ok(())
}

/// Redacting someone else's event needs the room's `redact` level. The auth rules let any
/// same-server sender's redaction in (it would then silently not apply), so refuse it here.
fn check_redaction(conn: &Connection, room_id: &str, sender: &UserId, target: &str) -> Result<()> {
    let Some(original) = get_pdu(conn, target) else {
        return Ok(());
    };
    if original.room.as_str() != room_id || original.sender == sender {
        return Ok(());
    }
    if power_of(conn, room_id, sender)? < power_needed(conn, room_id, "redact")? {
        return Err(Error::forbidden(
            "You don't have permission to redact other users' events",
        ));
    }
    Ok(())
}

/// Aliases newly listed in `m.room.canonical_alias` must be valid and point to this room.
fn check_new_aliases(conn: &Connection, room_id: &str, content: &Value) -> Result<()> {
    let listed = |c: &Value| -> Vec<Value> {
        let mut v: Vec<Value> = c.get("alias").into_iter().cloned().collect();
        if let Some(alt) = c.get("alt_aliases").and_then(Value::as_array) {
            v.extend(alt.iter().cloned());
        }
        v
    };
    if content.get("alt_aliases").is_some_and(|a| !a.is_array()) {
        return Err(Error::invalid_param("alt_aliases must be a list of aliases"));
    }
    let existing = match current_state_id(conn, room_id, "m.room.canonical_alias", "")?
        .and_then(|id| get_pdu(conn, &id))
    {
        Some(pdu) => listed(&pdu.content_value()),
        None => Vec::new(),
    };
    for alias in listed(content).iter().filter(|a| !existing.contains(a)) {
        let alias = alias
            .as_str()
            .and_then(|a| RoomAliasId::parse(a).ok())
            .ok_or_else(|| Error::invalid_param(format!("invalid alias {alias}")))?;
        if crate::storage::rooms::alias_room(conn, alias.as_str())?.as_deref() != Some(room_id) {
            return Err(Error::new(
                StatusCode::BAD_REQUEST,
                "M_BAD_ALIAS",
                format!("{alias} does not point to this room"),
            ));
        }
    }
    Ok(())
}
