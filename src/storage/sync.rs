//! Reads behind `/sync` (a user's rooms, state at a stream position, the per-user streams
//! between two positions), the `filters` table, and the to-device inboxes (with what
//! deleting a device must clear).
//!
//! Every read takes an upper bound `upto`: the position the response's `next_batch` names.
//! Rows above it may already be visible in the snapshot, but belong to the next sync.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::user_data::Presence;
use super::{WriteTx, accounts, e2ee};
use crate::Result;

/// A local user's latest membership in a room.
#[derive(Debug, Clone)]
pub struct Membership {
    pub room_id: String,
    pub membership: String,
    pub event_id: String,
    pub stream: i64,
}

/// The rooms a user has a membership in, except the ones they forgot.
pub fn memberships(conn: &Connection, user_id: &str) -> Result<Vec<Membership>> {
    let mut stmt = conn.prepare_cached(
        "SELECT room_id, membership, event_id, stream_ordering FROM local_membership \
         WHERE user_id = ?1 AND forgotten = 0 ORDER BY stream_ordering",
    )?;
    let rows = stmt.query_map([user_id], |r| {
        Ok(Membership {
            room_id: r.get(0)?,
            membership: r.get(1)?,
            event_id: r.get(2)?,
            stream: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The user's membership in a room as of stream position `pos`: their newest accepted
/// member event at or below it.
pub fn membership_at(
    conn: &Connection,
    room_id: &str,
    user_id: &str,
    pos: i64,
) -> Result<Option<Membership>> {
    Ok(conn
        .prepare_cached(
            "SELECT event_id, stream_ordering, json_extract(json, '$.content.membership') FROM events \
             WHERE room_id = ?1 AND type = 'm.room.member' AND state_key = ?2 AND soft_failed = 0 \
             AND stream_ordering <= ?3 ORDER BY stream_ordering DESC LIMIT 1",
        )?
        .query_row(params![room_id, user_id, pos], |r| {
            Ok(Membership {
                room_id: room_id.to_owned(),
                event_id: r.get(0)?,
                stream: r.get(1)?,
                membership: r.get::<_, Option<String>>(2)?.unwrap_or_else(|| "leave".into()),
            })
        })
        .optional()?)
}

/// The state group holding the room's state just after stream position `pos` (the group
/// of its newest accepted event at or below `pos`); `None` before the room existed.
/// Outliers count: they carry the state a join through another node started from.
pub fn state_group_at(conn: &Connection, room_id: &str, pos: i64) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached(
            "SELECT state_group FROM events WHERE room_id = ?1 AND stream_ordering <= ?2 \
             AND (soft_failed = 0 OR outlier != 0) \
             ORDER BY stream_ordering DESC LIMIT 1",
        )?
        .query_row(params![room_id, pos], |r| r.get(0))
        .optional()?)
}

/// IDs of the accepted state events of a room with `after < stream <= upto`.
pub fn state_ids_between(conn: &Connection, room_id: &str, after: i64, upto: i64) -> Result<HashSet<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT event_id FROM events WHERE room_id = ?1 AND stream_ordering > ?2 AND stream_ordering <= ?3 \
         AND state_key IS NOT NULL AND soft_failed = 0",
    )?;
    let rows = stmt.query_map(params![room_id, after, upto], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A user's account data entries (`room_id` `user_data::GLOBAL` for global data) set with
/// `after < stream_id <= upto`, oldest first: `(type, content)`.
pub fn account_data_between(
    conn: &Connection,
    user_id: &str,
    room_id: &str,
    after: i64,
    upto: i64,
) -> Result<Vec<(String, Value)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT type, content FROM account_data WHERE user_id = ?1 AND room_id = ?2 \
         AND stream_id > ?3 AND stream_id <= ?4 ORDER BY stream_id",
    )?;
    let rows = stmt.query_map(params![user_id, room_id, after, upto], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, content) = row?;
        out.push((kind, serde_json::from_str(&content)?));
    }
    Ok(out)
}

/// One stored read receipt.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub user_id: String,
    pub receipt_type: String,
    /// `user_data::UNTHREADED` for an unthreaded receipt.
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
}

/// The receipts of a room that moved with `after < stream_id <= upto`.
pub fn receipts_between(conn: &Connection, room_id: &str, after: i64, upto: i64) -> Result<Vec<Receipt>> {
    let mut stmt = conn.prepare_cached(
        "SELECT user_id, receipt_type, thread_id, event_id, ts FROM receipts \
         WHERE room_id = ?1 AND stream_id > ?2 AND stream_id <= ?3 ORDER BY stream_id",
    )?;
    let rows = stmt.query_map(params![room_id, after, upto], |r| {
        Ok(Receipt {
            user_id: r.get(0)?,
            receipt_type: r.get(1)?,
            thread_id: r.get(2)?,
            event_id: r.get(3)?,
            ts: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Presence that changed with `after < stream_id <= upto`, of the user and of everyone
/// sharing a joined room with them.
pub fn presence_between(
    conn: &Connection,
    user_id: &str,
    after: i64,
    upto: i64,
) -> Result<Vec<(String, Presence)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.user_id, p.state, p.status_msg, p.last_active_ts FROM presence p \
         WHERE p.stream_id > ?2 AND p.stream_id <= ?3 AND (p.user_id = ?1 OR EXISTS ( \
           SELECT 1 FROM current_state x JOIN current_state y ON x.room_id = y.room_id \
           WHERE x.type = 'm.room.member' AND x.state_key = ?1 AND x.membership = 'join' \
           AND y.type = 'm.room.member' AND y.state_key = p.user_id AND y.membership = 'join')) \
         ORDER BY p.stream_id",
    )?;
    let rows = stmt.query_map(params![user_id, after, upto], |r| {
        Ok((
            r.get(0)?,
            Presence {
                state: r.get(1)?,
                status_msg: r.get(2)?,
                last_active_ts: r.get(3)?,
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Stores a filter definition (JSON text) for a user; returns its ID, numbered per user
/// from 0. Run inside a write transaction so two uploads never share an ID.
pub fn put_filter(conn: &Connection, user_id: &str, json: &str) -> Result<i64> {
    let id: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(filter_id) + 1, 0) FROM filters WHERE user_id = ?1")?
        .query_row([user_id], |r| r.get(0))?;
    conn.prepare_cached("INSERT INTO filters (user_id, filter_id, json) VALUES (?1, ?2, ?3)")?
        .execute(params![user_id, id, json])?;
    Ok(id)
}

/// A user's stored filter definition (JSON text).
pub fn get_filter(conn: &Connection, user_id: &str, filter_id: i64) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT json FROM filters WHERE user_id = ?1 AND filter_id = ?2")?
        .query_row(params![user_id, filter_id], |r| r.get(0))
        .optional()?)
}

/// One queued to-device message, content as JSON text.
#[derive(Debug, Clone)]
pub struct ToDevice {
    pub stream_id: i64,
    pub sender: String,
    pub kind: String,
    pub content: String,
}

/// Queues a to-device message for one device, at a fresh stream position: the commit wakes
/// the device's long-polling sync.
pub fn put_to_device(
    tx: &mut WriteTx<'_>,
    user_id: &str,
    device_id: &str,
    sender: &str,
    kind: &str,
    content: &str,
) -> Result<()> {
    let stream_id = tx.next_stream_id()?;
    tx.prepare_cached(
        "INSERT INTO to_device (stream_id, user_id, device_id, sender, type, content) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![stream_id, user_id, device_id, sender, kind, content])?;
    Ok(())
}

/// A device's queued messages with `after < stream_id <= upto`, oldest first, at most `limit`.
pub fn to_device_between(
    conn: &Connection,
    user_id: &str,
    device_id: &str,
    after: i64,
    upto: i64,
    limit: usize,
) -> Result<Vec<ToDevice>> {
    let mut stmt = conn.prepare_cached(
        "SELECT stream_id, sender, type, content FROM to_device \
         WHERE user_id = ?1 AND device_id = ?2 AND stream_id > ?3 AND stream_id <= ?4 \
         ORDER BY stream_id LIMIT ?5",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![user_id, device_id, after, upto, limit], |r| {
        Ok(ToDevice {
            stream_id: r.get(0)?,
            sender: r.get(1)?,
            kind: r.get(2)?,
            content: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Whether the device has messages at or below `upto`: ones a sync from `upto` acknowledges.
pub fn has_to_device_upto(conn: &Connection, user_id: &str, device_id: &str, upto: i64) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM to_device WHERE user_id = ?1 AND device_id = ?2 AND stream_id <= ?3")?
        .exists(params![user_id, device_id, upto])?)
}

/// Deletes the device's messages at or below `upto`: the client synced from a token past
/// them, which proves it received them.
pub fn ack_to_device(conn: &Connection, user_id: &str, device_id: &str, upto: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM to_device WHERE user_id = ?1 AND device_id = ?2 AND stream_id <= ?3")?
        .execute(params![user_id, device_id, upto])?;
    Ok(())
}

/// Deletes devices of a user with all that hangs off them: tokens and keys (by cascade),
/// signatures of their keys, and their to-device inboxes (no foreign key: a new device
/// reusing the ID must not read its predecessor's messages). Each deletion is
/// recorded as a device-list change, so users sharing a room refetch the user's devices.
/// Returns how many existed.
pub fn remove_devices(tx: &mut WriteTx<'_>, user_id: &str, device_ids: &[String]) -> Result<usize> {
    let mut deleted = 0;
    for device_id in device_ids {
        if !accounts::delete_device(tx, user_id, device_id)? {
            continue;
        }
        tx.prepare_cached("DELETE FROM to_device WHERE user_id = ?1 AND device_id = ?2")?
            .execute(params![user_id, device_id])?;
        e2ee::forget_device(tx, user_id, device_id)?;
        deleted += 1;
    }
    Ok(deleted)
}
