//! Typing, receipts and read markers.

use serde_json::json;

use super::*;
use crate::common::*;

#[tokio::test]
async fn typing_only_for_yourself_in_joined_rooms() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    let path = |u: &User| format!("{V3}/rooms/{}/typing/{}", enc(&room), enc(&u.user_id));

    let ok = n
        .put(
            &path(&alice),
            &alice.token,
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    assert_eq!(ok.0, 200, "{:?}", ok);
    assert_eq!(ok.1, json!({}));
    let services = &n.node.as_ref().expect("running").services;
    assert_eq!(services.typing.users_in(&room), vec![alice.user_id.clone()]);

    // For someone else: forbidden, whoever they are.
    let res = n.put(&path(&bob), &alice.token, json!({"typing": true})).await;
    assert_err(&res, 403, "M_FORBIDDEN");
    // Not joined: forbidden.
    let res = n.put(&path(&bob), &bob.token, json!({"typing": true})).await;
    assert_err(&res, 403, "M_FORBIDDEN");
    assert_eq!(services.typing.users_in(&room), vec![alice.user_id.clone()]);
    // `typing` is required.
    let res = n.put(&path(&alice), &alice.token, json!({"timeout": 1000})).await;
    assert_err(&res, 400, "M_BAD_JSON");

    let res = n.put(&path(&alice), &alice.token, json!({"typing": false})).await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert!(services.typing.users_in(&room).is_empty());
}

#[tokio::test]
async fn receipts() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    let first = n.send_text_txn(&alice, &room, "t1", "t1").await;
    let second = n.send_text_txn(&alice, &room, "t2", "t2").await;
    let path = |kind: &str, ev: &str| format!("{V3}/rooms/{}/receipt/{kind}/{}", enc(&room), enc(ev));

    let res = n.post(&path("m.read", &first), &alice.token, json!({})).await;
    assert_eq!(res, (200, json!({})));
    assert_eq!(
        receipt_event(&n, &room, &alice.user_id, "m.read", "").as_deref(),
        Some(first.as_str())
    );
    // Upsert: the same receipt type moves; a threaded one is separate.
    let res = n.post(&path("m.read", &second), &alice.token, json!({})).await;
    assert_eq!(res.0, 200, "{:?}", res);
    let res = n
        .post(
            &path("m.read", &first),
            &alice.token,
            json!({"thread_id": "main"}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_eq!(
        receipt_event(&n, &room, &alice.user_id, "m.read", "").as_deref(),
        Some(second.as_str())
    );
    assert_eq!(
        receipt_event(&n, &room, &alice.user_id, "m.read", "main").as_deref(),
        Some(first.as_str())
    );
    let res = n
        .post(&path("m.read.private", &second), &alice.token, json!({}))
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_eq!(
        receipt_event(&n, &room, &alice.user_id, "m.read.private", "").as_deref(),
        Some(second.as_str())
    );

    // m.fully_read is room account data, not a receipt.
    let res = n
        .post(&path("m.fully_read", &first), &alice.token, json!({}))
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_eq!(receipt_event(&n, &room, &alice.user_id, "m.fully_read", ""), None);
    let res = n
        .get(
            &account_data_path(&alice, Some(&room), "m.fully_read"),
            &alice.token,
        )
        .await;
    assert_eq!(res, (200, json!({"event_id": first})));

    let unknown = "$nosuchevent";
    assert_err(
        &n.post(&path("m.read", unknown), &alice.token, json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &n.post(&path("m.unknown", &first), &alice.token, json!({})).await,
        400,
        "M_INVALID_PARAM",
    );
    for thread in [json!(""), json!(7)] {
        let res = n
            .post(
                &path("m.read", &first),
                &alice.token,
                json!({"thread_id": thread}),
            )
            .await;
        assert_err(&res, 400, "M_INVALID_PARAM");
    }
    let res = n
        .post(
            &path("m.fully_read", &second),
            &alice.token,
            json!({"thread_id": "main"}),
        )
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    // Bob is not in the room.
    assert_err(
        &n.post(&path("m.read", &first), &bob.token, json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_eq!(receipt_event(&n, &room, &bob.user_id, "m.read", ""), None);
    assert_eq!(
        receipt_event(&n, &room, &alice.user_id, "m.read", "").as_deref(),
        Some(second.as_str())
    );

    // An event of another room is not in this one.
    let other = n.create_room(&alice, json!({})).await;
    let elsewhere = n.send_text_txn(&alice, &other, "t3", "t3").await;
    assert_err(
        &n.post(&path("m.read", &elsewhere), &alice.token, json!({})).await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn read_markers() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    let first = n.send_text_txn(&alice, &room, "t1", "t1").await;
    let second = n.send_text_txn(&alice, &room, "t2", "t2").await;
    let path = format!("{V3}/rooms/{}/read_markers", enc(&room));
    let fully_read = account_data_path(&alice, Some(&room), "m.fully_read");

    let res = n
        .post(
            &path,
            &alice.token,
            json!({"m.fully_read": first, "m.read": second, "m.read.private": first}),
        )
        .await;
    assert_eq!(res, (200, json!({})));
    assert_eq!(
        n.get(&fully_read, &alice.token).await,
        (200, json!({"event_id": first}))
    );
    assert_eq!(
        receipt_event(&n, &room, &alice.user_id, "m.read", "").as_deref(),
        Some(second.as_str())
    );
    assert_eq!(
        receipt_event(&n, &room, &alice.user_id, "m.read.private", "").as_deref(),
        Some(first.as_str())
    );

    // One unknown event: nothing changes.
    let res = n
        .post(
            &path,
            &alice.token,
            json!({"m.fully_read": second, "m.read": "$nope"}),
        )
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");
    assert_eq!(
        n.get(&fully_read, &alice.token).await,
        (200, json!({"event_id": first}))
    );

    assert_err(
        &n.post(&path, &bob.token, json!({"m.read": first})).await,
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &n.post(&path, &alice.token, json!({"m.read": 5})).await,
        400,
        "M_BAD_JSON",
    );
}
