//! Wire test vectors (proto/README.md quotes them): the byte-exact frames in
//! `proto/vectors/`, rebuilt here from fixed keys and timestamps, and the refusals a
//! receiver must make. `MESHSERVER_WRITE_VECTORS=1` rewrites the files from the code
//! instead of checking them: review the diff, since it changes the protocol.

mod refusals;
mod schema;

use std::path::PathBuf;

use ruma::{RoomId, RoomVersionId, UserId};
use serde_json::{Value, json};

use super::*;
use crate::identity::{Identity, key_map_for};
use crate::notifier::Notifier;
use crate::pdu::event_id_of;
use crate::room::ingest::{Outcome, ingest};
use crate::room::{NewEvent, build_unsigned, rules_for, sign};
use crate::storage::Db;

/// The example room's origin server (its name is the vector in src/p2p/peer_id.rs).
const ALICE_SEED: [u8; 32] = [1; 32];
/// The joining server of the make_join example.
const BOB_SEED: [u8; 32] = [2; 32];
/// Fixed timestamps (2023-11-14T22:13:20Z and after), so the vectors never change.
const TS: u64 = 1_700_000_000_000;

fn vector_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("proto/vectors")
        .join(name)
}

/// Asserts `actual` equals the vector file byte for byte (or writes it, see the module doc).
fn check_vector(name: &str, actual: &[u8]) {
    let path = vector_path(name);
    if std::env::var_os("MESHSERVER_WRITE_VECTORS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        expected == actual,
        "{name} differs from the code's encoding\n file: {}\n code: {}",
        String::from_utf8_lossy(&expected),
        String::from_utf8_lossy(actual)
    );
}

fn alice() -> Identity {
    Identity::from_seed(ALICE_SEED, "a_t")
}

fn bob() -> Identity {
    Identity::from_seed(BOB_SEED, "a_t")
}

fn user(id: &Identity, localpart: &str) -> String {
    format!("@{localpart}:{}", id.server_name())
}

/// The example room, as its creator's node built it: `(event ID, PDU)` of the create
/// event, the creator's join, `m.room.join_rules` = public, and one message.
struct ExampleRoom {
    room_id: String,
    events: Vec<(String, WirePdu)>,
}

impl ExampleRoom {
    fn build() -> ExampleRoom {
        let id = alice();
        let rules = rules_for(&RoomVersionId::V12).unwrap();
        let alice = user(&id, "alice");
        let signed = |v: Value| {
            let pdu = sign(&id, &rules, v).unwrap();
            (pdu.event_id.to_string(), pdu.room.to_string(), pdu.json)
        };
        // Room version 12: the create event has no room_id (its ID is the room's) and is
        // never listed in auth_events.
        let (create, room_id, create_pdu) = signed(json!({
            "type": "m.room.create", "state_key": "", "sender": alice,
            "content": {"room_version": "12"},
            "origin_server_ts": TS, "depth": 1, "prev_events": [], "auth_events": [],
        }));
        let (join, _, join_pdu) = signed(json!({
            "type": "m.room.member", "state_key": alice, "sender": alice, "room_id": room_id,
            "content": {"membership": "join"},
            "origin_server_ts": TS + 1, "depth": 2, "prev_events": [create], "auth_events": [],
        }));
        let (rules_ev, _, rules_pdu) = signed(json!({
            "type": "m.room.join_rules", "state_key": "", "sender": alice, "room_id": room_id,
            "content": {"join_rule": "public"},
            "origin_server_ts": TS + 2, "depth": 3, "prev_events": [join], "auth_events": [join],
        }));
        let (message, _, message_pdu) = signed(json!({
            "type": "m.room.message", "sender": alice, "room_id": room_id,
            "content": {"msgtype": "m.text", "body": "hello over the mesh"},
            "origin_server_ts": TS + 3, "depth": 4, "prev_events": [rules_ev], "auth_events": [join],
        }));
        ExampleRoom {
            room_id,
            events: vec![
                (create, create_pdu),
                (join, join_pdu),
                (rules_ev, rules_pdu),
                (message, message_pdu),
            ],
        }
    }

    fn message(&self) -> &(String, WirePdu) {
        &self.events[3]
    }

    /// The join template a resident node answers `@bob`'s make_join with.
    fn bob_join_template(&self) -> Value {
        json!({
            "type": "m.room.member", "state_key": user(&bob(), "bob"), "sender": user(&bob(), "bob"),
            "room_id": self.room_id, "content": {"membership": "join"},
            "origin_server_ts": TS + 4, "depth": 5,
            "prev_events": [self.message().0], "auth_events": [self.events[2].0],
        })
    }
}

#[test]
fn example_pdu_and_its_gossip_frame() {
    let room = ExampleRoom::build();
    let (event_id, pdu) = room.message();
    // On the wire a PDU is its canonical JSON: keys sorted, no insignificant whitespace.
    let canonical = serde_json::to_vec(pdu).unwrap();
    let ruma_canonical = ruma::canonical_json::CanonicalJsonValue::Object(pdu.clone()).to_string();
    assert_eq!(canonical, ruma_canonical.as_bytes());
    check_vector("pdu_message.json", &canonical);

    let frame = encode_gossip(event_id, pdu);
    check_vector("gossip_message.bin", &frame);
    assert_eq!(frame, [event_id.as_bytes(), b"\n", &canonical].concat());
    assert_eq!(decode_gossip(&frame), Some((event_id.clone(), pdu.clone())));
    assert_eq!(gossip_message_id(&frame), event_id.as_bytes());

    // What a receiver checks: the ID line is the reference hash of the body, and the
    // signature verifies with the key the sender's server name encodes.
    let rules = rules_for(&RoomVersionId::V12).unwrap();
    assert_eq!(event_id_of(pdu, &rules).unwrap().as_str(), event_id);
    let origin = alice();
    let keys = key_map_for([(origin.server_name(), vec![origin.key_id()])]);
    let verified = ruma::signatures::verify_event(&keys, pdu, &rules).unwrap();
    assert_eq!(verified, ruma::signatures::Verified::All);
    assert!(event_id.len() <= 255 && event_id.starts_with('$'));
}

#[test]
fn identity_vector() {
    let id = alice();
    let keypair = crate::p2p::peer_id::keypair(&id);
    let peer = keypair.public().to_peer_id();
    let doc = json!({
        "seed_hex": hex::encode(ALICE_SEED),
        "key_id": id.key_id(),
        "server_name": id.server_name().as_str(),
        "libp2p_public_key_protobuf_hex": hex::encode(keypair.public().encode_protobuf()),
        "peer_id_bytes_hex": hex::encode(peer.to_bytes()),
        "peer_id": peer.to_string(),
    });
    check_vector("identity.json", &serde_json::to_vec_pretty(&doc).unwrap());
    // The protobuf key is `08 01 12 20` + the 32-byte key; the PeerId is its identity
    // multihash `00 24` + those 36 bytes.
    let key_hex = id.server_name().as_str();
    assert_eq!(
        doc["libp2p_public_key_protobuf_hex"],
        format!("08011220{key_hex}")
    );
    assert_eq!(doc["peer_id_bytes_hex"], format!("002408011220{key_hex}"));
}

#[tokio::test]
async fn example_room_is_accepted_by_another_node() {
    let room = ExampleRoom::build();
    let doc: Vec<Value> = room
        .events
        .iter()
        .map(|(id, pdu)| json!({"event_id": id, "pdu": pdu}))
        .collect();
    check_vector(
        "room.json",
        &serde_json::to_vec_pretty(&json!({"room_id": room.room_id, "events": doc})).unwrap(),
    );

    // Bob's node takes the events as a second implementation would: from the file.
    let file: Value = serde_json::from_slice(&std::fs::read(vector_path("room.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), false, Notifier::default()).unwrap();
    for ev in file["events"].as_array().unwrap() {
        let pdu: WirePdu = serde_json::from_value(ev["pdu"].clone()).unwrap();
        let id = bob();
        let outcome = db.write(move |tx| ingest(tx, &id, pdu)).await.unwrap();
        match outcome {
            Outcome::Stored {
                event_id,
                soft_failed,
            } => {
                assert_eq!(event_id.as_str(), ev["event_id"]);
                assert!(!soft_failed);
            }
            o => panic!("{} not stored: {o:?}", ev["event_id"]),
        }
    }

    // The make_join template in the vector is what this room yields for @bob.
    let (room_id, bob_user) = (room.room_id.clone(), user(&bob(), "bob"));
    let (_, mut built) = db
        .read(move |c| {
            let rid = RoomId::parse(&room_id).unwrap();
            let uid = UserId::parse(&bob_user).unwrap();
            let ev = NewEvent::state("m.room.member", uid.as_str(), json!({"membership": "join"}));
            build_unsigned(c, &rid, &uid, ev)
        })
        .await
        .unwrap();
    built["origin_server_ts"] = json!(TS + 4);
    assert_eq!(built, room.bob_join_template());
}

#[test]
fn request_and_response_frames() {
    let room = ExampleRoom::build();
    let ids: Vec<String> = room.events.iter().map(|(id, _)| id.clone()).collect();
    let requests = [
        (
            "request_get_events.json",
            Request::GetEvents {
                event_ids: ids[1..3].to_vec(),
            },
        ),
        (
            "request_heads.json",
            Request::Heads {
                room_id: room.room_id.clone(),
                extremities: vec![ids[3].clone()],
            },
        ),
        (
            "request_make_join.json",
            Request::MakeJoin {
                room_id: room.room_id.clone(),
                user_id: user(&bob(), "bob"),
                supported_versions: crate::room::SUPPORTED_VERSIONS
                    .iter()
                    .map(|v| v.to_string())
                    .collect(),
            },
        ),
    ];
    for (name, req) in requests {
        let frame = encode(&req).unwrap();
        check_vector(name, &frame);
        assert_eq!(decode_request(req.protocol(), &frame).unwrap(), req);
    }
    let responses = [
        (
            "response_make_join.json",
            Response::MakeJoin {
                room_version: "12".into(),
                event: room.bob_join_template(),
            },
        ),
        ("response_ok.json", Response::Ok {}),
        (
            "response_error.json",
            Response::error("M_FORBIDDEN", "this server has no member in that room"),
        ),
    ];
    for (name, res) in responses {
        let frame = encode(&res).unwrap();
        check_vector(name, &frame);
        assert_eq!(serde_json::from_slice::<Response>(&frame).unwrap(), res);
    }
}

/// A `deposit` frame holding one mail item alice's node signed for bob's: the signature
/// is over the item's canonical JSON without `signatures`, and verifies from the name.
fn mail_item() -> MailItem {
    let body = json!({"sender": user(&alice(), "alice"), "type": "m.room_key", "message_id": "m1",
        "messages": {user(&bob(), "bob"): {"PHONE": {"algorithm": "m.megolm.v1.aes-sha2"}}}});
    let dest = bob().server_name().to_string();
    crate::p2p::mailbox::sign_item(&alice(), &dest, "to_device", body, "0f".repeat(16), TS).unwrap()
}

#[test]
fn mail_item_frame() {
    let req = Request::Deposit {
        items: vec![mail_item()],
    };
    let frame = encode(&req).unwrap();
    check_vector("request_deposit.json", &frame);
    assert_eq!(decode_request(Protocol::Mailbox, &frame).unwrap(), req);
    let Request::Deposit { items } = req else {
        unreachable!()
    };
    let origin = crate::p2p::mailbox::verify_item(&items[0]).unwrap();
    assert_eq!(origin, alice().server_name());
    let mut altered = items[0].clone();
    altered.ts += 1;
    assert!(crate::p2p::mailbox::verify_item(&altered).is_err());
}

#[test]
fn edu_frame() {
    let edu = Edu::Typing {
        room_id: ExampleRoom::build().room_id,
        user_id: user(&alice(), "alice"),
        typing: true,
        ts: TS + 5,
    };
    let frame = encode_edu(&edu);
    check_vector("edu_typing.bin", &frame);
    assert!(frame.starts_with(b"edu\n{\"edu_type\":\"m.typing\",\"content\":{"));
    assert_eq!(decode_edu(&frame), Some(edu));
    // Not an event ID line: EDUs are deduplicated by content hash.
    assert_eq!(gossip_message_id(&frame), blake3::hash(&frame).as_bytes());
    assert_eq!(decode_gossip(&frame), None);
}

#[test]
fn protocol_ids_and_topic() {
    let ids: Vec<&str> = Protocol::ALL.iter().map(|p| p.id()).collect();
    assert_eq!(
        ids,
        [
            "/meshserver/join/1",
            "/meshserver/invite/1",
            "/meshserver/events/1",
            "/meshserver/missing/1",
            "/meshserver/state/1",
            "/meshserver/backfill/1",
            "/meshserver/heads/1",
            "/meshserver/directory/1",
            "/meshserver/profile/1",
            "/meshserver/keys/1",
            "/meshserver/devices/1",
            "/meshserver/to-device/1",
            "/meshserver/reconcile/1",
            "/meshserver/mailbox/1",
        ]
    );
    for p in Protocol::ALL {
        assert_eq!(Protocol::from_id(p.id()), Some(p));
    }
    assert_eq!(Protocol::from_id("/meshserver/join/2"), None);
    let room = ExampleRoom::build().room_id;
    assert_eq!(room_topic(&room), format!("/meshserver/room/1/{room}"));
}
