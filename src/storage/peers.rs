//! The peer address book, and which rooms the peer layer follows.

use rusqlite::{Connection, params};

use crate::Result;

/// Records addresses a peer was reached at, keeping its `keep` most recent.
pub fn remember(conn: &Connection, peer: &str, addrs: &[String], keep: usize) -> Result<()> {
    let now = crate::api::account::now_ms();
    for a in addrs {
        conn.prepare_cached(
            "INSERT INTO peer_addresses (peer_id, addr, last_seen_ts) VALUES (?1, ?2, ?3) \
             ON CONFLICT (peer_id, addr) DO UPDATE SET last_seen_ts = excluded.last_seen_ts",
        )?
        .execute(params![peer, a, now])?;
    }
    conn.prepare_cached(
        "DELETE FROM peer_addresses WHERE peer_id = ?1 AND addr NOT IN \
         (SELECT addr FROM peer_addresses WHERE peer_id = ?1 ORDER BY last_seen_ts DESC LIMIT ?2)",
    )?
    .execute(params![peer, keep as i64])?;
    Ok(())
}

/// Every known peer with its addresses, most recently seen peers first (at most 1,000 peers).
pub fn address_book(conn: &Connection) -> Result<Vec<(String, Vec<String>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT peer_id, addr FROM peer_addresses WHERE peer_id IN \
         (SELECT peer_id FROM peer_addresses GROUP BY peer_id ORDER BY MAX(last_seen_ts) DESC LIMIT 1000) \
         ORDER BY peer_id, last_seen_ts DESC",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for row in rows {
        let (peer, addr) = row?;
        match out.last_mut() {
            Some((p, addrs)) if *p == peer => addrs.push(addr),
            _ => out.push((peer, vec![addr])),
        }
    }
    Ok(out)
}

/// Rooms in which some local user is joined: the gossip topics to follow.
pub fn rooms_with_local_members(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT DISTINCT room_id FROM local_membership WHERE membership = 'join'")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_most_recent_addresses() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::storage::migrations::migrate(&mut conn).unwrap();
        for i in 0..5 {
            super::remember(&conn, "p", &[format!("/ip4/10.0.0.{i}/udp/1/quic-v1")], 3).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let book = super::address_book(&conn).unwrap();
        assert_eq!(book.len(), 1);
        assert_eq!(book[0].1.len(), 3);
        assert!(book[0].1[0].contains("10.0.0.4"));
    }
}
