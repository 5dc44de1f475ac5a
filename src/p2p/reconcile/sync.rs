//! Catching up on one room from one peer: a short gap by the repair path's walk, a long
//! one by range-based set reconciliation ([`super::set`]) and a bulk fetch, ingested in key
//! order — each event after those of lower depth, so its ancestors come first — through
//! the repair path (`replicate::ingest_with_repair`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use ruma::room_version_rules::RoomVersionRules;
use ruma::{RoomVersionId, ServerName};

use super::set::{Initiator, Set, respond};
use crate::p2p::replicate::{candidates, fetch_events, fetch_heads, holds_all, ingest_with_repair, keyed};
use crate::p2p::wire::{
    Key, MAX_EVENT_IDS, MAX_EVENTS_PER_RESPONSE, MAX_RANGES, MAX_RESPONSE_BYTES, Range, Request, Response,
    RoomHeads, WirePdu,
};
use crate::room::ingest::prechecked;
use crate::room::{room_version, rules_for};
use crate::services::AppState;
use crate::storage::anti_entropy::{ids_in_range, max_depth, room_keys};
use crate::storage::replication::{horizon, server_members};
use crate::{Error, Result};

/// A gap of at most this many levels of depth is walked; a longer one is reconciled.
const WALK_DEPTH: i64 = MAX_EVENTS_PER_RESPONSE as i64;
/// Rounds one session may take, whatever the peer answers (honest ones need far fewer:
/// [`super::set::round_bound`]).
const MAX_SESSION_ROUNDS: usize = 64;
/// A `get_range` answer stops adding events past this many bytes: with at most 100
/// events of at most 64 KiB per step, it stays under the 16 MiB frame.
const RANGE_BUDGET: usize = MAX_RESPONSE_BYTES as usize / 2;

/// What one reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CatchUp {
    pub rounds: usize,
    /// Events fetched: by ID (`need`) and by whole ranges (`absent`).
    pub by_id: usize,
    pub by_range: usize,
    /// Time spent storing what was fetched (the rest is the network and the peer).
    pub ingest_ms: u64,
}

/// A `get_range` page: its events with their keys, in key order.
type Page = Vec<(Key, (String, WirePdu))>;

/// Workers that verify a page before it is stored: the writer is one thread, these are the
/// others (signature checks dominate per-event cost, see BENCHMARKS.md).
const VERIFIERS: usize = 2;

/// Absent ranges whose first page is requested before the ranges before them are done.
const RANGES_AHEAD: usize = 2;

/// A `get_range` page from `lo`, requested in the background and, once it arrives, keyed
/// and prechecked (receipt checks 1–2, [`prechecked`]) off the writer. `None` when the
/// peer answered with something other than events.
fn request_range(
    s: &AppState,
    peer: &ServerName,
    room: (&str, &RoomVersionId, &RoomVersionRules),
    lo: Key,
    hi: Option<Key>,
) -> tokio::task::JoinHandle<Result<Option<Page>>> {
    let (s, peer) = (s.clone(), peer.to_owned());
    let (room_id, version, rules) = (room.0.to_owned(), room.1.clone(), room.2.clone());
    let req = Request::GetRange {
        room_id: room_id.clone(),
        lo,
        hi,
        limit: MAX_EVENTS_PER_RESPONSE as u32,
    };
    tokio::spawn(async move {
        let Response::Events { pdus } = s.p2p.request(&peer, req).await? else {
            return Ok(None);
        };
        let per = pdus.len().div_ceil(VERIFIERS).max(1);
        let mut pdus = pdus.into_iter();
        let mut workers = Vec::with_capacity(VERIFIERS);
        loop {
            let chunk: Vec<WirePdu> = pdus.by_ref().take(per).collect();
            if chunk.is_empty() {
                break;
            }
            let (room_id, version, rules) = (room_id.clone(), version.clone(), rules.clone());
            workers.push(tokio::task::spawn_blocking(move || {
                let page: Page = chunk
                    .into_iter()
                    .filter_map(|p| keyed_by_key(&rules, &room_id, p))
                    .collect();
                for (_, (_, pdu)) in &page {
                    prechecked::precheck(&version, &rules, pdu);
                }
                page
            }));
        }
        let mut page = Page::new();
        for w in workers {
            page.extend(w.await.map_err(|_| Error::internal("verifying a page failed"))?);
        }
        page.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Some(page))
    })
}

/// One lock per (node, room) being reconciled. Several paths start a session (the
/// connection's extremities exchange, heads from a neighbour); run together they would
/// fetch the same ranges twice, so the later one waits and then fetches only what is still
/// lacking. Held by the session alone (never across a walk), so it cannot close a cycle
/// with the repair path's per-room turn. Keyed by the node too: tests and benchmarks run
/// several nodes in one process.
type RoomLocks = HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;
static CATCHING_UP: LazyLock<Mutex<RoomLocks>> = LazyLock::new(Mutex::default);

fn room_lock(s: &AppState, room_id: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = CATCHING_UP.lock().unwrap_or_else(|e| e.into_inner());
    // Locks nobody holds or waits for are dropped, so the map stays as small as the rooms
    // being caught up at once.
    locks.retain(|_, l| Arc::strong_count(l) > 1);
    locks
        .entry((s.server_name().to_string(), room_id.to_owned()))
        .or_default()
        .clone()
}

/// Catches up on `theirs.room_id` from `peer`, whose heads are `theirs`.
pub async fn catch_up(s: &AppState, peer: &ServerName, theirs: RoomHeads) {
    let room = theirs.room_id.clone();
    let r = room.clone();
    let mine = s.db.read(move |c| max_depth(c, &r)).await.unwrap_or(0);
    let unknown = theirs.extremities;
    if theirs.depth.saturating_sub(mine) <= WALK_DEPTH {
        let walked = fetch_heads(s, peer, &room, unknown.clone()).await;
        if walked.is_ok() && holds_all(s, &unknown).await.unwrap_or(false) {
            return;
        }
    }
    match reconcile_room(s, peer, &room).await {
        Ok(stats) => tracing::info!(%peer, room, ?stats, "reconciled a room"),
        Err(e) => tracing::info!(%peer, room, error = %e.message, "reconciling a room failed"),
    }
}

/// Reconciles the room's event set with `peer` and stores what this node lacks.
pub async fn reconcile_room(s: &AppState, peer: &ServerName, room_id: &str) -> Result<CatchUp> {
    // After a session that ran meanwhile, this one finds (next to) nothing left to fetch.
    let lock = room_lock(s, room_id);
    let _one_at_a_time = lock.lock().await;
    let room = room_id.to_owned();
    let (lower, keys, version) =
        s.db.read(move |c| {
            let lower = horizon(c, &room)?.unwrap_or(0);
            Ok((lower, room_keys(c, &room, lower)?, room_version(c, &room)?))
        })
        .await?;
    let rules = rules_for(&version)?;
    let mut session_key = [0u8; 32];
    rand::fill(&mut session_key);
    let mut init = Initiator::new(Set::new(&session_key, keys), lower);
    while let Some(ranges) = init.next_request() {
        if init.rounds > MAX_SESSION_ROUNDS {
            return Err(Error::internal("reconciliation took too many rounds"));
        }
        let req = Request::Reconcile {
            room_id: room_id.to_owned(),
            key: hex::encode(session_key),
            lower,
            ranges,
        };
        match s.p2p.request(peer, req).await? {
            Response::Ranges { ranges } => init
                .on_response(ranges)
                .map_err(|e| Error::internal(format!("peer's reconcile answer refused: {}", e.0)))?,
            Response::Error { errcode, error } => return Err(Error::internal(format!("{errcode}: {error}"))),
            _ => return Err(Error::internal("unexpected answer to reconcile")),
        }
    }
    let mut stats = CatchUp {
        rounds: init.rounds,
        ..CatchUp::default()
    };
    let servers = candidates(s, room_id, Some(peer.to_owned())).await?;
    // Events named by ID: few (leaf ranges), fetched first and merged in by key.
    let mut by_id: Vec<(Key, (String, WirePdu))> = Vec::new();
    for chunk in init.need.chunks(MAX_EVENT_IDS) {
        if let Some(pdus) = fetch_events(s, peer, chunk.to_vec()).await {
            by_id.extend(pdus.into_iter().filter_map(|p| keyed_by_key(&rules, room_id, p)));
        }
    }
    by_id.sort_by(|a, b| a.0.cmp(&b.0));
    stats.by_id = by_id.len();
    let mut by_id: VecDeque<_> = by_id.into();
    let mut absent = init.absent;
    absent.sort();
    let room = (room_id, &version, &rules);
    // The first pages of the next ranges are asked for ahead, so a range's closing (empty)
    // page and the next range's first travel together rather than one after the other.
    let mut ranges = absent.into_iter();
    let mut ahead = VecDeque::with_capacity(RANGES_AHEAD);
    loop {
        while ahead.len() < RANGES_AHEAD
            && let Some((lo, hi)) = ranges.next()
        {
            ahead.push_back((hi.clone(), request_range(s, peer, room, lo, hi)));
        }
        let Some((hi, first)) = ahead.pop_front() else {
            break;
        };
        let mut pending = Some(first);
        while let Some(fetching) = pending.take() {
            let page = match fetching.await {
                Ok(Ok(Some(page))) => page,
                Ok(Err(e)) => return Err(e),
                _ => break,
            };
            let Some(last) = page.last().map(|(k, _)| k.clone()) else {
                break;
            };
            stats.by_range += page.len();
            // The next page travels (and is verified) while this one is stored. It starts
            // at the key right after `last`: no event ID contains NUL.
            let next = (last.0, format!("{}\u{0}", last.1));
            pending = Some(request_range(s, peer, room, next, hi.clone()));
            // Events by ID that sort before this page go first.
            let mut batch = Vec::with_capacity(page.len());
            while by_id.front().is_some_and(|(k, _)| *k < page[0].0) {
                batch.extend(by_id.pop_front().map(|(_, e)| e));
            }
            batch.extend(page.into_iter().map(|(_, e)| e));
            let t = Instant::now();
            ingest_with_repair(s, room_id, &rules, batch, &servers).await?;
            stats.ingest_ms += t.elapsed().as_millis() as u64;
        }
    }
    let rest: Vec<(String, WirePdu)> = by_id.into_iter().map(|(_, e)| e).collect();
    for batch in rest.chunks(MAX_EVENTS_PER_RESPONSE) {
        ingest_with_repair(s, room_id, &rules, batch.to_vec(), &servers).await?;
    }
    Ok(stats)
}

/// `keyed`, with the event's set key.
fn keyed_by_key(rules: &RoomVersionRules, room_id: &str, pdu: WirePdu) -> Option<(Key, (String, WirePdu))> {
    let depth = match pdu.get("depth") {
        Some(ruma::canonical_json::CanonicalJsonValue::Integer(i)) => i64::from(*i),
        _ => 0,
    };
    let (id, pdu) = keyed(rules, room_id, pdu)?;
    Some(((depth, id.clone()), (id, pdu)))
}

fn forbidden(s: &AppState) -> Response {
    crate::p2p::Counters::bump(&s.p2p.counters.refused_requests);
    Response::error("M_FORBIDDEN", "this server has no member in that room")
}

/// Whether `origin` has a joined member in the room as this node sees it.
async fn joined(s: &AppState, origin: &ServerName, room_id: &str) -> Result<bool> {
    let (room, server) = (room_id.to_owned(), origin.to_string());
    s.db.read(move |c| {
        Ok(server_members(c, &room, &server)?
            .iter()
            .any(|(_, m)| m == "join"))
    })
    .await
}

/// `/meshserver/reconcile/1` `reconcile`: one round, answered from the room's events of
/// depth at least `lower`, to a server with a joined member.
pub async fn serve_round(
    s: &AppState,
    origin: &ServerName,
    room_id: &str,
    key: &str,
    lower: i64,
    ranges: Vec<Range>,
) -> Response {
    let session_key: Option<[u8; 32]> = hex::decode(key).ok().and_then(|k| k.try_into().ok());
    let Some(session_key) = session_key else {
        return Error::invalid_param("key is not 32 bytes of hex").into();
    };
    if ranges.len() > MAX_RANGES || ranges.iter().any(|r| r.ids.is_some()) {
        return Error::invalid_param(format!("at most {MAX_RANGES} ranges, each with a fingerprint")).into();
    }
    match joined(s, origin, room_id).await {
        Ok(true) => {}
        Ok(false) => return forbidden(s),
        Err(e) => return e.into(),
    }
    let room = room_id.to_owned();
    let keys = match s.db.read(move |c| room_keys(c, &room, lower)).await {
        Ok(k) => k,
        Err(e) => return e.into(),
    };
    // Hashing a large room's IDs is CPU work: off the reactor.
    let answer = tokio::task::spawn_blocking(move || respond(&Set::new(&session_key, keys), &ranges)).await;
    match answer {
        Ok(ranges) => Response::Ranges { ranges },
        Err(_) => Error::internal("reconcile failed").into(),
    }
}

/// `/meshserver/reconcile/1` `get_range`: the room's events with keys in `[lo, hi)`,
/// ascending, at most `min(limit, 1000)`, as history visibility lets `origin` read them.
pub async fn serve_range(
    s: &AppState,
    origin: &ServerName,
    room_id: &str,
    lo: Key,
    hi: Option<Key>,
    limit: u32,
) -> Response {
    match joined(s, origin, room_id).await {
        Ok(true) => {}
        Ok(false) => return forbidden(s),
        Err(e) => return e.into(),
    }
    let room = room_id.to_owned();
    let n = (limit as usize).min(MAX_EVENTS_PER_RESPONSE);
    let ids = match s
        .db
        .read(move |c| ids_in_range(c, &room, &lo, hi.as_ref(), n))
        .await
    {
        Ok(ids) => ids,
        Err(e) => return e.into(),
    };
    let mut pdus = Vec::with_capacity(ids.len());
    let mut size = 0usize;
    for chunk in ids.chunks(MAX_EVENT_IDS) {
        // The events path applies the server's view (whole or redacted) and refusals.
        match crate::p2p::replicate::serve(
            s,
            origin,
            Request::GetEvents {
                event_ids: chunk.to_vec(),
            },
        )
        .await
        {
            Response::Events { pdus: got } => {
                size += got
                    .iter()
                    .map(|p| serde_json::to_vec(p).map_or(0, |v| v.len()))
                    .sum::<usize>();
                pdus.extend(got);
            }
            other => return other,
        }
        if size > RANGE_BUDGET {
            break;
        }
    }
    Response::Events { pdus }
}
