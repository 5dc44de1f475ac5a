//! Starting meshes of real nodes and waiting for them to connect.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use meshserver::config::Config;
use serde_json::Value;

use crate::common::TestNode;

/// A node's dialable multiaddrs (with `/p2p/<PeerId>`).
pub async fn addrs(node: &TestNode) -> Vec<String> {
    let info = node.node.as_ref().expect("running").services.p2p.info().await;
    info.listen_addrs
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
    node.node
        .as_ref()
        .expect("running")
        .services
        .p2p
        .info()
        .await
        .peers
        .len()
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
