//! The serving side of the repair path: `/meshserver/events/1`, `/meshserver/missing/1`,
//! `/meshserver/state/1` and `/meshserver/backfill/1`. Each answers only a server that may
//! read the room ([`super::view`]), and bounds what it reads and returns.

use std::collections::{BinaryHeap, HashMap, HashSet};

use ruma::ServerName;
use ruma::room_version_rules::RoomVersionRules;
use rusqlite::Connection;

use super::view::ServerView;
use crate::p2p::Counters;
use crate::p2p::wire::{
    MAX_EVENT_IDS, MAX_EVENTS_PER_RESPONSE, MAX_RESPONSE_BYTES, Request, Response, WirePdu,
};
use crate::room::resolve::{auth_chain, resolve_after};
use crate::room::{room_version, rules_for};
use crate::services::AppState;
use crate::storage::events::{StoredEvent, get_event, get_events, state_group_of};
use crate::storage::replication::{dag_node, prev_events};
use crate::storage::state::load_group;
use crate::{Error, Result};

/// Room for the response envelope under the frame cap.
const BODY_BUDGET: usize = MAX_RESPONSE_BYTES as usize - 64 * 1024;

/// Why a request was not answered.
pub(super) enum Refusal {
    Forbidden,
    Other(Error),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Other(e)
    }
}

pub(super) type Answer = std::result::Result<Response, Refusal>;

/// Answers the four repair requests from `origin`; any other request is not ours.
pub async fn serve(s: &AppState, origin: &ServerName, req: Request) -> Response {
    let origin = origin.to_owned();
    let res =
        s.db.read(move |conn| {
            Ok(match req {
                Request::GetEvents { event_ids } => events(conn, &origin, &event_ids),
                Request::GetMissing {
                    room_id,
                    earliest_events,
                    latest_events,
                    limit,
                } => missing(conn, &origin, &room_id, &earliest_events, &latest_events, limit),
                Request::State {
                    room_id,
                    event_id,
                    ids_only,
                } => state(conn, &origin, &room_id, &event_id, ids_only),
                Request::Backfill { room_id, from, limit } => backfill(conn, &origin, &room_id, &from, limit),
                _ => Ok(Response::error("M_UNRECOGNIZED", "not a replication request")),
            })
        })
        .await;
    match res {
        Ok(Ok(r)) => r,
        Ok(Err(Refusal::Forbidden)) => {
            Counters::bump(&s.p2p.counters.refused_requests);
            Response::error("M_FORBIDDEN", "this server may not read that room")
        }
        Ok(Err(Refusal::Other(e))) | Err(e) => e.into(),
    }
}

/// A room as one origin may read it.
struct RoomRead<'c> {
    view: ServerView<'c>,
    rules: RoomVersionRules,
}

impl<'c> RoomRead<'c> {
    fn open(conn: &'c Connection, room_id: &str, origin: &ServerName) -> std::result::Result<Self, Refusal> {
        let view = ServerView::open(conn, room_id, origin)?.ok_or(Refusal::Forbidden)?;
        let rules = rules_for(&room_version(conn, room_id)?)?;
        Ok(Self { view, rules })
    }

    /// The event as this origin is given it: whole if it may see it, else redacted.
    fn wire_form(&mut self, ev: &StoredEvent) -> Result<Option<WirePdu>> {
        let mut json = ev.pdu.json.clone();
        // Unsigned data is ours (e.g. `redacted_because`), not part of the PDU.
        json.remove("unsigned");
        if self.view.can_see(ev)? {
            return Ok(Some(json));
        }
        Ok(ruma::canonical_json::redact(json, &self.rules.redaction, None).ok())
    }
}

fn bounded(ids: &[String], what: &str) -> std::result::Result<(), Refusal> {
    if ids.len() > MAX_EVENT_IDS {
        return Err(Error::invalid_param(format!("at most {MAX_EVENT_IDS} {what}")).into());
    }
    Ok(())
}

/// Wire forms of `evs` in order, stopping before the frame budget is exceeded.
fn wire_forms<'e>(
    read: &mut RoomRead<'_>,
    evs: impl Iterator<Item = &'e StoredEvent>,
    size: &mut usize,
) -> std::result::Result<Vec<WirePdu>, Refusal> {
    let mut out = Vec::new();
    for ev in evs {
        let Some(pdu) = read.wire_form(ev)? else {
            continue;
        };
        *size += serde_json::to_vec(&pdu).map_err(Error::from)?.len() + 1;
        if *size > BODY_BUDGET {
            break;
        }
        out.push(pdu);
    }
    Ok(out)
}

/// `/meshserver/events/1`: the events of `event_ids` this node holds.
pub(super) fn events(conn: &Connection, origin: &ServerName, event_ids: &[String]) -> Answer {
    bounded(event_ids, "event IDs")?;
    let mut evs = get_events(conn, event_ids)?;
    let mut servable = Vec::with_capacity(evs.len());
    for ev in &evs {
        servable.push(dag_node(conn, ev.pdu.event_id.as_str())?.is_some_and(|n| n.servable));
    }
    let mut keep = servable.into_iter();
    evs.retain(|_| keep.next().unwrap_or(false));
    let mut rooms: HashMap<String, RoomRead<'_>> = HashMap::new();
    let mut pdus = Vec::with_capacity(evs.len());
    let mut size = 0usize;
    for ev in &evs {
        let room = ev.pdu.room.as_str();
        if !rooms.contains_key(room) {
            rooms.insert(room.to_owned(), RoomRead::open(conn, room, origin)?);
        }
        let Some(read) = rooms.get_mut(room) else {
            continue;
        };
        if let Some(pdu) = read.wire_form(ev)? {
            size += serde_json::to_vec(&pdu).map_err(Error::from)?.len() + 1;
            if size > BODY_BUDGET {
                break;
            }
            pdus.push(pdu);
        }
    }
    Ok(Response::Events { pdus })
}

/// Walks prev_events backwards from `start`, highest depth first, collecting up to `limit`
/// events of `room_id` not in `stop`. `start` itself is collected only if `include_start`.
pub(super) fn walk(
    conn: &Connection,
    room_id: &str,
    start: &[String],
    include_start: bool,
    stop: &HashSet<String>,
    limit: usize,
) -> Result<Vec<String>> {
    let mut seen: HashSet<String> = stop.clone();
    let mut heap = BinaryHeap::new();
    let push = |id: String, seen: &mut HashSet<String>, heap: &mut BinaryHeap<_>| -> Result<()> {
        if seen.insert(id.clone())
            && let Some(n) = dag_node(conn, &id)?
            && n.room_id == room_id
            && n.servable
        {
            heap.push((n.depth, n.stream, id));
        }
        Ok(())
    };
    for id in start {
        if include_start {
            push(id.clone(), &mut seen, &mut heap)?;
        } else if dag_node(conn, id)?.is_some_and(|n| n.room_id == room_id) {
            seen.insert(id.clone());
            for p in prev_events(conn, id)? {
                push(p, &mut seen, &mut heap)?;
            }
        }
    }
    let mut out = Vec::new();
    while out.len() < limit {
        let Some((_, _, id)) = heap.pop() else {
            break;
        };
        for p in prev_events(conn, &id)? {
            push(p, &mut seen, &mut heap)?;
        }
        out.push(id);
    }
    Ok(out)
}

fn page_limit(limit: u32) -> usize {
    (limit as usize).min(MAX_EVENTS_PER_RESPONSE)
}

/// `/meshserver/missing/1`: the events between `earliest` and `latest` (exclusive), oldest
/// first. When over the limit or the frame budget, the newest are kept: the requester asks
/// again from the oldest it got.
pub(super) fn missing(
    conn: &Connection,
    origin: &ServerName,
    room_id: &str,
    earliest: &[String],
    latest: &[String],
    limit: u32,
) -> Answer {
    bounded(earliest, "earliest events")?;
    bounded(latest, "latest events")?;
    let mut read = RoomRead::open(conn, room_id, origin)?;
    let stop: HashSet<String> = earliest.iter().cloned().collect();
    let ids = walk(conn, room_id, latest, false, &stop, page_limit(limit))?;
    // Stream order is a topological order here: an event is stored after its parents.
    let evs = get_events(conn, &ids)?;
    let mut pdus = wire_forms(&mut read, evs.iter().rev(), &mut 0)?;
    pdus.reverse();
    Ok(Response::Events { pdus })
}

/// `/meshserver/backfill/1`: up to `limit` events from `from` backwards, newest first.
pub(super) fn backfill(
    conn: &Connection,
    origin: &ServerName,
    room_id: &str,
    from: &[String],
    limit: u32,
) -> Answer {
    bounded(from, "starting events")?;
    let mut read = RoomRead::open(conn, room_id, origin)?;
    let ids = walk(conn, room_id, from, true, &HashSet::new(), page_limit(limit))?;
    let evs = get_events(conn, &ids)?;
    let pdus = wire_forms(&mut read, evs.iter().rev(), &mut 0)?;
    Ok(Response::Events { pdus })
}

/// `/meshserver/state/1`: the state before `event_id` and its auth chain, whole or as IDs.
pub(super) fn state(
    conn: &Connection,
    origin: &ServerName,
    room_id: &str,
    event_id: &str,
    ids_only: bool,
) -> Answer {
    let mut read = RoomRead::open(conn, room_id, origin)?;
    let ev = match get_event(conn, event_id)? {
        Some(ev) if ev.pdu.room.as_str() == room_id => ev,
        _ => return Err(Error::not_found(format!("{event_id} is not an event of {room_id}")).into()),
    };
    if !read.view.can_see(&ev)? {
        return Err(Refusal::Forbidden);
    }
    // A message's (or soft-failed event's) group is the state before it; a state event's
    // group is the state after it, so resolve its parents' instead.
    let state = if ev.pdu.state_key.is_some() && !ev.soft_failed {
        resolve_after(conn, &read.rules, &ev.pdu.prev_events)?.state
    } else {
        match state_group_of(conn, event_id)? {
            Some(g) => load_group(conn, g)?,
            None => return Err(Error::not_found("no state for that event").into()),
        }
    };
    let mut state_ids: Vec<String> = state.into_values().collect();
    state_ids.sort();
    let chain = auth_chain(
        conn,
        state_ids
            .iter()
            .filter_map(|id| ruma::OwnedEventId::try_from(id.as_str()).ok()),
    );
    let mut chain_ids: Vec<String> = chain.into_iter().map(|id| id.to_string()).collect();
    chain_ids.sort();
    if ids_only {
        return Ok(Response::State {
            pdus: Vec::new(),
            pdu_ids: state_ids,
            auth_chain: Vec::new(),
            auth_chain_ids: chain_ids,
        });
    }
    let state_evs = get_events(conn, &state_ids)?;
    let chain_evs = get_events(conn, &chain_ids)?;
    let mut size = 0;
    let pdus = wire_forms(&mut read, state_evs.iter(), &mut size)?;
    let auth_chain = wire_forms(&mut read, chain_evs.iter(), &mut size)?;
    if size > BODY_BUDGET {
        // A partial state would be wrong, not just short.
        return Err(Error::too_large("the state is over the frame limit; ask with ids_only").into());
    }
    Ok(Response::State {
        pdus,
        pdu_ids: Vec::new(),
        auth_chain,
        auth_chain_ids: Vec::new(),
    })
}
