use serde_json::json;

use super::*;

#[tokio::test]
async fn upload_download_round_trip() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let content = b"hello, media".to_vec();
    let id = upload(
        &n,
        &alice,
        &content,
        "text/plain; charset=utf-8",
        Some("hello.txt"),
    )
    .await;

    let (status, h, body) = fetch(&n, &download_path(&n, &id), Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body, content);
    assert_eq!(header(&h, "content-type"), "text/plain; charset=utf-8");
    assert_eq!(header(&h, "content-length"), content.len().to_string());
    assert_eq!(
        header(&h, "content-disposition"),
        "inline; filename=\"hello.txt\""
    );
    assert!(header(&h, "content-security-policy").starts_with("sandbox; default-src 'none';"));
    assert_eq!(header(&h, "cross-origin-resource-policy"), "cross-origin");

    // The file name in the path overrides the upload's, RFC 6266-encoded when not plain ASCII.
    let named = format!("{}/{}", download_path(&n, &id), enc("résumé 1.txt"));
    let (status, h, body) = fetch(&n, &named, Some(&alice.token)).await;
    assert_eq!((status, body), (200, content.clone()));
    assert_eq!(
        header(&h, "content-disposition"),
        "inline; filename*=utf-8''r%C3%A9sum%C3%A9%201.txt"
    );

    // Types that could script are never inline.
    let html = upload(
        &n,
        &alice,
        b"<script>alert(1)</script>",
        "text/html",
        Some("x.html"),
    )
    .await;
    let (_, h, _) = fetch(&n, &download_path(&n, &html), Some(&alice.token)).await;
    assert_eq!(header(&h, "content-type"), "text/html");
    assert_eq!(
        header(&h, "content-disposition"),
        "attachment; filename=\"x.html\""
    );

    // No Content-Type on upload: served as application/octet-stream, without a file name.
    let (status, body) = upload_raw(&n, Some(&alice.token), b"raw".to_vec(), None, None).await;
    assert_eq!(status, 200, "{body}");
    let raw = media_id_of(&n, &body);
    let (_, h, body) = fetch(&n, &download_path(&n, &raw), Some(&alice.token)).await;
    assert_eq!(body, b"raw");
    assert_eq!(header(&h, "content-type"), "application/octet-stream");
    assert_eq!(header(&h, "content-disposition"), "attachment");

    // Uploads are not bound by the JSON body limit, and large downloads stream intact.
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let id = upload(&n, &alice, &big, "application/octet-stream", None).await;
    let (status, h, body) = fetch(&n, &download_path(&n, &id), Some(&alice.token)).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "content-length"), big.len().to_string());
    assert!(body == big, "large download differs from the upload");
}

#[tokio::test]
async fn authenticated_and_legacy_download() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let id = upload(&n, &alice, b"public bytes", "text/plain", Some("p.txt")).await;

    let res = fetch_err(&n, &download_path(&n, &id), None).await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
    let res = fetch_err(&n, &download_path(&n, &id), Some("bogus")).await;
    assert_err(&res, 401, "M_UNKNOWN_TOKEN");

    for prefix in ["/_matrix/media/v3", "/_matrix/media/r0"] {
        let path = format!("{prefix}/download/{}/{id}", n.server_name());
        let (status, h, body) = fetch(&n, &path, None).await;
        assert_eq!((status, body.as_slice()), (200, &b"public bytes"[..]), "{path}");
        assert_eq!(header(&h, "content-disposition"), "inline; filename=\"p.txt\"");
        let (status, h, _) = fetch(&n, &format!("{path}/other.txt"), None).await;
        assert_eq!(status, 200);
        assert_eq!(
            header(&h, "content-disposition"),
            "inline; filename=\"other.txt\""
        );
    }
}

#[tokio::test]
async fn unknown_media_is_not_found() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let id = upload(&n, &alice, b"mine", "text/plain", None).await;
    let server = n.server_name();
    for path in [
        format!("/_matrix/client/v1/media/download/{server}/AAAAAAAAAAAAAAAAAAAAAAAA"),
        format!("/_matrix/client/v1/media/download/{server}/AAAAAAAAAAAAAAAAAAAAAAAA/f.txt"),
        format!("/_matrix/client/v1/media/download/other.example/{id}"),
        format!(
            "/_matrix/client/v1/media/download/{server}/{}",
            enc("../../meshserver.db")
        ),
        format!("/_matrix/media/v3/download/{server}/AAAAAAAAAAAAAAAAAAAAAAAA"),
        format!("/_matrix/client/v1/media/thumbnail/{server}/AAAAAAAAAAAAAAAAAAAAAAAA?width=32&height=32"),
        format!("/_matrix/media/v3/thumbnail/other.example/{id}?width=32&height=32"),
    ] {
        let res = fetch_err(&n, &path, Some(&alice.token)).await;
        assert_err(&res, 404, "M_NOT_FOUND");
    }
    let res = fetch_err(
        &n,
        &format!("{}?timeout_ms=soon", download_path(&n, &id)),
        Some(&alice.token),
    )
    .await;
    assert_err(&res, 400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn config_and_preview() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    for path in ["/_matrix/client/v1/media/config", "/_matrix/media/v3/config"] {
        let (status, body) = n.get(path, &alice.token).await;
        assert_eq!((status, body), (200, json!({"m.upload.size": 50 * 1024 * 1024})));
        let res = fetch_err(&n, path, None).await;
        assert_err(&res, 401, "M_MISSING_TOKEN");
    }
    let path = "/_matrix/client/v1/media/preview_url";
    let res = n
        .get(
            &format!("{path}?url={}", enc("https://example.org/")),
            &alice.token,
        )
        .await;
    assert_eq!(res, (200, json!({})));
    let res = n.get(path, &alice.token).await;
    assert_err(&res, 400, "M_MISSING_PARAM");
}
