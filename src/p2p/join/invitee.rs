//! The invitee side of `/meshserver/invite/1`: check an invite for a local user, add this
//! node's signature, and keep it (with the room state that came with it) so the user sees
//! it in `/sync` before this node holds anything else of the room.

use ruma::canonical_json::CanonicalJsonObject;
use ruma::events::TimelineEventType;
use ruma::signatures::Verified;
use ruma::{RoomVersionId, ServerName};
use serde_json::Value;

use super::resident::incompatible;
use super::{countersign, local_member_joined};
use crate::identity::Identity;
use crate::p2p::wire::WirePdu;
use crate::pdu::Pdu;
use crate::room::import::{OUTLIER_INVITE, received_pdu, set_outlier};
use crate::room::ingest::{checked_event_id, create_room_row, verify};
use crate::room::{Origin, persist, record_local_membership, room_version, rules_for};
use crate::storage::WriteTx;
use crate::storage::accounts;
use crate::storage::events::{get_pdu, stream_ordering_of};
use crate::storage::state::{StateIds, store_group};
use crate::{Error, Result};

/// Most events an invite's room state may hold (the spec's stripped state is six types
/// plus the inviter's member event).
pub const MAX_INVITE_STATE: usize = 16;

/// Checks an invite sent by `origin` and returns it countersigned. Unless a local user is
/// already joined (then the invite arrives through the room like any event), the invite
/// and its room state are stored as invite outliers and the invitee's membership set.
pub fn receive_invite(
    tx: &mut WriteTx<'_>,
    identity: &Identity,
    origin: &ServerName,
    version: &str,
    mut event: WirePdu,
    invite_room_state: Vec<Value>,
) -> Result<WirePdu> {
    let version =
        RoomVersionId::try_from(version).map_err(|_| Error::invalid_param("invalid room version"))?;
    let rules = rules_for(&version).map_err(|_| incompatible(&version))?;
    event.remove("event_id");
    event.remove("unsigned");
    let event_id = checked_event_id(&event, &rules).map_err(Error::invalid_param)?;
    if verify(&event, &rules).map_err(Error::invalid_param)? != Verified::All {
        return Err(Error::invalid_param("the invite's content hash does not match"));
    }
    let invite = Pdu::from_json(event_id, event.clone()).map_err(Error::invalid_param)?;
    if invite.sender.server_name() != origin {
        return Err(Error::forbidden(
            "the invite's sender does not belong to the requesting node",
        ));
    }
    let invitee = invite
        .state_key
        .as_deref()
        .and_then(|k| <&ruma::UserId>::try_from(k).ok())
        .ok_or_else(|| Error::invalid_param("the invite has no user as its state key"))?;
    let content = invite.content_value();
    if invite.kind != TimelineEventType::RoomMember
        || content.get("membership").and_then(Value::as_str) != Some("invite")
    {
        return Err(Error::invalid_param("not an invite"));
    }
    if invitee.server_name() != identity.server_name() {
        return Err(Error::invalid_param("the invitee is not a user of this node"));
    }
    if !accounts::user_exists(tx, invitee.as_str())? {
        return Err(Error::not_found("no such user"));
    }
    if invite_room_state.len() > MAX_INVITE_STATE {
        return Err(Error::invalid_param("too much invite room state"));
    }
    let mut stripped = Vec::with_capacity(invite_room_state.len());
    for v in invite_room_state {
        let json: CanonicalJsonObject =
            serde_json::from_value(v).map_err(|_| Error::invalid_param("invite room state must be PDUs"))?;
        let pdu = received_pdu(json, &rules, &invite.room).map_err(|e| Error::invalid_param(e.message))?;
        if pdu.state_key.is_none() {
            return Err(Error::invalid_param("invite room state holds a non-state event"));
        }
        stripped.push(pdu);
    }
    let create = stripped
        .iter()
        .find(|p| p.kind == TimelineEventType::RoomCreate)
        .ok_or_else(|| Error::invalid_param("the invite room state has no create event"))?;
    let named = create.content_value();
    let named = named.get("room_version").and_then(Value::as_str).unwrap_or("1");
    if named != version.as_str() {
        return Err(Error::invalid_param(
            "the create event names another room version",
        ));
    }

    countersign(identity, &mut event, &rules)?;
    let room = invite.room.as_str();
    if local_member_joined(tx, identity, room)? || get_pdu(tx, invite.event_id.as_str()).is_some() {
        return Ok(event);
    }
    create_room_row(tx, create, &version)?;
    if room_version(tx, room)? != version {
        return Err(Error::invalid_param(
            "the room is known here with another room version",
        ));
    }
    let invite = Pdu::from_json(invite.event_id, event.clone()).map_err(Error::internal)?;
    let mut state = StateIds::new();
    for p in stripped.iter().chain(std::iter::once(&invite)) {
        if let Some(sk) = &p.state_key {
            state.insert((p.kind.to_string(), sk.clone()), p.event_id.to_string());
        }
    }
    let group = store_group(tx, room, None, &state)?;
    for p in stripped.iter().chain(std::iter::once(&invite)) {
        if get_pdu(tx, p.event_id.as_str()).is_none() {
            persist(tx, identity, &rules, p, Some(group), true, Origin::Remote)?;
            set_outlier(tx, p.event_id.as_str(), OUTLIER_INVITE)?;
        }
    }
    let stream = stream_ordering_of(tx, invite.event_id.as_str())?
        .ok_or_else(|| Error::internal("invite not stored"))?;
    record_local_membership(tx, identity, &invite, invitee.as_str(), &content, stream)?;
    Ok(event)
}
