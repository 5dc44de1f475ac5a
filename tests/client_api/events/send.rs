//! Sending: transactions, bad bodies, permissions, state, redaction.

use serde_json::json;

use super::*;

#[tokio::test]
async fn send_retry_with_same_txn_returns_same_event_and_stores_one() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, json!({})).await;
    let content = json!({"msgtype": "m.text", "body": "once"});
    let first = send_raw(&n, &alice, &room, "m.room.message", "t1", content.clone()).await;
    assert_eq!(first.0, 200, "{:?}", first);
    let again = send_raw(&n, &alice, &room, "m.room.message", "t1", content.clone()).await;
    assert_eq!(again, first, "a retry returns the first event ID");
    let (_, page) = n
        .get(&room_path(&room, "messages?dir=b&limit=50"), &alice.token)
        .await;
    assert_eq!(bodies(&page["chunk"]), vec!["once"], "only one event exists");
    // A transaction is scoped to its request path: the same ID elsewhere is a new request.
    let elsewhere = send_raw(&n, &alice, &room, "org.example.other", "t1", json!({})).await;
    assert_eq!(elsewhere.0, 200, "{:?}", elsewhere);
    assert_ne!(elsewhere.1["event_id"], first.1["event_id"]);
    // The sending device sees its transaction ID; another device of the same user does not,
    // and its own use of the same txn ID is a new transaction.
    let event_id = first.1["event_id"].as_str().expect("event_id");
    let (_, ev) = n
        .get(
            &room_path(&room, &format!("event/{}", enc(event_id))),
            &alice.token,
        )
        .await;
    assert_eq!(ev["unsigned"]["transaction_id"], "t1", "{ev}");
    assert_eq!(ev["content"]["body"], "once");
    let other = &n.login(&alice, "OTHER").await.token;
    let (_, ev) = n
        .get(&room_path(&room, &format!("event/{}", enc(event_id))), other)
        .await;
    assert!(ev["unsigned"].get("transaction_id").is_none(), "{ev}");
    let (s, second) = n
        .put(&room_path(&room, "send/m.room.message/t1"), other, content)
        .await;
    assert_eq!(s, 200, "{second}");
    assert_ne!(second["event_id"], first.1["event_id"]);
}

#[tokio::test]
async fn bad_bodies_are_rejected_and_change_nothing() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, json!({})).await;
    let (_, before) = n
        .get(&room_path(&room, "messages?dir=b&limit=100"), &alice.token)
        .await;

    let big = "x".repeat(70_000);
    let res = send_raw(&n, &alice, &room, "m.room.message", "big", json!({"body": big})).await;
    assert_err(&res, 413, "M_TOO_LARGE");

    let res = n
        .http
        .put(format!("{}{}", n.url, room_path(&room, "send/m.room.message/nj")))
        .bearer_auth(&alice.token)
        .body("{this is not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.expect("json error body");
    assert_eq!(body["errcode"], "M_NOT_JSON");

    let res = send_raw(
        &n,
        &alice,
        &room,
        "m.room.message",
        "arr",
        json!(["not", "an", "object"]),
    )
    .await;
    assert_err(&res, 400, "M_BAD_JSON");
    let res = send_raw(
        &n,
        &alice,
        &room,
        "m.room.redaction",
        "nored",
        json!({"reason": "no target"}),
    )
    .await;
    assert_err(&res, 400, "M_BAD_JSON");
    let res = n
        .put(
            &room_path(&room, "redact/%24abc/r1"),
            &alice.token,
            json!({"reason": 5}),
        )
        .await;
    assert_err(&res, 400, "M_BAD_JSON");
    let res = n
        .state_put(&alice, &room, "m.room.topic", "", json!("a string"))
        .await;
    assert_err(&res, 400, "M_BAD_JSON");

    let (_, after) = n
        .get(&room_path(&room, "messages?dir=b&limit=100"), &alice.token)
        .await;
    let ids = |v: &Value| {
        v["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .map(|e| e["event_id"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&before), ids(&after), "nothing was stored");
    // The rejected transaction IDs were not used up.
    let res = send_raw(
        &n,
        &alice,
        &room,
        "m.room.message",
        "big",
        json!({"body": "small"}),
    )
    .await;
    assert_eq!(res.0, 200, "{:?}", res);
}

#[tokio::test]
async fn non_members_and_unprivileged_members_are_refused() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = shared_room(&n, &alice, &bob).await;
    let msg = n.send_text(&alice, &room, "members only").await;

    let res = send_raw(&n, &carol, &room, "m.room.message", "c1", json!({"body": "hi"})).await;
    assert_err(&res, 403, "M_FORBIDDEN");
    for path in [
        "messages?dir=b",
        "state",
        "state/m.room.create/",
        "state/m.room.create",
    ] {
        let res = n.get(&room_path(&room, path), &carol.token).await;
        assert_err(&res, 403, "M_FORBIDDEN");
    }
    let res = n
        .get(&room_path(&room, &format!("context/{}", enc(&msg))), &carol.token)
        .await;
    assert_err(&res, 403, "M_FORBIDDEN");
    let res = n
        .get(&room_path(&room, &format!("event/{}", enc(&msg))), &carol.token)
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");

    // Bob is joined but has power 0; m.room.name needs 50.
    let res = n
        .state_put(&bob, &room, "m.room.name", "", json!({"name": "bob's room"}))
        .await;
    assert_err(&res, 403, "M_FORBIDDEN");
    let res = n.get(&room_path(&room, "state/m.room.name/"), &bob.token).await;
    assert_err(&res, 404, "M_NOT_FOUND");
    // Unknown and malformed rooms.
    let res = send_raw(
        &n,
        &alice,
        "!nowhere:example.org",
        "m.room.message",
        "x",
        json!({}),
    )
    .await;
    assert!(matches!(res.0, 403 | 404), "{:?}", res);
    let res = n.get(&room_path("not-a-room", "state"), &alice.token).await;
    assert_err(&res, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn state_round_trip() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, json!({})).await;

    let res = n
        .get(&room_path(&room, "state/m.room.topic/"), &alice.token)
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");
    let res = n
        .state_put(&alice, &room, "m.room.topic", "", json!({"topic": "first"}))
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    // Without the state key segment, with and without the trailing slash.
    let (s, put) = n
        .put(
            &room_path(&room, "state/m.room.topic"),
            &alice.token,
            json!({"topic": "second"}),
        )
        .await;
    assert_eq!(s, 200, "{put}");
    let topic_id = put["event_id"].as_str().expect("event_id");
    for path in ["state/m.room.topic", "state/m.room.topic/"] {
        let (s, content) = n.get(&room_path(&room, path), &alice.token).await;
        assert_eq!(s, 200, "{content}");
        assert_eq!(content, json!({"topic": "second"}));
    }
    let (s, ev) = n
        .get(
            &room_path(&room, "state/m.room.topic/?format=event"),
            &alice.token,
        )
        .await;
    assert_eq!(s, 200, "{ev}");
    assert_eq!(ev["event_id"], topic_id);
    assert_eq!(ev["state_key"], "");
    assert_eq!(ev["unsigned"]["prev_content"], json!({"topic": "first"}));
    let res = n
        .get(&room_path(&room, "state/m.room.topic/?format=xml"), &alice.token)
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");

    // A custom state key with characters that need encoding.
    let res = n
        .state_put(&alice, &room, "org.example.thing", "a/b c", json!({"v": 1}))
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let (s, content) = n
        .get(
            &room_path(&room, "state/org.example.thing/a%2Fb%20c"),
            &alice.token,
        )
        .await;
    assert_eq!((s, content), (200, json!({"v": 1})));
    let res = n
        .get(&room_path(&room, "state/org.example.thing/other"), &alice.token)
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");

    let (s, all) = n.get(&room_path(&room, "state"), &alice.token).await;
    assert_eq!(s, 200, "{all}");
    let all = all.as_array().expect("array");
    let topics: Vec<_> = all.iter().filter(|e| e["type"] == "m.room.topic").collect();
    assert_eq!(topics.len(), 1, "only current state");
    assert_eq!(topics[0]["content"]["topic"], "second");
    assert!(all.iter().any(|e| e["type"] == "m.room.create"));
    assert!(
        all.iter()
            .all(|e| e["room_id"] == room.as_str() && e.get("state_key").is_some())
    );

    // A state event type sent through /send is a message event: current state is unchanged.
    let res = send_raw(
        &n,
        &alice,
        &room,
        "m.room.topic",
        "msg-topic",
        json!({"topic": "not state"}),
    )
    .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let (_, content) = n.get(&room_path(&room, "state/m.room.topic"), &alice.token).await;
    assert_eq!(content, json!({"topic": "second"}));
}

#[tokio::test]
async fn redaction_needs_power_over_others_and_strips_content() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = shared_room(&n, &alice, &bob).await;
    let by_alice = n.send_text(&alice, &room, "alice's words").await;
    let by_bob = n.send_text(&bob, &room, "bob's words").await;
    let event = |id: &str| room_path(&room, &format!("event/{}", enc(id)));

    // Bob (power 0) may not redact Alice's event, by either endpoint.
    let res = n
        .put(
            &room_path(&room, &format!("redact/{}/r1", enc(&by_alice))),
            &bob.token,
            json!({}),
        )
        .await;
    assert_err(&res, 403, "M_FORBIDDEN");
    let res = send_raw(
        &n,
        &bob,
        &room,
        "m.room.redaction",
        "r2",
        json!({"redacts": by_alice}),
    )
    .await;
    assert_err(&res, 403, "M_FORBIDDEN");
    let (_, ev) = n.get(&event(&by_alice), &alice.token).await;
    assert_eq!(ev["content"]["body"], "alice's words", "not redacted: {ev}");

    // Alice (power 100) may; a retry of the transaction returns the same redaction.
    let path = room_path(&room, &format!("redact/{}/r1", enc(&by_bob)));
    let (s, first) = n.put(&path, &alice.token, json!({"reason": "spam"})).await;
    assert_eq!(s, 200, "{first}");
    let (s, again) = n.put(&path, &alice.token, json!({"reason": "spam"})).await;
    assert_eq!((s, &again), (200, &first));
    let (s, ev) = n.get(&event(&by_bob), &bob.token).await;
    assert_eq!(s, 200, "{ev}");
    assert_eq!(ev["content"], json!({}), "{ev}");
    assert!(ev["unsigned"]["redacted_because"].is_object(), "{ev}");
    let (_, redaction) = n
        .get(&event(first["event_id"].as_str().expect("id")), &bob.token)
        .await;
    assert_eq!(redaction["type"], "m.room.redaction");
    assert_eq!(redaction["redacts"], by_bob.as_str());
    assert_eq!(redaction["content"]["reason"], "spam");

    // Bob may redact his own events, here through /send.
    let own = n.send_text(&bob, &room, "oops").await;
    let res = send_raw(&n, &bob, &room, "m.room.redaction", "r3", json!({"redacts": own})).await;
    assert_eq!(res.0, 200, "{:?}", res);
    let (_, ev) = n.get(&event(&own), &bob.token).await;
    assert_eq!(ev["content"], json!({}), "{ev}");
    let (_, page) = n
        .get(&room_path(&room, "messages?dir=b&limit=50"), &bob.token)
        .await;
    assert_eq!(
        bodies(&page["chunk"]),
        vec!["", "", "alice's words"],
        "redacted events keep their place"
    );
}
