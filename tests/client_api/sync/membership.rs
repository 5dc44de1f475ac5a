//! Invites, joins, leaves, kicks and forgotten rooms in /sync.

use serde_json::{Value, json};

use super::*;

#[tokio::test]
async fn invite_shows_with_invite_state() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, json!({"name": "Party"})).await;
    let before = sync(&n, &bob, "").await;
    assert_eq!(before["rooms"]["invite"], json!({}));

    n.invite(&alice, &room, &bob).await;
    let body = sync(&n, &bob, &since(&before)).await;
    assert!(body["rooms"]["join"].get(&room).is_none());
    let state = body["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no invite_state in {body}"));
    let name = state.iter().find(|e| e["type"] == "m.room.name").expect("name");
    assert_eq!(name["content"]["name"], "Party");
    assert!(has_state(state, "m.room.create", ""));
    assert!(has_state(state, "m.room.join_rules", ""));
    assert!(
        has_state(state, "m.room.member", &alice.user_id),
        "inviter's membership"
    );
    let own = state
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id)
        .expect("the invite itself");
    assert_eq!(own["content"]["membership"], "invite");
    assert_eq!(own["sender"], alice.user_id);

    // Shown once; an initial sync shows it again; joining moves it to `join`.
    let again = sync(&n, &bob, &since(&body)).await;
    assert!(again["rooms"]["invite"].get(&room).is_none());
    assert!(sync(&n, &bob, "").await["rooms"]["invite"][&room].is_object());
    n.join(&bob, &room).await;
    let joined = sync(&n, &bob, &since(&again)).await;
    assert!(joined["rooms"]["invite"].get(&room).is_none());
    let r = &joined["rooms"]["join"][&room];
    // Newly joined: the full state, even though the room was known as an invite.
    let all: Vec<Value> = events(r, "state")
        .iter()
        .chain(events(r, "timeline"))
        .cloned()
        .collect();
    assert!(has_state(&all, "m.room.create", ""), "{r}");
    assert!(has_state(&all, "m.room.name", ""), "{r}");
}

#[tokio::test]
async fn leave_kick_and_forget() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = shared_room(&n, &alice, &bob).await;
    n.invite(&alice, &room, &carol).await;
    n.join(&carol, &room).await;
    let bob_base = sync(&n, &bob, "").await;
    let carol_base = sync(&n, &carol, "").await;

    n.send_text_txn(&alice, &room, "t1", "before you go").await;
    n.leave(&bob, &room).await;
    n.send_text_txn(&alice, &room, "t2", "after you left").await;

    let body = sync(&n, &bob, &since(&bob_base)).await;
    assert!(body["rooms"]["join"].get(&room).is_none());
    let r = &body["rooms"]["leave"][&room];
    assert_eq!(bodies(r), ["before you go"], "nothing after the leave: {r}");
    let last = events(r, "timeline").last().expect("leave event").clone();
    assert_eq!(last["type"], "m.room.member");
    assert_eq!(last["content"]["membership"], "leave");
    assert!(r["state"]["events"].is_array());

    // Once only; an initial sync shows left rooms only with include_leave.
    assert!(
        sync(&n, &bob, &since(&body)).await["rooms"]["leave"]
            .get(&room)
            .is_none()
    );
    assert!(sync(&n, &bob, "").await["rooms"]["leave"].get(&room).is_none());
    let with_leave = filter_param(json!({"room": {"include_leave": true}}));
    assert!(sync(&n, &bob, &with_leave).await["rooms"]["leave"][&room].is_object());

    // A kick shows the same way.
    let res = n
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            &alice.token,
            json!({"user_id": carol.user_id, "reason": "bye"}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let kicked = sync(&n, &carol, &since(&carol_base)).await;
    let last = events(&kicked["rooms"]["leave"][&room], "timeline")
        .last()
        .expect("kick event")
        .clone();
    assert_eq!(last["sender"], alice.user_id);
    assert_eq!(last["state_key"], carol.user_id);

    // A forgotten room never appears again.
    let res = n
        .post(
            &format!("/_matrix/client/v3/rooms/{}/forget", enc(&room)),
            &bob.token,
            json!({}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert!(
        sync(&n, &bob, &with_leave).await["rooms"]["leave"]
            .get(&room)
            .is_none()
    );
}

#[tokio::test]
async fn history_visibility_limits_what_joiners_see() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = n
        .create_room(
            &alice,
            json!({"initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]}),
        )
        .await;
    n.send_text_txn(&alice, &room, "t1", "secret").await;
    n.invite(&alice, &room, &bob).await;
    n.invite(&alice, &room, &carol).await;
    let carol_base = sync(&n, &carol, "").await;
    n.join(&bob, &room).await;
    n.send_text_txn(&alice, &room, "t2", "after join").await;
    let body = sync(&n, &bob, "").await;
    assert_eq!(bodies(&body["rooms"]["join"][&room]), ["after join"], "{body}");

    // Under the default `shared`, a joiner sees what came before.
    let open = n.create_room(&alice, json!({"invite": [bob.user_id]})).await;
    n.send_text_txn(&alice, &open, "t3", "history").await;
    n.join(&bob, &open).await;
    let body = sync(&n, &bob, "").await;
    assert_eq!(bodies(&body["rooms"]["join"][&open]), ["history"], "{body}");

    // A rejected invite: the room leaves with only the rejection, none of the messages.
    n.leave(&carol, &room).await;
    let body = sync(&n, &carol, &since(&carol_base)).await;
    let timeline = events(&body["rooms"]["leave"][&room], "timeline");
    assert_eq!(timeline.len(), 1, "{body}");
    assert_eq!(timeline[0]["state_key"], carol.user_id);
    assert_eq!(timeline[0]["content"]["membership"], "leave");
}
