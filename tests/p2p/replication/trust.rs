//! Trust at the edges of replication: forged events are refused and go no further, and a
//! server outside a room gets none of its events.

use std::time::Duration;

use meshserver::p2p::wire::{Request, Response, encode_gossip};
use meshserver::room::{NewEvent, build_unsigned, sign};
use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::{RoomId, ServerName, UserId};
use serde_json::{Value, json};

use super::{WAIT, history, holds};
use crate::net::{addrs, mesh, peer_count, server, services, shared_room, start_with_peers, wait_until};

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
