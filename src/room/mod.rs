//! The room state machine: every event that enters the store passes through here.
//!
//! build → hash and sign → authorise against auth events and current state → compute the
//! state after it → store (one transaction) → notify (after commit, via storage).
//! Remote events (the peer issue) enter at [`persist`] after verification and
//! authorisation, so the stored form is the same whatever its origin.

pub mod create;
pub mod import;
pub mod ingest;
pub mod resolve;
pub mod visibility;

use std::cell::RefCell;
use std::sync::Arc;

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res;
use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, UserId};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::identity::Identity;
use crate::pdu::{MAX_PDU_BYTES, Pdu, event_id_of};
use crate::storage::WriteTx;
use crate::storage::events::{forward_extremities, get_pdu, max_depth};
use crate::storage::state::{add_to_group, current_state_id, upsert_current};
use crate::{Error, Result};

/// Room versions this node creates and joins.
pub const SUPPORTED_VERSIONS: &[&str] = &["10", "11", "12"];
pub const DEFAULT_VERSION: RoomVersionId = RoomVersionId::V12;

/// What a local user asks to send.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: String,
    pub state_key: Option<String>,
    pub content: Value,
    pub redacts: Option<String>,
}

impl NewEvent {
    pub fn state(kind: &str, state_key: &str, content: Value) -> Self {
        Self {
            kind: kind.into(),
            state_key: Some(state_key.into()),
            content,
            redacts: None,
        }
    }
    pub fn message(kind: &str, content: Value) -> Self {
        Self {
            kind: kind.into(),
            state_key: None,
            content,
            redacts: None,
        }
    }
}

/// The device and transaction a local event came from, so that device's /sync shows
/// `unsigned.transaction_id`.
#[derive(Debug, Clone)]
pub struct Txn {
    pub user: String,
    pub device: String,
    pub txn_id: String,
}

pub fn rules_for(version: &RoomVersionId) -> Result<RoomVersionRules> {
    if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(Error::unsupported_room_version(format!(
            "room version {version} is not supported"
        )));
    }
    version
        .rules()
        .ok_or_else(|| Error::unsupported_room_version("unknown room version"))
}

/// The version of a room the node knows, or `M_NOT_FOUND`.
pub fn room_version(conn: &Connection, room_id: &str) -> Result<RoomVersionId> {
    let v: Option<String> = conn
        .prepare_cached("SELECT room_version FROM rooms WHERE room_id = ?1")?
        .query_row([room_id], |r| r.get(0))
        .optional()?;
    let v = v.ok_or_else(|| Error::not_found("Unknown room"))?;
    RoomVersionId::try_from(v.as_str()).map_err(|_| Error::internal("bad stored room version"))
}

/// Builds, signs, authorises and stores a local event on top of the room's current state
/// and forward extremities. Returns the stored PDU.
pub fn append_local(
    tx: &mut WriteTx<'_>,
    identity: &Identity,
    room_id: &RoomId,
    sender: &UserId,
    ev: NewEvent,
    txn: Option<Txn>,
) -> Result<Pdu> {
    let redacts = ev.redacts.clone();
    let (rules, mut unsigned) = build_unsigned(tx, room_id, sender, ev)?;
    if let (Some(r), Value::Object(obj)) = (&redacts, &mut unsigned) {
        // v11 moved `redacts` from the top level into the content.
        let in_content = rules.redaction.keep_room_redaction_redacts;
        if let Some(content) = obj.get_mut("content").and_then(Value::as_object_mut) {
            if in_content {
                content.insert("redacts".into(), r.clone().into());
            } else {
                content.remove("redacts");
            }
        }
        if !in_content {
            obj.insert("redacts".into(), r.clone().into());
        }
    }
    let pdu = sign(identity, &rules, unsigned)?;
    authorize_with(tx, &rules, &pdu, |id| tx.pdu(id))?;
    let before = current_group(tx, room_id.as_str())?;
    persist(tx, identity, &rules, &pdu, before, false, Origin::Local(txn))?;
    Ok(pdu)
}

/// The unsigned PDU `sender` would send now, with `prev_events`, `depth` and
/// `auth_events` taken from the room's forward extremities and current state as
/// [`append_local`] takes them. For events that leave this node before they are stored:
/// a join template for another node's user, an invite the invitee's node countersigns.
/// (Not for redactions, whose `redacts` placement varies by room version.)
pub fn build_unsigned(
    conn: &Connection,
    room_id: &RoomId,
    sender: &UserId,
    ev: NewEvent,
) -> Result<(RoomVersionRules, Value)> {
    let version = room_version(conn, room_id.as_str())?;
    let rules = rules_for(&version)?;
    let prev_events = forward_extremities(conn, room_id.as_str())?;
    let depth = max_depth(conn, &prev_events)?
        .saturating_add(1)
        .min(i64::MAX as u64);
    let content_raw = serde_json::value::to_raw_value(&ev.content)?;
    let kind = TimelineEventType::from(ev.kind.as_str());
    let auth_types = state_res::auth_types_for_event(
        &kind,
        sender,
        ev.state_key.as_deref(),
        &content_raw,
        &rules.authorization,
    )
    .map_err(Error::bad_json)?;
    let mut auth_events = Vec::new();
    for (t, k) in &auth_types {
        if let Some(id) = current_state_id(conn, room_id.as_str(), &t.to_string(), k)? {
            auth_events.push(id);
        }
    }
    let mut obj = serde_json::Map::new();
    obj.insert("auth_events".into(), auth_events.into());
    obj.insert("content".into(), ev.content);
    obj.insert("depth".into(), depth.into());
    obj.insert(
        "origin_server_ts".into(),
        u64::from(MilliSecondsSinceUnixEpoch::now().get()).into(),
    );
    obj.insert("prev_events".into(), prev_events.into());
    obj.insert("room_id".into(), room_id.as_str().into());
    obj.insert("sender".into(), sender.as_str().into());
    obj.insert("type".into(), ev.kind.into());
    if let Some(sk) = ev.state_key {
        obj.insert("state_key".into(), sk.into());
    }
    Ok((rules, Value::Object(obj)))
}

/// Hashes and signs an unsigned PDU and derives its event ID.
pub fn sign(identity: &Identity, rules: &RoomVersionRules, pdu: Value) -> Result<Pdu> {
    let mut object: CanonicalJsonObject = match ruma::canonical_json::to_canonical_value(pdu) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        Ok(_) => return Err(Error::bad_json("event must be an object")),
        Err(e) => return Err(Error::bad_json(format!("not canonical JSON: {e}"))),
    };
    ruma::signatures::hash_and_sign_event(
        identity.server_name().as_str(),
        identity,
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => Error::too_large("event is over 65536 bytes"),
        e => Error::bad_json(e.to_string()),
    })?;
    let size = serde_json::to_vec(&object)?.len();
    // Receivers (ruma's check_pdu_format) refuse 65,536 bytes and more: stay under it.
    if size >= MAX_PDU_BYTES {
        return Err(Error::too_large(format!(
            "event is {size} bytes, over the limit of {MAX_PDU_BYTES}"
        )));
    }
    let event_id = event_id_of(&object, rules).map_err(Error::internal)?;
    Pdu::from_json(event_id, object).map_err(Error::bad_json)
}

/// Runs the room version's authorisation rules: against the event's auth events, then
/// against the current state of the room.
pub fn authorize(conn: &Connection, rules: &RoomVersionRules, pdu: &Pdu) -> Result<()> {
    authorize_with(conn, rules, pdu, |id| get_pdu(conn, id).map(Arc::new))
}

/// [`authorize`] with stored events read through `fetch`.
fn authorize_with(
    conn: &Connection,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    fetch: impl Fn(&str) -> Option<Arc<Pdu>>,
) -> Result<()> {
    let room = pdu.room.as_str();
    // A local event's auth events are the current state's entries for the same keys: what
    // the first pass fetched, the second takes from here rather than fetching it again.
    let fetched: RefCell<Vec<Arc<Pdu>>> = RefCell::new(Vec::new());
    let by_id = |id: &str| {
        if let Some(p) = fetched.borrow().iter().find(|p| p.event_id == id) {
            return Some(p.clone());
        }
        let p = fetch(id)?;
        fetched.borrow_mut().push(p.clone());
        Some(p)
    };
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id| by_id(id.as_str()))
        .map_err(|e| Error::forbidden(format!("event not authorised: {e}")))?;
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |t: &StateEventType, k: &str| {
        current_state_id(conn, room, &t.to_string(), k)
            .ok()
            .flatten()
            .and_then(|id| by_id(&id))
    })
    .map_err(|e| Error::forbidden(format!("event not authorised: {e}")))
}

pub fn current_group(conn: &Connection, room_id: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT current_state_group FROM rooms WHERE room_id = ?1")?
        .query_row([room_id], |r| r.get(0))
        .optional()?
        .flatten())
}

/// Where an event being stored came from, which decides how the current state follows.
#[derive(Debug, Clone)]
pub enum Origin {
    /// Built here on the current state: the current state is the state after it.
    Local(Option<Txn>),
    /// Received from a peer, possibly on a fork: the current state is re-resolved over the
    /// forward extremities.
    Remote,
}

/// Stores an authorised event whose state before it is `before`, advancing the forward
/// extremities and the current state. Returns the state group after the event.
pub fn persist(
    tx: &mut WriteTx<'_>,
    identity: &Identity,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    before: Option<i64>,
    soft_failed: bool,
    origin: Origin,
) -> Result<i64> {
    let txn = match &origin {
        Origin::Local(t) => t.clone(),
        Origin::Remote => None,
    };
    let room = pdu.room.as_str();
    let event_id = pdu.event_id.as_str();
    let kind = pdu.kind.to_string();
    // A soft-failed state event still counts in the state after it: the spec has it take
    // part in state resolution as normal once later events reference it. Only the
    // current state and the forward extremities leave it out (below).
    let after = match &pdu.state_key {
        Some(sk) => add_to_group(tx, room, before, (&kind, sk), event_id)?,
        _ => match before {
            Some(b) => b,
            None => return Err(Error::internal("non-state event without prior state")),
        },
    };
    let stream = tx.next_stream_id()?;
    let content = pdu.content_value();
    let relates = content.get("m.relates_to");
    let relates_to = relates.and_then(|r| r.get("event_id")).and_then(Value::as_str);
    let rel_type = relates.and_then(|r| r.get("rel_type")).and_then(Value::as_str);
    let json = serde_json::to_string(&pdu.json)?;
    let (tu, td, tt) = match &txn {
        Some(t) => (
            Some(t.user.as_str()),
            Some(t.device.as_str()),
            Some(t.txn_id.as_str()),
        ),
        None => (None, None, None),
    };
    tx.prepare_cached(
        "INSERT INTO events (stream_ordering, event_id, room_id, type, state_key, sender, depth, \
         origin_server_ts, json, state_group, soft_failed, relates_to, rel_type, txn_user, txn_device, txn_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        stream,
        event_id,
        room,
        kind,
        pdu.state_key,
        pdu.sender.as_str(),
        pdu.depth as i64,
        u64::from(pdu.origin_server_ts.get()) as i64,
        json,
        after,
        soft_failed,
        relates_to,
        rel_type,
        tu,
        td,
        tt
    ])?;
    for prev in &pdu.prev_events {
        tx.prepare_cached("INSERT OR IGNORE INTO event_edges (event_id, prev_event_id) VALUES (?1, ?2)")?
            .execute(params![event_id, prev.as_str()])?;
    }
    for auth in &pdu.auth_events {
        tx.prepare_cached("INSERT OR IGNORE INTO event_auth (event_id, auth_event_id) VALUES (?1, ?2)")?
            .execute(params![event_id, auth.as_str()])?;
    }
    if soft_failed {
        return Ok(after);
    }
    // A message whose prev events are exactly the forward extremities extends the room
    // linearly: its state before is the current state and it changes nothing, so the
    // current state need not be resolved again (the common case of a catch-up).
    let linear = pdu.state_key.is_none() && {
        let extremities = forward_extremities(tx, room)?;
        extremities.len() == pdu.prev_events.len()
            && pdu
                .prev_events
                .iter()
                .all(|p| extremities.iter().any(|e| e == p.as_str()))
    };
    for prev in &pdu.prev_events {
        tx.prepare_cached("DELETE FROM forward_extremities WHERE room_id = ?1 AND event_id = ?2")?
            .execute(params![room, prev.as_str()])?;
    }
    tx.prepare_cached("INSERT OR IGNORE INTO forward_extremities (room_id, event_id) VALUES (?1, ?2)")?
        .execute(params![room, event_id])?;
    match origin {
        Origin::Local(_) => {
            if let Some(sk) = &pdu.state_key {
                upsert_current(tx, room, &kind, sk, event_id)?;
                tx.prepare_cached("UPDATE rooms SET current_state_group = ?2 WHERE room_id = ?1")?
                    .execute(params![room, after])?;
                if kind == "m.room.member" {
                    record_local_membership(tx, identity, pdu, sk, &content, stream)?;
                }
            }
            // Each origin guarantees delivery of its own events; peers' events are theirs.
            crate::storage::outbox::enqueue_room(tx, identity.server_name(), pdu, stream)?;
        }
        Origin::Remote if linear => {}
        Origin::Remote => ingest::refresh_current_state(tx, identity, rules, room, stream)?,
    }
    if pdu.kind == TimelineEventType::RoomRedaction
        && let Some(target) = &pdu.redacts
    {
        apply_redaction(tx, rules, pdu, target)?;
    }
    Ok(after)
}

pub(crate) fn record_local_membership(
    conn: &Connection,
    identity: &Identity,
    pdu: &Pdu,
    state_key: &str,
    content: &Value,
    stream: i64,
) -> Result<()> {
    let Ok(user) = UserId::parse(state_key) else {
        return Ok(());
    };
    if user.server_name() != identity.server_name() {
        return Ok(());
    }
    let membership = content
        .get("membership")
        .and_then(Value::as_str)
        .unwrap_or("leave");
    conn.prepare_cached(
        "INSERT INTO local_membership (user_id, room_id, membership, event_id, stream_ordering, forgotten) \
         VALUES (?1, ?2, ?3, ?4, ?5, 0) ON CONFLICT (user_id, room_id) DO UPDATE SET \
         membership = excluded.membership, event_id = excluded.event_id, \
         stream_ordering = excluded.stream_ordering, forgotten = 0",
    )?
    .execute(params![
        state_key,
        pdu.room.as_str(),
        membership,
        pdu.event_id.as_str(),
        stream
    ])?;
    Ok(())
}

/// Redacts `target` in place when the redaction's sender may: the original sender, or
/// anyone with the room's `redact` power level. The signed PDU keeps verifying: signatures
/// cover only the redacted form.
fn apply_redaction(
    tx: &Connection,
    rules: &RoomVersionRules,
    redaction: &Pdu,
    target: &OwnedEventId,
) -> Result<()> {
    let Some(original) = get_pdu(tx, target.as_str()) else {
        return Ok(());
    };
    if original.room != redaction.room {
        return Ok(());
    }
    if original.sender != redaction.sender {
        let power = crate::room::create::power_of(tx, redaction.room.as_str(), &redaction.sender)?;
        let needed = crate::room::create::power_needed(tx, redaction.room.as_str(), "redact")?;
        if power < needed {
            return Ok(());
        }
    }
    // Clients read `redacted_because` as a client event, so store it in that form (unsigned
    // data is outside the signature; peers ignore it).
    let mut client_form = redaction.to_client_event(true, serde_json::Map::new());
    if let Some(u) = client_form.get_mut("unsigned").and_then(Value::as_object_mut) {
        u.remove("age"); // would be frozen at redaction time
    }
    let because = match ruma::canonical_json::to_canonical_value(client_form) {
        Ok(CanonicalJsonValue::Object(o)) => ruma::canonical_json::RedactedBecause::from_json(o),
        _ => return Err(Error::internal("redaction is not canonical JSON")),
    };
    let redacted = ruma::canonical_json::redact(original.json, &rules.redaction, Some(because))
        .map_err(|e| Error::internal(e.to_string()))?;
    tx.prepare_cached("UPDATE events SET json = ?2, redacted_by = ?3 WHERE event_id = ?1")?
        .execute(params![
            target.as_str(),
            serde_json::to_string(&redacted)?,
            redaction.event_id.as_str()
        ])?;
    Ok(())
}
