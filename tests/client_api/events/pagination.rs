//! /messages, /context and /relations.

use std::collections::HashSet;

use serde_json::json;

use super::*;

/// Pages through /messages in `dir` with `limit`, returning every event and the tokens.
async fn page_all(n: &TestNode, u: &User, room: &str, dir: &str, limit: usize) -> Vec<Value> {
    let mut from: Option<String> = None;
    let mut out = Vec::new();
    for _ in 0..200 {
        let mut path = room_path(room, &format!("messages?dir={dir}&limit={limit}"));
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let (s, page) = n.get(&path, &u.token).await;
        assert_eq!(s, 200, "{page}");
        let chunk = page["chunk"].as_array().expect("chunk");
        assert!(chunk.len() <= limit);
        out.extend(chunk.iter().cloned());
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return out,
        }
    }
    panic!("pagination did not end");
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

#[tokio::test]
async fn backward_and_forward_pagination_return_every_event_once() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, json!({"name": "fifty"})).await;
    for i in 0..50 {
        n.send_text(&alice, &room, &format!("m{i}")).await;
    }
    let back = page_all(&n, &alice, &room, "b", 7).await;
    let want: Vec<String> = (0..50).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&Value::Array(back.clone())), want);
    let back_ids = ids(&back);
    assert_eq!(
        back_ids.iter().collect::<HashSet<_>>().len(),
        back_ids.len(),
        "no overlaps"
    );
    assert_eq!(
        back.last().expect("events")["type"],
        "m.room.create",
        "back to the start"
    );

    let fwd = page_all(&n, &alice, &room, "f", 9).await;
    let mut fwd_ids = ids(&fwd);
    assert_eq!(fwd[0]["type"], "m.room.create");
    fwd_ids.reverse();
    assert_eq!(
        fwd_ids, back_ids,
        "forwards is backwards reversed: no gaps either way"
    );

    // A page in the middle: from a backward `end`, forwards returns what came after it.
    let (_, first) = n
        .get(&room_path(&room, "messages?dir=b&limit=5"), &alice.token)
        .await;
    assert_eq!(bodies(&first["chunk"]), vec!["m49", "m48", "m47", "m46", "m45"]);
    let end = first["end"].as_str().expect("end");
    let (_, fwd) = n
        .get(
            &room_path(&room, &format!("messages?dir=f&limit=3&from={}", enc(end))),
            &alice.token,
        )
        .await;
    assert_eq!(bodies(&fwd["chunk"]), vec!["m45", "m46", "m47"]);
    assert_eq!(fwd["start"], end);
    // `to` stops the page.
    let to = fwd["end"].as_str().expect("end");
    let (_, back) = n
        .get(
            &room_path(&room, &format!("messages?dir=b&to={}", enc(to))),
            &alice.token,
        )
        .await;
    assert_eq!(bodies(&back["chunk"]), vec!["m49", "m48"]);
    assert!(back.get("end").is_none(), "{back}");
}

#[tokio::test]
async fn messages_filter_and_bad_parameters() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = shared_room(&n, &alice, &bob).await;
    for i in 0..3 {
        n.send_text(&alice, &room, &format!("a{i}")).await;
        n.send_text(&bob, &room, &format!("b{i}")).await;
    }
    let res = send_raw(
        &n,
        &bob,
        &room,
        "org.example.custom",
        "c",
        json!({"body": "custom"}),
    )
    .await;
    assert_eq!(res.0, 200);

    let filter = json!({"senders": [bob.user_id], "types": ["m.room.message"]}).to_string();
    let path = room_path(&room, &format!("messages?dir=b&limit=2&filter={}", enc(&filter)));
    let (s, page) = n.get(&path, &alice.token).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(bodies(&page["chunk"]), vec!["b2", "b1"]);
    let end = page["end"].as_str().expect("more to come");
    let (_, page) = n.get(&format!("{path}&from={}", enc(end)), &alice.token).await;
    assert_eq!(bodies(&page["chunk"]), vec!["b0"]);
    assert!(page.get("end").is_none(), "{page}");
    assert!(page.get("state").is_none());

    let filter = json!({"not_types": ["m.room.*"]}).to_string();
    let path = room_path(&room, &format!("messages?dir=f&filter={}", enc(&filter)));
    let (_, page) = n.get(&path, &alice.token).await;
    let types: Vec<_> = page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(types, vec![json!("org.example.custom")]);

    for (query, code) in [
        ("", "M_MISSING_PARAM"),
        ("dir=x", "M_INVALID_PARAM"),
        ("dir=b&from=garbage", "M_INVALID_PARAM"),
        ("dir=b&to=s", "M_INVALID_PARAM"),
        ("dir=b&limit=-1", "M_INVALID_PARAM"),
        ("dir=b&limit=ten", "M_INVALID_PARAM"),
        ("dir=b&filter=%7Bnot", "M_BAD_JSON"),
    ] {
        let res = n
            .get(&room_path(&room, &format!("messages?{query}")), &alice.token)
            .await;
        assert_err(&res, 400, code);
    }
    // Tokens in /sync's format, with a typing serial, are accepted.
    let (s, _) = n
        .get(&room_path(&room, "messages?dir=b&from=s1000_3"), &alice.token)
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn context_returns_events_around() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, json!({})).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(n.send_text(&alice, &room, &format!("c{i}")).await);
    }
    let path = room_path(&room, &format!("context/{}?limit=4", enc(&ids[2])));
    let (s, ctx) = n.get(&path, &alice.token).await;
    assert_eq!(s, 200, "{ctx}");
    assert_eq!(ctx["event"]["event_id"], ids[2].as_str());
    assert_eq!(bodies(&ctx["events_before"]), vec!["c1", "c0"]);
    assert_eq!(bodies(&ctx["events_after"]), vec!["c3", "c4"]);
    let state = ctx["state"].as_array().expect("state");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{ctx}");

    // The tokens continue the timeline in /messages without overlap.
    let start = ctx["start"].as_str().expect("start");
    let (_, back) = n
        .get(
            &room_path(&room, &format!("messages?dir=b&limit=1&from={}", enc(start))),
            &alice.token,
        )
        .await;
    assert_ne!(back["chunk"][0]["event_id"], ids[0].as_str());
    assert!(
        back["chunk"][0]["state_key"].is_string(),
        "the state events before c0: {back}"
    );
    let end = ctx["end"].as_str().expect("end");
    let (_, fwd) = n
        .get(
            &room_path(&room, &format!("messages?dir=f&from={}", enc(end))),
            &alice.token,
        )
        .await;
    assert_eq!(fwd["chunk"], json!([]));

    let (s, ctx) = n
        .get(
            &room_path(&room, &format!("context/{}?limit=0", enc(&ids[2]))),
            &alice.token,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(ctx["event"]["content"]["body"], "c2");
    assert_eq!(
        (ctx["events_before"].clone(), ctx["events_after"].clone()),
        (json!([]), json!([]))
    );

    let res = n.get(&room_path(&room, "context/%24unknown"), &alice.token).await;
    assert_err(&res, 404, "M_NOT_FOUND");
    let res = n
        .get(
            &room_path(&room, &format!("context/{}?limit=x", enc(&ids[2]))),
            &alice.token,
        )
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn relations_return_reactions_and_edits() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, json!({})).await;
    let parent = n.send_text(&alice, &room, "original").await;
    let reaction = json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": parent, "key": "👍"}});
    let (s, r) = send_raw(&n, &alice, &room, "m.reaction", "react", reaction.clone()).await;
    assert_eq!(s, 200, "{r}");
    let react_id = r["event_id"].clone();
    let res = send_raw(&n, &alice, &room, "m.reaction", "react-again", reaction).await;
    assert_err(&res, 400, "M_DUPLICATE_ANNOTATION");
    let edit = json!({
        "msgtype": "m.text", "body": "* edited",
        "m.new_content": {"msgtype": "m.text", "body": "edited"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": parent},
    });
    let (s, e) = send_raw(&n, &alice, &room, "m.room.message", "edit", edit).await;
    assert_eq!(s, 200, "{e}");
    let edit_id = e["event_id"].clone();
    n.send_text(&alice, &room, "unrelated").await;

    let rel = |rest: &str| {
        format!(
            "/_matrix/client/v1/rooms/{}/relations/{}{rest}",
            enc(&room),
            enc(&parent)
        )
    };
    let ids_of = |v: &Value| {
        v["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .map(|e| e["event_id"].clone())
            .collect::<Vec<_>>()
    };
    let (s, all) = n.get(&rel(""), &alice.token).await;
    assert_eq!(s, 200, "{all}");
    assert_eq!(
        ids_of(&all),
        vec![edit_id.clone(), react_id.clone()],
        "newest first"
    );
    assert!(all.get("next_batch").is_none());
    let (_, ann) = n.get(&rel("/m.annotation"), &alice.token).await;
    assert_eq!(ids_of(&ann), vec![react_id.clone()]);
    let (_, rep) = n.get(&rel("/m.replace/m.room.message"), &alice.token).await;
    assert_eq!(ids_of(&rep), vec![edit_id.clone()]);
    let (_, none) = n.get(&rel("/m.annotation/m.room.message"), &alice.token).await;
    assert_eq!(none["chunk"], json!([]));
    // Paging one at a time, then forwards.
    let (_, p1) = n.get(&rel("?limit=1"), &alice.token).await;
    assert_eq!(ids_of(&p1), vec![edit_id.clone()]);
    let next = p1["next_batch"].as_str().expect("next_batch");
    let (_, p2) = n
        .get(&rel(&format!("?limit=1&from={}", enc(next))), &alice.token)
        .await;
    assert_eq!(ids_of(&p2), vec![react_id.clone()]);
    let (_, f) = n.get(&rel("?dir=f"), &alice.token).await;
    assert_eq!(ids_of(&f), vec![react_id, edit_id]);

    let res = n
        .get(
            &format!("/_matrix/client/v1/rooms/{}/relations/%24nope", enc(&room)),
            &alice.token,
        )
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");
    let carol = n.register("carol").await;
    let res = n.get(&rel(""), &carol.token).await;
    assert_err(&res, 404, "M_NOT_FOUND");
}
