//! The filter endpoints and filters applied to /sync.

use reqwest::Method;
use serde_json::json;

use super::*;

#[tokio::test]
async fn filter_upload_and_download() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let path = format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id));
    let def = json!({"room": {"timeline": {"limit": 1, "types": ["m.room.message"]}}, "presence": {"not_types": ["*"]}});
    let (status, res) = n.post(&path, &alice.token, def.clone()).await;
    assert_eq!(status, 200, "{res}");
    let id = res["filter_id"].as_str().expect("filter_id").to_owned();
    assert!(!id.starts_with('{'));
    let (status, got) = n.get(&format!("{path}/{}", enc(&id)), &alice.token).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, def);
    // IDs are per upload.
    let (_, res2) = n.post(&path, &alice.token, json!({})).await;
    assert_ne!(res2["filter_id"], res["filter_id"]);

    assert_err(
        &n.get(&format!("{path}/999"), &alice.token).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &n.get(&format!("{path}/nope"), &alice.token).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &n.get(&format!("{path}/{id}"), &bob.token).await,
        403,
        "M_FORBIDDEN",
    );
    assert_err(&n.post(&path, &bob.token, json!({})).await, 403, "M_FORBIDDEN");
    let bad = json!({"room": {"timeline": {"limit": "ten"}}});
    assert_err(&n.post(&path, &alice.token, bad).await, 400, "M_BAD_JSON");
    let res = n.call(Method::POST, &path, None, Some(json!({}))).await;
    assert_err(&res, 401, "M_MISSING_TOKEN");

    // The stored filter applies to /sync by ID.
    let room = n.create_room(&alice, json!({})).await;
    n.send_text_txn(&alice, &room, "t1", "one").await;
    n.send_text_txn(&alice, &room, "t2", "two").await;
    let body = sync(&n, &alice, &format!("filter={}", enc(&id))).await;
    let timeline = events(&body["rooms"]["join"][&room], "timeline");
    assert_eq!(timeline.len(), 1);
    assert_eq!(timeline[0]["content"]["body"], "two");
    assert_err(
        &n.get(&format!("{SYNC}?filter=12345"), &alice.token).await,
        400,
        "M_INVALID_PARAM",
    );
    // Someone else's filter ID is unknown to this user.
    assert_err(
        &n.get(&format!("{SYNC}?filter={}", enc(&id)), &bob.token).await,
        400,
        "M_INVALID_PARAM",
    );
    let bad_inline = format!(
        "{SYNC}?{}",
        filter_param(json!({"room": {"timeline": {"limit": -1}}}))
    );
    assert_err(&n.get(&bad_inline, &alice.token).await, 400, "M_BAD_JSON");
}

#[tokio::test]
async fn filter_limits_types_and_rooms() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, json!({"name": "Kept", "topic": "t"})).await;
    let other = n.create_room(&alice, json!({})).await;
    n.send_text_txn(&alice, &room, "t1", "hi").await;

    let f = filter_param(json!({
        "room": {
            "rooms": [room],
            "timeline": {"not_types": ["m.room.member", "m.room.power_levels"]},
            "state": {"types": ["m.room.name", "m.room.create"]},
        }
    }));
    let body = sync(&n, &alice, &f).await;
    assert!(body["rooms"]["join"].get(&other).is_none(), "room filter: {body}");
    let r = &body["rooms"]["join"][&room];
    let timeline = events(r, "timeline");
    assert!(!timeline.is_empty());
    assert!(
        timeline
            .iter()
            .all(|e| e["type"] != "m.room.member" && e["type"] != "m.room.power_levels"),
        "{r}"
    );
    assert!(
        events(r, "state")
            .iter()
            .all(|e| e["type"] == "m.room.name" || e["type"] == "m.room.create"),
        "{r}"
    );

    let only_messages =
        filter_param(json!({"room": {"timeline": {"types": ["m.room.*age"]}, "state": {"types": []}}}));
    let body = sync(&n, &alice, &only_messages).await;
    let r = &body["rooms"]["join"][&room];
    assert_eq!(bodies(r), ["hi"]);
    assert_eq!(events(r, "timeline").len(), 1);
    assert!(events(r, "state").is_empty());

    let not_rooms = filter_param(json!({"room": {"not_rooms": [room]}}));
    let body = sync(&n, &alice, &not_rooms).await;
    assert!(body["rooms"]["join"].get(&room).is_none());
    assert!(body["rooms"]["join"][&other].is_object());
}
