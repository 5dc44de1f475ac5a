//! Mailboxes (migration 6): signed items other nodes deposited here for a destination
//! that is away, until that destination collects them or they expire; and the reads the
//! sender side needs to pick holders. The peer side is `p2p::mailbox`.

use rusqlite::{Connection, OptionalExtension, params};

use super::WriteTx;
use super::outbox::{KIND_INVITE, KIND_TO_DEVICE};
use crate::{Error, Result};

/// Largest item held (its signed JSON): an invite with its room state fits, and a
/// to-device EDU of room keys easily does.
pub const MAX_ITEM_BYTES: usize = 256 * 1024;
/// Most items held for one destination: a week of key shares from a few busy rooms.
pub const MAX_PER_DESTINATION: i64 = 256;
/// Most items held from one origin, across destinations, so no one node fills the box.
pub const MAX_PER_ORIGIN: i64 = 512;
/// Most items, and bytes, held in all: what a phone lends others.
pub const MAX_TOTAL: i64 = 4096;
pub const MAX_TOTAL_BYTES: i64 = 64 * 1024 * 1024;
/// How long an item is held: a node away longer catches up from its peers' rooms, and
/// to-device messages that old (room keys aside) are stale anyway.
pub const TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// One item to hold for `destination`.
#[derive(Debug, Clone)]
pub struct Deposit {
    pub destination: String,
    pub item_id: String,
    /// The origin's signed item, as received.
    pub item: String,
}

/// How a deposit went: items newly held, and items that were held already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub stored: u32,
    pub duplicates: u32,
}

/// The server part of a user ID in `current_state.state_key`.
const SERVER_OF_MEMBER: &str = "substr(state_key, instr(state_key, ':') + 1)";

/// Whether some room this node is joined to has joined members of both `destination` and
/// `origin`: a holder takes mail only between nodes it knows to share a room.
pub fn shares_room(conn: &Connection, destination: &str, origin: &str) -> Result<bool> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM local_membership me \
           JOIN current_state d ON d.room_id = me.room_id AND d.type = 'm.room.member' \
             AND d.membership = 'join' AND {d} = ?1 \
           JOIN current_state o ON o.room_id = me.room_id AND o.type = 'm.room.member' \
             AND o.membership = 'join' AND {o} = ?2 \
         WHERE me.membership = 'join')",
        d = SERVER_OF_MEMBER.replace("state_key", "d.state_key"),
        o = SERVER_OF_MEMBER.replace("state_key", "o.state_key"),
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![destination, origin], |r| r.get(0))?)
}

/// Servers joined to a room that this node and `destination` are joined to: the nodes
/// that would hold mail for it.
pub fn holders_for(conn: &Connection, destination: &str) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT DISTINCT {h} FROM local_membership me \
           JOIN current_state d ON d.room_id = me.room_id AND d.type = 'm.room.member' \
             AND d.membership = 'join' AND {d} = ?1 \
           JOIN current_state h ON h.room_id = me.room_id AND h.type = 'm.room.member' \
             AND h.membership = 'join' \
         WHERE me.membership = 'join'",
        d = SERVER_OF_MEMBER.replace("state_key", "d.state_key"),
        h = SERVER_OF_MEMBER.replace("state_key", "h.state_key"),
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([destination], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A queued outbox message a mailbox can carry.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub destination: String,
    pub kind: String,
    pub body: String,
    pub attempts: i64,
}

/// The outbox's to-device and invite messages, oldest first, at most `limit`.
pub fn pending_mail(conn: &Connection, limit: usize) -> Result<Vec<Pending>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, destination, kind, body, attempts FROM outbox WHERE kind IN (?1, ?2) ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![KIND_TO_DEVICE, KIND_INVITE, limit as i64], |r| {
        Ok(Pending {
            id: r.get(0)?,
            destination: r.get(1)?,
            kind: r.get(2)?,
            body: r.get(3)?,
            attempts: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Deletes expired items.
pub fn prune(conn: &Connection, now: i64) -> Result<usize> {
    Ok(conn
        .prepare_cached("DELETE FROM mailbox WHERE expires_ts <= ?1")?
        .execute([now])?)
}

fn count(conn: &Connection, sql: &str, p: impl rusqlite::Params) -> Result<i64> {
    Ok(conn.prepare_cached(sql)?.query_row(p, |r| r.get(0))?)
}

/// Holds `items` from `origin` for [`TTL_MS`], all or none: past any quota nothing is
/// held and the answer is `M_LIMIT_EXCEEDED`. An item already held (same destination,
/// origin and ID) is counted as a duplicate and left as it was.
pub fn hold(tx: &WriteTx<'_>, origin: &str, items: &[Deposit], now: i64) -> Result<Held> {
    prune(tx, now)?;
    let mut held = Held::default();
    for d in items {
        if d.item.len() > MAX_ITEM_BYTES {
            return Err(Error::too_large(format!(
                "mail items are at most {MAX_ITEM_BYTES} bytes"
            )));
        }
        let n = tx
            .prepare_cached(
                "INSERT INTO mailbox (destination, origin, item_id, item, size, expires_ts) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                d.destination,
                origin,
                d.item_id,
                d.item,
                d.item.len() as i64,
                now + TTL_MS
            ])?;
        if n == 0 {
            held.duplicates += 1;
            continue;
        }
        held.stored += 1;
        let full = count(
            tx,
            "SELECT COUNT(*) FROM mailbox WHERE destination = ?1",
            [&d.destination],
        )? > MAX_PER_DESTINATION
            || count(tx, "SELECT COUNT(*) FROM mailbox WHERE origin = ?1", [origin])? > MAX_PER_ORIGIN;
        if full {
            // The caller's transaction rolls back: nothing of this deposit is held.
            return Err(Error::limit_exceeded(60_000));
        }
    }
    let (total, bytes): (i64, i64) = tx
        .prepare_cached("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM mailbox")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if total > MAX_TOTAL || bytes > MAX_TOTAL_BYTES {
        return Err(Error::limit_exceeded(60_000));
    }
    Ok(held)
}

/// Items held for `destination` after `after`, oldest first: at most `limit` items and
/// about `byte_budget` bytes (always at least one); and whether more wait.
pub fn page(
    conn: &Connection,
    destination: &str,
    after: i64,
    limit: usize,
    byte_budget: usize,
    now: i64,
) -> Result<(Vec<(i64, String)>, bool)> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, item FROM mailbox WHERE destination = ?1 AND seq > ?2 AND expires_ts > ?3 \
         ORDER BY seq LIMIT ?4",
    )?;
    let mut rows = stmt.query(params![destination, after, now, limit as i64 + 1])?;
    let (mut out, mut used) = (Vec::new(), 0);
    while let Some(r) = rows.next()? {
        let (seq, item): (i64, String) = (r.get(0)?, r.get(1)?);
        if out.len() == limit || (!out.is_empty() && used + item.len() > byte_budget) {
            return Ok((out, true));
        }
        used += item.len();
        out.push((seq, item));
    }
    Ok((out, false))
}

/// `destination` collected its items up to `up_to`: they are deleted.
pub fn ack(conn: &Connection, destination: &str, up_to: i64) -> Result<usize> {
    Ok(conn
        .prepare_cached("DELETE FROM mailbox WHERE destination = ?1 AND seq <= ?2")?
        .execute(params![destination, up_to])?)
}

/// How many unexpired items wait for `destination`.
pub fn count_for(conn: &Connection, destination: &str, now: i64) -> Result<i64> {
    count(
        conn,
        "SELECT COUNT(*) FROM mailbox WHERE destination = ?1 AND expires_ts > ?2",
        params![destination, now],
    )
}

/// The newest held item's seq for `destination`, if any (tests and diagnostics).
pub fn last_seq(conn: &Connection, destination: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT MAX(seq) FROM mailbox WHERE destination = ?1")?
        .query_row([destination], |r| r.get::<_, Option<i64>>(0))
        .optional()?
        .flatten())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notifier::Notifier;
    use crate::storage::Db;

    fn deposit(dest: &str, id: usize) -> Deposit {
        Deposit {
            destination: dest.into(),
            item_id: format!("i{id}"),
            item: format!("{{\"n\":{id}}}"),
        }
    }

    #[tokio::test]
    async fn quotas_refuse_a_whole_deposit_and_items_expire() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false, Notifier::default()).unwrap();
        let fill: Vec<Deposit> = (0..MAX_PER_DESTINATION as usize)
            .map(|i| deposit("d", i))
            .collect();
        let held = db.write(move |tx| hold(tx, "o", &fill, 1_000)).await.unwrap();
        assert_eq!(held.stored as i64, MAX_PER_DESTINATION);
        // Duplicates are free; one more item is over the destination's quota, and the
        // deposit it came in holds nothing.
        let again = vec![deposit("d", 0), deposit("e", 0), deposit("d", 9999)];
        let err = db
            .write(move |tx| hold(tx, "o", &again, 1_000))
            .await
            .unwrap_err();
        assert_eq!(err.errcode, "M_LIMIT_EXCEEDED");
        assert_eq!(db.read(|c| count_for(c, "e", 1_000)).await.unwrap(), 0);
        let dup = vec![deposit("d", 0)];
        let held = db.write(move |tx| hold(tx, "o", &dup, 1_000)).await.unwrap();
        assert_eq!(
            held,
            Held {
                stored: 0,
                duplicates: 1
            }
        );
        // Pages, acks and expiry.
        let (items, more) = db.read(|c| page(c, "d", 0, 10, 1 << 20, 1_000)).await.unwrap();
        assert_eq!((items.len(), more), (10, true));
        let up_to = items[9].0;
        assert_eq!(db.write(move |tx| ack(tx, "d", up_to)).await.unwrap(), 10);
        let later = 1_000 + TTL_MS;
        assert_eq!(db.read(move |c| count_for(c, "d", later)).await.unwrap(), 0);
        let fresh = vec![deposit("d", 1)];
        db.write(move |tx| hold(tx, "o", &fresh, later)).await.unwrap();
        assert_eq!(db.read(move |c| count_for(c, "d", later)).await.unwrap(), 1);
    }
}
