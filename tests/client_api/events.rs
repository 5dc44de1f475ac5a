//! Room events: send (idempotent per transaction), state, event, redact, messages,
//! context, relations, history visibility, and the integrity of what is stored.

mod pagination;
mod send;
mod stored;
mod visibility;

use serde_json::{Value, json};

use crate::common::*;

pub fn room_path(room: &str, rest: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/{rest}", enc(room))
}

/// Sends `content` as `kind` with transaction `txn`; returns the raw response.
pub async fn send_raw(
    n: &TestNode,
    u: &User,
    room: &str,
    kind: &str,
    txn: &str,
    content: Value,
) -> (u16, Value) {
    n.put(
        &room_path(room, &format!("send/{}/{}", enc(kind), enc(txn))),
        &u.token,
        content,
    )
    .await
}

/// Sends a text message, asserting success; returns its event ID.
pub async fn say(n: &TestNode, u: &User, room: &str, body: &str) -> String {
    let txn = format!("txn-{body}-{}", rand_suffix());
    let res = send_raw(
        n,
        u,
        room,
        "m.room.message",
        &txn,
        json!({"msgtype": "m.text", "body": body}),
    )
    .await;
    assert_eq!(res.0, 200, "send {body}: {:?}", res);
    res.1["event_id"].as_str().expect("event_id").to_owned()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Sets state, returning the raw response.
pub async fn put_state(
    n: &TestNode,
    u: &User,
    room: &str,
    kind: &str,
    key: &str,
    content: Value,
) -> (u16, Value) {
    n.put(
        &room_path(room, &format!("state/{}/{}", enc(kind), enc(key))),
        &u.token,
        content,
    )
    .await
}

/// Sets `u`'s own membership through the state API.
pub async fn set_membership(n: &TestNode, u: &User, room: &str, membership: &str) {
    let res = put_state(
        n,
        u,
        room,
        "m.room.member",
        &u.user_id,
        json!({"membership": membership}),
    )
    .await;
    assert_eq!(res.0, 200, "{membership}: {:?}", res);
}

/// A public room created by `owner` that `joiner` has joined.
pub async fn shared_room(n: &TestNode, owner: &User, joiner: &User) -> String {
    let room = n.create_room(owner, json!({"preset": "public_chat"})).await;
    set_membership(n, joiner, &room, "join").await;
    room
}

/// The bodies of the text messages in a /messages chunk.
pub fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}
