//! Joins and invites that may need another node: which nodes to join through, whether this
//! node can serve a join itself, and turning down an invite to a room held elsewhere.

use axum::http::Uri;
use ruma::{OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, ServerName};

use super::{join_room, resolve_room};
use crate::api::extract::Auth;
use crate::api::room_events::parse_room_id;
use crate::p2p::join::local_member_joined;
use crate::p2p::join::remote::{MAX_CANDIDATES, join_remote};
use crate::services::AppState;
use crate::storage::events::{forward_extremities, get_pdu};
use crate::storage::rooms as store;
use crate::{Error, Result};

/// The `server_name` and `via` query parameters (each may repeat), in order; names that
/// do not parse are skipped.
pub(super) fn via_servers(uri: &Uri) -> Result<Vec<OwnedServerName>> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| Error::invalid_param(format!("bad query string: {e}")))?
        .0;
    Ok(pairs
        .into_iter()
        .filter(|(k, _)| k == "server_name" || k == "via")
        .filter_map(|(_, v)| ServerName::parse(v).ok())
        .take(MAX_CANDIDATES)
        .collect())
}

/// Joins `target` (a room ID or alias): here when this node is live in the room, else
/// through the nodes named by `via`, the alias, the room ID or a pending invite.
pub(super) async fn join(
    s: AppState,
    auth: Auth,
    target: &str,
    via: Vec<OwnedServerName>,
    reason: Option<String>,
) -> Result<OwnedRoomId> {
    if target.starts_with('#') {
        let alias = RoomAliasId::parse(target)
            .map_err(|_| Error::invalid_param(format!("invalid room alias {target}")))?;
        if alias.server_name() != s.server_name() {
            // The alias's node resolves it in make_join: no directory lookup needed.
            let servers: Vec<OwnedServerName> = std::iter::once(alias.server_name().to_owned())
                .chain(via)
                .collect();
            return join_remote(&s, &auth.user_id, target, &servers, reason).await;
        }
        let room = resolve_room(&s, target).await?;
        return join_room_id(s, auth, room, via, reason).await;
    }
    join_room_id(s, auth, parse_room_id(target)?, via, reason).await
}

async fn join_room_id(
    s: AppState,
    auth: Auth,
    room: OwnedRoomId,
    via: Vec<OwnedServerName>,
    reason: Option<String>,
) -> Result<OwnedRoomId> {
    let (identity, user, rid) = (s.identity.clone(), auth.user_id.clone(), room.clone());
    let (local, servers) =
        s.db.read(move |c| {
            let mut servers = via;
            if let Some(inviter) = pending_inviter(c, user.as_str(), rid.as_str())? {
                servers.push(inviter);
            }
            servers.extend(rid.server_name().map(ToOwned::to_owned));
            let mut seen = std::collections::HashSet::new();
            servers.retain(|sv| **sv != *identity.server_name() && seen.insert(sv.clone()));
            let held = !forward_extremities(c, rid.as_str())?.is_empty();
            // A room this node holds but no local user is in may be stale; a node named
            // to join through is then the better source.
            let local = held && (local_member_joined(c, &identity, rid.as_str())? || servers.is_empty());
            Ok((local, servers))
        })
        .await?;
    if local {
        join_room(s, auth, room.clone(), reason).await?;
        return Ok(room);
    }
    join_remote(&s, &auth.user_id, room.as_str(), &servers, reason).await
}

/// The node of whoever invited `user` to a room, if an invite is pending.
fn pending_inviter(conn: &rusqlite::Connection, user: &str, room: &str) -> Result<Option<OwnedServerName>> {
    let Some(m) = store::local_membership(conn, user, room)? else {
        return Ok(None);
    };
    if m.membership != "invite" {
        return Ok(None);
    }
    Ok(get_pdu(conn, &m.event_id).map(|p| p.sender.server_name().to_owned()))
}

/// Whether a room is held elsewhere: this node only has an invite to it.
pub(super) fn held_elsewhere(conn: &rusqlite::Connection, room: &RoomId) -> Result<bool> {
    Ok(crate::room::current_group(conn, room.as_str())?.is_none())
}
