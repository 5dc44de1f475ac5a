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

async fn login(n: &TestNode, user: &str, password: &str) -> (u16, serde_json::Value) {
    n.call(
        Method::POST,
        "/_matrix/client/v3/login",
        None,
        Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password})),
    )
    .await
}

#[tokio::test]
async fn registration_errors_change_nothing() {
    let n = TestNode::start().await;
    n.register("alice").await;
    let dup = n
        .call(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "alice", "password": "x", "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_err(&dup, 400, "M_USER_IN_USE");
    for bad in ["Alice", "al ice", "al:ice", ""] {
        let res = n
            .call(
                Method::POST,
                "/_matrix/client/v3/register",
                None,
                Some(json!({"username": bad, "password": "x", "auth": {"type": "m.login.dummy"}})),
            )
            .await;
        assert_err(&res, 400, "M_INVALID_USERNAME");
    }
    let avail = n
        .call(
            Method::GET,
            "/_matrix/client/v3/register/available?username=bob",
            None,
            None,
        )
        .await;
    assert_eq!(avail, (200, json!({"available": true})));
    let taken = n
        .call(
            Method::GET,
            "/_matrix/client/v3/register/available?username=alice",
            None,
            None,
        )
        .await;
    assert_err(&taken, 400, "M_USER_IN_USE");
    // The r0 alias serves the same endpoint.
    let r0 = n
        .call(
            Method::GET,
            "/_matrix/client/r0/register/available?username=bob",
            None,
            None,
        )
        .await;
    assert_eq!(r0.0, 200);
    // Bad JSON and non-JSON bodies.
    let res = n
        .http
        .post(format!("{}/_matrix/client/v3/register", n.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["errcode"], "M_NOT_JSON");
    let res = n
        .call(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": 5})),
        )
        .await;
    assert_err(&res, 400, "M_BAD_JSON");
    // Nothing was created by the failures.
    let avail = n
        .call(
            Method::GET,
            "/_matrix/client/v3/register/available?username=bob",
            None,
            None,
        )
        .await;
    assert_eq!(avail.0, 200);
}

#[tokio::test]
async fn registration_token_required_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = meshserver::config::Config::for_data_dir(dir.path());
    config.registration_open = false;
    config.registration_token = Some("sesame".into());
    let node = meshserver::node::Node::start(config).await.unwrap();
    let n = TestNode {
        url: node.client_url(),
        node: Some(node),
        dir,
        http: reqwest::Client::new(),
    };
    let res = n
        .call(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "a", "password": "p"})),
        )
        .await;
    assert_eq!(res.0, 401);
    assert_eq!(res.1["flows"][0]["stages"][0], "m.login.registration_token");
    let res = n
        .call(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "a", "password": "p", "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_eq!(res.0, 401, "dummy stage is not enough: {:?}", res);
    let res = n
        .call(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "a", "password": "p", "auth": {"type": "m.login.registration_token", "token": "wrong"}})),
        )
        .await;
    assert_eq!(res.0, 401);
    assert_eq!(res.1["errcode"], "M_FORBIDDEN");
    let res = n
        .call(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "a", "password": "p", "auth": {"type": "m.login.registration_token", "token": "sesame"}})),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
}

#[tokio::test]
async fn password_guessing_is_rate_limited() {
    let n = TestNode::start().await;
    n.register("alice").await;
    let mut limited = None;
    for _ in 0..30 {
        let res = login(&n, "alice", "wrong").await;
        if res.0 == 429 {
            limited = Some(res);
            break;
        }
        assert_err(&res, 403, "M_FORBIDDEN");
    }
    let res = limited.expect("30 rapid failures hit the limit");
    assert_err(&res, 429, "M_LIMIT_EXCEEDED");
    assert!(res.1["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
}

#[tokio::test]
async fn devices_logout_and_password() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let (_, second) = login(&n, "alice", "pw-alice").await;
    let second_token = second["access_token"].as_str().unwrap().to_owned();
    let second_device = second["device_id"].as_str().unwrap().to_owned();

    let (s, list) = n.get("/_matrix/client/v3/devices", &alice.token).await;
    assert_eq!(s, 200);
    assert_eq!(list["devices"].as_array().unwrap().len(), 2);

    let path = format!("/_matrix/client/v3/devices/{second_device}");
    assert_eq!(
        n.put(&path, &alice.token, json!({"display_name": "phone"}))
            .await
            .0,
        200
    );
    let (s, dev) = n.get(&path, &alice.token).await;
    assert_eq!((s, dev["display_name"].clone()), (200, json!("phone")));
    assert_err(
        &n.get("/_matrix/client/v3/devices/NOPE", &alice.token).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &n.put("/_matrix/client/v3/devices/NOPE", &alice.token, json!({}))
            .await,
        404,
        "M_NOT_FOUND",
    );

    // Deleting a device needs User-Interactive Auth by password.
    let res = n
        .call(Method::DELETE, &path, Some(&alice.token), Some(json!({})))
        .await;
    assert_eq!(res.0, 401);
    assert_eq!(res.1["flows"][0]["stages"][0], "m.login.password");
    let session = res.1["session"].as_str().unwrap().to_owned();
    let wrong = json!({"auth": {"type": "m.login.password", "session": session, "password": "bad",
        "identifier": {"type": "m.id.user", "user": "alice"}}});
    let res = n
        .call(Method::DELETE, &path, Some(&alice.token), Some(wrong))
        .await;
    assert_eq!(res.0, 401);
    assert_eq!(res.1["errcode"], "M_FORBIDDEN");
    let right = json!({"auth": {"type": "m.login.password", "session": session, "password": "pw-alice",
        "identifier": {"type": "m.id.user", "user": "alice"}}});
    assert_eq!(
        n.call(Method::DELETE, &path, Some(&alice.token), Some(right))
            .await
            .0,
        200
    );
    assert_err(
        &n.get("/_matrix/client/v3/account/whoami", &second_token).await,
        401,
        "M_UNKNOWN_TOKEN",
    );

    // Password change logs out the other devices by default.
    let (_, third) = login(&n, "alice", "pw-alice").await;
    let third_token = third["access_token"].as_str().unwrap().to_owned();
    let change = json!({"new_password": "new-pw", "auth": {"type": "m.login.password", "password": "pw-alice",
        "identifier": {"type": "m.id.user", "user": "alice"}}});
    assert_eq!(
        n.post("/_matrix/client/v3/account/password", &alice.token, change)
            .await
            .0,
        200
    );
    assert_err(
        &n.get("/_matrix/client/v3/account/whoami", &third_token).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    assert_eq!(
        n.get("/_matrix/client/v3/account/whoami", &alice.token).await.0,
        200
    );
    assert_err(&login(&n, "alice", "pw-alice").await, 403, "M_FORBIDDEN");
    assert_eq!(login(&n, "alice", "new-pw").await.0, 200);

    // logout ends this token; logout/all ends every token.
    assert_eq!(
        n.post("/_matrix/client/v3/logout", &alice.token, json!({}))
            .await
            .0,
        200
    );
    assert_err(
        &n.get("/_matrix/client/v3/account/whoami", &alice.token).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    let (_, a) = login(&n, "alice", "new-pw").await;
    let (_, b) = login(&n, "alice", "new-pw").await;
    let (ta, tb) = (
        a["access_token"].as_str().unwrap(),
        b["access_token"].as_str().unwrap(),
    );
    assert_eq!(
        n.post("/_matrix/client/v3/logout/all", ta, json!({})).await.0,
        200
    );
    assert_err(
        &n.get("/_matrix/client/v3/account/whoami", tb).await,
        401,
        "M_UNKNOWN_TOKEN",
    );
}

#[tokio::test]
async fn discovery_and_unknown_endpoints() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let (s, v) = n.call(Method::GET, "/_matrix/client/versions", None, None).await;
    assert_eq!(s, 200);
    assert!(v["versions"].as_array().unwrap().iter().any(|x| x == "v1.11"));
    let (s, wk) = n
        .call(Method::GET, "/.well-known/matrix/client", None, None)
        .await;
    assert_eq!(s, 200);
    assert!(wk["m.homeserver"]["base_url"].is_string());
    let (s, caps) = n.get("/_matrix/client/v3/capabilities", &alice.token).await;
    assert_eq!(s, 200);
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "12");
    let (s, rules) = n.get("/_matrix/client/v3/pushrules/", &alice.token).await;
    assert_eq!(s, 200);
    let overrides = rules["global"]["override"].as_array().expect("override rules");
    assert!(overrides.iter().any(|r| r["rule_id"] == ".m.rule.master"));
    assert_eq!(
        n.get("/_matrix/client/v3/pushers", &alice.token).await,
        (200, json!({"pushers": []}))
    );
    let (s, info) = n.call(Method::GET, "/_meshserver/v1/node", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(info["server_name"], n.server_name());
    assert!(info["version"].is_string() && info["client_url"].is_string());
    let res = n.get("/_matrix/client/v3/no/such/thing", &alice.token).await;
    assert_err(&res, 404, "M_UNRECOGNIZED");
    let res = n
        .call(
            Method::DELETE,
            "/_matrix/client/v3/account/whoami",
            Some(&alice.token),
            None,
        )
        .await;
    assert_err(&res, 405, "M_UNRECOGNIZED");
}
