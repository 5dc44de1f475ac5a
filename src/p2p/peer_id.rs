//! PeerId ↔ server name: two encodings of the node's one ed25519 key.
//!
//! The server name is the lowercase hex of the 32-byte public key; the PeerId is the
//! identity multihash of the protobuf-encoded libp2p public key wrapping the same bytes.
//! Either converts to the other with no lookup, so a connection's PeerId proves the origin.

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey, ed25519};
use ruma::{OwnedServerName, ServerName};

use crate::identity::{Identity, public_key_of, server_name_for};

/// The libp2p keypair of a node: its signing key's seed, so signatures are byte-identical.
pub fn keypair(identity: &Identity) -> Keypair {
    let mut seed = identity.seed();
    let secret = ed25519::SecretKey::try_from_bytes(&mut seed).expect("32 bytes is an ed25519 secret key");
    Keypair::from(ed25519::Keypair::from(secret))
}

/// The server name a PeerId stands for; `None` for non-ed25519 or hashed (non-inlined) ids.
pub fn server_name_of(peer: &PeerId) -> Option<OwnedServerName> {
    let multihash = peer.as_ref();
    // Identity multihash (code 0): the digest is the protobuf public key itself.
    if multihash.code() != 0 {
        return None;
    }
    let key = PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    let ed = key.try_into_ed25519().ok()?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&ed.to_bytes()).ok()?;
    Some(server_name_for(&vk))
}

/// The PeerId of a server name; `None` if the name is not a meshserver key.
pub fn peer_id_of(server: &ServerName) -> Option<PeerId> {
    let vk = public_key_of(server)?;
    let ed = ed25519::PublicKey::try_from_bytes(vk.as_bytes()).ok()?;
    Some(PublicKey::from(ed).to_peer_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_vector() {
        let id = Identity::from_seed([1u8; 32], "a_t");
        let peer = keypair(&id).public().to_peer_id();
        assert_eq!(server_name_of(&peer).as_deref(), Some(id.server_name()));
        assert_eq!(peer_id_of(id.server_name()), Some(peer));
        // The vector proto/README.md documents.
        assert_eq!(
            id.server_name().as_str(),
            "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
        );
        assert_eq!(
            peer.to_string(),
            "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5"
        );
        // Signatures agree byte for byte.
        use ruma::signatures::KeyPair;
        let msg = b"meshserver";
        let a = keypair(&id).sign(msg).unwrap();
        let b = id.sign(msg);
        assert_eq!(a.as_slice(), b.as_bytes());
    }

    #[test]
    fn foreign_names_have_no_peer() {
        assert!(peer_id_of(ServerName::parse("example.org").unwrap().as_ref()).is_none());
        let rsa_like = PeerId::random();
        assert!(server_name_of(&rsa_like).is_none());
    }
}
