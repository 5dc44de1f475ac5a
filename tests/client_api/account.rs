use reqwest::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn register_login_whoami() {
    let n = TestNode::start().await;
    // Without auth: a UIA challenge offering the dummy stage.
    let (status, body) = n
        .call(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "alice", "password": "pw"})),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["flows"][0]["stages"][0], "m.login.dummy");
    assert!(body["session"].is_string());

    let alice = n.register("alice").await;
    assert_eq!(alice.user_id, format!("@alice:{}", n.server_name()));
    let who = n.get("/_matrix/client/v3/account/whoami", &alice.token).await;
    assert_eq!(who.0, 200);
    assert_eq!(who.1["user_id"], alice.user_id);
    assert_eq!(who.1["device_id"], alice.device_id);

    // Login by localpart and by full MXID.
    for user in ["alice", alice.user_id.as_str()] {
        let (status, body) = n
            .call(
                Method::POST,
                "/_matrix/client/v3/login",
                None,
                Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": "pw-alice"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user_id"], alice.user_id);
        assert!(
            body["access_token"].as_str().unwrap().len() >= 43,
            "token has at least 256 bits"
        );
    }
    let bad = n
        .call(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "nope"})),
        )
        .await;
    assert_err(&bad, 403, "M_FORBIDDEN");
}

#[tokio::test]
async fn token_errors() {
    let n = TestNode::start().await;
    let res = n
        .call(Method::GET, "/_matrix/client/v3/account/whoami", None, None)
        .await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
    let res = n.get("/_matrix/client/v3/account/whoami", "bogus").await;
    assert_err(&res, 401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn create_room_smoke() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n
        .create_room(
            &alice,
            json!({"name": "Test", "topic": "t", "preset": "public_chat", "room_alias_name": "test"}),
        )
        .await;
    assert!(room.starts_with('!'));
    let again = n
        .post(
            "/_matrix/client/v3/createRoom",
            &alice.token,
            json!({"room_alias_name": "test"}),
        )
        .await;
    assert_err(&again, 400, "M_ROOM_IN_USE");
    for v in ["10", "11"] {
        n.create_room(&alice, json!({"room_version": v, "name": "old"}))
            .await;
    }
    let bad = n
        .post(
            "/_matrix/client/v3/createRoom",
            &alice.token,
            json!({"room_version": "999"}),
        )
        .await;
    assert_err(&bad, 400, "M_UNSUPPORTED_ROOM_VERSION");
}
