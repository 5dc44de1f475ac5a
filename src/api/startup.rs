//! The rest of what clients call at start-up: the user directory, TURN servers,
//! notifications, content reports, third-party identifiers, room upgrades and thread lists.

mod directory;
mod report;
mod threads;
mod threepid;
mod upgrade;

use std::collections::HashMap;

use axum::http::Uri;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::extract::Auth;
use super::room_events::query_map;
use super::{client, client_v1};
use crate::services::AppState;
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/user_directory/search", post(directory::search));
    let r = client(r, "/voip/turnServer", get(turn_server));
    let r = client(r, "/notifications", get(notifications));
    let r = client(r, "/rooms/{room_id}/report/{event_id}", post(report::event));
    let r = client(r, "/rooms/{room_id}/report", post(report::room));
    let r = client(r, "/rooms/{room_id}/upgrade", post(upgrade::upgrade));
    let r = client_v1(r, "/rooms/{room_id}/threads", get(threads::threads));
    threepid::add(r)
}

/// `GET /_matrix/client/v3/voip/turnServer`: this node runs no TURN server. An empty
/// object (not an error) tells clients to call without one.
async fn turn_server(_auth: Auth) -> Json<Value> {
    Json(json!({}))
}

/// `GET /_matrix/client/v3/notifications`: the node does not evaluate push rules, so no
/// event has notified anyone and every page is empty (without `next_token`: no more).
async fn notifications(_auth: Auth, uri: Uri) -> Result<Json<Value>> {
    let q = query_map(&uri)?;
    positive_limit(&q)?;
    Ok(Json(json!({"notifications": []})))
}

/// The optional `limit` query parameter: an integer greater than zero.
fn positive_limit(q: &HashMap<String, String>) -> Result<Option<usize>> {
    match q.get("limit") {
        None => Ok(None),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(Error::invalid_param(format!(
                "limit must be an integer greater than zero, not {l:?}"
            ))),
        },
    }
}
