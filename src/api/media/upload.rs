//! Uploads: `POST /upload` mints a media ID for new content; `POST /create` reserves one
//! and `PUT /upload/{serverName}/{mediaId}` fills it later, once, by the same user.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

use super::{blob, check_local};
use crate::api::account::{now_ms, random_token};
use crate::api::extract::Auth;
use crate::api::room_events::query_map;
use crate::services::AppState;
use crate::storage::media::{self as store, Upload};
use crate::{Error, Result};

/// How long a reservation from `create` stays usable (the spec's recommended 24 h).
const RESERVATION_MS: i64 = 24 * 60 * 60 * 1000;
/// Open reservations one user may hold at once.
const MAX_PENDING: i64 = 100;

fn content_uri(s: &AppState, media_id: &str) -> String {
    format!("mxc://{}/{}", s.server_name(), media_id)
}

/// A new media ID: 144 random bits, URL-safe base64 (within the spec's alphabet).
fn new_media_id() -> String {
    random_token(18)
}

/// The upload's `Content-Type` (default `application/octet-stream`) and `filename`.
fn describe(headers: &HeaderMap, uri: &Uri) -> Result<(String, Option<String>)> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let filename = query_map(uri)?.remove("filename").filter(|f| !f.is_empty());
    Ok((content_type, filename))
}

/// Stores the body and describes it for the `media` table.
async fn receive(s: &AppState, headers: &HeaderMap, uri: &Uri, body: Body) -> Result<Upload> {
    let (content_type, filename) = describe(headers, uri)?;
    let stored = blob::store(s, headers, body).await?;
    Ok(Upload {
        content_type,
        filename,
        size: i64::try_from(stored.size).map_err(|_| Error::internal("size overflow"))?,
        blake3: stored.blake3,
    })
}

/// `POST /_matrix/media/v3/upload`
pub async fn upload(
    State(s): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Json<Value>> {
    let up = receive(&s, &headers, &uri, body).await?;
    let media_id = new_media_id();
    let id = media_id.clone();
    let uploader = auth.user_id.to_string();
    s.db.write(move |tx| store::insert_uploaded(tx, &id, &uploader, &up, now_ms()))
        .await?;
    Ok(Json(json!({"content_uri": content_uri(&s, &media_id)})))
}

/// `POST /_matrix/media/v1/create`
pub async fn create(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>> {
    let user = auth.user_id.to_string();
    s.rate_limiter.check(&format!("media-create:{user}"))?;
    let media_id = new_media_id();
    let id = media_id.clone();
    let now = now_ms();
    let expires = now + RESERVATION_MS;
    s.db.write(move |tx| {
        store::delete_expired_reservations(tx, now)?;
        let (pending, earliest) = store::pending_reservations(tx, &user, now)?;
        if pending >= MAX_PENDING {
            let wait = earliest.map_or(RESERVATION_MS, |t| t - now).max(0);
            return Err(Error::limit_exceeded(wait as u64));
        }
        store::reserve(tx, &id, &user, now, expires)
    })
    .await?;
    Ok(Json(json!({
        "content_uri": content_uri(&s, &media_id),
        "unused_expires_at": expires,
    })))
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
pub async fn upload_to_reserved(
    State(s): State<AppState>,
    auth: Auth,
    Path((server_name, media_id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Result<Json<Value>> {
    check_local(&s, &server_name, &media_id)?;
    let user = auth.user_id.to_string();
    // Checked before reading the body so a refused request stores nothing.
    let id = media_id.clone();
    let row = s.db.read(move |c| store::get(c, &id)).await?;
    let Some(row) = row else {
        return Err(Error::not_found("Unknown media ID"));
    };
    if row.uploader != user {
        return Err(Error::forbidden("This media ID was created by another user"));
    }
    if row.blake3.is_some() {
        return Err(cannot_overwrite());
    }
    if row.unused_expires_ts.is_some_and(|t| t <= now_ms()) {
        return Err(Error::not_found("This media ID has expired"));
    }
    let up = receive(&s, &headers, &uri, body).await?;
    // A concurrent PUT may have filled it meanwhile (the update only fills an empty row),
    // or it lapsed and was swept while the body was arriving.
    s.db.write(move |tx| {
        if store::fill_reservation(tx, &media_id, &up)? {
            Ok(())
        } else if store::get(tx, &media_id)?.is_some() {
            Err(cannot_overwrite())
        } else {
            Err(Error::not_found("This media ID has expired"))
        }
    })
    .await?;
    Ok(Json(json!({})))
}

fn cannot_overwrite() -> Error {
    Error::new(
        StatusCode::CONFLICT,
        "M_CANNOT_OVERWRITE_MEDIA",
        "Media already uploaded",
    )
}
