//! End-to-end encryption keys: device keys, one-time and fallback keys, cross-signing keys
//! and the signatures uploaded for them, the device-list change stream, and (in
//! [`backup`]) server-side key backup. The server stores what clients upload and hands it
//! back; it never decrypts anything.
//!
//! Keys are stored as the JSON the client uploaded (`unsigned` stripped: the server adds
//! its own at query time).

pub mod backup;

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::WriteTx;
use crate::Result;

/// The three cross-signing keys; `as_str` is both the stored `key_type` and the key's
/// `usage` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossSigning {
    Master,
    SelfSigning,
    UserSigning,
}

impl CrossSigning {
    pub const ALL: [CrossSigning; 3] = [Self::Master, Self::SelfSigning, Self::UserSigning];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "master",
            Self::SelfSigning => "self_signing",
            Self::UserSigning => "user_signing",
        }
    }
}

fn parse_json(text: String) -> Result<Value> {
    Ok(serde_json::from_str(&text)?)
}

/// Records that `user_id`'s devices or keys changed, at a fresh stream position: it feeds
/// `/keys/changes` and `/sync` `device_lists`, and wakes long-polling syncs.
pub fn record_device_change(tx: &mut WriteTx<'_>, user_id: &str) -> Result<i64> {
    let stream = tx.next_stream_id()?;
    tx.prepare_cached("INSERT INTO device_list_changes (stream_id, user_id) VALUES (?1, ?2)")?
        .execute(params![stream, user_id])?;
    Ok(stream)
}

/// Records a change to a local user's device — `keys` uploaded, the device deleted, or
/// other keys changed by it — and queues an `m.device_list_update` for every server
/// sharing a room with the user, in the same transaction.
pub fn record_device_update(
    tx: &mut WriteTx<'_>,
    user_id: &str,
    device_id: &str,
    deleted: bool,
    keys: Option<&Value>,
) -> Result<i64> {
    let stream_id = record_device_change(tx, user_id)?;
    let update = super::outbox::DeviceUpdate {
        user_id,
        device_id,
        stream_id,
        deleted,
        keys,
    };
    super::outbox::enqueue_device_list_update(tx, update)?;
    Ok(stream_id)
}

/// Call after deleting a local user's device (its keys go by cascade): drops the
/// signatures others made of its keys, which a later device reusing the ID must not
/// inherit, and records the change so other users refresh their view of the device list.
pub fn forget_device(tx: &mut WriteTx<'_>, user_id: &str, device_id: &str) -> Result<i64> {
    clear_device_signatures(tx, user_id, device_id)?;
    record_device_update(tx, user_id, device_id, true, None)
}

/// A device's uploaded identity keys.
pub fn device_keys(conn: &Connection, user_id: &str, device_id: &str) -> Result<Option<Value>> {
    conn.prepare_cached("SELECT json FROM device_keys WHERE user_id = ?1 AND device_id = ?2")?
        .query_row(params![user_id, device_id], |r| r.get(0))
        .optional()?
        .map(parse_json)
        .transpose()
}

/// Stores a device's identity keys, replacing earlier ones.
pub fn put_device_keys(conn: &Connection, user_id: &str, device_id: &str, keys: &Value) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO device_keys (user_id, device_id, json) VALUES (?1, ?2, ?3) \
         ON CONFLICT (user_id, device_id) DO UPDATE SET json = excluded.json",
    )?
    .execute(params![user_id, device_id, serde_json::to_string(keys)?])?;
    Ok(())
}

/// Drops the signatures made of a device's keys (they were over keys it replaced).
pub fn clear_device_signatures(conn: &Connection, user_id: &str, device_id: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM key_signatures WHERE target_user = ?1 AND target_key_id = ?2")?
        .execute(params![user_id, device_id])?;
    Ok(())
}

/// A device that has uploaded identity keys.
#[derive(Debug, Clone)]
pub struct KeyedDevice {
    pub device_id: String,
    pub keys: Value,
    pub display_name: Option<String>,
}

/// The user's devices with identity keys (all of them when `only` is empty).
pub fn keyed_devices(conn: &Connection, user_id: &str, only: &[String]) -> Result<Vec<KeyedDevice>> {
    let mut stmt = conn.prepare_cached(
        "SELECT k.device_id, k.json, d.display_name FROM device_keys k \
         JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id \
         WHERE k.user_id = ?1 ORDER BY k.device_id",
    )?;
    let rows = stmt.query_map([user_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (device_id, json, display_name) = row?;
        if only.is_empty() || only.contains(&device_id) {
            out.push(KeyedDevice {
                device_id,
                keys: parse_json(json)?,
                display_name,
            });
        }
    }
    Ok(out)
}

/// The user's device IDs (with or without keys).
pub fn device_ids(conn: &Connection, user_id: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT device_id FROM devices WHERE user_id = ?1")?;
    let rows = stmt.query_map([user_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One stored one-time key.
pub fn one_time_key(
    conn: &Connection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
) -> Result<Option<Value>> {
    conn.prepare_cached(
        "SELECT json FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 AND key_id = ?4",
    )?
    .query_row(params![user_id, device_id, algorithm, key_id], |r| r.get(0))
    .optional()?
    .map(parse_json)
    .transpose()
}

/// Adds a one-time key (the caller has checked it is new).
pub fn put_one_time_key(
    conn: &Connection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
    key: &Value,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, json) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        user_id,
        device_id,
        algorithm,
        key_id,
        serde_json::to_string(key)?
    ])?;
    Ok(())
}

/// Unclaimed one-time keys of a device, per algorithm. Always names `signed_curve25519`
/// (0 if none): clients poll that count to decide when to upload more.
pub fn one_time_key_counts(
    conn: &Connection,
    user_id: &str,
    device_id: &str,
) -> Result<BTreeMap<String, i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = ?1 AND device_id = ?2 GROUP BY algorithm",
    )?;
    let rows = stmt.query_map(params![user_id, device_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut counts: BTreeMap<String, i64> = rows.collect::<rusqlite::Result<_>>()?;
    counts.entry("signed_curve25519".to_owned()).or_insert(0);
    Ok(counts)
}

/// Sets the device's fallback key for `algorithm`. Re-uploading the current key keeps its
/// `used` flag, so a client retrying an upload does not hide that the key was used.
pub fn put_fallback_key(
    conn: &Connection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
    key: &Value,
) -> Result<()> {
    let json = serde_json::to_string(key)?;
    conn.prepare_cached(
        "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, json, used) \
         VALUES (?1, ?2, ?3, ?4, ?5, 0) ON CONFLICT (user_id, device_id, algorithm) DO UPDATE \
         SET key_id = excluded.key_id, json = excluded.json, used = 0 \
         WHERE key_id != excluded.key_id OR json != excluded.json",
    )?
    .execute(params![user_id, device_id, algorithm, key_id, json])?;
    Ok(())
}

/// Algorithms of the device's fallback keys that have not been handed out yet (for
/// `/sync` `device_unused_fallback_key_types`).
pub fn unused_fallback_key_types(conn: &Connection, user_id: &str, device_id: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT algorithm FROM fallback_keys WHERE user_id = ?1 AND device_id = ?2 AND used = 0 ORDER BY algorithm",
    )?;
    let rows = stmt.query_map(params![user_id, device_id], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Claims a key of `algorithm` for the device: its oldest one-time key, deleted in the
/// caller's write transaction so no other claim can return it, or else its fallback key,
/// marked used. Returns `(key_id, key)`.
pub fn claim_key(
    tx: &WriteTx<'_>,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> Result<Option<(String, Value)>> {
    // rowid follows insertion, so keys go out in upload order.
    let one_time: Option<(String, String)> = tx
        .prepare_cached(
            "DELETE FROM one_time_keys WHERE rowid = (SELECT rowid FROM one_time_keys \
             WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 ORDER BY rowid LIMIT 1) \
             RETURNING key_id, json",
        )?
        .query_row(params![user_id, device_id, algorithm], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let claimed = match one_time {
        Some(k) => Some(k),
        None => tx
            .prepare_cached(
                "UPDATE fallback_keys SET used = 1 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 \
                 RETURNING key_id, json",
            )?
            .query_row(params![user_id, device_id, algorithm], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?,
    };
    claimed.map(|(id, json)| Ok((id, parse_json(json)?))).transpose()
}

/// One of a user's cross-signing keys.
pub fn cross_signing_key(conn: &Connection, user_id: &str, kind: CrossSigning) -> Result<Option<Value>> {
    conn.prepare_cached("SELECT json FROM cross_signing_keys WHERE user_id = ?1 AND key_type = ?2")?
        .query_row(params![user_id, kind.as_str()], |r| r.get(0))
        .optional()?
        .map(parse_json)
        .transpose()
}

pub fn put_cross_signing_key(
    conn: &Connection,
    user_id: &str,
    kind: CrossSigning,
    key: &Value,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO cross_signing_keys (user_id, key_type, json) VALUES (?1, ?2, ?3) \
         ON CONFLICT (user_id, key_type) DO UPDATE SET json = excluded.json",
    )?
    .execute(params![user_id, kind.as_str(), serde_json::to_string(key)?])?;
    Ok(())
}

/// A signature uploaded through `/keys/signatures/upload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySignature {
    pub signer_user: String,
    pub signer_key_id: String,
    pub signature: String,
}

/// Stores a signature of `target_user`'s key `target_key_id` (a device ID or a
/// cross-signing public key).
pub fn put_signature(
    conn: &Connection,
    target_user: &str,
    target_key_id: &str,
    sig: &KeySignature,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO key_signatures (target_user, target_key_id, signer_user, signer_key_id, signature) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (target_user, target_key_id, signer_user, signer_key_id) \
         DO UPDATE SET signature = excluded.signature",
    )?
    .execute(params![
        target_user,
        target_key_id,
        sig.signer_user,
        sig.signer_key_id,
        sig.signature
    ])?;
    Ok(())
}

/// The uploaded signatures of one key.
pub fn signatures(conn: &Connection, target_user: &str, target_key_id: &str) -> Result<Vec<KeySignature>> {
    let mut stmt = conn.prepare_cached(
        "SELECT signer_user, signer_key_id, signature FROM key_signatures \
         WHERE target_user = ?1 AND target_key_id = ?2 ORDER BY signer_user, signer_key_id",
    )?;
    let rows = stmt.query_map(params![target_user, target_key_id], |r| {
        Ok(KeySignature {
            signer_user: r.get(0)?,
            signer_key_id: r.get(1)?,
            signature: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// SQL: whether `?1` and the user in column `{who}` are both joined to some room now.
fn shares_room(who: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM current_state x JOIN current_state y ON x.room_id = y.room_id \
         WHERE x.type = 'm.room.member' AND x.state_key = ?1 AND x.membership = 'join' \
         AND y.type = 'm.room.member' AND y.state_key = {who} AND y.membership = 'join')"
    )
}

/// Device-list changes `user_id` should hear about for stream positions in
/// `(after, upto]`: `(changed, left)`, each sorted.
///
/// `changed`: the user and everyone now sharing a joined room with them whose devices or
/// keys changed, plus everyone who newly shares a room with them (a join in range by
/// either side), whose devices they may have stopped tracking. `left`: users who left or
/// were banned in range from a room the user is in (or who are in a room the user left
/// in range) and now share no joined room with them.
pub fn device_list_delta(
    conn: &Connection,
    user_id: &str,
    after: i64,
    upto: i64,
) -> Result<(Vec<String>, Vec<String>)> {
    let shared = shares_room("d.user_id");
    let changed_sql = format!(
        "SELECT d.user_id FROM device_list_changes d WHERE d.stream_id > ?2 AND d.stream_id <= ?3 \
           AND (d.user_id = ?1 OR {shared}) \
         UNION \
         SELECT them.state_key FROM events e \
           JOIN current_state me ON me.room_id = e.room_id AND me.type = 'm.room.member' \
             AND me.state_key = ?1 AND me.membership = 'join' \
           JOIN current_state them ON them.room_id = e.room_id AND them.type = 'm.room.member' \
             AND them.membership = 'join' AND (e.state_key = ?1 OR them.state_key = e.state_key) \
           WHERE e.stream_ordering > ?2 AND e.stream_ordering <= ?3 AND e.type = 'm.room.member' \
             AND e.soft_failed = 0 AND json_extract(e.json, '$.content.membership') = 'join' \
             AND them.state_key != ?1 \
         ORDER BY 1"
    );
    let not_shared = shares_room("c.user_id");
    let left_sql = format!(
        "SELECT DISTINCT c.user_id FROM ( \
           SELECT e.state_key AS user_id FROM events e \
             JOIN current_state me ON me.room_id = e.room_id AND me.type = 'm.room.member' \
               AND me.state_key = ?1 AND me.membership = 'join' \
             WHERE e.stream_ordering > ?2 AND e.stream_ordering <= ?3 AND e.type = 'm.room.member' \
               AND e.soft_failed = 0 AND json_extract(e.json, '$.content.membership') IN ('leave', 'ban') \
           UNION \
           SELECT them.state_key FROM events e \
             JOIN current_state them ON them.room_id = e.room_id AND them.type = 'm.room.member' \
               AND them.membership = 'join' \
             WHERE e.stream_ordering > ?2 AND e.stream_ordering <= ?3 AND e.type = 'm.room.member' \
               AND e.state_key = ?1 AND e.soft_failed = 0 \
               AND json_extract(e.json, '$.content.membership') != 'join' \
         ) c WHERE c.user_id != ?1 AND NOT {not_shared} ORDER BY 1"
    );
    let collect = |sql: &str| -> Result<Vec<String>> {
        let mut stmt = conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params![user_id, after, upto], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    Ok((collect(&changed_sql)?, collect(&left_sql)?))
}
