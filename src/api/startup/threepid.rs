//! Third-party identifiers (`/account/3pid/...`). This node stores none and talks to no
//! identity server: `/capabilities` says `m.3pid_changes` is disabled, the list is empty,
//! and each change answers with the spec's errcode for why it cannot happen.

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::client;
use crate::api::extract::{Auth, JsonBody};
use crate::services::AppState;
use crate::{Error, Result};

pub(super) fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/account/3pid", get(list).post(add_deprecated));
    let r = client(r, "/account/3pid/add", post(add_3pid));
    let r = client(r, "/account/3pid/bind", post(bind));
    let r = client(r, "/account/3pid/delete", post(delete));
    let r = client(r, "/account/3pid/unbind", post(unbind));
    let r = client(r, "/account/3pid/email/requestToken", post(request_email_token));
    client(r, "/account/3pid/msisdn/requestToken", post(request_msisdn_token))
}

/// `GET /_matrix/client/v3/account/3pid`
async fn list(_auth: Auth) -> Json<Value> {
    Json(json!({"threepids": []}))
}

#[derive(Deserialize)]
#[allow(dead_code)] // Parsed only so a malformed body gets M_BAD_JSON.
struct ThreePidCreds {
    client_secret: String,
    id_server: String,
    id_access_token: String,
    sid: String,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct AddDeprecatedBody {
    three_pid_creds: ThreePidCreds,
}

/// `POST /_matrix/client/v3/account/3pid` (deprecated): the credentials name an identity
/// server session this node cannot verify.
async fn add_deprecated(_auth: Auth, JsonBody(_body): JsonBody<AddDeprecatedBody>) -> Result<Json<Value>> {
    Err(Error::new(
        StatusCode::FORBIDDEN,
        "M_THREEPID_AUTH_FAILED",
        "This server cannot verify third-party credentials",
    ))
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct AddBody {
    client_secret: String,
    sid: String,
}

fn changes_disabled() -> Error {
    Error::new(
        StatusCode::FORBIDDEN,
        "M_THREEPID_DENIED",
        "This server does not allow third-party identifiers on accounts",
    )
}

/// `POST /_matrix/client/v3/account/3pid/add`
async fn add_3pid(_auth: Auth, JsonBody(_body): JsonBody<AddBody>) -> Result<Json<Value>> {
    Err(changes_disabled())
}

/// `POST /_matrix/client/v3/account/3pid/bind`: binding goes through an identity server,
/// and this node trusts none.
async fn bind(_auth: Auth, JsonBody(_body): JsonBody<ThreePidCreds>) -> Result<Json<Value>> {
    Err(Error::new(
        StatusCode::BAD_REQUEST,
        "M_SERVER_NOT_TRUSTED",
        "This server does not use identity servers",
    ))
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct RemoveBody {
    medium: String,
    address: String,
    id_server: Option<String>,
}

fn check_medium(medium: &str) -> Result<()> {
    match medium {
        "email" | "msisdn" => Ok(()),
        m => Err(Error::invalid_param(format!("unknown medium {m:?}"))),
    }
}

/// `POST /_matrix/client/v3/account/3pid/delete`: no account here has a 3PID to remove.
async fn delete(_auth: Auth, JsonBody(body): JsonBody<RemoveBody>) -> Result<Json<Value>> {
    check_medium(&body.medium)?;
    Err(Error::new(
        StatusCode::BAD_REQUEST,
        "M_THREEPID_NOT_FOUND",
        "That third-party identifier is not on this account",
    ))
}

/// `POST /_matrix/client/v3/account/3pid/unbind`: with no identity server to ask,
/// `no-support` is the spec's answer.
async fn unbind(_auth: Auth, JsonBody(body): JsonBody<RemoveBody>) -> Result<Json<Value>> {
    check_medium(&body.medium)?;
    Ok(Json(json!({"id_server_unbind_result": "no-support"})))
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct EmailTokenBody {
    client_secret: String,
    email: String,
    send_attempt: u64,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct MsisdnTokenBody {
    client_secret: String,
    country: String,
    phone_number: String,
    send_attempt: u64,
}

fn medium_not_supported(what: &str) -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        "M_THREEPID_MEDIUM_NOT_SUPPORTED",
        format!("This server does not support adding {what}"),
    )
}

/// `POST /_matrix/client/v3/account/3pid/email/requestToken`
async fn request_email_token(JsonBody(_body): JsonBody<EmailTokenBody>) -> Result<Json<Value>> {
    Err(medium_not_supported("email addresses"))
}

/// `POST /_matrix/client/v3/account/3pid/msisdn/requestToken`
async fn request_msisdn_token(JsonBody(_body): JsonBody<MsisdnTokenBody>) -> Result<Json<Value>> {
    Err(medium_not_supported("phone numbers"))
}
