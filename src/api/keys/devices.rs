//! Device keys: upload (identity, one-time and fallback keys), query, claim, and the
//! device-list changes between two sync tokens. Query and claim also serve peers
//! ([`query_local`], [`claim_local`]) and ask other nodes for their users ([`remote`]).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::Uri;
use axum::routing::{get, post};
use axum::{Json, Router};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{cross_signing_public_key, merge_signatures, parse_user_id, remote};
use crate::api::client;
use crate::api::extract::{Auth, JsonBody};
use crate::api::room_events::{parse_stream_token, query_map};
use crate::services::AppState;
use crate::storage::e2ee::{self as store, CrossSigning};
use crate::storage::{WriteTx, accounts};
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/keys/upload", post(upload));
    let r = client(r, "/keys/query", post(query));
    let r = client(r, "/keys/claim", post(claim));
    client(r, "/keys/changes", get(changes))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct UploadBody {
    device_keys: Option<Value>,
    one_time_keys: Option<Map<String, Value>>,
    fallback_keys: Option<Map<String, Value>>,
    /// The name fallback keys had before Matrix 1.2; some clients still send it.
    #[serde(rename = "org.matrix.msc2732.fallback_keys")]
    unstable_fallback_keys: Option<Map<String, Value>>,
}

/// Checks an uploaded device keys object against the spec's shape and the caller's
/// identity; returns it without `unsigned` (the server adds its own at query time).
fn validate_device_keys(keys: Value, auth: &Auth) -> Result<Value> {
    let Value::Object(mut obj) = keys else {
        return Err(Error::bad_json("device_keys must be an object"));
    };
    if obj.get("user_id").and_then(Value::as_str) != Some(auth.user_id.as_str()) {
        return Err(Error::invalid_param(
            "device_keys.user_id must be the caller's user ID",
        ));
    }
    if obj.get("device_id").and_then(Value::as_str) != Some(auth.device_id.as_str()) {
        return Err(Error::invalid_param(
            "device_keys.device_id must be the caller's device ID",
        ));
    }
    let strings = |v: Option<&Value>| match v {
        Some(Value::Object(m)) => m.values().all(Value::is_string),
        _ => false,
    };
    let algorithms_ok =
        matches!(obj.get("algorithms"), Some(Value::Array(a)) if a.iter().all(Value::is_string));
    if !algorithms_ok || !strings(obj.get("keys")) || !obj.get("signatures").is_some_and(Value::is_object) {
        return Err(Error::bad_json(
            "device_keys needs algorithms (strings), keys (strings) and signatures",
        ));
    }
    obj.remove("unsigned");
    Ok(Value::Object(obj))
}

/// Splits `<algorithm>:<key_id>`.
fn split_key_id(id: &str) -> Result<(&str, &str)> {
    match id.split_once(':') {
        Some((alg, key)) if !alg.is_empty() && !key.is_empty() => Ok((alg, key)),
        _ => Err(Error::invalid_param(format!(
            "key ID {id:?} is not of the form <algorithm>:<key_id>"
        ))),
    }
}

/// Parses a map of `<algorithm>:<key_id>` to key (a string or a signed key object).
fn parse_keys(keys: Map<String, Value>) -> Result<Vec<(String, String, Value)>> {
    keys.into_iter()
        .map(|(id, key)| {
            if !key.is_string() && !key.is_object() {
                return Err(Error::bad_json(format!(
                    "key {id:?} must be a string or an object"
                )));
            }
            let (alg, key_id) = split_key_id(&id)?;
            Ok((alg.to_owned(), key_id.to_owned(), key))
        })
        .collect()
}

/// `POST /_matrix/client/v3/keys/upload`
async fn upload(
    State(s): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody<UploadBody>,
) -> Result<Json<Value>> {
    let device_keys = body
        .device_keys
        .map(|k| validate_device_keys(k, &auth))
        .transpose()?;
    let one_time = parse_keys(body.one_time_keys.unwrap_or_default())?;
    let fallback = parse_keys(
        body.fallback_keys
            .or(body.unstable_fallback_keys)
            .unwrap_or_default(),
    )?;
    for (i, (alg, _, _)) in fallback.iter().enumerate() {
        if fallback[..i].iter().any(|(a, _, _)| a == alg) {
            return Err(Error::invalid_param(format!(
                "at most one fallback key per algorithm ({alg})"
            )));
        }
    }
    let counts =
        s.db.write(move |tx| {
            let (user, device) = (auth.user_id.as_str(), auth.device_id.as_str());
            for (alg, key_id, key) in &one_time {
                match store::one_time_key(tx, user, device, alg, key_id)? {
                    Some(old) if old != *key => {
                        return Err(Error::invalid_param(format!(
                            "one-time key {alg}:{key_id} already exists with different content"
                        )));
                    }
                    Some(_) => {}
                    None => store::put_one_time_key(tx, user, device, alg, key_id, key)?,
                }
            }
            for (alg, key_id, key) in &fallback {
                store::put_fallback_key(tx, user, device, alg, key_id, key)?;
            }
            if let Some(keys) = device_keys {
                let old = store::device_keys(tx, user, device)?;
                if old.as_ref() != Some(&keys) {
                    if old.is_some_and(|o| super::signed_part(&o) != super::signed_part(&keys)) {
                        // Signatures others made were over the keys now replaced.
                        store::clear_device_signatures(tx, user, device)?;
                    }
                    store::put_device_keys(tx, user, device, &keys)?;
                    store::record_device_update(tx, user, device, false, Some(&keys))?;
                }
            }
            store::one_time_key_counts(tx, user, device)
        })
        .await?;
    Ok(Json(json!({"one_time_key_counts": counts})))
}

#[derive(Deserialize)]
struct QueryBody {
    device_keys: BTreeMap<String, Vec<String>>,
    /// Milliseconds to wait for other nodes; capped at [`remote::TIMEOUT`].
    timeout: Option<u64>,
}

/// The keys of local users a query names, as the viewer may see them: the Client-Server
/// `/keys/query` fields other than `failures` (the federation answer uses the first three).
#[derive(Debug, Default)]
pub struct KeysFound {
    pub device_keys: Map<String, Value>,
    pub master_keys: Map<String, Value>,
    pub self_signing_keys: Map<String, Value>,
    pub user_signing_keys: Map<String, Value>,
}

/// Keys of the local users in `wanted` (user → device IDs, empty for all). `viewer` is the
/// asking local user; `None` for a peer, which sees only the owners' own signatures and no
/// user-signing keys (those are private to their owner).
pub fn query_local(
    c: &Connection,
    wanted: &[(String, Vec<String>)],
    viewer: Option<&str>,
) -> Result<KeysFound> {
    let mut out = KeysFound::default();
    for (user, devices) in wanted {
        if !accounts::user_exists(c, user)? {
            continue;
        }
        // A peer sees what a local user who is neither the owner nor a signer would.
        let (owner_asks, viewer) = match viewer {
            Some(v) => (v == user, v),
            None => (false, user.as_str()),
        };
        let mut mine = Map::new();
        for d in store::keyed_devices(c, user, devices)? {
            let mut keys = d.keys;
            merge_signatures(&mut keys, store::signatures(c, user, &d.device_id)?, user, viewer);
            if let (Some(name), Some(obj)) = (d.display_name, keys.as_object_mut()) {
                obj.insert("unsigned".into(), json!({"device_display_name": name}));
            }
            mine.insert(d.device_id, keys);
        }
        out.device_keys.insert(user.clone(), Value::Object(mine));
        for kind in CrossSigning::ALL {
            let into = match kind {
                CrossSigning::Master => &mut out.master_keys,
                CrossSigning::SelfSigning => &mut out.self_signing_keys,
                // Private to its owner.
                CrossSigning::UserSigning if owner_asks => &mut out.user_signing_keys,
                CrossSigning::UserSigning => continue,
            };
            let Some(mut key) = store::cross_signing_key(c, user, kind)? else {
                continue;
            };
            if let Some(public) = cross_signing_public_key(&key).map(str::to_owned) {
                merge_signatures(&mut key, store::signatures(c, user, &public)?, user, viewer);
            }
            into.insert(user.clone(), key);
        }
    }
    Ok(out)
}

/// This node's users a request names (with what is asked of each), and other nodes'.
type Split<T> = (Vec<(String, T)>, remote::ByServer<T>);

/// Splits the users a request names into this node's and other nodes' (by server).
fn split_by_server<T>(s: &AppState, requested: BTreeMap<String, T>) -> Result<Split<T>> {
    let mut local = Vec::new();
    let mut others = remote::ByServer::new();
    for (user, v) in requested {
        let uid = parse_user_id(&user)?;
        if uid.server_name() == s.server_name() {
            local.push((user, v));
        } else {
            others
                .entry(uid.server_name().to_owned())
                .or_default()
                .insert(user, v);
        }
    }
    Ok((local, others))
}

/// `POST /_matrix/client/v3/keys/query`: local users from storage, other nodes' users from
/// their nodes (in parallel; see [`remote`]).
async fn query(
    State(s): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody<QueryBody>,
) -> Result<Json<Value>> {
    let (wanted, others) = split_by_server(&s, body.device_keys)?;
    let viewer = auth.user_id.to_string();
    let remote = remote::query(&s, others, remote::timeout(body.timeout));
    let local = s.db.read(move |c| query_local(c, &wanted, Some(&viewer)));
    let (local, (mut found, failures)) = tokio::join!(local, remote);
    let local = local?;
    found.device_keys.extend(local.device_keys);
    found.master_keys.extend(local.master_keys);
    found.self_signing_keys.extend(local.self_signing_keys);
    found.user_signing_keys.extend(local.user_signing_keys);
    Ok(Json(json!({
        "device_keys": found.device_keys,
        "master_keys": found.master_keys,
        "self_signing_keys": found.self_signing_keys,
        "user_signing_keys": found.user_signing_keys,
        "failures": failures,
    })))
}

#[derive(Deserialize)]
struct ClaimBody {
    one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
    /// Milliseconds to wait for other nodes; capped at [`remote::TIMEOUT`].
    timeout: Option<u64>,
}

/// Claims one key per named device of local users: a one-time key, or the fallback key
/// when none is left. Runs in the caller's write transaction, which deletes each one-time
/// key it returns, so no other claim (client or peer) can ever be handed it again.
pub fn claim_local(
    tx: &WriteTx<'_>,
    wanted: &[(String, BTreeMap<String, String>)],
) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for (user, devices) in wanted {
        let mut mine = Map::new();
        for (device, alg) in devices {
            if let Some((key_id, key)) = store::claim_key(tx, user, device, alg)? {
                mine.insert(device.clone(), json!({ format!("{alg}:{key_id}"): key }));
            }
        }
        if !mine.is_empty() {
            out.insert(user.clone(), Value::Object(mine));
        }
    }
    Ok(out)
}

/// `POST /_matrix/client/v3/keys/claim`
async fn claim(
    State(s): State<AppState>,
    _auth: Auth,
    JsonBody(body): JsonBody<ClaimBody>,
) -> Result<Json<Value>> {
    let (wanted, others) = split_by_server(&s, body.one_time_keys)?;
    let remote = remote::claim(&s, others, remote::timeout(body.timeout));
    let local = s.db.write(move |tx| claim_local(tx, &wanted));
    let (local, (mut claimed, failures)) = tokio::join!(local, remote);
    claimed.extend(local?);
    Ok(Json(json!({"one_time_keys": claimed, "failures": failures})))
}

/// `GET /_matrix/client/v3/keys/changes?from=&to=`
async fn changes(State(s): State<AppState>, auth: Auth, uri: Uri) -> Result<Json<Value>> {
    let q = query_map(&uri)?;
    let from = parse_stream_token(
        q.get("from")
            .ok_or_else(|| Error::missing_param("from is required"))?,
    )?;
    // `to` is only a hint in practice (Synapse ignores it); without it, read up to now.
    let to = match q.get("to") {
        Some(t) => parse_stream_token(t)?,
        None => s.db.notifier().current().stream,
    };
    let (changed, left) =
        s.db.read(move |c| store::device_list_delta(c, auth.user_id.as_str(), from, to))
            .await?;
    Ok(Json(json!({"changed": changed, "left": left})))
}
