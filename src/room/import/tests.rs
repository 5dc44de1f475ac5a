//! Two and three nodes, each with its own SQLite file and key, joining and inviting through
//! the resident and invitee functions the peer layer calls, without the network.

mod invite;

use ruma::canonical_json::CanonicalJsonObject;
use ruma::{OwnedRoomId, OwnedUserId, RoomVersionId};
use serde_json::{Value, json};

use super::{JoinAnswer, import_join};
use crate::Result;
use crate::p2p::join::{remote, resident};
use crate::pdu::Pdu;
use crate::room::ingest::{Outcome, ingest};
use crate::room::{NewEvent, SUPPORTED_VERSIONS, rules_for, sign};
use crate::storage::events::{forward_extremities, room_events, stream_ordering_of};
use crate::storage::state::load_group;
use crate::storage::sync::state_group_at;
use crate::testkit::{Node, bare};

fn versions() -> Vec<String> {
    SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect()
}

impl Node {
    async fn make_join(
        &self,
        origin: &Node,
        room: &str,
        user: &OwnedUserId,
    ) -> Result<(RoomVersionId, Value)> {
        let (id, origin, room, user) = (
            self.id.clone(),
            origin.id.server_name().to_owned(),
            room.to_owned(),
            user.to_string(),
        );
        self.db
            .read(move |c| resident::make_join(c, &id, &origin, &room, &user, &versions()))
            .await
    }

    async fn send_join(
        &self,
        origin: &Node,
        room: &OwnedRoomId,
        event: CanonicalJsonObject,
    ) -> Result<JoinAnswer> {
        let (id, origin, rid) = (
            self.id.clone(),
            origin.id.server_name().to_owned(),
            room.to_string(),
        );
        let version = self
            .db
            .read({
                let rid = rid.clone();
                move |c| crate::room::room_version(c, &rid)
            })
            .await?;
        let a = self
            .db
            .write(move |tx| resident::send_join(tx, &id, &origin, &rid, event))
            .await?;
        Ok(JoinAnswer {
            room_version: version,
            event: a.event,
            state: a.state,
            auth_chain: a.auth_chain,
        })
    }

    async fn import(&self, answer: JoinAnswer) -> Result<Pdu> {
        let id = self.id.clone();
        self.db.write(move |tx| import_join(tx, &id, answer)).await
    }

    /// The join `user` of this node signs from `resident`'s template.
    async fn signed_join(&self, resident: &Node, room: &OwnedRoomId, user: &OwnedUserId) -> Pdu {
        let (version, template) = resident.make_join(self, room.as_str(), user).await.unwrap();
        let (_, unsigned) = remote::own_join(template, user, room.as_str(), (None, None), None).unwrap();
        sign(&self.id, &rules_for(&version).unwrap(), unsigned).unwrap()
    }

    /// `user` of this node joins `room` through `resident`, the whole exchange.
    async fn join_through(&self, resident: &Node, room: &OwnedRoomId, user: &OwnedUserId) -> Pdu {
        let join = self.signed_join(resident, room, user).await;
        let answer = resident.send_join(self, room, join.json).await.unwrap();
        self.import(answer).await.unwrap()
    }

    async fn room_known(&self, room: &OwnedRoomId) -> bool {
        let room = room.to_string();
        self.db
            .read(move |c| crate::storage::rooms::room_exists(c, &room))
            .await
            .unwrap()
    }

    async fn local_membership(&self, user: &OwnedUserId, room: &OwnedRoomId) -> Option<String> {
        let (user, room) = (user.to_string(), room.to_string());
        self.db
            .read(move |c| crate::storage::rooms::local_membership(c, &user, &room))
            .await
            .unwrap()
            .map(|m| m.membership)
    }
}

/// A node's timeline of a room, as /sync and /messages read it.
async fn timeline(n: &Node, room: &OwnedRoomId) -> Vec<String> {
    let room = room.to_string();
    n.db.read(move |c| room_events(c, &room, 0, i64::MAX, false, 1000))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.pdu.event_id.to_string())
        .collect()
}

#[tokio::test]
async fn a_join_through_the_resident_brings_the_whole_state_and_only_the_join_to_the_timeline() {
    let (a, b) = (bare(1), bare(2));
    let (alice, bob) = (a.register("alice").await, b.register("bob").await);
    let room = a
        .create(
            &alice,
            json!({"preset": "public_chat", "name": "mesh", "topic": "t"}),
        )
        .await;
    a.send(
        &room,
        &alice,
        NewEvent::message("m.room.message", json!({"body": "hi"})),
    )
    .await;
    a.send(
        &room,
        &alice,
        NewEvent::state("m.room.name", "", json!({"name": "renamed"})),
    )
    .await;
    let before_join = a.state(&room).await;

    let join = b.signed_join(&a, &room, &bob).await;
    let mut answer = a.send_join(&b, &room, join.json.clone()).await.unwrap();
    assert_eq!(answer.state.len(), before_join.len(), "the state before the join");
    // Whatever order the resident sends, the importer orders by the auth DAG.
    answer.state.reverse();
    answer.auth_chain.reverse();
    let stored = b.import(answer).await.unwrap();
    assert_eq!(stored.event_id, join.event_id);

    assert_eq!(
        a.state(&room).await,
        b.state(&room).await,
        "both nodes agree on the state"
    );
    assert_eq!(b.local_membership(&bob, &room).await.as_deref(), Some("join"));
    assert_eq!(
        timeline(&b, &room).await,
        vec![join.event_id.to_string()],
        "outliers stay out of the timeline"
    );
    let (rid, jid) = (room.to_string(), join.event_id.to_string());
    let (extremities, sync_state) =
        b.db.read(move |c| {
            let pos = stream_ordering_of(c, &jid)?.unwrap();
            let group = state_group_at(c, &rid, pos - 1)?.unwrap();
            Ok((forward_extremities(c, &rid)?, load_group(c, group)?))
        })
        .await
        .unwrap();
    assert_eq!(extremities, vec![join.event_id.to_string()]);
    assert_eq!(
        sync_state, before_join,
        "/sync shows the state the join was made on"
    );

    // The room is live on B: B's user writes, and A accepts it.
    let msg = b
        .send(
            &room,
            &bob,
            NewEvent::message("m.room.message", json!({"body": "from b"})),
        )
        .await;
    let outcome = a.db.write({
        let (id, json) = (a.id.clone(), msg.json.clone());
        move |tx| ingest(tx, &id, json)
    });
    assert!(matches!(
        outcome.await.unwrap(),
        Outcome::Stored {
            soft_failed: false,
            ..
        }
    ));
}

#[tokio::test]
async fn a_third_node_joins_through_a_node_that_did_not_create_the_room() {
    let (a, b, c) = (bare(1), bare(2), bare(3));
    let (alice, bob, carol) = (
        a.register("alice").await,
        b.register("bob").await,
        c.register("carol").await,
    );
    let room = a
        .create(&alice, json!({"preset": "public_chat", "name": "mesh"}))
        .await;
    let bob_join = b.join_through(&a, &room, &bob).await;
    let carol_join = c.join_through(&b, &room, &carol).await;
    // A learns of carol's join as gossip would hand it over.
    let outcome = a.db.write({
        let (id, json) = (a.id.clone(), carol_join.json.clone());
        move |tx| ingest(tx, &id, json)
    });
    assert!(matches!(
        outcome.await.unwrap(),
        Outcome::Stored {
            soft_failed: false,
            ..
        }
    ));
    assert_eq!(b.state(&room).await, c.state(&room).await);
    assert_eq!(a.state(&room).await, c.state(&room).await);
    assert!(carol_join.prev_events.contains(&bob_join.event_id));
}

#[tokio::test]
async fn answers_that_do_not_check_out_are_refused_and_leave_nothing_behind() {
    let (a, b) = (bare(1), bare(2));
    let (alice, bob) = (a.register("alice").await, b.register("bob").await);
    let room = a
        .create(&alice, json!({"preset": "public_chat", "name": "mesh"}))
        .await;
    let join = b.signed_join(&a, &room, &bob).await;
    let answer = a.send_join(&b, &room, join.json.clone()).await.unwrap();
    let is = |j: &CanonicalJsonObject, kind: &str| j.get("type").and_then(|t| t.as_str()) == Some(kind);

    // An auth event missing from the answer.
    let mut missing = answer.clone();
    missing.state.retain(|j| !is(j, "m.room.power_levels"));
    missing.auth_chain.retain(|j| !is(j, "m.room.power_levels"));
    // Another room version than the create event names (its events do not even parse so).
    let mut version = answer.clone();
    version.room_version = RoomVersionId::V11;
    // A state event correctly signed by B, by a user not in the room: not authorised by
    // its own auth events.
    let mut forged = answer.clone();
    let intruder =
        b.db.read({
            let (id, bob, room) = (b.id.clone(), bob.clone(), room.clone());
            let auth: Vec<String> = answer
                .state
                .iter()
                .filter(|j| is(j, "m.room.power_levels"))
                .map(|j| {
                    crate::pdu::event_id_of(j, &ruma::room_version_rules::RoomVersionRules::V12).unwrap()
                })
                .map(|e| e.to_string())
                .collect();
            move |_| {
                let ev = json!({
                    "auth_events": auth, "content": {"name": "taken"}, "depth": 3,
                    "origin_server_ts": 1, "prev_events": [], "room_id": room, "sender": bob,
                    "state_key": "", "type": "m.room.name",
                });
                sign(&id, &rules_for(&RoomVersionId::V12)?, ev)
            }
        })
        .await
        .unwrap();
    forged.state.retain(|j| !is(j, "m.room.name"));
    forged.state.push(intruder.json.clone());
    // The join of a user of another node.
    let mut foreign = answer.clone();
    let alice_member = a.state(&room).await[&("m.room.member".to_owned(), alice.to_string())].clone();
    foreign.event = pdu_json(&a, alice_member).await;

    for (what, bad) in [
        ("missing", missing),
        ("version", version),
        ("forged", forged),
        ("foreign", foreign),
    ] {
        let err = b.import(bad).await.expect_err(what);
        assert_eq!(err.errcode, "M_FORBIDDEN", "{what}: {}", err.message);
        assert!(
            !b.room_known(&room).await,
            "{what}: nothing of the room is stored"
        );
    }
    // The honest answer still imports.
    b.import(answer).await.unwrap();
    assert!(b.room_known(&room).await);
}

/// The stored PDU of an event ID.
async fn pdu_json(n: &Node, event_id: String) -> CanonicalJsonObject {
    n.db.read(move |c| Ok(crate::storage::events::get_pdu(c, &event_id).unwrap().json))
        .await
        .unwrap()
}

#[tokio::test]
async fn the_resident_refuses_what_the_requesting_node_may_not_ask() {
    let (a, b, c) = (bare(1), bare(2), bare(3));
    let (alice, bob) = (a.register("alice").await, b.register("bob").await);
    let room = a
        .create(&alice, json!({"preset": "public_chat", "name": "mesh"}))
        .await;
    let code = |r: Result<(RoomVersionId, Value)>| r.map(|_| ()).unwrap_err().errcode;
    // C asks a template for B's user.
    assert_eq!(code(a.make_join(&c, room.as_str(), &bob).await), "M_FORBIDDEN");
    assert_eq!(
        code(a.make_join(&b, "!nowhere:example.org", &bob).await),
        "M_NOT_FOUND"
    );
    let old = a.db.read({
        let (id, origin, room, bob) = (
            a.id.clone(),
            b.id.server_name().to_owned(),
            room.to_string(),
            bob.to_string(),
        );
        move |c| resident::make_join(c, &id, &origin, &room, &bob, &["9".to_owned()])
    });
    assert_eq!(code(old.await), "M_INCOMPATIBLE_ROOM_VERSION");

    // A join signed by B, relayed by C: C cannot speak for B's users.
    let join = b.signed_join(&a, &room, &bob).await;
    let err = a.send_join(&c, &room, join.json.clone()).await.unwrap_err();
    assert_eq!(err.errcode, "M_FORBIDDEN");
    // A join B did not sign, claiming B's user.
    let forged = c.db.read({
        let (id, json) = (c.id.clone(), join.json.clone());
        move |_| {
            let mut v = serde_json::to_value(json)?;
            let o = v.as_object_mut().unwrap();
            o.remove("signatures");
            o.remove("hashes");
            sign(&id, &rules_for(&RoomVersionId::V12)?, v)
        }
    });
    let err = a
        .send_join(&b, &room, forged.await.unwrap().json)
        .await
        .unwrap_err();
    assert_eq!(err.errcode, "M_FORBIDDEN", "{}", err.message);
    assert!(
        !a.state(&room)
            .await
            .contains_key(&("m.room.member".to_owned(), bob.to_string()))
    );
}
