//! What this node keeps about other nodes' E2EE traffic: which to-device messages peers
//! already delivered (so a retried delivery is queued once), and a cache of remote users'
//! device and cross-signing keys, kept current by the device-list updates their nodes send
//! and served when a user's node cannot be reached.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::WriteTx;
use crate::Result;

/// How long a delivered to-device message ID is remembered. A peer retries an unconfirmed
/// delivery within seconds of seeing us again; a week covers any realistic absence.
pub const TO_DEVICE_DEDUP_MS: i64 = 7 * 24 * 3600 * 1000;

/// Records that `origin` delivered the to-device message `message_id`; `false` when it
/// already had, so the caller must not queue it again. Forgets IDs older than
/// [`TO_DEVICE_DEDUP_MS`] on the way, which keeps the table bounded by a week's traffic.
pub fn first_delivery(tx: &WriteTx<'_>, origin: &str, message_id: &str, now_ms: i64) -> Result<bool> {
    tx.prepare_cached("DELETE FROM to_device_received WHERE received_ts < ?1")?
        .execute([now_ms.saturating_sub(TO_DEVICE_DEDUP_MS)])?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO to_device_received (origin, message_id, received_ts) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![origin, message_id, now_ms])?;
    Ok(inserted == 1)
}

/// Whether `user_id` is joined to a room some local user is joined to: only such users'
/// device changes concern anyone here.
pub fn shares_room_with_local_user(conn: &Connection, user_id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM current_state them JOIN local_membership me \
               ON me.room_id = them.room_id AND me.membership = 'join' \
             WHERE them.type = 'm.room.member' AND them.state_key = ?1 AND them.membership = 'join' \
             LIMIT 1",
        )?
        .exists([user_id])?)
}

/// The stream position of a local user's latest device-list change (0 if none): the
/// `stream_id` of the federation `user/devices` answer.
pub fn device_list_stream(conn: &Connection, user_id: &str) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT COALESCE(MAX(stream_id), 0) FROM device_list_changes WHERE user_id = ?1")?
        .query_row([user_id], |r| r.get(0))?)
}

/// A remote user's keys as last reported by their node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CachedKeys {
    /// `(device_id, device keys)`, by device ID.
    pub devices: Vec<(String, Value)>,
    pub master: Option<Value>,
    pub self_signing: Option<Value>,
}

fn to_text(v: Option<&Value>) -> Result<Option<String>> {
    Ok(v.map(serde_json::to_string).transpose()?)
}

fn from_text(v: Option<String>) -> Result<Option<Value>> {
    Ok(v.map(|t| serde_json::from_str(&t)).transpose()?)
}

/// Replaces the cached keys of `user_id` with a complete answer from their node.
pub fn cache_user_keys(tx: &WriteTx<'_>, user_id: &str, keys: &CachedKeys, now_ms: i64) -> Result<()> {
    tx.prepare_cached("DELETE FROM remote_device_keys WHERE user_id = ?1")?
        .execute([user_id])?;
    for (device_id, json) in &keys.devices {
        put_device(tx, user_id, device_id, json)?;
    }
    tx.prepare_cached(
        "INSERT INTO remote_key_users (user_id, master_key, self_signing_key, fetched_ts) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (user_id) DO UPDATE SET master_key = excluded.master_key, \
         self_signing_key = excluded.self_signing_key, fetched_ts = excluded.fetched_ts",
    )?
    .execute(params![
        user_id,
        to_text(keys.master.as_ref())?,
        to_text(keys.self_signing.as_ref())?,
        now_ms
    ])?;
    Ok(())
}

fn put_device(conn: &Connection, user_id: &str, device_id: &str, json: &Value) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO remote_device_keys (user_id, device_id, json) VALUES (?1, ?2, ?3) \
         ON CONFLICT (user_id, device_id) DO UPDATE SET json = excluded.json",
    )?
    .execute(params![user_id, device_id, serde_json::to_string(json)?])?;
    Ok(())
}

/// Applies one device's update to the cache: new keys replace the old, `None` removes the
/// device (deleted). Only complete lists are cached, so a user without one is left alone.
pub fn cache_device(tx: &WriteTx<'_>, user_id: &str, device_id: &str, keys: Option<&Value>) -> Result<()> {
    let complete = tx
        .prepare_cached("SELECT 1 FROM remote_key_users WHERE user_id = ?1")?
        .exists([user_id])?;
    match keys {
        Some(json) if complete => put_device(tx, user_id, device_id, json),
        Some(_) => Ok(()),
        None => {
            tx.prepare_cached("DELETE FROM remote_device_keys WHERE user_id = ?1 AND device_id = ?2")?
                .execute(params![user_id, device_id])?;
            Ok(())
        }
    }
}

/// Forgets everything cached about `user_id`: a change arrived whose result is unknown.
pub fn invalidate_user(tx: &WriteTx<'_>, user_id: &str) -> Result<()> {
    tx.prepare_cached("DELETE FROM remote_device_keys WHERE user_id = ?1")?
        .execute([user_id])?;
    tx.prepare_cached("DELETE FROM remote_key_users WHERE user_id = ?1")?
        .execute([user_id])?;
    Ok(())
}

/// The cached keys of `user_id` when a complete list is cached.
pub fn cached_keys(conn: &Connection, user_id: &str) -> Result<Option<CachedKeys>> {
    let head: Option<(Option<String>, Option<String>)> = conn
        .prepare_cached("SELECT master_key, self_signing_key FROM remote_key_users WHERE user_id = ?1")?
        .query_row([user_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((master, self_signing)) = head else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT device_id, json FROM remote_device_keys WHERE user_id = ?1 ORDER BY device_id",
    )?;
    let rows = stmt.query_map([user_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut devices = Vec::new();
    for row in rows {
        let (device_id, json) = row?;
        devices.push((device_id, serde_json::from_str(&json)?));
    }
    Ok(Some(CachedKeys {
        devices,
        master: from_text(master)?,
        self_signing: from_text(self_signing)?,
    }))
}
