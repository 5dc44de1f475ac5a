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

/// The last allocated global stream position.
pub fn stream_position(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'stream_pos'")?
        .query_row([], |r| r.get(0))?)
}

/// The event ID holding `(kind, state_key)` in state group `group`, walking its delta chain
/// newest first (at most `state::MAX_CHAIN` groups), without loading the whole state.
pub fn state_entry_at(conn: &Connection, group: i64, kind: &str, state_key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "WITH RECURSIVE chain(g, n) AS ( \
               SELECT ?1, 0 \
               UNION ALL SELECT sg.prev_group, chain.n + 1 FROM state_groups sg JOIN chain ON sg.id = chain.g \
               WHERE sg.prev_group IS NOT NULL) \
             SELECT e.event_id FROM chain JOIN state_group_entries e ON e.state_group = chain.g \
             WHERE e.type = ?2 AND e.state_key = ?3 ORDER BY chain.n LIMIT 1",
        )?
        .query_row(params![group, kind, state_key], |r| r.get(0))
        .optional()?)
}

/// A top-level string field of an event's content (`membership`, `history_visibility`).
pub fn content_str(conn: &Connection, event_id: &str, field: &str) -> Result<Option<String>> {
    let path = format!("$.content.\"{}\"", field.replace('"', ""));
    Ok(conn
        .prepare_cached(
            "SELECT CASE WHEN json_type(json, ?2) = 'text' THEN json_extract(json, ?2) END \
             FROM events WHERE event_id = ?1",
        )?
        .query_row(params![event_id, path], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .flatten())
}

/// The stream position of the newest accepted event that set `user`'s membership in a
/// room to `membership`.
pub fn last_membership_at(
    conn: &Connection,
    room_id: &str,
    user_id: &str,
    membership: &str,
) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached(
            "SELECT MAX(stream_ordering) FROM events WHERE room_id = ?1 AND type = 'm.room.member' \
             AND state_key = ?2 AND soft_failed = 0 AND json_extract(json, '$.content.membership') = ?3",
        )?
        .query_row(params![room_id, user_id, membership], |r| r.get(0))?)
}

/// The result recorded for a client transaction (`kind` is `send` or `redact`).
pub fn txn_result(
    conn: &Connection,
    user_id: &str,
    device_id: &str,
    kind: &str,
    txn_id: &str,
) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT result FROM txn_ids WHERE user_id = ?1 AND device_id = ?2 AND kind = ?3 AND txn_id = ?4",
        )?
        .query_row(params![user_id, device_id, kind, txn_id], |r| r.get(0))
        .optional()?)
}

pub fn put_txn(
    conn: &Connection,
    user_id: &str,
    device_id: &str,
    kind: &str,
    txn_id: &str,
    result: &str,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO txn_ids (user_id, device_id, kind, txn_id, result) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![user_id, device_id, kind, txn_id, result])?;
    Ok(())
}

/// Whether `sender` already has an unredacted annotation of `kind` with `key` on `parent`.
pub fn has_annotation(conn: &Connection, parent: &str, sender: &str, kind: &str, key: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM events WHERE relates_to = ?1 AND rel_type = 'm.annotation' AND sender = ?2 \
             AND type = ?3 AND soft_failed = 0 AND redacted_by IS NULL \
             AND json_extract(json, '$.content.\"m.relates_to\".key') = ?4 LIMIT 1",
        )?
        .query_row(params![parent, sender, kind, key], |_| Ok(()))
        .optional()?
        .is_some())
}

/// What a relations query asks for: children of `parent`, optionally of one relation type
/// and event type, strictly between the stream positions `after` and `before`.
pub struct RelationQuery<'a> {
    pub room_id: &'a str,
    pub parent: &'a str,
    pub rel_type: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub after: i64,
    pub before: i64,
    pub backwards: bool,
    pub limit: usize,
}

/// Accepted, unredacted events relating to a parent (a redaction removes the relation).
pub fn relations(conn: &Connection, q: &RelationQuery<'_>) -> Result<Vec<StoredEvent>> {
    let order = if q.backwards { "DESC" } else { "ASC" };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = ?1 AND relates_to = ?2 \
         AND (?3 IS NULL OR rel_type = ?3) AND (?4 IS NULL OR type = ?4) \
         AND stream_ordering > ?5 AND stream_ordering < ?6 AND soft_failed = 0 AND redacted_by IS NULL \
         ORDER BY stream_ordering {order} LIMIT ?7"
    ))?;
    let rows = stmt.query_map(
        params![
            q.room_id,
            q.parent,
            q.rel_type,
            q.kind,
            q.after,
            q.before,
            q.limit as i64
        ],
        row_to_event,
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
