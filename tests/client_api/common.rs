//! Test harness: start a real node, talk HTTP to it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use meshserver::config::Config;
use meshserver::node::Node;
use reqwest::Method;
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

pub struct TestNode {
    pub node: Option<Node>,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

#[derive(Clone, Debug)]
pub struct User {
    pub user_id: String,
    pub token: String,
    pub device_id: String,
}

impl TestNode {
    pub async fn start() -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> TestNode {
        let config = Config::for_data_dir(dir.path());
        Self::start_with(dir, config).await
    }

    pub async fn start_with(dir: tempfile::TempDir, config: Config) -> TestNode {
        let node = Node::start(config).await.expect("node starts");
        let url = node.client_url();
        TestNode {
            node: Some(node),
            url,
            dir,
            http: reqwest::Client::new(),
        }
    }

    /// Stops the node and starts a new one on the same data dir.
    pub async fn restart(mut self) -> TestNode {
        if let Some(n) = self.node.take() {
            n.stop().await;
        }
        Self::start_in(self.dir).await
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    pub fn server_name(&self) -> String {
        self.node
            .as_ref()
            .expect("running")
            .services
            .server_name()
            .to_string()
    }

    /// Sends a request; returns status and JSON body (`Null` when the body is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let text = res.text().await.expect("body read");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }
    pub async fn put(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    /// Registers `name` with password `pw-<name>` through the dummy UIA flow.
    pub async fn register(&self, name: &str) -> User {
        let (status, body) = self
            .call(
                Method::POST,
                "/_matrix/client/v3/register",
                None,
                Some(json!({"username": name, "password": format!("pw-{name}"), "auth": {"type": "m.login.dummy"}})),
            )
            .await;
        assert_eq!(status, 200, "register {name}: {body}");
        User {
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            token: body["access_token"].as_str().expect("token").to_owned(),
            device_id: body["device_id"].as_str().expect("device").to_owned(),
        }
    }

    /// Creates a room with `body`, asserting success; returns the room ID.
    pub async fn create_room(&self, user: &User, body: Value) -> String {
        let (status, res) = self
            .post("/_matrix/client/v3/createRoom", &user.token, body)
            .await;
        assert_eq!(status, 200, "createRoom: {res}");
        res["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Sends a text message with a fresh transaction ID, asserting success; returns its event ID.
    pub async fn send_text(&self, user: &User, room: &str, body: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let txn = format!("common-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.send_text_txn(user, room, &txn, body).await
    }

    /// Sends a text message with transaction `txn`, asserting success; returns its event ID.
    pub async fn send_text_txn(&self, user: &User, room: &str, txn: &str, body: &str) -> String {
        let (status, res) = self
            .put(
                &format!("{V3}/rooms/{}/send/m.room.message/{}", enc(room), enc(txn)),
                &user.token,
                json!({"msgtype": "m.text", "body": body}),
            )
            .await;
        assert_eq!(status, 200, "send {body}: {res}");
        res["event_id"].as_str().expect("event_id").to_owned()
    }

    /// Joins `room` (an ID or alias), asserting success.
    pub async fn join(&self, user: &User, room: &str) {
        let (status, res) = self
            .post(&format!("{V3}/join/{}", enc(room)), &user.token, json!({}))
            .await;
        assert_eq!(status, 200, "join: {res}");
    }

    /// `by` invites `who` into `room`, asserting success.
    pub async fn invite(&self, by: &User, room: &str, who: &User) {
        let (status, res) = self
            .post(
                &format!("{V3}/rooms/{}/invite", enc(room)),
                &by.token,
                json!({"user_id": who.user_id}),
            )
            .await;
        assert_eq!(status, 200, "invite: {res}");
    }

    /// Leaves `room`, asserting success.
    pub async fn leave(&self, user: &User, room: &str) {
        let (status, res) = self
            .post(&format!("{V3}/rooms/{}/leave", enc(room)), &user.token, json!({}))
            .await;
        assert_eq!(status, 200, "leave: {res}");
    }

    /// Syncs (initial when `since` is `None`), asserting success.
    pub async fn sync(&self, user: &User, since: Option<&str>) -> Value {
        let path = match since {
            Some(t) => format!("{V3}/sync?since={}", enc(t)),
            None => format!("{V3}/sync"),
        };
        let (status, body) = self.get(&path, &user.token).await;
        assert_eq!(status, 200, "sync: {body}");
        body
    }

    /// Puts a state event; returns the raw response.
    pub async fn state_put(
        &self,
        user: &User,
        room: &str,
        kind: &str,
        key: &str,
        content: Value,
    ) -> (u16, Value) {
        let path = format!("{V3}/rooms/{}/state/{}/{}", enc(room), enc(kind), enc(key));
        self.put(&path, &user.token, content).await
    }

    /// The bodies of the text messages `user` reads from `/messages?{query}`, asserting success.
    pub async fn message_bodies(&self, user: &User, room: &str, query: &str) -> Vec<String> {
        let path = format!("{V3}/rooms/{}/messages?{query}", enc(room));
        let (status, page) = self.get(&path, &user.token).await;
        assert_eq!(status, 200, "{page}");
        bodies(&page["chunk"])
    }

    /// Logs `user` in again with their `pw-<localpart>` password as `device_id`
    /// (a new device unless it exists), asserting success.
    pub async fn login(&self, user: &User, device_id: &str) -> User {
        let localpart = user.user_id[1..].split(':').next().expect("localpart");
        let (status, body) = self
            .call(
                Method::POST,
                &format!("{V3}/login"),
                None,
                Some(json!({
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": user.user_id},
                    "password": format!("pw-{localpart}"),
                    "device_id": device_id,
                })),
            )
            .await;
        assert_eq!(status, 200, "login: {body}");
        User {
            user_id: user.user_id.clone(),
            token: body["access_token"].as_str().expect("token").to_owned(),
            device_id: device_id.to_owned(),
        }
    }
}

/// Percent-encodes a path segment (room IDs, event IDs, user IDs contain `!$@:#`).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The bodies of the text messages in a list of events (a /messages chunk).
pub fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

pub fn assert_err(res: &(u16, Value), status: u16, errcode: &str) {
    assert_eq!(res.0, status, "expected {status} {errcode}, got {:?}", res);
    assert_eq!(res.1["errcode"], errcode, "expected {errcode}, got {:?}", res);
}
