//! Request extractors that turn bad input into the spec's errors: the access token
//! (`M_MISSING_TOKEN`/`M_UNKNOWN_TOKEN`) and JSON bodies (`M_NOT_JSON`/`M_BAD_JSON`/`M_TOO_LARGE`).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use rusqlite::Connection;
use serde::de::DeserializeOwned;

use crate::services::AppState;
use crate::storage::accounts::token_owner;
use crate::{Error, Result};

/// The authenticated user and device of a request.
#[derive(Debug, Clone)]
pub struct Auth {
    pub user_id: ruma::OwnedUserId,
    pub device_id: String,
}

/// The access token from `Authorization: Bearer` or the deprecated `access_token` query
/// parameter.
pub fn access_token(parts: &Parts) -> Option<String> {
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION)
        && let Ok(v) = h.to_str()
        && let Some(t) = v.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_owned());
    }
    let axum::extract::Query(q) =
        axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(&parts.uri).ok()?;
    q.get("access_token").cloned()
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token = Token::from_request_parts(parts, state).await?;
        state.db.read(move |c| token.owner(c)).await
    }
}

/// An access token present in the request (else `M_MISSING_TOKEN`) but not yet looked up.
/// A handler that writes looks it up on the writer's thread just before its write
/// (`Db::write_checked(|c| token.owner(c), …)`), which saves the request a trip to a
/// reader's thread; an unknown token still fails before any transaction begins.
pub struct Token(String);

impl Token {
    /// The user and device the token belongs to, or `M_UNKNOWN_TOKEN`.
    pub fn owner(&self, conn: &Connection) -> Result<Auth> {
        let (user, device) = token_owner(conn, &self.0)?.ok_or_else(Error::unknown_token)?;
        let user_id = ruma::UserId::parse(&user).map_err(|_| Error::internal("bad stored user ID"))?;
        Ok(Auth {
            user_id,
            device_id: device,
        })
    }
}

impl FromRequestParts<AppState> for Token {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self> {
        access_token(parts).map(Token).ok_or_else(Error::missing_token)
    }
}

/// A JSON body: not JSON → `M_NOT_JSON`, wrong shape → `M_BAD_JSON`, over the configured
/// size → `M_TOO_LARGE`. An empty body reads as `{}`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self> {
        let limit = state.config.max_request_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| Error::too_large(format!("request body is over {limit} bytes")))?;
        let value: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes).map_err(|e| Error::not_json(format!("body is not JSON: {e}")))?
        };
        if !value.is_object() {
            return Err(Error::bad_json("body must be a JSON object"));
        }
        serde_json::from_value(value)
            .map(JsonBody)
            .map_err(|e| Error::bad_json(e.to_string()))
    }
}
