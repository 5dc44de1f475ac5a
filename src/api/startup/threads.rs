//! `GET /_matrix/client/v1/rooms/{roomId}/threads`: a room's thread roots, the thread with
//! the newest reply first, each with its `m.thread` aggregation.
//!
//! Pagination tokens are stream positions (`s<stream>`, as elsewhere): a page lists
//! threads whose latest reply is at or below the position, so each thread is listed once
//! per walk even while new replies arrive.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::Uri;
use ruma::room_version_rules::RoomVersionRules;
use serde_json::{Value, json};

use super::positive_limit;
use crate::api::aggregation::{counted_until, ignored_users};
use crate::api::extract::Auth;
use crate::api::render::{Viewer, client_events};
use crate::api::room_events::{MAX_LIMIT, parse_room_id, parse_stream_token, query_map, stream_token};
use crate::room::visibility::{Visibility, room_access};
use crate::room::{room_version, rules_for};
use crate::services::AppState;
use crate::storage::events::{StoredEvent, ThreadQuery, get_events, thread_roots};
use crate::{Error, Result};

const DEFAULT_LIMIT: usize = 20;
/// Roots read per query while filling a page; roots the reader may not see make a page
/// need more.
const BATCH: usize = 50;

/// `GET /_matrix/client/v1/rooms/{roomId}/threads`
pub(super) async fn threads(
    State(s): State<AppState>,
    auth: Auth,
    uri: Uri,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    let room = parse_room_id(&room_id)?;
    let q = query_map(&uri)?;
    let participated = match q.get("include").map(String::as_str) {
        None | Some("all") => false,
        Some("participated") => true,
        Some(i) => {
            return Err(Error::invalid_param(format!(
                "include must be `all` or `participated`, not {i:?}"
            )));
        }
    };
    let limit = positive_limit(&q)?.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let from = q.get("from").map(|f| parse_stream_token(f)).transpose()?;
    s.db.read(move |c| {
        let (room, user) = (room.as_str(), auth.user_id.as_str());
        let until = counted_until(room_access(c, room, user)?);
        let ignored = ignored_users(c, user)?;
        let rules = rules_for(&room_version(c, room)?)?;
        let mut vis = Visibility::new(c, room, user)?;
        let mut at_or_below = from.unwrap_or(i64::MAX);
        let mut roots = Vec::new();
        let mut more = false;
        'fill: loop {
            let batch = thread_roots(
                c,
                &ThreadQuery {
                    room_id: room,
                    at_or_below,
                    until,
                    participant: participated.then_some(user),
                    ignored: &ignored,
                    limit: BATCH,
                },
            )?;
            let exhausted = batch.len() < BATCH;
            let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
            let mut found: HashMap<String, _> = get_events(c, &ids)?
                .into_iter()
                .map(|e| (e.pdu.event_id.to_string(), e))
                .collect();
            for (id, latest) in batch {
                if roots.len() == limit {
                    more = true;
                    break 'fill;
                }
                at_or_below = latest.saturating_sub(1);
                // A relation naming an event of another room, or one not held here, is
                // no thread of this room.
                if let Some(root) = found.remove(&id)
                    && root.pdu.room.as_str() == room
                    && vis.can_see(&root)?
                {
                    roots.push(redact_if_ignored(root, &ignored, &rules)?);
                }
            }
            if exhausted {
                break;
            }
        }
        let viewer = Viewer {
            user_id: user,
            device_id: &auth.device_id,
        };
        let mut res = json!({"chunk": client_events(c, &roots, Some(viewer), true)?});
        if more {
            res["next_batch"] = stream_token(at_or_below).into();
        }
        Ok(Json(res))
    })
    .await
}

/// A root sent by a user the reader ignores is listed redacted, as the reader's client
/// would show it after aggregating the thread itself.
fn redact_if_ignored(root: StoredEvent, ignored: &[String], rules: &RoomVersionRules) -> Result<StoredEvent> {
    if !ignored.iter().any(|u| u == root.pdu.sender.as_str()) {
        return Ok(root);
    }
    let json = ruma::canonical_json::redact(root.pdu.json.clone(), &rules.redaction, None)
        .map_err(|e| Error::internal(e.to_string()))?;
    let pdu = crate::pdu::Pdu::from_json(root.pdu.event_id.clone(), json).map_err(Error::internal)?;
    Ok(StoredEvent { pdu, ..root })
}
