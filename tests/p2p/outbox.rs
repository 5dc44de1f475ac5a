//! The durable outbox over real nodes: a node that was down gets what it missed as soon
//! as it is back, and to-device messages cross nodes exactly once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meshserver::config::Config;
use serde_json::{Value, json};

use crate::common::{TestNode, User, enc};
use crate::net::{addrs, mesh, peer_count, services, shared_room_with, wait_until};

/// Generous: the figure that matters is the one printed, measured from the restart.
const DEADLINE: Duration = Duration::from_secs(20);

/// The bodies of the text messages `user` sees in `room` in an initial /sync.
async fn synced_bodies(node: &TestNode, user: &User, room: &str) -> Vec<String> {
    let filter = enc(&json!({"room": {"timeline": {"limit": 200}}}).to_string());
    let (status, body) = node
        .get(&format!("/_matrix/client/v3/sync?filter={filter}"), &user.token)
        .await;
    assert_eq!(status, 200, "{body}");
    crate::common::bodies(&body["rooms"]["join"][room]["timeline"]["events"])
}

/// Stops `node` and returns its data dir, to start it again later.
async fn stop(mut node: TestNode) -> tempfile::TempDir {
    node.node.take().expect("running").stop().await;
    node.dir
}

/// Starts a node again on `dir`, told where `peer` is; returns it and when it was up.
async fn restart(dir: tempfile::TempDir, peer: &TestNode) -> (TestNode, Instant) {
    let mut config = Config::for_data_dir(dir.path());
    config.peers = addrs(peer)
        .await
        .iter()
        .map(|a| a.parse().expect("multiaddr"))
        .collect();
    let node = TestNode::start_with(dir, config).await;
    (node, Instant::now())
}

/// Rows still queued on a node: `(destination, earliest due)`.
async fn queued(node: &TestNode) -> Vec<(String, i64)> {
    services(node)
        .db
        .read(meshserver::storage::outbox::schedule)
        .await
        .expect("outbox read")
}

#[tokio::test]
async fn a_node_that_was_down_gets_every_missed_message_right_after_restart() {
    let mut nodes = mesh(2).await;
    let b = nodes.pop().expect("b");
    let a = nodes.pop().expect("a");
    let (alice, bob, room) = shared_room_with(&a, &b, json!({})).await;
    a.send_text(&alice, &room, "before").await;
    wait_until(DEADLINE, || async {
        synced_bodies(&b, &bob, &room)
            .await
            .contains(&"before".to_owned())
    })
    .await;

    let dir = stop(b).await;
    wait_until(DEADLINE, || async { peer_count(&a).await == 0 }).await;
    let missed: Vec<String> = (0..30).map(|i| format!("missed {i}")).collect();
    for text in &missed {
        a.send_text(&alice, &room, text).await;
    }
    // Long enough for the outbox to have failed and backed off at least once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !queued(&a).await.is_empty(),
        "the absent peer's room is still owed"
    );

    let (b, up) = restart(dir, &a).await;
    let took = loop {
        let seen = synced_bodies(&b, &bob, &room).await;
        if missed.iter().all(|m| seen.contains(m)) {
            break up.elapsed();
        }
        assert!(up.elapsed() < DEADLINE, "restarted node has {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "outbox: restarted node had all {} missed messages {took:?} after restart",
        missed.len()
    );
    // Each message arrived once, in order.
    let seen = synced_bodies(&b, &bob, &room).await;
    let got: Vec<&String> = seen.iter().filter(|s| s.starts_with("missed ")).collect();
    assert_eq!(got, missed.iter().collect::<Vec<_>>());
    // Confirmed deliveries leave nothing queued.
    wait_until(DEADLINE, || async { queued(&a).await.is_empty() }).await;
}

/// Every to-device event `user` receives through incremental syncs until `want` arrived,
/// plus one more round to catch duplicates; and how long after `start` the last arrived.
async fn to_device_events(
    node: &TestNode,
    user: &User,
    since: &mut String,
    want: usize,
    start: Instant,
) -> (Vec<Value>, Duration) {
    let mut got = Vec::new();
    let mut reached = None;
    loop {
        let path = format!("/_matrix/client/v3/sync?since={}&timeout=200", enc(since));
        let (status, body) = node.get(&path, &user.token).await;
        assert_eq!(status, 200, "{body}");
        *since = body["next_batch"].as_str().expect("next_batch").to_owned();
        got.extend(
            body["to_device"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        if let Some(took) = reached {
            return (got, took);
        }
        if got.len() >= want {
            reached = Some(start.elapsed());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "only {} of {want} to-device events: {got:?}",
            got.len()
        );
    }
}

async fn send_to_device(node: &TestNode, from: &User, txn: &str, messages: Value) {
    let path = format!("/_matrix/client/v3/sendToDevice/m.test/{txn}");
    let (status, res) = node
        .put(&path, &from.token, json!({ "messages": messages }))
        .await;
    assert_eq!(status, 200, "{res}");
}

#[tokio::test]
async fn to_device_messages_cross_nodes_exactly_once() {
    let mut nodes = mesh(2).await;
    let b = nodes.pop().expect("b");
    let a = nodes.pop().expect("a");
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let mut since = b.sync(&bob, None).await["next_batch"]
        .as_str()
        .expect("token")
        .to_owned();

    // Retrying a transaction (same txn ID) must not deliver it again.
    for n in 0..3 {
        let txn = format!("t{n}");
        for _ in 0..2 {
            send_to_device(
                &a,
                &alice,
                &txn,
                json!({&bob.user_id: {&bob.device_id: {"n": n}}}),
            )
            .await;
        }
    }
    let (got, _) = to_device_events(&b, &bob, &mut since, 3, Instant::now()).await;
    let ns: Vec<&Value> = got.iter().map(|e| &e["content"]["n"]).collect();
    assert_eq!(ns, [&json!(0), &json!(1), &json!(2)], "{got:?}");
    assert!(
        got.iter()
            .all(|e| e["sender"] == alice.user_id.as_str() && e["type"] == "m.test")
    );

    // Sent while bob's node is down: delivered once it is back, still once each.
    let dir = stop(b).await;
    wait_until(DEADLINE, || async { peer_count(&a).await == 0 }).await;
    for n in 3..8 {
        send_to_device(
            &a,
            &alice,
            &format!("t{n}"),
            json!({&bob.user_id: {"*": {"n": n}}}),
        )
        .await;
    }
    let (b, up) = restart(dir, &a).await;
    let (got, took) = to_device_events(&b, &bob, &mut since, 5, up).await;
    println!("outbox: to-device messages reached the restarted node {took:?} after restart");
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for e in &got {
        *counts.entry(e["content"]["n"].as_i64().expect("n")).or_default() += 1;
    }
    assert_eq!(counts, (3..8).map(|n| (n, 1)).collect(), "{got:?}");
    wait_until(DEADLINE, || async { queued(&a).await.is_empty() }).await;
}
