//! Typing, receipts, read markers, account data, tags, profile and presence: one
//! submodule per endpoint group, plus how /sync delivers them.

mod account_data;
mod ephemeral;
mod profile;
mod sync;

use rusqlite::OptionalExtension;
use serde_json::json;

use crate::common::*;

pub const V3: &str = "/_matrix/client/v3";

/// Sends a text message; returns its event ID.
pub async fn send_text(n: &TestNode, user: &User, room: &str, txn: &str) -> String {
    let (status, body) = n
        .put(
            &format!("{V3}/rooms/{}/send/m.room.message/{txn}", enc(room)),
            &user.token,
            json!({"msgtype": "m.text", "body": txn}),
        )
        .await;
    assert_eq!(status, 200, "send: {body}");
    body["event_id"].as_str().expect("event_id").to_owned()
}

pub async fn join(n: &TestNode, user: &User, room: &str) {
    let (status, body) = n
        .post(&format!("{V3}/join/{}", enc(room)), &user.token, json!({}))
        .await;
    assert_eq!(status, 200, "join: {body}");
}

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
