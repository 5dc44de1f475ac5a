//! `/meshserver/devices/1`: a local user's device list (federation `user/devices`), and
//! device-list updates from peers (`m.device_list_update`), which tell local users sharing
//! a room with the remote user to refetch their keys and keep the key cache current.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::guard::{answer, local_user, origin_user};
use crate::api::keys::query_local;
use crate::p2p::wire::Response;
use crate::services::AppState;
use crate::storage::e2ee::record_device_change;
use crate::storage::remote_e2ee as cache;
use crate::{Error, Result};

/// `/meshserver/devices/1` `user_devices`: the devices with keys of a local user, its
/// cross-signing keys, and the stream position of its latest device change.
pub async fn serve_user_devices(s: &AppState, user_id: &str) -> Response {
    answer(user_devices(s, user_id).await)
}

async fn user_devices(s: &AppState, user_id: &str) -> Result<Response> {
    let user = local_user(s, user_id)?.to_string();
    let body =
        s.db.read(move |c| {
            let stream_id = cache::device_list_stream(c, &user)?;
            let mut found = query_local(c, &[(user.clone(), Vec::new())], None)?;
            let mut devices = Vec::new();
            if let Some(Value::Object(keyed)) = found.device_keys.remove(&user) {
                for (device_id, mut keys) in keyed {
                    // The display name travels beside the keys here, not in `unsigned`.
                    let name = keys
                        .as_object_mut()
                        .and_then(|k| k.remove("unsigned"))
                        .and_then(|u| u.get("device_display_name").cloned());
                    let mut d = json!({"device_id": device_id, "keys": keys});
                    if let Some(name) = name {
                        d["device_display_name"] = name;
                    }
                    devices.push(d);
                }
            }
            let mut out = json!({"user_id": user, "stream_id": stream_id, "devices": devices});
            if let Some(k) = found.master_keys.remove(&user) {
                out["master_key"] = k;
            }
            if let Some(k) = found.self_signing_keys.remove(&user) {
                out["self_signing_key"] = k;
            }
            Ok(out)
        })
        .await?;
    Ok(Response::Body(body))
}

/// An `m.device_list_update` EDU's content (`stream_id` and `prev_id` are not needed: the
/// cache is replaced by a full query whenever it is in doubt).
#[derive(Deserialize)]
struct DeviceListUpdate {
    user_id: String,
    device_id: String,
    #[serde(default)]
    device_display_name: Option<String>,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    keys: Option<Map<String, Value>>,
}

/// Longest device ID or display name accepted from a peer.
const MAX_FIELD_BYTES: usize = 255;

/// `/meshserver/devices/1` `device_list_update`: `origin`'s user changed a device. Local
/// users sharing a room with them see it in `/sync` `device_lists.changed`; the cache takes
/// the new keys, drops a deleted device, or forgets the user when no keys came.
pub async fn serve_update(s: &AppState, origin: &ruma::ServerName, content: Value) -> Response {
    answer(update(s, origin, content).await)
}

async fn update(s: &AppState, origin: &ruma::ServerName, content: Value) -> Result<Response> {
    let u: DeviceListUpdate =
        serde_json::from_value(content).map_err(|e| Error::bad_json(format!("device list update: {e}")))?;
    let user = origin_user(s, origin, &u.user_id)?.to_string();
    let device = u.device_id;
    if device.is_empty()
        || device.len() > MAX_FIELD_BYTES
        || u.device_display_name
            .as_ref()
            .is_some_and(|n| n.len() > MAX_FIELD_BYTES)
    {
        return Err(Error::invalid_param(
            "device_id or device_display_name out of bounds",
        ));
    }
    let keys = match u.keys {
        Some(mut keys) if !u.deleted => {
            if keys.get("user_id").and_then(Value::as_str) != Some(user.as_str())
                || keys.get("device_id").and_then(Value::as_str) != Some(device.as_str())
            {
                return Err(Error::invalid_param("keys belong to another device"));
            }
            if let Some(name) = u.device_display_name {
                keys.insert("unsigned".into(), json!({"device_display_name": name}));
            }
            Some(Value::Object(keys))
        }
        _ => None,
    };
    s.db.write(move |tx| {
        match (u.deleted, &keys) {
            (true, _) => cache::cache_device(tx, &user, &device, None)?,
            (false, Some(k)) => cache::cache_device(tx, &user, &device, Some(k))?,
            (false, None) => cache::invalidate_user(tx, &user)?,
        }
        // Strangers' changes concern no one here; recording them would only grow the stream.
        if cache::shares_room_with_local_user(tx, &user)? {
            record_device_change(tx, &user)?;
        }
        Ok(())
    })
    .await?;
    Ok(Response::Ok {})
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::p2p::serve::handle;
    use crate::p2p::wire::{Request, Response};
    use crate::storage::e2ee::device_list_delta;
    use crate::storage::remote_e2ee::{CachedKeys, cache_user_keys, cached_keys};
    use crate::testkit::{TestNode, node, other_server, server};

    fn update(content: Value) -> Request {
        Request::DeviceListUpdate { content }
    }

    async fn changed_for(a: &TestNode, user: &str, after: i64) -> Vec<String> {
        let (user, upto) = (user.to_owned(), a.stream());
        a.s.db
            .read(move |c| device_list_delta(c, &user, after, upto))
            .await
            .unwrap()
            .0
    }

    async fn cached(a: &TestNode, user: &str) -> Option<CachedKeys> {
        let user = user.to_owned();
        a.s.db.read(move |c| cached_keys(c, &user)).await.unwrap()
    }

    #[tokio::test]
    async fn user_devices_in_the_federation_shape() {
        let a = node();
        let alice = a.add_user("alice").await;
        a.add_device(&alice, "PHONE", &[]).await;
        a.set_master_key(&alice).await;
        let req = Request::UserDevices {
            user_id: alice.clone(),
        };
        let Response::Body(b) = handle(&a.s, &other_server(), req).await else {
            panic!("no body")
        };
        assert_eq!(b["user_id"], json!(alice));
        assert!(b["stream_id"].is_i64());
        assert_eq!(b["devices"][0]["device_id"], "PHONE");
        assert_eq!(b["devices"][0]["device_display_name"], "my device");
        assert!(b["devices"][0]["keys"].get("unsigned").is_none());
        assert_eq!(b["master_key"]["usage"], json!(["master"]));
        assert!(b.get("user_signing_key").is_none());

        let foreign = Request::UserDevices {
            user_id: format!("@x:{}", other_server()),
        };
        assert!(matches!(
            handle(&a.s, &other_server(), foreign).await,
            Response::Error { .. }
        ));
    }

    #[tokio::test]
    async fn an_update_reaches_local_users_sharing_a_room() {
        let (a, b) = (node(), node());
        let alice = a.add_user("alice").await;
        let bob = b.user("bob");
        let room = a.create_room(&alice, json!({"preset": "public_chat"})).await;
        b.take_events_of(&a).await;
        b.join(&room, &bob).await;
        a.take_events_of(&b).await;
        let b_name = b.s.server_name().to_owned();

        let before = a.stream();
        let res = handle(
            &a.s,
            &b_name,
            update(json!({"user_id": bob, "device_id": "NEW", "stream_id": 1})),
        )
        .await;
        assert_eq!(res, Response::Ok {});
        assert_eq!(changed_for(&a, &alice, before).await, std::slice::from_ref(&bob));

        // A user of B whom no local user shares a room with: nothing to record.
        let before = a.stream();
        let carol = format!("@carol:{b_name}");
        let res = handle(
            &a.s,
            &b_name,
            update(json!({"user_id": carol, "device_id": "X", "stream_id": 1})),
        )
        .await;
        assert_eq!(res, Response::Ok {});
        assert_eq!(a.stream(), before);

        // B cannot speak for a user of another node.
        let mallory = format!("@mallory:{}", server(9));
        let res = handle(
            &a.s,
            &b_name,
            update(json!({"user_id": mallory, "device_id": "X", "stream_id": 1})),
        )
        .await;
        assert!(
            matches!(res, Response::Error { ref errcode, .. } if errcode == "M_FORBIDDEN"),
            "{res:?}"
        );
        assert_eq!(a.refused(), 1);
        assert_eq!(a.stream(), before);
    }

    #[tokio::test]
    async fn updates_keep_the_key_cache_current() {
        let a = node();
        let origin = other_server();
        let bob = format!("@bob:{origin}");
        let keys = |device: &str, k: &str| json!({"user_id": bob, "device_id": device, "keys": {"k": k}});
        let start = CachedKeys {
            devices: vec![("ONE".into(), keys("ONE", "1")), ("TWO".into(), keys("TWO", "2"))],
            master: Some(json!({"user_id": bob})),
            self_signing: None,
        };
        let (u, s0) = (bob.clone(), start.clone());
        a.s.db
            .write(move |tx| cache_user_keys(tx, &u, &s0, 0))
            .await
            .unwrap();
        assert_eq!(cached(&a, &bob).await, Some(start));

        let new_keys = keys("TWO", "2b");
        let res = handle(
            &a.s,
            &origin,
            update(json!({"user_id": bob, "device_id": "TWO", "stream_id": 2, "keys": new_keys, "device_display_name": "tab"})),
        )
        .await;
        assert_eq!(res, Response::Ok {});
        let now = cached(&a, &bob).await.unwrap();
        assert_eq!(now.devices[1].1["keys"]["k"], "2b");
        assert_eq!(now.devices[1].1["unsigned"]["device_display_name"], "tab");

        let del = json!({"user_id": bob, "device_id": "ONE", "stream_id": 3, "deleted": true});
        handle(&a.s, &origin, update(del)).await;
        let now = cached(&a, &bob).await.unwrap();
        assert_eq!(now.devices.len(), 1);

        // Keys that name another device are refused, and change nothing.
        let wrong = keys("OTHER", "x");
        let res = handle(
            &a.s,
            &origin,
            update(json!({"user_id": bob, "device_id": "TWO", "stream_id": 4, "keys": wrong})),
        )
        .await;
        assert!(matches!(res, Response::Error { .. }));
        assert_eq!(cached(&a, &bob).await, Some(now));

        // A change without keys: the cache can no longer be trusted.
        handle(
            &a.s,
            &origin,
            update(json!({"user_id": bob, "device_id": "THREE", "stream_id": 5})),
        )
        .await;
        assert_eq!(cached(&a, &bob).await, None);
    }
}
