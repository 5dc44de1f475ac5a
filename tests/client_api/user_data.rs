//! Typing, receipts, read markers, account data, tags, profile and presence: one
//! submodule per endpoint group, plus how /sync delivers them.

mod account_data;
mod ephemeral;
mod profile;
mod sync;

use crate::common::*;
use rusqlite::OptionalExtension;

pub const V3: &str = "/_matrix/client/v3";

/// Reads the node's database directly, for what no endpoint shows.
pub fn db(n: &TestNode) -> rusqlite::Connection {
    rusqlite::Connection::open(n.data_dir().join("meshserver.db")).expect("open db")
}

pub fn receipt_event(n: &TestNode, room: &str, user: &str, kind: &str, thread: &str) -> Option<String> {
    db(n)
        .query_row(
            "SELECT event_id FROM receipts WHERE room_id = ?1 AND user_id = ?2 AND receipt_type = ?3 AND thread_id = ?4",
            [room, user, kind, thread],
            |r| r.get(0),
        )
        .optional()
        .expect("receipts query")
}

pub fn account_data_path(user: &User, room: Option<&str>, kind: &str) -> String {
    match room {
        None => format!("{V3}/user/{}/account_data/{kind}", enc(&user.user_id)),
        Some(r) => format!(
            "{V3}/user/{}/rooms/{}/account_data/{kind}",
            enc(&user.user_id),
            enc(r)
        ),
    }
}
