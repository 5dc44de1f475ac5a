//! Profiles (and the member events they update) and presence.

use reqwest::Method;
use serde_json::json;

use super::*;
use crate::common::*;

#[tokio::test]
async fn profile_change_updates_member_events() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    let alice_p = format!("{V3}/profile/{}", enc(&alice.user_id));
    let member = format!(
        "{V3}/rooms/{}/state/m.room.member/{}",
        enc(&room),
        enc(&alice.user_id)
    );

    // Nothing set yet: an empty profile, absent fields.
    assert_eq!(n.get(&alice_p, &bob.token).await, (200, json!({})));
    assert_err(
        &n.get(&format!("{alice_p}/displayname"), &bob.token).await,
        404,
        "M_NOT_FOUND",
    );

    let res = n
        .put(
            &format!("{alice_p}/displayname"),
            &alice.token,
            json!({"displayname": "Alice"}),
        )
        .await;
    assert_eq!(res, (200, json!({})));
    let res = n
        .put(
            &format!("{alice_p}/avatar_url"),
            &alice.token,
            json!({"avatar_url": "mxc://example.org/abc"}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    // Profiles are public: no token needed.
    let res = n
        .call(Method::GET, &format!("{alice_p}/displayname"), None, None)
        .await;
    assert_eq!(res, (200, json!({"displayname": "Alice"})));
    let res = n.call(Method::GET, &alice_p, None, None).await;
    assert_eq!(
        res,
        (
            200,
            json!({"displayname": "Alice", "avatar_url": "mxc://example.org/abc"})
        )
    );

    let (status, content) = n.get(&member, &alice.token).await;
    assert_eq!(status, 200, "{content}");
    assert_eq!(
        content,
        json!({"membership": "join", "displayname": "Alice", "avatar_url": "mxc://example.org/abc"})
    );

    // Clearing a field removes it from the member event too.
    let res = n
        .call(
            Method::DELETE,
            &format!("{alice_p}/avatar_url"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_err(
        &n.get(&format!("{alice_p}/avatar_url"), &alice.token).await,
        404,
        "M_NOT_FOUND",
    );
    let (_, content) = n.get(&member, &alice.token).await;
    assert_eq!(content, json!({"membership": "join", "displayname": "Alice"}));
    // The join, then one member event per change: displayname, avatar_url, its removal.
    let member_events: i64 = db(&n)
        .query_row(
            "SELECT count(*) FROM events WHERE room_id = ?1 AND type = 'm.room.member' AND state_key = ?2",
            [&room, &alice.user_id],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(member_events, 4);

    // Errors change nothing.
    let res = n
        .put(
            &format!("{alice_p}/displayname"),
            &bob.token,
            json!({"displayname": "Mallory"}),
        )
        .await;
    assert_err(&res, 403, "M_FORBIDDEN");
    let res = n
        .put(
            &format!("{alice_p}/avatar_url"),
            &alice.token,
            json!({"avatar_url": "https://x/y"}),
        )
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let res = n
        .put(
            &format!("{alice_p}/displayname"),
            &alice.token,
            json!({"other": "x"}),
        )
        .await;
    assert_err(&res, 400, "M_MISSING_PARAM");
    let res = n
        .put(
            &format!("{alice_p}/displayname"),
            &alice.token,
            json!({"displayname": 3}),
        )
        .await;
    assert_err(&res, 400, "M_BAD_JSON");
    let res = n
        .put(
            &format!("{alice_p}/Bad-Key"),
            &alice.token,
            json!({"Bad-Key": "x"}),
        )
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let (_, content) = n.get(&member, &alice.token).await;
    assert_eq!(content, json!({"membership": "join", "displayname": "Alice"}));
    assert_eq!(
        n.get(&alice_p, &alice.token).await,
        (200, json!({"displayname": "Alice"}))
    );

    // Unknown users have no profile.
    let ghost = format!("{V3}/profile/{}", enc(&format!("@ghost:{}", n.server_name())));
    assert_err(&n.get(&ghost, &alice.token).await, 404, "M_NOT_FOUND");
    assert_err(
        &n.get(&format!("{ghost}/displayname"), &alice.token).await,
        404,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn presence() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let path = |u: &User| format!("{V3}/presence/{}/status", enc(&u.user_id));

    // Never set: offline.
    let (status, body) = n.get(&path(&alice), &alice.token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["presence"], "offline");

    let res = n
        .put(
            &path(&alice),
            &alice.token,
            json!({"presence": "unavailable", "status_msg": "lunch"}),
        )
        .await;
    assert_eq!(res, (200, json!({})));
    let (status, body) = n.get(&path(&alice), &alice.token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["presence"], "unavailable");
    assert_eq!(body["status_msg"], "lunch");
    assert_eq!(body["currently_active"], false);
    assert!(body["last_active_ago"].as_i64().is_some_and(|a| a >= 0), "{body}");

    let res = n
        .put(&path(&alice), &alice.token, json!({"presence": "online"}))
        .await;
    assert_eq!(res.0, 200);
    let (_, body) = n.get(&path(&alice), &alice.token).await;
    assert_eq!(body["presence"], "online");
    assert_eq!(body["currently_active"], true);
    assert!(body.get("status_msg").is_none(), "{body}");

    // Errors change nothing.
    assert_err(
        &n.put(&path(&alice), &alice.token, json!({"presence": "busy"}))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &n.put(&path(&alice), &alice.token, json!({})).await,
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &n.put(&path(&alice), &bob.token, json!({"presence": "offline"}))
            .await,
        403,
        "M_FORBIDDEN",
    );
    let (_, body) = n.get(&path(&alice), &alice.token).await;
    assert_eq!(body["presence"], "online");

    // Others see it only when they share a room.
    assert_err(&n.get(&path(&alice), &bob.token).await, 403, "M_FORBIDDEN");
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    n.join(&bob, &room).await;
    let (status, body) = n.get(&path(&alice), &bob.token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["presence"], "online");

    let ghost = format!(
        "{V3}/presence/{}/status",
        enc(&format!("@ghost:{}", n.server_name()))
    );
    assert_err(&n.get(&ghost, &alice.token).await, 404, "M_NOT_FOUND");
}
