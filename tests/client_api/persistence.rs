//! What a node acknowledged survives a restart and a kill -9.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn restart_keeps_users_tokens_rooms_and_messages() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, json!({"name": "kept"})).await;
    for i in 0..5 {
        n.send_text_txn(&alice, &room, &format!("t{i}"), &format!("m{i}"))
            .await;
    }
    let name_before = n.server_name();
    let n = n.restart().await;
    assert_eq!(n.server_name(), name_before, "identity survives restart");
    // The old token still works, the room and its messages are there.
    let who = n.get("/_matrix/client/v3/account/whoami", &alice.token).await;
    assert_eq!(who.0, 200, "{:?}", who);
    let rooms = n.get("/_matrix/client/v3/joined_rooms", &alice.token).await;
    assert_eq!(rooms.1["joined_rooms"], json!([room]));
    let mut got = n.message_bodies(&alice, &room, "dir=b&limit=100").await;
    got.reverse();
    assert_eq!(got, vec!["m0", "m1", "m2", "m3", "m4"]);
    // Login with the password still works.
    let (s, _) = n
        .call(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password", "user": "alice", "password": "pw-alice"})),
        )
        .await;
    assert_eq!(s, 200);
    // A new message after restart chains onto the old ones.
    n.send_text_txn(&alice, &room, "after", "after").await;
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real binary and returns it with its client URL (read from its stdout).
fn spawn_node(dir: &std::path::Path) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshserver"))
        .args(["run", "--client-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("reads banner");
    let url = line
        .split_whitespace()
        .last()
        .expect("banner names the URL")
        .to_owned();
    (Proc(child), url)
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (proc, url) = spawn_node(dir.path());
    let reg: Value = http
        .post(format!("{url}/_matrix/client/v3/register"))
        .json(&json!({"username": "k", "password": "pw-k", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = reg["access_token"].as_str().expect("token").to_owned();
    let room: Value = http
        .post(format!("{url}/_matrix/client/v3/createRoom"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room = room["room_id"].as_str().expect("room").to_owned();
    let mut acked = Vec::new();
    for i in 0..30 {
        let res = http
            .put(format!(
                "{url}/_matrix/client/v3/rooms/{}/send/m.room.message/k{i}",
                enc(&room)
            ))
            .bearer_auth(&token)
            .json(&json!({"msgtype": "m.text", "body": format!("k{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        acked.push(body["event_id"].as_str().expect("event_id").to_owned());
    }
    // SIGKILL: no shutdown path runs.
    let mut proc = proc;
    proc.0.kill().expect("kill -9");
    proc.0.wait().unwrap();

    let (_proc2, url2) = spawn_node(dir.path());
    for id in &acked {
        let res = http
            .get(format!(
                "{url2}/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(id)
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "acknowledged event {id} lost after kill -9");
    }
}
