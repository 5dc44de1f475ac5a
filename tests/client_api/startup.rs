//! What clients call at start-up besides sync: the user directory, profiles of unknown
//! users, TURN, notifications, content reports, 3PIDs, room upgrades, thread lists and
//! bundled aggregations.

mod directory;
mod misc;
mod report;
mod threads;
mod upgrade;

use serde_json::{Value, json};

use crate::common::*;
use crate::events::{room_path, send_raw};

const V3: &str = "/_matrix/client/v3";

/// Sends a message event with `content`, asserting success; returns its event ID.
async fn send(n: &TestNode, u: &User, room: &str, content: Value) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let txn = format!(
        "startup-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let res = send_raw(n, u, room, "m.room.message", &txn, content).await;
    assert_eq!(res.0, 200, "send: {:?}", res);
    res.1["event_id"].as_str().expect("event_id").to_owned()
}

/// Sends a text message relating to `parent` with `rel_type`.
async fn relate(n: &TestNode, u: &User, room: &str, parent: &str, rel_type: &str, body: &str) -> String {
    let mut content = json!({
        "msgtype": "m.text",
        "body": body,
        "m.relates_to": {"rel_type": rel_type, "event_id": parent},
    });
    if rel_type == "m.replace" {
        content["m.new_content"] = json!({"msgtype": "m.text", "body": body});
    }
    send(n, u, room, content).await
}

/// A state event's content as `u` reads it, asserting it exists.
async fn state(n: &TestNode, u: &User, room: &str, kind: &str) -> Value {
    let res = n
        .get(&room_path(room, &format!("state/{}/", enc(kind))), &u.token)
        .await;
    assert_eq!(res.0, 200, "state {kind}: {:?}", res);
    res.1
}

/// The rows of a table in the node's database, read directly.
fn count_rows(n: &TestNode, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(n.data_dir().join("meshserver.db")).expect("open db");
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}
