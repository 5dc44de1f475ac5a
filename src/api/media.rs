//! The content repository: uploads (direct, or to an `mxc://` reserved by `create`),
//! downloads, thumbnails and the media config, on both the authenticated
//! `/_matrix/client/v1/media` paths and the deprecated unauthenticated `/_matrix/media` ones.
//!
//! Media of other servers is `M_NOT_FOUND` until federation exists. URL previews return an
//! empty object (which the spec allows): a node does not fetch arbitrary URLs on a client's
//! behalf, which would leak what users read to third parties and open the node to SSRF.

mod blob;
mod download;
mod thumbnail;
mod upload;

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::routing::{MethodRouter, get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::account::now_ms;
use super::client_v1;
use super::extract::Auth;
use super::room_events::query_map;
use crate::services::AppState;
use crate::storage::media::{self as store, Media};
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = r.route("/_matrix/media/v1/create", post(upload::create));
    let r = legacy(r, "/upload", post(upload::upload));
    let r = legacy(
        r,
        "/upload/{server_name}/{media_id}",
        put(upload::upload_to_reserved),
    );
    let r = legacy(r, "/download/{server_name}/{media_id}", get(download::legacy));
    let r = legacy(
        r,
        "/download/{server_name}/{media_id}/{file_name}",
        get(download::legacy_named),
    );
    let r = legacy(r, "/thumbnail/{server_name}/{media_id}", get(thumbnail::legacy));
    let r = legacy(r, "/config", get(config));
    let r = legacy(r, "/preview_url", get(preview_url));
    let r = client_v1(
        r,
        "/media/download/{server_name}/{media_id}",
        get(download::authed),
    );
    let r = client_v1(
        r,
        "/media/download/{server_name}/{media_id}/{file_name}",
        get(download::authed_named),
    );
    let r = client_v1(
        r,
        "/media/thumbnail/{server_name}/{media_id}",
        get(thumbnail::authed),
    );
    let r = client_v1(r, "/media/config", get(config));
    client_v1(r, "/media/preview_url", get(preview_url))
}

/// Adds `path` under `/_matrix/media/v3` and its `r0` alias.
fn legacy(r: Router<AppState>, path: &str, m: MethodRouter<AppState>) -> Router<AppState> {
    r.route(&format!("/_matrix/media/v3{path}"), m.clone())
        .route(&format!("/_matrix/media/r0{path}"), m)
}

/// `GET /_matrix/client/v1/media/config` (and the deprecated `/_matrix/media/v3/config`)
async fn config(State(s): State<AppState>, _auth: Auth) -> Json<Value> {
    Json(json!({"m.upload.size": s.config.max_upload_bytes}))
}

/// `GET /_matrix/client/v1/media/preview_url` (and the deprecated `/_matrix/media/v3/preview_url`):
/// always the empty preview; see the module comment for why.
async fn preview_url(_auth: Auth, uri: Uri) -> Result<Json<Value>> {
    let q = query_map(&uri)?;
    if !q.contains_key("url") {
        return Err(Error::missing_param("Missing url parameter"));
    }
    Ok(Json(json!({})))
}

/// The spec's media ID alphabet (`A-Za-z0-9_-`), which also keeps IDs out of path tricks.
fn valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks that `server_name`/`media_id` name media this node could hold; anything else is
/// unknown media.
fn check_local(s: &AppState, server_name: &str, media_id: &str) -> Result<()> {
    if server_name != s.server_name().as_str() || !valid_media_id(media_id) {
        return Err(Error::not_found("Media not found"));
    }
    Ok(())
}

/// Longest a download waits for a reserved media's upload, whatever `timeout_ms` asks.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The `timeout_ms` query parameter (default 20 s, capped at [`MAX_WAIT`]).
fn timeout_param(q: &HashMap<String, String>) -> Result<Duration> {
    match q.get("timeout_ms") {
        Some(t) => t
            .parse::<u64>()
            .map(|ms| Duration::from_millis(ms).min(MAX_WAIT))
            .map_err(|_| Error::invalid_param(format!("invalid timeout_ms {t:?}"))),
        None => Ok(Duration::from_secs(20)),
    }
}

/// Uploaded media: its row and blob hash. A reservation not yet filled is waited for up to
/// `timeout` (polling: such waits are rare and short) and is then `504 M_NOT_YET_UPLOADED`;
/// an unknown or lapsed one is `404 M_NOT_FOUND`.
async fn find_content(
    s: &AppState,
    server_name: &str,
    media_id: &str,
    timeout: Duration,
) -> Result<(Media, String)> {
    check_local(s, server_name, media_id)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        let id = media_id.to_owned();
        let row = s.db.read(move |c| store::get(c, &id)).await?;
        let Some(media) = row else {
            return Err(Error::not_found("Media not found"));
        };
        if let Some(hash) = media.blake3.clone() {
            return Ok((media, hash));
        }
        if media.unused_expires_ts.is_some_and(|t| t <= now_ms()) {
            return Err(Error::not_found("Media not found"));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(Error::new(
                StatusCode::GATEWAY_TIMEOUT,
                "M_NOT_YET_UPLOADED",
                "Content has not yet been uploaded",
            ));
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}
