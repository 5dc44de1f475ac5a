//! The small protocols across real nodes: a user on one node sees a user of another
//! node's profile, keys and published rooms through the ordinary Client-Server API.

use serde_json::{Value, json};

use crate::common::{TestNode, User, enc};
use crate::net::{mesh, set_displayname};

const V3: &str = "/_matrix/client/v3";

/// Uploads device keys and the given one-time key IDs for `user`'s device.
async fn upload_keys(node: &TestNode, user: &User, one_time: &[&str]) {
    let d = &user.device_id;
    let mut otks = serde_json::Map::new();
    for id in one_time {
        otks.insert(
            format!("signed_curve25519:{id}"),
            json!({"key": format!("otk-{id}")}),
        );
    }
    let body = json!({
        "device_keys": {
            "user_id": user.user_id, "device_id": d,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {format!("curve25519:{d}"): "curve", format!("ed25519:{d}"): "ed"},
            "signatures": {&user.user_id: {format!("ed25519:{d}"): "sig"}},
        },
        "one_time_keys": otks,
    });
    let (status, res) = node.post(&format!("{V3}/keys/upload"), &user.token, body).await;
    assert_eq!(status, 200, "{res}");
}

async fn claim(node: &TestNode, by: &User, of: &User) -> Value {
    let body = json!({"one_time_keys": {&of.user_id: {&of.device_id: "signed_curve25519"}}});
    let (status, res) = node.post(&format!("{V3}/keys/claim"), &by.token, body).await;
    assert_eq!(status, 200, "{res}");
    res
}

#[tokio::test]
async fn keys_profile_and_directory_cross_nodes() {
    let nodes = mesh(2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    upload_keys(b, &bob, &["K1", "K2"]).await;
    set_displayname(b, &bob, "Bob").await;
    let room = b
        .create_room(
            &bob,
            json!({"visibility": "public", "preset": "public_chat", "name": "bob's place"}),
        )
        .await;

    // Keys: alice on A queries bob's devices on B.
    let (status, res) = a
        .post(
            &format!("{V3}/keys/query"),
            &alice.token,
            json!({"device_keys": {&bob.user_id: []}}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["failures"], json!({}), "{res}");
    let keys = &res["device_keys"][&bob.user_id][&bob.device_id];
    assert_eq!(keys["keys"][format!("ed25519:{}", bob.device_id)], "ed", "{res}");

    // Each claim gets a different one-time key; none is ever handed out twice.
    let first = claim(a, &alice, &bob).await;
    let second = claim(a, &alice, &bob).await;
    let id = |r: &Value| -> String {
        let keys = r["one_time_keys"][&bob.user_id][&bob.device_id]
            .as_object()
            .expect("a key");
        keys.keys().next().expect("one key").clone()
    };
    let mut ids = vec![id(&first), id(&second)];
    ids.sort();
    assert_eq!(ids, ["signed_curve25519:K1", "signed_curve25519:K2"]);
    let third = claim(a, &alice, &bob).await;
    assert_eq!(third["one_time_keys"], json!({}), "{third}");

    // Profile.
    let (status, res) = a
        .get(&format!("{V3}/profile/{}", enc(&bob.user_id)), &alice.token)
        .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["displayname"], "Bob");
    let unknown = format!("@nobody:{}", b.server_name());
    let (status, _) = a
        .get(&format!("{V3}/profile/{}", enc(&unknown)), &alice.token)
        .await;
    assert_eq!(status, 404);

    // Directory: B's room, asked of B by name and merged into A's own listing.
    let (status, res) = a
        .get(
            &format!("{V3}/publicRooms?server={}", b.server_name()),
            &alice.token,
        )
        .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["chunk"][0]["room_id"], json!(room), "{res}");
    let (status, res) = a
        .post(&format!("{V3}/publicRooms"), &alice.token, json!({}))
        .await;
    assert_eq!(status, 200, "{res}");
    let rooms: Vec<&Value> = res["chunk"].as_array().expect("chunk").iter().collect();
    assert!(
        rooms
            .iter()
            .any(|r| r["room_id"] == json!(room) && r["name"] == "bob's place"),
        "{res}"
    );
}

#[tokio::test]
async fn an_unreachable_node_is_reported_in_failures() {
    let nodes = mesh(1).await;
    let a = &nodes[0];
    let alice = a.register("alice").await;
    // A meshserver name no running node holds.
    let ghost = format!("@ghost:{}", "ab".repeat(32));
    let (status, res) = a
        .post(
            &format!("{V3}/keys/query"),
            &alice.token,
            json!({"device_keys": {&ghost: []}, "timeout": 2000}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    assert!(res["failures"].get("ab".repeat(32)).is_some(), "{res}");
    let (status, _) = a
        .get(&format!("{V3}/profile/{}", enc(&ghost)), &alice.token)
        .await;
    assert_eq!(status, 404);
}
