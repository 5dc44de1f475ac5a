//! `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`:
//! the events relating to a parent (`m.relates_to`), newest first by default.
//! `recurse` is not supported: only direct children are returned, which the spec allows
//! clients to detect by the absence of `recursion_depth`.

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::routing::get;
use axum::{Json, Router};
use ruma::api::client::filter::RoomEventFilter;
use serde_json::{Value, json};

use super::messages::paginate_with;
use super::read::{viewer, visible_event};
use super::{limit_param, parse_event_id, parse_room_id, parse_stream_token, query_map, stream_token};
use crate::api::client_v1;
use crate::api::extract::Auth;
use crate::api::render::client_events;
use crate::room::visibility::Visibility;
use crate::services::AppState;
use crate::storage::events::{RelationQuery, relations as stored_relations, stream_position};
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client_v1(r, "/rooms/{room_id}/relations/{event_id}", get(all_relations));
    let r = client_v1(
        r,
        "/rooms/{room_id}/relations/{event_id}/{rel_type}",
        get(by_rel_type),
    );
    client_v1(
        r,
        "/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}",
        get(by_rel_and_event_type),
    )
}

const DEFAULT_LIMIT: usize = 50;

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}`
async fn all_relations(
    State(s): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path((room_id, event_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    relations(s, auth, uri, room_id, event_id, None, None).await
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}`
async fn by_rel_type(
    State(s): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path((room_id, event_id, rel_type)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    relations(s, auth, uri, room_id, event_id, Some(rel_type), None).await
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}`
async fn by_rel_and_event_type(
    State(s): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path((room_id, event_id, rel_type, event_type)): Path<(String, String, String, String)>,
) -> Result<Json<Value>> {
    relations(s, auth, uri, room_id, event_id, Some(rel_type), Some(event_type)).await
}

async fn relations(
    s: AppState,
    auth: Auth,
    uri: Uri,
    room_id: String,
    event_id: String,
    rel_type: Option<String>,
    kind: Option<String>,
) -> Result<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let parent = parse_event_id(&event_id)?;
    let q = query_map(&uri)?;
    let backwards = match q.get("dir").map(String::as_str) {
        None | Some("b") => true,
        Some("f") => false,
        Some(d) => return Err(Error::invalid_param(format!("dir must be `b` or `f`, not {d:?}"))),
    };
    let from_token = q.get("from").cloned();
    let from = from_token.as_deref().map(parse_stream_token).transpose()?;
    let to = q.get("to").map(|t| parse_stream_token(t)).transpose()?;
    let limit = limit_param(&q, DEFAULT_LIMIT)?;
    s.db.read(move |c| {
        let (room, user) = (room.as_str(), auth.user_id.as_str());
        visible_event(c, room, parent.as_str(), user)?;
        let window = if backwards {
            (
                to.unwrap_or(0),
                from.unwrap_or(stream_position(c)?).saturating_add(1),
            )
        } else {
            (from.unwrap_or(0), to.unwrap_or(i64::MAX - 1).saturating_add(1))
        };
        let fetch = |after, before, limit| {
            stored_relations(
                c,
                &RelationQuery {
                    room_id: room,
                    parent: parent.as_str(),
                    rel_type: rel_type.as_deref(),
                    kind: kind.as_deref(),
                    after,
                    before,
                    backwards,
                    limit,
                },
            )
        };
        let mut vis = Visibility::new(c, room, user)?;
        let page = paginate_with(
            fetch,
            &mut vis,
            &RoomEventFilter::default(),
            window,
            backwards,
            limit,
        )?;
        let mut res = json!({"chunk": client_events(c, &page.events, Some(viewer(&auth)), true)?});
        if page.more {
            res["next_batch"] = stream_token(page.reached).into();
        }
        if let Some(t) = from_token {
            res["prev_batch"] = t.into();
        }
        Ok(Json(res))
    })
    .await
}
