//! Room-level lookups: aliases, memberships, the public directory.

use rusqlite::{Connection, OptionalExtension, params};

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
