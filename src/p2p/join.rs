//! Joining and inviting across nodes: the resident side of `/meshserver/join/1`
//! ([`resident`]), the invitee side of `/meshserver/invite/1` ([`invitee`]), and the
//! client-facing flows that call them ([`remote`]).
//!
//! A node joins a room through any node that is in it: that node hands out a template,
//! the joining node signs the join with its own key, the resident stores it through the
//! receipt checks and answers with the room state and auth chain, which the joining node
//! checks and stores ([`crate::room::import`]). The origin of every request is the server
//! name its connection proved; an event claiming a user of another server is refused.

pub mod invitee;
pub mod remote;
pub mod resident;

use ruma::room_version_rules::RoomVersionRules;
use ruma::{ServerName, UserId};
use rusqlite::Connection;

use super::Counters;
use super::wire::{Request, Response, WirePdu, encode_gossip};
use crate::identity::Identity;
use crate::room::current_group;
use crate::services::AppState;
use crate::storage::rooms as store;
use crate::{Error, Result};

/// Whether a local user is joined to a room this node holds: then its copy of the room
/// is live (gossip reaches it) and local joins and invites need no other node.
pub fn local_member_joined(conn: &Connection, identity: &Identity, room_id: &str) -> Result<bool> {
    if current_group(conn, room_id)?.is_none() {
        return Ok(false);
    }
    Ok(store::members_with(conn, room_id, "join")?
        .iter()
        .filter_map(|m| UserId::parse(m).ok())
        .any(|m| m.server_name() == identity.server_name()))
}

/// Adds this node's signature to an event another node made (an invite to a local user, a
/// restricted join a local user authorises).
fn countersign(identity: &Identity, event: &mut WirePdu, rules: &RoomVersionRules) -> Result<()> {
    ruma::signatures::sign_event(identity.server_name().as_str(), identity, event, &rules.redaction)
        .map_err(|e| Error::bad_json(e.to_string()))
}

/// Answers `make_join`, `send_join` and `invite` from `origin`.
pub async fn serve(s: &AppState, origin: &ServerName, req: Request) -> Response {
    let result = match req {
        Request::MakeJoin {
            room_id,
            user_id,
            supported_versions,
        } => {
            let (identity, origin) = (s.identity.clone(), origin.to_owned());
            s.db.read(move |c| {
                resident::make_join(c, &identity, &origin, &room_id, &user_id, &supported_versions)
            })
            .await
            .map(|(version, event)| Response::MakeJoin {
                room_version: version.to_string(),
                event,
            })
        }
        Request::SendJoin { room_id, event } => {
            let (identity, origin) = (s.identity.clone(), origin.to_owned());
            let answer =
                s.db.write(move |tx| resident::send_join(tx, &identity, &origin, &room_id, event))
                    .await;
            match answer {
                Ok(a) => {
                    // Members on other nodes learn of the join from gossip; the joining
                    // node is not subscribed yet and has it from this answer.
                    let frame = encode_gossip(a.event_id.as_str(), &a.event);
                    s.p2p.publish(a.room_id.as_str(), frame).await;
                    Ok(Response::SendJoin {
                        event: a.event,
                        state: a.state,
                        auth_chain: a.auth_chain,
                    })
                }
                Err(e) => Err(e),
            }
        }
        Request::Invite {
            room_version,
            event,
            invite_room_state,
        } => {
            let (identity, origin) = (s.identity.clone(), origin.to_owned());
            s.db.write(move |tx| {
                invitee::receive_invite(tx, &identity, &origin, &room_version, event, invite_room_state)
            })
            .await
            .map(|event| Response::Invite { event })
        }
        _ => Err(Error::unrecognized()),
    };
    result.unwrap_or_else(|e| {
        Counters::bump(&s.p2p.counters.refused_requests);
        tracing::info!(%origin, errcode = e.errcode, error = %e.message, "refused a join or invite request");
        Response::from(e)
    })
}
