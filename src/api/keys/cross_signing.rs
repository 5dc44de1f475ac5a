//! Cross-signing: uploading a user's master, self-signing and user-signing keys, and
//! signatures made with them (or with a device key, of the user's own master key).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{cross_signing_public_key, parse_user_id, signed_part, verify_signature};
use crate::api::account::require_password_uia;
use crate::api::extract::{Auth, JsonBody};
use crate::api::{client, empty};
use crate::services::AppState;
use crate::storage::e2ee::{self as store, CrossSigning, KeySignature};
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/keys/device_signing/upload", post(upload_signing_keys));
    client(r, "/keys/signatures/upload", post(upload_signatures))
}

fn invalid_signature(m: impl Into<String>) -> Error {
    Error::new(StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE", m)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SigningKeysBody {
    master_key: Option<Value>,
    self_signing_key: Option<Value>,
    user_signing_key: Option<Value>,
    auth: Option<Value>,
}

/// Checks that a cross-signing key belongs to `user`, is for `kind`, and has exactly one
/// ed25519 public key named after itself; returns that public key.
fn validate_key(key: &Value, user: &str, kind: CrossSigning) -> Result<String> {
    let name = kind.as_str();
    if key.get("user_id").and_then(Value::as_str) != Some(user) {
        return Err(Error::invalid_param(format!(
            "the {name} key must name the caller as user_id"
        )));
    }
    let has_usage = key
        .get("usage")
        .and_then(Value::as_array)
        .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(name)));
    if !has_usage {
        return Err(Error::invalid_param(format!(
            "the {name} key's usage must include {name:?}"
        )));
    }
    let keys = key.get("keys").and_then(Value::as_object);
    match keys.map(|k| k.iter().collect::<Vec<_>>()).as_deref() {
        Some([(id, Value::String(public))]) if id.strip_prefix("ed25519:") == Some(public.as_str()) => {
            Ok(public.clone())
        }
        _ => Err(Error::invalid_param(format!(
            "the {name} key must have exactly one key, \"ed25519:<public key>\": \"<public key>\""
        ))),
    }
}

/// `POST /_matrix/client/v3/keys/device_signing/upload` (User-Interactive Auth by password
/// once a master key exists, unless the request repeats the stored keys)
async fn upload_signing_keys(
    State(s): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody<SigningKeysBody>,
) -> Result<Response> {
    let user = auth.user_id.to_string();
    let mut new = Vec::new();
    for (kind, key) in [
        (CrossSigning::Master, body.master_key),
        (CrossSigning::SelfSigning, body.self_signing_key),
        (CrossSigning::UserSigning, body.user_signing_key),
    ] {
        if let Some(mut key) = key {
            let public = validate_key(&key, &user, kind)?;
            if let Some(o) = key.as_object_mut() {
                o.remove("unsigned");
            }
            new.push((kind, key, public));
        }
    }
    let uid = user.clone();
    let (existing, device_ids) =
        s.db.read(move |c| {
            let mut existing = Vec::new();
            for kind in CrossSigning::ALL {
                existing.push((kind, store::cross_signing_key(c, &uid, kind)?));
            }
            Ok((existing, store::device_ids(c, &uid)?))
        })
        .await?;
    let stored = |kind: CrossSigning| {
        existing
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, v)| v.as_ref())
    };
    // Device IDs and cross-signing public keys share one namespace in verification.
    if new.iter().any(|(_, _, public)| device_ids.contains(public)) {
        return Err(Error::forbidden("Key ID in use: a device has this ID"));
    }
    let master = match new.iter().find(|(k, _, _)| *k == CrossSigning::Master) {
        Some((_, _, public)) => Some(public.clone()),
        None => stored(CrossSigning::Master)
            .and_then(cross_signing_public_key)
            .map(str::to_owned),
    };
    for (kind, key, _) in new.iter().filter(|(k, _, _)| *k != CrossSigning::Master) {
        let master = master
            .as_deref()
            .ok_or_else(|| Error::missing_param("No master signing key is available"))?;
        if !verify_signature(key, &user, &format!("ed25519:{master}"), master) {
            return Err(invalid_signature(format!(
                "the {} key is not signed by the master key",
                kind.as_str()
            )));
        }
    }
    new.retain(|(kind, key, _)| stored(*kind) != Some(key));
    if new.is_empty() {
        return Ok(empty());
    }
    // Replacing keys needs proof of the account; the very first upload does not.
    if stored(CrossSigning::Master).is_some() {
        require_password_uia(&s, &auth, body.auth.as_ref()).await?;
    }
    let device = auth.device_id.clone();
    s.db.write(move |tx| {
        for (kind, key, _) in &new {
            store::put_cross_signing_key(tx, &user, *kind, key)?;
        }
        store::record_device_update(tx, &user, &device, false, None)?;
        Ok(())
    })
    .await?;
    Ok(empty())
}

/// `POST /_matrix/client/v3/keys/signatures/upload`
async fn upload_signatures(
    State(s): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody<BTreeMap<String, BTreeMap<String, Value>>>,
) -> Result<Json<Value>> {
    let mut items = Vec::new();
    for (user, keys) in body {
        let uid = parse_user_id(&user)?;
        items.extend(
            keys.into_iter()
                .map(|(key_id, signed)| (uid.to_string(), key_id, signed)),
        );
    }
    let me = auth.user_id.to_string();
    let device = auth.device_id.clone();
    let failures =
        s.db.write(move |tx| {
            let mut failures: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
            let mut stored = false;
            for (target, key_id, signed) in items {
                match new_signatures(tx, &me, &target, &key_id, &signed)? {
                    Ok(sigs) => {
                        for sig in &sigs {
                            store::put_signature(tx, &target, &key_id, sig)?;
                        }
                        stored = true;
                    }
                    Err(e) => {
                        failures
                            .entry(target)
                            .or_default()
                            .insert(key_id, json!({"errcode": e.errcode, "error": e.message}));
                    }
                }
            }
            // Only the signer (and, for their own keys, everyone tracking them) sees the new
            // signatures: the change is the signer's.
            if stored {
                store::record_device_update(tx, &me, &device, false, None)?;
            }
            Ok(failures)
        })
        .await?;
    Ok(Json(json!({"failures": failures})))
}

/// Which of the signer's keys may sign a target.
enum Signer {
    /// Own device keys are signed by the own self-signing key.
    SelfSigning,
    /// Other users' master keys are signed by the own user-signing key.
    UserSigning,
    /// The own master key is signed by one of the own devices.
    OwnDevice,
}

/// The new signatures by `me` in `signed`, a copy of `target`'s key `key_id` (a device ID
/// or a master public key), each verified. The inner error is the failure reported for
/// this key; the outer one a storage error.
fn new_signatures(
    conn: &rusqlite::Connection,
    me: &str,
    target: &str,
    key_id: &str,
    signed: &Value,
) -> Result<Result<Vec<KeySignature>, Error>> {
    let (stored, signer) = if let Some(device) = store::device_keys(conn, target, key_id)? {
        if target != me {
            return Ok(Err(Error::forbidden(
                "Only your own devices and other users' master keys can be signed",
            )));
        }
        (device, Signer::SelfSigning)
    } else if let Some(master) = store::cross_signing_key(conn, target, CrossSigning::Master)?
        .filter(|m| cross_signing_public_key(m) == Some(key_id))
    {
        (
            master,
            if target == me {
                Signer::OwnDevice
            } else {
                Signer::UserSigning
            },
        )
    } else {
        return Ok(Err(Error::not_found(format!("Unknown key {key_id} of {target}"))));
    };
    if signed_part(signed) != signed_part(&stored) {
        return Ok(Err(Error::invalid_param(
            "The signed object does not match the uploaded key",
        )));
    }
    let Some(mine) = signed
        .get("signatures")
        .and_then(|s| s.get(me))
        .and_then(Value::as_object)
    else {
        return Ok(Err(invalid_signature(format!("No signature by {me}"))));
    };
    let already = stored.get("signatures").and_then(|s| s.get(me));
    let mut out = Vec::new();
    for (signer_key_id, sig) in mine {
        let Some(sig) = sig.as_str() else {
            return Ok(Err(invalid_signature("Signatures must be strings")));
        };
        // The key's own signatures (a device's self-signature) come back with the copy.
        if already.and_then(|a| a.get(signer_key_id)).and_then(Value::as_str) == Some(sig) {
            continue;
        }
        let public = match signer {
            Signer::SelfSigning => own_cross_signing_key(conn, me, CrossSigning::SelfSigning, signer_key_id)?,
            Signer::UserSigning => own_cross_signing_key(conn, me, CrossSigning::UserSigning, signer_key_id)?,
            Signer::OwnDevice => match signer_key_id.strip_prefix("ed25519:") {
                Some(device) => store::device_keys(conn, me, device)?
                    .and_then(|d| d.get("keys")?.get(signer_key_id)?.as_str().map(str::to_owned)),
                None => None,
            },
        };
        let Some(public) = public else {
            return Ok(Err(invalid_signature(format!(
                "Unknown signing key {signer_key_id}"
            ))));
        };
        if !verify_signature(signed, me, signer_key_id, &public) {
            return Ok(Err(invalid_signature(format!(
                "Invalid signature by {signer_key_id}"
            ))));
        }
        out.push(KeySignature {
            signer_user: me.to_owned(),
            signer_key_id: signer_key_id.clone(),
            signature: sig.to_owned(),
        });
    }
    if out.is_empty() {
        return Ok(Err(invalid_signature("No new signature")));
    }
    Ok(Ok(out))
}

/// The public key of `me`'s cross-signing key of `kind`, if `key_id` names it.
fn own_cross_signing_key(
    conn: &rusqlite::Connection,
    me: &str,
    kind: CrossSigning,
    key_id: &str,
) -> Result<Option<String>> {
    Ok(store::cross_signing_key(conn, me, kind)?
        .and_then(|k| cross_signing_public_key(&k).map(str::to_owned))
        .filter(|public| key_id.strip_prefix("ed25519:") == Some(public.as_str())))
}
