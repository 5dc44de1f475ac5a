//! End-to-end encryption keys. The server stores and routes them faithfully and does no
//! cryptography on messages: device, one-time and fallback keys and device-list changes
//! ([`devices`]), cross-signing keys and signatures ([`cross_signing`]), and server-side
//! key backup ([`backup`]). The one check it makes is of cross-signing signatures, which
//! the spec asks the server to reject when invalid. Other nodes' users' keys are asked of
//! their nodes ([`remote`]); peers asking about ours are answered by `p2p::serve::keys`
//! through [`query_local`] and [`claim_local`].

mod backup;
mod cross_signing;
mod devices;
pub mod remote;

pub use devices::{KeysFound, claim_local, query_local};

use axum::Router;
use base64::Engine;
use ruma::canonical_json::CanonicalJsonObject;
use ruma::{OwnedUserId, SigningKeyAlgorithm, UserId};
use serde_json::{Map, Value};

use crate::services::AppState;
use crate::storage::e2ee::KeySignature;
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = devices::add(r);
    let r = cross_signing::add(r);
    backup::add(r)
}

/// A user ID named in a request body; `M_INVALID_PARAM` when malformed.
fn parse_user_id(s: &str) -> Result<OwnedUserId> {
    UserId::parse(s).map_err(|_| Error::invalid_param(format!("invalid user ID {s:?}")))
}

/// The key object without `signatures` and `unsigned`: what signatures cover, and what
/// must stay the same when a client re-submits a key to add signatures.
fn signed_part(key: &Value) -> Value {
    let mut out = key.clone();
    if let Some(o) = out.as_object_mut() {
        o.remove("signatures");
        o.remove("unsigned");
    }
    out
}

/// Adds the stored signatures of `owner`'s key that `viewer` may see to its `signatures`.
/// Everyone sees the owner's own signatures; signatures by others (their user-signing key
/// vouching for the owner) are shown only to their maker, so social graphs do not leak.
fn merge_signatures(key: &mut Value, sigs: Vec<KeySignature>, owner: &str, viewer: &str) {
    let Some(obj) = key.as_object_mut() else {
        return;
    };
    for sig in sigs {
        if sig.signer_user != owner && sig.signer_user != viewer {
            continue;
        }
        let all = obj
            .entry("signatures")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(all) = all.as_object_mut()
            && let Some(by_user) = all
                .entry(sig.signer_user)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
        {
            by_user.insert(sig.signer_key_id, Value::String(sig.signature));
        }
    }
}

/// The signature by `signer_user`'s key `key_id` in `object`'s `signatures`.
fn signature_of<'a>(object: &'a Value, signer_user: &str, key_id: &str) -> Option<&'a str> {
    object.get("signatures")?.get(signer_user)?.get(key_id)?.as_str()
}

/// Unpadded base64 as the spec writes keys and signatures, tolerating padding.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Whether `object` carries a valid ed25519 signature by `signer_user`'s key `key_id`
/// (`ed25519:<name>`) whose public key is `public_key` (base64), per "Signing JSON".
fn verify_signature(object: &Value, signer_user: &str, key_id: &str, public_key: &str) -> bool {
    let Some(signature) = signature_of(object, signer_user, key_id) else {
        return false;
    };
    let (Ok(sig), Ok(pk)) = (B64.decode(signature), B64.decode(public_key)) else {
        return false;
    };
    let Ok(canonical) = serde_json::from_value::<CanonicalJsonObject>(object.clone()) else {
        return false;
    };
    let Ok(signed) = ruma::signatures::to_canonical_json_string_for_signing(&canonical) else {
        return false;
    };
    ruma::signatures::verify_canonical_json_bytes(&SigningKeyAlgorithm::Ed25519, &pk, &sig, signed.as_bytes())
        .is_ok()
}

/// The public key (unpadded base64) of a stored cross-signing key: the value of its one
/// `keys` entry.
fn cross_signing_public_key(key: &Value) -> Option<&str> {
    key.get("keys")?.as_object()?.values().next()?.as_str()
}
