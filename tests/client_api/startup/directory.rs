//! `POST /user_directory/search`.

use reqwest::Method;
use serde_json::{Value, json};

use super::V3;
use crate::common::*;
use crate::events::shared_room;

async fn search(n: &TestNode, u: &User, body: Value) -> (u16, Value) {
    n.post(&format!("{V3}/user_directory/search"), &u.token, body)
        .await
}

fn ids(res: &Value) -> Vec<&str> {
    res["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["user_id"].as_str().expect("user_id"))
        .collect()
}

#[tokio::test]
async fn finds_local_users_by_id_and_display_name() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let path = format!("{V3}/profile/{}/displayname", enc(&bob.user_id));
    assert_eq!(
        n.put(&path, &bob.token, json!({"displayname": "Bobby Tables"}))
            .await
            .0,
        200
    );
    let avatar = format!("{V3}/profile/{}/avatar_url", enc(&bob.user_id));
    assert_eq!(
        n.put(&avatar, &bob.token, json!({"avatar_url": "mxc://x/bob"}))
            .await
            .0,
        200
    );

    // By display name, case-insensitively, with the profile in the result.
    let (status, res) = search(&n, &alice, json!({"search_term": "TABLES"})).await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(
        res,
        json!({"results": [{"user_id": bob.user_id, "display_name": "Bobby Tables",
                            "avatar_url": "mxc://x/bob"}], "limited": false})
    );
    // By user ID, sharing no room with the searcher.
    let (_, res) = search(&n, &alice, json!({"search_term": "caro"})).await;
    assert_eq!(ids(&res), [carol.user_id.as_str()]);
    // Nothing matches.
    let (_, res) = search(&n, &alice, json!({"search_term": "zed"})).await;
    assert_eq!(res, json!({"results": [], "limited": false}));
    let (_, res) = search(&n, &alice, json!({"search_term": "  "})).await;
    assert_eq!(res, json!({"results": [], "limited": false}));

    // Every user ID contains the server name: the limit cuts the list and says so.
    let server = n.server_name();
    let (_, res) = search(&n, &alice, json!({"search_term": server, "limit": 2})).await;
    assert_eq!(ids(&res).len(), 2, "{res}");
    assert_eq!(res["limited"], true);
    let (_, res) = search(&n, &alice, json!({"search_term": server})).await;
    assert_eq!(ids(&res).len(), 3, "{res}");
    assert_eq!(res["limited"], false);
    // Better matches first: an exact localpart before a substring.
    n.register("bobcat").await;
    let (_, res) = search(&n, &alice, json!({"search_term": "bob"})).await;
    assert_eq!(ids(&res)[0], bob.user_id.as_str());
}

#[tokio::test]
async fn local_users_show_their_global_profile_not_a_room_nickname() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = shared_room(&n, &alice, &bob).await;
    let res = n
        .state_put(
            &bob,
            &room,
            "m.room.member",
            &bob.user_id,
            json!({"membership": "join", "displayname": "Nickname"}),
        )
        .await;
    assert_eq!(res.0, 200, "{:?}", res);
    let (_, res) = search(&n, &alice, json!({"search_term": "nickname"})).await;
    assert_eq!(ids(&res), Vec::<&str>::new());
    let (_, res) = search(&n, &alice, json!({"search_term": "bob"})).await;
    assert_eq!(res["results"], json!([{"user_id": bob.user_id}]));
}

#[tokio::test]
async fn bad_searches_are_rejected() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let path = format!("{V3}/user_directory/search");
    assert_err(&search(&n, &alice, json!({})).await, 400, "M_BAD_JSON");
    assert_err(
        &search(&n, &alice, json!({"search_term": 5})).await,
        400,
        "M_BAD_JSON",
    );
    assert_err(
        &search(&n, &alice, json!({"search_term": "a", "limit": -1})).await,
        400,
        "M_INVALID_PARAM",
    );
    let res = n
        .call(Method::POST, &path, None, Some(json!({"search_term": "a"})))
        .await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
}
