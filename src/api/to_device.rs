//! Send-to-device messaging: `PUT /sendToDevice/{eventType}/{txnId}`. Messages are queued
//! per device and delivered by `/sync` (see `api::sync::e2ee`); messages for users of
//! other nodes go to the outbox in the same transaction (see `p2p::outbox`).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::put;
use ruma::UserId;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::extract::{Auth, JsonBody};
use super::{client, empty};
use crate::p2p::outbox::to_device_edus;
use crate::services::AppState;
use crate::storage::e2ee::device_ids;
use crate::storage::events::{put_txn, txn_result};
use crate::storage::outbox::{enqueue_to_device, reachable};
use crate::storage::sync::put_to_device;
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    client(r, "/sendToDevice/{event_type}/{txn_id}", put(send_to_device))
}

/// Most messages one request may queue, counting each device a `*` reaches: a bound on the
/// work and the write transaction one request can cause.
pub(crate) const MAX_MESSAGES: usize = 10_000;

/// The `txn_ids` kind of a sendToDevice transaction.
const TXN_KIND: &str = "to_device";

/// The `*` device ID: every device of the user.
const ALL_DEVICES: &str = "*";

#[derive(Deserialize)]
struct SendBody {
    /// user ID → device ID (or `*`) → content.
    messages: BTreeMap<String, BTreeMap<String, Map<String, Value>>>,
}

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
async fn send_to_device(
    State(s): State<AppState>,
    auth: Auth,
    Path((event_type, txn_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<SendBody>,
) -> Result<axum::response::Response> {
    let requested: usize = body.messages.values().map(BTreeMap::len).sum();
    if requested > MAX_MESSAGES {
        return Err(too_many());
    }
    let mut local = Vec::new();
    let mut remote = Vec::new();
    for (user, devices) in body.messages {
        let user_id =
            UserId::parse(&user).map_err(|_| Error::invalid_param(format!("invalid user ID {user:?}")))?;
        if user_id.server_name() == s.server_name() {
            local.push((user, devices));
        } else if reachable(user_id.server_name().as_str()) {
            remote.push((user_id, devices));
        } else {
            tracing::debug!(%user_id, "dropping to-device message for a user of no meshserver node");
        }
    }
    // The spec scopes a transaction ID to the device and the request path, whose other
    // variable part is the event type.
    let txn_key = Value::from(vec![event_type.as_str(), txn_id.as_str()]).to_string();
    let txn = format!("{}\n{txn_key}", auth.device_id);
    let edus = to_device_edus(auth.user_id.as_str(), &event_type, &txn, remote)?;
    s.db.write(move |tx| {
        let (sender, sender_device) = (auth.user_id.as_str(), auth.device_id.as_str());
        if txn_result(tx, sender, sender_device, TXN_KIND, &txn_key)?.is_some() {
            return Ok(());
        }
        let mut queued = 0;
        for (user, devices) in local {
            for (device, content) in targets(tx, &user, devices)? {
                queued += 1;
                if queued > MAX_MESSAGES {
                    return Err(too_many());
                }
                let content = Value::Object(content).to_string();
                put_to_device(tx, &user, &device, sender, &event_type, &content)?;
            }
        }
        enqueue_to_device(tx, &edus)?;
        put_txn(tx, sender, sender_device, TXN_KIND, &txn_key, "")
    })
    .await?;
    Ok(empty())
}

fn too_many() -> Error {
    Error::too_large(format!("at most {MAX_MESSAGES} to-device messages per request"))
}

/// The existing devices a user's messages go to, with their content: `*` reaches every
/// device, except one also named explicitly, which gets its own message (one message per
/// device per request). Unknown users and devices are skipped, as the spec allows.
pub(crate) fn targets(
    conn: &rusqlite::Connection,
    user: &str,
    mut devices: BTreeMap<String, Map<String, Value>>,
) -> Result<Vec<(String, Map<String, Value>)>> {
    let existing = device_ids(conn, user)?;
    let all = devices.remove(ALL_DEVICES);
    let mut out = Vec::new();
    for device in existing {
        if let Some(content) = devices.remove(&device).or_else(|| all.clone()) {
            out.push((device, content));
        }
    }
    Ok(out)
}
