//! The node's self-certifying identity: one ed25519 key whose public half *is* the
//! server name (lowercase hex), so any peer verifies our signatures from the name alone.
//!
//! The key file uses Synapse's signing-key format, `ed25519 <version> <unpadded base64 seed>`,
//! so it can be inspected and moved with the usual tools.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use ruma::serde::Base64;
use ruma::signatures::{KeyPair, PublicKeyMap, PublicKeySet, Signature};
use ruma::{OwnedServerName, ServerName, SigningKeyAlgorithm, SigningKeyId};

pub const KEY_FILE: &str = "signing.key";

/// Unpadded standard base64 that tolerates non-zero trailing bits, as Synapse's key files
/// (and the spec's own test seed) may have them.
const LENIENT_B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The node's signing key and the names derived from it.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
    version: String,
    server_name: OwnedServerName,
}

impl Identity {
    pub fn from_seed(seed: [u8; 32], version: impl Into<String>) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let server_name = server_name_for(&key.verifying_key());
        Self {
            key,
            version: version.into(),
            server_name,
        }
    }

    /// Loads `signing.key` from `data_dir`, creating it (mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        if path.exists() {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            return Self::parse(&text).with_context(|| format!("parsing {}", path.display()));
        }
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let mut tag = [0u8; 3];
        rand::fill(&mut tag);
        let version = format!("a_{}", &STANDARD_NO_PAD.encode(tag).replace(['+', '/'], "x"));
        let id = Self::from_seed(seed, version);
        write_private(&path, id.to_file_format().as_bytes())?;
        Ok(id)
    }

    /// Parses `ed25519 <version> <base64 seed>`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut parts = text.split_whitespace();
        let (Some(alg), Some(version), Some(seed_b64)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("expected `ed25519 <key_id> <base64 seed>`");
        };
        if alg != "ed25519" {
            bail!("unsupported key algorithm {alg}");
        }
        let seed = LENIENT_B64.decode(seed_b64).context("seed is not base64")?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| anyhow::anyhow!("seed is not 32 bytes"))?;
        Ok(Self::from_seed(seed, version))
    }

    pub fn to_file_format(&self) -> String {
        format!(
            "ed25519 {} {}\n",
            self.version,
            STANDARD_NO_PAD.encode(self.key.to_bytes())
        )
    }

    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// The key ID as it appears in `signatures`, e.g. `ed25519:a_AbCd`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.version)
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The 32-byte seed, for deriving the libp2p identity from the same key.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }
}

impl KeyPair for Identity {
    fn sign(&self, message: &[u8]) -> Signature {
        let key_id = SigningKeyId::from_parts(SigningKeyAlgorithm::Ed25519, self.version.as_str().into());
        Signature::new(key_id, self.key.sign(message).to_bytes().to_vec())
    }
}

/// Server name = lowercase hex of the 32-byte ed25519 public key.
pub fn server_name_for(key: &VerifyingKey) -> OwnedServerName {
    let name = hex::encode(key.as_bytes());
    ServerName::parse(&name).expect("64 lowercase hex characters are a valid server name")
}

/// Decodes the public key a server name stands for; `None` if the name is not one of ours.
pub fn public_key_of(server_name: &ServerName) -> Option<VerifyingKey> {
    let s = server_name.as_str();
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let bytes: [u8; 32] = hex::decode(s).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// Builds the key map `ruma::signatures::verify_event` needs for `servers`, taking each
/// server's key from its name. Every `ed25519:*` key ID a server used maps to that one key:
/// the key ID is only a label, the name is the authority.
pub fn key_map_for<'a>(servers: impl IntoIterator<Item = (&'a ServerName, Vec<String>)>) -> PublicKeyMap {
    let mut map = PublicKeyMap::new();
    for (server, key_ids) in servers {
        let Some(key) = public_key_of(server) else {
            continue;
        };
        let mut set = PublicKeySet::new();
        for key_id in key_ids.into_iter().filter(|k| k.starts_with("ed25519:")) {
            set.insert(key_id, Base64::new(key.as_bytes().to_vec()));
        }
        map.insert(server.to_string(), set);
    }
    map
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_round_trips_to_key() {
        let id = Identity::from_seed([7u8; 32], "a_test");
        let name = id.server_name().to_owned();
        assert_eq!(name.as_str().len(), 64);
        assert_eq!(public_key_of(&name), Some(id.public_key()));
        let parsed = Identity::parse(&id.to_file_format()).unwrap();
        assert_eq!(parsed.server_name(), id.server_name());
        assert_eq!(parsed.key_id(), "ed25519:a_test");
    }

    #[test]
    fn non_hex_names_have_no_key() {
        assert!(public_key_of(ServerName::parse("example.org").unwrap().as_ref()).is_none());
    }

    /// The signing test vectors of the spec's appendices (content/appendices.md,
    /// "Signing Events"), run through our `KeyPair` and ruma's hashing and signing.
    mod spec_vectors {
        use super::*;
        use ruma::canonical_json::CanonicalJsonObject;
        use ruma::room_version_rules::RoomVersionRules;

        fn key() -> Identity {
            let seed = LENIENT_B64
                .decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
                .unwrap();
            Identity::from_seed(seed.try_into().unwrap(), "1")
        }

        fn obj(json: &str) -> CanonicalJsonObject {
            serde_json::from_str(json).unwrap()
        }

        fn signature(o: &CanonicalJsonObject) -> String {
            let v = serde_json::to_value(o).unwrap();
            v["signatures"]["domain"]["ed25519:1"]
                .as_str()
                .unwrap()
                .to_owned()
        }

        #[test]
        fn json_signing() {
            let mut empty = obj("{}");
            ruma::signatures::sign_json("domain", &key(), &mut empty).unwrap();
            assert_eq!(
                signature(&empty),
                "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
            );
            let mut data = obj(r#"{"one": 1, "two": "Two"}"#);
            ruma::signatures::sign_json("domain", &key(), &mut data).unwrap();
            assert_eq!(
                signature(&data),
                "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
            );
        }

        fn sign_event(json: &str) -> CanonicalJsonObject {
            let mut ev = obj(json);
            ev.remove("signatures");
            ev.remove("hashes");
            ruma::signatures::hash_and_sign_event("domain", &key(), &mut ev, &RoomVersionRules::V1.redaction)
                .unwrap();
            ev
        }

        fn hash(o: &CanonicalJsonObject) -> String {
            serde_json::to_value(o).unwrap()["hashes"]["sha256"]
                .as_str()
                .unwrap()
                .to_owned()
        }

        #[test]
        fn event_signing() {
            let minimal = sign_event(
                r#"{"room_id": "!x:domain", "sender": "@a:domain", "origin": "domain",
                    "origin_server_ts": 1000000, "signatures": {}, "hashes": {}, "type": "X",
                    "content": {}, "prev_events": [], "auth_events": [], "depth": 3,
                    "unsigned": {"age_ts": 1000000}}"#,
            );
            assert_eq!(hash(&minimal), "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos");
            assert_eq!(
                signature(&minimal),
                "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"
            );
            let message = sign_event(
                r#"{"content": {"body": "Here is the message content"}, "event_id": "$0:domain",
                    "origin": "domain", "origin_server_ts": 1000000, "type": "m.room.message",
                    "room_id": "!r:domain", "sender": "@u:domain", "signatures": {},
                    "unsigned": {"age_ts": 1000000}}"#,
            );
            assert_eq!(hash(&message), "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g");
            assert_eq!(
                signature(&message),
                "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
            );
        }

        #[test]
        fn our_signatures_verify_from_the_name_alone() {
            let id = Identity::from_seed([9u8; 32], "a_x");
            let mut o = obj(r#"{"hello": "world"}"#);
            ruma::signatures::sign_json(id.server_name().as_str(), &id, &mut o).unwrap();
            let map = key_map_for([(id.server_name(), vec![id.key_id()])]);
            ruma::signatures::verify_json(&map, &o).unwrap();
            // A different key claiming the same name fails.
            let other = Identity::from_seed([8u8; 32], "a_x");
            let mut forged = obj(r#"{"hello": "world"}"#);
            ruma::signatures::sign_json(id.server_name().as_str(), &other, &mut forged).unwrap();
            assert!(ruma::signatures::verify_json(&map, &forged).is_err());
        }
    }
}
