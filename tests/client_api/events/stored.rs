//! What the node stores verifies as a real Matrix PDU: signatures, content hash, event ID.

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::signatures::Verified;
use ruma::{RoomVersionId, ServerName};
use serde_json::json;

use super::*;

/// `(event_id, json, redacted, room_version)` of every event in `room`, read from SQLite.
fn stored_events(n: &TestNode, room: &str) -> Vec<(String, String, bool, String)> {
    let db = rusqlite::Connection::open_with_flags(
        n.data_dir().join("meshserver.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open db");
    let mut stmt = db
        .prepare(
            "SELECT e.event_id, e.json, e.redacted_by IS NOT NULL, r.room_version FROM events e \
             JOIN rooms r ON r.room_id = e.room_id WHERE e.room_id = ?1 ORDER BY e.stream_ordering",
        )
        .expect("prepare");
    stmt.query_map([room], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn verify_room(n: &TestNode, room: &str) -> usize {
    let events = stored_events(n, room);
    let mut redacted_seen = 0;
    for (event_id, text, redacted, version) in &events {
        let object: CanonicalJsonObject = serde_json::from_str(text).expect("canonical JSON");
        let rules = RoomVersionId::try_from(version.as_str())
            .expect("version")
            .rules()
            .expect("rules");
        let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
            panic!("{event_id} has no signatures");
        };
        let servers: Vec<(ruma::OwnedServerName, Vec<String>)> = signatures
            .iter()
            .map(|(server, keys)| {
                let CanonicalJsonValue::Object(keys) = keys else {
                    panic!("bad signature map")
                };
                (
                    ServerName::parse(server).expect("server"),
                    keys.keys().cloned().collect(),
                )
            })
            .collect();
        let key_map = meshserver::identity::key_map_for(servers.iter().map(|(s, k)| (&**s, k.clone())));
        assert_eq!(key_map.len(), 1, "{event_id}: signed by this node only");
        let verified = ruma::signatures::verify_event(&key_map, &object, &rules)
            .unwrap_or_else(|e| panic!("{event_id} does not verify: {e}"));
        let id = meshserver::pdu::event_id_of(&object, &rules).expect("event ID");
        assert_eq!(id.as_str(), event_id, "stored under its reference hash");
        if *redacted {
            redacted_seen += 1;
            assert_eq!(
                verified,
                Verified::Signatures,
                "{event_id}: redacted content no longer hashes"
            );
        } else {
            assert_eq!(verified, Verified::All, "{event_id}");
            let Some(CanonicalJsonValue::Object(hashes)) = object.get("hashes") else {
                panic!("{event_id} has no hashes");
            };
            let hash = ruma::signatures::content_hash(&object).expect("hash");
            assert_eq!(
                hashes.get("sha256"),
                Some(&CanonicalJsonValue::String(hash.encode()))
            );
        }
    }
    assert!(events.len() > 8, "the room has its creation events and more");
    redacted_seen
}

#[tokio::test]
async fn every_stored_event_verifies() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    for version in ["10", "11", "12"] {
        let room = n
            .create_room(
                &alice,
                json!({"preset": "public_chat", "room_version": version, "name": "v"}),
            )
            .await;
        set_membership(&n, &bob, &room, "join").await;
        n.send_text(&bob, &room, "hello").await;
        let doomed = n.send_text(&alice, &room, "to be redacted").await;
        let (s, r) = n
            .put(
                &room_path(&room, &format!("redact/{}/r", enc(&doomed))),
                &alice.token,
                json!({}),
            )
            .await;
        assert_eq!(s, 200, "v{version}: {r}");
        let (_, ev) = n
            .get(
                &room_path(&room, &format!("event/{}", enc(&doomed))),
                &alice.token,
            )
            .await;
        assert_eq!(ev["content"], json!({}), "v{version}: {ev}");
        let res = n
            .state_put(&alice, &room, "m.room.topic", "", json!({"topic": "t"}))
            .await;
        assert_eq!(res.0, 200);
        assert_eq!(verify_room(&n, &room), 1, "v{version}: one redacted event");
    }
}
