//! Server-side aggregation of child events: the "bundled aggregations" under
//! `unsigned["m.relations"]` of events served by /messages, /context, /event, /relations,
//! /threads and /sync.
//!
//! The spec aggregates three relation types (client-server API, "Aggregations of child
//! events" and the modules for each type):
//! - `m.thread`: `latest_event` (rendered like the root, with its own aggregations), `count`
//!   and `current_user_participated`; replies by ignored users do not count.
//! - `m.replace`: the most recent valid edit, rendered in full. The original's `content` is
//!   left intact (servers no longer apply edits), and a redacted original bundles none.
//! - `m.reference`: `{"chunk": [{"event_id": ...}]}`.
//!
//! `m.annotation` is not aggregated, and state events get no aggregations. A reader who
//! left a room sees no children sent after they left.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::http::StatusCode;
use rusqlite::Connection;
use serde_json::{Map, Value, json};

use crate::Result;
use crate::api::render::{Viewer, plain_client_event};
use crate::room::visibility::{RoomAccess, room_access};
use crate::storage::events::{ChildQuery, StoredEvent, child_summaries, get_events};
use crate::storage::user_data::{GLOBAL, account_data};

const THREAD: &str = "m.thread";
const REPLACE: &str = "m.replace";
const REFERENCE: &str = "m.reference";

/// Adds `unsigned["m.relations"]` to the rendered `out[i]` of each `evs[i]` that has
/// aggregatable children.
pub fn bundle_into(
    conn: &Connection,
    evs: &[StoredEvent],
    out: &mut [Value],
    viewer: Option<Viewer<'_>>,
    include_room_id: bool,
) -> Result<()> {
    let mut bundles = bundles(conn, evs, viewer, include_room_id, true)?;
    if bundles.is_empty() {
        return Ok(());
    }
    for (ev, rendered) in evs.iter().zip(out.iter_mut()) {
        if let Some(b) = bundles.remove(ev.pdu.event_id.as_str()) {
            attach(rendered, b);
        }
    }
    Ok(())
}

fn attach(rendered: &mut Value, relations: Map<String, Value>) {
    if let Some(u) = rendered.get_mut("unsigned").and_then(Value::as_object_mut) {
        u.insert("m.relations".into(), Value::Object(relations));
    }
}

/// `event_id → m.relations` for the non-state events of `evs`. With `nest`, the latest
/// event of each thread gets its own aggregations (one level only, so no loops).
fn bundles(
    conn: &Connection,
    evs: &[StoredEvent],
    viewer: Option<Viewer<'_>>,
    include_room_id: bool,
    nest: bool,
) -> Result<HashMap<String, Map<String, Value>>> {
    let mut by_room: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut senders: HashMap<&str, &str> = HashMap::new();
    for ev in evs.iter().filter(|e| !e.pdu.is_state()) {
        // Listed twice, a parent would count its children twice.
        if senders
            .insert(ev.pdu.event_id.as_str(), ev.pdu.sender.as_str())
            .is_none()
        {
            by_room
                .entry(ev.pdu.room.as_str())
                .or_default()
                .push(ev.pdu.event_id.to_string());
        }
    }
    if by_room.is_empty() {
        return Ok(HashMap::new());
    }
    let reader = viewer.map(|v| v.user_id);
    let ignored = match reader {
        Some(u) => ignored_users(conn, u)?,
        None => Vec::new(),
    };
    let mut rows = Vec::new();
    for (room, parents) in &by_room {
        let until = match reader {
            Some(u) => readable_until(conn, room, u)?,
            None => i64::MAX,
        };
        rows.extend(child_summaries(
            conn,
            &ChildQuery {
                room_id: room,
                parents,
                until,
                reader,
                ignored: &ignored,
            },
        )?);
    }
    if rows.is_empty() {
        return Ok(HashMap::new());
    }

    // The bundled events themselves, in one query, rendered like their parents.
    let wanted: Vec<String> = rows
        .iter()
        .filter(|r| r.rel_type != REFERENCE)
        .map(|r| r.event_id.clone())
        .collect();
    let fetched = get_events(conn, &wanted)?;
    let mut nested = if nest {
        let latest_ids: HashSet<&str> = rows
            .iter()
            .filter(|r| r.rel_type == THREAD)
            .map(|r| r.event_id.as_str())
            .collect();
        let latest: Vec<StoredEvent> = fetched
            .iter()
            .filter(|e| latest_ids.contains(e.pdu.event_id.as_str()))
            .cloned()
            .collect();
        bundles(conn, &latest, viewer, include_room_id, false)?
    } else {
        HashMap::new()
    };
    let mut rendered: HashMap<String, Value> = HashMap::with_capacity(fetched.len());
    for ev in &fetched {
        let mut v = plain_client_event(conn, ev, viewer, include_room_id)?;
        if let Some(b) = nested.remove(ev.pdu.event_id.as_str()) {
            attach(&mut v, b);
        }
        rendered.insert(ev.pdu.event_id.to_string(), v);
    }

    let mut out: HashMap<String, Map<String, Value>> = HashMap::new();
    for row in rows {
        match row.rel_type.as_str() {
            THREAD => {
                let Some(latest) = rendered.get(&row.event_id) else {
                    continue;
                };
                let root_sender = senders.get(row.parent.as_str()).copied();
                let participated = row.reader_sent || (reader.is_some() && root_sender == reader);
                out.entry(row.parent).or_default().insert(
                    THREAD.into(),
                    json!({
                        "latest_event": latest,
                        "count": row.count,
                        "current_user_participated": participated,
                    }),
                );
            }
            REPLACE => {
                if let Some(edit) = rendered.get(&row.event_id) {
                    out.entry(row.parent)
                        .or_default()
                        .insert(REPLACE.into(), edit.clone());
                }
            }
            REFERENCE => {
                let entry = out
                    .entry(row.parent)
                    .or_default()
                    .entry(REFERENCE)
                    .or_insert_with(|| json!({"chunk": []}));
                if let Some(chunk) = entry.get_mut("chunk").and_then(Value::as_array_mut) {
                    chunk.push(json!({"event_id": row.event_id}));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The users in `user_id`'s `m.ignored_user_list`.
pub(crate) fn ignored_users(conn: &Connection, user_id: &str) -> Result<Vec<String>> {
    Ok(account_data(conn, user_id, GLOBAL, "m.ignored_user_list")?
        .as_ref()
        .and_then(|c| c.get("ignored_users"))
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default())
}

/// The last stream position of a room whose events `user_id` may count: their leave for a
/// departed member, nothing for someone who may not read the room now.
pub(crate) fn readable_until(conn: &Connection, room_id: &str, user_id: &str) -> Result<i64> {
    match room_access(conn, room_id, user_id) {
        Ok(access) => Ok(counted_until(access)),
        Err(e) if e.status == StatusCode::FORBIDDEN => Ok(0),
        Err(e) => Err(e),
    }
}

/// The last stream position whose children a reader with `access` may count.
pub(crate) fn counted_until(access: RoomAccess) -> i64 {
    match access {
        RoomAccess::Departed { stream, .. } => stream,
        RoomAccess::Joined | RoomAccess::WorldReadable => i64::MAX,
    }
}
