//! Test harness: start a real node, talk HTTP to it.

#![allow(dead_code)]

use std::path::PathBuf;

use meshserver::config::Config;
use meshserver::node::Node;
use reqwest::Method;
use serde_json::{Value, json};

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
        let node = Node::start(Config::for_data_dir(dir.path()))
            .await
            .expect("node starts");
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

pub fn assert_err(res: &(u16, Value), status: u16, errcode: &str) {
    assert_eq!(res.0, status, "expected {status} {errcode}, got {:?}", res);
    assert_eq!(res.1["errcode"], errcode, "expected {errcode}, got {:?}", res);
}
