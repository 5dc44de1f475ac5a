//! Membership (join, invite, leave, forget, kick, ban, unban, member lists) and the room
//! directory (aliases, visibility, publicRooms).

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

mod directory;
mod membership;

const V3: &str = "/_matrix/client/v3";

fn room_path(room: &str, action: &str) -> String {
    format!("{V3}/rooms/{}/{action}", enc(room))
}

async fn join(n: &TestNode, user: &User, room: &str) -> (u16, Value) {
    n.post(&format!("{V3}/join/{}", enc(room)), &user.token, json!({}))
        .await
}

async fn act(n: &TestNode, user: &User, room: &str, action: &str, body: Value) -> (u16, Value) {
    n.post(&room_path(room, action), &user.token, body).await
}

/// The room's current member events, as `/members` returns them to `user`.
async fn members(n: &TestNode, user: &User, room: &str, query: &str) -> Vec<Value> {
    let (status, body) = n
        .get(&format!("{}{query}", room_path(room, "members")), &user.token)
        .await;
    assert_eq!(status, 200, "members: {body}");
    body["chunk"].as_array().expect("chunk").clone()
}

/// `who`'s member event as `/members{query}` returns it to `viewer`, asserting it is listed.
async fn member_event(n: &TestNode, viewer: &User, room: &str, query: &str, who: &User) -> Value {
    members(n, viewer, room, query)
        .await
        .into_iter()
        .find(|e| e["state_key"] == who.user_id.as_str())
        .unwrap_or_else(|| panic!("no member event for {}", who.user_id))
}

fn membership_of(chunk: &[Value], user: &str) -> Option<String> {
    chunk
        .iter()
        .find(|e| e["state_key"] == user)
        .map(|e| e["content"]["membership"].as_str().unwrap_or_default().to_owned())
}

fn ids(chunk: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = chunk
        .iter()
        .map(|e| e["state_key"].as_str().unwrap_or_default().to_owned())
        .collect();
    out.sort();
    out
}

async fn delete(n: &TestNode, user: &User, alias: &str) -> (u16, Value) {
    let path = format!("{V3}/directory/room/{}", enc(alias));
    n.call(Method::DELETE, &path, Some(&user.token), None).await
}

async fn joined_rooms(n: &TestNode, user: &User) -> Vec<Value> {
    let (status, body) = n.get(&format!("{V3}/joined_rooms"), &user.token).await;
    assert_eq!(status, 200, "{body}");
    body["joined_rooms"].as_array().expect("joined_rooms").clone()
}
