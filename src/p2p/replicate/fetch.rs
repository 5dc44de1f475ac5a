//! The repair path: storing events whose prev or auth events this node lacks, by fetching
//! those from the server that sent them and then from any server with a joined member.
//!
//! Each round ingests everything pending in one write transaction, in dependency order,
//! then asks a server for what is still missing: `get_missing` (a page of up to
//! [`PAGE`] events walking prev_events back to our forward extremities) and `get_events`
//! for auth events off that walk. A gap longer than [`MAX_WALK`] events, or reaching back
//! past the oldest event this node holds (history from before it joined), is jumped with
//! the state at its edge ([`super::jump`]) instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use ruma::canonical_json::CanonicalJsonValue;
use ruma::room_version_rules::RoomVersionRules;
use ruma::{OwnedEventId, OwnedServerName, ServerName, UserId};

use crate::Result;
use crate::p2p::Counters;
use crate::p2p::wire::{MAX_EVENT_IDS, MAX_EVENTS_PER_RESPONSE, Request, Response, WirePdu};
use crate::pdu::event_id_of;
use crate::room::ingest::{Outcome, ingest};
use crate::room::{room_version, rules_for};
use crate::services::AppState;
use crate::storage::anti_entropy::max_depth;
use crate::storage::events::forward_extremities;
use crate::storage::replication::{held, horizon};
use crate::storage::rooms::members_with;

/// Events asked for per `get_missing`.
pub const PAGE: u32 = MAX_EVENTS_PER_RESPONSE as u32;
/// Events one repair fetches by walking before it jumps the rest of the gap.
pub const MAX_WALK: usize = 10 * PAGE as usize;
/// Fetch rounds per repair: each must bring new events, so this only bounds pathologies.
const MAX_ROUNDS: usize = 64;
/// Jumps per repair: one per side of a fork is plenty.
const MAX_JUMP_ROUNDS: usize = 2;
/// Longest wait for another task storing an event this one needs, before fetching it.
pub const SETTLE: Duration = Duration::from_secs(2);

/// What became of an event a repair was asked to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Stored now or before (possibly soft-failed).
    Held,
    Rejected,
    /// What it lacks could not be fetched.
    Unresolved,
}

/// Servers to ask about a room: `first`, then every other server with a joined member,
/// never this node.
pub async fn candidates(
    s: &AppState,
    room_id: &str,
    first: Option<OwnedServerName>,
) -> Result<Vec<OwnedServerName>> {
    let room = room_id.to_owned();
    let joined = s.db.read(move |c| members_with(c, &room, "join")).await?;
    let mut out: Vec<OwnedServerName> = first.into_iter().collect();
    for user in joined {
        if let Ok(u) = UserId::parse(user.as_str())
            && !out.iter().any(|s| s == u.server_name())
        {
            out.push(u.server_name().to_owned());
        }
    }
    out.retain(|name| name != s.server_name());
    Ok(out)
}

/// `(event ID, PDU)` of a PDU claimed to be of `room_id`, or `None` when it is not one.
pub fn keyed(rules: &RoomVersionRules, room_id: &str, mut pdu: WirePdu) -> Option<(String, WirePdu)> {
    pdu.remove("event_id");
    pdu.remove("unsigned");
    match pdu.get("room_id") {
        Some(CanonicalJsonValue::String(r)) if r == room_id => {}
        // A v12 create event has no room_id; ingest checks it is this room's.
        None if matches!(pdu.get("type"), Some(CanonicalJsonValue::String(t)) if t == "m.room.create") => {}
        _ => return None,
    }
    let id = event_id_of(&pdu, rules).ok()?;
    Some((id.to_string(), pdu))
}

fn id_list(pdu: &WirePdu, key: &str) -> Vec<String> {
    match pdu.get(key) {
        Some(CanonicalJsonValue::Array(items)) => items
            .iter()
            .filter_map(|v| match v {
                CanonicalJsonValue::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn depth(pdu: &WirePdu) -> i64 {
    match pdu.get("depth") {
        Some(CanonicalJsonValue::Integer(i)) => i64::from(*i),
        _ => 0,
    }
}

/// Orders events so each comes after those of its prev and auth events that are in the
/// set (Kahn's algorithm, lowest depth first among the ready). Events on a cycle, which
/// only a forger produces, go last.
pub fn dependency_order(items: Vec<(String, WirePdu)>) -> Vec<(String, WirePdu)> {
    let index: HashMap<String, usize> = items
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id.clone(), i))
        .collect();
    let mut waiting_on = vec![0usize; items.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); items.len()];
    for (i, (_, pdu)) in items.iter().enumerate() {
        let deps: HashSet<usize> = id_list(pdu, "prev_events")
            .iter()
            .chain(&id_list(pdu, "auth_events"))
            .filter_map(|d| index.get(d).copied())
            .filter(|d| *d != i)
            .collect();
        waiting_on[i] = deps.len();
        for d in deps {
            children[d].push(i);
        }
    }
    let mut ready: BTreeMap<(i64, usize), ()> = BTreeMap::new();
    for (i, (_, pdu)) in items.iter().enumerate() {
        if waiting_on[i] == 0 {
            ready.insert((depth(pdu), i), ());
        }
    }
    let mut order = Vec::with_capacity(items.len());
    let mut placed = vec![false; items.len()];
    while let Some(((_, i), ())) = ready.pop_first() {
        order.push(i);
        placed[i] = true;
        for &c in &children[i] {
            waiting_on[c] -= 1;
            if waiting_on[c] == 0 {
                ready.insert((depth(&items[c].1), c), ());
            }
        }
    }
    let mut rest: Vec<usize> = (0..items.len()).filter(|i| !placed[*i]).collect();
    rest.sort_by_key(|i| depth(&items[*i].1));
    order.extend(rest);
    let mut slots: Vec<Option<(String, WirePdu)>> = items.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Ingests a batch in one write transaction, in dependency order. Should the transaction
/// fail (an internal error on some event), each event is retried in its own, so one bad
/// event cannot block the rest.
async fn ingest_batch(
    s: &AppState,
    batch: Vec<(String, WirePdu)>,
) -> Result<Vec<(String, WirePdu, Outcome)>> {
    let batch = dependency_order(batch);
    let id = s.identity.clone();
    let all = batch.clone();
    let whole =
        s.db.write(move |tx| {
            let mut out = Vec::with_capacity(all.len());
            for (event_id, pdu) in all {
                let o = ingest(tx, &id, pdu.clone())?;
                out.push((event_id, pdu, o));
            }
            Ok(out)
        })
        .await;
    let e = match whole {
        Ok(out) => return Ok(out),
        Err(e) => e,
    };
    tracing::warn!(error = %e, "batch ingest failed; retrying event by event");
    let mut out = Vec::with_capacity(batch.len());
    for (event_id, pdu) in batch {
        let id = s.identity.clone();
        let p = pdu.clone();
        let o = match s.db.write(move |tx| ingest(tx, &id, p)).await {
            Ok(o) => o,
            Err(e) => Outcome::Rejected {
                event_id: OwnedEventId::try_from(event_id.as_str()).ok(),
                reason: format!("could not be stored: {}", e.message),
            },
        };
        out.push((event_id, pdu, o));
    }
    Ok(out)
}

/// Stores `wanted` (already keyed by [`keyed`]) and whatever they lack, fetched from
/// `servers` in order. Returns the fate of each wanted event.
pub async fn ingest_with_repair(
    s: &AppState,
    room_id: &str,
    rules: &RoomVersionRules,
    wanted: Vec<(String, WirePdu)>,
    servers: &[OwnedServerName],
) -> Result<HashMap<String, Fate>> {
    let mut fates: HashMap<String, Fate> = wanted
        .iter()
        .map(|(id, _)| (id.clone(), Fate::Unresolved))
        .collect();
    let mut seen: HashSet<String> = fates.keys().cloned().collect();
    let mut pending: HashMap<String, WirePdu> = wanted.into_iter().collect();
    let room = room_id.to_owned();
    let horizon = s.db.read(move |c| horizon(c, &room)).await?.unwrap_or(0);
    let (mut walked, mut jumps) = (0usize, 0usize);
    for _ in 0..MAX_ROUNDS {
        let outcomes = ingest_batch(s, pending.drain().collect()).await?;
        let mut lacking: HashMap<String, Vec<String>> = HashMap::new();
        for (event_id, pdu, outcome) in outcomes {
            match outcome {
                Outcome::Stored { .. } | Outcome::AlreadyKnown(_) => {
                    if let Some(f) = fates.get_mut(&event_id) {
                        *f = Fate::Held;
                    }
                }
                Outcome::Rejected { reason, .. } => {
                    Counters::bump(&s.p2p.counters.rejected_events);
                    tracing::warn!(%event_id, room_id, %reason, "rejected an event from a peer");
                    if let Some(f) = fates.get_mut(&event_id) {
                        *f = Fate::Rejected;
                    }
                }
                Outcome::Missing(ids) => {
                    lacking.insert(event_id.clone(), ids.iter().map(|i| i.to_string()).collect());
                    pending.insert(event_id, pdu);
                }
            }
        }
        let needed: HashSet<String> = lacking
            .values()
            .flatten()
            .filter(|id| !pending.contains_key(*id))
            .cloned()
            .collect();
        if pending.is_empty() || needed.is_empty() {
            break;
        }
        // Parents another task is storing (the burst's gossip) are waited for, not fetched.
        let needed_list: Vec<String> = needed.iter().cloned().collect();
        if s.p2p.inflight.settle(&needed_list, SETTLE).await && !holds_none(s, needed_list).await? {
            continue;
        }
        // The events at the edge of what we have: those lacking something not pending.
        let frontier: Vec<String> = lacking
            .iter()
            .filter(|(_, l)| l.iter().any(|id| needed.contains(id)))
            .map(|(id, _)| id.clone())
            .collect();
        // Edge events lacking history from before this node's horizon, or any after a
        // long walk, are jumped: walking there would replay old history as new.
        let edge: Vec<(String, WirePdu)> = frontier
            .iter()
            .filter_map(|id| Some((id.clone(), pending.get(id)?.clone())))
            .filter(|(_, p)| walked >= MAX_WALK || depth(p) <= horizon)
            .collect();
        if !edge.is_empty() && jumps < MAX_JUMP_ROUNDS {
            jumps += 1;
            if super::jump::jump(s, room_id, rules, &edge, servers).await {
                continue;
            }
        }
        if walked >= MAX_WALK {
            break;
        }
        let got = fetch_round(s, room_id, rules, &frontier, &needed, servers).await;
        let mut new = 0;
        for (id, pdu) in got {
            if seen.insert(id.clone()) {
                pending.insert(id, pdu);
                new += 1;
            }
        }
        if new == 0 {
            tracing::info!(
                room_id,
                missing = needed.len(),
                "no peer could supply the missing events"
            );
            break;
        }
        walked += new;
    }
    Ok(fates)
}

/// Asks each server in turn for what the frontier lacks; returns the first useful answer.
async fn fetch_round(
    s: &AppState,
    room_id: &str,
    rules: &RoomVersionRules,
    frontier: &[String],
    needed: &HashSet<String>,
    servers: &[OwnedServerName],
) -> Vec<(String, WirePdu)> {
    let room = room_id.to_owned();
    let mut earliest =
        s.db.read(move |c| forward_extremities(c, &room))
            .await
            .unwrap_or_default();
    earliest.truncate(MAX_EVENT_IDS);
    let latest: Vec<String> = frontier.iter().take(MAX_EVENT_IDS).cloned().collect();
    for server in servers {
        let mut got = Vec::new();
        let req = Request::GetMissing {
            room_id: room_id.to_owned(),
            earliest_events: earliest.clone(),
            latest_events: latest.clone(),
            limit: PAGE,
        };
        if let Some(pdus) = ask(s, server, req).await {
            got.extend(pdus.into_iter().filter_map(|p| keyed(rules, room_id, p)));
        }
        // Auth events off the prev_events walk, and parents past a full page.
        let returned: HashSet<&String> = got.iter().map(|(id, _)| id).collect();
        let rest: Vec<String> = needed
            .iter()
            .filter(|id| !returned.contains(*id))
            .take(MAX_EVENT_IDS)
            .cloned()
            .collect();
        if !rest.is_empty()
            && let Some(pdus) = fetch_events(s, server, rest).await
        {
            got.extend(pdus.into_iter().filter_map(|p| keyed(rules, room_id, p)));
        }
        if !got.is_empty() {
            return got;
        }
    }
    Vec::new()
}

/// `get_events` for `ids` (at most [`MAX_EVENT_IDS`]) from one server.
pub async fn fetch_events(s: &AppState, server: &ServerName, ids: Vec<String>) -> Option<Vec<WirePdu>> {
    ask(s, server, Request::GetEvents { event_ids: ids }).await
}

async fn ask(s: &AppState, server: &ServerName, req: Request) -> Option<Vec<WirePdu>> {
    match s.p2p.request(server, req).await {
        Ok(Response::Events { pdus }) => Some(pdus),
        Ok(Response::Error { errcode, error }) => {
            tracing::debug!(%server, errcode, error, "peer refused a fetch");
            None
        }
        Ok(_) => {
            tracing::debug!(%server, "peer answered a fetch with the wrong response");
            None
        }
        Err(e) => {
            tracing::debug!(%server, error = %e.message, "fetch failed");
            None
        }
    }
}

/// Fetches heads a peer announced (from it first), and whatever they lack. Heads more
/// than a page of depth above this node's are reached by set reconciliation with the
/// server that has them ([`crate::p2p::reconcile::reconcile_room`]): walking prev_events a
/// page per round trip would be slow, and past [`MAX_WALK`] would jump over history.
pub async fn fetch_heads(s: &AppState, origin: &ServerName, room_id: &str, heads: Vec<String>) -> Result<()> {
    // Several peers' heads name the same gap at once (a node back from sleep hears from
    // each neighbour): one fetch at a time per room, each after what the last one brought.
    let _turn = s.p2p.inflight.room_turn(room_id).await;
    s.p2p.inflight.settle(&heads, SETTLE).await;
    let ids = heads.clone();
    let have = s.db.read(move |c| held(c, &ids)).await?;
    let heads: Vec<String> = heads.into_iter().filter(|id| !have.contains(id)).collect();
    if heads.is_empty() {
        return Ok(());
    }
    let room = room_id.to_owned();
    let rules = rules_for(&s.db.read(move |c| room_version(c, &room)).await?)?;
    let servers = candidates(s, room_id, Some(origin.to_owned())).await?;
    for server in &servers {
        let Some(pdus) = fetch_events(s, server, heads.clone()).await else {
            continue;
        };
        let wanted: Vec<(String, WirePdu)> = pdus
            .into_iter()
            .filter_map(|p| keyed(&rules, room_id, p))
            .filter(|(id, _)| heads.contains(id))
            .collect();
        if !wanted.is_empty() {
            let top = wanted.iter().map(|(_, p)| depth(p)).max().unwrap_or(0);
            let room = room_id.to_owned();
            let mine = s.db.read(move |c| max_depth(c, &room)).await?;
            if top.saturating_sub(mine) > i64::from(PAGE)
                && let Err(e) = crate::p2p::reconcile::reconcile_room(s, server, room_id).await
            {
                tracing::info!(%server, room_id, error = %e.message, "reconciling a long gap failed; walking it");
            }
            ingest_with_repair(s, room_id, &rules, wanted, &servers).await?;
            return Ok(());
        }
    }
    Ok(())
}

/// Whether the node holds none of `ids`.
async fn holds_none(s: &AppState, ids: Vec<String>) -> Result<bool> {
    Ok(s.db.read(move |c| held(c, &ids)).await?.is_empty())
}

/// Whether the node holds every one of `ids`.
pub async fn holds_all(s: &AppState, ids: &[String]) -> Result<bool> {
    let mut ids = ids.to_vec();
    ids.sort();
    ids.dedup();
    let n = ids.len();
    let have = s.db.read(move |c| held(c, &ids)).await?;
    Ok(have.len() == n)
}

pub(super) fn forbidden(s: &AppState) -> Response {
    Counters::bump(&s.p2p.counters.refused_requests);
    Response::error("M_FORBIDDEN", "this server has no member in that room")
}
