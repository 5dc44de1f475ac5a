//! The client-facing flows that reach other nodes: joining a room through a resident node
//! (make_join → sign here → send_join → import) and inviting a user of another node
//! (build and sign here → the invitee's node countersigns → stored and gossiped here).

use axum::http::StatusCode;
use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
};
use serde_json::{Map, Value};

use crate::api::membership::member_content;
use crate::identity::key_map_for;
use crate::p2p::wire::{Request, Response, WirePdu, encode_gossip};
use crate::pdu::event_id_of;
use crate::room::import::{JoinAnswer, import_join};
use crate::room::ingest::{Outcome, ingest};
use crate::room::{NewEvent, SUPPORTED_VERSIONS, authorize, build_unsigned, room_version, rules_for, sign};
use crate::services::AppState;
use crate::storage::events::get_pdu;
use crate::storage::state::current_state_id;
use crate::{Error, Result};

/// Most nodes one join tries.
pub const MAX_CANDIDATES: usize = 8;
/// The state sent with an invite so the invitee can show the room: what its `/sync` shows
/// invitees, plus the inviter's member event.
use crate::api::sync::rooms::STRIPPED_TYPES as INVITE_STATE_TYPES;
/// Longest profile field taken from another node.
const MAX_PROFILE_FIELD: usize = 1024;
/// How long an invite waits for the invitee's node: for its profile (optional), then for
/// its countersignature. A node that is away is only found out by timeouts (a QUIC dial,
/// a DHT lookup, a retry), and the inviter's client should not wait those out: past this
/// the invite is sent later instead.
const PROFILE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
const INVITE_WAIT: std::time::Duration = std::time::Duration::from_secs(8);

/// A peer's answer that is not the one asked for, as a client error.
fn refusal(server: &ServerName, res: Response) -> Error {
    match res {
        Response::Error { errcode, error } => {
            let msg = format!("{server} refused: {error}");
            match errcode.as_str() {
                "M_FORBIDDEN" => Error::forbidden(msg),
                "M_NOT_FOUND" => Error::not_found(msg),
                "M_INCOMPATIBLE_ROOM_VERSION" => {
                    Error::new(StatusCode::BAD_REQUEST, "M_INCOMPATIBLE_ROOM_VERSION", msg)
                }
                _ => Error::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", msg),
            }
        }
        _ => Error::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("{server} answered with the wrong message"),
        ),
    }
}

/// Joins `user` to `target` (a room ID, or an alias of the node asked: that node resolves
/// it) through the first of `servers` that lets them in; returns the room ID. The client
/// hears the most telling failure: a refusal over an unreachable node.
pub async fn join_remote(
    s: &AppState,
    user: &UserId,
    target: &str,
    servers: &[OwnedServerName],
    reason: Option<String>,
) -> Result<OwnedRoomId> {
    let mut last: Option<Error> = None;
    // Names that are not node keys (e.g. a homeserver's domain) cannot be dialled.
    let candidates = servers
        .iter()
        .filter(|c| ***c != *s.server_name() && crate::p2p::peer_id::peer_id_of(c).is_some());
    for server in candidates.take(MAX_CANDIDATES) {
        match join_through(s, server, user, target, reason.clone()).await {
            Ok(room) => {
                s.p2p.subscribe(room.as_str()).await;
                return Ok(room);
            }
            Err(e) => {
                tracing::info!(%server, target, error = %e.message, "join through a peer failed");
                if last.as_ref().is_none_or(|l| !l.status.is_client_error()) {
                    last = Some(e);
                }
            }
        }
    }
    Err(last
        .unwrap_or_else(|| Error::not_found("No server known to be in the room; give server_name or via")))
}

async fn join_through(
    s: &AppState,
    server: &ServerName,
    user: &UserId,
    target: &str,
    reason: Option<String>,
) -> Result<OwnedRoomId> {
    let req = Request::MakeJoin {
        room_id: target.to_owned(),
        user_id: user.to_string(),
        supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
    };
    let (version, template) = match s.p2p.request(server, req).await? {
        Response::MakeJoin { room_version, event } => (room_version, event),
        other => return Err(refusal(server, other)),
    };
    let version = RoomVersionId::try_from(version.as_str()).map_err(|_| {
        Error::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            "bad room version in template",
        )
    })?;
    let rules = rules_for(&version)?;
    let u = user.to_string();
    let profile =
        s.db.read(move |c| crate::storage::accounts::profile(c, &u))
            .await?
            .unwrap_or_default();
    let (room_id, unsigned) = own_join(template, user, target, profile, reason)?;
    let pdu = sign(&s.identity, &rules, unsigned)?;
    let req = Request::SendJoin {
        room_id: room_id.to_string(),
        event: pdu.json.clone(),
    };
    let (event, state, auth_chain) = match s.p2p.request(server, req).await? {
        Response::SendJoin {
            event,
            state,
            auth_chain,
        } => (event, state, auth_chain),
        other => return Err(refusal(server, other)),
    };
    if same_event_id(&event, &rules).as_ref() != Some(&pdu.event_id) {
        return Err(refusal(
            server,
            Response::error("M_UNKNOWN", "it stored another join"),
        ));
    }
    let identity = s.identity.clone();
    let answer = JoinAnswer {
        room_version: version,
        event,
        state,
        auth_chain,
    };
    s.db.write(move |tx| import_join(tx, &identity, answer)).await?;
    Ok(room_id)
}

/// The event ID of a PDU a peer returned, its unsigned data aside.
fn same_event_id(
    json: &WirePdu,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> Option<ruma::OwnedEventId> {
    let mut json = json.clone();
    json.remove("event_id");
    json.remove("unsigned");
    event_id_of(&json, rules).ok()
}

/// The join this node signs, from a resident's template: only the DAG fields and the
/// restricted-join authoriser are taken from it; the content is this user's own.
pub(crate) fn own_join(
    template: Value,
    user: &UserId,
    target: &str,
    profile: (Option<String>, Option<String>),
    reason: Option<String>,
) -> Result<(OwnedRoomId, Value)> {
    let bad = |m: &str| {
        Error::new(
            StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("bad join template: {m}"),
        )
    };
    let Value::Object(t) = template else {
        return Err(bad("not an object"));
    };
    let field = |k: &str| t.get(k).and_then(Value::as_str);
    if field("type") != Some("m.room.member")
        || field("sender") != Some(user.as_str())
        || field("state_key") != Some(user.as_str())
    {
        return Err(bad("not a join for this user"));
    }
    let room_id = RoomId::parse(field("room_id").unwrap_or_default()).map_err(|_| bad("no room ID"))?;
    if !target.starts_with('#') && room_id.as_str() != target {
        return Err(bad("another room"));
    }
    let mut content = member_content("join", profile, reason);
    if let Some(via) = t
        .get("content")
        .and_then(|c| c.get("join_authorised_via_users_server"))
        .and_then(Value::as_str)
    {
        content.insert("join_authorised_via_users_server".into(), via.into());
    }
    let mut ev = Map::new();
    for k in [
        "auth_events",
        "prev_events",
        "depth",
        "room_id",
        "sender",
        "state_key",
        "type",
    ] {
        let v = t.get(k).cloned().ok_or_else(|| bad(&format!("no {k}")))?;
        ev.insert(k.into(), v);
    }
    ev.insert("content".into(), Value::Object(content));
    ev.insert(
        "origin_server_ts".into(),
        u64::from(MilliSecondsSinceUnixEpoch::now().get()).into(),
    );
    Ok((room_id, Value::Object(ev)))
}

/// A user's displayname and avatar as their node reports them; nothing when it does not
/// answer (the member event then goes without).
async fn remote_profile(s: &AppState, user: &UserId) -> (Option<String>, Option<String>) {
    let req = Request::Profile {
        user_id: user.to_string(),
        field: None,
    };
    let asked = tokio::time::timeout(PROFILE_WAIT, s.p2p.request(user.server_name(), req)).await;
    let Ok(Ok(Response::Body(body))) = asked else {
        return (None, None);
    };
    let take = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .filter(|v| v.len() <= MAX_PROFILE_FIELD)
            .map(str::to_owned)
    };
    (take("displayname"), take("avatar_url"))
}

/// Invites `target`, a user of another node, to a room `inviter` is in: the invite is
/// signed and authorised here, countersigned by the invitee's node, then stored through
/// the receipt checks and gossiped. Returns the invite's event ID.
pub async fn invite_remote(
    s: &AppState,
    inviter: &UserId,
    room: &RoomId,
    target: &UserId,
    reason: Option<String>,
) -> Result<String> {
    let content = member_content("invite", remote_profile(s, target).await, reason);
    let ev = NewEvent::state("m.room.member", target.as_str(), Value::Object(content));
    let (identity, room_id, sender) = (s.identity.clone(), room.to_owned(), inviter.to_owned());
    let (version, pdu, invite_room_state) =
        s.db.read(move |c| {
            let version = room_version(c, room_id.as_str())?;
            let (rules, unsigned) = build_unsigned(c, &room_id, &sender, ev)?;
            let pdu = sign(&identity, &rules, unsigned)?;
            authorize(c, &rules, &pdu)?;
            let sender_member = ("m.room.member", sender.as_str());
            let keys = INVITE_STATE_TYPES.iter().map(|t| (*t, "")).chain([sender_member]);
            let mut state = Vec::new();
            for (kind, key) in keys {
                if let Some(id) = current_state_id(c, room_id.as_str(), kind, key)?
                    && let Some(p) = get_pdu(c, &id)
                {
                    state.push(serde_json::to_value(&p.json)?);
                }
            }
            Ok((version, pdu, state))
        })
        .await?;
    let rules = rules_for(&version)?;
    let server = target.server_name();
    let req = Request::Invite {
        room_version: version.to_string(),
        event: pdu.json.clone(),
        invite_room_state,
    };
    let asked = tokio::time::timeout(INVITE_WAIT, s.p2p.request(server, req.clone()))
        .await
        .unwrap_or_else(|_| Err(Error::internal(format!("{server} did not answer in time"))));
    let signed = match asked {
        Ok(Response::Invite { event }) => event,
        Ok(other) => return Err(refusal(server, other)),
        // The invitee's node is away. An invite needs only its sender's signature (the
        // server-server spec's signature checks), so it enters the room now and reaches
        // that node later, through the outbox or a mailbox.
        Err(e) if crate::storage::outbox::reachable(server.as_str()) => {
            tracing::info!(%server, error = %e.message, "invitee's node unreachable; the invite waits for it");
            return invite_later(s, room, server, pdu.json, req).await;
        }
        Err(e) => return Err(e),
    };
    if same_event_id(&signed, &rules).as_ref() != Some(&pdu.event_id) || !signed_by(&signed, server, &rules) {
        return Err(refusal(
            server,
            Response::error("M_UNKNOWN", "the invite came back altered or unsigned"),
        ));
    }
    let identity = s.identity.clone();
    let json = signed.clone();
    let event_id =
        s.db.write(move |tx| stored_invite(ingest(tx, &identity, json)?))
            .await?;
    s.p2p
        .publish(room.as_str(), encode_gossip(event_id.as_str(), &signed))
        .await;
    Ok(event_id.to_string())
}

/// The event ID of an invite this node stored, or why it could not.
fn stored_invite(outcome: Outcome) -> Result<ruma::OwnedEventId> {
    match outcome {
        Outcome::Stored {
            soft_failed: false,
            event_id,
        }
        | Outcome::AlreadyKnown(event_id) => Ok(event_id),
        Outcome::Stored { .. } => Err(Error::forbidden(
            "the room changed; the invite is no longer allowed",
        )),
        Outcome::Missing(_) => Err(Error::internal("the invite cites events this node lost")),
        Outcome::Rejected { reason, .. } => Err(Error::forbidden(reason)),
    }
}

/// Stores and gossips an invite signed only here, and queues the `invite` request for the
/// invitee's node in the same transaction (`storage::outbox::KIND_INVITE`), which the
/// outbox sends and mailboxes carry once that node is seen again.
async fn invite_later(
    s: &AppState,
    room: &RoomId,
    server: &ServerName,
    event: WirePdu,
    req: Request,
) -> Result<String> {
    let mut body = serde_json::to_value(&req)?;
    let body = body
        .get_mut("invite")
        .map(Value::take)
        .ok_or_else(|| Error::internal("not an invite request"))?;
    let (identity, dest, json) = (s.identity.clone(), server.to_string(), event.clone());
    let event_id =
        s.db.write(move |tx| {
            let id = stored_invite(ingest(tx, &identity, json)?)?;
            crate::storage::outbox::enqueue_message(tx, &dest, crate::storage::outbox::KIND_INVITE, &body)?;
            Ok(id)
        })
        .await?;
    s.p2p
        .publish(room.as_str(), encode_gossip(event_id.as_str(), &event))
        .await;
    Ok(event_id.to_string())
}

/// Whether `server` signed the event (signatures cover the redacted form).
pub(crate) fn signed_by(
    json: &CanonicalJsonObject,
    server: &ServerName,
    rules: &ruma::room_version_rules::RoomVersionRules,
) -> bool {
    let Some(CanonicalJsonValue::Object(sigs)) = json.get("signatures") else {
        return false;
    };
    let Some(CanonicalJsonValue::Object(keys)) = sigs.get(server.as_str()) else {
        return false;
    };
    let map = key_map_for([(server, keys.keys().cloned().collect())]);
    let Ok(mut redacted) = ruma::canonical_json::redact(json.clone(), &rules.redaction, None) else {
        return false;
    };
    // verify_json checks every signer it finds: leave only the one asked about.
    let only = CanonicalJsonObject::from([(server.to_string(), CanonicalJsonValue::Object(keys.clone()))]);
    redacted.insert("signatures".into(), CanonicalJsonValue::Object(only));
    ruma::signatures::verify_json(&map, &redacted).is_ok()
}
