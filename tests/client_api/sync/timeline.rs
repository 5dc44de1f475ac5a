//! Timelines: initial and incremental syncs, long-polling, limits, transaction IDs, bad parameters.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::*;

#[tokio::test]
async fn initial_sync_shows_room_state_and_messages() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, json!({"name": "Lobby"})).await;
    n.send_text_txn(&alice, &room, "t1", "hello").await;
    n.send_text_txn(&alice, &room, "t2", "world").await;

    let body = sync(&n, &alice, "").await;
    assert!(body["next_batch"].as_str().unwrap().starts_with('s'));
    for key in ["to_device", "presence", "account_data"] {
        assert!(body[key]["events"].is_array(), "{key} in {body}");
    }
    assert_eq!(body["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert!(body["device_lists"]["changed"].is_array());
    let r = &body["rooms"]["join"][&room];
    assert_eq!(bodies(r), ["hello", "world"]);
    let timeline = events(r, "timeline");
    let state = events(r, "state");
    // Everything about the room is either state before the timeline or in it, not both.
    for (kind, key) in [
        ("m.room.create", ""),
        ("m.room.name", ""),
        ("m.room.power_levels", ""),
        ("m.room.member", alice.user_id.as_str()),
    ] {
        let in_state = has_state(state, kind, key);
        let in_timeline = has_state(timeline, kind, key);
        assert!(
            in_state != in_timeline,
            "{kind} in state {in_state}, in timeline {in_timeline}"
        );
    }
    assert!(timeline.iter().chain(state).all(|e| e.get("room_id").is_none()));
    assert!(r["timeline"]["prev_batch"].is_string());
    assert_eq!(r["summary"]["m.joined_member_count"], 1);
    assert_eq!(r["summary"]["m.invited_member_count"], 0);
    assert_eq!(r["unread_notifications"]["notification_count"], 0);
    assert!(r["ephemeral"]["events"].is_array());
    assert!(r["account_data"]["events"].is_array());
}

#[tokio::test]
async fn incremental_sync_shows_only_new_events() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, json!({})).await;
    let quiet = n.create_room(&alice, json!({})).await;
    n.send_text_txn(&alice, &room, "t1", "old").await;
    let first = sync(&n, &alice, "").await;
    assert!(first["rooms"]["join"][&quiet].is_object());

    n.send_text_txn(&alice, &room, "t2", "new").await;
    let second = sync(&n, &alice, &since(&first)).await;
    let r = &second["rooms"]["join"][&room];
    assert_eq!(bodies(r), ["new"]);
    assert_eq!(events(r, "timeline").len(), 1);
    assert_eq!(r["timeline"]["limited"], false);
    assert!(events(r, "state").is_empty());
    assert!(
        second["rooms"]["join"].get(&quiet).is_none(),
        "a room with nothing new is left out"
    );

    // Nothing new at all: an empty response that still moves on.
    let third = sync(&n, &alice, &since(&second)).await;
    assert_eq!(third["rooms"]["join"], json!({}));
    assert!(third["next_batch"].is_string());

    // full_state brings every joined room back with its whole state.
    let full = sync(&n, &alice, &format!("{}&full_state=true", since(&second))).await;
    for id in [&room, &quiet] {
        let r = &full["rooms"]["join"][id];
        assert!(has_state(events(r, "state"), "m.room.create", ""), "{full}");
        assert!(events(r, "timeline").is_empty());
    }
}

#[tokio::test]
async fn long_poll_wakes_on_send() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = shared_room(&n, &alice, &bob).await;
    let first = sync(&n, &bob, "").await;
    // Settle: the first sync may have marked bob online, which is news to nobody here.
    let base = sync(&n, &bob, &since(&first)).await;

    let waiter = spawn_sync(&n, &bob, format!("{}&timeout=10000", since(&base)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    n.send_text_txn(&alice, &room, "t1", "wake up").await;
    let (elapsed, body) = waiter.await.expect("waiter");
    assert!(elapsed < Duration::from_secs(5), "long-poll took {elapsed:?}");
    assert_eq!(bodies(&body["rooms"]["join"][&room]), ["wake up"], "{body}");

    // With nothing happening, a short long-poll returns empty once its timeout passes.
    let started = Instant::now();
    let idle = sync(&n, &bob, &format!("{}&timeout=200", since(&body))).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(idle["rooms"]["join"], json!({}), "{idle}");
}

#[tokio::test]
async fn timeline_limit_and_prev_batch() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, json!({"name": "Busy"})).await;
    for i in 1..=5 {
        n.send_text_txn(&alice, &room, &format!("t{i}"), &format!("m{i}"))
            .await;
    }
    let f = filter_param(json!({"room": {"timeline": {"limit": 2}}}));
    let body = sync(&n, &alice, &f).await;
    let r = &body["rooms"]["join"][&room];
    assert_eq!(bodies(r), ["m4", "m5"]);
    assert_eq!(r["timeline"]["limited"], true);
    // The state at the start of the timeline is complete.
    let state = events(r, "state");
    assert!(has_state(state, "m.room.create", ""));
    assert!(has_state(state, "m.room.name", ""));

    let prev = r["timeline"]["prev_batch"].as_str().expect("prev_batch");
    let (status, page) = n
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=3&from={}",
                enc(&room),
                enc(prev)
            ),
            &alice.token,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let earlier: Vec<&str> = page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(earlier, ["m3", "m2", "m1"], "{page}");

    // Incremental: a gap bigger than the limit is reported as limited too.
    for i in 6..=8 {
        n.send_text_txn(&alice, &room, &format!("t{i}"), &format!("m{i}"))
            .await;
    }
    let next = sync(&n, &alice, &format!("{}&{f}", since(&body))).await;
    let r = &next["rooms"]["join"][&room];
    assert_eq!(bodies(r), ["m7", "m8"]);
    assert_eq!(r["timeline"]["limited"], true);
}

#[tokio::test]
async fn transaction_id_only_for_sending_device() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let phone = n.login(&alice, "PHONE").await;
    assert_ne!(phone.device_id, alice.device_id);
    let room = n.create_room(&alice, json!({})).await;
    let event_id = n.send_text_txn(&alice, &room, "txn-42", "mine").await;

    let find = |body: &Value| {
        events(&body["rooms"]["join"][&room], "timeline")
            .iter()
            .find(|e| e["event_id"] == event_id)
            .cloned()
            .expect("event in timeline")
    };
    let own = find(&sync(&n, &alice, "").await);
    assert_eq!(own["unsigned"]["transaction_id"], "txn-42");
    let other = find(&sync(&n, &phone, "").await);
    assert!(other["unsigned"].get("transaction_id").is_none(), "{other}");
}

#[tokio::test]
async fn bad_parameters() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    for q in [
        "since=garbage",
        "since=s1_x",
        "since=s999999_0",
        "timeout=-5",
        "timeout=soon",
        "full_state=yes",
        "set_presence=busy",
    ] {
        assert_err(
            &n.get(&format!("{SYNC}?{q}"), &alice.token).await,
            400,
            "M_INVALID_PARAM",
        );
    }
    assert_err(
        &n.call(Method::GET, SYNC, None, None).await,
        401,
        "M_MISSING_TOKEN",
    );
    // A token without the typing part is still a position.
    let body = sync(&n, &alice, "").await;
    let stream = body["next_batch"]
        .as_str()
        .unwrap()
        .split('_')
        .next()
        .unwrap()
        .to_owned();
    sync(&n, &alice, &format!("since={stream}")).await;
}
