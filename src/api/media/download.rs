//! Downloads, with the headers the spec asks for when serving user content:
//! `Content-Disposition` (inline only for types that cannot script), a sandboxing
//! `Content-Security-Policy` and `Cross-Origin-Resource-Policy: cross-origin`.

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::{blob, find_content, timeout_param};
use crate::api::extract::Auth;
use crate::api::room_events::query_map;
use crate::services::AppState;
use crate::storage::media::Media;
use crate::{Error, Result};

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`
pub async fn authed(
    State(s): State<AppState>,
    _auth: Auth,
    Path((server_name, media_id)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response> {
    download(&s, &server_name, &media_id, None, &uri).await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`
pub async fn authed_named(
    State(s): State<AppState>,
    _auth: Auth,
    Path((server_name, media_id, file_name)): Path<(String, String, String)>,
    uri: Uri,
) -> Result<Response> {
    download(&s, &server_name, &media_id, Some(&file_name), &uri).await
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}` (deprecated, unauthenticated)
pub async fn legacy(
    State(s): State<AppState>,
    Path((server_name, media_id)): Path<(String, String)>,
    uri: Uri,
) -> Result<Response> {
    download(&s, &server_name, &media_id, None, &uri).await
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}` (deprecated,
/// unauthenticated)
pub async fn legacy_named(
    State(s): State<AppState>,
    Path((server_name, media_id, file_name)): Path<(String, String, String)>,
    uri: Uri,
) -> Result<Response> {
    download(&s, &server_name, &media_id, Some(&file_name), &uri).await
}

async fn download(
    s: &AppState,
    server_name: &str,
    media_id: &str,
    file_name: Option<&str>,
    uri: &Uri,
) -> Result<Response> {
    let timeout = timeout_param(&query_map(uri)?)?;
    let (media, hash) = find_content(s, server_name, media_id, timeout).await?;
    serve_original(s, &media, &hash, file_name).await
}

/// The uploaded bytes with their stored type; `file_name` overrides the upload's name.
pub async fn serve_original(
    s: &AppState,
    media: &Media,
    hash: &str,
    file_name: Option<&str>,
) -> Result<Response> {
    let body = blob::open(&blob::blob_path(s, hash)?).await?;
    let content_type = media
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream");
    let disposition = if inline_safe(content_type) {
        "inline"
    } else {
        "attachment"
    };
    let filename = file_name.or(media.filename.as_deref());
    respond(content_type, &content_disposition(disposition, filename), body)
}

/// A media response: the body with its type, disposition and the spec's protective headers.
pub fn respond(content_type: &str, disposition: &str, body: axum::body::Body) -> Result<Response> {
    let content_type =
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let disposition =
        HeaderValue::from_str(disposition).map_err(|_| Error::internal("unencodable Content-Disposition"))?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
            (
                header::HeaderName::from_static("cross-origin-resource-policy"),
                HeaderValue::from_static("cross-origin"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response())
}

/// The spec's recommended policy for served content.
const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
                   style-src 'unsafe-inline'; object-src 'self';";

/// Types the spec lists as safe to serve `inline` ("Serving inline content").
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// The MIME type without parameters, lowercased: `Text/Plain; charset=utf-8` → `text/plain`.
pub fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn inline_safe(content_type: &str) -> bool {
    INLINE_TYPES.contains(&essence(content_type).as_str())
}

/// `inline` or `attachment` with the file name per RFC 6266: a plain quoted `filename` when
/// it is printable ASCII without quotes or backslashes, else RFC 8187 `filename*`.
pub fn content_disposition(disposition: &str, filename: Option<&str>) -> String {
    let Some(name) = filename else {
        return disposition.to_owned();
    };
    if name
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        return format!("{disposition}; filename=\"{name}\"");
    }
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{disposition}; filename*=utf-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::{content_disposition, essence, inline_safe};

    #[test]
    fn dispositions() {
        assert_eq!(content_disposition("inline", None), "inline");
        assert_eq!(
            content_disposition("attachment", Some("War and Peace.pdf")),
            "attachment; filename=\"War and Peace.pdf\""
        );
        assert_eq!(
            content_disposition("inline", Some("naïve \"x\".txt")),
            "inline; filename*=utf-8''na%C3%AFve%20%22x%22.txt"
        );
        assert_eq!(
            content_disposition("inline", Some("a\r\nb")),
            "inline; filename*=utf-8''a%0D%0Ab"
        );
    }

    #[test]
    fn inline_types() {
        assert_eq!(essence(" Text/Plain ; charset=utf-8"), "text/plain");
        assert!(inline_safe("image/PNG"));
        assert!(!inline_safe("text/html"));
        assert!(!inline_safe("image/svg+xml"));
        assert!(!inline_safe(""));
    }
}
