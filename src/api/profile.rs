//! What a user shows of themselves: profiles (`GET /profile/{userId}`,
//! `GET/PUT/DELETE /profile/{userId}/{keyName}`) and presence
//! (`GET/PUT /presence/{userId}/status`).
//!
//! This node stores `displayname` and `avatar_url`; a change is mirrored into the user's
//! member event in every room they are joined to, in the same transaction. Profiles of
//! other nodes' users are asked of their node (`/meshserver/profile/1`).

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::account::now_ms;
use super::account_data::ensure_self;
use super::extract::{Auth, JsonBody};
use super::{client, empty};
use crate::identity::Identity;
use crate::room::{NewEvent, append_local};
use crate::services::AppState;
use crate::storage::WriteTx;
use crate::storage::accounts::profile;
use crate::storage::user_data::{self as store, ProfileField, set_profile_field};
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/profile/{user_id}", get(get_profile));
    let r = client(
        r,
        "/presence/{user_id}/status",
        get(get_presence).put(put_presence),
    );
    client(
        r,
        "/profile/{user_id}/{key}",
        get(get_field).put(put_field).delete(delete_field),
    )
}

/// Longest display name accepted: it is copied into a member event in every joined room.
const MAX_DISPLAYNAME_BYTES: usize = 256;
const MAX_AVATAR_URL_BYTES: usize = 1000;

/// The stored field a key names. Other keys the spec's grammar allows exist on no profile
/// here (`Ok(None)`); keys outside that grammar are `M_INVALID_PARAM`.
fn field_for(key: &str) -> Result<Option<ProfileField>> {
    match key {
        "displayname" => return Ok(Some(ProfileField::DisplayName)),
        "avatar_url" => return Ok(Some(ProfileField::AvatarUrl)),
        "m.tz" => return Ok(None),
        _ => {}
    }
    // [a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+
    let parts: Vec<&str> = key.split('.').collect();
    let part_ok = |p: &&str| {
        p.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if key.len() <= 255 && parts.len() >= 2 && parts.iter().all(part_ok) {
        Ok(None)
    } else {
        Err(Error::invalid_param("Invalid profile key"))
    }
}

/// `(displayname, avatar_url)` of a user: from storage for this node's users, else asked of
/// the user's node. An unreachable node or an unknown user is `M_NOT_FOUND` either way.
async fn load(s: &AppState, user_id: String) -> Result<(Option<String>, Option<String>)> {
    if let Ok(uid) = ruma::UserId::parse(&user_id)
        && uid.server_name() != s.server_name()
    {
        return load_remote(s, uid).await;
    }
    s.db.read(move |c| profile(c, &user_id))
        .await?
        .ok_or_else(|| Error::not_found("Profile not found"))
}

/// How long a profile lookup waits for the user's node.
const REMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn load_remote(s: &AppState, uid: ruma::OwnedUserId) -> Result<(Option<String>, Option<String>)> {
    let req = crate::p2p::wire::Request::Profile {
        user_id: uid.to_string(),
        field: None,
    };
    let body = crate::api::keys::remote::ask(s, uid.server_name(), req, REMOTE_TIMEOUT)
        .await
        .map_err(|why| Error::not_found(format!("Profile not found ({why})")))?;
    // Bounded like local values: a peer's answer ends up in clients' member lists.
    let field = |key: &str, max: usize| {
        body.get(key)
            .and_then(Value::as_str)
            .filter(|v| v.len() <= max)
            .map(str::to_owned)
    };
    Ok((
        field("displayname", MAX_DISPLAYNAME_BYTES),
        field("avatar_url", MAX_AVATAR_URL_BYTES),
    ))
}

/// `GET /_matrix/client/v3/profile/{userId}`
async fn get_profile(State(s): State<AppState>, Path(user_id): Path<String>) -> Result<Json<Value>> {
    let (displayname, avatar_url) = load(&s, user_id).await?;
    let mut out = Map::new();
    if let Some(d) = displayname {
        out.insert("displayname".into(), d.into());
    }
    if let Some(a) = avatar_url {
        out.insert("avatar_url".into(), a.into());
    }
    Ok(Json(Value::Object(out)))
}

/// `GET /_matrix/client/v3/profile/{userId}/{keyName}`
async fn get_field(
    State(s): State<AppState>,
    Path((user_id, key)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let field = field_for(&key)?;
    let (displayname, avatar_url) = load(&s, user_id).await?;
    let value = match field {
        Some(ProfileField::DisplayName) => displayname,
        Some(ProfileField::AvatarUrl) => avatar_url,
        None => None,
    };
    let value = value.ok_or_else(|| Error::not_found(format!("No {key} in this profile")))?;
    let mut out = Map::new();
    out.insert(key, value.into());
    Ok(Json(Value::Object(out)))
}

/// Checks a new value for `field`; an empty string clears the field.
fn validate(field: ProfileField, value: Option<&Value>) -> Result<Option<String>> {
    let key = field.key();
    let v = match value {
        None => return Err(Error::missing_param(format!("{key} is required"))),
        Some(Value::String(v)) => v,
        Some(_) => return Err(Error::bad_json(format!("{key} must be a string"))),
    };
    if v.is_empty() {
        return Ok(None);
    }
    let max = match field {
        ProfileField::DisplayName => MAX_DISPLAYNAME_BYTES,
        ProfileField::AvatarUrl => MAX_AVATAR_URL_BYTES,
    };
    if v.len() > max {
        return Err(Error::invalid_param(format!("{key} is over {max} bytes")));
    }
    if field == ProfileField::AvatarUrl && <&ruma::MxcUri>::from(v.as_str()).validate().is_err() {
        return Err(Error::invalid_param("avatar_url must be an mxc:// URI"));
    }
    Ok(Some(v.clone()))
}

/// The caller's own stored field for a writable key; keys this node does not store cannot
/// be written.
fn writable_field(auth: &Auth, user_id: &str, key: &str) -> Result<ProfileField> {
    ensure_self(auth, user_id, "change the profile")?;
    field_for(key)?.ok_or_else(|| Error::forbidden(format!("This server does not store {key}")))
}

/// `PUT /_matrix/client/v3/profile/{userId}/{keyName}`
async fn put_field(
    State(s): State<AppState>,
    auth: Auth,
    Path((user_id, key)): Path<(String, String)>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Response> {
    let field = writable_field(&auth, &user_id, &key)?;
    let value = validate(field, body.get(&key))?;
    update(&s, auth.user_id, field, value).await
}

/// `DELETE /_matrix/client/v3/profile/{userId}/{keyName}`
async fn delete_field(
    State(s): State<AppState>,
    auth: Auth,
    Path((user_id, key)): Path<(String, String)>,
) -> Result<Response> {
    let field = writable_field(&auth, &user_id, &key)?;
    update(&s, auth.user_id, field, None).await
}

async fn update(
    s: &AppState,
    user: ruma::OwnedUserId,
    field: ProfileField,
    value: Option<String>,
) -> Result<Response> {
    let services = s.clone();
    s.db.write(move |tx| set_field(tx, &services.identity, &user, field, value.as_deref()))
        .await?;
    Ok(empty())
}

/// Stores the field and re-sends the user's join event, with the new value, in every room
/// they are joined to, so other members see the change.
fn set_field(
    tx: &mut WriteTx<'_>,
    identity: &Identity,
    user: &ruma::UserId,
    field: ProfileField,
    value: Option<&str>,
) -> Result<()> {
    let uid = user.as_str();
    set_profile_field(tx, uid, field, value)?;
    for room in crate::storage::rooms::joined_rooms(tx, uid)? {
        let Some(event_id) = crate::storage::state::current_state_id(tx, &room, "m.room.member", uid)? else {
            continue;
        };
        let Some(ev) = crate::storage::events::get_event(tx, &event_id)? else {
            continue;
        };
        let Value::Object(old) = ev.pdu.content_value() else {
            continue;
        };
        if old.get(field.key()).and_then(Value::as_str) == value {
            continue;
        }
        let mut content = old;
        // Only meaningful on the transition into the room; a profile update is not one.
        content.remove("join_authorised_via_users_server");
        match value {
            Some(v) => content.insert(field.key().into(), v.into()),
            None => content.remove(field.key()),
        };
        let room_id = ruma::RoomId::parse(&room).map_err(|_| Error::internal("bad stored room ID"))?;
        let ev = NewEvent::state("m.room.member", uid, Value::Object(content));
        match append_local(tx, identity, &room_id, user, ev, None) {
            Ok(_) => {}
            // Refused before anything was written (auth rules, size): the profile still
            // changes, that room keeps the old member event.
            Err(e) if e.status.is_client_error() => {
                tracing::warn!(room = %room, error = %e, "profile change not sent to room");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

const PRESENCE_STATES: &[&str] = &["online", "offline", "unavailable"];

#[derive(Deserialize)]
struct PresenceBody {
    presence: String,
    status_msg: Option<String>,
}

/// `PUT /_matrix/client/v3/presence/{userId}/status`
async fn put_presence(
    State(s): State<AppState>,
    auth: Auth,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<PresenceBody>,
) -> Result<Response> {
    ensure_self(&auth, &user_id, "set presence")?;
    if !PRESENCE_STATES.contains(&body.presence.as_str()) {
        return Err(Error::invalid_param(format!(
            "presence must be one of {}",
            PRESENCE_STATES.join(", ")
        )));
    }
    let p = store::Presence {
        state: body.presence,
        status_msg: body.status_msg,
        last_active_ts: now_ms(),
    };
    s.db.write(move |tx| store::set_presence(tx, &user_id, &p))
        .await?;
    Ok(empty())
}

/// `GET /_matrix/client/v3/presence/{userId}/status`: visible to the user and to those
/// who share a room with them, as /sync would show it.
async fn get_presence(
    State(s): State<AppState>,
    auth: Auth,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let viewer = auth.user_id.to_string();
    let p =
        s.db.read(move |c| {
            if !crate::storage::accounts::user_exists(c, &user_id)? {
                return Err(Error::not_found("Unknown user"));
            }
            if viewer != user_id && !store::share_a_room(c, &viewer, &user_id)? {
                return Err(Error::forbidden("You are not allowed to see their presence"));
            }
            store::presence(c, &user_id)
        })
        .await?;
    Ok(Json(presence_json(p.as_ref(), now_ms())))
}

/// The presence content the API shows for a stored row; a user who never set presence is
/// offline.
pub fn presence_json(p: Option<&store::Presence>, now_ms: i64) -> Value {
    let Some(p) = p else {
        return json!({"presence": "offline"});
    };
    let mut out = json!({
        "presence": p.state,
        "last_active_ago": now_ms.saturating_sub(p.last_active_ts).max(0),
        "currently_active": p.state == "online",
    });
    if let (Some(msg), Some(obj)) = (&p.status_msg, out.as_object_mut()) {
        obj.insert("status_msg".into(), msg.clone().into());
    }
    out
}
