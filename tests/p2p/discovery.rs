//! Transport, identity and discovery.

use std::time::Duration;

use meshserver::config::Config;

use crate::common::TestNode;
use crate::net::{addrs, mesh, node_info, peer_count, start_with_peers, wait_until};

#[tokio::test]
async fn static_peers_connect_and_node_info_reports_them() {
    let nodes = mesh(3).await;
    let a = node_info(&nodes[0]).await;
    let b = node_info(&nodes[1]).await;
    // The PeerId and server name are one key: each side names the other consistently.
    let peers = a["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 2, "{a}");
    assert!(
        peers
            .iter()
            .any(|p| p["peer_id"] == b["peer_id"] && p["server_name"] == b["server_name"]),
        "{a} {b}"
    );
    let listen = a["listen_addrs"][0].as_str().expect("listen addr");
    assert!(
        listen.starts_with("/ip4/127.0.0.1/udp/") && listen.contains("/quic-v1/p2p/12D3KooW"),
        "{listen}"
    );
}

#[tokio::test]
async fn address_book_survives_restart_and_redials() {
    let a = start_with_peers(&[]).await;
    let b = start_with_peers(&addrs(&a).await).await;
    wait_until(Duration::from_secs(10), || async { peer_count(&b).await == 1 }).await;
    // b forgets its static peers on restart: only its address book can bring a back.
    let mut b = b;
    b.node.take().expect("running").stop().await;
    let config = Config::for_data_dir(b.dir.path());
    let b = TestNode::start_with(b.dir, config).await;
    wait_until(Duration::from_secs(10), || async { peer_count(&b).await == 1 }).await;
    drop(a);
}

#[tokio::test]
async fn mdns_finds_a_peer_on_loopback() {
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::for_data_dir(dir.path());
        config.mdns = true;
        nodes.push(TestNode::start_with(dir, config).await);
    }
    for n in &nodes {
        wait_until(Duration::from_secs(15), || async { peer_count(n).await >= 1 }).await;
    }
}
