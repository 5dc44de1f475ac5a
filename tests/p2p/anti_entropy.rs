//! Anti-entropy over real nodes: a node that was away catches up from any member that
//! holds what it missed, even when the sender never comes back; an event travels hop by
//! hop through heads rounds to nodes its origin cannot reach; a converged, quiet room
//! costs no replication requests.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use meshserver::config::Config;
use serde_json::json;

use crate::common::{TestNode, User, enc};
use crate::net::{addrs, join_via, peer_count, sync_until, three_with_users, wait_until};

const WAIT: Duration = Duration::from_secs(60);
/// Longer than a room's heads round waits after its last change (debounce and jitter), and
/// the rounds its fetches trigger.
const SETTLE: Duration = Duration::from_secs(6);

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
    let (a, b, c, alice, bob, carol) = three_with_users().await;
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
    // Heads rounds fire within a few seconds of a room's last change.
    tokio::time::sleep(SETTLE).await;
    let before: Vec<_> = [&a, &b, &c].into_iter().map(counts).collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after: Vec<_> = [&a, &b, &c].into_iter().map(counts).collect();
    println!("anti-entropy: quiet room, request counters before {before:?} after {after:?}");
    assert_eq!(before, after, "a quiet converged room sent requests");
}

/// The request counters of a node: requests sent, their bytes, response bytes read.
fn counts(n: &TestNode) -> (u64, u64, u64) {
    let c = &services(n).p2p.counters;
    (
        c.requests_out.load(Ordering::Relaxed),
        c.request_bytes_out.load(Ordering::Relaxed),
        c.response_bytes_in.load(Ordering::Relaxed),
    )
}

/// A node that knows only `peers` and that nothing but heads rounds (and the outbox of an
/// event's origin) can replicate through: no gossip, no addresses learnt from others.
async fn start_isolated(peers: &[String]) -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::for_data_dir(dir.path());
    config.peers = peers.iter().map(|p| p.parse().expect("multiaddr")).collect();
    config.learn_peer_addresses = false;
    config.gossip = false;
    TestNode::start_with(dir, config).await
}

/// Whether `node` is connected to `other`.
async fn connected(node: &TestNode, other: &TestNode) -> bool {
    let name = other.server_name();
    services(node)
        .p2p
        .info()
        .await
        .peers
        .iter()
        .any(|p| p.server_name.as_deref() == Some(name.as_str()))
}

/// A UDP relay to `node` that carries only the first sender's datagrams (and the replies):
/// the one address under which others may learn of `node` (from the DHT) is useless to
/// them. Returns `node`'s multiaddr through the relay.
async fn private_relay(node: &TestNode) -> String {
    let direct = addrs(node).await.into_iter().next().expect("listen address");
    let addr: libp2p::Multiaddr = direct.parse().expect("multiaddr");
    let (mut port, mut peer) = (0, None);
    for p in addr.iter() {
        match p {
            libp2p::multiaddr::Protocol::Udp(u) => port = u,
            libp2p::multiaddr::Protocol::P2p(id) => peer = Some(id),
            _ => {}
        }
    }
    let target: SocketAddr = ([127, 0, 0, 1], port).into();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let relay_port = sock.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let to = if from == target {
                client
            } else if client.is_none_or(|c| c == from) {
                client = Some(from);
                Some(target)
            } else {
                None
            };
            if let Some(to) = to {
                let _ = sock.send_to(&buf[..n], to).await;
            }
        }
    });
    format!(
        "/ip4/127.0.0.1/udp/{relay_port}/quic-v1/p2p/{}",
        peer.expect("peer id")
    )
}

/// A line A – B – C: B reaches A only through a relay that carries nobody else, so A and C
/// cannot connect even through the DHT; gossip is off. A message of A's reaches C only
/// through B's heads round after B fetched it; then the quiet room falls silent.
#[tokio::test]
async fn a_message_crosses_a_line_through_heads_rounds_and_then_all_falls_silent() {
    let a = start_isolated(&[]).await;
    let b = start_isolated(&[private_relay(&a).await]).await;
    let c = start_isolated(&addrs(&b).await).await;
    wait_until(WAIT, || async { peer_count(&b).await >= 2 }).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;
    let room = a.create_room(&alice, json!({"preset": "public_chat"})).await;
    join_via(&b, &bob, &room, &a).await;
    join_via(&c, &carol, &room, &b).await;
    // A learns of carol's join only from B's heads round: nothing else links them.
    wait_until(WAIT, || async {
        event_set(&a, &room).await == event_set(&b, &room).await
            && event_set(&c, &room).await == event_set(&b, &room).await
    })
    .await;

    a.send_text(&alice, &room, "across the line").await;
    let body = sync_until(&c, &carol, |sync| {
        sync["rooms"]["join"][room.as_str()]["timeline"]["events"]
            .as_array()?
            .iter()
            .find(|e| e["content"]["body"] == "across the line")
            .map(|e| e["content"]["body"].clone())
    })
    .await;
    assert_eq!(body, "across the line");
    assert!(
        !connected(&a, &c).await && !connected(&c, &a).await,
        "A and C connected: the line was not a line"
    );

    // Converged: every node's rounds find their neighbours agreeing, and stop.
    wait_until(WAIT, || async {
        let want = event_set(&a, &room).await;
        event_set(&b, &room).await == want && event_set(&c, &room).await == want
    })
    .await;
    tokio::time::sleep(SETTLE).await;
    let before: Vec<_> = [&a, &b, &c].into_iter().map(counts).collect();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after: Vec<_> = [&a, &b, &c].into_iter().map(counts).collect();
    println!("anti-entropy: line, request counters before {before:?} after {after:?}");
    assert!(before[1].0 > 0, "B sent no request at all");
    assert_eq!(before, after, "heads rounds went on in a converged quiet room");
}
