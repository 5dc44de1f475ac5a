//! Joining and inviting across real nodes: an invite to a user of another node, accepted
//! through the inviter's node; a third node joining through a node that did not create
//! the room; joins by a remote alias; and a join relayed by a node that may not send it.

use std::collections::BTreeSet;
use std::time::Duration;

use meshserver::p2p::wire::{Request, Response};
use ruma::canonical_json::CanonicalJsonObject;
use serde_json::{Value, json};

use crate::common::{TestNode, User, enc};
use crate::net::{join_via, mesh, p2p_request, services, set_displayname, sync_until, wait_until};

const V3: &str = "/_matrix/client/v3";
const PATIENCE: Duration = Duration::from_secs(20);

/// `(type, state_key, event_id)` of a room's current state as `user` reads it on `node`.
async fn state_keys(node: &TestNode, user: &User, room: &str) -> BTreeSet<(String, String, String)> {
    let (status, res) = node
        .get(&format!("{V3}/rooms/{}/state", enc(room)), &user.token)
        .await;
    if status != 200 {
        return BTreeSet::new();
    }
    res.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("type"), s("state_key"), s("event_id"))
        })
        .collect()
}

fn types(events: &Value) -> Vec<String> {
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn invite_accept_and_join_through_any_resident_node() {
    let nodes = mesh(3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;
    set_displayname(b, &bob, "Bob").await;
    let room = a
        .create_room(&alice, json!({"preset": "public_chat", "name": "mesh room"}))
        .await;
    a.send_text(&alice, &room, "before anyone joined").await;

    // Alice invites bob of node B: B countersigns, bob sees the invite in /sync.
    a.invite(&alice, &room, &bob).await;
    let invite = sync_until(b, &bob, |s| {
        let r = &s["rooms"]["invite"][&room];
        (!r.is_null()).then(|| r.clone())
    })
    .await;
    let shown = types(&invite["invite_state"]["events"]);
    assert!(shown.contains(&"m.room.name".to_owned()), "{invite}");
    assert!(shown.contains(&"m.room.create".to_owned()), "{invite}");
    // The invite carries bob's profile, fetched from his node.
    let (status, member) = a
        .get(
            &format!(
                "{V3}/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&bob.user_id)
            ),
            &alice.token,
        )
        .await;
    assert_eq!(status, 200, "{member}");
    assert_eq!(member["membership"], "invite", "{member}");
    assert_eq!(member["displayname"], "Bob", "{member}");

    // Bob accepts: no via given, the invite names the node to join through.
    b.join(&bob, &room).await;
    let joined = sync_until(b, &bob, |s| {
        let r = &s["rooms"]["join"][&room];
        (!r.is_null()).then(|| r.clone())
    })
    .await;
    let state = types(&joined["state"]["events"]);
    assert!(state.contains(&"m.room.create".to_owned()), "{joined}");
    assert!(state.contains(&"m.room.name".to_owned()), "{joined}");
    let timeline = &joined["timeline"]["events"];
    assert!(
        timeline
            .as_array()
            .is_some_and(|t| t.iter().all(|e| e["type"] == "m.room.member")),
        "only the join is in B's timeline, no outlier: {joined}"
    );

    // Carol of node C joins through B, which did not create the room.
    let res = join_via(c, &carol, &room, b).await;
    assert_eq!(res["room_id"], room.as_str());

    // All three nodes converge on one state holding the three joins.
    wait_until(PATIENCE, || async {
        let sa = state_keys(a, &alice, &room).await;
        let sb = state_keys(b, &bob, &room).await;
        let sc = state_keys(c, &carol, &room).await;
        let members = sa.iter().filter(|(t, ..)| t == "m.room.member").count();
        members == 3 && sa == sb && sb == sc
    })
    .await;
    // Messages flow both ways once joined.
    let id = c.send_text(&carol, &room, "hello from c").await;
    let alice_sees = |s: &Value| {
        let t = &s["rooms"]["join"][&room]["timeline"]["events"];
        t.as_array()?
            .iter()
            .any(|e| e["event_id"] == id.as_str())
            .then_some(Value::Null)
    };
    sync_until(a, &alice, alice_sees).await;
}

#[tokio::test]
async fn a_remote_alias_resolves_on_its_node_and_foreign_joins_are_refused() {
    let nodes = mesh(3).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_alias_name": "lobby"}),
        )
        .await;
    let alias = format!("#lobby:{}", a.server_name());
    let (status, res) = b
        .post(&format!("{V3}/join/{}", enc(&alias)), &bob.token, json!({}))
        .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["room_id"], room.as_str());

    // C asks A for a join template on behalf of B's user: refused.
    let dave = b.register("dave").await;
    let make_join = |user: &str| Request::MakeJoin {
        room_id: room.clone(),
        user_id: user.to_owned(),
        supported_versions: vec!["10".into(), "11".into(), "12".into()],
    };
    match p2p_request(c, a, make_join(&dave.user_id)).await {
        Response::Error { errcode, .. } => assert_eq!(errcode, "M_FORBIDDEN"),
        other => panic!("unexpected {other:?}"),
    }
    // A join B signed for dave, relayed by C: refused, and not stored.
    let Response::MakeJoin { room_version, event } = p2p_request(b, a, make_join(&dave.user_id)).await else {
        panic!("no template");
    };
    let mut event = event;
    event["origin_server_ts"] = json!(1);
    let version = ruma::RoomVersionId::try_from(room_version.as_str()).expect("version");
    let rules = version.rules().expect("rules");
    let b_identity = &services(b).identity;
    let signed = meshserver::room::sign(b_identity, &rules, event).expect("signed");
    let relayed: CanonicalJsonObject = signed.json.clone();
    let req = Request::SendJoin {
        room_id: room.clone(),
        event: relayed,
    };
    match p2p_request(c, a, req).await {
        Response::Error { errcode, .. } => assert_eq!(errcode, "M_FORBIDDEN"),
        other => panic!("unexpected {other:?}"),
    }
    let keys = state_keys(a, &alice, &room).await;
    assert!(
        !keys
            .iter()
            .any(|(t, k, _)| t == "m.room.member" && *k == dave.user_id),
        "the relayed join was not stored"
    );

    // An invite to a room C holds nothing else of can be turned down on C.
    let erin = c.register("erin").await;
    a.invite(&alice, &room, &erin).await;
    sync_until(c, &erin, |s| s["rooms"]["invite"].get(&room).cloned()).await;
    c.leave(&erin, &room).await;
    let after = c.sync(&erin, None).await;
    assert!(after["rooms"]["invite"].get(&room).is_none(), "{after}");
}
