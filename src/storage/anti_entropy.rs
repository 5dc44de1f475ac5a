//! Reads for anti-entropy (`p2p::reconcile`): the rooms two servers share, a room's
//! summary for an extremities exchange, and its event set sorted by `(depth, event ID)`.

use rusqlite::{Connection, params};

use crate::Result;
use crate::room::import::OUTLIER_INVITE;

/// Rooms where a local user is joined and `server` has a joined member per our current
/// state, sorted. Server names here are key hex, so a suffix match is exact.
pub fn shared_rooms(conn: &Connection, server: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT lm.room_id FROM local_membership lm WHERE lm.membership = 'join' \
         AND EXISTS (SELECT 1 FROM current_state cs WHERE cs.room_id = lm.room_id \
           AND cs.type = 'm.room.member' AND cs.membership = 'join' \
           AND substr(cs.state_key, -length(?1) - 1) = ':' || ?1) \
         ORDER BY lm.room_id",
    )?;
    let rows = stmt.query_map([server], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The greatest depth of the room's DAG as held here (outliers aside); 0 for none.
pub fn max_depth(conn: &Connection, room_id: &str) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT COALESCE(MAX(depth), 0) FROM events WHERE room_id = ?1 AND outlier = 0")?
        .query_row([room_id], |r| r.get(0))?)
}

/// The reconciled set of a room: `(depth, event ID)` of every event held of depth at least
/// `lower`, join-state outliers included (held is held), an invite's outliers not (only
/// their signatures were checked; they are never served).
pub fn room_keys(conn: &Connection, room_id: &str, lower: i64) -> Result<Vec<(i64, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT depth, event_id FROM events WHERE room_id = ?1 AND depth >= ?2 AND outlier != ?3",
    )?;
    let rows = stmt.query_map(params![room_id, lower, OUTLIER_INVITE], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The IDs of the room's events whose keys are in `[lo, hi)`, ascending, at most `limit`.
pub fn ids_in_range(
    conn: &Connection,
    room_id: &str,
    lo: &(i64, String),
    hi: Option<&(i64, String)>,
    limit: usize,
) -> Result<Vec<String>> {
    // An absent upper bound is a key above every real one.
    let (hi_depth, hi_id, bounded) = match hi {
        Some((d, id)) => (*d, id.as_str(), 1),
        None => (i64::MAX, "", 0),
    };
    let mut stmt = conn.prepare_cached(
        "SELECT event_id FROM events WHERE room_id = ?1 AND outlier != ?2 \
         AND (depth > ?3 OR (depth = ?3 AND event_id >= ?4)) \
         AND (?7 = 0 OR depth < ?5 OR (depth = ?5 AND event_id < ?6)) \
         ORDER BY depth, event_id LIMIT ?8",
    )?;
    let rows = stmt.query_map(
        params![
            room_id,
            OUTLIER_INVITE,
            lo.0,
            lo.1,
            hi_depth,
            hi_id,
            bounded,
            limit as i64
        ],
        |r| r.get(0),
    )?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
