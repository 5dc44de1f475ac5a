//! Room aliases, directory visibility and publicRooms.

use reqwest::Method;
use serde_json::{Value, json};

use super::{V3, delete};
use crate::common::*;

#[tokio::test]
async fn alias_put_get_delete() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    n.join(&bob, &room).await;
    let alias = format!("#hall:{}", n.server_name());
    let path = |a: &str| format!("{V3}/directory/room/{}", enc(a));

    assert_err(&n.get(&path(&alias), &alice.token).await, 404, "M_NOT_FOUND");
    let res = n.put(&path(&alias), &alice.token, json!({"room_id": room})).await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_eq!(res.1, json!({}));
    // Resolving needs no access token.
    let (status, body) = n.call(Method::GET, &path(&alias), None, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_eq!(body["servers"], json!([n.server_name()]));

    // Conflicts and bad input change nothing.
    let other = n.create_room(&alice, json!({})).await;
    let res = n
        .put(&path(&alias), &alice.token, json!({"room_id": other}))
        .await;
    assert_err(&res, 409, "M_UNKNOWN");
    assert_eq!(
        n.get(&path(&alias), &alice.token).await.1["room_id"],
        room.as_str()
    );
    let res = n
        .put(&path("#x:remote.example"), &alice.token, json!({"room_id": room}))
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let res = n.put(&path("hall"), &alice.token, json!({"room_id": room})).await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let fresh = format!("#fresh:{}", n.server_name());
    let res = n.put(&path(&fresh), &alice.token, json!({})).await;
    assert_err(&res, 400, "M_BAD_JSON");
    let res = n
        .put(&path(&fresh), &alice.token, json!({"room_id": "nope"}))
        .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    let unknown = format!("!unknown:{}", n.server_name());
    let res = n
        .put(&path(&fresh), &alice.token, json!({"room_id": unknown}))
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");
    // Only members may add aliases.
    let res = n.put(&path(&fresh), &carol.token, json!({"room_id": room})).await;
    assert_err(&res, 403, "M_FORBIDDEN");
    assert_err(&n.get(&path(&fresh), &alice.token).await, 404, "M_NOT_FOUND");
    assert_err(&n.get(&path("nope"), &alice.token).await, 400, "M_INVALID_PARAM");
    assert_err(
        &n.get(&path("#a:remote.example"), &alice.token).await,
        404,
        "M_NOT_FOUND",
    );

    // Bob (no power, not the creator) may not delete Alice's alias; Alice may.
    assert_err(&delete(&n, &bob, &alias).await, 403, "M_FORBIDDEN");
    assert_eq!(n.get(&path(&alias), &bob.token).await.0, 200);
    let res = delete(&n, &alice, &alias).await;
    assert_eq!(res.0, 200, "{:?}", res);
    assert_err(&n.get(&path(&alias), &bob.token).await, 404, "M_NOT_FOUND");
    assert_err(&delete(&n, &alice, &alias).await, 404, "M_NOT_FOUND");
    assert_err(&delete(&n, &alice, "bad").await, 400, "M_INVALID_PARAM");
    let res = n.call(Method::DELETE, &path(&fresh), None, None).await;
    assert_err(&res, 401, "M_MISSING_TOKEN");

    // A member may delete an alias they created, and the alias is free again.
    let mine = format!("#bobs:{}", n.server_name());
    assert_eq!(
        n.put(&path(&mine), &bob.token, json!({"room_id": room})).await.0,
        200
    );
    assert_eq!(delete(&n, &bob, &mine).await.0, 200);
    assert_eq!(
        n.put(&path(&mine), &alice.token, json!({"room_id": other}))
            .await
            .0,
        200
    );
    assert_eq!(n.get(&path(&mine), &bob.token).await.1["room_id"], other.as_str());
    // Alice has the power to send m.room.canonical_alias, so she may delete Bob's alias.
    assert_eq!(
        n.put(&path(&fresh), &bob.token, json!({"room_id": room})).await.0,
        200
    );
    assert_eq!(delete(&n, &alice, &fresh).await.0, 200);
}

#[tokio::test]
async fn directory_visibility() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, json!({"preset": "public_chat"})).await;
    n.join(&bob, &room).await;
    let path = format!("{V3}/directory/list/room/{}", enc(&room));
    let visibility = || async { n.call(Method::GET, &path, None, None).await };

    assert_eq!(visibility().await.1, json!({"visibility": "private"}));
    let res = n.put(&path, &bob.token, json!({"visibility": "public"})).await;
    assert_err(&res, 403, "M_FORBIDDEN");
    let res = n.put(&path, &alice.token, json!({"visibility": "secret"})).await;
    assert_err(&res, 400, "M_INVALID_PARAM");
    assert_eq!(visibility().await.1["visibility"], "private");
    // `visibility` defaults to public.
    assert_eq!(n.put(&path, &alice.token, json!({})).await.0, 200);
    assert_eq!(visibility().await.1["visibility"], "public");
    let res = n.put(&path, &alice.token, json!({"visibility": "private"})).await;
    assert_eq!(res.0, 200);
    assert_eq!(visibility().await.1["visibility"], "private");

    let unknown = format!(
        "{V3}/directory/list/room/{}",
        enc(&format!("!x:{}", n.server_name()))
    );
    assert_err(
        &n.call(Method::GET, &unknown, None, None).await,
        404,
        "M_NOT_FOUND",
    );
    let res = n
        .put(&unknown, &alice.token, json!({"visibility": "public"}))
        .await;
    assert_err(&res, 404, "M_NOT_FOUND");
    let bad = format!("{V3}/directory/list/room/bad");
    assert_err(
        &n.call(Method::GET, &bad, None, None).await,
        400,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn public_rooms_list_filter_and_paginate() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let cats = n
        .create_room(
            &alice,
            json!({"visibility": "public", "preset": "public_chat", "name": "Cats", "topic": "Feline chat",
                   "room_alias_name": "cats"}),
        )
        .await;
    n.join(&bob, &cats).await;
    let dogs = n
        .create_room(
            &alice,
            json!({"visibility": "public", "preset": "private_chat", "name": "Dogs", "topic": "Woof"}),
        )
        .await;
    let space = n
        .create_room(
            &alice,
            json!({"visibility": "public", "preset": "public_chat", "name": "Pets space",
                   "creation_content": {"type": "m.space"}}),
        )
        .await;
    let hidden = n
        .create_room(&alice, json!({"preset": "public_chat", "name": "Hidden cats"}))
        .await;

    // No access token needed for GET.
    let (status, body) = n
        .call(Method::GET, &format!("{V3}/publicRooms"), None, None)
        .await;
    assert_eq!(status, 200, "{body}");
    let chunk = body["chunk"].as_array().expect("chunk");
    let listed: Vec<&str> = chunk
        .iter()
        .map(|r| r["room_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(chunk.len(), 3, "{body}");
    assert_eq!(listed[0], cats, "largest room first");
    assert!(listed.contains(&dogs.as_str()) && listed.contains(&space.as_str()));
    assert!(!listed.contains(&hidden.as_str()));
    assert_eq!(body["total_room_count_estimate"], 3);
    assert!(body.get("next_batch").is_none() && body.get("prev_batch").is_none());
    let c = &chunk[0];
    assert_eq!(c["name"], "Cats");
    assert_eq!(c["topic"], "Feline chat");
    assert_eq!(c["canonical_alias"], format!("#cats:{}", n.server_name()));
    assert_eq!(c["num_joined_members"], 2);
    assert_eq!(c["world_readable"], false);
    assert_eq!(c["guest_can_join"], false);
    assert_eq!(c["join_rule"], "public");
    assert!(c.get("room_type").is_none());
    let s = chunk
        .iter()
        .find(|r| r["room_id"] == space.as_str())
        .expect("space");
    assert_eq!(s["room_type"], "m.space");
    let d = chunk
        .iter()
        .find(|r| r["room_id"] == dogs.as_str())
        .expect("dogs");
    assert_eq!(d["join_rule"], "invite");
    assert_eq!(d["guest_can_join"], true);

    // Search term on name, topic and alias; room type filter.
    let public_rooms = format!("{V3}/publicRooms");
    let search = |body: Value| n.post(&public_rooms, &bob.token, body);
    let found = |res: &(u16, Value)| -> Vec<String> {
        assert_eq!(res.0, 200, "{:?}", res);
        let mut v: Vec<String> = res.1["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .map(|r| r["room_id"].as_str().unwrap_or("").to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        found(&search(json!({"filter": {"generic_search_term": "cAtS"}})).await),
        vec![cats.clone()]
    );
    assert_eq!(
        found(&search(json!({"filter": {"generic_search_term": "woof"}})).await),
        vec![dogs.clone()]
    );
    assert_eq!(
        found(&search(json!({"filter": {"generic_search_term": "#cats:"}})).await),
        vec![cats.clone()]
    );
    let res = search(json!({"filter": {"generic_search_term": "zebra"}})).await;
    assert!(found(&res).is_empty());
    assert_eq!(res.1["total_room_count_estimate"], 0);
    let res = search(json!({"filter": {"room_types": ["m.space"]}})).await;
    assert_eq!(found(&res), vec![space.clone()]);
    let res = search(json!({"filter": {"room_types": [null]}})).await;
    let mut plain = vec![cats.clone(), dogs.clone()];
    plain.sort();
    assert_eq!(found(&res), plain);

    // Pagination: next_batch, then prev_batch back to the start.
    let page1 = search(json!({"limit": 2})).await;
    assert_eq!(found(&page1).len(), 2);
    let next = page1.1["next_batch"].as_str().expect("next_batch").to_owned();
    assert!(page1.1.get("prev_batch").is_none());
    let page2 = n
        .call(
            Method::GET,
            &format!("{V3}/publicRooms?limit=2&since={next}"),
            None,
            None,
        )
        .await;
    assert_eq!(found(&page2).len(), 1);
    assert!(page2.1.get("next_batch").is_none());
    let prev = page2.1["prev_batch"].as_str().expect("prev_batch").to_owned();
    let back = search(json!({"limit": 2, "since": prev})).await;
    assert_eq!(found(&back), found(&page1));
    let mut all: Vec<String> = found(&page1).into_iter().chain(found(&page2)).collect();
    all.sort();
    let mut want = vec![cats.clone(), dogs.clone(), space.clone()];
    want.sort();
    assert_eq!(all, want);

    // Another server's directory is empty for now; bad input is rejected.
    let res = n
        .call(
            Method::GET,
            &format!("{V3}/publicRooms?server=remote.example"),
            None,
            None,
        )
        .await;
    assert_eq!(res.0, 200);
    assert_eq!(res.1["chunk"], json!([]));
    let res = n
        .call(
            Method::GET,
            &format!("{V3}/publicRooms?server={}", n.server_name()),
            None,
            None,
        )
        .await;
    assert_eq!(res.1["chunk"].as_array().map(Vec::len), Some(3));
    let bad = [
        format!("{V3}/publicRooms?limit=-1"),
        format!("{V3}/publicRooms?since=bogus"),
    ];
    for p in bad {
        assert_err(&n.call(Method::GET, &p, None, None).await, 400, "M_INVALID_PARAM");
    }
    assert_err(&search(json!({"limit": "ten"})).await, 400, "M_BAD_JSON");
    let res = n
        .call(Method::POST, &format!("{V3}/publicRooms"), None, Some(json!({})))
        .await;
    assert_err(&res, 401, "M_MISSING_TOKEN");

    // Unpublishing removes the room; deleting the canonical alias clears it from the entry.
    let vis = format!("{V3}/directory/list/room/{}", enc(&dogs));
    assert_eq!(
        n.put(&vis, &alice.token, json!({"visibility": "private"}))
            .await
            .0,
        200
    );
    let alias = format!(
        "{V3}/directory/room/{}",
        enc(&format!("#cats:{}", n.server_name()))
    );
    let res = n.call(Method::DELETE, &alias, Some(&alice.token), None).await;
    assert_eq!(res.0, 200, "{:?}", res);
    let res = search(json!({})).await;
    assert_eq!(found(&res).len(), 2);
    let c = res.1["chunk"]
        .as_array()
        .and_then(|c| c.iter().find(|r| r["room_id"] == cats.as_str()).cloned())
        .expect("cats");
    assert!(c.get("canonical_alias").is_none(), "{c}");
}
