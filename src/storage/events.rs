//! Event rows: lookup by ID, the DAG edges, forward extremities, and timeline reads.

use std::cell::RefCell;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::pdu_cache::PduCache;
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

/// [`get_pdu`] through the writer's cache of parsed PDUs. Each call still reads the event's
/// row (`redacted_by` only, through the `event_id` index), so a PDU is served from the cache
/// only while the event is stored and its JSON has not been rewritten by a redaction.
pub fn get_pdu_cached(conn: &Connection, cache: &RefCell<PduCache>, event_id: &str) -> Option<Arc<Pdu>> {
    let redacted_by: Option<String> = conn
        .prepare_cached("SELECT redacted_by FROM events WHERE event_id = ?1")
        .and_then(|mut s| s.query_row([event_id], |r| r.get(0)).optional())
        .ok()
        .flatten()?;
    let mut cache = cache.borrow_mut();
    if let Some(pdu) = cache.get(event_id, redacted_by.as_deref()) {
        return Some(pdu);
    }
    let pdu = Arc::new(get_pdu(conn, event_id)?);
    cache.insert(pdu.clone(), redacted_by);
    Some(pdu)
}

/// Whether the node holds the event (an index lookup; nothing is parsed).
pub fn is_stored(conn: &Connection, event_id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM events WHERE event_id = ?1")?
        .query_row([event_id], |_| Ok(()))
        .optional()?
        .is_some())
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

/// Events by ID in stream order; IDs the node does not hold are skipped. One query for
/// the whole list.
pub fn get_events(conn: &Connection, event_ids: &[String]) -> Result<Vec<StoredEvent>> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids = serde_json::to_string(event_ids)?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN (SELECT value FROM json_each(?1)) \
         ORDER BY stream_ordering"
    ))?;
    let rows = stmt.query_map([ids], row_to_event)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The ID of the newest accepted event of a room.
pub fn latest_event_id(conn: &Connection, room_id: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT event_id FROM events WHERE room_id = ?1 AND soft_failed = 0 \
             ORDER BY stream_ordering DESC LIMIT 1",
        )?
        .query_row([room_id], |r| r.get(0))
        .optional()?)
}

/// Which children of a batch of parents (all in one room) a reader may count: accepted,
/// unredacted, at or below stream position `until`, not sent by an ignored user.
pub struct ChildQuery<'a> {
    pub room_id: &'a str,
    pub parents: &'a [String],
    pub until: i64,
    /// The reader, for `m.thread` participation.
    pub reader: Option<&'a str>,
    pub ignored: &'a [String],
}

/// One aggregated relation of a parent: for `m.thread` the latest child with the count
/// and whether the reader sent any; for `m.replace` the most recent valid edit; for
/// `m.reference` one row per child.
#[derive(Debug, Clone)]
pub struct ChildSummary {
    pub parent: String,
    pub rel_type: String,
    pub event_id: String,
    pub count: i64,
    pub reader_sent: bool,
}

/// The relations the spec aggregates (`m.thread`, `m.replace`, `m.reference`) for a batch
/// of parents, in one query. Edits count only when valid (same sender and type as an
/// unredacted, non-state original that is not itself an edit; `m.new_content` present
/// unless encrypted); the most recent is by `origin_server_ts`, then event ID.
pub fn child_summaries(conn: &Connection, q: &ChildQuery<'_>) -> Result<Vec<ChildSummary>> {
    if q.parents.is_empty() {
        return Ok(Vec::new());
    }
    let parents = serde_json::to_string(q.parents)?;
    let ignored = serde_json::to_string(q.ignored)?;
    let mut stmt = conn.prepare_cached(
        // CROSS JOIN and the unary `+`s pin the plan to one `events_relates` lookup per
        // parent: without statistics SQLite would rather walk the room's whole timeline.
        "WITH kids AS ( \
           SELECT e.* FROM json_each(?1) p CROSS JOIN events e ON e.relates_to = p.value \
           WHERE +e.room_id = ?2 AND e.rel_type IN ('m.thread', 'm.replace', 'm.reference') \
           AND e.soft_failed = 0 AND e.redacted_by IS NULL AND +e.stream_ordering <= ?3) \
         SELECT relates_to, 'm.thread', event_id, MAX(stream_ordering), COUNT(*), SUM(sender = ?4) \
           FROM kids WHERE rel_type = 'm.thread' AND sender NOT IN (SELECT value FROM json_each(?5)) \
           GROUP BY relates_to \
         UNION ALL \
         SELECT relates_to, 'm.replace', event_id, stream_ordering, 1, 0 FROM ( \
           SELECT k.relates_to, k.event_id, k.stream_ordering, ROW_NUMBER() OVER ( \
             PARTITION BY k.relates_to ORDER BY k.origin_server_ts DESC, k.event_id DESC) AS rn \
           FROM kids k JOIN events p ON p.event_id = k.relates_to \
           WHERE k.rel_type = 'm.replace' AND k.state_key IS NULL AND p.sender = k.sender \
           AND p.type = k.type AND p.state_key IS NULL AND p.rel_type IS NOT 'm.replace' \
           AND p.redacted_by IS NULL \
           AND (k.type = 'm.room.encrypted' OR json_type(k.json, '$.content.\"m.new_content\"') = 'object')) \
           WHERE rn = 1 \
         UNION ALL \
         SELECT relates_to, 'm.reference', event_id, stream_ordering, 1, 0 FROM kids \
           WHERE rel_type = 'm.reference' \
         ORDER BY 4",
    )?;
    let rows = stmt.query_map(params![parents, q.room_id, q.until, q.reader, ignored], |r| {
        Ok(ChildSummary {
            parent: r.get(0)?,
            rel_type: r.get(1)?,
            event_id: r.get(2)?,
            count: r.get(4)?,
            reader_sent: r.get::<_, Option<i64>>(5)?.unwrap_or(0) > 0,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Which thread roots of a room to list, newest thread activity first.
pub struct ThreadQuery<'a> {
    pub room_id: &'a str,
    /// Only threads whose latest counted reply is at or below this stream position.
    pub at_or_below: i64,
    /// Replies after this stream position are not counted (the reader left then).
    pub until: i64,
    /// Only threads this user started or replied to.
    pub participant: Option<&'a str>,
    pub ignored: &'a [String],
    pub limit: usize,
}

/// `(thread root ID, stream position of its latest counted reply)`, newest first.
pub fn thread_roots(conn: &Connection, q: &ThreadQuery<'_>) -> Result<Vec<(String, i64)>> {
    let ignored = serde_json::to_string(q.ignored)?;
    let mut stmt = conn.prepare_cached(
        "SELECT c.relates_to, MAX(c.stream_ordering) AS latest FROM events c \
         WHERE c.room_id = ?1 AND c.rel_type = 'm.thread' AND c.soft_failed = 0 \
         AND c.redacted_by IS NULL AND c.stream_ordering <= ?2 \
         AND c.sender NOT IN (SELECT value FROM json_each(?3)) \
         GROUP BY c.relates_to \
         HAVING latest <= ?4 AND (?5 IS NULL OR SUM(c.sender = ?5) > 0 OR EXISTS ( \
           SELECT 1 FROM events r WHERE r.event_id = c.relates_to AND r.sender = ?5)) \
         ORDER BY latest DESC LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![
            q.room_id,
            q.until,
            ignored,
            q.at_or_below,
            q.participant,
            q.limit as i64
        ],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
