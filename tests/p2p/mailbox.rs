//! Store-and-forward through any member (`/meshserver/mailbox/1`) over real nodes: mail
//! for an absent node reaches it from another member after its sender is gone for good;
//! holders refuse forged items, serve mail only to its destination, and keep quotas.

use std::time::{Duration, Instant};

use meshserver::config::Config;
use meshserver::p2p::mailbox::sign_item;
use meshserver::p2p::wire::{MailItem, Request, Response};
use meshserver::storage::mailbox as store;
use serde_json::{Value, json};

use crate::common::{TestNode, User, enc};
use crate::net::{
    addrs, join_via, p2p_request, peer_count, sees_joined, services, three_with_users, wait_until,
};

const DEADLINE: Duration = Duration::from_secs(30);

async fn stop(mut node: TestNode) -> tempfile::TempDir {
    node.node.take().expect("running").stop().await;
    node.dir
}

/// Three connected nodes with alice (a), bob (b) and carol (c) joined to one public room.
async fn three_in_a_room() -> (TestNode, TestNode, TestNode, User, User, User, String) {
    let (a, b, c, alice, bob, carol) = three_with_users().await;
    let room = a.create_room(&alice, json!({"preset": "public_chat"})).await;
    join_via(&b, &bob, &room, &a).await;
    join_via(&c, &carol, &room, &a).await;
    for (node, user) in [(&a, &alice), (&b, &bob)] {
        sees_joined(node, user, &room, &carol).await;
        sees_joined(node, user, &room, &bob).await;
    }
    (a, b, c, alice, bob, carol, room)
}

/// Items `holder` keeps for `dest`.
async fn held_for(holder: &TestNode, dest: &str) -> i64 {
    let dest = dest.to_owned();
    services(holder)
        .db
        .read(move |c| store::count_for(c, &dest, 0))
        .await
        .expect("mailbox read")
}

fn refused(node: &TestNode) -> u64 {
    services(node)
        .p2p
        .counters
        .refused_requests
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// A to-device item signed by `from`'s node for `dest`.
fn to_device_item(from: &TestNode, sender: &User, dest: &str, to: &User, n: usize) -> MailItem {
    let body = json!({"sender": sender.user_id, "type": "m.test", "message_id": format!("m{n}"),
        "messages": {&to.user_id: {"*": {"n": n}}}});
    sign_item(
        &services(from).identity,
        dest,
        "to_device",
        body,
        format!("i{n}"),
        1,
    )
    .expect("signed")
}

#[tokio::test]
async fn mail_for_an_absent_node_reaches_it_through_another_member_after_the_sender_is_gone() {
    let (a, b, c, alice, _bob, carol, _room) = three_in_a_room().await;
    let c_name = c.server_name();
    let since = c.sync(&carol, None).await["next_batch"]
        .as_str()
        .expect("token")
        .to_owned();
    let c_dir = stop(c).await;
    wait_until(DEADLINE, || async { peer_count(&a).await == 1 }).await;

    // A message and an invite for carol while her node is away: both answered 200.
    let path = "/_matrix/client/v3/sendToDevice/m.test/t1";
    let msg = json!({"messages": {&carol.user_id: {&carol.device_id: {"secret": "k1"}}}});
    let (status, res) = a.put(path, &alice.token, msg).await;
    assert_eq!(status, 200, "{res}");
    let second = a
        .create_room(&alice, json!({"preset": "private_chat", "name": "second"}))
        .await;
    let t = Instant::now();
    a.invite(&alice, &second, &carol).await;
    println!("mailbox: invite to an absent node answered in {:?}", t.elapsed());

    // Once a's outbox has failed twice, b holds both for c.
    wait_until(DEADLINE, || async { held_for(&b, &c_name).await >= 2 }).await;
    assert_eq!(held_for(&b, &c_name).await, 2);
    let _gone = stop(a).await;

    // c comes back knowing only b.
    let mut config = Config::for_data_dir(c_dir.path());
    config.peers = addrs(&b).await.iter().map(|x| x.parse().expect("addr")).collect();
    let c = TestNode::start_with(c_dir, config).await;
    let up = Instant::now();

    let mut since = since;
    let mut got: Vec<Value> = Vec::new();
    let mut invited = false;
    let mut settled: Option<Instant> = None;
    loop {
        let path = format!("/_matrix/client/v3/sync?since={}&timeout=200", enc(&since));
        let (status, body) = c.get(&path, &carol.token).await;
        assert_eq!(status, 200, "{body}");
        since = body["next_batch"].as_str().expect("next_batch").to_owned();
        got.extend(
            body["to_device"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        invited |= body["rooms"]["invite"].get(&second).is_some();
        if settled.is_none() && invited && !got.is_empty() {
            println!(
                "mailbox: both reached the returning node {:?} after restart",
                up.elapsed()
            );
            settled = Some(Instant::now());
        }
        // A little longer, to catch a second copy.
        if settled.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
            break;
        }
        assert!(up.elapsed() < DEADLINE, "to-device {got:?}, invited {invited}");
    }
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["sender"], alice.user_id.as_str());
    assert_eq!(got[0]["content"]["secret"], "k1");
    // The invite shows as a direct one does: with the room's name and the inviter.
    let body = c.sync(&carol, None).await;
    let state = &body["rooms"]["invite"][&second]["invite_state"]["events"];
    let types: Vec<&str> = state
        .as_array()
        .expect("invite state")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(
        types.contains(&"m.room.name") && types.contains(&"m.room.member"),
        "{state}"
    );
    // Collected mail is acknowledged and deleted at the holder.
    wait_until(DEADLINE, || async { held_for(&b, &c_name).await == 0 }).await;
    drop(c);
}

#[tokio::test]
async fn holders_refuse_forgeries_serve_only_the_destination_and_keep_quotas() {
    let (a, b, c, alice, _bob, carol, _room) = three_in_a_room().await;
    let c_name = c.server_name();
    let _c_dir = stop(c).await;
    let refused_before = refused(&b);

    // A forged item: signed by a, altered after signing.
    let mut forged = to_device_item(&a, &alice, &c_name, &carol, 0);
    forged.body["messages"][&carol.user_id]["*"]["n"] = json!(99);
    let res = p2p_request(&a, &b, Request::Deposit { items: vec![forged] }).await;
    assert!(
        matches!(&res, Response::Error { errcode, .. } if errcode == "M_FORBIDDEN"),
        "{res:?}"
    );
    assert_eq!(refused(&b), refused_before + 1);
    // An item of another origin, even correctly signed, is not a's to deposit.
    let b_own = to_device_item(&b, &alice, &c_name, &carol, 1);
    let res = p2p_request(&a, &b, Request::Deposit { items: vec![b_own] }).await;
    assert!(
        matches!(&res, Response::Error { errcode, .. } if errcode == "M_FORBIDDEN"),
        "{res:?}"
    );
    // Mail for a node that shares no room with the holder is refused.
    let stranger = meshserver::identity::Identity::from_seed([9; 32], "a_t")
        .server_name()
        .to_string();
    let item = to_device_item(&a, &alice, &stranger, &carol, 2);
    let res = p2p_request(&a, &b, Request::Deposit { items: vec![item] }).await;
    assert!(
        matches!(&res, Response::Error { errcode, .. } if errcode == "M_FORBIDDEN"),
        "{res:?}"
    );
    assert_eq!(held_for(&b, &c_name).await, 0);

    // Quotas: a full destination refuses the next deposit whole.
    let quota = store::MAX_PER_DESTINATION as usize;
    let items: Vec<MailItem> = (0..quota)
        .map(|n| to_device_item(&a, &alice, &c_name, &carol, n))
        .collect();
    for chunk in items.chunks(64) {
        let res = p2p_request(
            &a,
            &b,
            Request::Deposit {
                items: chunk.to_vec(),
            },
        )
        .await;
        assert!(matches!(res, Response::Deposited { .. }), "{res:?}");
    }
    let res = p2p_request(
        &a,
        &b,
        Request::Deposit {
            items: items[..2].to_vec(),
        },
    )
    .await;
    assert_eq!(
        res,
        Response::Deposited {
            stored: 0,
            duplicates: 2
        }
    );
    let extra = vec![
        items[0].clone(),
        to_device_item(&a, &alice, &c_name, &carol, quota),
    ];
    let res = p2p_request(&a, &b, Request::Deposit { items: extra }).await;
    assert!(
        matches!(&res, Response::Error { errcode, .. } if errcode == "M_LIMIT_EXCEEDED"),
        "{res:?}"
    );
    assert_eq!(held_for(&b, &c_name).await, quota as i64);
    // An oversized item is refused.
    let mut big = to_device_item(&a, &alice, &c_name, &carol, quota + 1);
    big.body["messages"][&carol.user_id]["*"]["pad"] = json!("x".repeat(store::MAX_ITEM_BYTES));
    let big = sign_item(&services(&a).identity, &c_name, "to_device", big.body, big.id, 1).expect("signed");
    let res = p2p_request(&a, &b, Request::Deposit { items: vec![big] }).await;
    assert!(
        matches!(&res, Response::Error { errcode, .. } if errcode == "M_TOO_LARGE"),
        "{res:?}"
    );

    // Nobody but c collects c's mail: a asking (with an ack, even) gets its own, none.
    let res = p2p_request(
        &a,
        &b,
        Request::Collect {
            ack: Some(i64::MAX),
            limit: 64,
        },
    )
    .await;
    assert_eq!(
        res,
        Response::Mail {
            items: vec![],
            more: false
        }
    );
    let res = p2p_request(&a, &b, Request::Ack { up_to: i64::MAX }).await;
    assert_eq!(res, Response::Ok {});
    assert_eq!(held_for(&b, &c_name).await, quota as i64);
}
