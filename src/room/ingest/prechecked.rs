//! Receipt checks 1 and 2 (format, event ID, signatures, content hash) ahead of the write
//! transaction.
//!
//! They are CPU work on the event alone, and in a catch-up they were most of what the single
//! writer did per event. A caller that is about to ingest a page runs [`precheck`] on it first,
//! in parallel and off the writer; `ingest` then takes the verified PDU from here instead of
//! checking again. It takes one only for a PDU *equal* to the one verified (the same JSON,
//! signatures included) under the same room version, so every event stored has passed both
//! checks exactly as it was received. A PDU that fails a check is not kept: `ingest` checks
//! it again and rejects it with the reason.
//!
//! Process-wide, since a verification holds for any node; bounded, oldest dropped first, so
//! verified PDUs that are never ingested (already held, say) cost nothing lasting.

use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};

use ruma::RoomVersionId;
use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::room_version_rules::RoomVersionRules;
use ruma::signatures::Verified;

use super::{checked_event_id, verify};
use crate::pdu::Pdu;

/// Verified PDUs kept at most: the pages a catch-up holds at once (the one being stored, the
/// next, and the first pages of the ranges after it).
pub const CAPACITY: usize = 4 * crate::p2p::wire::MAX_EVENTS_PER_RESPONSE;

struct Entry {
    version: RoomVersionId,
    pdu: Pdu,
}

#[derive(Default)]
struct Store {
    /// By [`key`]; several PDUs may share one (a replayed signature on altered JSON).
    entries: HashMap<String, Vec<Entry>>,
    /// Keys in insertion order, for eviction.
    order: VecDeque<String>,
}

static STORE: LazyLock<Mutex<Store>> = LazyLock::new(Mutex::default);

fn store() -> std::sync::MutexGuard<'static, Store> {
    STORE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cheap lookup key: the first signature's value, unique in practice. Only a key: a hit
/// still needs the whole PDU to be equal.
fn key(json: &CanonicalJsonObject) -> Option<String> {
    let Some(CanonicalJsonValue::Object(servers)) = json.get("signatures") else {
        return None;
    };
    servers.values().find_map(|keys| match keys {
        CanonicalJsonValue::Object(keys) => keys.values().find_map(|v| match v {
            CanonicalJsonValue::String(s) => Some(s.clone()),
            _ => None,
        }),
        _ => None,
    })
}

/// Runs receipt checks 1 and 2 on a PDU (without `event_id` and `unsigned`) of a room of
/// `version`, and keeps the result for `ingest` if it passes with its content intact.
pub fn precheck(version: &RoomVersionId, rules: &RoomVersionRules, json: &CanonicalJsonObject) {
    let Some(k) = key(json) else { return };
    let Ok(event_id) = checked_event_id(json, rules) else {
        return;
    };
    // A content-hash mismatch means the redacted form is stored: rare, left to `ingest`.
    if !matches!(verify(json, rules), Ok(Verified::All)) {
        return;
    }
    let Ok(pdu) = Pdu::from_json(event_id, json.clone()) else {
        return;
    };
    let mut s = store();
    while s.order.len() >= CAPACITY {
        let Some(old) = s.order.pop_front() else { break };
        if let Some(list) = s.entries.get_mut(&old) {
            list.remove(0);
            if list.is_empty() {
                s.entries.remove(&old);
            }
        }
    }
    s.order.push_back(k.clone());
    s.entries.entry(k).or_default().push(Entry {
        version: version.clone(),
        pdu,
    });
}

/// The PDU verified from JSON equal to `json` in a room of `version`, if any; taken out.
pub fn take(version: &RoomVersionId, json: &CanonicalJsonObject) -> Option<Pdu> {
    let k = key(json)?;
    let mut s = store();
    let list = s.entries.get_mut(&k)?;
    let at = list
        .iter()
        .position(|e| e.version == *version && e.pdu.json == *json)?;
    let entry = list.remove(at);
    if list.is_empty() {
        s.entries.remove(&k);
    }
    // Its place in `order` stays until evicted; eviction of a key no longer present (or
    // present again, later) only drops the oldest entry under it, which is harmless.
    Some(entry.pdu)
}

#[cfg(test)]
mod tests {
    use ruma::canonical_json::CanonicalJsonValue;
    use serde_json::json;

    use super::*;
    use crate::identity::Identity;

    fn signed(body: &str) -> (RoomVersionId, RoomVersionRules, CanonicalJsonObject) {
        let id = Identity::from_seed([7u8; 32], "p_t");
        let version = RoomVersionId::V11;
        let rules = crate::room::rules_for(&version).unwrap();
        let pdu = crate::room::sign(
            &id,
            &rules,
            json!({
                "auth_events": [], "prev_events": [], "depth": 5, "origin_server_ts": 1,
                "room_id": "!r:p_t", "sender": format!("@a:{}", id.server_name()),
                "type": "m.room.message", "content": {"body": body},
            }),
        )
        .unwrap();
        (version, rules, pdu.json)
    }

    #[test]
    fn only_the_very_pdu_verified_is_taken() {
        let (version, rules, json) = signed("one");
        precheck(&version, &rules, &json);
        // Another room version, or the same event with other JSON, finds nothing.
        assert!(take(&RoomVersionId::V10, &json).is_none());
        let mut altered = json.clone();
        altered.insert("depth".into(), CanonicalJsonValue::Integer(6u32.into()));
        assert!(take(&version, &altered).is_none());
        let pdu = take(&version, &json).expect("verified");
        assert_eq!(pdu.json, json);
        assert!(take(&version, &json).is_none(), "taken once");
    }

    #[test]
    fn a_pdu_failing_a_check_is_not_kept() {
        let (version, rules, mut json) = signed("two");
        // The content no longer matches its hash: ingest must see it and redact it.
        json.insert("content".into(), CanonicalJsonValue::Object(Default::default()));
        precheck(&version, &rules, &json);
        assert!(take(&version, &json).is_none());
    }
}
