//! Other nodes' directories over `/meshserver/directory/1`: one named node's page, or the
//! rooms every connected peer publishes, merged into this node's list.

use std::time::{Duration, Instant};

use ruma::ServerName;
use serde_json::{Map, Value, json};

use super::{Filter, matches_filter};
use crate::api::keys::remote::ask;
use crate::p2p::peer_id::peer_id_of;
use crate::p2p::wire::Request;
use crate::services::AppState;
use crate::{Error, Result};

/// The most rooms taken from one node's answer (the page size peers serve at most).
pub const MAX_ROOMS_PER_NODE: usize = 100;
/// How long a named node's directory is waited for.
const REMOTE_WAIT: Duration = Duration::from_secs(10);
/// The whole budget for asking connected peers: a directory listing must stay snappy, and
/// a slow peer's rooms simply appear on a later request.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(1);
/// The most peers asked for one listing.
const MAX_PEERS_ASKED: usize = 32;

fn request(limit: Option<u64>, since: Option<String>, filter: &Filter) -> Request {
    let cap = MAX_ROOMS_PER_NODE as u64;
    Request::PublicRooms {
        limit: Some(limit.filter(|l| *l > 0).map_or(cap, |l| l.min(cap)) as u32),
        since,
        filter: filter.generic_search_term.clone(),
    }
}

/// The entries of an answer's `chunk` that look like rooms and match `filter` (the peer
/// applies only the search term; room types are checked here), at most
/// [`MAX_ROOMS_PER_NODE`].
fn rooms_of(answer: &Value, filter: &Filter) -> Vec<Value> {
    let Some(chunk) = answer.get("chunk").and_then(Value::as_array) else {
        return Vec::new();
    };
    chunk
        .iter()
        .filter(|r| {
            r.get("room_id")
                .and_then(Value::as_str)
                .is_some_and(|id| id.starts_with('!'))
                && r.get("num_joined_members").is_none_or(Value::is_u64)
                && matches_filter(r, filter)
        })
        .take(MAX_ROOMS_PER_NODE)
        .cloned()
        .collect()
}

/// `GET/POST /publicRooms?server=<other node>`: that node's page, with its own tokens;
/// `502` when the node cannot be reached.
pub async fn remote_directory(
    s: &AppState,
    server: &str,
    limit: Option<u64>,
    since: Option<String>,
    filter: &Filter,
) -> Result<Value> {
    let server = ServerName::parse(server)
        .map_err(|_| Error::invalid_param(format!("invalid server name {server:?}")))?;
    if peer_id_of(&server).is_none() {
        // Not a meshserver node: no protocol reaches it, so it lists nothing here.
        return Ok(json!({"chunk": [], "total_room_count_estimate": 0}));
    }
    let answer = ask(s, &server, request(limit, since, filter), REMOTE_WAIT)
        .await
        .map_err(|why| {
            Error::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("cannot list {server}'s rooms: {why}"),
            )
        })?;
    let mut out = Map::new();
    out.insert("chunk".into(), rooms_of(&answer, filter).into());
    for token in ["next_batch", "prev_batch"] {
        if let Some(t) = answer.get(token).and_then(Value::as_str) {
            out.insert(token.into(), t.into());
        }
    }
    if let Some(n) = answer.get("total_room_count_estimate").and_then(Value::as_u64) {
        out.insert("total_room_count_estimate".into(), n.into());
    }
    Ok(Value::Object(out))
}

/// The rooms connected peers publish, as they answer within [`ANNOUNCE_WAIT`] in all;
/// a peer that does not answer in time is left out.
pub async fn announced(s: &AppState, filter: &Filter) -> Vec<Value> {
    let deadline = Instant::now() + ANNOUNCE_WAIT;
    let Ok(info) = tokio::time::timeout(ANNOUNCE_WAIT, s.p2p.info()).await else {
        return Vec::new();
    };
    let mut servers: Vec<ruma::OwnedServerName> = info
        .peers
        .iter()
        .filter_map(|p| p.server_name.as_deref())
        .filter_map(|n| ServerName::parse(n).ok())
        .filter(|n| n != s.server_name())
        .collect();
    servers.sort();
    servers.dedup();
    servers.truncate(MAX_PEERS_ASKED);
    let asks = servers.iter().map(|server| {
        let wait = deadline.saturating_duration_since(Instant::now());
        ask(s, server, request(None, None, filter), wait)
    });
    let mut out: Vec<Value> = Vec::new();
    for answer in futures::future::join_all(asks).await.into_iter().flatten() {
        for room in rooms_of(&answer, filter) {
            if !out.iter().any(|r| r["room_id"] == room["room_id"]) {
                out.push(room);
            }
        }
    }
    out
}
