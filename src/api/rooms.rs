//! Rooms as a whole: creation, the directory (aliases, public rooms).

pub mod public;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::{OwnedRoomAliasId, RoomAliasId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, JsonBody};
use super::membership::may_send_state;
use super::room_events::parse_room_id;
use super::{client, empty};
use crate::room::create::{CreateRoom, create_room};
use crate::room::{NewEvent, append_local};
use crate::services::AppState;
use crate::storage::rooms as store;
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(r, "/createRoom", post(create));
    let r = client(
        r,
        "/directory/room/{room_alias}",
        get(get_alias).put(put_alias).delete(delete_alias),
    );
    let r = client(
        r,
        "/directory/list/room/{room_id}",
        get(get_visibility).put(put_visibility),
    );
    client(
        r,
        "/publicRooms",
        get(public::get_public_rooms).post(public::post_public_rooms),
    )
}

/// `POST /_matrix/client/v3/createRoom`
async fn create(
    State(s): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody<CreateRoom>,
) -> Result<Json<Value>> {
    let plan = body.plan(&s.identity)?;
    let services = s.clone();
    let room_id =
        s.db.write(move |tx| create_room(tx, &services.identity, &auth.user_id, &body, plan))
            .await?;
    Ok(Json(json!({"room_id": room_id})))
}

/// The state event type whose senders may manage a room's aliases and directory listing.
const ALIAS_EVENT: &str = "m.room.canonical_alias";

fn parse_alias(s: &str) -> Result<OwnedRoomAliasId> {
    RoomAliasId::parse(s).map_err(|_| Error::invalid_param(format!("invalid room alias {s}")))
}

#[derive(Debug, Deserialize)]
struct AliasBody {
    room_id: String,
}

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`: members may add aliases on this
/// server for rooms they are in.
async fn put_alias(
    State(s): State<AppState>,
    auth: Auth,
    Path(alias): Path<String>,
    JsonBody(body): JsonBody<AliasBody>,
) -> Result<Response> {
    let alias = parse_alias(&alias)?;
    if alias.server_name() != s.server_name() {
        return Err(Error::invalid_param(format!(
            "room alias must be on this server ({})",
            s.server_name()
        )));
    }
    let room_id = parse_room_id(&body.room_id)?;
    s.db.write(move |tx| {
        if !store::room_exists(tx, room_id.as_str())? {
            return Err(Error::not_found("Unknown room"));
        }
        if store::membership(tx, room_id.as_str(), auth.user_id.as_str())?.as_deref() != Some("join") {
            return Err(Error::forbidden(
                "You must be in the room to create an alias for it",
            ));
        }
        if store::alias_room(tx, alias.as_str())?.is_some() {
            return Err(Error::new(
                StatusCode::CONFLICT,
                "M_UNKNOWN",
                format!("Room alias {alias} already exists"),
            ));
        }
        store::put_alias(tx, alias.as_str(), room_id.as_str(), auth.user_id.as_str())
    })
    .await?;
    Ok(empty())
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`: local aliases only until
/// federation lands. `servers` lists this server first, then those of other members.
async fn get_alias(State(s): State<AppState>, Path(alias): Path<String>) -> Result<Json<Value>> {
    let alias = parse_alias(&alias)?;
    let not_found = || Error::not_found(format!("Room alias {alias} not found"));
    if alias.server_name() != s.server_name() {
        return Err(not_found());
    }
    let a = alias.to_string();
    let ours = s.server_name().to_string();
    let found =
        s.db.read(move |c| {
            let Some(room) = store::alias_room(c, &a)? else {
                return Ok(None);
            };
            let mut servers = vec![ours];
            for member in store::members_with(c, &room, "join")? {
                if let Ok(u) = ruma::UserId::parse(&member)
                    && !servers.iter().any(|s| s == u.server_name().as_str())
                {
                    servers.push(u.server_name().to_string());
                }
            }
            Ok(Some((room, servers)))
        })
        .await?;
    let (room_id, servers) = found.ok_or_else(not_found)?;
    Ok(Json(json!({"room_id": room_id, "servers": servers})))
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`: by the alias's creator or a
/// member who may send `m.room.canonical_alias`. The alias also leaves the room's
/// canonical alias event when the user may change it, as the spec recommends.
async fn delete_alias(State(s): State<AppState>, auth: Auth, Path(alias): Path<String>) -> Result<Response> {
    let alias = parse_alias(&alias)?;
    let services = s.clone();
    s.db.write(move |tx| {
        let Some((room, creator)) = store::alias_entry(tx, alias.as_str())? else {
            return Err(Error::not_found(format!("Room alias {alias} not found")));
        };
        if creator != auth.user_id.as_str() && !may_send_state(tx, &room, &auth.user_id, ALIAS_EVENT)? {
            return Err(Error::forbidden("You may not delete this alias"));
        }
        store::delete_alias(tx, alias.as_str())?;
        let Some(mut content) = store::state_content(tx, &room, ALIAS_EVENT, "")? else {
            return Ok(());
        };
        let Some(obj) = content.as_object_mut() else {
            return Ok(());
        };
        let mut changed = false;
        if obj.get("alias").and_then(Value::as_str) == Some(alias.as_str()) {
            obj.remove("alias");
            changed = true;
        }
        if let Some(Value::Array(alt)) = obj.get_mut("alt_aliases") {
            let before = alt.len();
            alt.retain(|a| a.as_str() != Some(alias.as_str()));
            changed |= alt.len() != before;
        }
        if !changed {
            return Ok(());
        }
        let room_id = parse_room_id(&room)?;
        let ev = NewEvent::state(ALIAS_EVENT, "", content);
        match append_local(tx, &services.identity, &room_id, &auth.user_id, ev, None) {
            // Authorisation fails before anything is written, so the deletion stands.
            Err(e) if e.errcode == "M_FORBIDDEN" => Ok(()),
            r => r.map(|_| ()),
        }
    })
    .await?;
    Ok(empty())
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`
async fn get_visibility(State(s): State<AppState>, Path(room_id): Path<String>) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let published =
        s.db.read(move |c| store::is_published(c, room_id.as_str()))
            .await?;
    let published = published.ok_or_else(|| Error::not_found("Room not found"))?;
    Ok(Json(
        json!({"visibility": if published { "public" } else { "private" }}),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct VisibilityBody {
    visibility: Option<String>,
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`: by members who may send
/// `m.room.canonical_alias` (Synapse's rule for changing the room list).
async fn put_visibility(
    State(s): State<AppState>,
    auth: Auth,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<VisibilityBody>,
) -> Result<Response> {
    let room_id = parse_room_id(&room_id)?;
    let publish = match body.visibility.as_deref() {
        None | Some("public") => true,
        Some("private") => false,
        Some(v) => return Err(Error::invalid_param(format!("unknown visibility {v}"))),
    };
    s.db.write(move |tx| {
        let room = room_id.as_str();
        if store::is_published(tx, room)?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        if !may_send_state(tx, room, &auth.user_id, ALIAS_EVENT)? {
            return Err(Error::forbidden(
                "You may not change this room's visibility in the directory",
            ));
        }
        store::set_published(tx, room, publish)
    })
    .await?;
    Ok(empty())
}
