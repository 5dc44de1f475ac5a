//! `GET /rooms/{roomId}/threads` and bundled aggregations (`unsigned.m.relations`) in
//! /event, /messages and /threads.

use reqwest::Method;
use serde_json::{Value, json};

use super::{V3, relate, send};
use crate::common::*;
use crate::events::{room_path, set_membership, shared_room};

fn threads_path(room: &str, query: &str) -> String {
    format!("/_matrix/client/v1/rooms/{}/threads{query}", enc(room))
}

async fn threads(n: &TestNode, u: &User, room: &str, query: &str) -> Value {
    let res = n.get(&threads_path(room, query), &u.token).await;
    assert_eq!(res.0, 200, "threads: {:?}", res);
    res.1
}

fn chunk_ids(page: &Value) -> Vec<String> {
    page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

async fn event(n: &TestNode, u: &User, room: &str, id: &str) -> Value {
    let res = n
        .get(&room_path(room, &format!("event/{}", enc(id))), &u.token)
        .await;
    assert_eq!(res.0, 200, "event: {:?}", res);
    res.1
}

#[tokio::test]
async fn threads_list_roots_by_latest_reply_with_summaries() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = shared_room(&n, &alice, &bob).await;
    set_membership(&n, &carol, &room, "join").await;
    let first = n.send_text(&alice, &room, "first root").await;
    let second = n.send_text(&bob, &room, "second root").await;
    relate(&n, &bob, &room, &first, "m.thread", "bob in first").await;
    relate(&n, &alice, &room, &second, "m.thread", "alice in second").await;
    let latest = relate(&n, &alice, &room, &first, "m.thread", "alice in first").await;
    n.send_text(&alice, &room, "no thread").await;

    let page = threads(&n, &carol, &room, "").await;
    assert_eq!(chunk_ids(&page), [first.as_str(), second.as_str()]);
    assert!(page.get("next_batch").is_none(), "{page}");
    let summary = &page["chunk"][0]["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 2, "{page}");
    assert_eq!(summary["latest_event"]["event_id"], latest.as_str());
    assert_eq!(summary["latest_event"]["content"]["body"], "alice in first");
    assert_eq!(summary["latest_event"]["room_id"], room.as_str());
    assert_eq!(summary["current_user_participated"], false);
    assert_eq!(
        page["chunk"][1]["unsigned"]["m.relations"]["m.thread"]["count"],
        1
    );

    // Participation: replying, or having sent the root.
    let page = threads(&n, &bob, &room, "?include=participated").await;
    assert_eq!(chunk_ids(&page), [first.as_str(), second.as_str()]);
    assert_eq!(
        page["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
        true
    );
    assert!(chunk_ids(&threads(&n, &carol, &room, "?include=participated").await).is_empty());
    relate(&n, &carol, &room, &second, "m.thread", "carol in second").await;
    let page = threads(&n, &carol, &room, "?include=participated&limit=5").await;
    assert_eq!(chunk_ids(&page), [second.as_str()]);

    // Pages of one: second (newest reply now), then first, then done.
    let page = threads(&n, &alice, &room, "?limit=1").await;
    assert_eq!(chunk_ids(&page), [second.as_str()]);
    let next = page["next_batch"].as_str().expect("next_batch").to_owned();
    let page = threads(&n, &alice, &room, &format!("?limit=1&from={next}")).await;
    assert_eq!(chunk_ids(&page), [first.as_str()]);
    if let Some(next) = page["next_batch"].as_str() {
        let page = threads(&n, &alice, &room, &format!("?limit=1&from={next}")).await;
        assert!(chunk_ids(&page).is_empty(), "{page}");
    }
}

#[tokio::test]
async fn threads_errors() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let dave = n.register("dave").await;
    let room = n.create_room(&alice, json!({})).await;
    for bad in ["?include=mine", "?limit=0", "?limit=x", "?from=garbage"] {
        let res = n.get(&threads_path(&room, bad), &alice.token).await;
        assert_err(&res, 400, "M_INVALID_PARAM");
    }
    assert_err(
        &n.get(&threads_path(&room, ""), &dave.token).await,
        403,
        "M_FORBIDDEN",
    );
    let unknown = format!("!unknown:{}", n.server_name());
    assert_err(
        &n.get(&threads_path(&unknown, ""), &alice.token).await,
        403,
        "M_FORBIDDEN",
    );
    let res = n.call(Method::GET, &threads_path(&room, ""), None, None).await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
    // A room with no threads lists none.
    let page = threads(&n, &alice, &room, "").await;
    assert_eq!(page, json!({"chunk": []}));
}

#[tokio::test]
async fn event_and_messages_bundle_threads_edits_and_references() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = shared_room(&n, &alice, &bob).await;
    let root = n.send_text(&alice, &room, "original").await;
    let reply = relate(&n, &bob, &room, &root, "m.thread", "a reply").await;
    let reply_edit = relate(&n, &bob, &room, &reply, "m.replace", "an edited reply").await;
    relate(&n, &alice, &room, &root, "m.replace", "first edit").await;
    let edit = relate(&n, &alice, &room, &root, "m.replace", "second edit").await;
    // Not valid edits: someone else's, and one without m.new_content.
    relate(&n, &bob, &room, &root, "m.replace", "bob's edit").await;
    send(
        &n,
        &alice,
        &room,
        json!({"msgtype": "m.text", "body": "x", "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
    )
    .await;
    let reference = relate(&n, &bob, &room, &root, "m.reference", "see above").await;
    // Annotations are not aggregated.
    let reaction = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}});
    let res = crate::events::send_raw(&n, &bob, &room, "m.reaction", "r1", reaction).await;
    assert_eq!(res.0, 200, "{:?}", res);

    let ev = event(&n, &alice, &room, &root).await;
    let rel = &ev["unsigned"]["m.relations"];
    assert_eq!(ev["content"]["body"], "original", "content is never replaced");
    assert_eq!(rel["m.thread"]["count"], 1, "{rel}");
    assert_eq!(rel["m.thread"]["latest_event"]["event_id"], reply.as_str());
    assert_eq!(
        rel["m.thread"]["current_user_participated"], true,
        "alice sent the root"
    );
    // The latest event carries its own aggregations.
    assert_eq!(
        rel["m.thread"]["latest_event"]["unsigned"]["m.relations"]["m.replace"]["event_id"],
        reply_edit.as_str()
    );
    assert_eq!(rel["m.replace"]["event_id"], edit.as_str());
    assert_eq!(
        rel["m.replace"]["content"]["m.new_content"]["body"],
        "second edit"
    );
    assert_eq!(rel["m.reference"], json!({"chunk": [{"event_id": reference}]}));
    assert!(rel.get("m.annotation").is_none());

    // /messages renders the same bundle; /sync (no room ID) too.
    let res = n
        .get(&room_path(&room, "messages?dir=b&limit=50"), &bob.token)
        .await;
    assert_eq!(res.0, 200);
    let chunk = res.1["chunk"].as_array().expect("chunk");
    let in_page = chunk
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .expect("root in page");
    assert_eq!(in_page["unsigned"]["m.relations"]["m.thread"]["count"], 1);
    assert_eq!(
        in_page["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
        true
    );
    assert_eq!(
        in_page["unsigned"]["m.relations"]["m.replace"]["event_id"],
        edit.as_str()
    );
    // Events without children, and state events, get no bundle.
    for e in chunk
        .iter()
        .filter(|e| e["event_id"] != root.as_str() && e["event_id"] != reply.as_str())
    {
        assert!(e["unsigned"].get("m.relations").is_none(), "{e}");
    }

    // A redacted original bundles no edits; the thread stays.
    let res = n
        .put(
            &room_path(&room, &format!("redact/{}/rd1", enc(&root))),
            &alice.token,
            json!({}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let rel = &event(&n, &alice, &room, &root).await["unsigned"]["m.relations"];
    assert!(rel.get("m.replace").is_none(), "{rel}");
    assert_eq!(rel["m.thread"]["count"], 1);
}

#[tokio::test]
async fn aggregations_skip_ignored_users_and_replies_after_leaving() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = shared_room(&n, &alice, &bob).await;
    set_membership(&n, &carol, &room, "join").await;
    let root = n.send_text(&alice, &room, "root").await;
    let by_alice = relate(&n, &alice, &room, &root, "m.thread", "alice").await;
    relate(&n, &bob, &room, &root, "m.thread", "bob").await;

    // Alice ignores bob: his reply neither counts nor is the latest.
    let ignore = format!(
        "{V3}/user/{}/account_data/m.ignored_user_list",
        enc(&alice.user_id)
    );
    let res = n
        .put(
            &ignore,
            &alice.token,
            json!({"ignored_users": {bob.user_id.clone(): {}}}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let summary = &event(&n, &alice, &room, &root).await["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 1, "{summary}");
    assert_eq!(summary["latest_event"]["event_id"], by_alice.as_str());
    assert_eq!(
        event(&n, &carol, &room, &root).await["unsigned"]["m.relations"]["m.thread"]["count"],
        2
    );

    // Carol leaves; replies after that are not hers to see.
    set_membership(&n, &carol, &room, "leave").await;
    relate(&n, &alice, &room, &root, "m.thread", "after carol left").await;
    let summary = &event(&n, &carol, &room, &root).await["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], 2, "{summary}");
    assert_eq!(
        threads(&n, &carol, &room, "").await["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"],
        2
    );
    assert_eq!(
        event(&n, &bob, &room, &root).await["unsigned"]["m.relations"]["m.thread"]["count"],
        3
    );
}

#[tokio::test]
async fn roots_by_ignored_users_are_listed_redacted() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = shared_room(&n, &alice, &bob).await;
    let root = n.send_text(&bob, &room, "bob's root").await;
    relate(&n, &alice, &room, &root, "m.thread", "alice replies").await;
    let ignore = format!(
        "{V3}/user/{}/account_data/m.ignored_user_list",
        enc(&alice.user_id)
    );
    let res = n
        .put(
            &ignore,
            &alice.token,
            json!({"ignored_users": {bob.user_id.clone(): {}}}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);

    let page = threads(&n, &alice, &room, "").await;
    assert_eq!(chunk_ids(&page), [root.as_str()]);
    assert_eq!(page["chunk"][0]["content"], json!({}), "{page}");
    assert_eq!(
        page["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"],
        1
    );
    let page = threads(&n, &bob, &room, "").await;
    assert_eq!(page["chunk"][0]["content"]["body"], "bob's root");
}
