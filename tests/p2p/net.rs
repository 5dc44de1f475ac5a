//! Starting meshes of real nodes and waiting for them to connect.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meshserver::config::Config;
use meshserver::p2p::wire::{Request, Response};
use meshserver::services::AppState;
use ruma::OwnedServerName;
use serde_json::{Value, json};

use crate::common::{TestNode, User, enc};

const V3: &str = "/_matrix/client/v3";
/// How long a helper here waits for the mesh to show something.
const PATIENCE: Duration = Duration::from_secs(20);

/// A running node's services.
pub fn services(node: &TestNode) -> &AppState {
    &node.node.as_ref().expect("running").services
}

/// A node's server name.
pub fn server(node: &TestNode) -> OwnedServerName {
    ruma::ServerName::parse(node.server_name()).expect("server name")
}

/// `from` asks `to` over the peer network.
pub async fn p2p_request(from: &TestNode, to: &TestNode, req: Request) -> Response {
    services(from)
        .p2p
        .request(&server(to), req)
        .await
        .expect("request answered")
}

/// A node's dialable multiaddrs (with `/p2p/<PeerId>`).
pub async fn addrs(node: &TestNode) -> Vec<String> {
    services(node).p2p.info().await.listen_addrs
}

/// `GET /_meshserver/v1/node`.
pub async fn node_info(node: &TestNode) -> Value {
    let (status, body) = node
        .call(reqwest::Method::GET, "/_meshserver/v1/node", None, None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

pub async fn peer_count(node: &TestNode) -> usize {
    services(node).p2p.info().await.peers.len()
}

/// Starts a node whose static peers are `peers` (mDNS off, loopback QUIC on a free port).
pub async fn start_with_peers(peers: &[String]) -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    start_in_with_peers(dir, peers).await
}

pub async fn start_in_with_peers(dir: tempfile::TempDir, peers: &[String]) -> TestNode {
    let mut config = Config::for_data_dir(dir.path());
    config.peers = peers.iter().map(|p| p.parse().expect("multiaddr")).collect();
    TestNode::start_with(dir, config).await
}

/// `n` nodes, each told about all the earlier ones, all connected when this returns.
pub async fn mesh(n: usize) -> Vec<TestNode> {
    let mut nodes: Vec<TestNode> = Vec::new();
    for _ in 0..n {
        let mut peers = Vec::new();
        for node in &nodes {
            peers.extend(addrs(node).await);
        }
        nodes.push(start_with_peers(&peers).await);
    }
    for node in &nodes {
        wait_until(Duration::from_secs(20), || async {
            peer_count(node).await >= n - 1
        })
        .await;
    }
    nodes
}

/// Polls `f` every 20 ms until it holds; panics after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `user` of `node` joins `room` through `via`'s node; returns the response.
pub async fn join_via(node: &TestNode, user: &User, room: &str, via: &TestNode) -> Value {
    let path = format!("{V3}/join/{}?server_name={}", enc(room), enc(&via.server_name()));
    let (status, res) = node.post(&path, &user.token, json!({})).await;
    assert_eq!(status, 200, "join: {res}");
    res
}

/// Three connected nodes with a user each: alice on the first, bob, carol.
pub async fn three_with_users() -> (TestNode, TestNode, TestNode, User, User, User) {
    let mut nodes = mesh(3).await;
    let c = nodes.pop().expect("c");
    let b = nodes.pop().expect("b");
    let a = nodes.pop().expect("a");
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;
    (a, b, c, alice, bob, carol)
}

/// Waits until `user` of `node` sees `member` joined to `room`.
pub async fn sees_joined(node: &TestNode, user: &User, room: &str, member: &User) {
    let members = format!("{V3}/rooms/{}/joined_members", enc(room));
    wait_until(PATIENCE, || async {
        let (_, res) = node.get(&members, &user.token).await;
        res["joined"].get(&member.user_id).is_some()
    })
    .await;
}

/// Alice on `a` creates a public room and bob on `b` joins it; `a` has seen the join.
pub async fn shared_room(a: &TestNode, b: &TestNode) -> (User, User, String) {
    shared_room_with(a, b, json!({"preset": "public_chat"})).await
}

/// As [`shared_room`], the room made with `create`; bob is invited first unless it is public.
pub async fn shared_room_with(a: &TestNode, b: &TestNode, create: Value) -> (User, User, String) {
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let public = create["preset"] == "public_chat";
    let room = a.create_room(&alice, create).await;
    if !public {
        a.invite(&alice, &room, &bob).await;
    }
    join_via(b, &bob, &room, a).await;
    sees_joined(a, &alice, &room, &bob).await;
    (alice, bob, room)
}

/// Syncs `user` (initial, then incremental long-polls) until `pick` finds something in a
/// response; returns it.
pub async fn sync_until<T>(node: &TestNode, user: &User, pick: impl Fn(&Value) -> Option<T>) -> T {
    let start = Instant::now();
    let mut since: Option<String> = None;
    loop {
        let path = match &since {
            Some(t) => format!("{V3}/sync?timeout=500&since={}", enc(t)),
            None => format!("{V3}/sync"),
        };
        let (status, body) = node.get(&path, &user.token).await;
        assert_eq!(status, 200, "sync: {body}");
        if let Some(v) = pick(&body) {
            return v;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "not in /sync within {PATIENCE:?}; last: {body}"
        );
        since = body["next_batch"].as_str().map(str::to_owned);
    }
}

/// The room's current state on `node` as `(type, state_key) → event_id`.
pub async fn state_map(node: &TestNode, room: &str) -> BTreeMap<(String, String), String> {
    let room = room.to_owned();
    services(node)
        .db
        .read(move |c| meshserver::storage::state::current_state_ids(c, &room))
        .await
        .expect("state read")
        .into_iter()
        .collect()
}

/// Sets `user`'s display name on their node.
pub async fn set_displayname(node: &TestNode, user: &User, name: &str) {
    let path = format!("{V3}/profile/{}/displayname", enc(&user.user_id));
    let (status, res) = node.put(&path, &user.token, json!({"displayname": name})).await;
    assert_eq!(status, 200, "{res}");
}
