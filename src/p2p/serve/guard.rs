//! Checks shared by the small protocols' handlers: whose users a request may name. A peer
//! asks only about this node's users and speaks only for its own; anything else is a
//! refusal, counted in `refused_requests`.

use ruma::{OwnedUserId, ServerName, UserId};

use crate::p2p::Counters;
use crate::p2p::wire::Response;
use crate::services::AppState;
use crate::{Error, Result};

fn parse(user_id: &str) -> Result<OwnedUserId> {
    UserId::parse(user_id).map_err(|_| Error::invalid_param(format!("invalid user ID {user_id:?}")))
}

/// Counts and builds a refusal.
pub fn refuse(s: &AppState, message: impl Into<String>) -> Error {
    Counters::bump(&s.p2p.counters.refused_requests);
    Error::forbidden(message)
}

/// `user_id`, if it is one of this node's users.
pub fn local_user(s: &AppState, user_id: &str) -> Result<OwnedUserId> {
    let uid = parse(user_id)?;
    if uid.server_name() != s.server_name() {
        return Err(refuse(s, format!("{uid} is not a user of this node")));
    }
    Ok(uid)
}

/// `user_id`, if it belongs to `origin`, the server the connection proved.
pub fn origin_user(s: &AppState, origin: &ServerName, user_id: &str) -> Result<OwnedUserId> {
    let uid = parse(user_id)?;
    if uid.server_name() != origin {
        return Err(refuse(s, format!("{origin} cannot speak for {uid}")));
    }
    Ok(uid)
}

/// The response for a handler's result.
pub fn answer(r: Result<Response>) -> Response {
    r.unwrap_or_else(Response::from)
}
