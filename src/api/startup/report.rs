//! Reporting content to the server admins: `POST /rooms/{roomId}/report/{eventId}` and
//! (v1.13) `POST /rooms/{roomId}/report`. Reports are stored in `reports` and logged at
//! warn, so an operator sees them without tooling.

use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;

use crate::api::account::now_ms;
use crate::api::empty;
use crate::api::extract::{Auth, JsonBody};
use crate::api::room_events::{parse_event_id, parse_room_id};
use crate::room::visibility::Visibility;
use crate::services::AppState;
use crate::storage::events::get_event;
use crate::storage::rooms::{Report, insert_report, membership, room_exists};
use crate::{Error, Result};

#[derive(Deserialize)]
pub(super) struct EventReport {
    reason: Option<String>,
    /// Dropped from the spec in v1.18; clients of earlier versions send -100 (most
    /// offensive) to 0.
    score: Option<i64>,
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`: only by a member joined to
/// the room now (the spec's MUST since v1.8), for an event they may see. Anything else is
/// `M_NOT_FOUND`, so a report cannot probe for hidden events.
pub(super) async fn event(
    State(s): State<AppState>,
    auth: Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<EventReport>,
) -> Result<Response> {
    let room = parse_room_id(&room_id)?;
    let event_id = parse_event_id(&event_id)?;
    if let Some(score) = body.score
        && !(-100..=0).contains(&score)
    {
        return Err(Error::invalid_param("score must be between -100 and 0"));
    }
    let reporter = auth.user_id.to_string();
    let (r, e, reason) = (room.to_string(), event_id.to_string(), body.reason.clone());
    s.db.write(move |tx| {
        let not_found = || Error::not_found("The event was not found or you are not joined to the room");
        if membership(tx, &r, &reporter)?.as_deref() != Some("join") {
            return Err(not_found());
        }
        let ev = get_event(tx, &e)?
            .filter(|ev| ev.pdu.room.as_str() == r)
            .ok_or_else(not_found)?;
        if !Visibility::new(tx, &r, &reporter)?.can_see(&ev)? {
            return Err(not_found());
        }
        let report = Report {
            reporter: &reporter,
            room_id: &r,
            event_id: Some(&e),
            reason: reason.as_deref(),
            score: body.score,
            ts: now_ms(),
        };
        insert_report(tx, &report)
    })
    .await?;
    tracing::warn!(
        reporter = %auth.user_id, room = %room, event = %event_id, reason = body.reason.as_deref().unwrap_or(""),
        "event reported"
    );
    Ok(empty())
}

#[derive(Deserialize)]
pub(super) struct RoomReport {
    reason: String,
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report`: by anyone, joined or not (the spec
/// forbids requiring membership); `M_NOT_FOUND` for a room this node does not know.
pub(super) async fn room(
    State(s): State<AppState>,
    auth: Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<RoomReport>,
) -> Result<Response> {
    let room = parse_room_id(&room_id)?;
    let reporter = auth.user_id.to_string();
    let (r, reason) = (room.to_string(), body.reason.clone());
    s.db.write(move |tx| {
        if !room_exists(tx, &r)? {
            return Err(Error::not_found("The room was not found"));
        }
        let report = Report {
            reporter: &reporter,
            room_id: &r,
            event_id: None,
            reason: Some(&reason),
            score: None,
            ts: now_ms(),
        };
        insert_report(tx, &report)
    })
    .await?;
    tracing::warn!(reporter = %auth.user_id, room = %room, reason = %body.reason, "room reported");
    Ok(empty())
}
