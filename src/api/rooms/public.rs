//! The published room directory: `GET`/`POST /publicRooms`. Without `server`, this node's
//! rooms and those its connected peers publish ([`peers`]); with another node's `server`,
//! that node's directory. Peers asking for ours are answered by `p2p::serve::directory`
//! through [`local_directory`].

mod peers;

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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Filter {
    pub generic_search_term: Option<String>,
    /// `null` in the list stands for rooms without a type.
    pub room_types: Option<Vec<Option<String>>>,
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

/// One page of the directory `server` names (this node's and its peers' when `None`).
async fn list(
    s: &AppState,
    server: Option<String>,
    limit: Option<u64>,
    since: Option<String>,
    filter: Filter,
) -> Result<Json<Value>> {
    match server {
        Some(srv) if srv != s.server_name().as_str() => {
            peers::remote_directory(s, &srv, limit, since, &filter)
                .await
                .map(Json)
        }
        Some(_) => local_directory(s, limit, since.as_deref(), filter)
            .await
            .map(Json),
        None => {
            let offset = since.as_deref().map(parse_since).transpose()?.unwrap_or(0);
            let (mine, theirs) =
                tokio::join!(matching_rooms(s, filter.clone()), peers::announced(s, &filter));
            let mut rooms = mine?;
            for room in theirs {
                if !rooms.iter().any(|r| r["room_id"] == room["room_id"]) {
                    rooms.push(room);
                }
            }
            Ok(Json(page(rooms, limit, offset)))
        }
    }
}

/// One page of this node's own directory: the client API's and the peer protocol's.
pub async fn local_directory(
    s: &AppState,
    limit: Option<u64>,
    since: Option<&str>,
    filter: Filter,
) -> Result<Value> {
    let offset = since.map(parse_since).transpose()?.unwrap_or(0);
    Ok(page(matching_rooms(s, filter).await?, limit, offset))
}

/// This node's published rooms that match `filter`, as `PublishedRoomsChunk`s.
async fn matching_rooms(s: &AppState, filter: Filter) -> Result<Vec<Value>> {
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
    .await
}

/// The page of `rooms` at `offset`, ordered; a `limit` of 0 means no limit, as in Synapse.
fn page(mut rooms: Vec<Value>, limit: Option<u64>, offset: usize) -> Value {
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
    res
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
