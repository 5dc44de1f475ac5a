//! Typing, receipts, account data and presence as /sync delivers them.

use serde_json::{Value, json};

use super::*;
use crate::common::*;

fn next_batch(body: &Value) -> String {
    body["next_batch"].as_str().expect("next_batch").to_owned()
}

/// The events of `section` (`ephemeral`, `account_data`) of a joined room in a sync body.
fn room_events<'a>(body: &'a Value, room: &str, section: &str) -> Vec<&'a Value> {
    body["rooms"]["join"][room][section]["events"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn of_type<'a>(events: &[&'a Value], kind: &str) -> Option<&'a Value> {
    events.iter().copied().find(|e| e["type"] == kind)
}

#[tokio::test]
async fn sync_shows_typing_receipts_and_room_account_data() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    n.join(&bob, &room).await;
    let event = n.send_text_txn(&alice, &room, "hello", "hello").await;
    let bob_since = next_batch(&n.sync(&bob, None).await);

    let typing = format!("{V3}/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    assert_eq!(
        n.put(&typing, &alice.token, json!({"typing": true, "timeout": 60000}))
            .await
            .0,
        200
    );
    let receipt = |kind: &str| format!("{V3}/rooms/{}/receipt/{kind}/{}", enc(&room), enc(&event));
    assert_eq!(n.post(&receipt("m.read"), &alice.token, json!({})).await.0, 200);
    assert_eq!(
        n.post(&receipt("m.read.private"), &alice.token, json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        n.post(&receipt("m.fully_read"), &alice.token, json!({})).await.0,
        200
    );
    let tag = format!(
        "{V3}/user/{}/rooms/{}/tags/m.favourite",
        enc(&alice.user_id),
        enc(&room)
    );
    assert_eq!(n.put(&tag, &alice.token, json!({"order": 0.5})).await.0, 200);
    let custom = account_data_path(&alice, Some(&room), "org.example.room");
    assert_eq!(n.put(&custom, &alice.token, json!({"k": "v"})).await.0, 200);

    // Bob sees the typing and the public receipt, nothing private to Alice.
    let body = n.sync(&bob, Some(&bob_since)).await;
    let ephemeral = room_events(&body, &room, "ephemeral");
    let typing_ev = of_type(&ephemeral, "m.typing").expect("m.typing in bob's sync");
    assert_eq!(typing_ev["content"]["user_ids"], json!([alice.user_id]));
    let receipts = of_type(&ephemeral, "m.receipt").expect("m.receipt in bob's sync");
    assert!(
        receipts["content"][&event]["m.read"][&alice.user_id]["ts"].is_i64(),
        "{receipts}"
    );
    assert!(
        receipts["content"][&event].get("m.read.private").is_none(),
        "{receipts}"
    );
    assert!(room_events(&body, &room, "account_data").is_empty(), "{body}");
    let bob_since = next_batch(&body);

    // Alice sees her private receipt and her room account data.
    let body = n.sync(&alice, None).await;
    let ephemeral = room_events(&body, &room, "ephemeral");
    let receipts = of_type(&ephemeral, "m.receipt").expect("m.receipt in alice's sync");
    assert!(
        receipts["content"][&event]["m.read.private"][&alice.user_id].is_object(),
        "{receipts}"
    );
    let data = room_events(&body, &room, "account_data");
    assert_eq!(
        of_type(&data, "m.tag").expect("m.tag")["content"],
        json!({"tags": {"m.favourite": {"order": 0.5}}})
    );
    assert_eq!(
        of_type(&data, "m.fully_read").expect("m.fully_read")["content"],
        json!({"event_id": event})
    );
    assert_eq!(
        of_type(&data, "org.example.room").expect("custom")["content"],
        json!({"k": "v"})
    );

    // Stopping typing is a change too.
    assert_eq!(
        n.put(&typing, &alice.token, json!({"typing": false})).await.0,
        200
    );
    let body = n.sync(&bob, Some(&bob_since)).await;
    let ephemeral = room_events(&body, &room, "ephemeral");
    assert_eq!(
        of_type(&ephemeral, "m.typing").expect("m.typing")["content"]["user_ids"],
        json!([])
    );
}

#[tokio::test]
async fn sync_shows_global_account_data_and_presence() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    n.join(&bob, &room).await;
    let alice_since = next_batch(&n.sync(&alice, None).await);
    let bob_since = next_batch(&n.sync(&bob, None).await);

    let global = account_data_path(&alice, None, "org.example.config");
    assert_eq!(
        n.put(&global, &alice.token, json!({"theme": "dark"})).await.0,
        200
    );
    let presence = format!("{V3}/presence/{}/status", enc(&alice.user_id));
    let res = n
        .put(
            &presence,
            &alice.token,
            json!({"presence": "unavailable", "status_msg": "away"}),
        )
        .await;
    assert_eq!(res.0, 200);

    let body = n.sync(&alice, Some(&alice_since)).await;
    let data: Vec<&Value> = body["account_data"]["events"]
        .as_array()
        .expect("events")
        .iter()
        .collect();
    assert_eq!(
        of_type(&data, "org.example.config").expect("config")["content"],
        json!({"theme": "dark"})
    );

    // Bob shares a room with Alice: her presence reaches him; her account data does not.
    let body = n.sync(&bob, Some(&bob_since)).await;
    let events = body["presence"]["events"].as_array().expect("presence events");
    let p = events
        .iter()
        .find(|e| e["sender"] == alice.user_id.as_str())
        .unwrap_or_else(|| panic!("alice's presence in {body}"));
    assert_eq!(p["type"], "m.presence");
    assert_eq!(p["content"]["presence"], "unavailable");
    assert_eq!(p["content"]["status_msg"], "away");
    let data = body["account_data"]["events"].as_array().expect("events");
    assert!(data.iter().all(|e| e["type"] != "org.example.config"), "{body}");
}

#[tokio::test]
async fn account_data_and_typing_wake_a_long_poll() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, json!({})).await;
    let since = next_batch(&n.sync(&alice, None).await);
    let poll = format!("{V3}/sync?timeout=30000&since={}", enc(&since));
    let global = account_data_path(&alice, None, "org.example.wake");

    let started = std::time::Instant::now();
    let (res, put) = tokio::join!(n.get(&poll, &alice.token), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        n.put(&global, &alice.token, json!({"woke": true})).await
    });
    assert_eq!(put.0, 200);
    assert_eq!(res.0, 200, "{:?}", res);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "long-poll not woken"
    );
    let data: Vec<&Value> = res.1["account_data"]["events"]
        .as_array()
        .expect("events")
        .iter()
        .collect();
    assert_eq!(
        of_type(&data, "org.example.wake").expect("woken by account data")["content"],
        json!({"woke": true})
    );

    let poll = format!("{V3}/sync?timeout=30000&since={}", enc(&next_batch(&res.1)));
    let typing = format!("{V3}/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    let started = std::time::Instant::now();
    let (res, put) = tokio::join!(n.get(&poll, &alice.token), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        n.put(&typing, &alice.token, json!({"typing": true, "timeout": 60000}))
            .await
    });
    assert_eq!(put.0, 200);
    assert_eq!(res.0, 200, "{:?}", res);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "long-poll not woken"
    );
    let ephemeral = room_events(&res.1, &room, "ephemeral");
    assert_eq!(
        of_type(&ephemeral, "m.typing").expect("m.typing")["content"]["user_ids"],
        json!([alice.user_id])
    );
}
