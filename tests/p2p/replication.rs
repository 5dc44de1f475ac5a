//! Room replication across real nodes: gossip both ways, typing and receipts, catching up
//! after a restart, forged events refused, and history kept from servers outside a room.

use std::time::{Duration, Instant};

use meshserver::room::{NewEvent, build_unsigned, sign};
use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use crate::common::{TestNode, User, enc};
use crate::net::{
    addrs, join_via, mesh, peer_count, sees_joined, services, shared_room, start_in_with_peers,
    start_with_peers, state_map, sync_until, wait_until,
};

mod trust;

const V3: &str = "/_matrix/client/v3";
const WAIT: Duration = Duration::from_secs(15);

/// All message bodies of `room` as `user` reads them, oldest first.
async fn history(node: &TestNode, user: &User, room: &str) -> Vec<String> {
    let mut b = node.message_bodies(user, room, "dir=b&limit=1000").await;
    b.reverse();
    b
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
        crate::common::bodies(room_part(s, &room, "timeline"))
            .contains(&"from a".into())
            .then_some(())
    })
    .await;
    b.send_text(&bob, &room, "from b").await;
    sync_until(a, &alice, |s| {
        crate::common::bodies(room_part(s, &room, "timeline"))
            .contains(&"from b".into())
            .then_some(())
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
        room_part(s, &room, "ephemeral")
            .as_array()
            .is_some_and(|evs| {
                evs.iter()
                    .any(|e| e["type"] == "m.typing" && e["content"]["user_ids"] == json!([bob.user_id]))
            })
            .then_some(())
    })
    .await;

    let event = b.send_text(&bob, &room, "read me").await;
    let wait_for_event = || async { history(a, &alice, &room).await.contains(&"read me".to_owned()) };
    wait_until(WAIT, wait_for_event).await;
    let path = format!("{V3}/rooms/{}/receipt/m.read/{}", enc(&room), enc(&event));
    let (status, res) = a.post(&path, &alice.token, json!({})).await;
    assert_eq!(status, 200, "{res}");
    sync_until(b, &bob, |s| {
        room_part(s, &room, "ephemeral")
            .as_array()
            .is_some_and(|evs| {
                evs.iter().any(|e| {
                    e["type"] == "m.receipt" && e["content"][&event]["m.read"].get(&alice.user_id).is_some()
                })
            })
            .then_some(())
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
    join_via(b, &bob, &room, a).await;
    sees_joined(a, &alice, &room, &bob).await;

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
        state_map(a, &room).await == state_map(b, &room).await
    })
    .await;
}
