//! Typing, receipts, account data and presence in /sync.

use std::time::Duration;

use serde_json::json;

use super::*;

#[tokio::test]
async fn ephemeral_and_account_data() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = shared_room(&n, &alice, &bob).await;
    let event_id = n.send_text_txn(&alice, &room, "t1", "read me").await;
    let base = sync(&n, &bob, "").await;
    let base = sync(&n, &bob, &since(&base)).await;

    // Typing wakes a long-poll.
    let waiter = spawn_sync(&n, &bob, format!("{}&timeout=10000", since(&base)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let typing = format!(
        "/_matrix/client/v3/rooms/{}/typing/{}",
        enc(&room),
        enc(&alice.user_id)
    );
    let res = n
        .put(&typing, &alice.token, json!({"typing": true, "timeout": 30000}))
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let (elapsed, body) = waiter.await.expect("waiter");
    assert!(elapsed < Duration::from_secs(5));
    let eph = events(&body["rooms"]["join"][&room], "ephemeral");
    let t = eph.iter().find(|e| e["type"] == "m.typing").expect("m.typing");
    assert_eq!(t["content"]["user_ids"], json!([alice.user_id]));

    // Receipts, room and global account data arrive in the next delta.
    let res = n
        .post(
            &format!(
                "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(&event_id)
            ),
            &alice.token,
            json!({}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let res = n
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.global",
                enc(&bob.user_id)
            ),
            &bob.token,
            json!({"k": 1}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let res = n
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/account_data/org.example.room",
                enc(&bob.user_id),
                enc(&room)
            ),
            &bob.token,
            json!({"k": 2}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let next = sync(&n, &bob, &since(&body)).await;
    let r = &next["rooms"]["join"][&room];
    let receipt = events(r, "ephemeral")
        .iter()
        .find(|e| e["type"] == "m.receipt")
        .unwrap_or_else(|| panic!("m.receipt in {r}"));
    assert!(receipt["content"][&event_id]["m.read"][&alice.user_id]["ts"].is_u64());
    let ad = events(r, "account_data");
    assert!(
        ad.iter()
            .any(|e| e["type"] == "org.example.room" && e["content"]["k"] == 2)
    );
    let global = events(&next, "account_data");
    assert!(
        global
            .iter()
            .any(|e| e["type"] == "org.example.global" && e["content"]["k"] == 1)
    );

    // Filters drop them.
    let f = filter_param(json!({
        "account_data": {"not_types": ["*"]},
        "room": {"ephemeral": {"not_types": ["m.receipt"]}, "account_data": {"types": []}},
    }));
    let filtered = sync(&n, &bob, &format!("{}&{f}", since(&body))).await;
    assert!(events(&filtered, "account_data").is_empty());
    if let Some(r) = filtered["rooms"]["join"].get(&room) {
        assert!(events(r, "ephemeral").iter().all(|e| e["type"] != "m.receipt"));
        assert!(events(r, "account_data").is_empty());
    }

    // Polling /sync marked alice online; bob shares a room with her, so he sees it.
    let _ = sync(&n, &alice, "").await;
    let initial = sync(&n, &bob, "").await;
    let p = events(&initial, "presence")
        .iter()
        .find(|e| e["sender"] == alice.user_id)
        .unwrap_or_else(|| panic!("alice's presence in {initial}"))
        .clone();
    assert_eq!(p["type"], "m.presence");
    assert_eq!(p["content"]["presence"], "online");
    let off = filter_param(json!({"presence": {"not_types": ["m.presence"]}}));
    assert!(events(&sync(&n, &bob, &off).await, "presence").is_empty());
}

#[tokio::test]
async fn set_presence() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let status = |u: &User| format!("/_matrix/client/v3/presence/{}/status", enc(&u.user_id));
    let presence = |body: (u16, serde_json::Value)| {
        assert_eq!(body.0, 200, "{:?}", body);
        body.1["presence"].as_str().unwrap_or_default().to_owned()
    };

    sync(&n, &alice, "set_presence=offline").await;
    assert_eq!(presence(n.get(&status(&alice), &alice.token).await), "offline");
    sync(&n, &alice, "").await;
    assert_eq!(presence(n.get(&status(&alice), &alice.token).await), "online");

    // A state the user chose is not overridden by polling.
    let res = n
        .put(&status(&alice), &alice.token, json!({"presence": "unavailable"}))
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    sync(&n, &alice, "set_presence=online").await;
    assert_eq!(
        presence(n.get(&status(&alice), &alice.token).await),
        "unavailable"
    );

    let bob = n.register("bob").await;
    sync(&n, &bob, "set_presence=unavailable").await;
    assert_eq!(presence(n.get(&status(&bob), &bob.token).await), "unavailable");
}
