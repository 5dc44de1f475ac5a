//! Ephemeral room data: typing notifications (`PUT /rooms/{roomId}/typing/{userId}`),
//! receipts (`POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`) and read markers
//! (`POST /rooms/{roomId}/read_markers`).

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{post, put};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::json;

use super::account::now_ms;
use super::account_data::{ensure_self, parse_room_id};
use super::extract::{Auth, JsonBody};
use super::{client, empty};
use crate::services::AppState;
use crate::storage::WriteTx;
use crate::storage::user_data::{self as store, UNTHREADED};
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/rooms/{room_id}/typing/{user_id}", put(typing));
    let r = client(
        r,
        "/rooms/{room_id}/receipt/{receipt_type}/{event_id}",
        post(receipt),
    );
    client(r, "/rooms/{room_id}/read_markers", post(read_markers))
}

/// How long a client is shown typing when it says `typing: true` without a timeout.
const DEFAULT_TYPING: Duration = Duration::from_secs(30);

/// `M_FORBIDDEN` unless `user` is joined to `room` now.
fn ensure_joined(conn: &Connection, room: &str, user: &str) -> Result<()> {
    match crate::storage::rooms::membership(conn, room, user)?.as_deref() {
        Some("join") => Ok(()),
        _ => Err(Error::forbidden("You are not joined to this room")),
    }
}

#[derive(Deserialize)]
struct TypingBody {
    typing: bool,
    timeout: Option<u64>,
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
async fn typing(
    State(s): State<AppState>,
    auth: Auth,
    Path((room_id, user_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<TypingBody>,
) -> Result<Response> {
    ensure_self(&auth, &user_id, "set typing")?;
    let room = parse_room_id(&room_id)?.to_string();
    let r = room.clone();
    s.db.read(move |c| ensure_joined(c, &r, &user_id)).await?;
    let until = body
        .typing
        .then(|| body.timeout.map_or(DEFAULT_TYPING, Duration::from_millis));
    s.typing.set(&room, auth.user_id.as_str(), until);
    crate::p2p::replicate::publish_typing(&s, &room, auth.user_id.as_str(), body.typing).await;
    Ok(empty())
}

/// Receipt types a client may send; `m.fully_read` is really room account data.
const RECEIPT_TYPES: &[&str] = &["m.read", "m.read.private", "m.fully_read"];

/// Records one read position for `user` in `room`: a receipt, or for `m.fully_read` the
/// room account data the spec keeps the fully-read marker in. The event must be in the room.
fn mark(
    tx: &mut WriteTx<'_>,
    room: &str,
    user: &str,
    kind: &str,
    event_id: &str,
    thread: &str,
) -> Result<()> {
    match crate::storage::events::get_event(tx, event_id)? {
        Some(ev) if ev.pdu.room.as_str() == room && !ev.soft_failed => {}
        _ => {
            return Err(Error::not_found(format!(
                "Event {event_id} not found in this room"
            )));
        }
    }
    if kind == "m.fully_read" {
        store::put_account_data(tx, user, room, kind, &json!({"event_id": event_id}))?;
    } else {
        store::put_receipt(tx, room, user, kind, thread, event_id, now_ms())?;
    }
    Ok(())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReceiptBody {
    thread_id: Option<serde_json::Value>,
}

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`
async fn receipt(
    State(s): State<AppState>,
    auth: Auth,
    Path((room_id, kind, event_id)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<ReceiptBody>,
) -> Result<Response> {
    if !RECEIPT_TYPES.contains(&kind.as_str()) {
        return Err(Error::invalid_param(format!("Unknown receipt type {kind}")));
    }
    let thread = match body.thread_id {
        None => UNTHREADED.to_owned(),
        Some(_) if kind == "m.fully_read" => {
            return Err(Error::invalid_param("thread_id is not allowed for m.fully_read"));
        }
        Some(serde_json::Value::String(t)) if !t.is_empty() => t,
        Some(_) => return Err(Error::invalid_param("thread_id field must be a non-empty string")),
    };
    let room = parse_room_id(&room_id)?.to_string();
    let gossip = (
        room.clone(),
        auth.user_id.to_string(),
        kind.clone(),
        event_id.clone(),
        thread.clone(),
    );
    s.db.write(move |tx| {
        let user = auth.user_id.as_str();
        ensure_joined(tx, &room, user)?;
        mark(tx, &room, user, &kind, &event_id, &thread)
    })
    .await?;
    let (room, user, kind, event_id, thread) = gossip;
    crate::p2p::replicate::publish_receipt(&s, &room, &user, &kind, &event_id, &thread).await;
    Ok(empty())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReadMarkers {
    #[serde(rename = "m.fully_read")]
    fully_read: Option<String>,
    #[serde(rename = "m.read")]
    read: Option<String>,
    #[serde(rename = "m.read.private")]
    read_private: Option<String>,
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
async fn read_markers(
    State(s): State<AppState>,
    auth: Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<ReadMarkers>,
) -> Result<Response> {
    let room = parse_room_id(&room_id)?.to_string();
    let gossip = (room.clone(), auth.user_id.to_string(), body.read.clone());
    s.db.write(move |tx| {
        let user = auth.user_id.as_str();
        ensure_joined(tx, &room, user)?;
        let marks = [
            ("m.fully_read", body.fully_read),
            ("m.read", body.read),
            ("m.read.private", body.read_private),
        ];
        // One transaction: an unknown event in any field leaves every marker unchanged.
        for (kind, event_id) in marks {
            if let Some(event_id) = event_id {
                mark(tx, &room, user, kind, &event_id, UNTHREADED)?;
            }
        }
        Ok(())
    })
    .await?;
    if let (room, user, Some(event_id)) = gossip {
        crate::p2p::replicate::publish_receipt(&s, &room, &user, "m.read", &event_id, UNTHREADED).await;
    }
    Ok(empty())
}
