//! Renders stored events for clients (the `ClientEvent` format), shared by /sync,
//! /messages, /context, /event and /state so every endpoint shows an event the same way.

use rusqlite::Connection;
use serde_json::{Map, Value, json};

use crate::Result;
use crate::storage::events::{StoredEvent, get_event};

/// Who is looking: their own device's events carry `unsigned.transaction_id`.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
}

/// The client form of `ev`. `include_room_id` is false inside /sync, where the room is the
/// map key. State events get `prev_content` and `replaces_state` from the state before;
/// other events their bundled aggregations (`unsigned.m.relations`).
pub fn client_event(
    conn: &Connection,
    ev: &StoredEvent,
    viewer: Option<Viewer<'_>>,
    include_room_id: bool,
) -> Result<Value> {
    client_events(conn, std::slice::from_ref(ev), viewer, include_room_id)?
        .pop()
        .ok_or_else(|| crate::Error::internal("event not rendered"))
}

/// [`client_event`] without bundled aggregations, which are computed for a whole batch at
/// once (see `api::aggregation`).
pub fn plain_client_event(
    conn: &Connection,
    ev: &StoredEvent,
    viewer: Option<Viewer<'_>>,
    include_room_id: bool,
) -> Result<Value> {
    let mut unsigned = Map::new();
    if let (Some(v), Some((u, d, t))) = (viewer, &ev.txn)
        && v.user_id == u
        && v.device_id == d
    {
        unsigned.insert("transaction_id".into(), json!(t));
    }
    if let Some(sk) = &ev.pdu.state_key
        && let Some(prev) = state_before(conn, ev, sk)?
    {
        unsigned.insert("replaces_state".into(), json!(prev.pdu.event_id));
        if let Some(c) = prev.pdu.json.get("content") {
            unsigned.insert("prev_content".into(), serde_json::to_value(c)?);
        }
        unsigned.insert("prev_sender".into(), json!(prev.pdu.sender));
    }
    Ok(ev.pdu.to_client_event(include_room_id, unsigned))
}

/// The event this state event replaced, read from the state group before it.
fn state_before(conn: &Connection, ev: &StoredEvent, state_key: &str) -> Result<Option<StoredEvent>> {
    // The state before an event is the state after its (first) prev event: exact for
    // local events, which are built on the single current state.
    let Some(prev) = ev.pdu.prev_events.first() else {
        return Ok(None);
    };
    let Some(group) = crate::storage::events::state_group_of(conn, prev.as_str())? else {
        return Ok(None);
    };
    let kind = ev.pdu.kind.to_string();
    match crate::storage::events::state_entry_at(conn, group, &kind, state_key)? {
        Some(id) if id != ev.pdu.event_id.as_str() => get_event(conn, &id),
        _ => Ok(None),
    }
}

/// Renders a list, skipping nothing: an event that cannot be rendered is a bug, not input.
/// Bundled aggregations for the whole list take a fixed number of queries, not one per event.
pub fn client_events(
    conn: &Connection,
    evs: &[StoredEvent],
    viewer: Option<Viewer<'_>>,
    include_room_id: bool,
) -> Result<Vec<Value>> {
    let mut out = evs
        .iter()
        .map(|e| plain_client_event(conn, e, viewer, include_room_id))
        .collect::<Result<Vec<_>>>()?;
    crate::api::aggregation::bundle_into(conn, evs, &mut out, viewer, include_room_id)?;
    Ok(out)
}
