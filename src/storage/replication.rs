//! Reads for room replication: which new events to gossip, which events a node holds, the
//! DAG walks peers ask for, and the members a server has in a room.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};

use crate::Result;

/// An event row as the publisher reads it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub stream: i64,
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    pub kind: String,
    pub state_key: Option<String>,
    pub json: String,
}

/// Events stored after stream position `after`, in stream order, at most `limit`.
pub fn events_after(conn: &Connection, after: i64, limit: usize) -> Result<Vec<NewEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT stream_ordering, event_id, room_id, sender, type, state_key, json FROM events \
         WHERE stream_ordering > ?1 ORDER BY stream_ordering LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit as i64], |r| {
        Ok(NewEvent {
            stream: r.get(0)?,
            event_id: r.get(1)?,
            room_id: r.get(2)?,
            sender: r.get(3)?,
            kind: r.get(4)?,
            state_key: r.get(5)?,
            json: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Whether any local user is joined to the room (per `local_membership`).
pub fn has_local_member(conn: &Connection, room_id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM local_membership WHERE room_id = ?1 AND membership = 'join' LIMIT 1")?
        .query_row([room_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Which of `event_ids` the node holds (soft-failed ones included).
pub fn held(conn: &Connection, event_ids: &[String]) -> Result<HashSet<String>> {
    if event_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let ids = serde_json::to_string(event_ids)?;
    let mut stmt = conn
        .prepare_cached("SELECT event_id FROM events WHERE event_id IN (SELECT value FROM json_each(?1))")?;
    let rows = stmt.query_map([ids], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// An event's place for a DAG walk: its room, depth and stream position, and whether it
/// may be served at all (not an invite's outlier, which only had its signatures checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub room_id: String,
    pub depth: i64,
    pub stream: i64,
    pub servable: bool,
}

pub fn dag_node(conn: &Connection, event_id: &str) -> Result<Option<Node>> {
    Ok(conn
        .prepare_cached("SELECT room_id, depth, stream_ordering, outlier FROM events WHERE event_id = ?1")?
        .query_row([event_id], |r| {
            Ok(Node {
                room_id: r.get(0)?,
                depth: r.get(1)?,
                stream: r.get(2)?,
                servable: r.get::<_, i64>(3)? != crate::room::import::OUTLIER_INVITE,
            })
        })
        .optional()?)
}

/// The prev_events of a stored event.
pub fn prev_events(conn: &Connection, event_id: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT prev_event_id FROM event_edges WHERE event_id = ?1")?;
    let rows = stmt.query_map([event_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// `(user, membership)` of every user of `server` with a member event in the room's
/// current state. Server names here are key hex, so a suffix match is exact.
pub fn server_members(conn: &Connection, room_id: &str, server: &str) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT state_key, COALESCE(membership, '') FROM current_state \
         WHERE room_id = ?1 AND type = 'm.room.member' AND substr(state_key, -length(?2) - 1) = ':' || ?2",
    )?;
    let rows = stmt.query_map(params![room_id, server], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The lowest depth of the room's DAG as this node holds it (outliers aside): an event
/// missing something deeper than this lacks history from before the node was in the room.
pub fn horizon(conn: &Connection, room_id: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT MIN(depth) FROM events WHERE room_id = ?1 AND outlier = 0")?
        .query_row([room_id], |r| r.get(0))?)
}
