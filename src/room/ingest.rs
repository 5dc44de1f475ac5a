//! The entry point for events from other nodes: the spec's "checks performed on receipt of
//! a PDU", in order, then the same storage path local events take.
//!
//! 1. format and size (ruma's `check_pdu_format`);
//! 2. signatures, with each server's key taken from its name (no key server), and the
//!    content hash: a mismatch means the event is processed in its redacted form;
//! 3. auth events present, and the event authorised by them;
//! 4. prev events present; state before = state resolution v2 over their states, and the
//!    event authorised by that state (else rejected: never stored);
//! 5. authorised by the current state too, else stored but soft-failed (kept out of
//!    timelines and extremities);
//! 6. stored; the current state re-resolved over the forward extremities.
//!
//! What is missing is reported, not fetched: fetching is the peer layer's job.

use std::collections::BTreeSet;

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::signatures::Verified;
use ruma::{OwnedEventId, OwnedServerName, RoomVersionId, ServerName, state_res};
use rusqlite::{Connection, OptionalExtension};

use super::resolve::resolve_after;
use super::{Origin, persist, record_local_membership, rules_for};
use crate::identity::{Identity, key_map_for};
use crate::pdu::{Pdu, event_id_of};
use crate::storage::WriteTx;
use crate::storage::events::{forward_extremities, get_pdu, is_stored};
use crate::storage::state::{StateIds, current_state_id, current_state_ids, set_current_state, store_group};
use crate::{Error, Result};

/// What became of a received PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored {
        event_id: OwnedEventId,
        soft_failed: bool,
    },
    AlreadyKnown(OwnedEventId),
    /// Auth or prev events this node does not hold yet: fetch them, then retry.
    Missing(Vec<OwnedEventId>),
    /// Invalid: bad format, bad signature, or not authorised by its auth events or the
    /// state before it. Never stored, never passed on.
    Rejected {
        event_id: Option<OwnedEventId>,
        reason: String,
    },
}

fn rejected(event_id: Option<&OwnedEventId>, reason: impl Into<String>) -> Outcome {
    Outcome::Rejected {
        event_id: event_id.cloned(),
        reason: reason.into(),
    }
}

/// Runs every check on a PDU received from a peer and stores it if it passes.
pub fn ingest(tx: &mut WriteTx<'_>, identity: &Identity, mut json: CanonicalJsonObject) -> Result<Outcome> {
    // Fields a peer may add outside the signed form; ours are derived.
    json.remove("event_id");
    json.remove("unsigned");
    let Some(version) = room_version_for(tx, &json)? else {
        return Ok(rejected(
            None,
            "unknown room, or a create event without a supported room_version",
        ));
    };
    let rules = match rules_for(&version) {
        Ok(r) => r,
        Err(e) => return Ok(rejected(None, e.message)),
    };
    // Checks 1 and 2, unless they already passed on this very PDU ([`prechecked`]).
    let verified = prechecked::take(&version, &json);
    let event_id = match &verified {
        Some(pdu) => pdu.event_id.clone(),
        None => match checked_event_id(&json, &rules) {
            Ok(id) => id,
            Err(reason) => return Ok(rejected(None, reason)),
        },
    };
    if is_stored(tx, event_id.as_str())? {
        return Ok(Outcome::AlreadyKnown(event_id));
    }
    let pdu = match verified.map_or_else(|| verified_pdu(event_id.clone(), json, &rules), Ok) {
        Ok(p) => p,
        Err(reason) => return Ok(rejected(Some(&event_id), reason)),
    };

    let missing: Vec<OwnedEventId> = pdu
        .auth_events
        .iter()
        .chain(&pdu.prev_events)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter_map(|id| match is_stored(tx, id.as_str()) {
            Ok(true) => None,
            Ok(false) => Some(Ok(id)),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_>>()?;
    if !missing.is_empty() {
        return Ok(Outcome::Missing(missing));
    }
    // Auth events through the writer's cache of parsed PDUs: a page of a catch-up shares
    // the same few (create, power levels, the senders' memberships).
    if let Err(e) =
        state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |id| tx.pdu(id.as_str()))
    {
        return Ok(rejected(
            Some(&event_id),
            format!("not authorised by its auth events: {e}"),
        ));
    }
    if pdu.kind == TimelineEventType::RoomCreate {
        create_room_row(tx, &pdu, &version)?;
    }

    let before = resolve_after(tx, &rules, &pdu.prev_events)?;
    if let Err(e) = check_against_cached(tx, &rules, &pdu, |t, k| {
        before.state.get(&(t.to_owned(), k.to_owned())).cloned()
    }) {
        return Ok(rejected(
            Some(&event_id),
            format!("not authorised by the state before it: {e}"),
        ));
    }
    let room = pdu.room.as_str();
    let soft_failed = check_against_cached(tx, &rules, &pdu, |t, k| {
        current_state_id(tx, room, t, k).ok().flatten()
    })
    .is_err();
    let before_group = match (before.exact, before.base) {
        (true, base) => base,
        (false, base) => Some(store_group(tx, room, base, &before.state)?),
    };
    persist(
        tx,
        identity,
        &rules,
        &pdu,
        before_group,
        soft_failed,
        Origin::Remote,
    )?;
    if soft_failed {
        tracing::info!(%event_id, room, "soft-failed: not allowed by the current state");
    }
    Ok(Outcome::Stored {
        event_id,
        soft_failed,
    })
}

/// Receipt check 1: the PDU is well formed for its room version; returns its event ID.
pub(crate) fn checked_event_id(
    json: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> std::result::Result<OwnedEventId, String> {
    state_res::check_pdu_format(json, &rules.event_format).map_err(|e| format!("bad format: {e}"))?;
    event_id_of(json, rules).map_err(|e| format!("no event ID: {e}"))
}

/// Receipt check 2: signatures and content hash. An event signed but not matching its
/// content hash is kept only in its redacted form.
pub(crate) fn verified_pdu(
    event_id: OwnedEventId,
    json: CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> std::result::Result<Pdu, String> {
    let json = match verify(&json, rules)? {
        Verified::All => json,
        Verified::Signatures => ruma::canonical_json::redact(json, &rules.redaction, None)
            .map_err(|e| format!("cannot redact: {e}"))?,
    };
    Pdu::from_json(event_id, json)
}

/// The room version: the stored room's, or for a create event, its content's.
fn room_version_for(conn: &Connection, json: &CanonicalJsonObject) -> Result<Option<RoomVersionId>> {
    if let Some(CanonicalJsonValue::String(room)) = json.get("room_id")
        && let Some(v) = conn
            .prepare_cached("SELECT room_version FROM rooms WHERE room_id = ?1")?
            .query_row([room], |r| r.get::<_, String>(0))
            .optional()?
    {
        return Ok(RoomVersionId::try_from(v.as_str()).ok());
    }
    let is_create = matches!(json.get("type"), Some(CanonicalJsonValue::String(t)) if t == "m.room.create");
    let version = match (is_create, json.get("content")) {
        (true, Some(CanonicalJsonValue::Object(c))) => match c.get("room_version") {
            Some(CanonicalJsonValue::String(v)) => RoomVersionId::try_from(v.as_str()).ok(),
            _ => None,
        },
        _ => None,
    };
    Ok(version)
}

/// Checks every signature the room version requires, each key decoded from the signing
/// server's name.
pub(crate) fn verify(
    json: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> std::result::Result<Verified, String> {
    let Some(CanonicalJsonValue::Object(signatures)) = json.get("signatures") else {
        return Err("no signatures".into());
    };
    let servers: Vec<(OwnedServerName, Vec<String>)> = signatures
        .iter()
        .filter_map(|(server, keys)| {
            let server = ServerName::parse(server).ok()?;
            let CanonicalJsonValue::Object(keys) = keys else {
                return None;
            };
            Some((server, keys.keys().cloned().collect()))
        })
        .collect();
    let map = key_map_for(servers.iter().map(|(s, k)| (s.as_ref(), k.clone())));
    ruma::signatures::verify_event(&map, json, rules).map_err(|e| format!("bad signature: {e}"))
}

/// The state-dependent auth rules against the state `lookup` describes.
pub(crate) fn check_against(
    conn: &Connection,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    lookup: impl Fn(&str, &str) -> Option<String>,
) -> std::result::Result<(), String> {
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |t: &StateEventType, k: &str| {
        lookup(&t.to_string(), k).and_then(|id| get_pdu(conn, &id))
    })
}

/// [`check_against`] with the state's events read through the writer's PDU cache.
fn check_against_cached(
    tx: &WriteTx<'_>,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    lookup: impl Fn(&str, &str) -> Option<String>,
) -> std::result::Result<(), String> {
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |t: &StateEventType, k: &str| {
        lookup(&t.to_string(), k).and_then(|id| tx.pdu(&id))
    })
}

pub(crate) fn create_room_row(conn: &Connection, pdu: &Pdu, version: &RoomVersionId) -> Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO rooms (room_id, room_version) VALUES (?1, ?2)")?
        .execute(rusqlite::params![pdu.room.as_str(), version.as_str()])?;
    Ok(())
}

/// Re-resolves a room's current state over its forward extremities after a remote event,
/// and records the memberships of local users it changed.
pub(crate) fn refresh_current_state(
    tx: &mut WriteTx<'_>,
    identity: &Identity,
    rules: &RoomVersionRules,
    room: &str,
    stream: i64,
) -> Result<()> {
    let extremities = forward_extremities(tx, room)?
        .iter()
        .map(|e| OwnedEventId::try_from(e.as_str()).map_err(|_| Error::internal("bad stored event ID")))
        .collect::<Result<Vec<_>>>()?;
    let resolved = resolve_after(tx, rules, &extremities)?;
    let group = match (resolved.exact, resolved.base) {
        (true, Some(g)) => g,
        (_, base) => store_group(tx, room, base, &resolved.state)?,
    };
    let old: StateIds = current_state_ids(tx, room)?;
    set_current_state(tx, room, group, &resolved.state)?;
    for ((kind, state_key), id) in &resolved.state {
        if kind == "m.room.member"
            && old.get(&(kind.clone(), state_key.clone())) != Some(id)
            && let Some(member) = get_pdu(tx, id)
        {
            record_local_membership(tx, identity, &member, state_key, &member.content_value(), stream)?;
        }
    }
    Ok(())
}

pub mod prechecked;
#[cfg(test)]
mod tests;
