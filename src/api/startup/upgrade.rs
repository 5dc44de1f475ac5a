//! `POST /rooms/{roomId}/upgrade`, following the spec's "Room Upgrades" server behaviour
//! step by step, in one write transaction: either the whole upgrade happens or nothing.
//!
//! 1. The user must be allowed to send `m.room.tombstone` in the old room.
//! 2. The new room's `m.room.create` has `predecessor` (with the old room's latest event
//!    ID, which the spec still asks for where known) and the old room's `type`.
//! 3. The recommended state is copied: server ACL, encryption, name, avatar, topic, guest
//!    access, history visibility, join rules and power levels. Members are not.
//! 4. Local aliases and the canonical alias move to the new room, as does a directory
//!    listing.
//! 5. The old room gets `m.room.tombstone`.
//! 6. The old room's power levels are raised so ordinary members can no longer talk or
//!    invite.

use axum::Json;
use axum::extract::{Path, State};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api::extract::{Auth, JsonBody};
use crate::api::membership::may_send_state;
use crate::api::room_events::parse_room_id;
use crate::identity::Identity;
use crate::pdu::Pdu;
use crate::room::create::{CreateRoom, InitialState, as_int, create_room};
use crate::room::{NewEvent, append_local, room_version, rules_for};
use crate::services::AppState;
use crate::storage::WriteTx;
use crate::storage::events::latest_event_id;
use crate::storage::rooms::{is_published, move_aliases, set_published, state_content};
use crate::{Error, Result};

const CREATE: &str = "m.room.create";
const POWER_LEVELS: &str = "m.room.power_levels";
const CANONICAL_ALIAS: &str = "m.room.canonical_alias";
const TOMBSTONE: &str = "m.room.tombstone";
const GUEST_ACCESS: &str = "m.room.guest_access";
const JOIN_RULES: &str = "m.room.join_rules";

/// The state the spec recommends transferring, besides power levels.
const TRANSFERRED: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    GUEST_ACCESS,
    "m.room.history_visibility",
    JOIN_RULES,
];

/// The level every power-levels key has when the event leaves it out.
const PL_DEFAULTS: &[(&str, i64)] = &[
    ("ban", 50),
    ("events_default", 0),
    ("invite", 0),
    ("kick", 50),
    ("redact", 50),
    ("state_default", 50),
    ("users_default", 0),
];

#[derive(Deserialize)]
pub(super) struct UpgradeBody {
    new_version: String,
    #[serde(default)]
    additional_creators: Vec<String>,
}

/// `POST /_matrix/client/v3/rooms/{roomId}/upgrade`
pub(super) async fn upgrade(
    State(s): State<AppState>,
    auth: Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<UpgradeBody>,
) -> Result<Json<Value>> {
    let old = parse_room_id(&room_id)?;
    let version = RoomVersionId::try_from(body.new_version.as_str())
        .map_err(|_| Error::unsupported_room_version(format!("unknown room version {}", body.new_version)))?;
    let rules = rules_for(&version)?;
    // Versions without additional creators ignore the field, as the spec says.
    let extra_creators = if rules.authorization.additional_room_creators {
        body.additional_creators
            .iter()
            .map(|u| UserId::parse(u).map_err(|_| Error::invalid_param(format!("invalid user ID {u}"))))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let services = s.clone();
    let replacement =
        s.db.write(move |tx| {
            upgrade_room(
                tx,
                &services.identity,
                &auth.user_id,
                &old,
                version,
                &extra_creators,
            )
        })
        .await?;
    Ok(Json(json!({"replacement_room": replacement})))
}

fn upgrade_room(
    tx: &mut WriteTx<'_>,
    identity: &Identity,
    user: &UserId,
    old: &RoomId,
    version: RoomVersionId,
    extra_creators: &[OwnedUserId],
) -> Result<OwnedRoomId> {
    let old_id = old.as_str();
    let old_rules = rules_for(&room_version(tx, old_id)?)?;
    if !may_send_state(tx, old_id, user, TOMBSTONE)? {
        return Err(Error::forbidden("You may not upgrade this room"));
    }
    let new_rules = rules_for(&version)?;
    let old_create = state(tx, old_id, CREATE)?.unwrap_or_default();

    // 2. The create event's content.
    let mut creation = Map::new();
    for key in ["type", "m.federate"] {
        if let Some(v) = old_create.get(key) {
            creation.insert(key.into(), v.clone());
        }
    }
    let mut predecessor = json!({"room_id": old_id});
    if let Some(last) = latest_event_id(tx, old_id)? {
        predecessor["event_id"] = last.into();
    }
    creation.insert("predecessor".into(), predecessor);
    if !extra_creators.is_empty() {
        let list: Vec<Value> = extra_creators.iter().map(|u| u.as_str().into()).collect();
        creation.insert("additional_creators".into(), list.into());
    }

    // 3. The state to copy, and the power levels.
    let mut new_creators: Vec<&str> = Vec::new();
    if new_rules.authorization.explicitly_privilege_room_creators {
        new_creators.push(user.as_str());
        new_creators.extend(extra_creators.iter().map(|u| u.as_str()));
    }
    let old_creators = if old_rules.authorization.explicitly_privilege_room_creators {
        creators_of(tx, old_id, &old_create)?
    } else {
        Vec::new()
    };
    let power =
        state(tx, old_id, POWER_LEVELS)?.map(|pl| transferred_power_levels(pl, &new_creators, &old_creators));
    // The state below is sent after the power levels; an upgrader who could tombstone
    // the room but not send all of it is raised for the copy, then put back.
    let mut initial_power = power.clone();
    let mut restore_power = false;
    if let Some(pl) = initial_power.as_mut()
        && new_creators.is_empty()
    {
        let needed = level_to_send_state(pl);
        if own_level(pl, user) < needed {
            pl["users"][user.as_str()] = needed.into();
            restore_power = true;
        }
    }
    let public = state(tx, old_id, JOIN_RULES)?
        .and_then(|c| c.get("join_rule").and_then(Value::as_str).map(|r| r == "public"))
        .unwrap_or(false);
    let mut initial_state = Vec::new();
    for kind in TRANSFERRED {
        if let Some(content) = state(tx, old_id, kind)? {
            initial_state.push(InitialState {
                kind: (*kind).into(),
                state_key: String::new(),
                content,
            });
        }
    }
    if !public && !initial_state.iter().any(|s| s.kind == GUEST_ACCESS) {
        // The private preset would open the new room to guests; the old room was not.
        initial_state.push(InitialState {
            kind: GUEST_ACCESS.into(),
            state_key: String::new(),
            content: json!({"guest_access": "forbidden"}),
        });
    }
    let published = is_published(tx, old_id)?.unwrap_or(false);
    let req = CreateRoom {
        visibility: Some(if published { "public" } else { "private" }.into()),
        room_version: Some(version.to_string()),
        creation_content: Some(creation),
        initial_state,
        preset: Some(if public { "public_chat" } else { "private_chat" }.into()),
        power_level_content_override: initial_power.and_then(|p| p.as_object().cloned()),
        ..Default::default()
    };
    let plan = req.plan(identity)?;
    let new_room = create_room(tx, identity, user, &req, plan)?;
    let send = |tx: &mut WriteTx<'_>, room: &RoomId, ev: NewEvent| -> Result<Pdu> {
        append_local(tx, identity, room, user, ev, None)
    };
    if let (true, Some(pl)) = (restore_power, power) {
        send(tx, &new_room, NewEvent::state(POWER_LEVELS, "", pl))?;
    }

    // 4. Aliases and the directory listing.
    move_aliases(tx, old_id, new_room.as_str())?;
    if let Some(canonical) = state(tx, old_id, CANONICAL_ALIAS)?
        && (canonical.get("alias").is_some() || canonical.get("alt_aliases").is_some())
    {
        unless_forbidden(send(
            tx,
            &new_room,
            NewEvent::state(CANONICAL_ALIAS, "", canonical),
        ))?;
        unless_forbidden(send(tx, old, NewEvent::state(CANONICAL_ALIAS, "", json!({}))))?;
    }
    if published {
        set_published(tx, old_id, false)?;
    }

    // 5. The tombstone.
    let tombstone = json!({
        "body": "This room has been replaced",
        "replacement_room": new_room.as_str(),
    });
    send(tx, old, NewEvent::state(TOMBSTONE, "", tombstone))?;

    // 6. Silence the old room.
    if let Some(pl) = state(tx, old_id, POWER_LEVELS)?
        && let Some(restricted) = restricted_power_levels(pl)
    {
        unless_forbidden(send(tx, old, NewEvent::state(POWER_LEVELS, "", restricted)))?;
    }
    Ok(new_room)
}

fn state(conn: &Connection, room_id: &str, kind: &str) -> Result<Option<Value>> {
    state_content(conn, room_id, kind, "")
}

/// A step the spec asks for "if possible": when the upgrader lacks the power for it, it is
/// skipped (authorisation fails before anything is written) and the upgrade goes on.
fn unless_forbidden(r: Result<Pdu>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.errcode == "M_FORBIDDEN" => {
            tracing::warn!(error = %e, "room upgrade step skipped");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The creators of a room whose version privileges them: the create event's sender and
/// its `additional_creators`.
fn creators_of(conn: &Connection, room_id: &str, create: &Value) -> Result<Vec<String>> {
    let mut out: Vec<String> = crate::storage::state::current_state_id(conn, room_id, CREATE, "")?
        .and_then(|id| crate::storage::events::get_pdu(conn, &id))
        .map(|p| p.sender.to_string())
        .into_iter()
        .collect();
    if let Some(extra) = create.get("additional_creators").and_then(Value::as_array) {
        out.extend(extra.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    Ok(out)
}

/// The old room's power levels for the new room, with every key the old event left to
/// its default written out (so the new room's defaults cannot differ). Creators of the
/// new room may not appear in `users` (v12); creators of the old room, whose power was
/// implicit, keep the top level of 100.
fn transferred_power_levels(old: Value, new_creators: &[&str], old_creators: &[String]) -> Value {
    let mut pl = match old {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (key, default) in PL_DEFAULTS {
        pl.entry(*key).or_insert_with(|| (*default).into());
    }
    pl.entry("events").or_insert_with(|| json!({}));
    pl.entry("notifications").or_insert_with(|| json!({"room": 50}));
    let users = pl.entry("users").or_insert_with(|| json!({}));
    if !users.is_object() {
        *users = json!({});
    }
    if let Some(users) = users.as_object_mut() {
        for c in old_creators {
            if !new_creators.contains(&c.as_str()) {
                users.insert(c.clone(), 100.into());
            }
        }
        for c in new_creators {
            users.remove(*c);
        }
    }
    Value::Object(pl)
}

/// The highest level any state event needs under `pl`.
fn level_to_send_state(pl: &Value) -> i64 {
    let state_default = pl.get("state_default").and_then(as_int).unwrap_or(50);
    let events = pl
        .get("events")
        .and_then(Value::as_object)
        .and_then(|m| m.values().filter_map(as_int).max())
        .unwrap_or(0);
    state_default.max(events)
}

fn own_level(pl: &Value, user: &UserId) -> i64 {
    pl.get("users")
        .and_then(|u| u.get(user.as_str()))
        .and_then(as_int)
        .or_else(|| pl.get("users_default").and_then(as_int))
        .unwrap_or(0)
}

/// The old room's power levels with `events_default` and `invite` raised to the greater
/// of 50 and `users_default + 1`; `None` when both are already that high.
fn restricted_power_levels(mut pl: Value) -> Option<Value> {
    let users_default = pl.get("users_default").and_then(as_int).unwrap_or(0);
    let needed = users_default.saturating_add(1).max(50);
    let obj = pl.as_object_mut()?;
    let mut changed = false;
    for key in ["events_default", "invite"] {
        if obj.get(key).and_then(as_int).unwrap_or(0) < needed {
            obj.insert(key.into(), needed.into());
            changed = true;
        }
    }
    changed.then_some(pl)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{restricted_power_levels, transferred_power_levels};

    #[test]
    fn power_levels_move_creators_and_fill_defaults() {
        let old = json!({"users": {"@a:x": 100, "@b:x": 50}, "events": {"m.room.name": 50}});
        let pl = transferred_power_levels(old, &["@a:x"], &["@c:x".to_owned(), "@a:x".to_owned()]);
        assert_eq!(pl["users"], json!({"@b:x": 50, "@c:x": 100}));
        assert_eq!(pl["invite"], 0);
        assert_eq!(pl["state_default"], 50);
        assert_eq!(pl["events"], json!({"m.room.name": 50}));
    }

    #[test]
    fn old_room_is_silenced_once() {
        let pl = restricted_power_levels(json!({"users_default": 60, "invite": 100}));
        assert_eq!(
            pl,
            Some(json!({"users_default": 60, "invite": 100, "events_default": 61}))
        );
        assert_eq!(
            restricted_power_levels(json!({"events_default": 50, "invite": 50})),
            None
        );
    }
}
