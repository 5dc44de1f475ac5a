//! Gossip in: events and ephemeral data received on a room's topic.
//!
//! A PDU is accepted (forwarded) only once it is stored: its claimed ID must be its
//! reference hash, and it passes every receipt check in [`crate::room::ingest`], with
//! whatever it lacks fetched first. An EDU is applied only when its user belongs to the
//! node that published it (gossipsub signs each message with the publisher's key, which is
//! its server name) and is joined to the room.

use std::time::Duration;

use libp2p::PeerId;
use ruma::canonical_json::CanonicalJsonValue;
use ruma::signatures::Verified;
use ruma::{EventId, OwnedServerName, UserId};

use super::fetch::{Fate, SETTLE, candidates, ingest_with_repair, keyed};
use crate::p2p::Verdict;
use crate::p2p::wire::{EDU_PREFIX, Edu, WirePdu, decode_edu, decode_gossip};
use crate::p2p::{Counters, peer_id};
use crate::room::ingest::verify;
use crate::room::{room_version, rules_for};
use crate::services::AppState;
use crate::storage::replication::{has_local_member, held};
use crate::storage::rooms::membership;
use crate::storage::user_data::{UNTHREADED, put_receipt};

/// How long a remote user is shown typing: federation typing carries no timeout, so the
/// spec's receivers time it out themselves; clients repeat typing well within this.
pub const REMOTE_TYPING: Duration = Duration::from_secs(30);
/// Longest thread ID accepted in a receipt.
const MAX_THREAD_ID: usize = 255;

/// What a gossip frame is, before any lookup.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Pdu {
        claimed_id: String,
        room_id: String,
        pdu: WirePdu,
    },
    Edu(Edu),
    /// A create event: it starts a room, so no node can already be in it to care.
    Create,
    Malformed,
}

/// Splits and decodes a gossip frame, with the size limits of [`crate::p2p::wire`].
pub fn parse(data: &[u8]) -> Frame {
    if data.starts_with(EDU_PREFIX) {
        return decode_edu(data).map_or(Frame::Malformed, Frame::Edu);
    }
    let Some((claimed_id, mut pdu)) = decode_gossip(data) else {
        return Frame::Malformed;
    };
    pdu.remove("event_id");
    pdu.remove("unsigned");
    match (pdu.get("room_id"), pdu.get("type")) {
        (_, Some(CanonicalJsonValue::String(t))) if t == "m.room.create" => Frame::Create,
        (Some(CanonicalJsonValue::String(r)), _) => Frame::Pdu {
            claimed_id,
            room_id: r.clone(),
            pdu,
        },
        _ => Frame::Malformed,
    }
}

/// A gossip message published by `source`; returns whether to accept (forward) it.
pub async fn on_gossip(s: &AppState, source: PeerId, data: Vec<u8>) -> Verdict {
    let source_server = peer_id::server_name_of(&source);
    match parse(&data) {
        Frame::Malformed => {
            Counters::bump(&s.p2p.counters.bad_frames);
            tracing::debug!(%source, "malformed gossip frame");
            Verdict::Reject
        }
        Frame::Create => Verdict::Ignore,
        Frame::Edu(edu) => match source_server {
            Some(origin) => on_edu(s, origin, edu).await,
            None => Verdict::Reject,
        },
        Frame::Pdu {
            claimed_id,
            room_id,
            pdu,
        } => on_pdu(s, source_server, claimed_id, room_id, pdu).await,
    }
}

async fn on_pdu(
    s: &AppState,
    source: Option<OwnedServerName>,
    claimed_id: String,
    room_id: String,
    pdu: WirePdu,
) -> Verdict {
    let (room, id) = (room_id.clone(), claimed_id.clone());
    let known =
        s.db.read(move |c| {
            if !has_local_member(c, &room)? {
                return Ok(None);
            }
            let have = !held(c, std::slice::from_ref(&id))?.is_empty();
            Ok(Some((room_version(c, &room)?, have)))
        })
        .await;
    let version = match known {
        // Not our room: not an attack, just not for us.
        Ok(None) | Err(_) => return Verdict::Ignore,
        Ok(Some((_, true))) => return Verdict::Accept,
        Ok(Some((v, false))) => v,
    };
    let Ok(rules) = rules_for(&version) else {
        return Verdict::Ignore;
    };
    let Some(event) = keyed(&rules, &room_id, pdu).filter(|(id, _)| *id == claimed_id) else {
        Counters::bump(&s.p2p.counters.rejected_events);
        tracing::warn!(
            claimed_id,
            ?source,
            "gossiped event's ID does not match its content"
        );
        return Verdict::Reject;
    };
    // Signatures first, before taking the write lock: forgeries cost no transaction.
    let intact = match verify(&event.1, &rules) {
        Ok(v) => v == Verified::All,
        Err(reason) => {
            Counters::bump(&s.p2p.counters.rejected_events);
            tracing::warn!(claimed_id, ?source, reason, "rejected a gossiped event");
            return Verdict::Reject;
        }
    };
    if !intact {
        // The spec keeps such an event in its redacted form; its altered bytes go no further.
        Counters::bump(&s.p2p.counters.rejected_events);
        tracing::warn!(
            claimed_id,
            ?source,
            "gossiped event does not match its content hash"
        );
    }
    s.p2p.inflight.gossip_arrived(&room_id);
    // Another copy of this event (gossip brings several) is being stored: its verdict
    // is this one's.
    let Some(_claim) = s.p2p.inflight.claim(&claimed_id) else {
        s.p2p
            .inflight
            .settle(std::slice::from_ref(&claimed_id), SETTLE)
            .await;
        let id = claimed_id.clone();
        return match s.db.read(move |c| held(c, &[id])).await {
            Ok(h) if !h.is_empty() && intact => Verdict::Accept,
            _ => Verdict::Ignore,
        };
    };
    let servers = candidates(s, &room_id, source).await.unwrap_or_default();
    match ingest_with_repair(s, &room_id, &rules, vec![event], &servers).await {
        Ok(fates) => match fates.get(&claimed_id) {
            Some(Fate::Held) if intact => Verdict::Accept,
            Some(Fate::Held | Fate::Rejected) => Verdict::Reject,
            _ => Verdict::Ignore,
        },
        Err(e) => {
            tracing::warn!(claimed_id, error = %e.message, "could not ingest a gossiped event");
            Verdict::Ignore
        }
    }
}

/// Whether an EDU about `user_id` may come from `origin`: the user must be one of its own.
pub fn edu_origin_ok(edu: &Edu, origin: &ruma::ServerName) -> bool {
    let user = match edu {
        Edu::Typing { user_id, .. } | Edu::Receipt { user_id, .. } => user_id,
    };
    UserId::parse(user.as_str()).is_ok_and(|u| u.server_name() == origin)
}

async fn on_edu(s: &AppState, origin: OwnedServerName, edu: Edu) -> Verdict {
    if !edu_origin_ok(&edu, &origin) || origin == s.server_name() {
        tracing::warn!(%origin, "EDU about a user of another server");
        return Verdict::Reject;
    }
    let (room, user) = match &edu {
        Edu::Typing { room_id, user_id, .. } | Edu::Receipt { room_id, user_id, .. } => {
            (room_id.clone(), user_id.clone())
        }
    };
    let member =
        s.db.read(move |c| {
            Ok(has_local_member(c, &room)? && membership(c, &room, &user)?.as_deref() == Some("join"))
        })
        .await;
    if !matches!(member, Ok(true)) {
        return Verdict::Ignore;
    }
    match edu {
        Edu::Typing {
            room_id,
            user_id,
            typing,
            ..
        } => {
            s.typing.set(&room_id, &user_id, typing.then_some(REMOTE_TYPING));
            Verdict::Accept
        }
        Edu::Receipt {
            room_id,
            user_id,
            receipt_type,
            event_id,
            thread_id,
            ts,
        } => {
            // Private receipts never leave their node; anything else here is forged.
            let thread_ok = thread_id
                .as_ref()
                .is_none_or(|t| !t.is_empty() && t.len() <= MAX_THREAD_ID);
            if receipt_type != "m.read" || EventId::parse(&event_id).is_err() || !thread_ok {
                return Verdict::Reject;
            }
            let thread = thread_id.unwrap_or_else(|| UNTHREADED.to_owned());
            let ts = i64::try_from(ts).unwrap_or(i64::MAX);
            s.db.write(move |tx| put_receipt(tx, &room_id, &user_id, "m.read", &thread, &event_id, ts))
                .await
                .map_or(Verdict::Ignore, |_| Verdict::Accept)
        }
    }
}
