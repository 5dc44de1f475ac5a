//! `/keys/upload`, `/keys/query`, `/keys/claim`, `/keys/changes`.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::*;

#[tokio::test]
async fn upload_query_round_trip() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let dev = Key::generate();
    let keys = device_keys(&alice, &dev);

    let res = upload(&n, &alice, json!({"device_keys": keys})).await;
    assert_eq!(res, json!({"one_time_key_counts": {"signed_curve25519": 0}}));
    let otks = json!({
        "signed_curve25519:AAAAAQ": one_time_key(&alice, &dev, false),
        "signed_curve25519:AAAAAg": one_time_key(&alice, &dev, false),
    });
    let res = upload(&n, &alice, json!({"one_time_keys": otks})).await;
    assert_eq!(res["one_time_key_counts"]["signed_curve25519"], 2);
    // The same one-time keys again (a retried request) are fine and add nothing.
    let res = upload(&n, &alice, json!({"one_time_keys": otks})).await;
    assert_eq!(res["one_time_key_counts"]["signed_curve25519"], 2);

    let res = n
        .put(
            &v3(&format!("devices/{}", alice.device_id)),
            &alice.token,
            json!({"display_name": "Alice's phone"}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);

    let got = query(&n, &bob, &alice).await;
    let mut expected = keys.clone();
    expected["unsigned"] = json!({"device_display_name": "Alice's phone"});
    assert_eq!(
        got["device_keys"][&alice.user_id],
        json!({ alice.device_id.clone(): expected })
    );
    assert_eq!(got["master_keys"], json!({}));

    // Bob has no keys: present, but empty. Unknown users are absent; so are devices not asked for.
    let unknown = format!("@nobody:{}", n.server_name());
    let res = n
        .post(
            &v3("keys/query"),
            &bob.token,
            json!({"device_keys": {bob.user_id.clone(): [], unknown.clone(): [], alice.user_id.clone(): ["OTHER"]}}),
        )
        .await;
    assert_eq!(res.0, 200);
    assert_eq!(res.1["device_keys"][&bob.user_id], json!({}));
    assert_eq!(res.1["device_keys"][&alice.user_id], json!({}));
    assert!(res.1["device_keys"].get(&unknown).is_none(), "{}", res.1);

    // Changed device keys replace the old ones.
    let dev2 = Key::generate();
    upload(&n, &alice, json!({"device_keys": device_keys(&alice, &dev2)})).await;
    let got = query(&n, &bob, &alice).await;
    assert_eq!(
        got["device_keys"][&alice.user_id][&alice.device_id]["keys"][format!("ed25519:{}", alice.device_id)],
        dev2.public()
    );
}

#[tokio::test]
async fn upload_rejects_bad_input_and_changes_nothing() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let dev = Key::generate();
    upload(
        &n,
        &alice,
        json!({"one_time_keys": {"signed_curve25519:K1": one_time_key(&alice, &dev, false)}}),
    )
    .await;

    // Device keys naming another user or device.
    let mut other_user = device_keys(&alice, &dev);
    other_user["user_id"] = json!(bob.user_id);
    let mut other_device = device_keys(&alice, &dev);
    other_device["device_id"] = json!("SOMEONEELSE");
    for keys in [other_user, other_device] {
        let res = n
            .post(&v3("keys/upload"), &alice.token, json!({"device_keys": keys}))
            .await;
        assert_err(&res, 400, "M_INVALID_PARAM");
    }
    let mut no_keys = device_keys(&alice, &dev);
    no_keys.as_object_mut().unwrap().remove("keys");
    let res = n
        .post(&v3("keys/upload"), &alice.token, json!({"device_keys": no_keys}))
        .await;
    assert_err(&res, 400, "M_BAD_JSON");

    // The same one-time key ID with different content, alongside an otherwise valid
    // upload: all of it is refused.
    let res = n
        .post(
            &v3("keys/upload"),
            &alice.token,
            json!({
                "device_keys": device_keys(&alice, &dev),
                "one_time_keys": {
                    "signed_curve25519:K1": one_time_key(&alice, &dev, false),
                    "signed_curve25519:K2": one_time_key(&alice, &dev, false),
                },
            }),
        )
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let res = n
        .post(
            &v3("keys/upload"),
            &alice.token,
            json!({"one_time_keys": {"nocolon": "abc"}}),
        )
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let two_fallbacks = json!({"fallback_keys": {
        "signed_curve25519:F1": one_time_key(&alice, &dev, true),
        "signed_curve25519:F2": one_time_key(&alice, &dev, true),
    }});
    let res = n.post(&v3("keys/upload"), &alice.token, two_fallbacks).await;
    assert_err(&res, 400, "M_INVALID_PARAM");

    let res = upload(&n, &alice, json!({})).await;
    assert_eq!(res["one_time_key_counts"], json!({"signed_curve25519": 1}));
    assert_eq!(
        query(&n, &bob, &alice).await["device_keys"][&alice.user_id],
        json!({})
    );

    let res = n
        .post(
            &v3("keys/query"),
            &bob.token,
            json!({"device_keys": {"not-a-user": []}}),
        )
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let res = n.post(&v3("keys/query"), &bob.token, json!({})).await;
    assert_err(&res, 400, "M_BAD_JSON");
    let res = n.post(&v3("keys/claim"), &bob.token, json!({})).await;
    assert_err(&res, 400, "M_BAD_JSON");
    let res = n
        .call(reqwest::Method::POST, &v3("keys/upload"), None, Some(json!({})))
        .await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
}

async fn claim(n: &TestNode, by: &User, of: &User) -> Value {
    let res = n
        .post(
            &v3("keys/claim"),
            &by.token,
            json!({"one_time_keys": {of.user_id.clone(): {of.device_id.clone(): "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(res.0, 200, "claim: {:?}", res);
    assert_eq!(res.1["failures"], json!({}));
    res.1["one_time_keys"].clone()
}

#[tokio::test]
async fn claim_returns_one_time_key_once_then_fallback() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let dev = Key::generate();
    let otk = one_time_key(&alice, &dev, false);
    let fallback = one_time_key(&alice, &dev, true);
    // Fallback keys under their pre-1.2 unstable name.
    upload(
        &n,
        &alice,
        json!({
            "device_keys": device_keys(&alice, &dev),
            "one_time_keys": {"signed_curve25519:OTK1": otk},
            "org.matrix.msc2732.fallback_keys": {"signed_curve25519:FB1": fallback},
        }),
    )
    .await;

    let first = claim(&n, &bob, &alice).await;
    assert_eq!(
        first,
        json!({ alice.user_id.clone(): { alice.device_id.clone(): {"signed_curve25519:OTK1": otk} } })
    );
    let res = upload(&n, &alice, json!({})).await;
    assert_eq!(res["one_time_key_counts"]["signed_curve25519"], 0);
    // Then the fallback key, which is not used up.
    for _ in 0..2 {
        let next = claim(&n, &bob, &alice).await;
        assert_eq!(
            next,
            json!({ alice.user_id.clone(): { alice.device_id.clone(): {"signed_curve25519:FB1": fallback} } })
        );
    }
    // Unknown devices and algorithms nobody uploaded are absent.
    let res = n
        .post(
            &v3("keys/claim"),
            &bob.token,
            json!({"one_time_keys": {alice.user_id.clone(): {"NODEVICE": "signed_curve25519", alice.device_id.clone(): "other_alg"}}}),
        )
        .await;
    assert_eq!(res.0, 200);
    assert_eq!(res.1["one_time_keys"], json!({}));
}

#[tokio::test]
async fn concurrent_claims_never_return_the_same_key() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let dev = Key::generate();
    let mut otks = serde_json::Map::new();
    for i in 0..5 {
        otks.insert(
            format!("signed_curve25519:K{i}"),
            one_time_key(&alice, &dev, false),
        );
    }
    upload(&n, &alice, json!({"one_time_keys": otks})).await;

    let c = || claim(&n, &bob, &alice);
    let results = tokio::join!(c(), c(), c(), c(), c(), c(), c(), c(), c(), c());
    let results = [
        results.0, results.1, results.2, results.3, results.4, results.5, results.6, results.7, results.8,
        results.9,
    ];
    let mut ids = Vec::new();
    for r in &results {
        if let Some(keys) = r[&alice.user_id][&alice.device_id].as_object() {
            ids.extend(keys.keys().cloned());
        }
    }
    let unique: BTreeSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), 5, "exactly the five keys were handed out: {results:?}");
    assert_eq!(unique, otks.keys().cloned().collect::<BTreeSet<_>>());
}

async fn changes(n: &TestNode, u: &User, from: String, to: String) -> Value {
    let res = n
        .get(&v3(&format!("keys/changes?from={from}&to={to}")), &u.token)
        .await;
    assert_eq!(res.0, 200, "keys/changes: {:?}", res);
    res.1
}

#[tokio::test]
async fn changes_lists_users_sharing_a_room() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = share_room(&n, &alice, &bob).await;
    let from = sync_token(&n, &bob).await;

    upload(
        &n,
        &alice,
        json!({"device_keys": device_keys(&alice, &Key::generate())}),
    )
    .await;
    // Carol shares no room with Bob: her change is none of his business.
    upload(
        &n,
        &carol,
        json!({"device_keys": device_keys(&carol, &Key::generate())}),
    )
    .await;
    let to = sync_token(&n, &bob).await;
    let changes = |from: String, to: String| changes(&n, &bob, from, to);
    assert_eq!(
        changes(from.clone(), to.clone()).await,
        json!({"changed": [alice.user_id], "left": []})
    );
    assert_eq!(
        changes(to.clone(), to.clone()).await,
        json!({"changed": [], "left": []})
    );

    // A new login and its deletion both count as changes once it has keys.
    let res = n
        .call(
            reqwest::Method::POST,
            &v3("login"),
            None,
            Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw-alice"})),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let second = User {
        user_id: alice.user_id.clone(),
        token: res.1["access_token"].as_str().unwrap().to_owned(),
        device_id: res.1["device_id"].as_str().unwrap().to_owned(),
    };
    upload(
        &n,
        &second,
        json!({"device_keys": device_keys(&second, &Key::generate())}),
    )
    .await;
    let before_logout = sync_token(&n, &bob).await;
    let res = n.post(&v3("logout"), &second.token, json!({})).await;
    assert_eq!(res.0, 200);
    let after_logout = sync_token(&n, &bob).await;
    assert_eq!(
        changes(before_logout, after_logout.clone()).await["changed"],
        json!([alice.user_id])
    );
    assert!(
        query(&n, &bob, &alice).await["device_keys"][&alice.user_id]
            .get(&second.device_id)
            .is_none()
    );

    // Alice leaves the only room they shared.
    let res = n
        .post(
            &v3(&format!("rooms/{}/leave", enc(&room))),
            &alice.token,
            json!({}),
        )
        .await;
    assert_eq!(res.0, 200);
    let end = sync_token(&n, &bob).await;
    assert_eq!(
        changes(after_logout, end.clone()).await,
        json!({"changed": [], "left": [alice.user_id]})
    );

    // Joining a room with Carol makes her "changed" (Bob may hold a stale list of her
    // devices); Bob leaving it makes her "left".
    let with_carol = share_room(&n, &carol, &bob).await;
    let joined = sync_token(&n, &bob).await;
    assert_eq!(
        changes(end, joined.clone()).await,
        json!({"changed": [carol.user_id], "left": []})
    );
    let res = n
        .post(
            &v3(&format!("rooms/{}/leave", enc(&with_carol))),
            &bob.token,
            json!({}),
        )
        .await;
    assert_eq!(res.0, 200);
    let gone = sync_token(&n, &bob).await;
    assert_eq!(
        changes(joined, gone).await,
        json!({"changed": [], "left": [carol.user_id]})
    );

    let res = n.get(&v3(&format!("keys/changes?to={to}")), &bob.token).await;
    assert_err(&res, 400, "M_MISSING_PARAM");
    let res = n.get(&v3("keys/changes?from=garbage&to=s1"), &bob.token).await;
    assert_err(&res, 400, "M_INVALID_PARAM");
}
