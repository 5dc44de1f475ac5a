//! `GET /_matrix/client/v3/sync`: the initial snapshot and then the deltas a client follows.
//!
//! `next_batch` is `s<stream>_<typing>`: the global stream position (room events, account
//! data, receipts, presence all share it) and the in-memory typing serial, i.e. a
//! [`Position`] of the notifier. Everything a response holds is read from one snapshot and
//! bounded above by that position, so the next sync, starting from it, misses nothing and
//! repeats nothing. A long-poll recomputes after every notifier change until something
//! relevant to the user exists or the timeout passes. A response carrying only part of a
//! to-device backlog ends at its last message instead (see [`e2ee`]).

mod e2ee;
mod global;
pub(crate) mod rooms;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::Uri;
use axum::routing::get;
use axum::{Json, Router};
use ruma::api::client::filter::FilterDefinition;
use rusqlite::Connection;
use serde_json::{Value, json};

use super::account::now_ms;
use super::client;
use super::extract::Auth;
use super::render::Viewer;
use super::room_events::{parse_stream_token, query_map};
use crate::notifier::Position;
use crate::services::AppState;
use crate::storage::user_data::{self, Presence};
use crate::typing::Typing;
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    client(r, "/sync", get(sync))
}

/// Longest a long-poll waits, whatever the client asks: proxies and clients time out too.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// A `since` token: where the client's previous response ended.
#[derive(Debug, Clone, Copy)]
struct Since {
    stream: i64,
    /// `None` for a token without a typing part: typing is then sent afresh.
    typing: Option<u64>,
}

impl Since {
    fn parse(token: &str) -> Result<Since> {
        let stream = parse_stream_token(token)?;
        let typing = match token.split('_').nth(1) {
            Some(t) => Some(
                t.parse()
                    .map_err(|_| Error::invalid_param(format!("invalid since token {token:?}")))?,
            ),
            None => None,
        };
        Ok(Since { stream, typing })
    }
}

fn next_batch(pos: Position) -> String {
    format!("s{}_{}", pos.stream, pos.typing)
}

/// The query parameters, validated before anything is read or written.
struct Params {
    since: Option<Since>,
    filter: Option<String>,
    full_state: bool,
    set_presence: &'static str,
    timeout: Duration,
}

impl Params {
    fn parse(uri: &Uri) -> Result<Params> {
        let q = query_map(uri)?;
        let since = q.get("since").map(|t| Since::parse(t)).transpose()?;
        let full_state = match q.get("full_state").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => {
                return Err(Error::invalid_param(format!(
                    "full_state must be true or false, not {v:?}"
                )));
            }
        };
        let set_presence = match q.get("set_presence").map(String::as_str) {
            None | Some("online") => "online",
            Some("offline") => "offline",
            Some("unavailable") => "unavailable",
            Some(v) => {
                return Err(Error::invalid_param(format!(
                    "set_presence must be online, offline or unavailable, not {v:?}"
                )));
            }
        };
        let timeout = match q.get("timeout") {
            None => Duration::ZERO,
            Some(t) => Duration::from_millis(
                t.parse::<u64>()
                    .map_err(|_| Error::invalid_param(format!("invalid timeout {t:?}")))?,
            )
            .min(MAX_TIMEOUT),
        };
        Ok(Params {
            since,
            filter: q.get("filter").cloned(),
            full_state,
            set_presence,
            timeout,
        })
    }
}

/// `GET /_matrix/client/v3/sync`
async fn sync(State(s): State<AppState>, auth: Auth, uri: Uri) -> Result<Json<Value>> {
    let p = Params::parse(&uri)?;
    let filter = Arc::new(super::filter::resolve(&s, auth.user_id.as_str(), p.filter.as_deref()).await?);
    if let Some(since) = p.since
        && since.stream > s.db.notifier().current().stream
    {
        return Err(Error::invalid_param("since token is not one this server issued"));
    }
    mark_present(&s, auth.user_id.as_str(), p.set_presence).await?;
    if let Some(since) = p.since {
        e2ee::acknowledge(&s, &auth, since.stream).await?;
    }
    let deadline = Instant::now() + p.timeout;
    loop {
        let pos = s.db.notifier().current();
        let (services, filter, auth) = (s.clone(), filter.clone(), auth.clone());
        let (since, full_state) = (p.since, p.full_state);
        let (body, has_data) =
            s.db.read(move |conn| {
                let ctx = Ctx {
                    conn,
                    typing: &services.typing,
                    user: auth.user_id.as_str(),
                    device: &auth.device_id,
                    filter: &filter,
                    since,
                    full_state,
                    pos,
                };
                build(&ctx)
            })
            .await?;
        let now = Instant::now();
        // full_state asks for a snapshot now: the spec says it ignores the timeout.
        if has_data || p.full_state || now >= deadline {
            return Ok(Json(body));
        }
        s.db.notifier().wait_past(pos, deadline - now).await;
    }
}

/// Polling /sync marks a user online (or idle with `unavailable`), but only out of
/// `offline`: a state the user set explicitly is theirs to change.
async fn mark_present(s: &AppState, user: &str, wanted: &'static str) -> Result<()> {
    if wanted == "offline" {
        return Ok(());
    }
    let needs = |p: &Option<Presence>| p.as_ref().is_none_or(|p| p.state == "offline");
    let u = user.to_owned();
    if !needs(&s.db.read(move |c| user_data::presence(c, &u)).await?) {
        return Ok(());
    }
    let u = user.to_owned();
    s.db.write(move |tx| {
        let current = user_data::presence(tx, &u)?;
        if !needs(&current) {
            return Ok(());
        }
        let p = Presence {
            state: wanted.to_owned(),
            status_msg: current.and_then(|c| c.status_msg),
            last_active_ts: now_ms(),
        };
        user_data::set_presence(tx, &u, &p).map(|_| ())
    })
    .await
}

/// What one computation of a sync response works from.
struct Ctx<'a> {
    conn: &'a Connection,
    typing: &'a Typing,
    user: &'a str,
    device: &'a str,
    filter: &'a FilterDefinition,
    since: Option<Since>,
    full_state: bool,
    /// The position the response ends at (its `next_batch`).
    pos: Position,
}

impl Ctx<'_> {
    fn viewer(&self) -> Viewer<'_> {
        Viewer {
            user_id: self.user,
            device_id: self.device,
        }
    }

    /// Where deltas start: 0 for an initial sync.
    fn since_stream(&self) -> i64 {
        self.since.map_or(0, |s| s.stream)
    }
}

/// The response for one position, and whether it holds anything for the client (an empty
/// one is worth waiting on).
fn build(ctx: &Ctx<'_>) -> Result<(Value, bool)> {
    let (to_device, upto) = e2ee::to_device(ctx)?;
    // A response carrying part of a to-device backlog ends at its last message.
    let ctx = &Ctx {
        pos: Position {
            stream: upto,
            ..ctx.pos
        },
        ..*ctx
    };
    let rooms = rooms::rooms(ctx)?;
    let account_data = global::account_data(ctx)?;
    let presence = global::presence(ctx)?;
    let (changed, left) = e2ee::device_lists(ctx)?;
    let (key_counts, fallback_types) = e2ee::key_counts(ctx)?;
    let has_data = !rooms.is_empty()
        || !account_data.is_empty()
        || !presence.is_empty()
        || !to_device.is_empty()
        || !changed.is_empty()
        || !left.is_empty();
    let body = json!({
        "next_batch": next_batch(ctx.pos),
        "rooms": {
            "join": rooms.join,
            "invite": rooms.invite,
            "leave": rooms.leave,
            "knock": rooms.knock,
        },
        "account_data": {"events": account_data},
        "presence": {"events": presence},
        "to_device": {"events": to_device},
        "device_lists": {"changed": changed, "left": left},
        "device_one_time_keys_count": key_counts,
        "device_unused_fallback_key_types": fallback_types,
        // The name Synapse also sends, which clients from before the spec's v1.2 read.
        "org.matrix.msc2732.device_unused_fallback_key_types": fallback_types,
    });
    Ok((body, has_data))
}
