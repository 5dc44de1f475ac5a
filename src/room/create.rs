//! Room creation (the events `createRoom` sends, in the spec's order) and power-level
//! lookups shared by the handlers.

use ruma::{OwnedRoomId, RoomId, RoomVersionId, UserId};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{NewEvent, Pdu, append_local, persist, rules_for, sign};
use crate::identity::Identity;
use crate::storage::WriteTx;
use crate::storage::events::get_pdu;
use crate::storage::state::current_state_id;
use crate::{Error, Result};

/// The body of `POST /_matrix/client/v3/createRoom`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateRoom {
    pub visibility: Option<String>,
    pub room_alias_name: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<String>,
    pub room_version: Option<String>,
    pub creation_content: Option<Map<String, Value>>,
    pub initial_state: Vec<InitialState>,
    pub preset: Option<String>,
    pub is_direct: bool,
    pub power_level_content_override: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
pub struct InitialState {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub state_key: String,
    pub content: Value,
}

/// What `create_room` needs validated before it writes anything.
pub struct Plan {
    pub version: RoomVersionId,
    pub alias: Option<String>,
    pub invite: Vec<ruma::OwnedUserId>,
    pub profile: (Option<String>, Option<String>),
}

impl CreateRoom {
    /// Checks everything a client can get wrong, so a bad request changes nothing.
    pub fn plan(&self, identity: &Identity) -> Result<Plan> {
        let version = match &self.room_version {
            Some(v) => RoomVersionId::try_from(v.as_str())
                .map_err(|_| Error::unsupported_room_version(format!("unknown room version {v}")))?,
            None => super::DEFAULT_VERSION,
        };
        rules_for(&version)?;
        if let Some(p) = &self.preset
            && !matches!(
                p.as_str(),
                "private_chat" | "public_chat" | "trusted_private_chat"
            )
        {
            return Err(Error::bad_json(format!("unknown preset {p}")));
        }
        if let Some(v) = &self.visibility
            && !matches!(v.as_str(), "public" | "private")
        {
            return Err(Error::bad_json(format!("unknown visibility {v}")));
        }
        let alias = match &self.room_alias_name {
            Some(local) => {
                let alias = format!("#{local}:{}", identity.server_name());
                if local.is_empty() || local.contains([':', '#']) || ruma::RoomAliasId::parse(&alias).is_err()
                {
                    return Err(Error::invalid_param("invalid room_alias_name"));
                }
                Some(alias)
            }
            None => None,
        };
        let invite = self
            .invite
            .iter()
            .map(|u| UserId::parse(u).map_err(|_| Error::invalid_param(format!("invalid user ID {u}"))))
            .collect::<Result<Vec<_>>>()?;
        for s in &self.initial_state {
            if !s.content.is_object() {
                return Err(Error::bad_json("initial_state content must be an object"));
            }
        }
        Ok(Plan {
            version,
            alias,
            invite,
            profile: (None, None),
        })
    }
}

/// Creates the room in one transaction: either every event is stored or none is.
pub fn create_room(
    tx: &mut WriteTx<'_>,
    identity: &Identity,
    creator: &UserId,
    req: &CreateRoom,
    plan: Plan,
) -> Result<OwnedRoomId> {
    if let Some(alias) = &plan.alias
        && crate::storage::rooms::alias_room(tx, alias)?.is_some()
    {
        return Err(Error::room_in_use("Room alias already taken"));
    }
    let rules = rules_for(&plan.version)?;
    let v12 = rules.authorization.room_create_event_id_as_room_id;

    // 1. m.room.create: built by hand because it has no prev or auth events, and in v12
    //    no room ID (the room ID is derived from its event ID).
    let mut create_content = req.creation_content.clone().unwrap_or_default();
    create_content.insert("room_version".into(), plan.version.as_str().into());
    if !rules.authorization.use_room_create_sender {
        create_content.insert("creator".into(), creator.as_str().into());
    }
    let preset = req.preset.clone().unwrap_or_else(|| {
        if req.visibility.as_deref() == Some("public") {
            "public_chat"
        } else {
            "private_chat"
        }
        .into()
    });
    if v12 && preset == "trusted_private_chat" && !plan.invite.is_empty() {
        // v12 expresses "invitees are as powerful as the creator" as additional creators.
        let extra: Vec<Value> = plan.invite.iter().map(|u| u.as_str().into()).collect();
        create_content.insert("additional_creators".into(), extra.into());
    }
    let room_id_v10 = if v12 {
        None
    } else {
        Some(RoomId::new_v1(identity.server_name()))
    };
    let mut create = json!({
        "auth_events": [],
        "content": create_content,
        "depth": 1,
        "origin_server_ts": u64::from(ruma::MilliSecondsSinceUnixEpoch::now().get()),
        "prev_events": [],
        "sender": creator,
        "state_key": "",
        "type": "m.room.create",
    });
    if let Some(r) = &room_id_v10 {
        create["room_id"] = r.as_str().into();
    }
    let create: Pdu = sign(identity, &rules, create)?;
    let room_id = create.room.clone();
    tx.prepare_cached("INSERT INTO rooms (room_id, room_version, published) VALUES (?1, ?2, ?3)")?
        .execute(rusqlite::params![
            room_id.as_str(),
            plan.version.as_str(),
            req.visibility.as_deref() == Some("public")
        ])?;
    super::authorize(tx, &rules, &create)?;
    persist(
        tx,
        identity,
        &rules,
        &create,
        None,
        false,
        super::Origin::Local(None),
    )?;

    let send = |tx: &mut WriteTx<'_>, ev: NewEvent| append_local(tx, identity, &room_id, creator, ev, None);

    // 2. The creator joins.
    let (displayname, avatar) = crate::storage::accounts::profile(tx, creator.as_str())?.unwrap_or_default();
    let mut member = json!({"membership": "join"});
    if let Some(d) = displayname {
        member["displayname"] = d.into();
    }
    if let Some(a) = avatar {
        member["avatar_url"] = a.into();
    }
    send(tx, NewEvent::state("m.room.member", creator.as_str(), member))?;

    // 3. Power levels, with the client's override merged over our defaults.
    let mut pl = json!({
        "users_default": 0,
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": if preset == "public_chat" { 50 } else { 0 },
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "notifications": {"room": 50},
        "users": {},
    });
    if !rules.authorization.explicitly_privilege_room_creators {
        pl["users"][creator.as_str()] = 100.into();
    }
    if preset == "trusted_private_chat" && !v12 {
        for u in &plan.invite {
            pl["users"][u.as_str()] = 100.into();
        }
    }
    if let Some(over) = &req.power_level_content_override
        && let Some(obj) = pl.as_object_mut()
    {
        for (k, v) in over {
            obj.insert(k.clone(), v.clone());
        }
    }
    send(tx, NewEvent::state("m.room.power_levels", "", pl))?;

    // 4. Alias, preset state, initial_state, name, topic — in the spec's order.
    if let Some(alias) = &plan.alias {
        crate::storage::rooms::put_alias(tx, alias, room_id.as_str(), creator.as_str())?;
        send(
            tx,
            NewEvent::state("m.room.canonical_alias", "", json!({"alias": alias})),
        )?;
    }
    let join_rule = if preset == "public_chat" {
        "public"
    } else {
        "invite"
    };
    send(
        tx,
        NewEvent::state("m.room.join_rules", "", json!({"join_rule": join_rule})),
    )?;
    send(
        tx,
        NewEvent::state(
            "m.room.history_visibility",
            "",
            json!({"history_visibility": "shared"}),
        ),
    )?;
    if preset != "public_chat" {
        send(
            tx,
            NewEvent::state("m.room.guest_access", "", json!({"guest_access": "can_join"})),
        )?;
    }
    for s in &req.initial_state {
        send(tx, NewEvent::state(&s.kind, &s.state_key, s.content.clone()))?;
    }
    if let Some(name) = &req.name {
        send(tx, NewEvent::state("m.room.name", "", json!({"name": name})))?;
    }
    if let Some(topic) = &req.topic {
        send(tx, NewEvent::state("m.room.topic", "", topic_content(topic)))?;
    }
    // 5. Invites.
    for user in &plan.invite {
        let mut c = json!({"membership": "invite"});
        if req.is_direct {
            c["is_direct"] = true.into();
        }
        send(tx, NewEvent::state("m.room.member", user.as_str(), c))?;
    }
    Ok(room_id)
}

/// Topic content with the plain-text `m.topic` block clients since v1.15 read.
pub fn topic_content(topic: &str) -> Value {
    json!({"topic": topic, "m.topic": [{"mimetype": "text/plain", "body": topic}]})
}

fn power_levels(conn: &Connection, room_id: &str) -> Result<Option<Value>> {
    crate::storage::rooms::state_content(conn, room_id, "m.room.power_levels", "")
}

/// Whether `user` is a creator of a room whose version privileges creators (v12).
fn is_privileged_creator(conn: &Connection, room_id: &str, user: &UserId) -> Result<bool> {
    let version = super::room_version(conn, room_id)?;
    let rules = rules_for(&version)?;
    if !rules.authorization.explicitly_privilege_room_creators {
        return Ok(false);
    }
    let Some(create) =
        current_state_id(conn, room_id, "m.room.create", "")?.and_then(|id| get_pdu(conn, &id))
    else {
        return Ok(false);
    };
    if create.sender == user {
        return Ok(true);
    }
    let extra = create.content_value();
    Ok(extra
        .get("additional_creators")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|u| u.as_str() == Some(user.as_str()))))
}

/// A user's power level in a room (`i64::MAX` for v12 creators).
pub fn power_of(conn: &Connection, room_id: &str, user: &UserId) -> Result<i64> {
    if is_privileged_creator(conn, room_id, user)? {
        return Ok(i64::MAX);
    }
    Ok(match power_levels(conn, room_id)? {
        Some(pl) => pl
            .get("users")
            .and_then(|u| u.get(user.as_str()))
            .and_then(as_int)
            .or_else(|| pl.get("users_default").and_then(as_int))
            .unwrap_or(0),
        None => {
            // Without a power levels event the creator has 100, everyone else 0.
            let creator = current_state_id(conn, room_id, "m.room.create", "")?
                .and_then(|id| get_pdu(conn, &id))
                .map(|p| p.sender);
            if creator.as_deref() == Some(user) { 100 } else { 0 }
        }
    })
}

/// The level a power-levels key (`ban`, `kick`, `redact`, `invite`, ...) requires.
pub fn power_needed(conn: &Connection, room_id: &str, key: &str) -> Result<i64> {
    let default = if key == "invite" { 0 } else { 50 };
    Ok(power_levels(conn, room_id)?
        .and_then(|pl| pl.get(key).and_then(as_int))
        .unwrap_or(default))
}

/// Power levels may be integers or, in old rooms, strings holding integers.
pub(crate) fn as_int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}
