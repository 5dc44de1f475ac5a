//! History visibility: what joined, departed and non-members may read.

use serde_json::json;

use super::*;

async fn set_visibility(n: &TestNode, u: &User, room: &str, v: &str) {
    let res = n
        .state_put(
            u,
            room,
            "m.room.history_visibility",
            "",
            json!({"history_visibility": v}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
}

#[tokio::test]
async fn joined_visibility_hides_history_from_newcomers_and_leavers_see_up_to_leaving() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n
        .create_room(&alice, json!({"preset": "public_chat", "topic": "old topic"}))
        .await;
    // `shared`: bob will see this though he joins later.
    n.send_text(&alice, &room, "shared before").await;
    set_visibility(&n, &alice, &room, "joined").await;
    let hidden = n.send_text(&alice, &room, "hidden").await;
    set_membership(&n, &bob, &room, "join").await;
    n.send_text(&alice, &room, "while joined").await;

    assert_eq!(
        n.message_bodies(&bob, &room, "dir=f&limit=1000").await,
        vec!["shared before", "while joined"]
    );
    let res = n
        .get(&room_path(&room, &format!("event/{}", enc(&hidden))), &bob.token)
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");
    let res = n
        .get(
            &room_path(&room, &format!("context/{}", enc(&hidden))),
            &bob.token,
        )
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");
    assert_eq!(
        n.message_bodies(&alice, &room, "dir=f&limit=1000").await,
        vec!["shared before", "hidden", "while joined"]
    );

    set_membership(&n, &bob, &room, "leave").await;
    let after = n.send_text(&alice, &room, "after bob left").await;
    let res = n
        .state_put(&alice, &room, "m.room.topic", "", json!({"topic": "new topic"}))
        .await;
    assert_eq!(res.0, 200);

    // Bob sees up to his leave, and the state as it was then.
    assert_eq!(
        n.message_bodies(&bob, &room, "dir=f&limit=1000").await,
        vec!["shared before", "while joined"]
    );
    let (_, back) = n
        .get(&room_path(&room, "messages?dir=b&limit=1"), &bob.token)
        .await;
    assert_eq!(
        back["chunk"][0]["type"], "m.room.member",
        "his leave is his last event: {back}"
    );
    assert_eq!(back["chunk"][0]["content"]["membership"], "leave");
    let res = n
        .get(&room_path(&room, &format!("event/{}", enc(&after))), &bob.token)
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");
    let (s, topic) = n.get(&room_path(&room, "state/m.room.topic/"), &bob.token).await;
    assert_eq!((s, topic["topic"].clone()), (200, json!("old topic")));
    let (_, state) = n.get(&room_path(&room, "state"), &bob.token).await;
    let mine = state
        .as_array()
        .expect("state")
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .cloned()
        .expect("bob's membership");
    assert_eq!(mine["content"]["membership"], "leave");
    let (_, topic) = n
        .get(&room_path(&room, "state/m.room.topic/"), &alice.token)
        .await;
    assert_eq!(topic["topic"], "new topic");
}

#[tokio::test]
async fn world_readable_rooms_can_be_read_by_anyone() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let carol = n.register("carol").await;
    let room = n.create_room(&alice, json!({})).await;
    let private = n.send_text(&alice, &room, "before").await;
    let res = n.get(&room_path(&room, "messages?dir=b"), &carol.token).await;
    assert_err(&res, 403, "M_FORBIDDEN");

    set_visibility(&n, &alice, &room, "world_readable").await;
    let public = n.send_text(&alice, &room, "public").await;
    // Only what was sent while world_readable; `shared` history stays with members.
    assert_eq!(
        n.message_bodies(&carol, &room, "dir=f&limit=1000").await,
        vec!["public"]
    );
    let (s, ev) = n
        .get(
            &room_path(&room, &format!("event/{}", enc(&public))),
            &carol.token,
        )
        .await;
    assert_eq!((s, ev["content"]["body"].clone()), (200, json!("public")));
    let res = n
        .get(
            &room_path(&room, &format!("event/{}", enc(&private))),
            &carol.token,
        )
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");
    let (s, _) = n.get(&room_path(&room, "state"), &carol.token).await;
    assert_eq!(s, 200);
    // Reading is not joining.
    let res = send_raw(&n, &carol, &room, "m.room.message", "c", json!({"body": "hi"})).await;
    assert_err(&res, 403, "M_FORBIDDEN");
}
