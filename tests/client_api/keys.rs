//! End-to-end encryption keys: device/one-time/fallback keys, device-list changes,
//! cross-signing keys and signatures, and server-side key backup.

mod backup;
mod cross_signing;
mod devices;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

use crate::common::*;

pub fn v3(rest: &str) -> String {
    format!("/_matrix/client/v3/{rest}")
}

/// A fresh ed25519 key pair, as a client holds for its device or cross-signing keys.
pub struct Key(SigningKey);

impl Key {
    pub fn generate() -> Key {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        Key(SigningKey::from_bytes(&seed))
    }

    /// The public key, unpadded base64.
    pub fn public(&self) -> String {
        STANDARD_NO_PAD.encode(self.0.verifying_key().as_bytes())
    }

    /// Adds this key's signature (key ID `ed25519:<name>`) as `user` to `obj`, per the
    /// spec's "Signing JSON".
    pub fn sign(&self, obj: &mut Value, user: &str, name: &str) {
        let canonical: ruma::canonical_json::CanonicalJsonObject =
            serde_json::from_value(obj.clone()).expect("canonical JSON");
        let text = ruma::signatures::to_canonical_json_string_for_signing(&canonical).expect("canonical");
        let sig = STANDARD_NO_PAD.encode(self.0.sign(text.as_bytes()).to_bytes());
        obj["signatures"][user][format!("ed25519:{name}")] = json!(sig);
    }
}

/// `u`'s device keys, self-signed with the device key `key`.
pub fn device_keys(u: &User, key: &Key) -> Value {
    let mut keys = json!({
        "user_id": u.user_id,
        "device_id": u.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", u.device_id): Key::generate().public(),
            format!("ed25519:{}", u.device_id): key.public(),
        },
        "signatures": {},
    });
    key.sign(&mut keys, &u.user_id, &u.device_id);
    keys
}

/// A `signed_curve25519` one-time (or fallback) key signed by the device key.
pub fn one_time_key(u: &User, key: &Key, fallback: bool) -> Value {
    let mut k = json!({"key": Key::generate().public()});
    if fallback {
        k["fallback"] = json!(true);
    }
    key.sign(&mut k, &u.user_id, &u.device_id);
    k
}

/// Uploads keys, asserting success; returns the response.
pub async fn upload(n: &TestNode, u: &User, body: Value) -> Value {
    let res = n.post(&v3("keys/upload"), &u.token, body).await;
    assert_eq!(res.0, 200, "keys/upload: {:?}", res);
    res.1
}

/// Queries all devices of `who` as `u`, asserting success.
pub async fn query(n: &TestNode, u: &User, who: &User) -> Value {
    let res = n
        .post(
            &v3("keys/query"),
            &u.token,
            json!({"device_keys": {who.user_id.clone(): []}}),
        )
        .await;
    assert_eq!(res.0, 200, "keys/query: {:?}", res);
    assert_eq!(res.1["failures"], json!({}));
    res.1
}

/// The current sync token of `u` (an initial sync's `next_batch`).
pub async fn sync_token(n: &TestNode, u: &User) -> String {
    n.sync(u, None).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned()
}

/// A room created by `a` that `b` joins.
pub async fn share_room(n: &TestNode, a: &User, b: &User) -> String {
    let room = n.create_room(a, json!({"invite": [b.user_id]})).await;
    n.join(b, &room).await;
    room
}
