//! The resident side of `/meshserver/join/1`: a join template for another node's user
//! (`make_join`), then storing that user's signed join and answering with the room state
//! and auth chain the joining node needs (`send_join`).

use std::collections::HashSet;

use axum::http::StatusCode;
use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::{OwnedEventId, OwnedRoomId, RoomAliasId, RoomId, RoomVersionId, ServerName, UserId};
use rusqlite::Connection;
use serde_json::{Map, Value};

use super::countersign;
use crate::identity::Identity;
use crate::p2p::wire::{MAX_RESPONSE_BYTES, WirePdu};
use crate::room::ingest::{Outcome, ingest};
use crate::room::resolve::{auth_chain, resolve_after};
use crate::room::{NewEvent, build_unsigned, current_group, room_version, rules_for};
use crate::storage::WriteTx;
use crate::storage::events::{get_event, get_pdu};
use crate::storage::rooms as store;
use crate::{Error, Result};

/// Room versions a joining node may list, at most.
const MAX_SUPPORTED_VERSIONS: usize = 64;
/// Room left in a send_join answer for the join itself and the framing.
const ANSWER_HEADROOM: u64 = 128 * 1024;

pub(crate) fn incompatible(version: &RoomVersionId) -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        "M_INCOMPATIBLE_ROOM_VERSION",
        format!("the room has version {version}, which the joining node does not support"),
    )
}

/// A room this node holds the DAG and current state of (an invite alone does not count).
/// `room` may be one of this node's aliases.
fn resident_room(conn: &Connection, identity: &Identity, room: &str) -> Result<OwnedRoomId> {
    let room_id = if room.starts_with('#') {
        let alias = RoomAliasId::parse(room).map_err(|_| Error::invalid_param("invalid room alias"))?;
        if alias.server_name() != identity.server_name() {
            return Err(Error::not_found("not an alias of this node"));
        }
        let id = store::alias_room(conn, alias.as_str())?.ok_or_else(|| Error::not_found("unknown alias"))?;
        RoomId::parse(id).map_err(|_| Error::internal("bad stored room ID"))?
    } else {
        RoomId::parse(room).map_err(|_| Error::invalid_param("invalid room ID"))?
    };
    if current_group(conn, room_id.as_str())?.is_none() {
        return Err(Error::not_found("this node is not in the room"));
    }
    Ok(room_id)
}

/// The user a request names, who must belong to the node that sent it.
fn origin_user<'a>(user_id: &'a str, origin: &ServerName) -> Result<&'a UserId> {
    let user = <&UserId>::try_from(user_id).map_err(|_| Error::invalid_param("invalid user ID"))?;
    if user.server_name() != origin {
        return Err(Error::forbidden(
            "the user does not belong to the requesting node",
        ));
    }
    Ok(user)
}

/// `make_join`: the unsigned join `user_id` would send, built on this node's forward
/// extremities and current state. `room` may be one of this node's aliases; the template
/// names the room ID.
pub fn make_join(
    conn: &Connection,
    identity: &Identity,
    origin: &ServerName,
    room: &str,
    user_id: &str,
    supported_versions: &[String],
) -> Result<(RoomVersionId, Value)> {
    let user = origin_user(user_id, origin)?;
    let room_id = resident_room(conn, identity, room)?;
    let version = room_version(conn, room_id.as_str())?;
    if supported_versions.len() > MAX_SUPPORTED_VERSIONS
        || !supported_versions.iter().any(|v| v == version.as_str())
    {
        return Err(incompatible(&version));
    }
    let mut content = Map::new();
    content.insert("membership".into(), "join".into());
    if let Some(via) = crate::api::membership::join_authoriser(conn, identity, &room_id, user)? {
        content.insert("join_authorised_via_users_server".into(), via.into());
    }
    let ev = NewEvent::state("m.room.member", user.as_str(), Value::Object(content));
    let (_, template) = build_unsigned(conn, &room_id, user, ev)?;
    Ok((version, template))
}

/// What `send_join` answers.
#[derive(Debug)]
pub struct JoinAnswered {
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub event: WirePdu,
    pub state: Vec<WirePdu>,
    pub auth_chain: Vec<WirePdu>,
}

fn str_field<'a>(json: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match json.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

/// `send_join`: stores `origin`'s signed join through the receipt checks (it must be
/// accepted, not soft-failed) and answers with the state before it and that state's auth
/// chain. Any refusal rolls the transaction back, so a refused join is not stored.
pub fn send_join(
    tx: &mut WriteTx<'_>,
    identity: &Identity,
    origin: &ServerName,
    room: &str,
    mut event: WirePdu,
) -> Result<JoinAnswered> {
    let room_id = resident_room(tx, identity, room)?;
    if room.starts_with('#') || str_field(&event, "room_id") != Some(room_id.as_str()) {
        return Err(Error::invalid_param("the join is for another room"));
    }
    let sender = str_field(&event, "sender").ok_or_else(|| Error::bad_json("no sender"))?;
    origin_user(sender, origin)?;
    if str_field(&event, "origin").is_some_and(|o| o != origin.as_str()) {
        return Err(Error::forbidden("the join claims another origin"));
    }
    let content = match event.get("content") {
        Some(CanonicalJsonValue::Object(c)) => c,
        _ => return Err(Error::bad_json("no content")),
    };
    let membership = str_field(content, "membership");
    if str_field(&event, "type") != Some("m.room.member")
        || str_field(&event, "state_key") != Some(sender)
        || membership != Some("join")
    {
        return Err(Error::invalid_param("not a join of the sending user"));
    }
    // A restricted join names a user of this node, whose server must sign it.
    let authoriser = str_field(content, "join_authorised_via_users_server")
        .and_then(|u| <&UserId>::try_from(u).ok())
        .is_some_and(|u| u.server_name() == identity.server_name());
    let version = room_version(tx, room_id.as_str())?;
    let rules = rules_for(&version)?;
    if authoriser {
        countersign(identity, &mut event, &rules)?;
    }
    let event_id = match ingest(tx, identity, event)? {
        Outcome::Stored { event_id, .. } | Outcome::AlreadyKnown(event_id) => event_id,
        Outcome::Missing(ids) => {
            return Err(Error::invalid_param(format!(
                "the join cites {} events this node does not hold",
                ids.len()
            )));
        }
        Outcome::Rejected { reason, .. } => return Err(Error::forbidden(reason)),
    };
    let stored = get_event(tx, event_id.as_str())?.ok_or_else(|| Error::internal("join not stored"))?;
    if stored.soft_failed {
        return Err(Error::forbidden(
            "the join is not allowed by the room's current state",
        ));
    }
    let before = resolve_after(tx, &rules, &stored.pdu.prev_events)?.state;
    let mut budget = MAX_RESPONSE_BYTES.saturating_sub(ANSWER_HEADROOM);
    let mut take = |id: &str| -> Result<WirePdu> {
        let pdu = get_pdu(tx, id).ok_or_else(|| Error::internal(format!("{id} is not stored")))?;
        let size = serde_json::to_vec(&pdu.json)?.len() as u64;
        budget = budget
            .checked_sub(size)
            .ok_or_else(|| Error::too_large("the room state is over the response limit"))?;
        Ok(pdu.json)
    };
    let mut state = Vec::with_capacity(before.len());
    for id in before.values() {
        state.push(take(id)?);
    }
    let state_ids: HashSet<&str> = before.values().map(String::as_str).collect();
    let starts = state_ids.iter().filter_map(|id| OwnedEventId::try_from(*id).ok());
    let mut chain = Vec::new();
    // Events in the state are sent once; the joining node takes the union.
    for id in auth_chain(tx, starts) {
        if !state_ids.contains(id.as_str()) {
            chain.push(take(id.as_str())?);
        }
    }
    Ok(JoinAnswered {
        room_id,
        event_id,
        event: stored.pdu.json,
        state,
        auth_chain: chain,
    })
}
