//! The content repository: uploads (direct and to reserved `mxc://` URIs), downloads on the
//! authenticated and legacy paths, thumbnails, the upload limit and what it leaves on disk.

mod download;
mod thumbnail;
mod upload;

use std::path::{Path, PathBuf};

use meshserver::config::Config;
use meshserver::node::Node;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::common::*;

/// A node whose uploads are limited to `max_upload_bytes`.
pub async fn start_with_limit(max_upload_bytes: u64) -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::for_data_dir(dir.path());
    config.max_upload_bytes = max_upload_bytes;
    let node = Node::start(config).await.expect("node starts");
    let url = node.client_url();
    TestNode {
        node: Some(node),
        url,
        dir,
        http: reqwest::Client::new(),
    }
}

/// Uploads `bytes` with `POST /_matrix/media/v3/upload`; returns status and JSON body.
pub async fn upload_raw(
    n: &TestNode,
    token: Option<&str>,
    bytes: Vec<u8>,
    content_type: Option<&str>,
    filename: Option<&str>,
) -> (u16, Value) {
    let mut path = "/_matrix/media/v3/upload".to_owned();
    if let Some(f) = filename {
        path.push_str(&format!("?filename={}", enc(f)));
    }
    send_bytes(n, reqwest::Method::POST, &path, token, bytes, content_type).await
}

pub async fn send_bytes(
    n: &TestNode,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    bytes: Vec<u8>,
    content_type: Option<&str>,
) -> (u16, Value) {
    let mut req = n.http.request(method, format!("{}{path}", n.url)).body(bytes);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header(reqwest::header::CONTENT_TYPE, ct);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let text = res.text().await.expect("body read");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Uploads and returns the media ID, asserting success and the `mxc://` shape.
pub async fn upload(
    n: &TestNode,
    u: &User,
    bytes: &[u8],
    content_type: &str,
    filename: Option<&str>,
) -> String {
    let (status, body) = upload_raw(n, Some(&u.token), bytes.to_vec(), Some(content_type), filename).await;
    assert_eq!(status, 200, "upload: {body}");
    media_id_of(n, &body)
}

/// The media ID of a `content_uri`, checking it names this server and uses the spec's
/// alphabet with at least 128 bits of entropy.
pub fn media_id_of(n: &TestNode, body: &Value) -> String {
    let uri = body["content_uri"].as_str().expect("content_uri");
    let prefix = format!("mxc://{}/", n.server_name());
    let id = uri
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{uri} not under {prefix}"));
    assert!(id.len() >= 22, "media ID too short: {id}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "media ID outside the spec's alphabet: {id}"
    );
    id.to_owned()
}

/// A raw GET: status, headers and body bytes.
pub async fn fetch(n: &TestNode, path: &str, token: Option<&str>) -> (u16, HeaderMap, Vec<u8>) {
    let mut req = n.http.get(format!("{}{path}", n.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.bytes().await.expect("body read").to_vec();
    (status, headers, body)
}

/// A GET expected to fail: status and JSON body, for `assert_err`.
pub async fn fetch_err(n: &TestNode, path: &str, token: Option<&str>) -> (u16, Value) {
    let (status, _, body) = fetch(n, path, token).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

pub fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header in {h:?}"))
        .to_str()
        .expect("ASCII header")
}

pub fn download_path(n: &TestNode, media_id: &str) -> String {
    format!("/_matrix/client/v1/media/download/{}/{media_id}", n.server_name())
}

/// Every file under `dir`, recursively (none when it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Rows in the node's `media` table, read straight from its database.
pub fn media_rows(n: &TestNode) -> i64 {
    let db = rusqlite::Connection::open(n.data_dir().join("meshserver.db")).expect("open db");
    db.query_row("SELECT COUNT(*) FROM media", [], |r| r.get(0))
        .expect("count media")
}
