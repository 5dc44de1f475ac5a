//! Room-level lookups: aliases, memberships, the public directory.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::Result;

pub fn alias_room(conn: &Connection, alias: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT room_id FROM room_aliases WHERE alias = ?1")?
        .query_row([alias], |r| r.get(0))
        .optional()?)
}

pub fn put_alias(conn: &Connection, alias: &str, room_id: &str, creator: &str) -> Result<()> {
    conn.prepare_cached("INSERT INTO room_aliases (alias, room_id, creator) VALUES (?1, ?2, ?3)")?
        .execute(params![alias, room_id, creator])?;
    Ok(())
}

/// A user's membership in a room per current state (`join`, `invite`, `leave`, `ban`, `knock`).
pub fn membership(conn: &Connection, room_id: &str, user_id: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT membership FROM current_state WHERE room_id = ?1 AND type = 'm.room.member' AND state_key = ?2",
        )?
        .query_row(params![room_id, user_id], |r| r.get(0))
        .optional()?
        .flatten())
}

/// Rooms a local user is joined to.
pub fn joined_rooms(conn: &Connection, user_id: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = ?1 AND membership = 'join'",
    )?;
    let rows = stmt.query_map([user_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Users with `membership` in a room.
pub fn members_with(conn: &Connection, room_id: &str, membership: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT state_key FROM current_state WHERE room_id = ?1 AND type = 'm.room.member' AND membership = ?2",
    )?;
    let rows = stmt.query_map(params![room_id, membership], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Whether the node holds the room (created here or joined).
pub fn room_exists(conn: &Connection, room_id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM rooms WHERE room_id = ?1")?
        .query_row([room_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// `(room_id, creator)` of a local alias.
pub fn alias_entry(conn: &Connection, alias: &str) -> Result<Option<(String, String)>> {
    Ok(conn
        .prepare_cached("SELECT room_id, creator FROM room_aliases WHERE alias = ?1")?
        .query_row([alias], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

pub fn delete_alias(conn: &Connection, alias: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM room_aliases WHERE alias = ?1")?
        .execute([alias])?
        > 0)
}

/// Whether a room is in the published room directory; `None` for an unknown room.
pub fn is_published(conn: &Connection, room_id: &str) -> Result<Option<bool>> {
    Ok(conn
        .prepare_cached("SELECT published FROM rooms WHERE room_id = ?1")?
        .query_row([room_id], |r| r.get(0))
        .optional()?)
}

pub fn set_published(conn: &Connection, room_id: &str, published: bool) -> Result<()> {
    conn.prepare_cached("UPDATE rooms SET published = ?2 WHERE room_id = ?1")?
        .execute(params![room_id, published])?;
    Ok(())
}

/// Rooms in the published room directory, in room ID order.
pub fn published_rooms(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT room_id FROM rooms WHERE published = 1 ORDER BY room_id")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A local user's latest membership in a room as recorded for /sync.
#[derive(Debug, Clone)]
pub struct LocalMembership {
    pub membership: String,
    pub event_id: String,
    pub stream_ordering: i64,
    pub forgotten: bool,
}

pub fn local_membership(conn: &Connection, user_id: &str, room_id: &str) -> Result<Option<LocalMembership>> {
    Ok(conn
        .prepare_cached(
            "SELECT membership, event_id, stream_ordering, forgotten FROM local_membership \
             WHERE user_id = ?1 AND room_id = ?2",
        )?
        .query_row(params![user_id, room_id], |r| {
            Ok(LocalMembership {
                membership: r.get(0)?,
                event_id: r.get(1)?,
                stream_ordering: r.get(2)?,
                forgotten: r.get(3)?,
            })
        })
        .optional()?)
}

/// Marks a room forgotten for a user; the next membership event clears the mark.
pub fn set_forgotten(conn: &Connection, user_id: &str, room_id: &str) -> Result<()> {
    conn.prepare_cached("UPDATE local_membership SET forgotten = 1 WHERE user_id = ?1 AND room_id = ?2")?
        .execute(params![user_id, room_id])?;
    Ok(())
}

/// The content of a current state event, if the room has one.
pub fn state_content(conn: &Connection, room_id: &str, kind: &str, state_key: &str) -> Result<Option<Value>> {
    Ok(
        crate::storage::state::current_state_id(conn, room_id, kind, state_key)?
            .and_then(|id| crate::storage::events::get_pdu(conn, &id))
            .map(|p| p.content_value()),
    )
}

/// Event IDs of the current member events of a room, with their membership.
pub fn member_event_ids(conn: &Connection, room_id: &str) -> Result<Vec<(String, Option<String>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT event_id, membership FROM current_state WHERE room_id = ?1 AND type = 'm.room.member' \
         ORDER BY state_key",
    )?;
    let rows = stmt.query_map([room_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Points every local alias of `from` at `to` (room upgrades); returns how many moved.
pub fn move_aliases(conn: &Connection, from: &str, to: &str) -> Result<usize> {
    Ok(conn
        .prepare_cached("UPDATE room_aliases SET room_id = ?2 WHERE room_id = ?1")?
        .execute(params![from, to])?)
}

/// A user the directory may show: `(user_id, display name, avatar URL)`.
pub type DirectoryEntry = (String, Option<String>, Option<String>);

/// Everyone the user directory searches for `searcher`: all local users with their global
/// profile first, then the members of rooms the searcher is joined to and of rooms that are
/// public or world-readable, with the profile from their member event.
pub fn user_directory_candidates(conn: &Connection, searcher: &str) -> Result<Vec<DirectoryEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT user_id, displayname, avatar_url, 0 AS local FROM users \
         UNION ALL \
         SELECT cs.state_key, \
           CASE WHEN json_type(e.json, '$.content.displayname') = 'text' \
             THEN json_extract(e.json, '$.content.displayname') END, \
           CASE WHEN json_type(e.json, '$.content.avatar_url') = 'text' \
             THEN json_extract(e.json, '$.content.avatar_url') END, 1 \
         FROM current_state cs JOIN events e ON e.event_id = cs.event_id \
         WHERE cs.type = 'm.room.member' AND cs.membership = 'join' AND cs.room_id IN ( \
           SELECT room_id FROM current_state WHERE type = 'm.room.member' AND state_key = ?1 \
             AND membership = 'join' \
           UNION SELECT s.room_id FROM current_state s JOIN events v ON v.event_id = s.event_id \
             WHERE s.type = 'm.room.join_rules' AND s.state_key = '' \
             AND json_extract(v.json, '$.content.join_rule') = 'public' \
           UNION SELECT s.room_id FROM current_state s JOIN events v ON v.event_id = s.event_id \
             WHERE s.type = 'm.room.history_visibility' AND s.state_key = '' \
             AND json_extract(v.json, '$.content.history_visibility') = 'world_readable') \
         ORDER BY 4",
    )?;
    let rows = stmt.query_map([searcher], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// What a user reported to the server admins (`POST /rooms/{roomId}/report[/{eventId}]`).
pub struct Report<'a> {
    pub reporter: &'a str,
    pub room_id: &'a str,
    pub event_id: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub score: Option<i64>,
    pub ts: i64,
}

pub fn insert_report(conn: &Connection, r: &Report<'_>) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO reports (reporter, room_id, event_id, reason, score, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![r.reporter, r.room_id, r.event_id, r.reason, r.score, r.ts])?;
    Ok(())
}
