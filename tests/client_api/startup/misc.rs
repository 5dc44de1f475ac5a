//! Endpoints that answer simply: profiles of unknown users, TURN, notifications, 3PIDs.

use reqwest::Method;
use serde_json::json;

use super::V3;
use crate::common::*;

#[tokio::test]
async fn profile_of_unknown_user_is_not_found() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let known = format!("{V3}/profile/{}", enc(&alice.user_id));
    assert_eq!(n.get(&known, &alice.token).await.0, 200);
    let unknown = format!("@nobody:{}", n.server_name());
    let res = n
        .get(&format!("{V3}/profile/{}", enc(&unknown)), &alice.token)
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");
}

#[tokio::test]
async fn turn_server_is_an_empty_object() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let path = format!("{V3}/voip/turnServer");
    assert_eq!(n.get(&path, &alice.token).await, (200, json!({})));
    assert_err(
        &n.call(Method::GET, &path, None, None).await,
        401,
        "M_MISSING_TOKEN",
    );
    assert_err(&n.get(&path, "bogus").await, 401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn notifications_are_empty() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let path = format!("{V3}/notifications");
    let empty = (200, json!({"notifications": []}));
    assert_eq!(n.get(&path, &alice.token).await, empty);
    assert_eq!(
        n.get(&format!("{path}?limit=5&only=highlight&from=x"), &alice.token)
            .await,
        empty
    );
    for bad in ["limit=0", "limit=-3", "limit=many"] {
        let res = n.get(&format!("{path}?{bad}"), &alice.token).await;
        assert_err(&res, 400, "M_INVALID_PARAM");
    }
    assert_err(
        &n.call(Method::GET, &path, None, None).await,
        401,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn third_party_identifiers_are_empty_and_cannot_change() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let list = format!("{V3}/account/3pid");
    let empty = (200, json!({"threepids": []}));
    assert_eq!(n.get(&list, &alice.token).await, empty);
    assert_err(
        &n.call(Method::GET, &list, None, None).await,
        401,
        "M_MISSING_TOKEN",
    );

    let post = |path: &str, body| {
        let path = format!("{V3}/account/3pid{path}");
        let token = alice.token.clone();
        let n = &n;
        async move { n.post(&path, &token, body).await }
    };
    let creds = json!({"client_secret": "s", "id_server": "id.example", "id_access_token": "t", "sid": "1"});
    assert_err(
        &post("", json!({"three_pid_creds": creds})).await,
        403,
        "M_THREEPID_AUTH_FAILED",
    );
    assert_err(&post("", json!({})).await, 400, "M_BAD_JSON");
    assert_err(
        &post("/add", json!({"client_secret": "s", "sid": "1"})).await,
        403,
        "M_THREEPID_DENIED",
    );
    assert_err(&post("/add", json!({"sid": "1"})).await, 400, "M_BAD_JSON");
    assert_err(&post("/bind", creds.clone()).await, 400, "M_SERVER_NOT_TRUSTED");
    assert_err(&post("/bind", json!({"sid": "1"})).await, 400, "M_BAD_JSON");
    let email = json!({"medium": "email", "address": "a@example.org"});
    assert_err(&post("/delete", email.clone()).await, 400, "M_THREEPID_NOT_FOUND");
    assert_eq!(
        post("/unbind", email).await,
        (200, json!({"id_server_unbind_result": "no-support"}))
    );
    let fax = json!({"medium": "fax", "address": "1"});
    assert_err(&post("/delete", fax.clone()).await, 400, "M_INVALID_PARAM");
    assert_err(&post("/unbind", fax).await, 400, "M_INVALID_PARAM");
    let email_token = json!({"client_secret": "s", "email": "a@example.org", "send_attempt": 1});
    assert_err(
        &post("/email/requestToken", email_token).await,
        400,
        "M_THREEPID_MEDIUM_NOT_SUPPORTED",
    );
    let sms_token = json!({"client_secret": "s", "country": "GB", "phone_number": "1", "send_attempt": 1});
    assert_err(
        &post("/msisdn/requestToken", sms_token).await,
        400,
        "M_THREEPID_MEDIUM_NOT_SUPPORTED",
    );
    assert_err(&post("/email/requestToken", json!({})).await, 400, "M_BAD_JSON");
    let res = n
        .call(
            Method::POST,
            &format!("{list}/add"),
            None,
            Some(json!({"client_secret": "s", "sid": "1"})),
        )
        .await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
    assert_eq!(n.get(&list, &alice.token).await, empty);
}
