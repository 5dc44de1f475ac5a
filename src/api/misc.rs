//! Discovery endpoints clients call first: versions, well-known, capabilities, push rules,
//! pushers, and the node's own info.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::client;
use super::extract::Auth;
use crate::room::{DEFAULT_VERSION, SUPPORTED_VERSIONS};
use crate::services::AppState;

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = r
        .route("/_matrix/client/versions", get(versions))
        .route("/.well-known/matrix/client", get(well_known))
        .route("/_meshserver/v1/node", get(node_info));
    let r = client(r, "/capabilities", get(capabilities));
    let r = client(r, "/pushrules/", get(push_rules));
    let r = client(r, "/pushrules", get(push_rules));
    client(r, "/pushers", get(pushers))
}

/// `GET /_matrix/client/versions`
async fn versions() -> Json<Value> {
    Json(json!({
        "versions": ["r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5",
                     "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12"],
        "unstable_features": {}
    }))
}

/// `GET /.well-known/matrix/client`
async fn well_known(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"m.homeserver": {"base_url": client_url(&s)}}))
}

fn client_url(s: &AppState) -> String {
    format!("http://{}", s.config.client_listen)
}

/// `GET /_meshserver/v1/node`: who this node is, for tools and tests.
async fn node_info(State(s): State<AppState>) -> Json<Value> {
    let net = s.p2p.info().await;
    let c = &s.p2p.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({
        "server_name": s.server_name(),
        "peer_id": net.peer_id,
        "listen_addrs": net.listen_addrs,
        "peers": net.peers,
        "rejected": {
            "events": load(&c.rejected_events),
            "frames": load(&c.bad_frames),
            "requests": load(&c.refused_requests),
        },
        "version": env!("CARGO_PKG_VERSION"),
        "client_url": client_url(&s),
        "key_id": s.identity.key_id(),
        "uptime_ms": s.started.elapsed().as_millis() as u64,
    }))
}

/// `GET /_matrix/client/v3/capabilities`
async fn capabilities(_auth: Auth) -> Json<Value> {
    let available: serde_json::Map<String, Value> = SUPPORTED_VERSIONS
        .iter()
        .map(|v| ((*v).to_owned(), json!("stable")))
        .collect();
    Json(json!({
        "capabilities": {
            "m.change_password": {"enabled": true},
            "m.room_versions": {"default": DEFAULT_VERSION.as_str(), "available": available},
            "m.set_displayname": {"enabled": true},
            "m.set_avatar_url": {"enabled": true},
            "m.3pid_changes": {"enabled": false},
            "m.get_login_token": {"enabled": false},
        }
    }))
}

/// `GET /_matrix/client/v3/pushrules/`: the spec's default rules for the user.
async fn push_rules(auth: Auth) -> Json<Value> {
    let rules = ruma::push::Ruleset::server_default(&auth.user_id);
    Json(json!({"global": rules}))
}

/// `GET /_matrix/client/v3/pushers`
async fn pushers(_auth: Auth) -> Json<Value> {
    Json(json!({"pushers": []}))
}
