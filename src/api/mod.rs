//! The Client-Server API (v3, with `r0` aliases where clients still call them), served by
//! axum. Each submodule owns one endpoint group and adds its routes in `add`.

pub mod account;
pub mod account_data;
pub mod aggregation;
pub mod ephemeral;
pub mod extract;
pub mod filter;
pub mod keys;
pub mod media;
pub mod membership;
pub mod misc;
pub mod profile;
pub mod ratelimit;
pub mod render;
pub mod room_events;
pub mod rooms;
pub mod startup;
pub mod sync;
pub mod to_device;

use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use tower_http::cors::CorsLayer;

use crate::Error;
use crate::services::AppState;

/// Adds `path` under `/_matrix/client/v3` and its `r0` alias.
pub fn client(r: Router<AppState>, path: &str, m: MethodRouter<AppState>) -> Router<AppState> {
    r.route(&format!("/_matrix/client/v3{path}"), m.clone())
        .route(&format!("/_matrix/client/r0{path}"), m)
}

/// Adds `path` under `/_matrix/client/v1` (endpoints that never had an `r0`).
pub fn client_v1(r: Router<AppState>, path: &str, m: MethodRouter<AppState>) -> Router<AppState> {
    r.route(&format!("/_matrix/client/v1{path}"), m)
}

pub fn router(state: AppState) -> Router {
    let mut r = Router::new();
    r = misc::add(r);
    r = account::add(r);
    r = rooms::add(r);
    r = membership::add(r);
    r = room_events::add(r);
    r = sync::add(r);
    r = filter::add(r);
    r = ephemeral::add(r);
    r = account_data::add(r);
    r = profile::add(r);
    r = keys::add(r);
    r = media::add(r);
    r = to_device::add(r);
    r = startup::add(r);
    r.fallback(|| async { Error::unrecognized() })
        .method_not_allowed_fallback(|| async { Error::method_not_allowed() })
        .layer(axum::middleware::from_fn(log_request))
        .layer(CorsLayer::very_permissive())
        .with_state(state)
}

/// One readable line per request at info. The query string is left out: it may carry an
/// access token.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let start = Instant::now();
    let res = next.run(req).await;
    tracing::info!(
        "{} {} {} {:.1}ms",
        method,
        path,
        res.status().as_u16(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    res
}

/// `{}`: the body of many successful responses.
pub fn empty() -> Response {
    axum::Json(serde_json::json!({})).into_response()
}
