//! Room state snapshots that share structure.
//!
//! A state group is either a full snapshot (`prev_group` NULL) or a delta over
//! `prev_group`. A state event creates a one-entry delta; a message event reuses the group
//! of the state before it. Chains are cut at [`MAX_CHAIN`] by writing a full snapshot, so a
//! lookup walks at most that many groups.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::Result;

pub const MAX_CHAIN: i64 = 64;

/// `(type, state_key) → event_id`.
pub type StateIds = HashMap<(String, String), String>;

/// Loads the full state of `group`.
pub fn load_group(conn: &Connection, group: i64) -> Result<StateIds> {
    let mut state = StateIds::new();
    let mut next = Some(group);
    let mut entries = conn
        .prepare_cached("SELECT type, state_key, event_id FROM state_group_entries WHERE state_group = ?1")?;
    let mut parent = conn.prepare_cached("SELECT prev_group FROM state_groups WHERE id = ?1")?;
    while let Some(g) = next {
        let rows = entries.query_map([g], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
        for row in rows {
            let (key, id): ((String, String), String) = row?;
            // Newer deltas were read first; they win.
            state.entry(key).or_insert(id);
        }
        next = parent
            .query_row([g], |r| r.get::<_, Option<i64>>(0))
            .optional()?
            .flatten();
    }
    Ok(state)
}

/// Stores the state `full` as a new group, as a delta over `base` when that is short.
pub fn store_group(conn: &Connection, room_id: &str, base: Option<i64>, full: &StateIds) -> Result<i64> {
    if let Some(b) = base {
        let len = chain_len(conn, b)?;
        let base_state = load_group(conn, b)?;
        // A delta cannot express removals; Matrix state never loses keys, but a resolved
        // state may differ in shape, and then only a full snapshot is right.
        if len < MAX_CHAIN && base_state.keys().all(|k| full.contains_key(k)) {
            let delta = full.iter().filter(|(k, v)| base_state.get(*k) != Some(*v));
            return insert_group(conn, room_id, Some(b), len + 1, delta);
        }
    }
    insert_group(conn, room_id, None, 0, full.iter())
}

/// Adds one state event on top of `base` as a one-entry delta.
pub fn add_to_group(
    conn: &Connection,
    room_id: &str,
    base: Option<i64>,
    key: (&str, &str),
    event_id: &str,
) -> Result<i64> {
    let entry = ((key.0.to_owned(), key.1.to_owned()), event_id.to_owned());
    let len = match base {
        Some(b) => chain_len(conn, b)? + 1,
        None => 0,
    };
    match base {
        Some(b) if len > MAX_CHAIN => {
            let mut full = load_group(conn, b)?;
            full.insert(entry.0, entry.1);
            insert_group(conn, room_id, None, 0, full.iter())
        }
        _ => insert_group(conn, room_id, base, len, std::iter::once((&entry.0, &entry.1))),
    }
}

fn insert_group<'a>(
    conn: &Connection,
    room_id: &str,
    prev: Option<i64>,
    chain_len: i64,
    entries: impl Iterator<Item = (&'a (String, String), &'a String)>,
) -> Result<i64> {
    conn.prepare_cached("INSERT INTO state_groups (room_id, prev_group, chain_len) VALUES (?1, ?2, ?3)")?
        .execute(params![room_id, prev, chain_len])?;
    let id = conn.last_insert_rowid();
    let mut ins = conn.prepare_cached(
        "INSERT INTO state_group_entries (state_group, type, state_key, event_id) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for ((t, k), e) in entries {
        ins.execute(params![id, t, k, e])?;
    }
    Ok(id)
}

fn chain_len(conn: &Connection, group: i64) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT chain_len FROM state_groups WHERE id = ?1")?
        .query_row([group], |r| r.get(0))?)
}

/// The current state event ID for `(type, state_key)` in a room.
pub fn current_state_id(
    conn: &Connection,
    room_id: &str,
    kind: &str,
    state_key: &str,
) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT event_id FROM current_state WHERE room_id = ?1 AND type = ?2 AND state_key = ?3",
        )?
        .query_row(params![room_id, kind, state_key], |r| r.get(0))
        .optional()?)
}

/// All current state event IDs of a room.
pub fn current_state_ids(conn: &Connection, room_id: &str) -> Result<StateIds> {
    let mut stmt =
        conn.prepare_cached("SELECT type, state_key, event_id FROM current_state WHERE room_id = ?1")?;
    let rows = stmt.query_map([room_id], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Replaces the materialised current state of a room with `state`.
pub fn set_current_state(conn: &Connection, room_id: &str, group: i64, state: &StateIds) -> Result<()> {
    conn.prepare_cached("DELETE FROM current_state WHERE room_id = ?1")?
        .execute([room_id])?;
    for ((t, k), e) in state {
        upsert_current(conn, room_id, t, k, e)?;
    }
    conn.prepare_cached("UPDATE rooms SET current_state_group = ?2 WHERE room_id = ?1")?
        .execute(params![room_id, group])?;
    Ok(())
}

/// Sets one current-state entry, recording the membership of member events.
pub fn upsert_current(
    conn: &Connection,
    room_id: &str,
    kind: &str,
    state_key: &str,
    event_id: &str,
) -> Result<()> {
    let membership: Option<String> = if kind == "m.room.member" {
        conn.prepare_cached(
            "SELECT json_extract(json, '$.content.membership') FROM events WHERE event_id = ?1",
        )?
        .query_row([event_id], |r| r.get(0))
        .optional()?
        .flatten()
    } else {
        None
    };
    conn.prepare_cached(
        "INSERT INTO current_state (room_id, type, state_key, event_id, membership) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id, membership = excluded.membership",
    )?
    .execute(params![room_id, kind, state_key, event_id, membership])?;
    Ok(())
}
