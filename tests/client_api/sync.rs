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

/// A room created by `a` and joined by `b`.
async fn shared_room(n: &TestNode, a: &User, b: &User) -> String {
    let room = n.create_room(a, json!({"invite": [b.user_id]})).await;
    n.join(b, &room).await;
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
