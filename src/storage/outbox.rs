//! The durable outbox: what peers must receive, queued in the write transaction that
//! stores it, so a crash between storing and sending loses nothing.
//!
//! Room events are queued as "heads": one `outbox_rooms` row per (destination, room) that
//! says the destination has not confirmed the room's local events up to `stream`. Sending
//! the room's forward extremities delivers them all (the receiver fetches what it lacks),
//! so a burst of events costs one row and one round trip. To-device messages and
//! device-list updates are `outbox` rows, one EDU content each, delivered in `id` order.
//!
//! `attempts` and `next_attempt_ts` carry the retry backoff (see [`backoff_ms`]); seeing a
//! peer again resets them ([`reset_destination`]). The sender is `p2p::outbox`.

use ruma::ServerName;
use rusqlite::{Connection, params};
use serde_json::{Value, json};

use super::WriteTx;
use crate::Result;
use crate::api::account::now_ms;
use crate::p2p::peer_id::peer_id_of;
use crate::pdu::Pdu;

/// How long a new room row waits before its first attempt: gossip has usually delivered
/// the event by then, and one heads round trip then covers the whole burst.
pub const COALESCE_MS: i64 = 250;
/// The first retry delay; each failure doubles it up to [`BACKOFF_CAP_MS`].
pub const BACKOFF_BASE_MS: i64 = 250;
/// The longest retry delay: peers come and go, and one must not wait long for a peer
/// that is back (no peer is ever given up on).
pub const BACKOFF_CAP_MS: i64 = 4_000;
/// Most queued messages per destination; past it the oldest are dropped, so a peer that
/// never returns costs bounded space.
pub const MAX_MESSAGES_PER_DESTINATION: i64 = 1_000;

pub const KIND_TO_DEVICE: &str = "to_device";
pub const KIND_DEVICE_LIST_UPDATE: &str = "device_list_update";
/// An invite whose invitee's node could not be reached: the fields of an `invite` request.
pub const KIND_INVITE: &str = "invite";

/// One queued message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub id: i64,
    pub kind: String,
    pub body: String,
    pub attempts: i64,
}

/// One room the destination has not confirmed up to `stream`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomHead {
    pub room_id: String,
    pub stream: i64,
    pub attempts: i64,
}

/// The retry delay after `attempts` failures for a jitter sample `jitter` in [0, 1]:
/// uniform over [d/2, d] with d = min(250 ms × 2^(attempts−1), 4 s). Jitter spreads the
/// retries of many rows and nodes that failed together.
pub fn backoff_ms(attempts: i64, jitter: f64) -> i64 {
    let exp = attempts.clamp(1, 16) - 1;
    let d = (BACKOFF_BASE_MS << exp).min(BACKOFF_CAP_MS);
    d / 2 + ((d - d / 2) as f64 * jitter.clamp(0.0, 1.0)).round() as i64
}

/// [`backoff_ms`] with a random jitter sample.
pub fn jittered_backoff_ms(attempts: i64) -> i64 {
    backoff_ms(attempts, rand::random_range(0.0..=1.0))
}

/// Whether `server` is a node the peer layer can reach: names that are not meshserver
/// keys can never be delivered to, so nothing is queued for them.
pub fn reachable(server: &str) -> bool {
    ServerName::parse(server)
        .ok()
        .and_then(|s| peer_id_of(&s))
        .is_some()
}

fn server_of(user_id: &str) -> Option<&str> {
    user_id.split_once(':').map(|(_, s)| s)
}

fn collect(stmt: &mut rusqlite::CachedStatement<'_>, p: impl rusqlite::Params) -> Result<Vec<String>> {
    let rows = stmt.query_map(p, |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Servers with a joined or invited member in a room, per current state.
pub fn room_servers(conn: &Connection, room_id: &str) -> Result<Vec<String>> {
    collect(
        &mut conn.prepare_cached(
            "SELECT DISTINCT substr(state_key, instr(state_key, ':') + 1) FROM current_state \
             WHERE room_id = ?1 AND type = 'm.room.member' AND membership IN ('join', 'invite')",
        )?,
        [room_id],
    )
}

/// Servers with a member joined to a room that `user_id` is joined to.
pub fn servers_sharing_room(conn: &Connection, user_id: &str) -> Result<Vec<String>> {
    collect(
        &mut conn.prepare_cached(
            "SELECT DISTINCT substr(o.state_key, instr(o.state_key, ':') + 1) FROM current_state me \
             JOIN current_state o ON o.room_id = me.room_id AND o.type = 'm.room.member' \
               AND o.membership = 'join' \
             WHERE me.type = 'm.room.member' AND me.state_key = ?1 AND me.membership = 'join'",
        )?,
        [user_id],
    )
}

/// Queues a local event, stored at `stream`, for every other server in its room (now that
/// the event's state applies). A member event also goes to the server of the member it
/// is about, so a server that was kicked or left hears of it.
pub fn enqueue_room(tx: &WriteTx<'_>, ours: &ServerName, pdu: &Pdu, stream: i64) -> Result<()> {
    let room = pdu.room.as_str();
    let mut servers = room_servers(tx, room)?;
    if pdu.kind.to_string() == "m.room.member"
        && let Some(s) = pdu.state_key.as_deref().and_then(server_of)
        && !servers.iter().any(|x| x == s)
    {
        servers.push(s.to_owned());
    }
    let due = now_ms() + COALESCE_MS;
    for dest in servers.iter().filter(|s| *s != ours.as_str() && reachable(s)) {
        // A row in backoff keeps its schedule: new events do not hammer an absent peer.
        tx.prepare_cached(
            "INSERT INTO outbox_rooms (destination, room_id, stream, attempts, next_attempt_ts) \
             VALUES (?1, ?2, ?3, 0, ?4) ON CONFLICT (destination, room_id) DO UPDATE SET stream = excluded.stream",
        )?
        .execute(params![dest, room, stream, due])?;
    }
    Ok(())
}

/// Queues one message for `destination`, due now; past [`MAX_MESSAGES_PER_DESTINATION`]
/// the destination's oldest messages are dropped. Returns the row ID.
pub fn enqueue_message(conn: &Connection, destination: &str, kind: &str, body: &Value) -> Result<i64> {
    conn.prepare_cached(
        "INSERT INTO outbox (destination, kind, body, attempts, next_attempt_ts) VALUES (?1, ?2, ?3, 0, ?4)",
    )?
    .execute(params![destination, kind, body.to_string(), now_ms()])?;
    let id = conn.last_insert_rowid();
    let dropped = conn
        .prepare_cached(
            "DELETE FROM outbox WHERE destination = ?1 AND id <= \
             (SELECT id FROM outbox WHERE destination = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        )?
        .execute(params![destination, MAX_MESSAGES_PER_DESTINATION])?;
    if dropped > 0 {
        tracing::warn!(destination, dropped, "outbox full: dropped the oldest messages");
    }
    Ok(id)
}

/// Queues `m.direct_to_device` contents, `(destination, content)`, and advances the stream
/// so the sender wakes (a request for remote users only stores nothing else that would).
pub fn enqueue_to_device(tx: &mut WriteTx<'_>, edus: &[(String, Value)]) -> Result<()> {
    if edus.is_empty() {
        return Ok(());
    }
    for (dest, content) in edus {
        enqueue_message(tx, dest, KIND_TO_DEVICE, content)?;
    }
    tx.next_stream_id()?;
    Ok(())
}

/// What changed about one of a local user's devices.
#[derive(Debug, Clone, Copy)]
pub struct DeviceUpdate<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    /// The position of the change in `device_list_changes`.
    pub stream_id: i64,
    pub deleted: bool,
    /// The device's new identity keys; absent when other keys (cross-signing, signatures)
    /// changed, which tells the receiver to query the user's keys again.
    pub keys: Option<&'a Value>,
}

/// Queues an `m.device_list_update` for every other server sharing a room with the user.
/// The caller's change already advanced the stream, which wakes the sender. An earlier
/// update of the same device still queued is superseded: only the latest matters.
pub fn enqueue_device_list_update(conn: &Connection, u: DeviceUpdate<'_>) -> Result<()> {
    let Some(ours) = server_of(u.user_id) else {
        return Ok(());
    };
    let mut content = json!({
        "user_id": u.user_id,
        "device_id": u.device_id,
        "stream_id": u.stream_id,
        "prev_id": [],
    });
    if u.deleted {
        content["deleted"] = true.into();
    }
    if let Some(keys) = u.keys {
        content["keys"] = keys.clone();
    }
    for dest in servers_sharing_room(conn, u.user_id)?
        .iter()
        .filter(|s| *s != ours && reachable(s))
    {
        conn.prepare_cached(
            "DELETE FROM outbox WHERE destination = ?1 AND kind = ?2 \
             AND json_extract(body, '$.user_id') = ?3 AND json_extract(body, '$.device_id') = ?4",
        )?
        .execute(params![dest, KIND_DEVICE_LIST_UPDATE, u.user_id, u.device_id])?;
        enqueue_message(conn, dest, KIND_DEVICE_LIST_UPDATE, &content)?;
    }
    Ok(())
}

/// Every destination with queued rows and its earliest `next_attempt_ts`.
pub fn schedule(conn: &Connection) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT destination, MIN(t) FROM ( \
           SELECT destination, MIN(next_attempt_ts) AS t FROM outbox GROUP BY destination \
           UNION ALL \
           SELECT destination, MIN(next_attempt_ts) FROM outbox_rooms GROUP BY destination) \
         GROUP BY destination",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A destination's messages due at `now`, oldest first, at most `limit`.
pub fn due_messages(conn: &Connection, destination: &str, now: i64, limit: usize) -> Result<Vec<Message>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, body, attempts FROM outbox WHERE destination = ?1 AND next_attempt_ts <= ?2 \
         ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![destination, now, limit as i64], |r| {
        Ok(Message {
            id: r.get(0)?,
            kind: r.get(1)?,
            body: r.get(2)?,
            attempts: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A destination's rooms due at `now`, at most `limit`.
pub fn due_rooms(conn: &Connection, destination: &str, now: i64, limit: usize) -> Result<Vec<RoomHead>> {
    let mut stmt = conn.prepare_cached(
        "SELECT room_id, stream, attempts FROM outbox_rooms WHERE destination = ?1 AND next_attempt_ts <= ?2 \
         ORDER BY next_attempt_ts, room_id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![destination, now, limit as i64], |r| {
        Ok(RoomHead {
            room_id: r.get(0)?,
            stream: r.get(1)?,
            attempts: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes a message the destination confirmed or refused for good.
pub fn delete_message(conn: &Connection, id: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// The destination confirmed the room up to `stream`: deletes the row unless the room
/// got newer local events meanwhile (compare-and-delete); such a row is due again after
/// [`COALESCE_MS`]. Returns whether it was deleted.
pub fn confirm_room(
    conn: &Connection,
    destination: &str,
    room_id: &str,
    stream: i64,
    now: i64,
) -> Result<bool> {
    let deleted = conn
        .prepare_cached("DELETE FROM outbox_rooms WHERE destination = ?1 AND room_id = ?2 AND stream = ?3")?
        .execute(params![destination, room_id, stream])?
        > 0;
    if !deleted {
        conn.prepare_cached(
            "UPDATE outbox_rooms SET attempts = 0, next_attempt_ts = ?3 WHERE destination = ?1 AND room_id = ?2",
        )?
        .execute(params![destination, room_id, now + COALESCE_MS])?;
    }
    Ok(deleted)
}

/// Retries one room later (the destination answered, but not yet with success).
pub fn retry_room(conn: &Connection, destination: &str, room_id: &str, attempts: i64, at: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE outbox_rooms SET attempts = ?3, next_attempt_ts = ?4 WHERE destination = ?1 AND room_id = ?2",
    )?
    .execute(params![destination, room_id, attempts, at])?;
    Ok(())
}

/// The destination could not be reached: every row of it waits until `at`, counting
/// `attempts` failures.
pub fn back_off_destination(conn: &Connection, destination: &str, attempts: i64, at: i64) -> Result<()> {
    for sql in [
        "UPDATE outbox SET attempts = ?2, next_attempt_ts = ?3 WHERE destination = ?1",
        "UPDATE outbox_rooms SET attempts = ?2, next_attempt_ts = ?3 WHERE destination = ?1",
    ] {
        conn.prepare_cached(sql)?
            .execute(params![destination, attempts, at])?;
    }
    Ok(())
}

/// Whether any row of the destination (all destinations for `None`) is backing off.
pub fn backing_off(conn: &Connection, destination: Option<&str>) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE attempts > 0 AND (?1 IS NULL OR destination = ?1)) \
             OR EXISTS (SELECT 1 FROM outbox_rooms WHERE attempts > 0 AND (?1 IS NULL OR destination = ?1))",
        )?
        .query_row([destination], |r| r.get(0))?)
}

/// The peer was seen: its rows that were backing off are due at `now`, counting from zero
/// again (all destinations for `None`). Rows still coalescing keep their short wait.
/// Returns how many rows changed.
pub fn reset_destination(conn: &Connection, destination: Option<&str>, now: i64) -> Result<usize> {
    let mut n = 0;
    for sql in [
        "UPDATE outbox SET attempts = 0, next_attempt_ts = ?2 WHERE attempts > 0 AND (?1 IS NULL OR destination = ?1)",
        "UPDATE outbox_rooms SET attempts = 0, next_attempt_ts = ?2 \
         WHERE attempts > 0 AND (?1 IS NULL OR destination = ?1)",
    ] {
        n += conn.prepare_cached(sql)?.execute(params![destination, now])?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
