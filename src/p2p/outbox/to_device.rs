//! Packing to-device messages for users of other nodes into `m.direct_to_device` EDUs
//! that each fit one request frame.

use std::collections::BTreeMap;

use ruma::OwnedUserId;
use serde_json::{Map, Value, json};

use crate::p2p::wire;
use crate::{Error, Result};

/// Room for a to-device EDU's envelope (`sender`, `type`, `message_id`, the request's tags)
/// within the request frame limit, beyond the event type and sender themselves.
const ENVELOPE_BYTES: usize = 1024;

/// Messages for one remote user: device ID (or `*`) → content.
pub type UserMessages = BTreeMap<String, Map<String, Value>>;

/// Packs to-device messages for remote users into `m.direct_to_device` EDU contents,
/// `(destination, content)`, each small enough for one request frame: one per destination
/// unless that is too big. `message_id`s derive from `txn` (unique per sender: its device
/// and transaction), so the receiver can tell a resent EDU from a new one. A single
/// message too big for a frame is `M_TOO_LARGE`.
pub fn to_device_edus(
    sender: &str,
    event_type: &str,
    txn: &str,
    messages: Vec<(OwnedUserId, UserMessages)>,
) -> Result<Vec<(String, Value)>> {
    let size = |v: &str| serde_json::to_string(v).map_or(v.len(), |j| j.len());
    let budget =
        (wire::MAX_REQUEST_BYTES as usize).saturating_sub(ENVELOPE_BYTES + size(sender) + size(event_type));
    let mut per_dest: BTreeMap<String, Vec<(OwnedUserId, UserMessages)>> = BTreeMap::new();
    for (user, devices) in messages {
        per_dest
            .entry(user.server_name().to_string())
            .or_default()
            .push((user, devices));
    }
    let mut out = Vec::new();
    for (dest, users) in per_dest {
        let mut chunk: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        let mut used = 0;
        for (user, device, content) in users
            .into_iter()
            .flat_map(|(u, devices)| devices.into_iter().map(move |(d, c)| (u.to_string(), d, c)))
        {
            // Each entry is counted with its own user key: an overestimate, never under.
            let cost = size(&user) + size(&device) + serde_json::to_string(&content)?.len() + 8;
            if cost > budget {
                return Err(Error::too_large(format!(
                    "a to-device message for {user} is over the {} byte peer frame limit",
                    wire::MAX_REQUEST_BYTES
                )));
            }
            if used + cost > budget {
                out.push(edu(
                    sender,
                    event_type,
                    txn,
                    &dest,
                    out.len(),
                    std::mem::take(&mut chunk),
                ));
                used = 0;
            }
            used += cost;
            chunk
                .entry(user)
                .or_default()
                .insert(device, Value::Object(content));
        }
        if !chunk.is_empty() {
            out.push(edu(sender, event_type, txn, &dest, out.len(), chunk));
        }
    }
    Ok(out)
}

fn edu(
    sender: &str,
    event_type: &str,
    txn: &str,
    dest: &str,
    n: usize,
    messages: BTreeMap<String, Map<String, Value>>,
) -> (String, Value) {
    let seed = format!("{sender}\n{txn}\n{dest}\n{n}");
    let message_id = blake3::hash(seed.as_bytes()).to_hex()[..32].to_owned();
    let content = json!({
        "sender": sender,
        "type": event_type,
        "message_id": message_id,
        "messages": messages,
    });
    (dest.to_owned(), content)
}
