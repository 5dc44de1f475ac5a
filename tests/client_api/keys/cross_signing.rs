//! `/keys/device_signing/upload` and `/keys/signatures/upload`, as seen through
//! `/keys/query`.

use serde_json::{Value, json};

use super::*;

/// A cross-signing key of `u` for `usage`, signed by `master` when given.
fn cs_key(u: &User, usage: &str, key: &Key, master: Option<&Key>) -> Value {
    let mut k = json!({
        "user_id": u.user_id,
        "usage": [usage],
        "keys": {format!("ed25519:{}", key.public()): key.public()},
    });
    if let Some(m) = master {
        m.sign(&mut k, &u.user_id, &m.public());
    }
    k
}

/// A user's three cross-signing keys.
struct CrossSigning {
    master: Key,
    self_signing: Key,
    user_signing: Key,
}

impl CrossSigning {
    fn generate() -> Self {
        Self {
            master: Key::generate(),
            self_signing: Key::generate(),
            user_signing: Key::generate(),
        }
    }

    fn body(&self, u: &User) -> Value {
        json!({
            "master_key": cs_key(u, "master", &self.master, None),
            "self_signing_key": cs_key(u, "self_signing", &self.self_signing, Some(&self.master)),
            "user_signing_key": cs_key(u, "user_signing", &self.user_signing, Some(&self.master)),
        })
    }
}

async fn upload_signing(n: &TestNode, u: &User, body: Value) -> (u16, Value) {
    n.post(&v3("keys/device_signing/upload"), &u.token, body).await
}

async fn upload_signatures(n: &TestNode, u: &User, body: Value) -> Value {
    let res = n.post(&v3("keys/signatures/upload"), &u.token, body).await;
    assert_eq!(res.0, 200, "signatures/upload: {:?}", res);
    res.1["failures"].clone()
}

#[tokio::test]
async fn cross_signing_upload_then_replacing_needs_uia() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let cs = CrossSigning::generate();
    let body = cs.body(&alice);

    // The first upload needs no UIA; repeating it (a retry) neither.
    for _ in 0..2 {
        let res = upload_signing(&n, &alice, body.clone()).await;
        assert_eq!(res, (200, json!({})));
    }
    let own = query(&n, &alice, &alice).await;
    assert_eq!(own["master_keys"][&alice.user_id], body["master_key"]);
    assert_eq!(own["self_signing_keys"][&alice.user_id], body["self_signing_key"]);
    assert_eq!(own["user_signing_keys"][&alice.user_id], body["user_signing_key"]);
    // Others never see the user-signing key.
    let seen = query(&n, &bob, &alice).await;
    assert_eq!(seen["master_keys"][&alice.user_id], body["master_key"]);
    assert_eq!(
        seen["self_signing_keys"][&alice.user_id],
        body["self_signing_key"]
    );
    assert_eq!(seen["user_signing_keys"], json!({}));

    // New keys replace the old only with the password.
    let cs2 = CrossSigning::generate();
    let res = upload_signing(&n, &alice, cs2.body(&alice)).await;
    assert_eq!(res.0, 401, "{:?}", res);
    assert_eq!(res.1["flows"], json!([{"stages": ["m.login.password"]}]));
    let session = res.1["session"].as_str().expect("session").to_owned();
    let password = |pw: &str| {
        let mut b = cs2.body(&alice);
        b["auth"] = json!({"type": "m.login.password", "session": session, "password": pw,
            "identifier": {"type": "m.id.user", "user": alice.user_id}});
        b
    };
    let res = upload_signing(&n, &alice, password("wrong")).await;
    assert_err(&res, 401, "M_FORBIDDEN");
    assert_eq!(
        query(&n, &alice, &alice).await["master_keys"][&alice.user_id],
        body["master_key"]
    );
    let res = upload_signing(&n, &alice, password("pw-alice")).await;
    assert_eq!(res, (200, json!({})));
    let own = query(&n, &alice, &alice).await;
    assert_eq!(own["master_keys"][&alice.user_id], cs2.body(&alice)["master_key"]);
    assert_eq!(
        own["user_signing_keys"][&alice.user_id],
        cs2.body(&alice)["user_signing_key"]
    );
}

#[tokio::test]
async fn cross_signing_upload_rejects_bad_keys() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let cs = CrossSigning::generate();

    // A self-signing key without any master key to check it against.
    let ssk = cs_key(&alice, "self_signing", &cs.self_signing, Some(&cs.master));
    let res = upload_signing(&n, &alice, json!({"self_signing_key": ssk})).await;
    assert_err(&res, 400, "M_MISSING_PARAM");
    // Signed by some other key than the master key.
    let mut body = cs.body(&alice);
    body["self_signing_key"] = cs_key(&alice, "self_signing", &cs.self_signing, Some(&Key::generate()));
    let res = upload_signing(&n, &alice, body).await;
    assert_err(&res, 400, "M_INVALID_SIGNATURE");
    // A key of someone else, of the wrong usage, or with two public keys.
    let mut body = cs.body(&alice);
    body["master_key"]["user_id"] = json!(bob.user_id);
    assert_err(&upload_signing(&n, &alice, body).await, 400, "M_INVALID_PARAM");
    let mut body = cs.body(&alice);
    body["master_key"]["usage"] = json!(["self_signing"]);
    assert_err(&upload_signing(&n, &alice, body).await, 400, "M_INVALID_PARAM");
    let extra = Key::generate().public();
    let mut body = cs.body(&alice);
    body["master_key"]["keys"][format!("ed25519:{extra}")] = json!(extra);
    assert_err(&upload_signing(&n, &alice, body).await, 400, "M_INVALID_PARAM");
    // A public key equal to one of the user's device IDs.
    let login = n
        .call(
            reqwest::Method::POST,
            &v3("login"),
            None,
            Some(
                json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"},
                "password": "pw-alice", "device_id": cs.master.public()}),
            ),
        )
        .await;
    assert_eq!(login.0, 200, "{:?}", login);
    assert_err(
        &upload_signing(&n, &alice, cs.body(&alice)).await,
        403,
        "M_FORBIDDEN",
    );

    // Nothing of the refused uploads was stored.
    let own = query(&n, &alice, &alice).await;
    assert_eq!(own["master_keys"], json!({}));
    assert_eq!(own["self_signing_keys"], json!({}));
}

#[tokio::test]
async fn signatures_upload_shows_in_query() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let (alice_dev, alice_cs) = (Key::generate(), CrossSigning::generate());
    let (bob_dev, bob_cs) = (Key::generate(), CrossSigning::generate());
    for (u, dev, cs) in [(&alice, &alice_dev, &alice_cs), (&bob, &bob_dev, &bob_cs)] {
        upload(&n, u, json!({"device_keys": device_keys(u, dev)})).await;
        assert_eq!(upload_signing(&n, u, cs.body(u)).await.0, 200);
    }
    let ssk_id = format!("ed25519:{}", alice_cs.self_signing.public());
    let master_pub = alice_cs.master.public();

    // Alice's self-signing key vouches for her device.
    let mut device = query(&n, &alice, &alice).await["device_keys"][&alice.user_id][&alice.device_id].clone();
    device.as_object_mut().unwrap().remove("unsigned");
    alice_cs
        .self_signing
        .sign(&mut device, &alice.user_id, &alice_cs.self_signing.public());
    let from = sync_token(&n, &alice).await;
    let failures = upload_signatures(
        &n,
        &alice,
        json!({alice.user_id.clone(): {alice.device_id.clone(): device.clone()}}),
    )
    .await;
    assert_eq!(failures, json!({}));
    let seen = query(&n, &bob, &alice).await;
    let sigs = &seen["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id];
    assert_eq!(sigs[&ssk_id], device["signatures"][&alice.user_id][&ssk_id]);
    assert!(
        sigs[format!("ed25519:{}", alice.device_id)].is_string(),
        "self-signature kept: {sigs}"
    );
    let to = sync_token(&n, &alice).await;
    let res = n
        .get(&v3(&format!("keys/changes?from={from}&to={to}")), &alice.token)
        .await;
    assert_eq!(res.1["changed"], json!([alice.user_id]));

    // Bob's user-signing key vouches for Alice's master key: only Bob sees that.
    let mut master = seen["master_keys"][&alice.user_id].clone();
    bob_cs
        .user_signing
        .sign(&mut master, &bob.user_id, &bob_cs.user_signing.public());
    let failures = upload_signatures(
        &n,
        &bob,
        json!({alice.user_id.clone(): {master_pub.clone(): master.clone()}}),
    )
    .await;
    assert_eq!(failures, json!({}));
    let usk_id = format!("ed25519:{}", bob_cs.user_signing.public());
    let by_bob = query(&n, &bob, &alice).await["master_keys"][&alice.user_id]["signatures"][&bob.user_id]
        [&usk_id]
        .clone();
    assert_eq!(by_bob, master["signatures"][&bob.user_id][&usk_id]);
    let own = query(&n, &alice, &alice).await;
    assert!(
        own["master_keys"][&alice.user_id]["signatures"]
            .get(&bob.user_id)
            .is_none(),
        "{own}"
    );

    // Alice's device signs her own master key.
    let mut own_master = own["master_keys"][&alice.user_id].clone();
    alice_dev.sign(&mut own_master, &alice.user_id, &alice.device_id);
    let failures = upload_signatures(
        &n,
        &alice,
        json!({alice.user_id.clone(): {master_pub.clone(): own_master}}),
    )
    .await;
    assert_eq!(failures, json!({}));
    let seen = query(&n, &bob, &alice).await;
    assert!(
        seen["master_keys"][&alice.user_id]["signatures"][&alice.user_id]
            [format!("ed25519:{}", alice.device_id)]
        .is_string()
    );

    // Failures are reported per key, and store nothing.
    let good_sig = device["signatures"][&alice.user_id][&ssk_id].clone();
    let mut forged = device.clone();
    forged["signatures"][&alice.user_id][&ssk_id] =
        json!(device["signatures"][&alice.user_id][format!("ed25519:{}", alice.device_id)]);
    let mut altered = device.clone();
    altered["algorithms"] = json!(["m.something.else"]);
    let mut bob_device = query(&n, &alice, &bob).await["device_keys"][&bob.user_id][&bob.device_id].clone();
    alice_cs
        .user_signing
        .sign(&mut bob_device, &alice.user_id, &alice_cs.user_signing.public());
    let failures = upload_signatures(
        &n,
        &alice,
        json!({
            alice.user_id.clone(): {alice.device_id.clone(): forged, "NOSUCHKEY": device},
            bob.user_id.clone(): {bob.device_id.clone(): bob_device},
        }),
    )
    .await;
    assert_eq!(
        failures[&alice.user_id][&alice.device_id]["errcode"],
        "M_INVALID_SIGNATURE"
    );
    assert_eq!(failures[&alice.user_id]["NOSUCHKEY"]["errcode"], "M_NOT_FOUND");
    assert_eq!(failures[&bob.user_id][&bob.device_id]["errcode"], "M_FORBIDDEN");
    let failures = upload_signatures(
        &n,
        &alice,
        json!({alice.user_id.clone(): {alice.device_id.clone(): altered}}),
    )
    .await;
    assert_eq!(
        failures[&alice.user_id][&alice.device_id]["errcode"],
        "M_INVALID_PARAM"
    );
    let seen = query(&n, &bob, &alice).await;
    assert_eq!(
        seen["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id][&ssk_id],
        good_sig
    );
    let seen = query(&n, &bob, &bob).await;
    assert!(
        seen["device_keys"][&bob.user_id][&bob.device_id]["signatures"]
            .get(&alice.user_id)
            .is_none()
    );
}
