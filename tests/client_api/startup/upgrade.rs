//! `POST /rooms/{roomId}/upgrade`.

use reqwest::Method;
use serde_json::{Value, json};

use super::{V3, state};
use crate::common::*;
use crate::events::{room_path, send_raw, set_membership};

async fn upgrade(n: &TestNode, u: &User, room: &str, body: Value) -> (u16, Value) {
    n.post(&room_path(room, "upgrade"), &u.token, body).await
}

/// Upgrades, asserting success; returns the replacement room.
async fn upgraded(n: &TestNode, u: &User, room: &str, version: &str) -> String {
    let res = upgrade(n, u, room, json!({"new_version": version})).await;
    assert_eq!(res.0, 200, "upgrade: {:?}", res);
    res.1["replacement_room"]
        .as_str()
        .expect("replacement_room")
        .to_owned()
}

async fn joined(n: &TestNode, u: &User) -> Vec<Value> {
    let res = n.get(&format!("{V3}/joined_rooms"), &u.token).await;
    assert_eq!(res.0, 200);
    res.1["joined_rooms"].as_array().expect("joined_rooms").clone()
}

#[tokio::test]
async fn upgrade_copies_state_moves_aliases_and_tombstones_the_old_room() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let old = n
        .create_room(
            &alice,
            json!({
                "room_version": "11",
                "preset": "public_chat",
                "visibility": "public",
                "room_alias_name": "hall",
                "name": "The Hall",
                "topic": "Chat",
                "creation_content": {"type": "org.example.hall"},
                "initial_state": [{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
            }),
        )
        .await;
    set_membership(&n, &bob, &old, "join").await;
    let last = n.send_text(&bob, &old, "last words").await;

    let new = upgraded(&n, &alice, &old, "12").await;
    assert_ne!(new, old);

    // The new room: predecessor, version and type in the create event.
    let create = state(&n, &alice, &new, "m.room.create").await;
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["type"], "org.example.hall");
    assert_eq!(create["predecessor"], json!({"room_id": old, "event_id": last}));
    // Transferable state is copied; members are not.
    assert_eq!(state(&n, &alice, &new, "m.room.name").await["name"], "The Hall");
    assert_eq!(state(&n, &alice, &new, "m.room.topic").await["topic"], "Chat");
    assert_eq!(
        state(&n, &alice, &new, "m.room.encryption").await["algorithm"],
        "m.megolm.v1.aes-sha2"
    );
    assert_eq!(
        state(&n, &alice, &new, "m.room.join_rules").await["join_rule"],
        "public"
    );
    assert!(joined(&n, &alice).await.contains(&json!(new)));
    assert!(!joined(&n, &bob).await.contains(&json!(new)));
    // v12: the upgrader is the creator, with implicit power, so not in `users`.
    let pl = state(&n, &alice, &new, "m.room.power_levels").await;
    assert_eq!(pl["users"], json!({}), "{pl}");
    assert_eq!(pl["events"]["m.room.tombstone"], 100);

    // Aliases and the directory listing moved.
    let alias = format!("#hall:{}", n.server_name());
    let res = n
        .get(&format!("{V3}/directory/room/{}", enc(&alias)), &bob.token)
        .await;
    assert_eq!(res.1["room_id"], new.as_str(), "{:?}", res);
    assert_eq!(
        state(&n, &alice, &new, "m.room.canonical_alias").await["alias"],
        alias.as_str()
    );
    assert_eq!(state(&n, &alice, &old, "m.room.canonical_alias").await, json!({}));
    let listed = |room: &str| format!("{V3}/directory/list/room/{}", enc(room));
    assert_eq!(n.get(&listed(&new), &bob.token).await.1["visibility"], "public");
    assert_eq!(n.get(&listed(&old), &bob.token).await.1["visibility"], "private");

    // The old room: tombstone, and ordinary members silenced.
    let tombstone = state(&n, &bob, &old, "m.room.tombstone").await;
    assert_eq!(tombstone["replacement_room"], new.as_str());
    assert!(tombstone["body"].is_string());
    let old_pl = state(&n, &bob, &old, "m.room.power_levels").await;
    assert_eq!(old_pl["events_default"], 50);
    assert_eq!(old_pl["invite"], 50);
    let res = send_raw(
        &n,
        &bob,
        &old,
        "m.room.message",
        "late",
        json!({"msgtype": "m.text", "body": "hi"}),
    )
    .await;
    assert_err(&res, 403, "M_FORBIDDEN");
    // Bob can follow into the new room.
    set_membership(&n, &bob, &new, "join").await;
}

#[tokio::test]
async fn upgrade_needs_power_and_a_supported_version() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    set_membership(&n, &bob, &room, "join").await;
    let state_ids = || async {
        let res = n.get(&room_path(&room, "state"), &alice.token).await;
        assert_eq!(res.0, 200);
        let mut ids: Vec<String> = res
            .1
            .as_array()
            .expect("state")
            .iter()
            .map(|e| e["event_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let before = state_ids().await;

    let ok = json!({"new_version": "12"});
    assert_err(&upgrade(&n, &bob, &room, ok.clone()).await, 403, "M_FORBIDDEN");
    assert_err(&upgrade(&n, &carol, &room, ok.clone()).await, 403, "M_FORBIDDEN");
    for v in ["1", "999", ""] {
        let res = upgrade(&n, &alice, &room, json!({"new_version": v})).await;
        assert_err(&res, 400, "M_UNSUPPORTED_ROOM_VERSION");
    }
    assert_err(&upgrade(&n, &alice, &room, json!({})).await, 400, "M_BAD_JSON");
    assert_err(
        &upgrade(
            &n,
            &alice,
            &room,
            json!({"new_version": "12", "additional_creators": ["nope"]}),
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    let unknown = format!("!unknown:{}", n.server_name());
    assert_err(
        &upgrade(&n, &alice, &unknown, ok.clone()).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &upgrade(&n, &alice, "nope", ok.clone()).await,
        400,
        "M_INVALID_PARAM",
    );
    let res = n
        .call(Method::POST, &room_path(&room, "upgrade"), None, Some(ok))
        .await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
    // Nothing changed: no tombstone, no new room.
    assert_eq!(state_ids().await, before);
    assert_eq!(joined(&n, &alice).await, vec![json!(room)]);
}

#[tokio::test]
async fn moderator_with_tombstone_power_upgrades_and_levels_are_kept() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n
        .create_room(
            &alice,
            json!({
                "room_version": "11",
                "preset": "private_chat",
                "invite": [bob.user_id],
                "initial_state": [{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
            }),
        )
        .await;
    set_membership(&n, &bob, &room, "join").await;
    let mut pl = state(&n, &alice, &room, "m.room.power_levels").await;
    pl["users"][&bob.user_id] = json!(50);
    pl["events"]["m.room.tombstone"] = json!(50);
    assert_eq!(
        n.state_put(&alice, &room, "m.room.power_levels", "", pl).await.0,
        200
    );

    // Bob may tombstone but not send m.room.encryption (100): he is raised for the copy.
    let new = upgraded(&n, &bob, &room, "11").await;
    assert_eq!(
        state(&n, &bob, &new, "m.room.encryption").await["algorithm"],
        "m.megolm.v1.aes-sha2"
    );
    let new_pl = state(&n, &bob, &new, "m.room.power_levels").await;
    assert_eq!(
        new_pl["users"],
        json!({alice.user_id.clone(): 100, bob.user_id.clone(): 50})
    );
    assert_eq!(new_pl["events"]["m.room.tombstone"], 50);
    assert_eq!(
        state(&n, &bob, &new, "m.room.guest_access").await["guest_access"],
        "can_join"
    );
}

#[tokio::test]
async fn a_room_without_guest_access_stays_closed_to_guests() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    // The public preset sends no m.room.guest_access; then the room goes invite-only.
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    let res = n
        .state_put(
            &alice,
            &room,
            "m.room.join_rules",
            "",
            json!({"join_rule": "invite"}),
        )
        .await;
    assert_eq!(res.0, 200);
    let new = upgraded(&n, &alice, &room, "12").await;
    assert_eq!(
        state(&n, &alice, &new, "m.room.join_rules").await["join_rule"],
        "invite"
    );
    assert_eq!(
        state(&n, &alice, &new, "m.room.guest_access").await["guest_access"],
        "forbidden"
    );
}

#[tokio::test]
async fn upgrade_from_v12_gives_old_creators_top_power() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    set_membership(&n, &bob, &room, "join").await;

    // Down to v11: the creator's implicit power becomes an explicit 100.
    let v11 = upgraded(&n, &alice, &room, "11").await;
    let pl = state(&n, &alice, &v11, "m.room.power_levels").await;
    assert_eq!(pl["users"], json!({alice.user_id.clone(): 100}), "{pl}");
    assert_eq!(
        state(&n, &alice, &v11, "m.room.create").await["room_version"],
        "11"
    );

    // Back up to v12 with an additional creator.
    let res = upgrade(
        &n,
        &alice,
        &v11,
        json!({"new_version": "12", "additional_creators": [bob.user_id]}),
    )
    .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let v12 = res.1["replacement_room"].as_str().expect("room").to_owned();
    let create = state(&n, &alice, &v12, "m.room.create").await;
    assert_eq!(create["additional_creators"], json!([bob.user_id]));
    assert_eq!(create["predecessor"]["room_id"], v11.as_str());
    let pl = state(&n, &alice, &v12, "m.room.power_levels").await;
    assert_eq!(pl["users"], json!({}), "{pl}");
}
