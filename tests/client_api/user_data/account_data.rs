//! Account data, global and per room, and room tags.

use reqwest::Method;
use serde_json::{Value, json};

use super::*;
use crate::common::*;

#[tokio::test]
async fn account_data_round_trip() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, json!({})).await;
    let global = account_data_path(&alice, None, "org.example.config");
    let per_room = account_data_path(&alice, Some(&room), "org.example.config");

    assert_err(&n.get(&global, &alice.token).await, 404, "M_NOT_FOUND");
    let res = n.put(&global, &alice.token, json!({"a": 1})).await;
    assert_eq!(res, (200, json!({})));
    assert_eq!(n.get(&global, &alice.token).await, (200, json!({"a": 1})));
    let res = n.put(&global, &alice.token, json!({"b": [2]})).await;
    assert_eq!(res.0, 200);
    assert_eq!(n.get(&global, &alice.token).await, (200, json!({"b": [2]})));

    // No fallback from room to global data, and back.
    assert_err(&n.get(&per_room, &alice.token).await, 404, "M_NOT_FOUND");
    assert_eq!(n.put(&per_room, &alice.token, json!({"room": true})).await.0, 200);
    assert_eq!(n.get(&per_room, &alice.token).await, (200, json!({"room": true})));
    assert_eq!(n.get(&global, &alice.token).await, (200, json!({"b": [2]})));

    // Someone else's: forbidden both ways, and nothing changes.
    for path in [&global, &per_room] {
        assert_err(&n.get(path, &bob.token).await, 403, "M_FORBIDDEN");
        assert_err(
            &n.put(path, &bob.token, json!({"x": 1})).await,
            403,
            "M_FORBIDDEN",
        );
    }
    assert_eq!(n.get(&global, &alice.token).await, (200, json!({"b": [2]})));

    // Server-managed types cannot be set directly.
    for path in [
        account_data_path(&alice, Some(&room), "m.fully_read"),
        account_data_path(&alice, None, "m.push_rules"),
    ] {
        assert_err(&n.put(&path, &alice.token, json!({})).await, 405, "M_BAD_JSON");
    }
    // Bad room IDs and bodies.
    let bad_room = account_data_path(&alice, Some("@notaroom:x"), "org.example.config");
    assert_err(&n.get(&bad_room, &alice.token).await, 400, "M_INVALID_PARAM");
    assert_err(
        &n.put(&bad_room, &alice.token, json!({})).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &n.put(&global, &alice.token, json!([1, 2])).await,
        400,
        "M_BAD_JSON",
    );
    let raw = n
        .http
        .put(format!("{}{global}", n.url))
        .bearer_auth(&alice.token)
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(raw.status().as_u16(), 400);
    let body: Value = raw.json().await.expect("json");
    assert_eq!(body["errcode"], "M_NOT_JSON");
    assert_eq!(n.get(&global, &alice.token).await, (200, json!({"b": [2]})));

    // The r0 alias serves the same data.
    let r0 = global.replacen("/v3/", "/r0/", 1);
    assert_eq!(n.get(&r0, &alice.token).await, (200, json!({"b": [2]})));
}

#[tokio::test]
async fn tags() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, json!({})).await;
    let base = format!("{V3}/user/{}/rooms/{}/tags", enc(&alice.user_id), enc(&room));
    let tag = |t: &str| format!("{base}/{}", enc(t));

    assert_eq!(n.get(&base, &alice.token).await, (200, json!({"tags": {}})));
    assert_eq!(
        n.put(&tag("m.favourite"), &alice.token, json!({"order": 0.25}))
            .await,
        (200, json!({}))
    );
    assert_eq!(n.put(&tag("u.work"), &alice.token, json!({})).await.0, 200);
    let want = json!({"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}});
    assert_eq!(n.get(&base, &alice.token).await, (200, want.clone()));
    // Tags are the room account data m.tag, which /sync delivers.
    let res = n
        .get(&account_data_path(&alice, Some(&room), "m.tag"), &alice.token)
        .await;
    assert_eq!(res, (200, want));

    let res = n
        .call(Method::DELETE, &tag("m.favourite"), Some(&alice.token), None)
        .await;
    assert_eq!(res, (200, json!({})));
    assert_eq!(
        n.get(&base, &alice.token).await,
        (200, json!({"tags": {"u.work": {}}}))
    );
    // Deleting an absent tag is fine.
    let res = n
        .call(Method::DELETE, &tag("m.favourite"), Some(&alice.token), None)
        .await;
    assert_eq!(res.0, 200);

    // Bad input changes nothing.
    assert_err(
        &n.put(&tag("m.lowpriority"), &alice.token, json!({"order": 2}))
            .await,
        400,
        "M_INVALID_PARAM",
    );
    assert_err(
        &n.put(&tag("m.lowpriority"), &alice.token, json!({"order": "x"}))
            .await,
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &n.put(&tag(&"t".repeat(256)), &alice.token, json!({})).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_err(&n.get(&base, &bob.token).await, 403, "M_FORBIDDEN");
    assert_err(
        &n.put(&tag("u.x"), &bob.token, json!({})).await,
        403,
        "M_FORBIDDEN",
    );
    let res = n
        .call(Method::DELETE, &tag("u.work"), Some(&bob.token), None)
        .await;
    assert_err(&res, 403, "M_FORBIDDEN");
    assert_eq!(
        n.get(&base, &alice.token).await,
        (200, json!({"tags": {"u.work": {}}}))
    );
}
