//! Keys of other nodes' users for `/keys/query` and `/keys/claim`: each named user's node
//! is asked over `/meshserver/keys/1`, all in parallel, each bounded by the request's
//! `timeout` (at most [`TIMEOUT`]). A node that cannot be reached is named in `failures`,
//! as the spec asks; for queries its users' cached keys (kept current by the device-list
//! updates their node sends) stand in when the cache holds their complete device list.
//!
//! Answers are trusted only for the answering node's own users: anything else in them is
//! dropped, as are keys whose `user_id`/`device_id` disagree with where they are filed.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use ruma::{OwnedServerName, ServerName};
use serde_json::{Map, Value, json};

use super::devices::KeysFound;
use crate::api::account::now_ms;
use crate::p2p::wire::{Request, Response};
use crate::services::AppState;
use crate::storage::remote_e2ee::{self as cache, CachedKeys};

/// The longest any one node is waited for.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Most distinct other nodes one request may name; the rest are reported as failures
/// rather than asked, which bounds the work one client request causes.
pub const MAX_SERVERS: usize = 100;

/// Requested users (with what is asked of each) grouped by their server.
pub type ByServer<T> = BTreeMap<OwnedServerName, BTreeMap<String, T>>;

/// The wait the client asked for, capped at [`TIMEOUT`].
pub fn timeout(ms: Option<u64>) -> Duration {
    ms.map_or(TIMEOUT, Duration::from_millis).min(TIMEOUT)
}

/// Sends `req` to `server` and returns its `Body`; `Err` carries the reason for `failures`
/// (unreachable, timed out, or the node's error).
pub async fn ask(
    s: &AppState,
    server: &ServerName,
    req: Request,
    timeout: Duration,
) -> Result<Value, String> {
    match tokio::time::timeout(timeout, s.p2p.request(server, req)).await {
        Err(_) => Err("timed out".to_owned()),
        Ok(Err(e)) => Err(e.message),
        Ok(Ok(Response::Body(v))) => Ok(v),
        Ok(Ok(Response::Error { errcode, error })) => Err(format!("{errcode}: {error}")),
        Ok(Ok(_)) => Err("unexpected answer".to_owned()),
    }
}

fn failure(message: &str) -> Value {
    json!({"status": 503, "message": message})
}

/// Asks every server in `by_server` with `make` (capped at [`MAX_SERVERS`]); returns
/// each asked server's requested users and its answer, and the failures of those not asked.
async fn fan_out<T>(
    s: &AppState,
    by_server: ByServer<T>,
    timeout: Duration,
    make: impl Fn(&BTreeMap<String, T>) -> Request,
) -> (Vec<AskedServer<T>>, Map<String, Value>) {
    let mut failures = Map::new();
    let mut asks = Vec::new();
    for (i, (server, users)) in by_server.into_iter().enumerate() {
        if i >= MAX_SERVERS {
            failures.insert(server.to_string(), failure("too many servers in one request"));
            continue;
        }
        let req = make(&users);
        asks.push(async move {
            let answer = ask(s, &server, req, timeout).await;
            AskedServer {
                server,
                users,
                answer,
            }
        });
    }
    (join_all(asks).await, failures)
}

struct AskedServer<T> {
    server: OwnedServerName,
    users: BTreeMap<String, T>,
    answer: Result<Value, String>,
}

/// The object `answer[field][user]`, if it is one.
fn entry<'a>(answer: &'a Value, field: &str, user: &str) -> Option<&'a Map<String, Value>> {
    answer.get(field)?.get(user)?.as_object()
}

/// A cross-signing key from an answer, if it is `user`'s.
fn cross_signing_key(answer: &Value, field: &str, user: &str) -> Option<Value> {
    let key = entry(answer, field, user)?;
    (key.get("user_id").and_then(Value::as_str) == Some(user)).then(|| Value::Object(key.clone()))
}

/// `user`'s device keys in an answer, limited to `devices` (all when empty), each filed
/// under its own user and device ID.
fn device_keys(answer: &Value, user: &str, devices: &[String]) -> Vec<(String, Value)> {
    let Some(all) = entry(answer, "device_keys", user) else {
        return Vec::new();
    };
    all.iter()
        .filter(|(id, keys)| {
            (devices.is_empty() || devices.contains(id))
                && keys.get("user_id").and_then(Value::as_str) == Some(user)
                && keys.get("device_id").and_then(Value::as_str) == Some(id.as_str())
        })
        .map(|(id, keys)| (id.clone(), keys.clone()))
        .collect()
}

/// Adds one user's keys to what the client gets.
fn add_found(found: &mut KeysFound, user: &str, keys: &CachedKeys) {
    let devices: Map<String, Value> = keys.devices.iter().cloned().collect();
    found.device_keys.insert(user.to_owned(), Value::Object(devices));
    if let Some(k) = &keys.master {
        found.master_keys.insert(user.to_owned(), k.clone());
    }
    if let Some(k) = &keys.self_signing {
        found.self_signing_keys.insert(user.to_owned(), k.clone());
    }
}

/// `/keys/query` for other nodes' users: the keys found and the `failures`.
pub async fn query(
    s: &AppState,
    by_server: ByServer<Vec<String>>,
    timeout: Duration,
) -> (KeysFound, Map<String, Value>) {
    let (asked, mut failures) = fan_out(s, by_server, timeout, |users| Request::KeysQuery {
        device_keys: users.clone(),
    })
    .await;
    let mut found = KeysFound::default();
    let mut fresh = Vec::new();
    let mut unreachable = Vec::new();
    for a in asked {
        match &a.answer {
            Ok(answer) => {
                for (user, devices) in &a.users {
                    if entry(answer, "device_keys", user).is_none() {
                        // The node does not know the user: no failure, no keys.
                        continue;
                    }
                    let keys = CachedKeys {
                        devices: device_keys(answer, user, devices),
                        master: cross_signing_key(answer, "master_keys", user),
                        self_signing: cross_signing_key(answer, "self_signing_keys", user),
                    };
                    add_found(&mut found, user, &keys);
                    fresh.push((user.clone(), devices.is_empty(), keys));
                }
            }
            Err(why) => unreachable.push((a.server, a.users, why.clone())),
        }
    }
    remember(s, fresh).await;
    for (server, users, why) in unreachable {
        let mut missing = false;
        for (user, devices) in users {
            match cached(s, &user).await {
                Some(mut keys) => {
                    keys.devices
                        .retain(|(id, _)| devices.is_empty() || devices.contains(id));
                    add_found(&mut found, &user, &keys);
                }
                None => missing = true,
            }
        }
        if missing {
            failures.insert(server.to_string(), failure(&why));
        }
    }
    (found, failures)
}

/// Caches the complete device lists among fresh answers (a query for some devices only
/// says nothing of the others). A cache failure costs only the fallback, never the answer.
async fn remember(s: &AppState, fresh: Vec<(String, bool, CachedKeys)>) {
    let complete: Vec<(String, CachedKeys)> = fresh
        .into_iter()
        .filter(|(_, complete, _)| *complete)
        .map(|(user, _, keys)| (user, keys))
        .collect();
    if complete.is_empty() {
        return;
    }
    let now = now_ms();
    let stored =
        s.db.write(move |tx| {
            for (user, keys) in &complete {
                cache::cache_user_keys(tx, user, keys, now)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = stored {
        tracing::warn!(error = %e, "caching remote keys failed");
    }
}

async fn cached(s: &AppState, user: &str) -> Option<CachedKeys> {
    let user = user.to_owned();
    s.db.read(move |c| cache::cached_keys(c, &user))
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading cached remote keys failed");
            None
        })
}

/// `/keys/claim` for other nodes' users: the claimed keys and the `failures`. Claims are
/// never served from a cache: a one-time key must come from its owner's node, once.
pub async fn claim(
    s: &AppState,
    by_server: ByServer<BTreeMap<String, String>>,
    timeout: Duration,
) -> (Map<String, Value>, Map<String, Value>) {
    let (asked, mut failures) = fan_out(s, by_server, timeout, |users| Request::KeysClaim {
        one_time_keys: users.clone(),
    })
    .await;
    let mut claimed = Map::new();
    for a in asked {
        let answer = match a.answer {
            Ok(answer) => answer,
            Err(why) => {
                failures.insert(a.server.to_string(), failure(&why));
                continue;
            }
        };
        for (user, devices) in &a.users {
            let Some(theirs) = entry(&answer, "one_time_keys", user) else {
                continue;
            };
            let mine: Map<String, Value> = theirs
                .iter()
                .filter(|(device, keys)| devices.contains_key(*device) && keys.is_object())
                .map(|(device, keys)| (device.clone(), keys.clone()))
                .collect();
            if !mine.is_empty() {
                claimed.insert(user.clone(), Value::Object(mine));
            }
        }
    }
    (claimed, failures)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::storage::remote_e2ee::cache_user_keys;
    use crate::testkit::{node, other_server};

    fn one(server: &ServerName, user: &str, devices: Vec<String>) -> ByServer<Vec<String>> {
        ByServer::from([(server.to_owned(), BTreeMap::from([(user.to_owned(), devices)]))])
    }

    #[test]
    fn answers_are_trusted_only_for_their_own_keys() {
        let answer = json!({"device_keys": {"@b:x": {
            "GOOD": {"user_id": "@b:x", "device_id": "GOOD"},
            "MOVED": {"user_id": "@b:x", "device_id": "ELSEWHERE"},
            "STOLEN": {"user_id": "@c:y", "device_id": "STOLEN"},
        }}, "master_keys": {"@b:x": {"user_id": "@c:y"}}});
        let keys = device_keys(&answer, "@b:x", &[]);
        assert_eq!(keys.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>(), ["GOOD"]);
        assert!(device_keys(&answer, "@b:x", &["MOVED".into()]).is_empty());
        assert_eq!(cross_signing_key(&answer, "master_keys", "@b:x"), None);
    }

    #[tokio::test]
    async fn an_unreachable_node_is_a_failure_unless_its_keys_are_cached() {
        let a = node();
        let origin = other_server();
        let bob = format!("@bob:{origin}");
        let wait = Duration::from_secs(1);
        let (found, failures) = query(&a.s, one(&origin, &bob, vec![]), wait).await;
        assert!(found.device_keys.is_empty());
        assert_eq!(failures[origin.as_str()]["status"], 503);

        let cached = CachedKeys {
            devices: vec![
                ("ONE".into(), json!({"user_id": bob, "device_id": "ONE"})),
                ("TWO".into(), json!({"user_id": bob, "device_id": "TWO"})),
            ],
            master: Some(json!({"user_id": bob, "usage": ["master"]})),
            self_signing: None,
        };
        let u = bob.clone();
        a.s.db
            .write(move |tx| cache_user_keys(tx, &u, &cached, 0))
            .await
            .unwrap();
        let (found, failures) = query(&a.s, one(&origin, &bob, vec!["TWO".into()]), wait).await;
        assert!(failures.is_empty(), "{failures:?}");
        let devices = found.device_keys[&bob].as_object().unwrap();
        assert_eq!(devices.keys().collect::<Vec<_>>(), ["TWO"]);
        assert_eq!(found.master_keys[&bob]["usage"], json!(["master"]));

        // Claims never come from a cache.
        let want = ByServer::from([(
            origin.clone(),
            BTreeMap::from([(
                bob.clone(),
                BTreeMap::from([("TWO".to_owned(), "signed_curve25519".to_owned())]),
            )]),
        )]);
        let (claimed, failures) = claim(&a.s, want, wait).await;
        assert!(claimed.is_empty());
        assert!(failures.contains_key(origin.as_str()));
    }
}
