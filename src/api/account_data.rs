//! Account data, global (`/user/{userId}/account_data/{type}`) and per room
//! (`/user/{userId}/rooms/{roomId}/account_data/{type}`), and room tags
//! (`/user/{userId}/rooms/{roomId}/tags`), which are the room account data `m.tag`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::extract::{Auth, JsonBody};
use super::{client, empty};
use crate::services::AppState;
use crate::storage::user_data::{self as store, GLOBAL};
use crate::{Error, Result};

pub fn add(r: Router<AppState>) -> Router<AppState> {
    let r = client(
        r,
        "/user/{user_id}/account_data/{kind}",
        get(get_global).put(put_global),
    );
    let r = client(
        r,
        "/user/{user_id}/rooms/{room_id}/account_data/{kind}",
        get(get_room).put(put_room),
    );
    let r = client(r, "/user/{user_id}/rooms/{room_id}/tags", get(get_tags));
    client(
        r,
        "/user/{user_id}/rooms/{room_id}/tags/{tag}",
        put(put_tag).delete(delete_tag),
    )
}

/// Account data types the server maintains itself; clients get 405 for writing them.
const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

/// The spec's limit on a tag name.
const MAX_TAG_BYTES: usize = 255;

/// Endpoints under `/user/{userId}` and for one's own typing/presence act only for the
/// caller: anyone else is `M_FORBIDDEN`.
pub(crate) fn ensure_self(auth: &Auth, user_id: &str, what: &str) -> Result<()> {
    if auth.user_id.as_str() == user_id {
        Ok(())
    } else {
        Err(Error::forbidden(format!("Cannot {what} for other users")))
    }
}

/// A room ID from a path; a malformed one is `M_INVALID_PARAM`.
pub(crate) fn parse_room_id(room_id: &str) -> Result<ruma::OwnedRoomId> {
    ruma::RoomId::parse(room_id)
        .map_err(|_| Error::invalid_param(format!("{room_id} is not a valid room ID")))
}

fn ensure_client_writable(kind: &str) -> Result<()> {
    if SERVER_MANAGED.contains(&kind) {
        return Err(Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("Cannot set {kind} through this API"),
        ));
    }
    Ok(())
}

async fn read_data(s: &AppState, user_id: String, room_id: String, kind: String) -> Result<Json<Value>> {
    let content =
        s.db.read(move |c| store::account_data(c, &user_id, &room_id, &kind))
            .await?;
    content
        .map(Json)
        .ok_or_else(|| Error::not_found("Account data not found"))
}

async fn write_data(
    s: &AppState,
    user_id: String,
    room_id: String,
    kind: String,
    content: Value,
) -> Result<Response> {
    s.db.write(move |tx| store::put_account_data(tx, &user_id, &room_id, &kind, &content))
        .await?;
    Ok(empty())
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
async fn get_global(
    State(s): State<AppState>,
    auth: Auth,
    Path((user_id, kind)): Path<(String, String)>,
) -> Result<Json<Value>> {
    ensure_self(&auth, &user_id, "read account data")?;
    read_data(&s, user_id, GLOBAL.to_owned(), kind).await
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
async fn put_global(
    State(s): State<AppState>,
    auth: Auth,
    Path((user_id, kind)): Path<(String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> Result<Response> {
    ensure_self(&auth, &user_id, "add account data")?;
    ensure_client_writable(&kind)?;
    write_data(&s, user_id, GLOBAL.to_owned(), kind, content).await
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
async fn get_room(
    State(s): State<AppState>,
    auth: Auth,
    Path((user_id, room_id, kind)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    ensure_self(&auth, &user_id, "read account data")?;
    let room_id = parse_room_id(&room_id)?;
    read_data(&s, user_id, room_id.to_string(), kind).await
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
async fn put_room(
    State(s): State<AppState>,
    auth: Auth,
    Path((user_id, room_id, kind)): Path<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> Result<Response> {
    ensure_self(&auth, &user_id, "add account data")?;
    let room_id = parse_room_id(&room_id)?;
    ensure_client_writable(&kind)?;
    write_data(&s, user_id, room_id.to_string(), kind, content).await
}

/// The `tags` object of a room's `m.tag` content (empty when unset or malformed).
fn tags_of(content: Option<Value>) -> Map<String, Value> {
    match content {
        Some(Value::Object(mut c)) => match c.remove("tags") {
            Some(Value::Object(tags)) => tags,
            _ => Map::new(),
        },
        _ => Map::new(),
    }
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`
async fn get_tags(
    State(s): State<AppState>,
    auth: Auth,
    Path((user_id, room_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    ensure_self(&auth, &user_id, "read tags")?;
    let room_id = parse_room_id(&room_id)?.to_string();
    let content =
        s.db.read(move |c| store::account_data(c, &user_id, &room_id, "m.tag"))
            .await?;
    Ok(Json(json!({"tags": tags_of(content)})))
}

/// Checks a tag name and its body (`order`, if given, is a number from 0 to 1).
fn validate_tag(tag: &str, body: &Value) -> Result<()> {
    if tag.len() > MAX_TAG_BYTES {
        return Err(Error::invalid_param(format!(
            "tag name is over {MAX_TAG_BYTES} bytes"
        )));
    }
    match body.get("order") {
        None => Ok(()),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(o) if (0.0..=1.0).contains(&o) => Ok(()),
            _ => Err(Error::invalid_param("order must be between 0 and 1")),
        },
        Some(_) => Err(Error::bad_json("order must be a number")),
    }
}

/// Adds or removes (`body` None) one tag in a read-modify-write of `m.tag`, so concurrent
/// tag changes never lose each other.
async fn change_tag(
    s: &AppState,
    user_id: String,
    room_id: String,
    tag: String,
    body: Option<Value>,
) -> Result<Response> {
    s.db.write(move |tx| {
        let mut tags = tags_of(store::account_data(tx, &user_id, &room_id, "m.tag")?);
        let changed = match body {
            Some(b) => tags.insert(tag, b.clone()).as_ref() != Some(&b),
            None => tags.remove(&tag).is_some(),
        };
        if changed {
            store::put_account_data(tx, &user_id, &room_id, "m.tag", &json!({"tags": tags}))?;
        }
        Ok(())
    })
    .await?;
    Ok(empty())
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
async fn put_tag(
    State(s): State<AppState>,
    auth: Auth,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response> {
    ensure_self(&auth, &user_id, "add tags")?;
    let room_id = parse_room_id(&room_id)?.to_string();
    validate_tag(&tag, &body)?;
    change_tag(&s, user_id, room_id, tag, Some(body)).await
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
async fn delete_tag(
    State(s): State<AppState>,
    auth: Auth,
    Path((user_id, room_id, tag)): Path<(String, String, String)>,
) -> Result<Response> {
    ensure_self(&auth, &user_id, "remove tags")?;
    let room_id = parse_room_id(&room_id)?.to_string();
    change_tag(&s, user_id, room_id, tag, None).await
}
