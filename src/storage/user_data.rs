//! Per-user data outside the room DAG: account data (global and per room), receipts,
//! presence, and the profile columns of `users`.
//!
//! Every write that /sync must deliver takes a fresh stream position in the caller's
//! transaction: that is what orders it against room events and wakes long-polls.
//! Conventions /sync relies on: global account data has `room_id = ''`; an unthreaded
//! receipt has `thread_id = ''`.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::WriteTx;
use crate::Result;

/// `room_id` of global account data.
pub const GLOBAL: &str = "";
/// `thread_id` of an unthreaded receipt.
pub const UNTHREADED: &str = "";

/// The content of one account data entry (`room_id` [`GLOBAL`] for global data).
pub fn account_data(conn: &Connection, user_id: &str, room_id: &str, kind: &str) -> Result<Option<Value>> {
    let json: Option<String> = conn
        .prepare_cached("SELECT content FROM account_data WHERE user_id = ?1 AND room_id = ?2 AND type = ?3")?
        .query_row(params![user_id, room_id, kind], |r| r.get(0))
        .optional()?;
    Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
}

/// Sets one account data entry; returns its stream position.
pub fn put_account_data(
    tx: &mut WriteTx<'_>,
    user_id: &str,
    room_id: &str,
    kind: &str,
    content: &Value,
) -> Result<i64> {
    let stream = tx.next_stream_id()?;
    tx.prepare_cached(
        "INSERT INTO account_data (user_id, room_id, type, content, stream_id) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, stream_id = excluded.stream_id",
    )?
    .execute(params![user_id, room_id, kind, serde_json::to_string(content)?, stream])?;
    Ok(stream)
}

/// Moves a user's receipt of `receipt_type` (per thread) to `event_id`.
pub fn put_receipt(
    tx: &mut WriteTx<'_>,
    room_id: &str,
    user_id: &str,
    receipt_type: &str,
    thread_id: &str,
    event_id: &str,
    ts: i64,
) -> Result<i64> {
    let stream = tx.next_stream_id()?;
    tx.prepare_cached(
        "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (room_id, user_id, receipt_type, thread_id) \
         DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, stream_id = excluded.stream_id",
    )?
    .execute(params![
        room_id,
        user_id,
        receipt_type,
        thread_id,
        event_id,
        ts,
        stream
    ])?;
    Ok(stream)
}

/// A user's stored presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub state: String,
    pub status_msg: Option<String>,
    pub last_active_ts: i64,
}

pub fn presence(conn: &Connection, user_id: &str) -> Result<Option<Presence>> {
    Ok(conn
        .prepare_cached("SELECT state, status_msg, last_active_ts FROM presence WHERE user_id = ?1")?
        .query_row([user_id], |r| {
            Ok(Presence {
                state: r.get(0)?,
                status_msg: r.get(1)?,
                last_active_ts: r.get(2)?,
            })
        })
        .optional()?)
}

pub fn set_presence(tx: &mut WriteTx<'_>, user_id: &str, p: &Presence) -> Result<i64> {
    let stream = tx.next_stream_id()?;
    tx.prepare_cached(
        "INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream_id) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg, \
         last_active_ts = excluded.last_active_ts, stream_id = excluded.stream_id",
    )?
    .execute(params![user_id, p.state, p.status_msg, p.last_active_ts, stream])?;
    Ok(stream)
}

/// Whether two users are both joined to at least one common room.
pub fn share_a_room(conn: &Connection, a: &str, b: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM current_state x JOIN current_state y ON x.room_id = y.room_id \
             WHERE x.type = 'm.room.member' AND x.state_key = ?1 AND x.membership = 'join' \
             AND y.type = 'm.room.member' AND y.state_key = ?2 AND y.membership = 'join' LIMIT 1",
        )?
        .exists(params![a, b])?)
}

/// Profile fields this node stores, named as in the API and the member event content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileField {
    DisplayName,
    AvatarUrl,
}

impl ProfileField {
    pub fn key(self) -> &'static str {
        match self {
            ProfileField::DisplayName => "displayname",
            ProfileField::AvatarUrl => "avatar_url",
        }
    }
}

/// Sets (or clears, with `None`) one profile field of an existing user.
pub fn set_profile_field(
    conn: &Connection,
    user_id: &str,
    field: ProfileField,
    value: Option<&str>,
) -> Result<()> {
    // The column name comes from the enum, never from input.
    conn.prepare_cached(&format!(
        "UPDATE users SET {} = ?2 WHERE user_id = ?1",
        field.key()
    ))?
    .execute(params![user_id, value])?;
    Ok(())
}
