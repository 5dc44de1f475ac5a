use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage};

use super::*;

/// A `w`×`h` gradient, encoded as `format`.
fn picture(w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(img)
        .write_to(&mut out, format)
        .expect("encode test image");
    out.into_inner()
}

fn thumb_path(n: &TestNode, id: &str, query: &str) -> String {
    format!(
        "/_matrix/client/v1/media/thumbnail/{}/{id}?{query}",
        n.server_name()
    )
}

/// Fetches a thumbnail, asserting success and the content type; returns its decoded size
/// and its bytes.
async fn thumb(n: &TestNode, u: &User, id: &str, query: &str, content_type: &str) -> ((u32, u32), Vec<u8>) {
    let (status, h, body) = fetch(n, &thumb_path(n, id, query), Some(&u.token)).await;
    assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
    assert_eq!(header(&h, "content-type"), content_type, "{query}");
    assert!(header(&h, "content-disposition").starts_with("inline"));
    let img = image::load_from_memory(&body).expect("thumbnail decodes");
    ((img.width(), img.height()), body)
}

#[tokio::test]
async fn png_thumbnails_scale_and_crop() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let original = picture(400, 200, ImageFormat::Png);
    let id = upload(&n, &alice, &original, "image/png", Some("pic.png")).await;

    let (size, scaled) = thumb(&n, &alice, &id, "width=100&height=100&method=scale", "image/png").await;
    assert_eq!(size, (100, 50), "scale fits within, keeping the aspect");
    let (size, _) = thumb(&n, &alice, &id, "width=100&height=100&method=crop", "image/png").await;
    assert_eq!(size, (100, 100), "crop fills the requested box");
    let (size, _) = thumb(&n, &alice, &id, "width=96&height=96&animated=false", "image/png").await;
    assert_eq!(size, (96, 48), "scale is the default method");
    let (size, _) = thumb(&n, &alice, &id, "width=300&height=300&method=crop", "image/png").await;
    assert_eq!(size, (200, 200), "crop keeps the asked aspect but never upscales");

    // Generated once, then served from the on-disk cache.
    let cached = files_under(&n.data_dir().join("media").join("thumbnails"));
    assert_eq!(cached.len(), 4, "{cached:?}");
    let (_, again) = thumb(&n, &alice, &id, "width=100&height=100&method=scale", "image/png").await;
    assert_eq!(again, scaled);
    assert_eq!(
        files_under(&n.data_dir().join("media").join("thumbnails")).len(),
        4
    );

    // Asking for at least the original's size returns the original itself.
    let (size, body) = thumb(&n, &alice, &id, "width=800&height=600&method=scale", "image/png").await;
    assert_eq!((size, body), ((400, 200), original.clone()));

    // The legacy path needs no token; the authenticated one does.
    let legacy = format!(
        "/_matrix/media/v3/thumbnail/{}/{id}?width=32&height=32&method=crop",
        n.server_name()
    );
    let (status, _, body) = fetch(&n, &legacy, None).await;
    assert_eq!(status, 200);
    let img = image::load_from_memory(&body).expect("legacy thumbnail decodes");
    assert_eq!((img.width(), img.height()), (32, 32));
    let res = fetch_err(&n, &thumb_path(&n, &id, "width=32&height=32"), None).await;
    assert_err(&res, 401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn jpeg_and_webp_thumbnails() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let jpeg = upload(
        &n,
        &alice,
        &picture(320, 480, ImageFormat::Jpeg),
        "image/jpeg",
        None,
    )
    .await;
    let (size, body) = thumb(&n, &alice, &jpeg, "width=64&height=64&method=scale", "image/jpeg").await;
    assert_eq!(size, (43, 64));
    assert_eq!(image::guess_format(&body).expect("format"), ImageFormat::Jpeg);

    let webp = upload(
        &n,
        &alice,
        &picture(200, 100, ImageFormat::WebP),
        "image/webp",
        None,
    )
    .await;
    let (size, body) = thumb(&n, &alice, &webp, "width=50&height=50&method=crop", "image/png").await;
    assert_eq!(size, (50, 50));
    assert_eq!(image::guess_format(&body).expect("format"), ImageFormat::Png);
}

#[tokio::test]
async fn other_content_gets_the_original() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let id = upload(&n, &alice, b"just text", "text/plain", Some("t.txt")).await;
    let (status, h, body) = fetch(&n, &thumb_path(&n, &id, "width=32&height=32"), Some(&alice.token)).await;
    assert_eq!((status, body.as_slice()), (200, &b"just text"[..]));
    assert_eq!(header(&h, "content-type"), "text/plain");
    assert!(files_under(&n.data_dir().join("media").join("thumbnails")).is_empty());

    // Content claiming to be an image that is not one cannot be thumbnailed.
    let fake = upload(&n, &alice, b"not a png at all", "image/png", None).await;
    let res = fetch_err(
        &n,
        &thumb_path(&n, &fake, "width=32&height=32"),
        Some(&alice.token),
    )
    .await;
    assert_err(&res, 400, "M_UNKNOWN");
}

#[tokio::test]
async fn bad_thumbnail_parameters() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let id = upload(&n, &alice, &picture(40, 20, ImageFormat::Png), "image/png", None).await;
    for query in [
        "height=32",
        "width=32",
        "width=0&height=32",
        "width=-5&height=32",
        "width=abc&height=32",
        "width=32&height=32&method=zoom",
        "width=32&height=32&animated=maybe",
    ] {
        let res = fetch_err(&n, &thumb_path(&n, &id, query), Some(&alice.token)).await;
        assert_err(&res, 400, "M_INVALID_PARAM");
    }
}

/// A PNG whose header claims `w`×`h` pixels, with a token image-data chunk: enough for a
/// server to read the dimensions, far too little to decode.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn huge_images_are_refused_without_decoding() {
    let n = TestNode::start().await;
    let alice = n.register("alice").await;
    let id = upload(&n, &alice, &png_header_only(20_000, 20_000), "image/png", None).await;
    let res = fetch_err(&n, &thumb_path(&n, &id, "width=32&height=32"), Some(&alice.token)).await;
    assert_err(&res, 413, "M_TOO_LARGE");
    // The bytes are still downloadable as uploaded.
    let (status, _, _) = fetch(&n, &download_path(&n, &id), Some(&alice.token)).await;
    assert_eq!(status, 200);
}
