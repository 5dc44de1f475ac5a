//! `/meshserver/keys/1`: device and cross-signing keys of local users (federation
//! `user/keys/query`) and one-time key claims (`user/keys/claim`), through the same code
//! the client API uses, so a peer's claim and a local one can never get the same key.

use std::collections::BTreeMap;

use serde_json::json;

use super::guard::{answer, local_user};
use crate::api::keys::{claim_local, query_local};
use crate::p2p::wire::Response;
use crate::services::AppState;
use crate::{Error, Result};

/// Most users one query may name.
pub const MAX_USERS: usize = 1000;
/// Most devices one claim may name, over all users.
pub const MAX_CLAIMS: usize = 1000;

/// `/meshserver/keys/1` `keys_query`: device keys (all of a user's when the list is
/// empty), master and self-signing keys, with the owners' own signatures.
pub async fn serve_query(s: &AppState, device_keys: BTreeMap<String, Vec<String>>) -> Response {
    answer(query(s, device_keys).await)
}

async fn query(s: &AppState, device_keys: BTreeMap<String, Vec<String>>) -> Result<Response> {
    if device_keys.len() > MAX_USERS {
        return Err(Error::too_large(format!("at most {MAX_USERS} users per query")));
    }
    let mut wanted = Vec::with_capacity(device_keys.len());
    for (user, devices) in device_keys {
        wanted.push((local_user(s, &user)?.to_string(), devices));
    }
    let found = s.db.read(move |c| query_local(c, &wanted, None)).await?;
    Ok(Response::Body(json!({
        "device_keys": found.device_keys,
        "master_keys": found.master_keys,
        "self_signing_keys": found.self_signing_keys,
    })))
}

/// `/meshserver/keys/1` `keys_claim`: one key per named device, a one-time key while any
/// is left and the fallback key after that.
pub async fn serve_claim(
    s: &AppState,
    one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
) -> Response {
    answer(claim(s, one_time_keys).await)
}

async fn claim(s: &AppState, one_time_keys: BTreeMap<String, BTreeMap<String, String>>) -> Result<Response> {
    if one_time_keys.values().map(BTreeMap::len).sum::<usize>() > MAX_CLAIMS {
        return Err(Error::too_large(format!("at most {MAX_CLAIMS} keys per claim")));
    }
    let mut wanted = Vec::with_capacity(one_time_keys.len());
    for (user, devices) in one_time_keys {
        wanted.push((local_user(s, &user)?.to_string(), devices));
    }
    let claimed = s.db.write(move |tx| claim_local(tx, &wanted)).await?;
    Ok(Response::Body(json!({"one_time_keys": claimed})))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    use crate::p2p::serve::handle;
    use crate::p2p::wire::{Request, Response};
    use crate::testkit::{node, other_server};

    fn body(res: Response) -> Value {
        match res {
            Response::Body(b) => b,
            other => panic!("expected a body, got {other:?}"),
        }
    }

    fn claim_req(user: &str, device: &str) -> Request {
        let devices = BTreeMap::from([(device.to_owned(), "signed_curve25519".to_owned())]);
        Request::KeysClaim {
            one_time_keys: BTreeMap::from([(user.to_owned(), devices)]),
        }
    }

    #[tokio::test]
    async fn query_returns_local_keys_in_the_federation_shape() {
        let a = node();
        let alice = a.add_user("alice").await;
        a.add_device(&alice, "PHONE", &[]).await;
        a.add_device(&alice, "LAPTOP", &[]).await;
        a.set_master_key(&alice).await;
        let origin = other_server();
        let all = Request::KeysQuery {
            device_keys: BTreeMap::from([(alice.clone(), vec![])]),
        };
        let b = body(handle(&a.s, &origin, all).await);
        let devices = b["device_keys"][&alice].as_object().unwrap();
        assert_eq!(devices.keys().collect::<Vec<_>>(), ["LAPTOP", "PHONE"]);
        assert_eq!(devices["PHONE"]["device_id"], "PHONE");
        assert_eq!(b["master_keys"][&alice]["usage"], json!(["master"]));
        assert!(b.get("user_signing_keys").is_none(), "private to the owner");

        let one = Request::KeysQuery {
            device_keys: BTreeMap::from([(alice.clone(), vec!["PHONE".to_owned()])]),
        };
        let b = body(handle(&a.s, &origin, one).await);
        assert_eq!(b["device_keys"][&alice].as_object().unwrap().len(), 1);

        let foreign = Request::KeysQuery {
            device_keys: BTreeMap::from([(format!("@x:{origin}"), vec![])]),
        };
        let res = handle(&a.s, &origin, foreign).await;
        assert!(
            matches!(res, Response::Error { ref errcode, .. } if errcode == "M_FORBIDDEN"),
            "{res:?}"
        );
        assert_eq!(a.refused(), 1);
    }

    #[tokio::test]
    async fn a_claimed_key_is_never_handed_out_twice() {
        let a = node();
        let alice = a.add_user("alice").await;
        a.add_device(&alice, "PHONE", &["AAAA", "BBBB"]).await;
        let (b_node, c_node) = (other_server(), crate::testkit::server(8));
        // Two peers claim at once; each gets a different key.
        let (x, y) = tokio::join!(
            handle(&a.s, &b_node, claim_req(&alice, "PHONE")),
            handle(&a.s, &c_node, claim_req(&alice, "PHONE"))
        );
        let key_of = |b: Value| -> String {
            let keys = b["one_time_keys"][&alice]["PHONE"].as_object().unwrap().clone();
            keys.keys().next().unwrap().clone()
        };
        let (kx, ky) = (key_of(body(x)), key_of(body(y)));
        assert_ne!(kx, ky);
        let mut got = vec![kx, ky];
        got.sort();
        assert_eq!(got, ["signed_curve25519:AAAA", "signed_curve25519:BBBB"]);
        // None left and no fallback key: nothing to hand out.
        let z = body(handle(&a.s, &b_node, claim_req(&alice, "PHONE")).await);
        assert_eq!(z, json!({"one_time_keys": {}}));
        // With a fallback key, every claim after that gets it.
        let u = alice.clone();
        a.s.db
            .write(move |tx| {
                let key = json!({"key": "fallback", "fallback": true});
                crate::storage::e2ee::put_fallback_key(tx, &u, "PHONE", "signed_curve25519", "FB", &key)
            })
            .await
            .unwrap();
        for _ in 0..2 {
            let b = body(handle(&a.s, &c_node, claim_req(&alice, "PHONE")).await);
            assert_eq!(key_of(b), "signed_curve25519:FB");
        }
    }
}
