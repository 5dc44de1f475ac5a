//! Concurrent conflicting state changes on different nodes converge to one resolved state,
//! and a peer's oversize frame is refused without harm.

use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self as rr, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol};
use serde_json::{Value, json};

use crate::common::{TestNode, User};
use crate::net::{addrs, join_via, mesh, node_info, services, state_map, wait_until};

const PATIENCE: Duration = Duration::from_secs(20);

fn prev_events(node: &TestNode, event_id: &str) -> Vec<String> {
    let pdu = futures::executor::block_on(services(node).db.read({
        let id = event_id.to_owned();
        move |c| Ok(meshserver::storage::events::get_pdu(c, &id))
    }))
    .expect("read")
    .expect("event stored");
    pdu.prev_events.iter().map(ToString::to_string).collect()
}

async fn put_state(node: &TestNode, user: &User, room: &str, kind: &str, content: Value) -> String {
    let (status, res) = node.state_put(user, room, kind, "", content).await;
    assert_eq!(status, 200, "{kind}: {res}");
    res["event_id"].as_str().expect("event_id").to_owned()
}

#[tokio::test]
async fn concurrent_state_changes_converge_on_all_three_nodes() {
    let nodes = mesh(3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "power_level_content_override":
                {"users": {bob.user_id.clone(): 100, carol.user_id.clone(): 100}}}),
        )
        .await;
    join_via(b, &bob, &room, a).await;
    join_via(c, &carol, &room, a).await;
    wait_until(PATIENCE, || async {
        let s = state_map(a, &room).await;
        s == state_map(b, &room).await && s == state_map(c, &room).await
    })
    .await;

    // Conflicting changes at the same instant on three nodes; repeat until a round really
    // forked the DAG (neither name event saw the other), so the test cannot pass vacuously.
    let mut forked = false;
    for round in 0..5 {
        // Room v12: the creator's power is implied and may not be listed.
        let pl = json!({"users": {bob.user_id.clone(): 100, carol.user_id.clone(): 100,
                                   "@someone:example.org": 50 + round}});
        let (from_a, from_b, _) = tokio::join!(
            put_state(
                a,
                &alice,
                &room,
                "m.room.name",
                json!({"name": format!("A{round}")})
            ),
            put_state(
                b,
                &bob,
                &room,
                "m.room.name",
                json!({"name": format!("B{round}")})
            ),
            put_state(c, &carol, &room, "m.room.power_levels", pl),
        );
        wait_until(PATIENCE, || async {
            let s = state_map(a, &room).await;
            s == state_map(b, &room).await && s == state_map(c, &room).await
        })
        .await;
        if !prev_events(a, &from_b).contains(&from_a) && !prev_events(a, &from_a).contains(&from_b) {
            forked = true;
            break;
        }
    }
    assert!(forked, "no round produced concurrent name changes");
    // One resolved name, the same on every node.
    let names: Vec<String> = futures::future::join_all(nodes.iter().map(|n| async {
        let s = state_map(n, &room).await;
        s[&("m.room.name".to_owned(), String::new())].clone()
    }))
    .await;
    assert!(names.windows(2).all(|w| w[0] == w[1]), "{names:?}");
}

/// Sends raw bytes as a request: what a broken or hostile peer can put on a stream.
#[derive(Clone, Default)]
struct RawCodec;

impl rr::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        futures::AsyncReadExt::read_to_end(io, &mut buf).await?;
        Ok(buf)
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        self.read_request(p, io).await
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()> {
        futures::AsyncWriteExt::write_all(io, &req).await?;
        futures::AsyncWriteExt::close(io).await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()> {
        self.write_request(p, io, res).await
    }
}

#[tokio::test]
async fn an_oversize_frame_is_refused_and_the_node_keeps_serving() {
    let nodes = mesh(2).await;
    let target: Multiaddr = addrs(&nodes[1]).await[0].parse().expect("multiaddr");
    let peer = match target.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => p,
        _ => panic!("no /p2p/ in {target}"),
    };
    let protocol = StreamProtocol::new("/meshserver/events/1");
    let mut attacker = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| {
            rr::Behaviour::with_codec(
                RawCodec,
                [(protocol.clone(), ProtocolSupport::Full)],
                rr::Config::default(),
            )
        })
        .expect("behaviour")
        .build();
    let huge = vec![b'['; 2 * 1024 * 1024];
    attacker
        .behaviour_mut()
        .send_request_with_addresses(&peer, huge, vec![target]);
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match attacker.select_next_some().await {
                SwarmEvent::Behaviour(rr::Event::OutboundFailure { error, .. }) => return format!("{error}"),
                SwarmEvent::Behaviour(rr::Event::Message {
                    message: rr::Message::Response { response, .. },
                    ..
                }) => return String::from_utf8_lossy(&response).into_owned(),
                _ => {}
            }
        }
    })
    .await
    .expect("the node answered or closed the stream");
    assert!(
        !outcome.contains("\"events\""),
        "oversize request was served: {outcome}"
    );
    // Counted, and the node still serves its peers and clients.
    wait_until(PATIENCE, || async {
        node_info(&nodes[1]).await["rejected"]["frames"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    let alice = nodes[0].register("alice").await;
    let bob = nodes[1].register("bob").await;
    let room = nodes[0]
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    join_via(&nodes[1], &bob, &room, &nodes[0]).await;
}
