//! Room membership: join, invite, leave, forget, kick, ban and unban, and the member
//! lists (`/joined_rooms`, `/members`, `/joined_members`).
//!
//! Every change is an `m.room.member` state event appended through the room state
//! machine, whose auth rules have the final word (`M_FORBIDDEN`). The handlers check the
//! cases a client commonly gets wrong first, so those get a clear message.

use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::extract::{Auth, JsonBody};
use super::room_events::parse_room_id;
use super::{client, empty};
use crate::identity::Identity;
use crate::room::create::power_of;
use crate::room::{NewEvent, append_local};
use crate::services::AppState;
use crate::storage::WriteTx;
use crate::storage::events::get_pdu;
use crate::storage::rooms as store;
use crate::storage::state::current_state_id;
use crate::{Error, Result};

mod lists;
mod remote;

use lists::{joined_members, joined_rooms, members};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/join/{room_id_or_alias}", post(join_by_id_or_alias));
    let r = client(r, "/rooms/{room_id}/join", post(join));
    let r = client(r, "/rooms/{room_id}/invite", post(invite));
    let r = client(r, "/rooms/{room_id}/leave", post(leave));
    let r = client(r, "/rooms/{room_id}/forget", post(forget));
    let r = client(r, "/rooms/{room_id}/kick", post(kick));
    let r = client(r, "/rooms/{room_id}/ban", post(ban));
    let r = client(r, "/rooms/{room_id}/unban", post(unban));
    let r = client(r, "/joined_rooms", get(joined_rooms));
    let r = client(r, "/rooms/{room_id}/members", get(members));
    client(r, "/rooms/{room_id}/joined_members", get(joined_members))
}

fn parse_user_id(s: &str) -> Result<OwnedUserId> {
    UserId::parse(s).map_err(|_| Error::invalid_param(format!("invalid user ID {s}")))
}

/// The power level needed to send a state event of `kind`, per the room's power levels.
fn state_power_needed(conn: &Connection, room_id: &str, kind: &str) -> Result<i64> {
    let Some(pl) = store::state_content(conn, room_id, "m.room.power_levels", "")? else {
        // Without a power levels event, state_default is 0.
        return Ok(0);
    };
    let int = crate::room::create::as_int;
    Ok(pl
        .get("events")
        .and_then(|e| e.get(kind))
        .and_then(int)
        .or_else(|| pl.get("state_default").and_then(int))
        .unwrap_or(50))
}

/// Whether `user` is joined and powerful enough to send `kind` state: the bar for managing
/// a room's aliases and directory listing (as `m.room.canonical_alias` is its curated form).
pub(crate) fn may_send_state(conn: &Connection, room_id: &str, user: &UserId, kind: &str) -> Result<bool> {
    if store::membership(conn, room_id, user.as_str())?.as_deref() != Some("join") {
        return Ok(false);
    }
    Ok(power_of(conn, room_id, user)? >= state_power_needed(conn, room_id, kind)?)
}

fn require_room(conn: &Connection, room_id: &RoomId) -> Result<()> {
    if store::room_exists(conn, room_id.as_str())? {
        Ok(())
    } else {
        Err(Error::not_found("Unknown room"))
    }
}

/// A membership change: `sender` sets `target`'s membership in a room.
struct Change<'a> {
    room_id: &'a RoomId,
    sender: &'a UserId,
    target: &'a UserId,
    membership: &'a str,
    reason: Option<String>,
    extra: Map<String, Value>,
}

/// A member event's content: the membership, the target's profile where given, the reason.
pub(crate) fn member_content(
    membership: &str,
    (displayname, avatar_url): (Option<String>, Option<String>),
    reason: Option<String>,
) -> Map<String, Value> {
    let mut content = Map::new();
    content.insert("membership".into(), membership.into());
    if let Some(d) = displayname {
        content.insert("displayname".into(), d.into());
    }
    if let Some(a) = avatar_url {
        content.insert("avatar_url".into(), a.into());
    }
    if let Some(r) = reason {
        content.insert("reason".into(), r.into());
    }
    content
}

/// Applies a membership change. Like Synapse, sends nothing when the current member event
/// already says the same thing from the same sender. Joins and invites carry the target's
/// profile. Returns the member event's ID.
fn set_membership(tx: &mut WriteTx<'_>, identity: &Identity, change: Change<'_>) -> Result<String> {
    let Change {
        room_id,
        sender,
        target,
        membership,
        reason,
        extra,
    } = change;
    let profile = if matches!(membership, "join" | "invite") {
        crate::storage::accounts::profile(tx, target.as_str())?.unwrap_or_default()
    } else {
        (None, None)
    };
    let mut content = member_content(membership, profile, reason);
    content.extend(extra);
    let content = Value::Object(content);
    if let Some(id) = current_state_id(tx, room_id.as_str(), "m.room.member", target.as_str())?
        && let Some(current) = get_pdu(tx, &id)
        && current.sender == sender
        && current.content_value() == content
    {
        return Ok(id);
    }
    let ev = NewEvent::state("m.room.member", target.as_str(), content);
    let pdu = append_local(tx, identity, room_id, sender, ev, None)?;
    Ok(pdu.event_id.to_string())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReasonBody {
    reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TargetBody {
    user_id: Option<String>,
    reason: Option<String>,
}

impl TargetBody {
    fn target(&self) -> Result<OwnedUserId> {
        let u = self
            .user_id
            .as_deref()
            .ok_or_else(|| Error::missing_param("missing user_id"))?;
        parse_user_id(u)
    }
}

/// The room an ID or one of this node's aliases names.
async fn resolve_room(s: &AppState, id_or_alias: &str) -> Result<OwnedRoomId> {
    if !id_or_alias.starts_with('#') {
        return parse_room_id(id_or_alias);
    }
    let alias = ruma::RoomAliasId::parse(id_or_alias)
        .map_err(|_| Error::invalid_param(format!("invalid room alias {id_or_alias}")))?;
    if alias.server_name() != s.server_name() {
        return Err(Error::not_found("Room alias not found"));
    }
    let a = alias.to_string();
    let room = s.db.read(move |c| store::alias_room(c, &a)).await?;
    parse_room_id(&room.ok_or_else(|| Error::not_found(format!("Room alias {alias} not found")))?)
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`: `server_name`/`via` name nodes to join
/// through when this node is not in the room (see [`remote::join`]).
async fn join_by_id_or_alias(
    State(s): State<AppState>,
    auth: Auth,
    Path(target): Path<String>,
    uri: Uri,
    JsonBody(body): JsonBody<ReasonBody>,
) -> Result<Json<Value>> {
    let via = remote::via_servers(&uri)?;
    let room_id = remote::join(s, auth, &target, via, body.reason).await?;
    Ok(Json(json!({"room_id": room_id})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
async fn join(
    State(s): State<AppState>,
    auth: Auth,
    Path(room_id): Path<String>,
    uri: Uri,
    JsonBody(body): JsonBody<ReasonBody>,
) -> Result<Json<Value>> {
    let via = remote::via_servers(&uri)?;
    parse_room_id(&room_id)?;
    let room_id = remote::join(s, auth, &room_id, via, body.reason).await?;
    Ok(Json(json!({"room_id": room_id})))
}

/// A join served by this node, on its own copy of the room.
async fn join_room(s: AppState, auth: Auth, room_id: OwnedRoomId, reason: Option<String>) -> Result<()> {
    let services = s.clone();
    let rid = room_id.clone();
    s.db.write(move |tx| {
        if !store::room_exists(tx, rid.as_str())? {
            return Err(Error::not_found(
                "Room not known to this server (joining over federation is not supported yet)",
            ));
        }
        let mut extra = Map::new();
        if let Some(via) = join_authoriser(tx, &services.identity, &rid, &auth.user_id)? {
            extra.insert("join_authorised_via_users_server".into(), via.into());
        }
        let me = &auth.user_id;
        let change = Change {
            room_id: &rid,
            sender: me,
            target: me,
            membership: "join",
            reason,
            extra,
        };
        set_membership(tx, &services.identity, change)
    })
    .await?;
    Ok(())
}

/// For a restricted room the user is not yet in: checks the `allow` conditions and picks
/// a local member able to invite, whose ID the join event must carry.
pub(crate) fn join_authoriser(
    conn: &Connection,
    identity: &Identity,
    room_id: &RoomId,
    user: &UserId,
) -> Result<Option<String>> {
    let rule = store::state_content(conn, room_id.as_str(), "m.room.join_rules", "")?;
    let rule = rule.as_ref();
    let kind = rule.and_then(|r| r.get("join_rule")).and_then(Value::as_str);
    if !matches!(kind, Some("restricted" | "knock_restricted")) {
        return Ok(None);
    }
    let current = store::membership(conn, room_id.as_str(), user.as_str())?;
    if matches!(current.as_deref(), Some("join" | "invite")) {
        return Ok(None);
    }
    let allow = rule.and_then(|r| r.get("allow")).and_then(Value::as_array);
    let mut satisfied = false;
    for cond in allow.into_iter().flatten() {
        if cond.get("type").and_then(Value::as_str) == Some("m.room_membership")
            && let Some(other) = cond.get("room_id").and_then(Value::as_str)
            && store::membership(conn, other, user.as_str())?.as_deref() == Some("join")
        {
            satisfied = true;
            break;
        }
    }
    if !satisfied {
        return Err(Error::forbidden(
            "You do not belong to any of the rooms this room allows",
        ));
    }
    let needed = crate::room::create::power_needed(conn, room_id.as_str(), "invite")?;
    for member in store::members_with(conn, room_id.as_str(), "join")? {
        if let Ok(m) = UserId::parse(&member)
            && m.server_name() == identity.server_name()
            && power_of(conn, room_id.as_str(), &m)? >= needed
        {
            return Ok(Some(member));
        }
    }
    Err(Error::forbidden(
        "No user on this server can authorise joining this room",
    ))
}

/// The cases of an invite a client commonly gets wrong, with a clear message each.
fn may_invite(conn: &Connection, room_id: &RoomId, inviter: &UserId, target: &UserId) -> Result<()> {
    require_room(conn, room_id)?;
    let room = room_id.as_str();
    if store::membership(conn, room, inviter.as_str())?.as_deref() != Some("join") {
        return Err(Error::forbidden("You are not in this room"));
    }
    match store::membership(conn, room, target.as_str())?.as_deref() {
        Some("join") => Err(Error::forbidden(format!("{target} is already in the room"))),
        Some("ban") => Err(Error::forbidden(format!("{target} is banned from the room"))),
        _ => Ok(()),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`: a user of another node is invited
/// through their node, which countersigns the invite.
async fn invite(
    State(s): State<AppState>,
    auth: Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> Result<Response> {
    let room_id = parse_room_id(&room_id)?;
    let target = body.target()?;
    if target.server_name() != s.server_name() {
        let (rid, inviter, invitee) = (room_id.clone(), auth.user_id.clone(), target.clone());
        s.db.read(move |c| may_invite(c, &rid, &inviter, &invitee))
            .await?;
        let reason = body.reason;
        crate::p2p::join::remote::invite_remote(&s, &auth.user_id, &room_id, &target, reason).await?;
        return Ok(empty());
    }
    let services = s.clone();
    s.db.write(move |tx| {
        may_invite(tx, &room_id, &auth.user_id, &target)?;
        let change = Change {
            room_id: &room_id,
            sender: &auth.user_id,
            target: &target,
            membership: "invite",
            reason: body.reason,
            extra: Map::new(),
        };
        set_membership(tx, &services.identity, change)
    })
    .await?;
    Ok(empty())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`: also rejects an invite.
async fn leave(
    State(s): State<AppState>,
    auth: Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> Result<Response> {
    let room_id = parse_room_id(&room_id)?;
    let services = s.clone();
    s.db.write(move |tx| {
        require_room(tx, &room_id)?;
        if remote::held_elsewhere(tx, &room_id)? {
            // Only an invite is held here; the inviter's node is not told (the wire
            // protocol has no leave handshake): the invite just leaves the user's /sync.
            return match crate::room::import::reject_invite(tx, auth.user_id.as_str(), room_id.as_str())? {
                true => Ok(String::new()),
                false => Err(Error::forbidden("You are not in this room")),
            };
        }
        let current = store::membership(tx, room_id.as_str(), auth.user_id.as_str())?;
        if !matches!(current.as_deref(), Some("join" | "invite" | "knock")) {
            return Err(Error::forbidden("You are not in this room"));
        }
        let me = &auth.user_id;
        let change = Change {
            room_id: &room_id,
            sender: me,
            target: me,
            membership: "leave",
            reason: body.reason,
            extra: Map::new(),
        };
        set_membership(tx, &services.identity, change)
    })
    .await?;
    Ok(empty())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`
async fn forget(State(s): State<AppState>, auth: Auth, Path(room_id): Path<String>) -> Result<Response> {
    let room_id = parse_room_id(&room_id)?;
    s.db.write(move |tx| {
        require_room(tx, &room_id)?;
        let (room, user) = (room_id.as_str(), auth.user_id.as_str());
        if let Some(m @ ("join" | "invite" | "knock")) = store::membership(tx, room, user)?.as_deref() {
            return Err(Error::new(
                axum::http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                format!("User {user} is in room {room} (membership {m}); leave it first"),
            ));
        }
        store::set_forgotten(tx, user, room)
    })
    .await?;
    Ok(empty())
}

/// A moderation action on another user's membership.
#[derive(Clone, Copy)]
enum Action {
    Kick,
    Ban,
    Unban,
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`
async fn kick(s: State<AppState>, auth: Auth, p: Path<String>, b: JsonBody<TargetBody>) -> Result<Response> {
    moderate(s, auth, p, b, Action::Kick).await
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`
async fn ban(s: State<AppState>, auth: Auth, p: Path<String>, b: JsonBody<TargetBody>) -> Result<Response> {
    moderate(s, auth, p, b, Action::Ban).await
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`
async fn unban(s: State<AppState>, auth: Auth, p: Path<String>, b: JsonBody<TargetBody>) -> Result<Response> {
    moderate(s, auth, p, b, Action::Unban).await
}

async fn moderate(
    State(s): State<AppState>,
    auth: Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
    action: Action,
) -> Result<Response> {
    let room_id = parse_room_id(&room_id)?;
    let target = body.target()?;
    let services = s.clone();
    s.db.write(move |tx| {
        require_room(tx, &room_id)?;
        let current = store::membership(tx, room_id.as_str(), target.as_str())?;
        let membership = match (action, current.as_deref()) {
            (Action::Kick, Some("join" | "invite" | "knock")) => "leave",
            (Action::Kick, _) => return Err(Error::forbidden(format!("{target} is not in the room"))),
            (Action::Ban, _) => "ban",
            (Action::Unban, Some("ban")) => "leave",
            (Action::Unban, _) => return Err(Error::forbidden(format!("{target} is not banned"))),
        };
        let change = Change {
            room_id: &room_id,
            sender: &auth.user_id,
            target: &target,
            membership,
            reason: body.reason,
            extra: Map::new(),
        };
        set_membership(tx, &services.identity, change)
    })
    .await?;
    Ok(empty())
}
