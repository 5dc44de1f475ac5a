//! Server-side key backup: `/room_keys/version` and `/room_keys/keys`.

use serde_json::{Value, json};

use super::*;

const ALG: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

async fn create_version(n: &TestNode, u: &User, public_key: &str) -> String {
    let res = n
        .post(
            &v3("room_keys/version"),
            &u.token,
            json!({"algorithm": ALG, "auth_data": {"public_key": public_key}}),
        )
        .await;
    assert_eq!(res.0, 200, "create version: {:?}", res);
    res.1["version"].as_str().expect("version").to_owned()
}

fn key_data(first_message_index: u64, forwarded_count: u64, is_verified: bool, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": {"ephemeral": "eph", "ciphertext": tag, "mac": "mac"},
    })
}

async fn delete(n: &TestNode, u: &User, path: String) -> (u16, Value) {
    n.call(reqwest::Method::DELETE, &path, Some(&u.token), None).await
}

fn ok(res: (u16, Value)) -> Value {
    assert_eq!(res.0, 200, "{:?}", res);
    res.1
}

#[tokio::test]
async fn backup_version_lifecycle() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let latest = v3("room_keys/version");
    assert_err(&n.get(&latest, &alice.token).await, 404, "M_NOT_FOUND");

    let v1 = create_version(&n, &alice, "pk1").await;
    assert_eq!(v1, "1");
    let got = ok(n.get(&latest, &alice.token).await);
    assert_eq!(got["algorithm"], ALG);
    assert_eq!(got["auth_data"], json!({"public_key": "pk1"}));
    assert_eq!(got["count"], 0);
    assert!(got["etag"].is_string(), "{got}");
    assert_eq!(got["version"], "1");
    assert_eq!(ok(n.get(&v3("room_keys/version/1"), &alice.token).await), got);
    // Backups are per user.
    assert_err(&n.get(&latest, &bob.token).await, 404, "M_NOT_FOUND");
    assert_err(
        &n.get(&v3("room_keys/version/1"), &bob.token).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &n.get(&v3("room_keys/version/99"), &alice.token).await,
        404,
        "M_NOT_FOUND",
    );
    assert_err(
        &n.get(&v3("room_keys/version/abc"), &alice.token).await,
        404,
        "M_NOT_FOUND",
    );

    // Update: only auth_data changes; algorithm and version must match.
    let path = v3("room_keys/version/1");
    let res = n
        .put(
            &path,
            &alice.token,
            json!({"algorithm": "other", "auth_data": {}}),
        )
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let res = n
        .put(
            &path,
            &alice.token,
            json!({"algorithm": ALG, "auth_data": {}, "version": "2"}),
        )
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let res = n
        .put(
            &v3("room_keys/version/7"),
            &alice.token,
            json!({"algorithm": ALG, "auth_data": {}}),
        )
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");
    let res = n
        .put(
            &path,
            &alice.token,
            json!({"algorithm": ALG, "auth_data": {"public_key": "pk1b"}, "version": "1"}),
        )
        .await;
    assert_eq!(ok(res), json!({}));
    assert_eq!(
        ok(n.get(&path, &alice.token).await)["auth_data"]["public_key"],
        "pk1b"
    );
    let res = n.post(&latest, &alice.token, json!({"algorithm": ALG})).await;
    assert_err(&res, 400, "M_BAD_JSON");

    // A newer version becomes the latest; deleting it is idempotent and reveals the older.
    assert_eq!(create_version(&n, &alice, "pk2").await, "2");
    assert_eq!(ok(n.get(&latest, &alice.token).await)["version"], "2");
    let del = |v: &str| delete(&n, &alice, v3(&format!("room_keys/version/{v}")));
    assert_eq!(ok(del("2").await), json!({}));
    assert_eq!(ok(del("2").await), json!({}));
    assert_err(&del("99").await, 404, "M_NOT_FOUND");
    assert_err(
        &n.get(&v3("room_keys/version/2"), &alice.token).await,
        404,
        "M_NOT_FOUND",
    );
    assert_eq!(ok(n.get(&latest, &alice.token).await)["version"], "1");
    // Version numbers are never reused.
    assert_eq!(create_version(&n, &alice, "pk3").await, "3");
}

#[tokio::test]
async fn backup_keys_put_get_delete() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let v = create_version(&n, &alice, "pk").await;
    let room = format!("!room:{}", n.server_name());
    let session = |sid: &str| v3(&format!("room_keys/keys/{}/{sid}?version={v}", enc(&room)));
    let etag_of = |r: &Value| r["etag"].as_str().expect("etag").to_owned();

    let first = key_data(5, 1, false, "first");
    let res = ok(n.put(&session("s1"), &alice.token, first.clone()).await);
    assert_eq!(res["count"], 1);
    let etag1 = etag_of(&res);
    assert_eq!(ok(n.get(&session("s1"), &alice.token).await), first);
    let got = ok(n.get(&v3(&format!("room_keys/version/{v}")), &alice.token).await);
    assert_eq!((got["count"].clone(), etag_of(&got)), (json!(1), etag1.clone()));

    // A worse key (later first message, more forwards) does not replace it, nor change the etag.
    for worse in [key_data(6, 0, false, "worse"), key_data(5, 2, false, "worse")] {
        let res = ok(n.put(&session("s1"), &alice.token, worse).await);
        assert_eq!((res["count"].clone(), etag_of(&res)), (json!(1), etag1.clone()));
    }
    assert_eq!(ok(n.get(&session("s1"), &alice.token).await), first);
    // A verified key wins even with a later first message.
    let verified = key_data(9, 3, true, "verified");
    let res = ok(n.put(&session("s1"), &alice.token, verified.clone()).await);
    let etag2 = etag_of(&res);
    assert_ne!(etag2, etag1);
    assert_eq!(ok(n.get(&session("s1"), &alice.token).await), verified);

    // Whole-room and whole-backup uploads.
    let other_room = format!("!other:{}", n.server_name());
    let res = n
        .put(
            &v3(&format!("room_keys/keys/{}?version={v}", enc(&room))),
            &alice.token,
            json!({"sessions": {"s2": key_data(0, 0, false, "s2")}}),
        )
        .await;
    assert_eq!(ok(res)["count"], 2);
    let res = n
        .put(
            &v3(&format!("room_keys/keys?version={v}")),
            &alice.token,
            json!({"rooms": {other_room.clone(): {"sessions": {"s3": key_data(0, 0, false, "s3")}}}}),
        )
        .await;
    assert_eq!(ok(res)["count"], 3);
    let all = ok(n
        .get(&v3(&format!("room_keys/keys?version={v}")), &alice.token)
        .await);
    assert_eq!(
        all,
        json!({"rooms": {
            room.clone(): {"sessions": {"s1": verified, "s2": key_data(0, 0, false, "s2")}},
            other_room.clone(): {"sessions": {"s3": key_data(0, 0, false, "s3")}},
        }})
    );
    let one_room = ok(n
        .get(
            &v3(&format!("room_keys/keys/{}?version={v}", enc(&other_room))),
            &alice.token,
        )
        .await);
    assert_eq!(one_room, json!({"sessions": {"s3": key_data(0, 0, false, "s3")}}));
    let empty_room = format!("!empty:{}", n.server_name());
    let res = n
        .get(
            &v3(&format!("room_keys/keys/{}?version={v}", enc(&empty_room))),
            &alice.token,
        )
        .await;
    assert_eq!(ok(res), json!({"sessions": {}}));
    assert_err(&n.get(&session("nope"), &alice.token).await, 404, "M_NOT_FOUND");

    // Errors: no version, an unknown one, an old one, a bad room ID, a bad key.
    let no_version = v3(&format!("room_keys/keys/{}/s1", enc(&room)));
    assert_err(&n.get(&no_version, &alice.token).await, 400, "M_MISSING_PARAM");
    assert_err(
        &n.put(&no_version, &alice.token, first.clone()).await,
        400,
        "M_MISSING_PARAM",
    );
    let at = |version: &str| v3(&format!("room_keys/keys/{}/s1?version={version}", enc(&room)));
    assert_err(
        &n.put(&at("99"), &alice.token, first.clone()).await,
        404,
        "M_NOT_FOUND",
    );
    let v2 = create_version(&n, &alice, "pk2").await;
    let res = n.put(&at(&v), &alice.token, first.clone()).await;
    assert_err(&res, 403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(res.1["current_version"], v2);
    let res = n
        .put(
            &v3(&format!("room_keys/keys/not-a-room/s1?version={v2}")),
            &alice.token,
            first.clone(),
        )
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let res = n
        .put(&at(&v2), &alice.token, json!({"first_message_index": 1}))
        .await;
    assert_err(&res, 400, "M_BAD_JSON");
    assert_eq!(
        ok(n.get(&v3(&format!("room_keys/version/{v2}")), &alice.token).await)["count"],
        0
    );
    // The old version can still be read, and emptied.
    assert_eq!(ok(n.get(&at(&v), &alice.token).await), verified);

    let delete = |path: String| delete(&n, &alice, path);
    let res = ok(delete(session("s1")).await);
    assert_eq!(res["count"], 2);
    let etag3 = etag_of(&res);
    assert_ne!(etag3, etag2);
    let res = ok(delete(session("s1")).await);
    assert_eq!((res["count"].clone(), etag_of(&res)), (json!(2), etag3));
    let res = ok(delete(v3(&format!("room_keys/keys/{}?version={v}", enc(&room)))).await);
    assert_eq!(res["count"], 1);
    let res = ok(delete(v3(&format!("room_keys/keys?version={v}"))).await);
    assert_eq!(res["count"], 0);
    let all = ok(n
        .get(&v3(&format!("room_keys/keys?version={v}")), &alice.token)
        .await);
    assert_eq!(all, json!({"rooms": {}}));
    assert_err(&delete(v3("room_keys/keys?version=99")).await, 404, "M_NOT_FOUND");
}
