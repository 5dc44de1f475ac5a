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

/// Sets `u`'s own membership through the state API.
pub async fn set_membership(n: &TestNode, u: &User, room: &str, membership: &str) {
    let res = n
        .state_put(
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
