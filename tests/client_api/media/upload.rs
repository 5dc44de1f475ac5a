use std::io::{Read, Write};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::*;

#[tokio::test]
async fn identical_uploads_share_one_blob() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let content = b"the same bytes, twice".to_vec();
    let a = upload(&n, &alice, &content, "text/plain", Some("a.txt")).await;
    let b = upload(&n, &alice, &content, "application/octet-stream", None).await;
    assert_ne!(a, b, "every upload gets its own media ID");

    let media = n.data_dir().join("media");
    let files = files_under(&media);
    let hash = blake3::hash(&content).to_hex().to_string();
    assert_eq!(
        files,
        vec![media.join(&hash[..2]).join(&hash)],
        "one blob named by its blake3"
    );

    // Each media ID keeps its own metadata over the shared blob.
    let (_, h, body) = fetch(&n, &download_path(&n, &b), Some(&alice.token)).await;
    assert_eq!(body, content);
    assert_eq!(header(&h, "content-type"), "application/octet-stream");
    assert_eq!(header(&h, "content-disposition"), "attachment");

    upload(&n, &alice, b"other bytes", "text/plain", None).await;
    assert_eq!(files_under(&media).len(), 2);
    assert_eq!(media_rows(&n), 3);
}

#[tokio::test]
async fn upload_needs_a_token() {
    let n = TestNode::start().await;
    let res = upload_raw(&n, None, b"x".to_vec(), Some("text/plain"), None).await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
    let res = upload_raw(&n, Some("nope"), b"x".to_vec(), Some("text/plain"), None).await;
    assert_err(&res, 401, "M_UNKNOWN_TOKEN");
    assert!(files_under(&n.data_dir().join("media")).is_empty());
}

#[tokio::test]
async fn over_the_limit_leaves_nothing_behind() {
    let n = start_with_limit(1000).await;
    let alice = n.register("alice").await;
    let (status, body) = n.get("/_matrix/client/v1/media/config", &alice.token).await;
    assert_eq!((status, body), (200, json!({"m.upload.size": 1000})));

    let res = upload_raw(&n, Some(&alice.token), vec![7; 1001], Some("text/plain"), None).await;
    assert_err(&res, 413, "M_TOO_LARGE");

    // Without a Content-Length the limit is enforced while streaming.
    let status = chunked_upload(&n, &alice.token, &[vec![1; 600], vec![2; 600]]).await;
    assert_eq!(status, 413);
    assert!(
        files_under(&n.data_dir().join("media")).is_empty(),
        "no blob or temp file remains"
    );
    assert_eq!(media_rows(&n), 0);

    // Exactly at the limit is fine, streamed or not.
    upload(&n, &alice, &[7; 1000], "text/plain", None).await;
    let status = chunked_upload(&n, &alice.token, &[vec![1; 500], vec![2; 500]]).await;
    assert_eq!(status, 200);
    assert_eq!(media_rows(&n), 2);

    // A reservation refuses an over-limit body too, and stays open for a good one.
    let (_, created) = n.post("/_matrix/media/v1/create", &alice.token, json!({})).await;
    let id = media_id_of(&n, &created);
    let put = format!("/_matrix/media/v3/upload/{}/{id}", n.server_name());
    let res = send_bytes(&n, Method::PUT, &put, Some(&alice.token), vec![0; 1001], None).await;
    assert_err(&res, 413, "M_TOO_LARGE");
    let res = send_bytes(&n, Method::PUT, &put, Some(&alice.token), vec![0; 10], None).await;
    assert_eq!(res.0, 200, "{res:?}");
}

/// Sends a chunked upload over a raw connection (so no Content-Length is declared);
/// returns the HTTP status.
async fn chunked_upload(n: &TestNode, token: &str, chunks: &[Vec<u8>]) -> u16 {
    let addr = n.url.trim_start_matches("http://").to_owned();
    let token = token.to_owned();
    let chunks = chunks.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let head = format!(
            "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        // The server may answer 413 and stop reading mid-body; only its answer matters.
        let _ = s.write_all(head.as_bytes());
        for c in &chunks {
            let _ = s.write_all(format!("{:x}\r\n", c.len()).as_bytes());
            let _ = s.write_all(c);
            let _ = s.write_all(b"\r\n");
        }
        let _ = s.write_all(b"0\r\n\r\n");
        let mut res = Vec::new();
        let _ = s.read_to_end(&mut res);
        let text = String::from_utf8_lossy(&res);
        text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    })
    .await
    .expect("raw upload")
}

#[tokio::test]
async fn create_then_put() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let (status, created) = n.post("/_matrix/media/v1/create", &alice.token, json!({})).await;
    assert_eq!(status, 200, "{created}");
    let id = media_id_of(&n, &created);
    let expires = created["unused_expires_at"].as_i64().expect("unused_expires_at");
    assert!(
        expires > before + 60 * 60 * 1000,
        "reservation lasts hours: {expires}"
    );

    let get = download_path(&n, &id);
    let res = fetch_err(&n, &format!("{get}?timeout_ms=0"), Some(&alice.token)).await;
    assert_err(&res, 504, "M_NOT_YET_UPLOADED");

    let put = format!("/_matrix/media/v3/upload/{}/{id}", n.server_name());
    let content = b"reserved content".to_vec();
    let res = send_bytes(
        &n,
        Method::PUT,
        &put,
        Some(&bob.token),
        content.clone(),
        Some("text/plain"),
    )
    .await;
    assert_err(&res, 403, "M_FORBIDDEN");
    assert!(
        files_under(&n.data_dir().join("media")).is_empty(),
        "a refused PUT stores nothing"
    );

    // A download waiting on the reservation is answered once the upload lands.
    let waiting = {
        let url = format!("{}{get}?timeout_ms=20000", n.url);
        let req = n.http.get(url).bearer_auth(&alice.token);
        tokio::spawn(async move {
            let res = req.send().await.expect("download sent");
            (res.status().as_u16(), res.bytes().await.expect("body").to_vec())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let res = send_bytes(
        &n,
        Method::PUT,
        &format!("{put}?filename=r.txt"),
        Some(&alice.token),
        content.clone(),
        Some("text/plain"),
    )
    .await;
    assert_eq!(res, (200, json!({})));
    let waited = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("waiting download answered")
        .expect("task");
    assert_eq!(waited, (200, content.clone()));

    let res = send_bytes(&n, Method::PUT, &put, Some(&alice.token), b"again".to_vec(), None).await;
    assert_err(&res, 409, "M_CANNOT_OVERWRITE_MEDIA");
    let (_, h, body) = fetch(&n, &get, Some(&alice.token)).await;
    assert_eq!(body, content, "the first upload stays");
    assert_eq!(header(&h, "content-disposition"), "inline; filename=\"r.txt\"");

    // Unknown, malformed and foreign media IDs.
    for path in [
        format!("/_matrix/media/v3/upload/{}/NoSuchMediaIdAtAll", n.server_name()),
        format!("/_matrix/media/v3/upload/{}/bad.id", n.server_name()),
        format!("/_matrix/media/v3/upload/other.example/{id}"),
    ] {
        let res = send_bytes(&n, Method::PUT, &path, Some(&alice.token), b"x".to_vec(), None).await;
        assert_err(&res, 404, "M_NOT_FOUND");
    }
    let res = send_bytes(&n, Method::PUT, &put, None, b"x".to_vec(), None).await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
    let res = n
        .call(Method::POST, "/_matrix/media/v1/create", None, Some(json!({})))
        .await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
}
