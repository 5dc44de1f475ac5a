//! Room replication across real nodes: gossip both ways, typing and receipts, catching up
//! after a restart, forged events refused, and history kept from servers outside a room.

use std::time::{Duration, Instant};

use meshserver::p2p::wire::{Request, Response, encode_gossip};
use meshserver::room::{NewEvent, build_unsigned, sign};
use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::{OwnedServerName, RoomId, ServerName, UserId};
use serde_json::{Value, json};

use crate::common::{TestNode, User, enc};
use crate::net::{addrs, mesh, peer_count, start_in_with_peers, start_with_peers, wait_until};

const V3: &str = "/_matrix/client/v3";
const WAIT: Duration = Duration::from_secs(15);

fn server(node: &TestNode) -> OwnedServerName {
    ServerName::parse(node.server_name()).expect("server name")
}

fn services(node: &TestNode) -> &meshserver::services::AppState {
    &node.node.as_ref().expect("running").services
}

/// `user` of `node` joins `room` through `via`'s node, and `via` sees the join.
async fn join_via(node: &TestNode, user: &User, room: &str, via: &TestNode, via_user: &User) {
    let path = format!("{V3}/join/{}?server_name={}", enc(room), via.server_name());
    let (status, res) = node.post(&path, &user.token, json!({})).await;
    assert_eq!(status, 200, "join: {res}");
    let members = format!("{V3}/rooms/{}/joined_members", enc(room));
    wait_until(WAIT, || async {
        let (_, res) = via.get(&members, &via_user.token).await;
        res["joined"].get(&user.user_id).is_some()
    })
    .await;
}

/// Alice on `a` creates a public room and bob on `b` joins it.
async fn shared_room(a: &TestNode, b: &TestNode) -> (User, User, String) {
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, json!({"preset": "public_chat"})).await;
    join_via(b, &bob, &room, a, &alice).await;
    (alice, bob, room)
}

/// All message bodies of `room` as `user` reads them, oldest first.
async fn history(node: &TestNode, user: &User, room: &str) -> Vec<String> {
    let mut b = node.message_bodies(user, room, "dir=b&limit=1000").await;
    b.reverse();
    b
}

/// Syncs `user` (initial, then incremental long-polls) until `pred` holds for a response.
async fn sync_until(node: &TestNode, user: &User, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    let mut since: Option<String> = None;
    loop {
        let path = match &since {
            Some(t) => format!("{V3}/sync?timeout=500&since={}", enc(t)),
            None => format!("{V3}/sync"),
        };
        let (status, body) = node.get(&path, &user.token).await;
        assert_eq!(status, 200, "sync: {body}");
        if pred(&body) {
            return body;
        }
        assert!(start.elapsed() < WAIT, "sync never showed it; last: {body}");
        since = body["next_batch"].as_str().map(str::to_owned);
    }
}

fn room_part<'v>(sync: &'v Value, room: &str, part: &str) -> &'v Value {
    &sync["rooms"]["join"][room][part]["events"]
}

#[tokio::test]
async fn messages_cross_both_ways_into_sync() {
    let nodes = mesh(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let (alice, bob, room) = shared_room(a, b).await;

    a.send_text(&alice, &room, "from a").await;
    sync_until(b, &bob, |s| {
        crate::common::bodies(room_part(s, &room, "timeline")).contains(&"from a".into())
    })
    .await;
    b.send_text(&bob, &room, "from b").await;
    sync_until(a, &alice, |s| {
        crate::common::bodies(room_part(s, &room, "timeline")).contains(&"from b".into())
    })
    .await;
    assert_eq!(history(a, &alice, &room).await, history(b, &bob, &room).await);
}

#[tokio::test]
async fn typing_and_receipts_cross_nodes() {
    let nodes = mesh(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let (alice, bob, room) = shared_room(a, b).await;

    let path = format!("{V3}/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id));
    let (status, res) = b
        .put(&path, &bob.token, json!({"typing": true, "timeout": 10000}))
        .await;
    assert_eq!(status, 200, "{res}");
    sync_until(a, &alice, |s| {
        room_part(s, &room, "ephemeral").as_array().is_some_and(|evs| {
            evs.iter()
                .any(|e| e["type"] == "m.typing" && e["content"]["user_ids"] == json!([bob.user_id]))
        })
    })
    .await;

    let event = b.send_text(&bob, &room, "read me").await;
    let wait_for_event = || async { history(a, &alice, &room).await.contains(&"read me".to_owned()) };
    wait_until(WAIT, wait_for_event).await;
    let path = format!("{V3}/rooms/{}/receipt/m.read/{}", enc(&room), enc(&event));
    let (status, res) = a.post(&path, &alice.token, json!({})).await;
    assert_eq!(status, 200, "{res}");
    sync_until(b, &bob, |s| {
        room_part(s, &room, "ephemeral").as_array().is_some_and(|evs| {
            evs.iter().any(|e| {
                e["type"] == "m.receipt" && e["content"][&event]["m.read"].get(&alice.user_id).is_some()
            })
        })
    })
    .await;
}

#[tokio::test]
async fn a_restarted_node_gets_every_message_it_missed() {
    let a = start_with_peers(&[]).await;
    let b = start_with_peers(&addrs(&a).await).await;
    wait_until(WAIT, || async { peer_count(&b).await == 1 }).await;
    let (alice, bob, room) = shared_room(&a, &b).await;

    let mut b = b;
    b.node.take().expect("running").stop().await;
    // Stopped means off the network too, or this would test gossip, not catching up.
    wait_until(WAIT, || async { peer_count(&a).await == 0 }).await;
    let mut sent = Vec::new();
    for i in 0..30 {
        let body = format!("missed {i}");
        a.send_text(&alice, &room, &body).await;
        sent.push(body);
    }
    let started = Instant::now();
    let b = start_in_with_peers(b.dir, &addrs(&a).await).await;
    wait_until(WAIT, || async {
        let h = history(&b, &bob, &room).await;
        sent.iter().all(|m| h.contains(m))
    })
    .await;
    eprintln!("restarted node caught up in {:?}", started.elapsed());
    assert_eq!(history(&a, &alice, &room).await, history(&b, &bob, &room).await);
}

#[tokio::test]
async fn a_node_that_missed_gossip_fetches_the_gap() {
    let nodes = mesh(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let (alice, bob, room) = shared_room(a, b).await;
    // Off the room's topic, B hears none of these; only the repair path can bring them.
    services(b).p2p.unsubscribe(&room).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sent = Vec::new();
    for i in 0..40 {
        let body = format!("gap {i}");
        a.send_text(&alice, &room, &body).await;
        sent.push(body);
    }
    wait_until(WAIT, || async {
        let h = history(b, &bob, &room).await;
        sent.iter().all(|m| h.contains(m))
    })
    .await;
    services(b).p2p.subscribe(&room).await;
    assert_eq!(history(a, &alice, &room).await, history(b, &bob, &room).await);
}

/// A PDU signed by `signer` under `server`'s name.
fn signed_as(
    unsigned: Value,
    server: &ServerName,
    signer: &meshserver::identity::Identity,
) -> CanonicalJsonObject {
    let Ok(CanonicalJsonValue::Object(mut obj)) = ruma::canonical_json::to_canonical_value(unsigned) else {
        panic!("not an object");
    };
    let rules = ruma::room_version_rules::RoomVersionRules::V12;
    ruma::signatures::hash_and_sign_event(server.as_str(), signer, &mut obj, &rules.redaction).expect("sign");
    obj
}

fn event_id(pdu: &CanonicalJsonObject) -> String {
    let rules = ruma::room_version_rules::RoomVersionRules::V12;
    meshserver::pdu::event_id_of(pdu, &rules)
        .expect("event ID")
        .to_string()
}

async fn holds(node: &TestNode, id: &str) -> bool {
    let id = id.to_owned();
    services(node)
        .db
        .read(move |c| meshserver::storage::events::get_event(c, &id))
        .await
        .expect("read")
        .is_some()
}

#[tokio::test]
async fn forged_events_are_rejected_and_not_passed_on() {
    // C and the forger F know only A: what reaches C from F must come through A.
    let a = start_with_peers(&[]).await;
    let c = start_with_peers(&addrs(&a).await).await;
    let f = start_with_peers(&addrs(&a).await).await;
    wait_until(WAIT, || async { peer_count(&a).await == 2 }).await;
    let (alice, carol, room) = shared_room(&a, &c).await;

    // Templates built on A's view of the room, as a member's node would build them.
    let room_id = RoomId::parse(&room).expect("room id");
    let template = |sender: String, body: &str| {
        let room_id = room_id.clone();
        let content = json!({"msgtype": "m.text", "body": body});
        services(&a).db.read(move |conn| {
            let sender = UserId::parse(sender).expect("user");
            Ok(build_unsigned(
                conn,
                &room_id,
                &sender,
                NewEvent::message("m.room.message", content),
            )?
            .1)
        })
    };
    let f_id = services(&f).identity.clone();
    let mallory = format!("@mallory:{}", f.server_name());
    let rules = ruma::room_version_rules::RoomVersionRules::V12;
    // 1. Carol's name, F's key: a bad signature.
    let bad_sig = signed_as(
        template(carol.user_id.clone(), "one").await.expect("template"),
        &server(&c),
        &f_id,
    );
    // 2. Properly signed, sent under an ID that is not its reference hash.
    let misnamed = sign(
        &f_id,
        &rules,
        template(mallory.clone(), "two").await.expect("template"),
    )
    .expect("sign");
    let wrong_id = format!("${}", "A".repeat(43));
    // 3. Content changed after signing: a bad content hash.
    let mut tampered = sign(
        &f_id,
        &rules,
        template(mallory.clone(), "three").await.expect("template"),
    )
    .expect("sign")
    .json;
    tampered.insert(
        "content".into(),
        ruma::canonical_json::to_canonical_value(json!({"msgtype": "m.text", "body": "altered"}))
            .expect("json"),
    );
    // 4. Well signed, but mallory is no member: fails the auth rules.
    let unauthorised = sign(
        &f_id,
        &rules,
        template(mallory.clone(), "four").await.expect("template"),
    )
    .expect("sign");
    let frames = [
        (event_id(&bad_sig), encode_gossip(&event_id(&bad_sig), &bad_sig)),
        (
            misnamed.event_id.to_string(),
            encode_gossip(&wrong_id, &misnamed.json),
        ),
        (
            event_id(&tampered),
            encode_gossip(&event_id(&tampered), &tampered),
        ),
        (
            unauthorised.event_id.to_string(),
            encode_gossip(unauthorised.event_id.as_str(), &unauthorised.json),
        ),
    ];

    let p2p = &services(&f).p2p;
    p2p.subscribe(&room).await;
    // Let gossipsub tell A about F's subscription before publishing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (_, frame) in &frames {
        p2p.publish(&room, frame.clone()).await;
    }
    let rejected = || {
        services(&a)
            .p2p
            .counters
            .rejected_events
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait_until(WAIT, || async { rejected() >= 4 }).await;

    // A valid message still flows A → C, so silence about the forgeries is A's choice.
    a.send_text(&alice, &room, "genuine").await;
    wait_until(WAIT, || async {
        history(&c, &carol, &room).await.contains(&"genuine".to_owned())
    })
    .await;
    for (id, _) in &frames {
        assert!(!holds(&a, id).await, "A stored forged {id}");
        assert!(!holds(&c, id).await, "C received forged {id}");
    }
    let c_connected_to_f = services(&c)
        .p2p
        .info()
        .await
        .peers
        .iter()
        .any(|p| p.server_name.as_deref() == Some(f.server_name().as_str()));
    if !c_connected_to_f {
        let c_rejected = services(&c)
            .p2p
            .counters
            .rejected_events
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(c_rejected, 0, "A passed a forged event on to C");
    }
    // Nor can C fetch them from A.
    let ids: Vec<String> = frames.iter().map(|(id, _)| id.clone()).collect();
    let res = services(&c)
        .p2p
        .request(&server(&a), Request::GetEvents { event_ids: ids })
        .await;
    assert_eq!(res.expect("request"), Response::Events { pdus: vec![] });
}

#[tokio::test]
async fn a_server_outside_a_room_cannot_fetch_its_events() {
    let nodes = mesh(3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (alice, _bob, room) = shared_room(a, b).await;
    let secret = a.send_text(&alice, &room, "secret").await;
    let refused = || {
        services(a)
            .p2p
            .counters
            .refused_requests
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = refused();

    let requests = [
        Request::GetEvents {
            event_ids: vec![secret.clone()],
        },
        Request::GetMissing {
            room_id: room.clone(),
            earliest_events: vec![],
            latest_events: vec![secret.clone()],
            limit: 100,
        },
        Request::State {
            room_id: room.clone(),
            event_id: secret.clone(),
            ids_only: true,
        },
        Request::Backfill {
            room_id: room.clone(),
            from: vec![secret.clone()],
            limit: 100,
        },
    ];
    for req in &requests {
        match services(c).p2p.request(&server(a), req.clone()).await {
            Ok(Response::Error { errcode, .. }) => assert_eq!(errcode, "M_FORBIDDEN", "{req:?}"),
            other => panic!("{req:?} from a non-member answered: {other:?}"),
        }
    }
    assert_eq!(refused(), before + requests.len() as u64);

    // A member's server gets the event itself.
    match services(b).p2p.request(&server(a), requests[0].clone()).await {
        Ok(Response::Events { pdus }) => {
            assert_eq!(pdus.len(), 1);
            assert_eq!(
                pdus[0]["content"],
                ruma::canonical_json::to_canonical_value(json!({"msgtype": "m.text", "body": "secret"}))
                    .expect("json")
            );
        }
        other => panic!("member refused: {other:?}"),
    }
}

#[tokio::test]
async fn a_gap_reaching_back_before_the_join_is_jumped() {
    let nodes = mesh(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, json!({"preset": "public_chat"})).await;
    let mut old = Vec::new();
    for i in 0..3 {
        old.push(a.send_text(&alice, &room, &format!("old {i}")).await);
    }
    join_via(b, &bob, &room, a, &alice).await;

    // A fork off the last event before bob's join, as if alice had written it concurrently.
    let (room_id, alice_id, parent) = (
        RoomId::parse(&room).expect("room"),
        alice.user_id.clone(),
        old[2].clone(),
    );
    let identity = services(a).identity.clone();
    let fork = services(a)
        .db
        .write(move |tx| {
            let sender = UserId::parse(alice_id).expect("user");
            let ev = NewEvent::message("m.room.message", json!({"msgtype": "m.text", "body": "fork"}));
            let (rules, mut unsigned) = build_unsigned(tx, &room_id, &sender, ev)?;
            let depth = meshserver::storage::events::max_depth(tx, std::slice::from_ref(&parent))? + 1;
            unsigned["prev_events"] = json!([parent]);
            unsigned["depth"] = json!(depth);
            let pdu = sign(&identity, &rules, unsigned)?;
            meshserver::room::ingest::ingest(tx, &identity, pdu.json.clone())?;
            Ok(pdu.event_id.to_string())
        })
        .await
        .expect("fork stored on A");

    // B lacks the fork's parent, from before it joined: it stores the fork on the state
    // before it rather than replaying old history as new.
    wait_until(WAIT, || async { holds(b, &fork).await }).await;
    for id in &old {
        assert!(
            !holds(b, id).await,
            "B walked back into history from before its join"
        );
    }
    wait_until(WAIT, || async {
        current_state(a, &room).await == current_state(b, &room).await
    })
    .await;
}

async fn current_state(node: &TestNode, room: &str) -> Vec<(String, String, String)> {
    let room = room.to_owned();
    let state = services(node)
        .db
        .read(move |c| meshserver::storage::state::current_state_ids(c, &room))
        .await
        .expect("state");
    let mut out: Vec<_> = state.into_iter().map(|((t, k), e)| (t, k, e)).collect();
    out.sort();
    out
}
