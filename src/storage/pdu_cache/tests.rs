//! The writer's PDU cache against a real database: hits, redactions, rollbacks, and a
//! write closure that panics.

use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::Error;
use crate::room::{NewEvent, append_local};
use crate::testkit::{Node, bare};

#[tokio::test]
async fn a_cached_pdu_is_reused_until_a_redaction_rewrites_it() {
    let n = bare(1);
    let alice = n.register("alice").await;
    let room = n.create(&alice, json!({})).await;
    let msg = n
        .send(
            &room,
            &alice,
            NewEvent::message("m.room.message", json!({"body": "hi"})),
        )
        .await;
    let id = msg.event_id.to_string();
    let read = |id: String| n.db.write(move |tx| Ok(tx.pdu(&id)));

    let first = read(id.clone()).await.unwrap().expect("stored");
    let again = read(id.clone()).await.unwrap().expect("stored");
    assert!(
        Arc::ptr_eq(&first, &again),
        "the second read parsed the event again"
    );
    assert_eq!(first.content_value()["body"], "hi");

    let mut redaction = NewEvent::message("m.room.redaction", json!({}));
    redaction.redacts = Some(id.clone());
    n.send(&room, &alice, redaction).await;
    let after = read(id.clone()).await.unwrap().expect("stored");
    assert_eq!(after.content_value(), json!({}), "served the unredacted PDU");
}

#[tokio::test]
async fn an_event_from_a_rolled_back_write_is_not_served() {
    let n = bare(2);
    let alice = n.register("alice").await;
    let room = n.create(&alice, json!({})).await;
    let (id, r, a) = (n.id.clone(), room.clone(), alice.clone());
    let lost = Arc::new(Mutex::new(String::new()));
    let out = lost.clone();
    n.db.write(move |tx| {
        let ev = NewEvent::message("m.room.message", json!({"body": "lost"}));
        let pdu = append_local(tx, &id, &r, &a, ev, None)?;
        assert!(
            tx.pdu(pdu.event_id.as_str()).is_some(),
            "visible inside its transaction"
        );
        *out.lock().unwrap() = pdu.event_id.to_string();
        Err::<(), _>(Error::internal("fails after the event was cached"))
    })
    .await
    .unwrap_err();
    let lost = lost.lock().unwrap().clone();
    let seen = n.db.write(move |tx| Ok(tx.pdu(&lost))).await.unwrap();
    assert!(seen.is_none(), "a rolled-back event was served from the cache");
}

#[tokio::test]
async fn a_write_that_panics_is_rolled_back_and_writing_goes_on() {
    let n = bare(3);
    let alice = n.register("alice").await;
    let room = n.create(&alice, json!({})).await;
    let (id, r, a) = (n.id.clone(), room.clone(), alice.clone());
    let panicked =
        n.db.write(move |tx| -> crate::Result<()> {
            let ev = NewEvent::message("m.room.message", json!({"body": "lost"}));
            append_local(tx, &id, &r, &a, ev, None)?;
            panic!("a bug in a write closure");
        })
        .await;
    assert!(panicked.is_err());
    assert_eq!(messages(&n).await, 0, "the panicked write was kept");
    n.send(
        &room,
        &alice,
        NewEvent::message("m.room.message", json!({"body": "kept"})),
    )
    .await;
    assert_eq!(messages(&n).await, 1);
}

async fn messages(n: &Node) -> i64 {
    n.db.read(|c| {
        let sql = "SELECT COUNT(*) FROM events WHERE type = 'm.room.message'";
        Ok(c.query_row(sql, [], |r| r.get(0))?)
    })
    .await
    .unwrap()
}
