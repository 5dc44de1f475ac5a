//! Send-to-device messaging and the end-to-end encryption parts of `/sync`: to-device
//! delivery, `device_lists`, one-time key counts and unused fallback key types.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

mod keys;

const SYNC: &str = "/_matrix/client/v3/sync";

fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().expect("next_batch").to_owned()
}

fn to_device(body: &Value) -> Vec<Value> {
    body["to_device"]["events"]
        .as_array()
        .expect("to_device.events")
        .clone()
}

fn user_list(body: &Value, part: &str) -> Vec<String> {
    body["device_lists"][part]
        .as_array()
        .unwrap_or_else(|| panic!("device_lists.{part} missing in {body}"))
        .iter()
        .map(|u| u.as_str().expect("user ID").to_owned())
        .collect()
}

async fn send_to_device(n: &TestNode, from: &User, kind: &str, txn: &str, messages: Value) -> (u16, Value) {
    n.put(
        &format!("/_matrix/client/v3/sendToDevice/{}/{}", enc(kind), enc(txn)),
        &from.token,
        json!({"messages": messages}),
    )
    .await
}

async fn send_ok(n: &TestNode, from: &User, kind: &str, txn: &str, messages: Value) {
    let res = send_to_device(n, from, kind, txn, messages).await;
    assert_eq!(res, (200, json!({})), "sendToDevice");
}

/// A public room created by `a` and joined by `b`.
async fn shared_room(n: &TestNode, a: &User, b: &User) -> String {
    let room = n.create_room(a, json!({"preset": "public_chat"})).await;
    n.join(b, &room).await;
    room
}

async fn upload_keys(n: &TestNode, u: &User, body: Value) -> Value {
    let (status, res) = n.post("/_matrix/client/v3/keys/upload", &u.token, body).await;
    assert_eq!(status, 200, "keys/upload: {res}");
    res
}

fn device_keys(u: &User, ed25519: &str) -> Value {
    json!({
        "user_id": u.user_id,
        "device_id": u.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", u.device_id): "curve",
            format!("ed25519:{}", u.device_id): ed25519,
        },
        "signatures": {u.user_id.clone(): {format!("ed25519:{}", u.device_id): "sig"}},
    })
}

#[tokio::test]
async fn delivered_until_a_later_sync_acknowledges_it() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let t0 = next_batch(&n.sync(&bob, None).await);

    let content = json!({"secret": 1, "nested": {"k": [1, 2]}});
    send_ok(
        &n,
        &alice,
        "m.test",
        "t1",
        json!({bob.user_id.clone(): {bob.device_id.clone(): content}}),
    )
    .await;
    send_ok(
        &n,
        &alice,
        "m.test",
        "t2",
        json!({bob.user_id.clone(): {bob.device_id.clone(): {"n": 2}}}),
    )
    .await;

    let first = n.sync(&bob, Some(&t0)).await;
    let got = to_device(&first);
    assert_eq!(
        got,
        [
            json!({"sender": alice.user_id, "type": "m.test", "content": content}),
            json!({"sender": alice.user_id, "type": "m.test", "content": {"n": 2}}),
        ],
        "oldest first, exactly as sent"
    );
    // The sender's own device got nothing.
    assert!(to_device(&n.sync(&alice, None).await).is_empty());

    // Repeating the old token (the response was lost) delivers them again.
    assert_eq!(to_device(&n.sync(&bob, Some(&t0)).await), got);

    let t1 = next_batch(&first);
    assert!(
        to_device(&n.sync(&bob, Some(&t1)).await).is_empty(),
        "delivered once"
    );
    // Syncing from t1 acknowledged them: gone for good, even for the old token.
    assert!(
        to_device(&n.sync(&bob, Some(&t0)).await).is_empty(),
        "deleted after ack"
    );
    assert!(to_device(&n.sync(&bob, None).await).is_empty());
}

#[tokio::test]
async fn initial_sync_gets_the_inbox_and_a_backlog_comes_in_batches() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    for i in 0..150 {
        send_ok(
            &n,
            &alice,
            "m.test",
            &format!("t{i}"),
            json!({bob.user_id.clone(): {bob.device_id.clone(): {"i": i}}}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    let mut batches = Vec::new();
    for _ in 0..4 {
        let body = n.sync(&bob, since.as_deref()).await;
        let got = to_device(&body);
        batches.push(got.len());
        seen.extend(got.iter().map(|e| e["content"]["i"].as_i64().expect("i")));
        since = Some(next_batch(&body));
    }
    assert_eq!(
        batches,
        [100, 50, 0, 0],
        "at most 100 per response, the rest next time"
    );
    assert_eq!(seen, (0..150).collect::<Vec<_>>(), "each once, in order");
}

#[tokio::test]
async fn star_reaches_every_device_and_named_devices_get_their_own() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let bob2 = n.login(&bob, "BOBTWO").await;
    let bob3 = n.login(&bob, "BOBTHREE").await;

    send_ok(
        &n,
        &alice,
        "m.all",
        "t1",
        json!({bob.user_id.clone(): {"*": {"to": "all"}}}),
    )
    .await;
    send_ok(
        &n,
        &alice,
        "m.mixed",
        "t2",
        json!({bob.user_id.clone(): {"*": {"to": "rest"}, "BOBTWO": {"to": "two"}}}),
    )
    .await;
    for (device, mixed) in [(&bob, "rest"), (&bob2, "two"), (&bob3, "rest")] {
        let got = to_device(&n.sync(device, None).await);
        assert_eq!(
            got,
            [
                json!({"sender": alice.user_id, "type": "m.all", "content": {"to": "all"}}),
                json!({"sender": alice.user_id, "type": "m.mixed", "content": {"to": mixed}}),
            ],
            "device {}",
            device.device_id
        );
    }
}

#[tokio::test]
async fn unknown_and_remote_targets_are_skipped() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let server = n.server_name();
    send_ok(
        &n,
        &alice,
        "m.test",
        "t1",
        json!({
            bob.user_id.clone(): {"NOSUCHDEVICE": {}, bob.device_id.clone(): {"ok": true}},
            format!("@nobody:{server}"): {"*": {}},
            "@someone:remote.example": {"DEV": {}},
        }),
    )
    .await;
    let got = to_device(&n.sync(&bob, None).await);
    assert_eq!(
        got,
        [json!({"sender": alice.user_id, "type": "m.test", "content": {"ok": true}})]
    );
    // Logging in as the device named too early does not reveal a message.
    let late = n.login(&bob, "NOSUCHDEVICE").await;
    assert!(to_device(&n.sync(&late, None).await).is_empty());
}

#[tokio::test]
async fn retried_transaction_sends_once() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let alice2 = n.login(&alice, "ALICETWO").await;
    let bob = n.register("bob").await;
    let to_bob = |c: Value| json!({bob.user_id.clone(): {bob.device_id.clone(): c}});

    send_ok(&n, &alice, "m.test", "same", to_bob(json!({"n": 1}))).await;
    send_ok(&n, &alice, "m.test", "same", to_bob(json!({"n": 1}))).await;
    // The transaction is scoped to the device and to the event type in the path.
    send_ok(&n, &alice, "m.other", "same", to_bob(json!({"n": 2}))).await;
    send_ok(&n, &alice2, "m.test", "same", to_bob(json!({"n": 3}))).await;
    let got: Vec<Value> = to_device(&n.sync(&bob, None).await)
        .iter()
        .map(|e| e["content"]["n"].clone())
        .collect();
    assert_eq!(got, [json!(1), json!(2), json!(3)]);

    // The r0 path is the same endpoint.
    let res = n
        .put(
            "/_matrix/client/r0/sendToDevice/m.test/r0txn",
            &alice.token,
            json!({"messages": to_bob(json!({"n": 4}))}),
        )
        .await;
    assert_eq!(res, (200, json!({})));
}

#[tokio::test]
async fn bad_requests_are_refused_and_send_nothing() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let path = "/_matrix/client/v3/sendToDevice/m.test/t1";

    let res = n
        .call(reqwest::Method::PUT, path, None, Some(json!({"messages": {}})))
        .await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
    assert_err(&n.put(path, &alice.token, json!({})).await, 400, "M_BAD_JSON");
    assert_err(
        &n.put(
            path,
            &alice.token,
            json!({"messages": {bob.user_id.clone(): {"D": "not an object"}}}),
        )
        .await,
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &n.put(
            path,
            &alice.token,
            json!({"messages": {"not-a-user": {"D": {}}, bob.user_id.clone(): {"*": {}}}}),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    let mut many = serde_json::Map::new();
    for i in 0..10_001 {
        many.insert(format!("D{i}"), json!({}));
    }
    many.insert(bob.device_id.clone(), json!({}));
    assert_err(
        &n.put(
            path,
            &alice.token,
            json!({"messages": {bob.user_id.clone(): many}}),
        )
        .await,
        413,
        "M_TOO_LARGE",
    );
    assert!(to_device(&n.sync(&bob, None).await).is_empty(), "nothing sent");

    // The failed attempts did not use up the transaction ID.
    send_ok(
        &n,
        &alice,
        "m.test",
        "t1",
        json!({bob.user_id.clone(): {"*": {"ok": 1}}}),
    )
    .await;
    assert_eq!(to_device(&n.sync(&bob, None).await).len(), 1);
}

#[tokio::test]
async fn a_to_device_message_wakes_a_long_poll() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let t0 = next_batch(&n.sync(&bob, None).await);
    let (url, token) = (n.url.clone(), bob.token.clone());
    let poll = tokio::spawn(async move {
        let start = Instant::now();
        let body: Value = reqwest::Client::new()
            .get(format!("{url}{SYNC}?timeout=30000&since={}", enc(&t0)))
            .bearer_auth(token)
            .send()
            .await
            .expect("sync sent")
            .json()
            .await
            .expect("json");
        (start.elapsed(), body)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_ok(
        &n,
        &alice,
        "m.ping",
        "t1",
        json!({bob.user_id.clone(): {bob.device_id.clone(): {}}}),
    )
    .await;
    let (took, body) = poll.await.expect("poll");
    assert!(took < Duration::from_secs(20), "woke after {took:?}");
    assert_eq!(
        to_device(&body),
        [json!({"sender": alice.user_id, "type": "m.ping", "content": {}})]
    );
}
