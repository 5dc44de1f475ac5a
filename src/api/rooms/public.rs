//! The published room directory: `GET`/`POST /publicRooms`. Only this server's directory
//! is served; another `server` gets an empty list until federation lands.

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::extract::{Auth, JsonBody};
use crate::api::room_events::{limit_param, query_map};
use crate::services::AppState;
use crate::storage::rooms as store;
use crate::{Error, Result};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PostBody {
    limit: Option<u64>,
    since: Option<String>,
    filter: Option<Filter>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Filter {
    generic_search_term: Option<String>,
    /// `null` in the list stands for rooms without a type.
    room_types: Option<Vec<Option<String>>>,
}

/// `GET /_matrix/client/v3/publicRooms`: no access token needed.
pub async fn get_public_rooms(State(s): State<AppState>, uri: Uri) -> Result<Json<Value>> {
    let q = query_map(&uri)?;
    // 0 (the default) means no limit, as in Synapse.
    let limit = limit_param(&q, 0)? as u64;
    list(
        &s,
        q.get("server").cloned(),
        Some(limit),
        q.get("since").cloned(),
        Filter::default(),
    )
    .await
}

/// `POST /_matrix/client/v3/publicRooms`
pub async fn post_public_rooms(
    State(s): State<AppState>,
    _auth: Auth,
    uri: Uri,
    JsonBody(body): JsonBody<PostBody>,
) -> Result<Json<Value>> {
    let server = query_map(&uri)?.remove("server");
    list(
        &s,
        server,
        body.limit,
        body.since,
        body.filter.unwrap_or_default(),
    )
    .await
}

/// Pagination tokens are offsets into the (stable) ordering of matching rooms.
fn parse_since(since: &str) -> Result<usize> {
    since
        .strip_prefix('o')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::invalid_param(format!("invalid since token {since}")))
}

/// One page of the matching rooms; a `limit` of 0 means no limit, as in Synapse.
async fn list(
    s: &AppState,
    server: Option<String>,
    limit: Option<u64>,
    since: Option<String>,
    filter: Filter,
) -> Result<Json<Value>> {
    let offset = since.as_deref().map(parse_since).transpose()?.unwrap_or(0);
    if server.is_some_and(|srv| srv != s.server_name().as_str()) {
        return Ok(Json(json!({"chunk": [], "total_room_count_estimate": 0})));
    }
    let mut rooms =
        s.db.read(move |c| {
            let mut out = Vec::new();
            for room in store::published_rooms(c)? {
                let entry = chunk_entry(c, &room)?;
                if matches_filter(&entry, &filter) {
                    out.push(entry);
                }
            }
            Ok(out)
        })
        .await?;
    // Largest rooms first (the spec's former order), room ID to break ties stably.
    rooms.sort_by(|a, b| {
        let n = |v: &Value| v["num_joined_members"].as_u64().unwrap_or(0);
        n(b).cmp(&n(a))
            .then_with(|| a["room_id"].as_str().cmp(&b["room_id"].as_str()))
    });
    let total = rooms.len();
    let limit = match limit {
        None | Some(0) => total,
        Some(l) => usize::try_from(l).unwrap_or(usize::MAX),
    };
    let start = offset.min(total);
    let end = start.saturating_add(limit).min(total);
    let mut res = json!({
        "chunk": rooms[start..end],
        "total_room_count_estimate": total,
    });
    if end < total {
        res["next_batch"] = format!("o{end}").into();
    }
    if start > 0 {
        res["prev_batch"] = format!("o{}", start.saturating_sub(limit)).into();
    }
    Ok(Json(res))
}

fn matches_filter(entry: &Value, filter: &Filter) -> bool {
    if let Some(types) = &filter.room_types {
        let kind = entry.get("room_type").and_then(Value::as_str);
        if !types.iter().any(|t| t.as_deref() == kind) {
            return false;
        }
    }
    let Some(term) = filter
        .generic_search_term
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return true;
    };
    let term = term.to_lowercase();
    ["name", "topic", "canonical_alias"].iter().any(|k| {
        entry
            .get(*k)
            .and_then(Value::as_str)
            .is_some_and(|v| v.to_lowercase().contains(&term))
    })
}

/// One `PublishedRoomsChunk` from the room's current state.
fn chunk_entry(c: &Connection, room: &str) -> Result<Value> {
    let content = |kind: &str| store::state_content(c, room, kind, "");
    let field = |v: Option<Value>, key: &str| -> Option<String> {
        v.and_then(|v| v.get(key).and_then(Value::as_str).map(str::to_owned))
    };
    let mut e = Map::new();
    e.insert("room_id".into(), room.into());
    let joined = store::members_with(c, room, "join")?.len();
    e.insert("num_joined_members".into(), joined.into());
    let visibility = field(content("m.room.history_visibility")?, "history_visibility");
    e.insert(
        "world_readable".into(),
        (visibility.as_deref() == Some("world_readable")).into(),
    );
    let guests = field(content("m.room.guest_access")?, "guest_access");
    e.insert(
        "guest_can_join".into(),
        (guests.as_deref() == Some("can_join")).into(),
    );
    let optional = [
        ("name", field(content("m.room.name")?, "name")),
        ("topic", plain_topic(content("m.room.topic")?)),
        (
            "canonical_alias",
            field(content("m.room.canonical_alias")?, "alias"),
        ),
        ("avatar_url", field(content("m.room.avatar")?, "url")),
        ("join_rule", field(content("m.room.join_rules")?, "join_rule")),
        ("room_type", field(content("m.room.create")?, "type")),
    ];
    for (key, value) in optional {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            e.insert(key.into(), v.into());
        }
    }
    Ok(Value::Object(e))
}

/// The plain-text topic: the `text/plain` entry of `m.topic`, else the `topic` field (which
/// the spec defines as plain text).
fn plain_topic(content: Option<Value>) -> Option<String> {
    let content = content?;
    let from_block = content
        .get("m.topic")
        .and_then(Value::as_array)
        .and_then(|reps| {
            reps.iter().find(|r| {
                r.get("mimetype")
                    .and_then(Value::as_str)
                    .is_none_or(|m| m == "text/plain")
            })
        })
        .and_then(|r| r.get("body"))
        .and_then(Value::as_str);
    from_block
        .or_else(|| content.get("topic").and_then(Value::as_str))
        .map(str::to_owned)
}
