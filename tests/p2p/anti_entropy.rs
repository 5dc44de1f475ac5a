//! Anti-entropy over real nodes: a node that was away catches up from any member that
//! holds what it missed, even when the sender never comes back; a converged, quiet room
//! costs no replication requests.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use meshserver::config::Config;
use serde_json::json;

use crate::common::{TestNode, User, enc};
use crate::net::{addrs, mesh, wait_until};

const WAIT: Duration = Duration::from_secs(60);

fn services(node: &TestNode) -> &meshserver::services::AppState {
    &node.node.as_ref().expect("running").services
}

/// The IDs of the room's events a node holds.
async fn event_set(node: &TestNode, room: &str) -> BTreeSet<String> {
    let room = room.to_owned();
    services(node)
        .db
        .read(move |c| meshserver::storage::anti_entropy::room_keys(c, &room, 0))
        .await
        .expect("read")
        .into_iter()
        .map(|(_, id)| id)
        .collect()
}

/// `user` of `node` joins `room` (alice's, on `a`) after an invite.
async fn invited_join(a: &TestNode, alice: &User, node: &TestNode, user: &User, room: &str) {
    a.invite(alice, room, user).await;
    let path = format!(
        "/_matrix/client/v3/join/{}?server_name={}",
        enc(room),
        enc(&a.server_name())
    );
    let (status, res) = node.post(&path, &user.token, json!({})).await;
    assert_eq!(status, 200, "join: {res}");
}

async fn stop(mut node: TestNode) -> tempfile::TempDir {
    node.node.take().expect("running").stop().await;
    node.dir
}

/// Three nodes with alice (a), bob (b) and carol (c) in alice's room, all converged.
async fn three_in_a_room() -> (TestNode, TestNode, TestNode, User, String) {
    let mut nodes = mesh(3).await;
    let c = nodes.pop().expect("c");
    let b = nodes.pop().expect("b");
    let a = nodes.pop().expect("a");
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;
    let room = a.create_room(&alice, json!({})).await;
    invited_join(&a, &alice, &b, &bob, &room).await;
    invited_join(&a, &alice, &c, &carol, &room).await;
    a.send_text(&alice, &room, "hello").await;
    wait_until(WAIT, || async {
        let want = event_set(&a, &room).await;
        event_set(&b, &room).await == want && event_set(&c, &room).await == want
    })
    .await;
    (a, b, c, alice, room)
}

/// C goes away; alice sends `n` messages that only B receives; A stops for good; C comes
/// back knowing only B. Returns how long C took to hold everything B holds.
async fn caught_up_from_a_bystander(n: usize) -> Duration {
    let (a, b, c, alice, room) = three_in_a_room().await;
    let c_dir = stop(c).await;
    for i in 0..n {
        a.send_text(&alice, &room, &format!("missed {i}")).await;
    }
    wait_until(WAIT, || async {
        event_set(&b, &room).await == event_set(&a, &room).await
    })
    .await;
    let want = event_set(&b, &room).await;
    drop(stop(a).await);

    let mut config = Config::for_data_dir(c_dir.path());
    config.peers = addrs(&b)
        .await
        .iter()
        .map(|a| a.parse().expect("multiaddr"))
        .collect();
    let c = TestNode::start_with(c_dir, config).await;
    let up = Instant::now();
    wait_until(WAIT, || async { event_set(&c, &room).await == want }).await;
    let took = up.elapsed();
    println!("anti-entropy: {n} events missed, caught up from a bystander in {took:?}");
    // B owed C nothing of its own: everything came by the exchange and what it triggered.
    assert!(services(&c).p2p.counters.requests_out.load(Ordering::Relaxed) > 0);
    took
}

#[tokio::test]
async fn a_short_gap_is_fetched_from_a_member_that_is_not_the_sender() {
    caught_up_from_a_bystander(20).await;
}

#[tokio::test]
async fn thousands_of_missed_events_arrive_from_the_only_member_online() {
    caught_up_from_a_bystander(2000).await;
}

#[tokio::test]
async fn a_converged_quiet_room_costs_no_replication_requests() {
    let (a, b, c, alice, room) = three_in_a_room().await;
    a.send_text(&alice, &room, "last words").await;
    wait_until(WAIT, || async {
        let want = event_set(&a, &room).await;
        event_set(&b, &room).await == want && event_set(&c, &room).await == want
    })
    .await;
    // Let the outbox confirm its heads and any exchange finish.
    let outbox_empty = |n: &TestNode| {
        let db = services(n).db.clone();
        async move {
            db.read(meshserver::storage::outbox::schedule)
                .await
                .expect("outbox")
                .is_empty()
        }
    };
    wait_until(WAIT, || async { outbox_empty(&a).await }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = |n: &TestNode| {
        let c = &services(n).p2p.counters;
        (
            c.requests_out.load(Ordering::Relaxed),
            c.request_bytes_out.load(Ordering::Relaxed),
            c.response_bytes_in.load(Ordering::Relaxed),
        )
    };
    let before: Vec<_> = [&a, &b, &c].into_iter().map(counts).collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after: Vec<_> = [&a, &b, &c].into_iter().map(counts).collect();
    println!("anti-entropy: quiet room, request counters before {before:?} after {after:?}");
    assert_eq!(before, after, "a quiet converged room sent requests");
}
