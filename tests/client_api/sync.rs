//! `/sync` and the filter endpoints.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::common::*;

mod ephemeral;
mod filters;
mod membership;
mod timeline;

const SYNC: &str = "/_matrix/client/v3/sync";

/// Syncs with the given query string (already encoded), asserting success.
async fn sync(n: &TestNode, u: &User, query: &str) -> Value {
    let (status, body) = n.get(&format!("{SYNC}?{query}"), &u.token).await;
    assert_eq!(status, 200, "sync {query}: {body}");
    body
}

fn since(body: &Value) -> String {
    let b = body["next_batch"].as_str().expect("next_batch");
    format!("since={}", enc(b))
}

fn filter_param(f: Value) -> String {
    format!("filter={}", enc(&f.to_string()))
}

async fn send(n: &TestNode, u: &User, room: &str, txn: &str, body: &str) -> String {
    let (status, res) = n
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)),
            &u.token,
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(status, 200, "send: {res}");
    res["event_id"].as_str().expect("event_id").to_owned()
}

async fn join(n: &TestNode, u: &User, room: &str) {
    let res = n
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            &u.token,
            json!({}),
        )
        .await;
    assert_eq!(res.0, 200, "join: {:?}", res);
}

async fn invite(n: &TestNode, by: &User, room: &str, who: &User) {
    let res = n
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
            &by.token,
            json!({"user_id": who.user_id}),
        )
        .await;
    assert_eq!(res.0, 200, "invite: {:?}", res);
}

/// A room created by `a` and joined by `b`.
async fn shared_room(n: &TestNode, a: &User, b: &User) -> String {
    let room = n.create_room(a, json!({"invite": [b.user_id]})).await;
    join(n, b, &room).await;
    room
}

fn events<'a>(section: &'a Value, part: &str) -> &'a Vec<Value> {
    section[part]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{part}.events missing in {section}"))
}

fn bodies(section: &Value) -> Vec<String> {
    events(section, "timeline")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn has_state(list: &[Value], kind: &str, key: &str) -> bool {
    list.iter().any(|e| e["type"] == kind && e["state_key"] == key)
}

/// Starts a long-poll sync in the background; it yields how long it took and its body.
fn spawn_sync(n: &TestNode, u: &User, query: String) -> JoinHandle<(Duration, Value)> {
    let (url, token) = (n.url.clone(), u.token.clone());
    tokio::spawn(async move {
        let start = Instant::now();
        let res = reqwest::Client::new()
            .get(format!("{url}{SYNC}?{query}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("sync sent");
        let body: Value = res.json().await.expect("json");
        (start.elapsed(), body)
    })
}
