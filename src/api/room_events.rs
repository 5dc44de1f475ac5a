//! Room events: send, state, event, redact, messages, context, relations.
//!
//! Every event is created by `room::append_local` inside one `Db::write`; reads run on one
//! reader snapshot and pass each event through `room::visibility` before rendering.
//!
//! Pagination tokens are stream positions, in the format `/sync` uses for `next_batch`:
//! `s<stream>` optionally followed by `_<typing serial>`. A token names the gap just after
//! event `stream`: paginating backwards from it returns events at or below `stream`,
//! forwards returns events above it.

mod messages;
mod read;
mod relations;
mod send;

use std::collections::HashMap;

use axum::Router;
use axum::http::Uri;
use ruma::api::client::filter::RoomEventFilter;
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId};

use crate::services::AppState;
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = send::add(r);
    let r = read::add(r);
    let r = messages::add(r);
    relations::add(r)
}

/// Parses a pagination token (`s123` or `s123_4`) into its stream position.
pub fn parse_stream_token(token: &str) -> Result<i64> {
    let bad = || Error::invalid_param(format!("invalid pagination token {token:?}"));
    let rest = token.strip_prefix('s').ok_or_else(bad)?;
    let (stream, tail) = rest.split_once('_').unwrap_or((rest, ""));
    if stream.is_empty() || !stream.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    // Later components (typing serial, ...) are other streams' positions: digits only.
    if rest.contains('_')
        && !tail
            .split('_')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    stream.parse().map_err(|_| bad())
}

/// The token for the gap just after stream position `stream`.
pub fn stream_token(stream: i64) -> String {
    format!("s{stream}")
}

/// A room ID from a path; `M_INVALID_PARAM` when malformed.
pub fn parse_room_id(s: &str) -> Result<OwnedRoomId> {
    RoomId::parse(s).map_err(|_| Error::invalid_param(format!("invalid room ID {s:?}")))
}

pub(crate) fn parse_event_id(s: &str) -> Result<OwnedEventId> {
    EventId::parse(s).map_err(|_| Error::invalid_param(format!("invalid event ID {s:?}")))
}

/// The query string as a map; a malformed one is `M_INVALID_PARAM`.
pub(crate) fn query_map(uri: &Uri) -> Result<HashMap<String, String>> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| Error::invalid_param(format!("bad query string: {e}")))
}

/// The `filter` query parameter: a `RoomEventFilter` given inline as JSON.
pub(crate) fn room_filter(q: &HashMap<String, String>) -> Result<RoomEventFilter> {
    match q.get("filter") {
        Some(f) => serde_json::from_str(f).map_err(|e| Error::bad_json(format!("invalid filter: {e}"))),
        None => Ok(RoomEventFilter::default()),
    }
}

/// Most events any one page returns, whatever the client asks.
pub const MAX_LIMIT: usize = 1000;

/// The `limit` query parameter (a non-negative integer), capped at [`MAX_LIMIT`].
pub(crate) fn limit_param(q: &HashMap<String, String>, default: usize) -> Result<usize> {
    match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map(|l| l.min(MAX_LIMIT))
            .map_err(|_| Error::invalid_param(format!("invalid limit {l:?}"))),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_stream_token;

    #[test]
    fn stream_tokens() {
        assert_eq!(parse_stream_token("s123").unwrap(), 123);
        assert_eq!(parse_stream_token("s123_4").unwrap(), 123);
        assert_eq!(parse_stream_token("s0_0_7").unwrap(), 0);
        for bad in [
            "",
            "s",
            "123",
            "s-1",
            "sx",
            "s1_",
            "s1_x",
            "s_1",
            "t1",
            "s99999999999999999999",
        ] {
            assert!(parse_stream_token(bad).is_err(), "{bad} should be rejected");
        }
    }
}
