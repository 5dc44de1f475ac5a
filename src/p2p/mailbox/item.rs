//! Mail items: signing by the origin, checking by holder and recipient, and opening one
//! at the recipient through the very handlers that serve `/meshserver/to-device/1` and
//! `/meshserver/invite/1`, so a message arriving by mailbox and by the sender's outbox is
//! stored once (to-device by `(origin, message_id)`, invites by event ID).

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ruma::canonical_json::CanonicalJsonObject;
use ruma::{OwnedServerName, ServerName, SigningKeyAlgorithm};
use serde_json::{Value, json};

use crate::identity::{Identity, public_key_of};
use crate::p2p::wire::{MailItem, Request, Response};
use crate::services::AppState;
use crate::storage::outbox::{KIND_INVITE, KIND_TO_DEVICE};
use crate::{Error, Result};

/// Longest item ID accepted.
pub const MAX_ID_BYTES: usize = 255;

/// The stable ID of a queued message: the same message deposited with several holders (or
/// again after a restart) has the same ID, so holders keep it once.
pub fn item_id(kind: &str, body: &str) -> String {
    blake3::hash(format!("{kind}\n{body}").as_bytes()).to_hex()[..32].to_owned()
}

/// The request that carries a message of `kind` straight to its destination; `None` for
/// a kind no mailbox carries or a body that does not fit it.
pub fn request_for(kind: &str, body: Value) -> Option<Request> {
    match kind {
        KIND_TO_DEVICE => Some(Request::ToDevice { content: body }),
        KIND_INVITE => serde_json::from_value(json!({ "invite": body })).ok(),
        _ => None,
    }
}

fn canonical(item: &MailItem) -> Result<CanonicalJsonObject> {
    let v = serde_json::to_value(item)?;
    serde_json::from_value(v).map_err(|e| Error::bad_json(format!("mail item is not canonical JSON: {e}")))
}

/// Signs a message for `destination` as this node.
pub fn sign_item(
    identity: &Identity,
    destination: &str,
    kind: &str,
    body: Value,
    id: String,
    ts: u64,
) -> Result<MailItem> {
    let mut item = MailItem {
        origin: identity.server_name().to_string(),
        destination: destination.to_owned(),
        kind: kind.to_owned(),
        body,
        id,
        ts,
        signatures: Default::default(),
    };
    let mut obj = canonical(&item)?;
    ruma::signatures::sign_json(identity.server_name().as_str(), identity, &mut obj)
        .map_err(|e| Error::bad_json(e.to_string()))?;
    item = serde_json::from_value(serde_json::to_value(obj)?)?;
    Ok(item)
}

/// Checks an item's form and its origin's signature (the key decoded from the origin's
/// name); returns the origin. Only the origin may sign, and every signature it carries
/// must verify.
pub fn verify_item(item: &MailItem) -> Result<OwnedServerName> {
    let bad = |m: &str| Error::forbidden(format!("mail item refused: {m}"));
    let origin = ServerName::parse(&item.origin).map_err(|_| bad("bad origin"))?;
    let key = public_key_of(&origin).ok_or_else(|| bad("the origin is not a node key"))?;
    if item.id.is_empty() || item.id.len() > MAX_ID_BYTES {
        return Err(Error::invalid_param("mail item ID out of bounds"));
    }
    let sigs = match (item.signatures.len(), item.signatures.get(origin.as_str())) {
        (1, Some(sigs)) if !sigs.is_empty() => sigs,
        _ => return Err(bad("it must carry its origin's signature only")),
    };
    let signed = ruma::signatures::to_canonical_json_string_for_signing(&canonical(item)?)
        .map_err(|e| Error::bad_json(e.to_string()))?;
    for (key_id, sig) in sigs {
        if !key_id.starts_with("ed25519:") {
            return Err(bad("unknown signature algorithm"));
        }
        let sig = STANDARD_NO_PAD
            .decode(sig.trim_end_matches('='))
            .map_err(|_| bad("signature is not base64"))?;
        ruma::signatures::verify_canonical_json_bytes(
            &SigningKeyAlgorithm::Ed25519,
            key.as_bytes(),
            &sig,
            signed.as_bytes(),
        )
        .map_err(|_| bad("bad signature"))?;
    }
    Ok(origin)
}

/// What became of an item at its recipient.
#[derive(Debug, PartialEq)]
pub enum Opened {
    /// Stored (or stored before: a duplicate).
    Delivered,
    /// Refused for good (forged, not for us, refused by the handler).
    Refused(String),
    /// Not now (this node is busy): keep it at the holder.
    Retry,
}

/// Checks an item collected from a holder and hands it to the handler of its kind, as if
/// its origin had sent it directly.
pub async fn open(s: &AppState, item: MailItem) -> Opened {
    let checked = verify_item(&item).and_then(|o| match item.destination == s.server_name().as_str() {
        true => Ok(o),
        false => Err(Error::forbidden("the item is for another node")),
    });
    let origin = match checked {
        Ok(o) => o,
        Err(e) => {
            // A holder handed over what its origin never signed for us: count it.
            crate::p2p::Counters::bump(&s.p2p.counters.refused_requests);
            return Opened::Refused(e.message);
        }
    };
    let Some(req) = request_for(&item.kind, item.body) else {
        return Opened::Refused(format!("unknown or malformed item of kind {:?}", item.kind));
    };
    // Boxed: `handle` also serves the mailbox protocol, which collects and opens items.
    match Box::pin(crate::p2p::serve::handle(s, &origin, req)).await {
        Response::Error { errcode, .. } if errcode == "M_LIMIT_EXCEEDED" || errcode == "M_UNKNOWN" => {
            Opened::Retry
        }
        Response::Error { errcode, error } => Opened::Refused(format!("{errcode}: {error}")),
        _ => Opened::Delivered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_item_verifies_and_any_change_breaks_it() {
        let id = Identity::from_seed([3; 32], "a_t");
        let item = sign_item(&id, "dest", KIND_TO_DEVICE, json!({"a": 1}), "i1".into(), 5).unwrap();
        assert_eq!(verify_item(&item).unwrap().as_str(), id.server_name().as_str());
        for change in [
            |i: &mut MailItem| i.body = json!({"a": 2}),
            |i: &mut MailItem| i.destination = "other".into(),
            |i: &mut MailItem| i.kind = KIND_INVITE.into(),
            |i: &mut MailItem| i.id = "i2".into(),
            |i: &mut MailItem| i.ts = 6,
        ] {
            let mut forged = item.clone();
            change(&mut forged);
            assert_eq!(verify_item(&forged).unwrap_err().errcode, "M_FORBIDDEN");
        }
        // Another node cannot sign in the origin's name, nor add its own signature.
        let other = Identity::from_seed([4; 32], "a_t");
        let mut forged = sign_item(&other, "dest", KIND_TO_DEVICE, json!({"a": 1}), "i1".into(), 5).unwrap();
        forged.origin = item.origin.clone();
        assert!(verify_item(&forged).is_err());
        let mut two = item.clone();
        two.signatures.extend(forged.signatures.clone());
        assert!(verify_item(&two).is_err());
    }
}
