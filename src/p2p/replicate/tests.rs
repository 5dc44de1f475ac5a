//! The pure parts of replication (frame parsing, the visibility rule, dependency order)
//! and, on real SQLite files, what a server may read of a room.

use ruma::OwnedRoomId;
use ruma::canonical_json::CanonicalJsonObject;
use serde_json::{Value, json};

use super::fetch::{dependency_order, keyed};
use super::gossip::{Frame, edu_origin_ok, parse};
use super::serving::{self, Refusal};
use super::view::{ServerView, Setting, server_may_see};
use crate::p2p::wire::{Edu, MAX_GOSSIP_BYTES, Response, WirePdu, encode_edu, encode_gossip};
use crate::room::NewEvent;
use crate::storage::events::get_event;
use crate::testkit::{Node, bare};

fn obj(v: Value) -> CanonicalJsonObject {
    serde_json::from_value(v).unwrap()
}

#[test]
fn frames_are_split_and_bounded() {
    let pdu = obj(json!({"room_id": "!r:x", "type": "m.room.message", "content": {}}));
    match parse(&encode_gossip("$abc", &pdu)) {
        Frame::Pdu {
            claimed_id, room_id, ..
        } => assert_eq!((claimed_id.as_str(), room_id.as_str()), ("$abc", "!r:x")),
        f => panic!("expected a PDU frame, got {f:?}"),
    }
    let edu = Edu::Typing {
        room_id: "!r:x".into(),
        user_id: "@u:x".into(),
        typing: true,
        ts: 1,
    };
    assert_eq!(parse(&encode_edu(&edu)), Frame::Edu(edu));
    let create = obj(json!({"type": "m.room.create", "content": {}}));
    assert_eq!(parse(&encode_gossip("$c", &create)), Frame::Create);

    let mut huge = b"$abc\n{\"room_id\":\"!r:x\",\"pad\":\"".to_vec();
    huge.resize(MAX_GOSSIP_BYTES + 10, b'a');
    huge.extend_from_slice(b"\"}");
    for bad in [
        b"no newline".to_vec(),
        b"abc\n{}".to_vec(),                             // not an event ID
        b"$abc\nnot json".to_vec(),                      // not JSON
        b"$abc\n{\"type\":\"m.room.message\"}".to_vec(), // no room
        b"edu\n{\"edu_type\":\"m.nope\"}".to_vec(),      // unknown EDU
        huge,
    ] {
        assert_eq!(
            parse(&bad),
            Frame::Malformed,
            "{:?}",
            String::from_utf8_lossy(&bad[..20.min(bad.len())])
        );
    }
}

#[test]
fn an_edu_must_come_from_its_users_server() {
    let receipt = |user: &str| Edu::Receipt {
        room_id: "!r:a".into(),
        user_id: user.into(),
        receipt_type: "m.read".into(),
        event_id: "$e".into(),
        thread_id: None,
        ts: 0,
    };
    let a = ruma::ServerName::parse("aaaa").unwrap();
    assert!(edu_origin_ok(&receipt("@u:aaaa"), &a));
    assert!(!edu_origin_ok(&receipt("@u:bbbb"), &a));
    assert!(!edu_origin_ok(&receipt("not a user"), &a));
}

#[test]
fn the_server_visibility_rule() {
    let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(server_may_see(Setting::WorldReadable, &[], false));
    assert!(server_may_see(Setting::Shared, &m(&["leave"]), true));
    assert!(!server_may_see(Setting::Shared, &m(&["invite"]), false));
    assert!(server_may_see(Setting::Invited, &m(&["invite"]), false));
    assert!(server_may_see(Setting::Invited, &m(&["leave", "join"]), true));
    assert!(!server_may_see(Setting::Invited, &m(&["leave"]), true));
    assert!(server_may_see(Setting::Joined, &m(&["join"]), true));
    assert!(!server_may_see(Setting::Joined, &m(&["invite", "leave"]), true));
    assert_eq!(Setting::parse(Some("bogus")), Setting::Shared);
    assert_eq!(Setting::parse(None), Setting::Shared);
}

#[test]
fn dependencies_come_first() {
    let ev = |id: &str, prev: &[&str], auth: &[&str], depth: i64| {
        (
            id.to_owned(),
            obj(json!({"prev_events": prev, "auth_events": auth, "depth": depth})),
        )
    };
    // Shuffled, with lying depths: the edges decide, not the depth.
    let items = vec![
        ev("$d", &["$c"], &["$a"], 1),
        ev("$b", &["$a"], &["$a"], 9),
        ev("$c", &["$b", "$x"], &["$a"], 2),
        ev("$a", &[], &[], 5),
        // A cycle only a forger makes: placed last, not lost.
        ev("$y", &["$z"], &[], 0),
        ev("$z", &["$y"], &[], 0),
    ];
    let order: Vec<String> = dependency_order(items).into_iter().map(|(id, _)| id).collect();
    assert_eq!(&order[..4], &["$a", "$b", "$c", "$d"]);
    assert_eq!(order.len(), 6);
}

// ---- On real databases: what a server may read.

impl Node {
    /// Runs one serving function on a reader; `Err` when it refused.
    async fn ask(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> serving::Answer + Send + 'static,
    ) -> std::result::Result<Response, &'static str> {
        match self.db.read(move |c| Ok(f(c))).await.unwrap() {
            Ok(r) => Ok(r),
            Err(Refusal::Forbidden) => Err("forbidden"),
            Err(Refusal::Other(e)) => panic!("serving failed: {}", e.message),
        }
    }
}

fn bodies(pdus: &[WirePdu]) -> Vec<String> {
    pdus.iter()
        .filter_map(|p| {
            let v = serde_json::to_value(p).ok()?;
            v["content"]["body"].as_str().map(str::to_owned)
        })
        .collect()
}

/// A room on A with `history_visibility` `joined`: a message before B's user joins, one
/// after. Returns (A, B, C, room, message before, message after).
async fn joined_only_room() -> (Node, Node, Node, OwnedRoomId, String, String) {
    let (a, b, c) = (bare(1), bare(2), bare(3));
    let (alice, bob) = (a.user("alice"), b.user("bob"));
    let room = a
        .create(
            &alice,
            json!({"preset": "public_chat", "initial_state": [
                {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}
            ]}),
        )
        .await;
    let before = a
        .send(
            &room,
            &alice,
            NewEvent::message("m.room.message", json!({"body": "before"})),
        )
        .await
        .event_id
        .to_string();
    b.take_all(&a).await;
    b.send(
        &room,
        &bob,
        NewEvent::state("m.room.member", bob.as_str(), json!({"membership": "join"})),
    )
    .await;
    a.take_all(&b).await;
    let after = a
        .send(
            &room,
            &alice,
            NewEvent::message("m.room.message", json!({"body": "after"})),
        )
        .await
        .event_id
        .to_string();
    (a, b, c, room, before, after)
}

#[tokio::test]
async fn servers_see_what_their_users_could() {
    let (a, b, c, room, before, after) = joined_only_room().await;
    let (bs, cs) = (b.id.server_name().to_owned(), c.id.server_name().to_owned());
    let r = room.to_string();
    let seen =
        a.db.read(move |conn| {
            assert!(ServerView::open(conn, &r, &cs)?.is_none(), "C has no member");
            let mut view = ServerView::open(conn, &r, &bs)?.expect("B has a member");
            let see = |v: &mut ServerView<'_>, id: &str| v.can_see(&get_event(conn, id)?.expect("held"));
            Ok((see(&mut view, &before)?, see(&mut view, &after)?))
        })
        .await
        .unwrap();
    assert_eq!(
        seen,
        (false, true),
        "joined-only history: B sees only what followed its join"
    );
}

#[tokio::test]
async fn missing_events_are_served_oldest_first_and_redacted_where_hidden() {
    let (a, b, c, room, _before, after) = joined_only_room().await;
    let (bs, cs) = (b.id.server_name().to_owned(), c.id.server_name().to_owned());
    let (r, latest) = (room.to_string(), vec![after.clone()]);
    // Everything before `after`, back to the start: create first, the hidden message
    // present (the DAG stays whole) but without its body.
    let res = a
        .ask(move |conn| serving::missing(conn, &bs, &r, &[], &latest, 1000))
        .await;
    let Ok(Response::Events { pdus }) = res else {
        panic!("expected events, got {res:?}");
    };
    assert_eq!(
        pdus[0]["type"],
        ruma::canonical_json::CanonicalJsonValue::String("m.room.create".into())
    );
    assert!(
        bodies(&pdus).is_empty(),
        "hidden message leaked: {:?}",
        bodies(&pdus)
    );
    assert!(pdus.len() >= 6, "{} events", pdus.len());

    // Backfill from `after`: newest first, `after` itself readable.
    let (r, from, bs) = (
        room.to_string(),
        vec![after.clone()],
        b.id.server_name().to_owned(),
    );
    let res = a
        .ask(move |conn| serving::backfill(conn, &bs, &r, &from, 2))
        .await;
    let Ok(Response::Events { pdus }) = res else {
        panic!("expected events, got {res:?}");
    };
    assert_eq!(pdus.len(), 2);
    assert_eq!(bodies(&pdus[..1]), vec!["after".to_owned()]);

    // C, with no member, gets nothing of it.
    for req in 0..4 {
        let (r, cs, after) = (room.to_string(), cs.clone(), after.clone());
        let res = a
            .ask(move |conn| {
                let ids = vec![after.clone()];
                match req {
                    0 => serving::missing(conn, &cs, &r, &[], &ids, 10),
                    1 => serving::backfill(conn, &cs, &r, &ids, 10),
                    2 => serving::state(conn, &cs, &r, &after, true),
                    _ => serving::events(conn, &cs, &ids),
                }
            })
            .await;
        assert_eq!(res, Err("forbidden"), "request {req} from a non-member");
    }
}

#[tokio::test]
async fn state_before_an_event_with_its_auth_chain() {
    let (a, b, _c, room, _before, after) = joined_only_room().await;
    let (bs, r, at) = (b.id.server_name().to_owned(), room.to_string(), after.clone());
    let res = a.ask(move |conn| serving::state(conn, &bs, &r, &at, true)).await;
    let Ok(Response::State {
        pdu_ids,
        auth_chain_ids,
        pdus,
        ..
    }) = res
    else {
        panic!("expected state, got {res:?}");
    };
    assert!(pdus.is_empty(), "ids_only returns IDs only");
    let state = a.db.read({
        let r = room.to_string();
        move |c| crate::storage::state::current_state_ids(c, &r)
    });
    let mut current: Vec<String> = state.await.unwrap().into_values().collect();
    current.sort();
    // Before a message, the state is the room's current state here.
    assert_eq!(pdu_ids, current);
    assert!(!auth_chain_ids.is_empty());

    // And in full: every state event, each verifiable by the ID it is listed under.
    let (bs, r) = (b.id.server_name().to_owned(), room.to_string());
    let res = a
        .ask(move |conn| serving::state(conn, &bs, &r, &after, false))
        .await;
    let Ok(Response::State { pdus, auth_chain, .. }) = res else {
        panic!("expected state, got {res:?}");
    };
    let rules = ruma::room_version_rules::RoomVersionRules::V12;
    let ids = |pdus: Vec<WirePdu>| {
        let mut ids: Vec<String> = pdus
            .into_iter()
            .filter_map(|p| keyed(&rules, room.as_str(), p).map(|(id, _)| id))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(pdus), current);
    assert_eq!(ids(auth_chain), auth_chain_ids);
}
