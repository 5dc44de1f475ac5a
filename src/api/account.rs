//! Accounts: registration (User-Interactive Auth), login, logout, whoami, password change,
//! and devices.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, JsonBody};
use super::{client, empty};
use crate::services::AppState;
use crate::storage::accounts as store;
use crate::storage::e2ee::device_ids;
use crate::storage::sync::remove_devices;
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/register", post(register));
    let r = client(r, "/register/available", get(available));
    let r = client(r, "/login", get(login_flows).post(login));
    let r = client(r, "/logout", post(logout));
    let r = client(r, "/logout/all", post(logout_all));
    let r = client(r, "/account/whoami", get(whoami));
    let r = client(r, "/account/password", post(change_password));
    let r = client(r, "/devices", get(list_devices));
    let r = client(r, "/delete_devices", post(delete_devices));
    client(
        r,
        "/devices/{device_id}",
        get(get_device).put(update_device).delete(delete_device),
    )
}

/// Validates a localpart per the spec's user ID grammar; `M_INVALID_USERNAME` otherwise.
pub fn user_id_for(s: &AppState, localpart: &str) -> Result<ruma::OwnedUserId> {
    let ok_chars = localpart
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'));
    if localpart.is_empty() || !ok_chars {
        return Err(Error::invalid_username(
            "User ID may only contain a-z, 0-9, '.', '_', '=', '-', '/' and '+'",
        ));
    }
    let full = format!("@{localpart}:{}", s.server_name());
    if full.len() > 255 {
        return Err(Error::invalid_username("User ID is over 255 characters"));
    }
    ruma::UserId::parse(&full).map_err(|e| Error::invalid_username(e.to_string()))
}

/// 256 bits from the OS RNG, URL-safe.
pub fn random_token(bytes: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

fn random_device_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut buf = [0u8; 10];
    rand::fill(&mut buf);
    buf.iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Creates a user (used by `/register` and `meshserver user add`).
pub async fn create_user(s: &AppState, user_id: &ruma::UserId, password: Option<String>) -> Result<()> {
    let hash = match password {
        Some(p) => Some(s.passwords.hash(p).await?),
        None => None,
    };
    let uid = user_id.to_string();
    s.db.write(move |tx| {
        if store::user_exists(tx, &uid)? {
            return Err(Error::user_in_use());
        }
        store::insert_user(tx, &uid, hash.as_deref(), now_ms())
    })
    .await
}

/// Registers a device and issues its access token.
pub async fn new_session(
    s: &AppState,
    user_id: &ruma::UserId,
    device_id: Option<String>,
    display_name: Option<String>,
) -> Result<Value> {
    let device_id = device_id
        .filter(|d| !d.is_empty())
        .unwrap_or_else(random_device_id);
    let token = random_token(32);
    let (uid, did, tok) = (user_id.to_string(), device_id.clone(), token.clone());
    s.db.write(move |tx| {
        store::upsert_device(tx, &uid, &did, display_name.as_deref())?;
        store::insert_token(tx, &tok, &uid, &did)
    })
    .await?;
    Ok(json!({
        "user_id": user_id,
        "access_token": token,
        "device_id": device_id,
        "home_server": s.server_name(),
    }))
}

pub fn now_ms() -> i64 {
    u64::from(ruma::MilliSecondsSinceUnixEpoch::now().get()) as i64
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RegisterBody {
    username: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    inhibit_login: bool,
    auth: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct KindQuery {
    kind: Option<String>,
}

fn uia_challenge(stage: &str, session: Option<&str>, error: Option<Error>) -> Error {
    let session = session.map(str::to_owned).unwrap_or_else(|| random_token(16));
    let mut extra = serde_json::Map::new();
    extra.insert("flows".into(), json!([{"stages": [stage]}]));
    extra.insert("params".into(), json!({}));
    extra.insert("session".into(), json!(session));
    extra.insert("completed".into(), json!([]));
    let (errcode, message) = match error {
        Some(e) => (e.errcode, e.message),
        None => ("M_UNAUTHORIZED", "Authentication required".to_owned()),
    };
    let mut e = Error::new(axum::http::StatusCode::UNAUTHORIZED, errcode, message).with_extra(extra);
    if errcode == "M_UNAUTHORIZED" {
        // A fresh challenge carries no errcode, only flows.
        e.errcode = "M_UNAUTHORIZED";
    }
    e
}

/// `POST /_matrix/client/v3/register`
async fn register(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<KindQuery>,
    JsonBody(body): JsonBody<RegisterBody>,
) -> Result<Json<Value>> {
    if q.kind.as_deref() == Some("guest") {
        return Err(Error::new(
            axum::http::StatusCode::FORBIDDEN,
            "M_GUEST_ACCESS_FORBIDDEN",
            "Guest access is disabled",
        ));
    }
    let stage = if s.config.registration_open {
        "m.login.dummy"
    } else if s.config.registration_token.is_some() {
        "m.login.registration_token"
    } else {
        return Err(Error::forbidden("Registration is disabled"));
    };
    let localpart = match &body.username {
        Some(u) => u.clone(),
        None => random_token(9).to_lowercase().replace(['-', '_'], "x"),
    };
    let user_id = user_id_for(&s, &localpart)?;
    let uid = user_id.to_string();
    if s.db.read(move |c| store::user_exists(c, &uid)).await? {
        return Err(Error::user_in_use());
    }
    let auth = body.auth.as_ref();
    let session = auth.and_then(|a| a.get("session")).and_then(Value::as_str);
    let kind = auth.and_then(|a| a.get("type")).and_then(Value::as_str);
    match kind {
        None => return Err(uia_challenge(stage, session, None)),
        Some(k) if k != stage => {
            return Err(uia_challenge(
                stage,
                session,
                Some(Error::forbidden("Unsupported auth stage")),
            ));
        }
        Some("m.login.registration_token") => {
            s.rate_limiter.check(&format!("register-token:{}", peer.ip()))?;
            let token = auth.and_then(|a| a.get("token")).and_then(Value::as_str);
            if token != s.config.registration_token.as_deref() {
                return Err(uia_challenge(
                    stage,
                    session,
                    Some(Error::forbidden("Invalid registration token")),
                ));
            }
        }
        Some(_) => {}
    }
    create_user(&s, &user_id, body.password).await?;
    if body.inhibit_login {
        return Ok(Json(json!({"user_id": user_id, "home_server": s.server_name()})));
    }
    Ok(Json(
        new_session(&s, &user_id, body.device_id, body.initial_device_display_name).await?,
    ))
}

#[derive(Deserialize)]
struct AvailableQuery {
    username: String,
}

/// `GET /_matrix/client/v3/register/available`
async fn available(State(s): State<AppState>, Query(q): Query<AvailableQuery>) -> Result<Json<Value>> {
    let uid = user_id_for(&s, &q.username)?.to_string();
    if s.db.read(move |c| store::user_exists(c, &uid)).await? {
        return Err(Error::user_in_use());
    }
    Ok(Json(json!({"available": true})))
}

/// `GET /_matrix/client/v3/login`
async fn login_flows() -> Json<Value> {
    Json(json!({"flows": [{"type": "m.login.password"}]}))
}

/// The user a login or UIA `identifier` (or deprecated `user`) names: a localpart or a
/// full MXID of this server.
fn identified_user(s: &AppState, body: &Value) -> Result<ruma::OwnedUserId> {
    let name = body
        .get("identifier")
        .and_then(|i| {
            if i.get("type").and_then(Value::as_str) == Some("m.id.user") {
                i.get("user")
            } else {
                None
            }
        })
        .or_else(|| body.get("user"))
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("identifier of type m.id.user required"))?;
    if name.starts_with('@') {
        let uid = ruma::UserId::parse(name).map_err(|_| Error::invalid_username("invalid user ID"))?;
        if uid.server_name() != s.server_name() {
            return Err(Error::forbidden("Invalid username or password"));
        }
        Ok(uid)
    } else {
        user_id_for(s, &name.to_lowercase()).map_err(|_| Error::forbidden("Invalid username or password"))
    }
}

/// Checks `password` for `user`; `M_FORBIDDEN` on any mismatch, without saying which part.
async fn check_password(s: &AppState, user: &ruma::UserId, password: Option<&str>) -> Result<()> {
    s.rate_limiter.check(&format!("password:{user}"))?;
    let uid = user.to_string();
    let hash = s.db.read(move |c| store::password_hash(c, &uid)).await?;
    let ok = match (hash, password) {
        (Some(h), Some(p)) => s.passwords.verify(p.to_owned(), h).await?,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::forbidden("Invalid username or password"))
    }
}

/// `POST /_matrix/client/v3/login`
async fn login(State(s): State<AppState>, JsonBody(body): JsonBody<Value>) -> Result<Json<Value>> {
    match body.get("type").and_then(Value::as_str) {
        Some("m.login.password") => {}
        Some(_) => {
            return Err(Error::new(
                axum::http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "Unsupported login type",
            ));
        }
        None => return Err(Error::bad_json("missing login type")),
    }
    let user = identified_user(&s, &body)?;
    check_password(&s, &user, body.get("password").and_then(Value::as_str)).await?;
    let device = body.get("device_id").and_then(Value::as_str).map(str::to_owned);
    let name = body
        .get("initial_device_display_name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Json(new_session(&s, &user, device, name).await?))
}

/// User-Interactive Auth by password, for the endpoints that require it.
pub(crate) async fn require_password_uia(s: &AppState, auth: &Auth, uia: Option<&Value>) -> Result<()> {
    let session = uia.and_then(|a| a.get("session")).and_then(Value::as_str);
    let Some(uia) = uia else {
        return Err(uia_challenge("m.login.password", None, None));
    };
    if uia.get("type").and_then(Value::as_str) != Some("m.login.password") {
        return Err(uia_challenge("m.login.password", session, None));
    }
    let claimed = identified_user(s, uia).unwrap_or_else(|_| auth.user_id.clone());
    if claimed != auth.user_id {
        return Err(uia_challenge(
            "m.login.password",
            session,
            Some(Error::forbidden("Wrong user")),
        ));
    }
    check_password(s, &auth.user_id, uia.get("password").and_then(Value::as_str))
        .await
        .map_err(|e| {
            if e.errcode == "M_LIMIT_EXCEEDED" {
                e
            } else {
                uia_challenge("m.login.password", session, Some(e))
            }
        })
}

/// `POST /_matrix/client/v3/logout`
async fn logout(State(s): State<AppState>, auth: Auth) -> Result<axum::response::Response> {
    s.db.write(move |tx| remove_devices(tx, auth.user_id.as_str(), &[auth.device_id]))
        .await?;
    Ok(empty())
}

/// `POST /_matrix/client/v3/logout/all`
async fn logout_all(State(s): State<AppState>, auth: Auth) -> Result<axum::response::Response> {
    s.db.write(move |tx| {
        let all = device_ids(tx, auth.user_id.as_str())?;
        remove_devices(tx, auth.user_id.as_str(), &all)
    })
    .await?;
    Ok(empty())
}

/// `GET /_matrix/client/v3/account/whoami`
async fn whoami(auth: Auth) -> Json<Value> {
    Json(json!({"user_id": auth.user_id, "device_id": auth.device_id, "is_guest": false}))
}

#[derive(Deserialize)]
struct PasswordBody {
    new_password: String,
    #[serde(default = "yes")]
    logout_devices: bool,
    auth: Option<Value>,
}

fn yes() -> bool {
    true
}

/// `POST /_matrix/client/v3/account/password`
async fn change_password(
    State(s): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody<PasswordBody>,
) -> Result<axum::response::Response> {
    require_password_uia(&s, &auth, body.auth.as_ref()).await?;
    let hash = s.passwords.hash(body.new_password).await?;
    s.db.write(move |tx| {
        store::set_password_hash(tx, auth.user_id.as_str(), &hash)?;
        if body.logout_devices {
            let mut others = device_ids(tx, auth.user_id.as_str())?;
            others.retain(|d| *d != auth.device_id);
            remove_devices(tx, auth.user_id.as_str(), &others)?;
        }
        Ok(())
    })
    .await?;
    Ok(empty())
}

fn device_json(row: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    Ok(json!({
        "device_id": row.get::<_, String>(0)?,
        "display_name": row.get::<_, Option<String>>(1)?,
        "last_seen_ts": row.get::<_, Option<i64>>(2)?,
        "last_seen_ip": row.get::<_, Option<String>>(3)?,
    }))
}

const DEVICE_COLUMNS: &str = "device_id, display_name, last_seen_ts, last_seen_ip";

/// `GET /_matrix/client/v3/devices`
async fn list_devices(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>> {
    let devices =
        s.db.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ?1 ORDER BY device_id"
            ))?;
            let rows = stmt.query_map([auth.user_id.as_str()], device_json)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await?;
    Ok(Json(json!({"devices": devices})))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
async fn get_device(
    State(s): State<AppState>,
    auth: Auth,
    Path(device_id): Path<String>,
) -> Result<Json<Value>> {
    use rusqlite::OptionalExtension;
    let device =
        s.db.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = ?1 AND device_id = ?2"
            ))?
            .query_row([auth.user_id.as_str(), &device_id], device_json)
            .optional()?)
        })
        .await?;
    device.map(Json).ok_or_else(|| Error::not_found("Unknown device"))
}

#[derive(Deserialize)]
struct DeviceUpdate {
    display_name: Option<String>,
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`
async fn update_device(
    State(s): State<AppState>,
    auth: Auth,
    Path(device_id): Path<String>,
    JsonBody(body): JsonBody<DeviceUpdate>,
) -> Result<axum::response::Response> {
    let changed =
        s.db.write(move |tx| {
            Ok(tx.execute(
                "UPDATE devices SET display_name = ?3 WHERE user_id = ?1 AND device_id = ?2",
                rusqlite::params![auth.user_id.as_str(), device_id, body.display_name],
            )?)
        })
        .await?;
    if changed == 0 {
        return Err(Error::not_found("Unknown device"));
    }
    Ok(empty())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeleteBody {
    auth: Option<Value>,
    devices: Vec<String>,
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}` (User-Interactive Auth by password)
async fn delete_device(
    State(s): State<AppState>,
    auth: Auth,
    Path(device_id): Path<String>,
    JsonBody(body): JsonBody<DeleteBody>,
) -> Result<axum::response::Response> {
    let (uid, did) = (auth.user_id.to_string(), device_id.clone());
    let exists =
        s.db.read(move |c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM devices WHERE user_id = ?1 AND device_id = ?2")?
                    .exists([&uid, &did])?,
            )
        })
        .await?;
    if !exists {
        return Err(Error::not_found("Unknown device"));
    }
    require_password_uia(&s, &auth, body.auth.as_ref()).await?;
    s.db.write(move |tx| remove_devices(tx, auth.user_id.as_str(), &[device_id]))
        .await?;
    Ok(empty())
}

/// `POST /_matrix/client/v3/delete_devices` (User-Interactive Auth by password)
async fn delete_devices(
    State(s): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody<DeleteBody>,
) -> Result<axum::response::Response> {
    require_password_uia(&s, &auth, body.auth.as_ref()).await?;
    s.db.write(move |tx| remove_devices(tx, auth.user_id.as_str(), &body.devices))
        .await?;
    Ok(empty())
}
