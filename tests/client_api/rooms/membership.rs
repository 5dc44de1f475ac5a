//! Joining, inviting, leaving, forgetting, moderation and the member lists.

use reqwest::Method;
use serde_json::json;

use super::{V3, act, ids, join, joined_rooms, member_event, members, membership_of, room_path};
use crate::common::*;

#[tokio::test]
async fn invite_then_join_private_room() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let (status, _) = n
        .put(
            &format!("{V3}/profile/{}/displayname", enc(&bob.user_id)),
            &bob.token,
            json!({"displayname": "Bobby"}),
        )
        .await;
    assert_eq!(status, 200);
    let room = n.create_room(&alice, json!({"preset": "private_chat"})).await;

    // Invite-only: no join without an invite.
    assert_err(&join(&n, &bob, &room).await, 403, "M_FORBIDDEN");
    assert_err(&act(&n, &bob, &room, "join", json!({})).await, 403, "M_FORBIDDEN");

    // Bad invites change nothing.
    let res = act(&n, &alice, &room, "invite", json!({})).await;
    assert_err(&res, 400, "M_MISSING_PARAM");
    let res = act(&n, &alice, &room, "invite", json!({"user_id": "bob"})).await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let res = act(&n, &alice, &room, "invite", json!({"user_id": 5})).await;
    assert_err(&res, 400, "M_BAD_JSON");
    let unknown = format!("!nowhere:{}", n.server_name());
    let res = act(&n, &alice, &unknown, "invite", json!({"user_id": bob.user_id})).await;
    assert_err(&res, 404, "M_NOT_FOUND");
    let res = act(
        &n,
        &alice,
        "not-a-room",
        "invite",
        json!({"user_id": bob.user_id}),
    )
    .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    // Only members invite.
    let res = act(&n, &carol, &room, "invite", json!({"user_id": bob.user_id})).await;
    assert_err(&res, 403, "M_FORBIDDEN");
    assert_eq!(
        membership_of(&members(&n, &alice, &room, "").await, &bob.user_id),
        None
    );

    let res = act(
        &n,
        &alice,
        &room,
        "invite",
        json!({"user_id": bob.user_id, "reason": "welcome"}),
    )
    .await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_eq!(res.1, json!({}));
    let invite = member_event(&n, &alice, &room, "", &bob).await;
    assert_eq!(invite["content"]["membership"], "invite");
    assert_eq!(invite["content"]["reason"], "welcome");
    assert_eq!(invite["content"]["displayname"], "Bobby");
    assert_eq!(invite["sender"], alice.user_id.as_str());
    // Inviting again is fine and sends nothing new.
    let res = act(
        &n,
        &alice,
        &room,
        "invite",
        json!({"user_id": bob.user_id, "reason": "welcome"}),
    )
    .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let again = member_event(&n, &alice, &room, "", &bob).await;
    assert_eq!(again["event_id"], invite["event_id"]);

    // The invitee joins; the event carries the profile.
    let res = act(&n, &bob, &room, "join", json!({"reason": "hi"})).await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_eq!(res.1["room_id"], room.as_str());
    let joined = member_event(&n, &bob, &room, "", &bob).await;
    assert_eq!(joined["content"]["membership"], "join");
    assert_eq!(joined["content"]["displayname"], "Bobby");
    assert_eq!(joined["content"]["reason"], "hi");
    assert_eq!(joined["room_id"], room.as_str());
    assert_eq!(joined["unsigned"]["prev_content"]["membership"], "invite");
    assert!(joined_rooms(&n, &bob).await.contains(&json!(room)));

    // Joining again with the same content is a no-op.
    let res = act(&n, &bob, &room, "join", json!({"reason": "hi"})).await;
    assert_eq!(res.0, 200, "{:?}", res);
    let same = member_event(&n, &bob, &room, "", &bob).await;
    assert_eq!(same["event_id"], joined["event_id"]);

    // A joined user cannot be invited.
    let res = act(&n, &alice, &room, "invite", json!({"user_id": bob.user_id})).await;
    assert_err(&res, 403, "M_FORBIDDEN");

    // joined_members: members only, with profile data from the member events.
    let (status, body) = n.get(&room_path(&room, "joined_members"), &alice.token).await;
    assert_eq!(status, 200, "{body}");
    let joined = body["joined"].as_object().expect("joined");
    assert_eq!(joined.len(), 2);
    assert_eq!(joined[&bob.user_id]["display_name"], "Bobby");
    assert!(joined.contains_key(&alice.user_id));
    let res = n.get(&room_path(&room, "joined_members"), &carol.token).await;
    assert_err(&res, 403, "M_FORBIDDEN");
    let res = n.get(&room_path(&room, "members"), &carol.token).await;
    assert_err(&res, 403, "M_FORBIDDEN");
    let res = n.get(&room_path(&unknown, "members"), &carol.token).await;
    assert_err(&res, 403, "M_FORBIDDEN");
    assert!(joined_rooms(&n, &carol).await.is_empty());
    let res = n
        .call(Method::GET, &format!("{V3}/joined_rooms"), None, None)
        .await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn join_by_alias_and_join_errors() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "lobby"}),
        )
        .await;
    let alias = format!("#lobby:{}", n.server_name());

    let res = join(&n, &bob, &alias).await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_eq!(res.1["room_id"], room.as_str());
    assert_eq!(joined_rooms(&n, &bob).await, vec![json!(room)]);
    // The r0 alias of the endpoint works too, and a repeat join is harmless.
    let res = n
        .post(
            &format!("/_matrix/client/r0/join/{}", enc(&room)),
            &bob.token,
            json!({}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    // `via`/`server_name` are accepted.
    let path = format!(
        "{V3}/join/{}?via={}&server_name=x.example",
        enc(&room),
        n.server_name()
    );
    assert_eq!(n.post(&path, &bob.token, json!({})).await.0, 200);

    let carol = n.register("carol").await;
    let cases = [
        (format!("#nope:{}", n.server_name()), 404, "M_NOT_FOUND"),
        ("#elsewhere:remote.example".to_owned(), 404, "M_NOT_FOUND"),
        (format!("!unknown:{}", n.server_name()), 404, "M_NOT_FOUND"),
        ("#no-server".to_owned(), 400, "M_INVALID_PARAM"),
        ("garbage".to_owned(), 400, "M_INVALID_PARAM"),
    ];
    for (target, status, code) in cases {
        assert_err(&join(&n, &carol, &target).await, status, code);
    }
    // /rooms/{roomId}/join takes room IDs only.
    assert_err(
        &act(&n, &carol, &alias, "join", json!({})).await,
        400,
        "M_INVALID_PARAM",
    );
    let res = act(&n, &carol, &room, "join", json!({"reason": 7})).await;
    assert_err(&res, 400, "M_BAD_JSON");
    let res = n
        .call(Method::POST, &room_path(&room, "join"), None, Some(json!({})))
        .await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
    assert!(joined_rooms(&n, &carol).await.is_empty());
}

#[tokio::test]
async fn kick_ban_unban_need_power() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    for u in [&bob, &carol] {
        n.join(u, &room).await;
    }

    // Bob has power 0: he can neither kick nor ban.
    let target = json!({"user_id": carol.user_id});
    assert_err(
        &act(&n, &bob, &room, "kick", target.clone()).await,
        403,
        "M_FORBIDDEN",
    );
    assert_err(
        &act(&n, &bob, &room, "ban", target.clone()).await,
        403,
        "M_FORBIDDEN",
    );
    let res = act(&n, &bob, &room, "ban", json!({"user_id": alice.user_id})).await;
    assert_err(&res, 403, "M_FORBIDDEN");
    assert_eq!(
        membership_of(&members(&n, &alice, &room, "").await, &carol.user_id).as_deref(),
        Some("join")
    );

    // Bad requests.
    assert_err(
        &act(&n, &alice, &room, "kick", json!({})).await,
        400,
        "M_MISSING_PARAM",
    );
    let res = act(&n, &alice, &room, "ban", json!({"user_id": "@"})).await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let unknown = format!("!unknown:{}", n.server_name());
    assert_err(
        &act(&n, &alice, &unknown, "kick", target.clone()).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &act(&n, &alice, &unknown, "ban", target.clone()).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &act(&n, &alice, &unknown, "unban", target.clone()).await,
        404,
        "M_NOT_FOUND",
    );

    // Alice (power 100) kicks Carol, who may rejoin the public room.
    let res = act(
        &n,
        &alice,
        &room,
        "kick",
        json!({"user_id": carol.user_id, "reason": "spam"}),
    )
    .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let kicked = member_event(&n, &alice, &room, "", &carol).await;
    assert_eq!(kicked["content"]["membership"], "leave");
    assert_eq!(kicked["content"]["reason"], "spam");
    assert_eq!(kicked["sender"], alice.user_id.as_str());
    assert!(joined_rooms(&n, &carol).await.is_empty());
    // Kicking someone not in the room is refused.
    assert_err(
        &act(&n, &alice, &room, "kick", target.clone()).await,
        403,
        "M_FORBIDDEN",
    );
    n.join(&carol, &room).await;

    // Banned: cannot rejoin, leave or be invited; unban lets them join again.
    let res = act(
        &n,
        &alice,
        &room,
        "ban",
        json!({"user_id": carol.user_id, "reason": "again"}),
    )
    .await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_eq!(
        membership_of(&members(&n, &alice, &room, "").await, &carol.user_id).as_deref(),
        Some("ban")
    );
    assert_err(&join(&n, &carol, &room).await, 403, "M_FORBIDDEN");
    assert_err(
        &act(&n, &carol, &room, "leave", json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    let res = act(&n, &alice, &room, "invite", target.clone()).await;
    assert_err(&res, 403, "M_FORBIDDEN");
    assert_err(
        &act(&n, &bob, &room, "unban", target.clone()).await,
        403,
        "M_FORBIDDEN",
    );
    assert_eq!(act(&n, &alice, &room, "unban", target.clone()).await.0, 200);
    assert_eq!(
        membership_of(&members(&n, &alice, &room, "").await, &carol.user_id).as_deref(),
        Some("leave")
    );
    // Unbanning someone who is not banned is refused.
    assert_err(
        &act(&n, &alice, &room, "unban", target.clone()).await,
        403,
        "M_FORBIDDEN",
    );
    n.join(&carol, &room).await;

    // Banning a user who never joined works too (pre-emptive ban).
    let dave = n.register("dave").await;
    let res = act(&n, &alice, &room, "ban", json!({"user_id": dave.user_id})).await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_err(&join(&n, &dave, &room).await, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn leave_reject_and_forget() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    n.join(&bob, &room).await;

    let unknown = format!("!unknown:{}", n.server_name());
    assert_err(
        &act(&n, &bob, &unknown, "leave", json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &act(&n, &bob, &unknown, "forget", json!({})).await,
        404,
        "M_NOT_FOUND",
    );
    // Not in the room: nothing to leave.
    assert_err(
        &act(&n, &carol, &room, "leave", json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    // Still joined: cannot forget.
    assert_err(&act(&n, &bob, &room, "forget", json!({})).await, 400, "M_UNKNOWN");

    let res = act(&n, &bob, &room, "leave", json!({"reason": "bye"})).await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_eq!(res.1, json!({}));
    assert!(joined_rooms(&n, &bob).await.is_empty());
    assert_err(
        &act(&n, &bob, &room, "leave", json!({})).await,
        403,
        "M_FORBIDDEN",
    );

    // A former member sees the members as of their leave, not later changes.
    n.invite(&alice, &room, &carol).await;
    let seen = members(&n, &bob, &room, "").await;
    assert_eq!(membership_of(&seen, &bob.user_id).as_deref(), Some("leave"));
    assert_eq!(membership_of(&seen, &carol.user_id), None);
    assert_eq!(
        membership_of(&members(&n, &alice, &room, "").await, &carol.user_id).as_deref(),
        Some("invite")
    );

    // Rejecting an invite is leaving while invited.
    assert_err(
        &act(&n, &carol, &room, "forget", json!({})).await,
        400,
        "M_UNKNOWN",
    );
    n.leave(&carol, &room).await;
    assert_eq!(
        membership_of(&members(&n, &alice, &room, "").await, &carol.user_id).as_deref(),
        Some("leave")
    );
    // Carol never joined, so she may not list members.
    let res = n.get(&room_path(&room, "members"), &carol.token).await;
    assert_err(&res, 403, "M_FORBIDDEN");

    // Forgetting hides the room's members from Bob; rejoining brings them back.
    let res = act(&n, &bob, &room, "forget", json!({})).await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_eq!(res.1, json!({}));
    let res = n.get(&room_path(&room, "members"), &bob.token).await;
    assert_err(&res, 403, "M_FORBIDDEN");
    n.join(&bob, &room).await;
    assert_eq!(
        membership_of(&members(&n, &bob, &room, "").await, &carol.user_id).as_deref(),
        Some("leave")
    );
}

#[tokio::test]
async fn members_membership_filters() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let dave = n.register("dave").await;
    let eve = n.register("eve").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    for u in [&bob, &eve] {
        n.join(u, &room).await;
    }
    let invite = json!({"user_id": carol.user_id});
    assert_eq!(act(&n, &alice, &room, "invite", invite).await.0, 200);
    let ban = json!({"user_id": dave.user_id});
    assert_eq!(act(&n, &alice, &room, "ban", ban).await.0, 200);
    n.leave(&eve, &room).await;

    let mut all = vec![&alice, &bob, &carol, &dave, &eve]
        .into_iter()
        .map(|u| u.user_id.clone())
        .collect::<Vec<_>>();
    all.sort();
    let sorted = |v: Vec<&User>| {
        let mut v: Vec<String> = v.into_iter().map(|u| u.user_id.clone()).collect();
        v.sort();
        v
    };
    let cases = [
        ("", all.clone()),
        ("?membership=join", sorted(vec![&alice, &bob])),
        ("?membership=invite", sorted(vec![&carol])),
        ("?membership=ban", sorted(vec![&dave])),
        ("?membership=knock", vec![]),
        ("?not_membership=join", sorted(vec![&carol, &dave, &eve])),
        ("?not_membership=leave", sorted(vec![&alice, &bob, &carol, &dave])),
        // Both given: membership is `leave` OR it is not `join`.
        (
            "?membership=leave&not_membership=join",
            sorted(vec![&carol, &dave, &eve]),
        ),
        (
            "?membership=join&not_membership=ban",
            sorted(vec![&alice, &bob, &carol, &eve]),
        ),
    ];
    for (q, want) in cases {
        let chunk = members(&n, &bob, &room, q).await;
        assert_eq!(ids(&chunk), want, "query {q}");
        for ev in &chunk {
            assert_eq!(ev["type"], "m.room.member");
            assert_eq!(ev["room_id"], room.as_str());
            assert!(ev["event_id"].is_string());
        }
    }
    for q in ["?membership=joined", "?not_membership=x", "?at=bogus", "?at=s"] {
        let res = n
            .get(&format!("{}{q}", room_path(&room, "members")), &bob.token)
            .await;
        assert_err(&res, 400, "M_INVALID_PARAM");
    }
    // `at` a position before anyone but the creator had joined.
    let chunk = members(&n, &bob, &room, "?at=s0").await;
    assert!(chunk.is_empty(), "{chunk:?}");
    let now = members(&n, &bob, &room, "?at=s999999999").await;
    assert_eq!(ids(&now), all);
}

#[tokio::test]
async fn restricted_room_join_checks_allow_list() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let space = n.create_room(&alice, json!({"preset": "private_chat"})).await;
    let room = n
        .create_room(
            &alice,
            json!({"preset": "private_chat", "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}
            }]}),
        )
        .await;
    assert_err(&join(&n, &bob, &room).await, 403, "M_FORBIDDEN");
    let invite = json!({"user_id": bob.user_id});
    assert_eq!(act(&n, &alice, &space, "invite", invite).await.0, 200);
    n.join(&bob, &space).await;
    let res = join(&n, &bob, &room).await;
    assert_eq!(res.0, 200, "{:?}", res);
    let ev = member_event(&n, &bob, &room, "?membership=join", &bob).await;
    assert_eq!(
        ev["content"]["join_authorised_via_users_server"],
        alice.user_id.as_str()
    );
}
