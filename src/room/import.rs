//! Becoming resident in a room another node holds: storing what a `send_join` answered
//! (the state before the join and the auth chain of that state) and then the join itself.
//!
//! Every returned event gets the receipt checks a gossiped event gets (format, signatures,
//! content hash) and must be authorised by its own auth events, checked in topological
//! order of the auth DAG, so nothing is trusted because of who sent it. They are stored as
//! outliers: kept for authorisation and state, outside the DAG, and stored soft-failed, so
//! no timeline, `/messages` or `/sync` query shows them. The join is stored last, on the
//! returned state, as the room's only forward extremity; the current state and the local
//! membership follow from it as for any remote event.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};

use ruma::canonical_json::CanonicalJsonObject;
use ruma::events::TimelineEventType;
use ruma::signatures::Verified;
use ruma::{OwnedEventId, RoomVersionId, state_res};
use rusqlite::{Connection, params};

use super::ingest::{check_against, checked_event_id, create_room_row, verified_pdu, verify};
use super::{Origin, persist, room_version, rules_for};
use crate::identity::Identity;
use crate::pdu::Pdu;
use crate::storage::WriteTx;
use crate::storage::events::get_pdu;
use crate::storage::state::{StateIds, store_group};
use crate::{Error, Result};

/// Most events (state and auth chain together) one join may import. A response frame of
/// 16 MiB holds fewer than this many PDUs.
pub const MAX_IMPORT_EVENTS: usize = 50_000;

/// `events.outlier`: from a join's state and auth chain, authorised by its auth events.
pub const OUTLIER_AUTHORISED: i64 = 1;
/// `events.outlier`: an invite and its room state, signatures checked only.
pub const OUTLIER_INVITE: i64 = 2;

/// What a resident node answered to `send_join`.
#[derive(Debug, Clone)]
pub struct JoinAnswer {
    pub room_version: RoomVersionId,
    /// The join, as the resident stored it (it may have added its signature).
    pub event: CanonicalJsonObject,
    /// The room state before the join.
    pub state: Vec<CanonicalJsonObject>,
    /// The auth chain of that state; events also in `state` may be left out.
    pub auth_chain: Vec<CanonicalJsonObject>,
}

fn bad(reason: impl std::fmt::Display) -> Error {
    Error::forbidden(format!("join response refused: {reason}"))
}

/// Runs the receipt checks that need nothing from the store; the event must belong to
/// `room` (for a v12 create event, the room its ID names).
pub(crate) fn received_pdu(
    mut json: CanonicalJsonObject,
    rules: &ruma::room_version_rules::RoomVersionRules,
    room: &ruma::RoomId,
) -> Result<Pdu> {
    json.remove("event_id");
    json.remove("unsigned");
    let event_id = checked_event_id(&json, rules).map_err(bad)?;
    let pdu = verified_pdu(event_id.clone(), json, rules).map_err(|e| bad(format!("{event_id}: {e}")))?;
    if pdu.room != room {
        return Err(bad(format!("{event_id} belongs to another room")));
    }
    Ok(pdu)
}

/// Checks and stores a join answer for a local user's join; returns the stored join.
/// One transaction: on any error nothing of the room is stored.
pub fn import_join(tx: &mut WriteTx<'_>, identity: &Identity, answer: JoinAnswer) -> Result<Pdu> {
    let rules = rules_for(&answer.room_version)?;
    if answer.state.len().saturating_add(answer.auth_chain.len()) > MAX_IMPORT_EVENTS {
        return Err(Error::too_large("join response holds too many events"));
    }
    let join = checked_join(identity, &rules, answer.event)?;
    let room = join.room.clone();
    if let Some(known) = get_pdu(tx, join.event_id.as_str()) {
        return Ok(known);
    }

    let mut events: HashMap<OwnedEventId, Pdu> = HashMap::new();
    let mut state = StateIds::new();
    for json in answer.state {
        let pdu = received_pdu(json, &rules, &room)?;
        let Some(sk) = pdu.state_key.clone() else {
            return Err(bad(format!("{} in the state is not a state event", pdu.event_id)));
        };
        let key = (pdu.kind.to_string(), sk);
        if state.insert(key, pdu.event_id.to_string()).is_some() {
            return Err(bad("two state events for one (type, state_key)"));
        }
        events.insert(pdu.event_id.clone(), pdu);
    }
    for json in answer.auth_chain {
        let pdu = received_pdu(json, &rules, &room)?;
        events.entry(pdu.event_id.clone()).or_insert(pdu);
    }
    let create = checked_create(&events, &state, &answer.room_version)?;
    let order = auth_order(&events, &join)?;

    prepare_room(tx, create, &answer.room_version)?;
    let before = store_group(tx, room.as_str(), None, &state)?;
    let create_id = create.event_id.to_string();
    for id in order {
        let Some(pdu) = events.get(&id) else {
            continue;
        };
        authorised_by_auth_events(tx, &rules, pdu, |id| events.get(id), &create_id).map_err(bad)?;
        if get_pdu(tx, id.as_str()).is_none() {
            persist(tx, identity, &rules, pdu, Some(before), true, Origin::Remote)?;
            set_outlier(tx, id.as_str(), OUTLIER_AUTHORISED)?;
        }
    }

    state_res::check_state_independent_auth_rules(&rules.authorization, &join, |id| get_pdu(tx, id.as_str()))
        .map_err(|e| bad(format!("join not authorised by its auth events: {e}")))?;
    check_against(tx, &rules, &join, |t, k| {
        state.get(&(t.to_owned(), k.to_owned())).cloned()
    })
    .map_err(|e| bad(format!("join not authorised by the room state: {e}")))?;
    // The resident's view supersedes whatever this node held of the room before.
    tx.prepare_cached("DELETE FROM forward_extremities WHERE room_id = ?1")?
        .execute([room.as_str()])?;
    persist(tx, identity, &rules, &join, Some(before), false, Origin::Remote)?;
    Ok(join)
}

/// The join must be this node's user joining, fully verified (it was signed here).
fn checked_join(
    identity: &Identity,
    rules: &ruma::room_version_rules::RoomVersionRules,
    mut json: CanonicalJsonObject,
) -> Result<Pdu> {
    json.remove("event_id");
    json.remove("unsigned");
    let event_id = checked_event_id(&json, rules).map_err(bad)?;
    if verify(&json, rules).map_err(bad)? != Verified::All {
        return Err(bad("the join's content hash does not match"));
    }
    let join = Pdu::from_json(event_id, json).map_err(bad)?;
    let membership = join.content_value().get("membership").cloned();
    if join.kind != TimelineEventType::RoomMember
        || join.state_key.as_deref() != Some(join.sender.as_str())
        || membership.as_ref().and_then(|m| m.as_str()) != Some("join")
        || join.sender.server_name() != identity.server_name()
    {
        return Err(bad("the event is not a join of a local user"));
    }
    Ok(join)
}

/// The create event is in the state and its room version is the one the resident named.
fn checked_create<'a>(
    events: &'a HashMap<OwnedEventId, Pdu>,
    state: &StateIds,
    version: &RoomVersionId,
) -> Result<&'a Pdu> {
    let create = state
        .get(&("m.room.create".to_owned(), String::new()))
        .and_then(|id| events.get(id.as_str()))
        .ok_or_else(|| bad("no create event in the state"))?;
    let content = create.content_value();
    // Before v11's explicit field was required, an absent room_version meant "1".
    let named = content
        .get("room_version")
        .and_then(|v| v.as_str())
        .unwrap_or("1");
    if named != version.as_str() {
        return Err(bad(format!(
            "room version {version} named, the create event says {named}"
        )));
    }
    Ok(create)
}

/// The events in an order where each comes after its auth events (Kahn's algorithm,
/// lowest depth first among the ready ones). Every auth event must be in the answer; a
/// cycle or a missing auth event refuses the whole answer.
fn auth_order(events: &HashMap<OwnedEventId, Pdu>, join: &Pdu) -> Result<Vec<OwnedEventId>> {
    for pdu in events.values().chain(std::iter::once(join)) {
        if let Some(missing) = pdu.auth_events.iter().find(|a| !events.contains_key(*a)) {
            return Err(bad(format!(
                "auth event {missing} of {} is missing",
                pdu.event_id
            )));
        }
    }
    let mut waiting: HashMap<&OwnedEventId, usize> = HashMap::new();
    let mut children: HashMap<&OwnedEventId, Vec<&Pdu>> = HashMap::new();
    let mut ready = BTreeSet::new();
    for pdu in events.values() {
        let parents: BTreeSet<&OwnedEventId> = pdu.auth_events.iter().collect();
        for p in &parents {
            children.entry(*p).or_default().push(pdu);
        }
        if parents.is_empty() {
            ready.insert((pdu.depth, &pdu.event_id));
        }
        waiting.insert(&pdu.event_id, parents.len());
    }
    let mut order = Vec::with_capacity(events.len());
    while let Some((_, id)) = ready.pop_first() {
        order.push(id.clone());
        for child in children.get(id).into_iter().flatten() {
            if let Some(n) = waiting.get_mut(&child.event_id) {
                *n -= 1;
                if *n == 0 {
                    ready.insert((child.depth, &child.event_id));
                }
            }
        }
    }
    if order.len() != events.len() {
        return Err(bad("the auth events form a cycle"));
    }
    Ok(order)
}

/// The auth rules for an outlier: against its auth events alone, which stand in for the
/// state before it (the room's create event included, which v12 events do not list).
/// `auth_event` finds an auth event where the caller keeps them. The error is the reason,
/// for the caller to word as its refusal.
pub(crate) fn authorised_by_auth_events<P: Borrow<Pdu>>(
    conn: &Connection,
    rules: &ruma::room_version_rules::RoomVersionRules,
    pdu: &Pdu,
    auth_event: impl Fn(&OwnedEventId) -> Option<P>,
    create_id: &str,
) -> std::result::Result<(), String> {
    let refuse = |e: String| format!("{} not authorised by its auth events: {e}", pdu.event_id);
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id| get_pdu(conn, id.as_str()))
        .map_err(|e| refuse(e.to_string()))?;
    let mut auth_state: HashMap<(String, String), String> = pdu
        .auth_events
        .iter()
        .filter_map(auth_event)
        .filter_map(|a| {
            let a = a.borrow();
            Some(((a.kind.to_string(), a.state_key.clone()?), a.event_id.to_string()))
        })
        .collect();
    auth_state
        .entry(("m.room.create".to_owned(), String::new()))
        .or_insert_with(|| create_id.to_owned());
    check_against(conn, rules, pdu, |t, k| {
        auth_state.get(&(t.to_owned(), k.to_owned())).cloned()
    })
    .map_err(refuse)
}

/// Makes the room row ready: created if new, its version checked if known. What an
/// invite left (signatures checked only) is dropped: the answer replaces it, checked.
fn prepare_room(tx: &WriteTx<'_>, create: &Pdu, version: &RoomVersionId) -> Result<()> {
    let room = &create.room;
    create_room_row(tx, create, version)?;
    if room_version(tx, room.as_str())? != *version {
        return Err(bad("the room is known here with another room version"));
    }
    drop_invite_outliers(tx, room.as_str())
}

/// Deletes the invite outliers of a room (and their edges).
pub(crate) fn drop_invite_outliers(conn: &Connection, room: &str) -> Result<()> {
    for table in ["event_edges", "event_auth"] {
        conn.execute(
            &format!(
                "DELETE FROM {table} WHERE event_id IN \
                 (SELECT event_id FROM events WHERE room_id = ?1 AND outlier = ?2)"
            ),
            params![room, OUTLIER_INVITE],
        )?;
    }
    conn.prepare_cached("DELETE FROM events WHERE room_id = ?1 AND outlier = ?2")?
        .execute(params![room, OUTLIER_INVITE])?;
    Ok(())
}

/// Turns down an invite to a room this node holds only the invite of: the user's
/// membership becomes `leave` at a new stream position, so `/sync` moves the room out of
/// `invite`. Returns whether there was such an invite.
pub fn reject_invite(tx: &mut WriteTx<'_>, user: &str, room: &str) -> Result<bool> {
    let pending = crate::storage::rooms::local_membership(tx, user, room)?;
    if pending.is_none_or(|m| m.membership != "invite") {
        return Ok(false);
    }
    let stream = tx.next_stream_id()?;
    tx.prepare_cached(
        "UPDATE local_membership SET membership = 'leave', stream_ordering = ?3 \
         WHERE user_id = ?1 AND room_id = ?2",
    )?
    .execute(params![user, room, stream])?;
    Ok(true)
}

pub(crate) fn set_outlier(conn: &Connection, event_id: &str, kind: i64) -> Result<()> {
    conn.prepare_cached("UPDATE events SET outlier = ?2 WHERE event_id = ?1")?
        .execute(params![event_id, kind])?;
    Ok(())
}

#[cfg(test)]
mod tests;
