//! Server-side key backup: `/room_keys/version` (create, read, update, delete) and
//! `/room_keys/keys` (put, get, delete, for all rooms, one room or one session).
//!
//! Keys may only be written to the current (latest live) version; `etag` changes whenever
//! a version's keys change, so clients notice other devices' writes.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::api::extract::{Auth, JsonBody};
use crate::api::room_events::{parse_room_id, query_map};
use crate::api::{client, empty};
use crate::services::AppState;
use crate::storage::e2ee::backup::{self as store, Version};
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/room_keys/version", post(create_version).get(latest_version));
    let r = client(
        r,
        "/room_keys/version/{version}",
        get(get_version).put(update_version).delete(delete_version),
    );
    let r = client(r, "/room_keys/keys", get(get_all).put(put_all).delete(delete_all));
    let r = client(
        r,
        "/room_keys/keys/{room_id}",
        get(get_room).put(put_room).delete(delete_room),
    );
    client(
        r,
        "/room_keys/keys/{room_id}/{session_id}",
        get(get_session).put(put_session).delete(delete_session),
    )
}

fn unknown_version() -> Error {
    Error::not_found("Unknown backup version")
}

/// Versions are opaque strings to clients; ours are numbers, so anything else is unknown.
fn parse_version(v: &str) -> Result<i64> {
    v.parse().map_err(|_| unknown_version())
}

/// The required `version` query parameter.
fn version_param(uri: &Uri) -> Result<i64> {
    let q = query_map(uri)?;
    parse_version(
        q.get("version")
            .ok_or_else(|| Error::missing_param("version is required"))?,
    )
}

fn version_json(v: Version) -> Value {
    json!({
        "algorithm": v.algorithm,
        "auth_data": v.auth_data,
        "count": v.count,
        "etag": v.etag.to_string(),
        "version": v.version.to_string(),
    })
}

#[derive(Deserialize)]
struct NewVersion {
    algorithm: String,
    auth_data: Map<String, Value>,
}

/// `POST /_matrix/client/v3/room_keys/version`
async fn create_version(
    State(s): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody<NewVersion>,
) -> Result<Json<Value>> {
    let version =
        s.db.write(move |tx| {
            store::create_version(
                tx,
                auth.user_id.as_str(),
                &body.algorithm,
                &Value::Object(body.auth_data),
            )
        })
        .await?;
    Ok(Json(json!({"version": version.to_string()})))
}

/// `GET /_matrix/client/v3/room_keys/version`
async fn latest_version(State(s): State<AppState>, auth: Auth) -> Result<Json<Value>> {
    let v =
        s.db.read(move |c| store::version(c, auth.user_id.as_str(), None))
            .await?;
    v.map(|v| Json(version_json(v)))
        .ok_or_else(|| Error::not_found("No current backup version"))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`
async fn get_version(
    State(s): State<AppState>,
    auth: Auth,
    Path(version): Path<String>,
) -> Result<Json<Value>> {
    let version = parse_version(&version)?;
    let v =
        s.db.read(move |c| store::version(c, auth.user_id.as_str(), Some(version)))
            .await?;
    v.map(|v| Json(version_json(v))).ok_or_else(unknown_version)
}

#[derive(Deserialize)]
struct VersionUpdate {
    algorithm: String,
    auth_data: Map<String, Value>,
    version: Option<String>,
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`: only `auth_data` may change.
async fn update_version(
    State(s): State<AppState>,
    auth: Auth,
    Path(path_version): Path<String>,
    JsonBody(body): JsonBody<VersionUpdate>,
) -> Result<Response> {
    if body.version.as_ref().is_some_and(|v| *v != path_version) {
        return Err(Error::invalid_param("version in body does not match the path"));
    }
    let version = parse_version(&path_version)?;
    s.db.write(move |tx| {
        let user = auth.user_id.as_str();
        let current = store::version(tx, user, Some(version))?.ok_or_else(unknown_version)?;
        if current.algorithm != body.algorithm {
            return Err(Error::invalid_param("algorithm does not match the backup's"));
        }
        store::set_auth_data(tx, user, version, &Value::Object(body.auth_data))
    })
    .await?;
    Ok(empty())
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`: repeating it succeeds.
async fn delete_version(
    State(s): State<AppState>,
    auth: Auth,
    Path(version): Path<String>,
) -> Result<Response> {
    let version = parse_version(&version)?;
    s.db.write(move |tx| {
        let user = auth.user_id.as_str();
        match store::version_deleted(tx, user, version)? {
            None => Err(unknown_version()),
            Some(true) => Ok(()),
            Some(false) => store::delete_version(tx, user, version),
        }
    })
    .await?;
    Ok(empty())
}

/// One session's backed-up key (`KeyBackupData`); unknown fields are kept as sent.
#[derive(Deserialize, Serialize, Clone)]
struct KeyData {
    first_message_index: u64,
    forwarded_count: u64,
    is_verified: bool,
    session_data: Map<String, Value>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

impl KeyData {
    /// Whether this key should replace `old` for the same session: the verified one wins,
    /// then the one decrypting from an earlier message, then the one forwarded fewer times.
    fn better_than(&self, old: &KeyData) -> bool {
        if self.is_verified != old.is_verified {
            return self.is_verified;
        }
        if self.first_message_index != old.first_message_index {
            return self.first_message_index < old.first_message_index;
        }
        self.forwarded_count < old.forwarded_count
    }
}

#[derive(Deserialize)]
struct RoomKeys {
    sessions: BTreeMap<String, KeyData>,
}

#[derive(Deserialize)]
struct AllKeys {
    rooms: BTreeMap<String, RoomKeys>,
}

/// Which keys of a version a request names.
#[derive(Clone, Default)]
struct Scope {
    room: Option<String>,
    session: Option<String>,
}

impl Scope {
    fn room(room: &str) -> Result<Scope> {
        Ok(Scope {
            room: Some(parse_room_id(room)?.to_string()),
            session: None,
        })
    }
    fn session(room: &str, session: String) -> Result<Scope> {
        Ok(Scope {
            session: Some(session),
            ..Scope::room(room)?
        })
    }
}

fn keys_update(etag: i64, count: i64) -> Json<Value> {
    Json(json!({"etag": etag.to_string(), "count": count}))
}

/// Stores keys in the current version, each only if better than the one held.
async fn put_keys(
    s: &AppState,
    auth: Auth,
    uri: &Uri,
    keys: Vec<(String, String, KeyData)>,
) -> Result<Json<Value>> {
    let version = version_param(uri)?;
    let (etag, count) =
        s.db.write(move |tx| {
            let user = auth.user_id.as_str();
            let current = match store::version(tx, user, None)? {
                Some(c) if c.version == version => c,
                Some(c) if store::version_deleted(tx, user, version)? == Some(false) => {
                    let mut extra = Map::new();
                    extra.insert("current_version".into(), json!(c.version.to_string()));
                    return Err(Error::new(
                        StatusCode::FORBIDDEN,
                        "M_WRONG_ROOM_KEYS_VERSION",
                        "Wrong backup version.",
                    )
                    .with_extra(extra));
                }
                _ => return Err(unknown_version()),
            };
            let mut changed = false;
            for (room, session, key) in &keys {
                let old = store::room_key(tx, user, version, room, session)?;
                let replace = match old.map(serde_json::from_value::<KeyData>) {
                    Some(Ok(old)) => key.better_than(&old),
                    // Nothing held, or something unreadable: the new key is better.
                    _ => true,
                };
                if replace {
                    store::put_room_key(tx, user, version, room, session, &serde_json::to_value(key)?)?;
                    changed = true;
                }
            }
            let etag = if changed {
                store::bump_etag(tx, user, version)?
            } else {
                current.etag
            };
            Ok((etag, store::count(tx, user, version)?))
        })
        .await?;
    Ok(keys_update(etag, count))
}

/// The keys of a live version within `scope`.
async fn get_keys(s: &AppState, auth: Auth, uri: &Uri, scope: Scope) -> Result<Vec<(String, String, Value)>> {
    let version = version_param(uri)?;
    s.db.read(move |c| {
        let user = auth.user_id.as_str();
        if store::version_deleted(c, user, version)? != Some(false) {
            return Err(unknown_version());
        }
        store::room_keys(c, user, version, scope.room.as_deref(), scope.session.as_deref())
    })
    .await
}

/// Deletes the keys of a live version within `scope`.
async fn delete_keys(s: &AppState, auth: Auth, uri: &Uri, scope: Scope) -> Result<Json<Value>> {
    let version = version_param(uri)?;
    let (etag, count) =
        s.db.write(move |tx| {
            let user = auth.user_id.as_str();
            let v = store::version(tx, user, Some(version))?.ok_or_else(unknown_version)?;
            let deleted =
                store::delete_room_keys(tx, user, version, scope.room.as_deref(), scope.session.as_deref())?;
            let etag = if deleted > 0 {
                store::bump_etag(tx, user, version)?
            } else {
                v.etag
            };
            Ok((etag, store::count(tx, user, version)?))
        })
        .await?;
    Ok(keys_update(etag, count))
}

/// Groups keys as `{room: {"sessions": {session: key}}}`.
fn by_room(keys: Vec<(String, String, Value)>) -> Map<String, Value> {
    let mut rooms: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (room, session, key) in keys {
        rooms.entry(room).or_default().insert(session, key);
    }
    rooms
        .into_iter()
        .map(|(room, sessions)| (room, json!({ "sessions": sessions })))
        .collect()
}

/// `PUT /_matrix/client/v3/room_keys/keys?version=`
async fn put_all(
    State(s): State<AppState>,
    auth: Auth,
    uri: Uri,
    JsonBody(body): JsonBody<AllKeys>,
) -> Result<Json<Value>> {
    let mut keys = Vec::new();
    for (room, room_keys) in body.rooms {
        let room = parse_room_id(&room)?.to_string();
        keys.extend(
            room_keys
                .sessions
                .into_iter()
                .map(|(sid, k)| (room.clone(), sid, k)),
        );
    }
    put_keys(&s, auth, &uri, keys).await
}

/// `GET /_matrix/client/v3/room_keys/keys?version=`
async fn get_all(State(s): State<AppState>, auth: Auth, uri: Uri) -> Result<Json<Value>> {
    let keys = get_keys(&s, auth, &uri, Scope::default()).await?;
    Ok(Json(json!({"rooms": by_room(keys)})))
}

/// `DELETE /_matrix/client/v3/room_keys/keys?version=`
async fn delete_all(State(s): State<AppState>, auth: Auth, uri: Uri) -> Result<Json<Value>> {
    delete_keys(&s, auth, &uri, Scope::default()).await
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}?version=`
async fn put_room(
    State(s): State<AppState>,
    auth: Auth,
    Path(room): Path<String>,
    uri: Uri,
    JsonBody(body): JsonBody<RoomKeys>,
) -> Result<Json<Value>> {
    let room = parse_room_id(&room)?.to_string();
    let keys = body
        .sessions
        .into_iter()
        .map(|(sid, k)| (room.clone(), sid, k))
        .collect();
    put_keys(&s, auth, &uri, keys).await
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}?version=`
async fn get_room(
    State(s): State<AppState>,
    auth: Auth,
    Path(room): Path<String>,
    uri: Uri,
) -> Result<Json<Value>> {
    let keys = get_keys(&s, auth, &uri, Scope::room(&room)?).await?;
    let sessions: Map<String, Value> = keys.into_iter().map(|(_, sid, k)| (sid, k)).collect();
    Ok(Json(json!({"sessions": sessions})))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}?version=`
async fn delete_room(
    State(s): State<AppState>,
    auth: Auth,
    Path(room): Path<String>,
    uri: Uri,
) -> Result<Json<Value>> {
    delete_keys(&s, auth, &uri, Scope::room(&room)?).await
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}?version=`
async fn put_session(
    State(s): State<AppState>,
    auth: Auth,
    Path((room, session)): Path<(String, String)>,
    uri: Uri,
    JsonBody(key): JsonBody<KeyData>,
) -> Result<Json<Value>> {
    let room = parse_room_id(&room)?.to_string();
    put_keys(&s, auth, &uri, vec![(room, session, key)]).await
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}?version=`
async fn get_session(
    State(s): State<AppState>,
    auth: Auth,
    Path((room, session)): Path<(String, String)>,
    uri: Uri,
) -> Result<Json<Value>> {
    let keys = get_keys(&s, auth, &uri, Scope::session(&room, session)?).await?;
    keys.into_iter()
        .next()
        .map(|(_, _, k)| Json(k))
        .ok_or_else(|| Error::not_found("Key not found"))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}?version=`
async fn delete_session(
    State(s): State<AppState>,
    auth: Auth,
    Path((room, session)): Path<(String, String)>,
    uri: Uri,
) -> Result<Json<Value>> {
    delete_keys(&s, auth, &uri, Scope::session(&room, session)?).await
}
