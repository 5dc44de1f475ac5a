//! `POST /rooms/{roomId}/report/{eventId}` and `POST /rooms/{roomId}/report`.

use reqwest::Method;
use serde_json::json;

use super::count_rows;
use crate::common::*;
use crate::events::{room_path, set_membership, shared_room};

#[tokio::test]
async fn members_report_events_they_can_see() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = shared_room(&n, &alice, &bob).await;
    let msg = n.send_text(&alice, &room, "offensive").await;
    let report = |event: &str| room_path(&room, &format!("report/{}", enc(event)));

    let res = n
        .post(
            &report(&msg),
            &bob.token,
            json!({"reason": "rude", "score": -100}),
        )
        .await;
    assert_eq!(res, (200, json!({})));
    // Both fields are optional.
    assert_eq!(
        n.post(&report(&msg), &bob.token, json!({})).await,
        (200, json!({}))
    );
    assert_eq!(count_rows(&n, "reports"), 2);

    // Not joined (the spec's MUST), unknown events, events of another room: all 404.
    assert_err(
        &n.post(&report(&msg), &carol.token, json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    let unknown = format!("$unknown:{}", n.server_name());
    assert_err(
        &n.post(&report(&unknown), &bob.token, json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    let other = shared_room(&n, &alice, &bob).await;
    let elsewhere = n.send_text(&alice, &other, "elsewhere").await;
    assert_err(
        &n.post(&report(&elsewhere), &bob.token, json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    // Bad input.
    assert_err(
        &n.post(&report(&msg), &bob.token, json!({"score": 5})).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &n.post(&report(&msg), &bob.token, json!({"reason": 5})).await,
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &n.post(&report("nope"), &bob.token, json!({})).await,
        400,
        "M_INVALID_PARAM",
    );
    let res = n.call(Method::POST, &report(&msg), None, Some(json!({}))).await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
    assert_eq!(count_rows(&n, "reports"), 2, "failed reports store nothing");
}

#[tokio::test]
async fn events_hidden_by_history_visibility_cannot_be_reported() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    let res = n
        .state_put(
            &alice,
            &room,
            "m.room.history_visibility",
            "",
            json!({"history_visibility": "joined"}),
        )
        .await;
    assert_eq!(res.0, 200);
    let hidden = n.send_text(&alice, &room, "before bob").await;
    set_membership(&n, &bob, &room, "join").await;
    let seen = n.send_text(&alice, &room, "after bob").await;
    let report = |event: &str| room_path(&room, &format!("report/{}", enc(event)));
    assert_err(
        &n.post(&report(&hidden), &bob.token, json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(n.post(&report(&seen), &bob.token, json!({})).await.0, 200);
    assert_eq!(count_rows(&n, "reports"), 1);
}

#[tokio::test]
async fn anyone_reports_a_known_room() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let carol = n.register("carol").await;
    let room = n.create_room(&alice, json!({})).await;
    let path = room_path(&room, "report");
    // Carol is not in the room: room reports must not require membership.
    assert_eq!(
        n.post(&path, &carol.token, json!({"reason": "spam"})).await,
        (200, json!({}))
    );
    assert_eq!(n.post(&path, &carol.token, json!({"reason": ""})).await.0, 200);
    assert_err(&n.post(&path, &carol.token, json!({})).await, 400, "M_BAD_JSON");
    let unknown = room_path(&format!("!unknown:{}", n.server_name()), "report");
    assert_err(
        &n.post(&unknown, &carol.token, json!({"reason": "x"})).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &n.post(&room_path("nope", "report"), &carol.token, json!({"reason": "x"}))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_eq!(count_rows(&n, "reports"), 2);
}
