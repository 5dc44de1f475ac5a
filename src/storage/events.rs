//! Event rows: lookup by ID, the DAG edges, forward extremities, and timeline reads.

use rusqlite::{Connection, OptionalExtension, params};

use crate::Result;
use crate::pdu::Pdu;

/// A stored event with its place in the stream.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub stream_ordering: i64,
    pub pdu: Pdu,
    pub soft_failed: bool,
    pub txn: Option<(String, String, String)>,
}

pub const EVENT_COLUMNS: &str = "stream_ordering, event_id, json, soft_failed, txn_user, txn_device, txn_id";

/// Maps a row selected with [`EVENT_COLUMNS`].
pub fn row_to_event(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    let event_id: String = row.get(1)?;
    let json: String = row.get(2)?;
    let pdu = Pdu::from_stored(&event_id, &json)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into()))?;
    let txn = match (
        row.get::<_, Option<String>>(4)?,
        row.get::<_, Option<String>>(5)?,
        row.get::<_, Option<String>>(6)?,
    ) {
        (Some(u), Some(d), Some(t)) => Some((u, d, t)),
        _ => None,
    };
    Ok(StoredEvent {
        stream_ordering: row.get(0)?,
        pdu,
        soft_failed: row.get(3)?,
        txn,
    })
}

pub fn get_event(conn: &Connection, event_id: &str) -> Result<Option<StoredEvent>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ?1"))?
        .query_row([event_id], row_to_event)
        .optional()?)
}

pub fn get_pdu(conn: &Connection, event_id: &str) -> Option<Pdu> {
    get_event(conn, event_id).ok().flatten().map(|e| e.pdu)
}

pub fn state_group_of(conn: &Connection, event_id: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT state_group FROM events WHERE event_id = ?1")?
        .query_row([event_id], |r| r.get(0))
        .optional()?)
}

pub fn forward_extremities(conn: &Connection, room_id: &str) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT event_id FROM forward_extremities WHERE room_id = ?1 ORDER BY event_id")?;
    let rows = stmt.query_map([room_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn max_depth(conn: &Connection, event_ids: &[String]) -> Result<u64> {
    let mut depth = 0u64;
    let mut stmt = conn.prepare_cached("SELECT depth FROM events WHERE event_id = ?1")?;
    for id in event_ids {
        if let Some(d) = stmt.query_row([id], |r| r.get::<_, i64>(0)).optional()? {
            depth = depth.max(u64::try_from(d).unwrap_or(0));
        }
    }
    Ok(depth)
}

/// Events of a room in stream order, strictly between `from` and `to` (exclusive),
/// newest first when `backwards`. Soft-failed events never reach the timeline.
pub fn room_events(
    conn: &Connection,
    room_id: &str,
    after: i64,
    before: i64,
    backwards: bool,
    limit: usize,
) -> Result<Vec<StoredEvent>> {
    let order = if backwards { "DESC" } else { "ASC" };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = ?1 AND stream_ordering > ?2 \
         AND stream_ordering < ?3 AND soft_failed = 0 ORDER BY stream_ordering {order} LIMIT ?4"
    ))?;
    let rows = stmt.query_map(params![room_id, after, before, limit as i64], row_to_event)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn stream_ordering_of(conn: &Connection, event_id: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT stream_ordering FROM events WHERE event_id = ?1")?
        .query_row([event_id], |r| r.get(0))
        .optional()?)
}
