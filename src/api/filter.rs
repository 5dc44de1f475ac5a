//! Filters: `POST/GET /user/{userId}/filter[/{filterId}]`, and the matching of events
//! against a filter definition (ruma's `FilterDefinition` types), shared by /sync and
//! /messages.

use axum::Router;
use ruma::api::client::filter::{Filter, FilterDefinition, RoomEventFilter};

use crate::pdu::Pdu;
use crate::services::AppState;
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    r
}

/// Parses a filter given inline as JSON (the `filter` query parameter).
pub fn parse_inline(json: &str) -> Result<FilterDefinition> {
    serde_json::from_str(json).map_err(|e| Error::bad_json(format!("invalid filter: {e}")))
}

/// `*` in a filter type matches any run of characters, as the spec says.
fn glob_match(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((head, tail)) => {
            value.starts_with(head) && {
                let rest = &value[head.len()..];
                (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob_match(tail, &rest[i..]))
            }
        }
    }
}

fn type_and_sender_match(
    types: &Option<Vec<String>>,
    not_types: &[String],
    senders: &Option<Vec<ruma::OwnedUserId>>,
    not_senders: &[ruma::OwnedUserId],
    kind: &str,
    sender: &str,
) -> bool {
    if not_types.iter().any(|t| glob_match(t, kind)) || not_senders.iter().any(|s| s.as_str() == sender) {
        return false;
    }
    if let Some(t) = types
        && !t.iter().any(|t| glob_match(t, kind))
    {
        return false;
    }
    if let Some(s) = senders
        && !s.iter().any(|s| s.as_str() == sender)
    {
        return false;
    }
    true
}

/// Whether a room event passes a `RoomEventFilter` (types, senders, rooms, contains_url).
pub fn room_event_matches(f: &RoomEventFilter, pdu: &Pdu) -> bool {
    if f.not_rooms.iter().any(|r| *r == pdu.room) {
        return false;
    }
    if let Some(rooms) = &f.rooms
        && !rooms.iter().any(|r| *r == pdu.room)
    {
        return false;
    }
    if let Some(url_filter) = &f.url_filter {
        let has_url = pdu.content_value().get("url").is_some();
        let want = matches!(url_filter, ruma::api::client::filter::UrlFilter::EventsWithUrl);
        if has_url != want {
            return false;
        }
    }
    type_and_sender_match(
        &f.types,
        &f.not_types,
        &f.senders,
        &f.not_senders,
        &pdu.kind.to_string(),
        pdu.sender.as_str(),
    )
}

/// Whether a non-room event (presence, account data) of `kind` from `sender` passes a `Filter`.
pub fn event_matches(f: &Filter, kind: &str, sender: &str) -> bool {
    type_and_sender_match(&f.types, &f.not_types, &f.senders, &f.not_senders, kind, sender)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("m.*", "m.room.message"));
        assert!(glob_match("m.room.message", "m.room.message"));
        assert!(!glob_match("m.room.message", "m.room.member"));
        assert!(glob_match("*.member", "m.room.member"));
        assert!(!glob_match("x.*", "m.room.member"));
    }
}
