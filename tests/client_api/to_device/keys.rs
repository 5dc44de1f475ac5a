//! The key-related parts of `/sync`: `device_lists`, one-time key counts, unused fallback
//! key types, and what deleting a device shows.

use serde_json::{Value, json};

use super::*;

#[tokio::test]
async fn device_lists_changed_after_a_key_upload() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    shared_room(&n, &alice, &bob).await;
    let initial = n.sync(&bob, None).await;
    assert!(
        user_list(&initial, "changed").is_empty(),
        "only incremental syncs list changes"
    );
    let t0 = next_batch(&initial);
    let alice_t0 = next_batch(&n.sync(&alice, None).await);

    upload_keys(&n, &alice, json!({"device_keys": device_keys(&alice, "key-a")})).await;
    upload_keys(&n, &carol, json!({"device_keys": device_keys(&carol, "key-c")})).await;

    let body = n.sync(&bob, Some(&t0)).await;
    assert_eq!(
        user_list(&body, "changed"),
        [alice.user_id.as_str()],
        "not carol: no shared room"
    );
    assert!(user_list(&body, "left").is_empty());
    let t1 = next_batch(&body);
    assert!(user_list(&n.sync(&bob, Some(&t1)).await, "changed").is_empty());
    // Alice's other devices need to hear about her own changes too.
    assert_eq!(
        user_list(&n.sync(&alice, Some(&alice_t0)).await, "changed"),
        [alice.user_id.as_str()]
    );

    // Re-uploading the same keys changes nothing.
    upload_keys(&n, &alice, json!({"device_keys": device_keys(&alice, "key-a")})).await;
    assert!(user_list(&n.sync(&bob, Some(&t1)).await, "changed").is_empty());
}

#[tokio::test]
async fn device_lists_follow_joins_and_leaves() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = shared_room(&n, &alice, &bob).await;
    let other = shared_room(&n, &alice, &carol).await;
    let t0 = next_batch(&n.sync(&bob, None).await);

    n.join(&carol, &room).await;
    let body = n.sync(&bob, Some(&t0)).await;
    assert_eq!(
        user_list(&body, "changed"),
        [carol.user_id.as_str()],
        "carol's devices are new to bob"
    );
    assert!(user_list(&body, "left").is_empty());
    let t1 = next_batch(&body);

    n.leave(&carol, &room).await;
    let body = n.sync(&bob, Some(&t1)).await;
    assert_eq!(
        user_list(&body, "left"),
        [carol.user_id.as_str()],
        "no room shared any more"
    );
    assert!(user_list(&body, "changed").is_empty());
    let t2 = next_batch(&body);

    // Bob joining a room shows him its members; leaving it, those he shares nothing else with.
    n.join(&bob, &other).await;
    let body = n.sync(&bob, Some(&t2)).await;
    assert_eq!(
        user_list(&body, "changed"),
        [alice.user_id.as_str(), carol.user_id.as_str()]
    );
    let t3 = next_batch(&body);
    n.leave(&bob, &other).await;
    let body = n.sync(&bob, Some(&t3)).await;
    assert_eq!(
        user_list(&body, "left"),
        [carol.user_id.as_str()],
        "alice still shares a room"
    );
}

#[tokio::test]
async fn key_counts_follow_uploads_and_claims() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let bob2 = n.login(&bob, "BOBTWO").await;

    let body = n.sync(&bob, None).await;
    assert_eq!(
        body["device_one_time_keys_count"],
        json!({"signed_curve25519": 0})
    );
    assert_eq!(body["device_unused_fallback_key_types"], json!([]));

    let otk = |id: &str| {
        (
            format!("signed_curve25519:{id}"),
            json!({"key": id, "signatures": {}}),
        )
    };
    let one_time: serde_json::Map<String, Value> = ["a", "b", "c"].iter().map(|i| otk(i)).collect();
    upload_keys(
        &n,
        &bob,
        json!({
            "one_time_keys": one_time,
            "fallback_keys": {"signed_curve25519:f": {"key": "f", "fallback": true, "signatures": {}}},
        }),
    )
    .await;
    let body = n.sync(&bob, None).await;
    assert_eq!(
        body["device_one_time_keys_count"],
        json!({"signed_curve25519": 3})
    );
    assert_eq!(
        body["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    assert_eq!(
        body["org.matrix.msc2732.device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    // Counts are per device.
    let other = n.sync(&bob2, None).await;
    assert_eq!(
        other["device_one_time_keys_count"],
        json!({"signed_curve25519": 0})
    );
    assert_eq!(other["device_unused_fallback_key_types"], json!([]));

    let claim = json!({"one_time_keys": {bob.user_id.clone(): {bob.device_id.clone(): "signed_curve25519"}}});
    for left in [2, 1, 0] {
        let (status, res) = n
            .post("/_matrix/client/v3/keys/claim", &alice.token, claim.clone())
            .await;
        assert_eq!(status, 200, "claim: {res}");
        let body = n.sync(&bob, None).await;
        assert_eq!(
            body["device_one_time_keys_count"],
            json!({"signed_curve25519": left})
        );
        assert_eq!(
            body["device_unused_fallback_key_types"],
            json!(["signed_curve25519"])
        );
    }
    // Out of one-time keys: the claim hands out the fallback key, which is then used.
    let (status, res) = n.post("/_matrix/client/v3/keys/claim", &alice.token, claim).await;
    assert_eq!(status, 200, "claim: {res}");
    let body = n.sync(&bob, None).await;
    assert_eq!(
        body["device_one_time_keys_count"],
        json!({"signed_curve25519": 0})
    );
    assert_eq!(body["device_unused_fallback_key_types"], json!([]));
}

#[tokio::test]
async fn deleting_a_device_tells_room_members_and_drops_its_inbox() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    n.login(&bob, "BOBTWO").await;
    let bob3 = n.login(&bob, "BOBTHREE").await;
    shared_room(&n, &alice, &bob).await;
    let t0 = next_batch(&n.sync(&alice, None).await);
    for txn in ["t1", "t2"] {
        send_ok(&n, &alice, "m.test", txn, json!({bob.user_id.clone(): {"*": {}}})).await;
    }

    let res = n
        .call(
            reqwest::Method::DELETE,
            "/_matrix/client/v3/devices/BOBTWO",
            Some(&bob.token),
            Some(json!({"auth": {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": bob.user_id},
                "password": "pw-bob",
            }})),
        )
        .await;
    assert_eq!(res.0, 200, "delete device: {res:?}");
    let body = n.sync(&alice, Some(&t0)).await;
    assert_eq!(user_list(&body, "changed"), [bob.user_id.as_str()]);
    let t1 = next_batch(&body);

    // Logging out deletes the device as well.
    let res = n.post("/_matrix/client/v3/logout", &bob3.token, json!({})).await;
    assert_eq!(res.0, 200, "logout: {res:?}");
    assert_eq!(
        user_list(&n.sync(&alice, Some(&t1)).await, "changed"),
        [bob.user_id.as_str()]
    );

    // A device logging in again under a deleted ID starts with an empty inbox; the device
    // that stayed still has its messages.
    for id in ["BOBTWO", "BOBTHREE"] {
        let again = n.login(&bob, id).await;
        assert!(
            to_device(&n.sync(&again, None).await).is_empty(),
            "{id} inbox dropped"
        );
    }
    assert_eq!(to_device(&n.sync(&bob, None).await).len(), 2);

    // Logging out everywhere takes every inbox with it.
    let t2 = next_batch(&n.sync(&alice, None).await);
    let res = n
        .post("/_matrix/client/v3/logout/all", &bob.token, json!({}))
        .await;
    assert_eq!(res.0, 200, "logout/all: {res:?}");
    assert_eq!(
        user_list(&n.sync(&alice, Some(&t2)).await, "changed"),
        [bob.user_id.as_str()]
    );
    let again = n.login(&bob, &bob.device_id).await;
    assert!(to_device(&n.sync(&again, None).await).is_empty());
}
