//! Two (and three) nodes, each with its own SQLite file and key, exchanging PDUs through
//! `ingest` exactly as the peer layer will hand them over.

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};

use super::Outcome;
use crate::identity::Identity;
use crate::room::NewEvent;
use crate::testkit::{Node, bare, gossip};

impl Node {
    async fn extremities(&self, room: &OwnedRoomId) -> Vec<String> {
        let room = room.to_string();
        self.db
            .read(move |c| crate::storage::events::forward_extremities(c, &room))
            .await
            .unwrap()
    }

    async fn soft_failed(&self, event_id: &str) -> bool {
        let event_id = event_id.to_owned();
        self.db
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT soft_failed FROM events WHERE event_id = ?1",
                    [event_id],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap()
    }
}

fn all_stored(outcomes: &[Outcome]) {
    for o in outcomes {
        assert!(
            matches!(
                o,
                Outcome::Stored {
                    soft_failed: false,
                    ..
                }
            ),
            "unexpected outcome {o:?}"
        );
    }
}

fn member(membership: &str) -> Value {
    json!({"membership": membership})
}

/// `user` of node `at` joins `room`, and `at` tells `to` about it; every event must be stored.
async fn join_and_tell(at: &Node, to: &Node, room: &OwnedRoomId, user: &OwnedUserId) {
    at.send(
        room,
        user,
        NewEvent::state("m.room.member", user.as_str(), member("join")),
    )
    .await;
    all_stored(&gossip(at, to).await);
}

/// A copy of `json` with fresh hashes and a signature by `signer` under `server`'s name.
fn resign(json: &CanonicalJsonObject, server: &str, signer: &Identity) -> CanonicalJsonObject {
    let mut out = json.clone();
    out.remove("signatures");
    out.remove("hashes");
    ruma::signatures::hash_and_sign_event(
        server,
        signer,
        &mut out,
        &ruma::room_version_rules::RoomVersionRules::V12.redaction,
    )
    .unwrap();
    out
}

#[tokio::test]
async fn a_room_replicates_and_both_nodes_write_into_it() {
    let (a, b) = (bare(1), bare(2));
    let (alice, bob) = (a.user("alice"), b.user("bob"));
    let room = a
        .create(&alice, json!({"preset": "public_chat", "name": "mesh"}))
        .await;
    let first = gossip(&a, &b).await;
    assert!(first.len() >= 5);
    all_stored(&first);
    assert_eq!(a.state(&room).await, b.state(&room).await, "B holds A's state");

    join_and_tell(&b, &a, &room, &bob).await;
    // Both write at once: the DAG forks, and each node ends with both branches.
    a.send(
        &room,
        &alice,
        NewEvent::message("m.room.message", json!({"body": "from a"})),
    )
    .await;
    b.send(
        &room,
        &bob,
        NewEvent::message("m.room.message", json!({"body": "from b"})),
    )
    .await;
    all_stored(&gossip(&a, &b).await);
    all_stored(&gossip(&b, &a).await);
    assert_eq!(a.extremities(&room).await.len(), 2);
    assert_eq!(a.extremities(&room).await, b.extremities(&room).await);
    // The next event merges the fork.
    a.send(
        &room,
        &alice,
        NewEvent::message("m.room.message", json!({"body": "merge"})),
    )
    .await;
    all_stored(&gossip(&a, &b).await);
    assert_eq!(b.extremities(&room).await.len(), 1);
    assert_eq!(a.state(&room).await, b.state(&room).await);
    // B records its local user's membership from the replicated state.
    let m: String =
        b.db.read({
            let (bob, room) = (bob.to_string(), room.to_string());
            move |c| {
                Ok(c.query_row(
                    "SELECT membership FROM local_membership WHERE user_id = ?1 AND room_id = ?2",
                    [bob, room],
                    |r| r.get(0),
                )?)
            }
        })
        .await
        .unwrap();
    assert_eq!(m, "join");
}

#[tokio::test]
async fn concurrent_state_changes_converge_on_every_node() {
    let (a, b, c) = (bare(1), bare(2), bare(3));
    let (alice, bob) = (a.user("alice"), b.user("bob"));
    let room = a
        .create(
            &alice,
            json!({"preset": "public_chat", "power_level_content_override": {"users": {bob.as_str(): 100}}}),
        )
        .await;
    all_stored(&gossip(&a, &b).await);
    join_and_tell(&b, &a, &room, &bob).await;
    // A and B rename the room and change power levels without hearing each other.
    a.send(
        &room,
        &alice,
        NewEvent::state("m.room.name", "", json!({"name": "alpha"})),
    )
    .await;
    b.send(
        &room,
        &bob,
        NewEvent::state("m.room.name", "", json!({"name": "beta"})),
    )
    .await;
    b.send(
        &room,
        &bob,
        NewEvent::state(
            "m.room.power_levels",
            "",
            json!({"users": {bob.as_str(): 100}, "state_default": 50, "events_default": 0}),
        ),
    )
    .await;
    // Exchange in different orders: A←B, B←A, then C learns from B only.
    gossip(&b, &a).await;
    gossip(&a, &b).await;
    gossip(&b, &c).await;
    let (sa, sb, sc) = (a.state(&room).await, b.state(&room).await, c.state(&room).await);
    assert_eq!(sa, sb, "A and B resolve to the same state");
    assert_eq!(sb, sc, "C, which only talked to B, agrees");
    assert_eq!(a.extremities(&room).await, c.extremities(&room).await);
}

#[tokio::test]
async fn forged_and_unauthorised_events_are_rejected() {
    let (a, b, c) = (bare(1), bare(2), bare(3));
    let alice = a.user("alice");
    let room = a.create(&alice, json!({"preset": "public_chat"})).await;
    let msg = a
        .send(
            &room,
            &alice,
            NewEvent::message("m.room.message", json!({"body": "hi"})),
        )
        .await
        .event_id
        .to_string();
    let pdus = a.pdus().await;
    let (_, original) = pdus.iter().find(|(id, _)| *id == msg).unwrap().clone();

    // A room B has never heard of: refused, not stored.
    assert!(matches!(
        b.ingest(original.clone()).await,
        Outcome::Rejected { .. }
    ));
    // Holding the room but not the event just before the message, B reports it missing.
    let prev = pdus[pdus.len() - 2].0.clone();
    for (id, json) in &pdus {
        if *id != msg && *id != prev {
            all_stored(&[b.ingest(json.clone()).await]);
        }
    }
    match b.ingest(original.clone()).await {
        Outcome::Missing(m) => assert_eq!(
            m.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            vec![prev.clone()]
        ),
        o => panic!("expected the prev event reported missing, got {o:?}"),
    }
    all_stored(&[b.ingest(pdus[pdus.len() - 2].1.clone()).await]);

    // A broken signature: rejected.
    let mut bad_sig = original.clone();
    let sigs = serde_json::to_value(&bad_sig["signatures"]).unwrap();
    let server = a.id.server_name().to_string();
    let key_id = sigs[&server].as_object().unwrap().keys().next().unwrap().clone();
    let forged = "A".repeat(86);
    bad_sig.insert(
        "signatures".into(),
        serde_json::from_value(json!({server.clone(): {key_id: forged}})).unwrap(),
    );
    assert!(matches!(b.ingest(bad_sig).await, Outcome::Rejected { .. }));

    // Signed by another key under A's name: rejected (the name is the key).
    let impostor = resign(&original, &server, &Identity::from_seed([9; 32], "a_t"));
    assert!(matches!(b.ingest(impostor).await, Outcome::Rejected { .. }));

    // Content changed after signing: the hash no longer matches, so per the spec only the
    // redacted form is kept — the altered text is never stored.
    let mut tampered = original.clone();
    tampered.insert(
        "content".into(),
        serde_json::from_value(json!({"body": "altered"})).unwrap(),
    );
    match b.ingest(tampered).await {
        Outcome::Stored { event_id, .. } => {
            let json: String =
                b.db.read(move |c| {
                    Ok(c.query_row(
                        "SELECT json FROM events WHERE event_id = ?1",
                        [event_id.as_str()],
                        |r| r.get(0),
                    )?)
                })
                .await
                .unwrap();
            assert!(!json.contains("altered"), "tampered content stored: {json}");
        }
        o => panic!("expected the redacted form to be stored, got {o:?}"),
    }

    // A well-signed event from a server with no member in the room: not authorised.
    let carol = c.user("carol");
    let mut from_carol = original.clone();
    from_carol.insert("sender".into(), CanonicalJsonValue::String(carol.to_string()));
    let intruder = resign(&from_carol, c.id.server_name().as_str(), &c.id);
    assert!(
        matches!(b.ingest(intruder).await, Outcome::Rejected { .. }),
        "non-member's event accepted"
    );

    // Garbage: rejected, nothing stored.
    let garbage: CanonicalJsonObject = serde_json::from_value(json!({"type": 5})).unwrap();
    assert!(matches!(b.ingest(garbage).await, Outcome::Rejected { .. }));

    // The event ID covers only the redacted form, so the tampered copy *was* this event:
    // the genuine copy is now known (and served redacted, never altered).
    assert_eq!(
        b.ingest(original).await,
        Outcome::AlreadyKnown(msg.as_str().try_into().unwrap())
    );
}

#[tokio::test]
async fn an_event_the_current_state_forbids_is_soft_failed() {
    let (a, b) = (bare(1), bare(2));
    let (alice, bob) = (a.user("alice"), b.user("bob"));
    let room = a.create(&alice, json!({"preset": "public_chat"})).await;
    all_stored(&gossip(&a, &b).await);
    join_and_tell(&b, &a, &room, &bob).await;
    // Alice bans bob while bob, not yet told, writes on his branch.
    a.send(
        &room,
        &alice,
        NewEvent::state("m.room.member", bob.as_str(), member("ban")),
    )
    .await;
    let late = b
        .send(
            &room,
            &bob,
            NewEvent::message("m.room.message", json!({"body": "late"})),
        )
        .await
        .event_id
        .to_string();
    gossip(&b, &a).await;
    assert!(
        a.soft_failed(&late).await,
        "A, where bob is banned, soft-fails his late message"
    );
    assert!(
        !a.extremities(&room).await.contains(&late),
        "a soft-failed event is no extremity"
    );
}

/// Found by the convergence fuzzer (tests/convergence, `--regressions`): a soft-failed
/// state event still takes part in the state of the events that build on it (server-server
/// spec, "Soft failure"), so an event it authorises is not rejected.
#[tokio::test]
async fn an_event_authorised_by_a_soft_failed_state_event_is_not_rejected() {
    let (a, b, c) = (bare(1), bare(2), bare(3));
    let (alice, bob, carol) = (a.user("alice"), b.user("bob"), c.user("carol"));
    let room = a.create(&alice, json!({"preset": "public_chat"})).await;
    all_stored(&gossip(&a, &b).await);
    all_stored(&gossip(&a, &c).await);
    join_and_tell(&b, &a, &room, &bob).await;
    join_and_tell(&c, &a, &room, &carol).await;
    let power = |users: Value| NewEvent::state("m.room.power_levels", "", json!({ "users": users }));
    a.send(&room, &alice, power(json!({bob.as_str(): 100}))).await;
    all_stored(&gossip(&a, &b).await);
    all_stored(&gossip(&a, &c).await);
    // Partition: on A alice (a creator: unlimited power in room v12) demotes bob; on B bob, still at 100 there, raises carol to 50.
    a.send(&room, &alice, power(json!({}))).await;
    let raise = b
        .send(&room, &bob, power(json!({bob.as_str(): 100, carol.as_str(): 50})))
        .await
        .event_id
        .to_string();
    all_stored(&gossip(&b, &c).await);
    // Carol, at 50 on C's branch, sets the topic (state_default 50).
    let topic = c
        .send(
            &room,
            &carol,
            NewEvent::state("m.room.topic", "", json!({"topic": "from carol"})),
        )
        .await
        .event_id
        .to_string();
    // A, where bob lost his power, soft-fails his change; carol's topic, built on it, is
    // authorised by the state before it (bob's change included) and must be stored.
    for o in gossip(&c, &a).await {
        assert!(
            matches!(o, Outcome::Stored { .. }),
            "every event of C's branch is stored on A, got {o:?}"
        );
    }
    assert!(a.soft_failed(&raise).await, "bob's change is soft-failed on A");
    let topic_known =
        a.db.read(move |c| crate::storage::replication::held(c, &[topic]))
            .await
            .unwrap();
    assert_eq!(topic_known.len(), 1, "carol's topic is stored on A");
}
