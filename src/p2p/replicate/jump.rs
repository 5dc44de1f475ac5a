//! Jumping a gap too long to walk: for an event at the edge of what could be fetched, ask
//! for the room state before it and that state's auth chain (`/meshserver/state/1`),
//! store those as outliers — each checked as a join's answer is, by the receipt checks and
//! then against its own auth events — and store the event on that state. Its descendants
//! then ingest as usual, and state resolution merges the jump into the current state. The
//! events inside the gap stay unfetched; backfill can bring them.

use std::collections::HashMap;

use ruma::room_version_rules::RoomVersionRules;
use ruma::{OwnedServerName, RoomId, state_res};

use super::fetch::dependency_order;
use crate::identity::Identity;
use crate::p2p::Counters;
use crate::p2p::wire::{Request, Response, WirePdu};
use crate::pdu::Pdu;
use crate::room::import::{
    MAX_IMPORT_EVENTS, OUTLIER_AUTHORISED, authorised_by_auth_events, received_pdu, set_outlier,
};
use crate::room::ingest::check_against;
use crate::room::{Origin, persist};
use crate::services::AppState;
use crate::storage::WriteTx;
use crate::storage::events::get_pdu;
use crate::storage::state::{StateIds, current_state_id, store_group};
use crate::{Error, Result};

/// Frontier events one repair jumps from: more means a fork this wide, rare enough to
/// leave to later repairs.
const MAX_JUMPS: usize = 4;

/// Stores `frontier` events on the state before them, asked of `servers` in turn.
/// Returns whether any was stored.
pub async fn jump(
    s: &AppState,
    room_id: &str,
    rules: &RoomVersionRules,
    frontier: &[(String, WirePdu)],
    servers: &[OwnedServerName],
) -> bool {
    let mut progress = false;
    for (event_id, pdu) in frontier.iter().take(MAX_JUMPS) {
        for server in servers {
            let req = Request::State {
                room_id: room_id.to_owned(),
                event_id: event_id.clone(),
                ids_only: false,
            };
            let (state, auth_chain) = match s.p2p.request(server, req).await {
                Ok(Response::State { pdus, auth_chain, .. }) => (pdus, auth_chain),
                _ => continue,
            };
            let (identity, rules, room, pdu) =
                (s.identity.clone(), rules.clone(), room_id.to_owned(), pdu.clone());
            let stored =
                s.db.write(move |tx| store_at(tx, &identity, &rules, &room, state, auth_chain, pdu))
                    .await;
            match stored {
                Ok(()) => {
                    tracing::info!(room_id, event_id, %server, "jumped a gap with the state at its edge");
                    progress = true;
                    break;
                }
                Err(e) => {
                    Counters::bump(&s.p2p.counters.rejected_events);
                    tracing::warn!(room_id, event_id, %server, error = %e.message, "state answer refused");
                }
            }
        }
    }
    progress
}

/// Stores the state and auth chain as outliers, then `event` on that state. One
/// transaction: anything invalid stores nothing.
fn store_at(
    tx: &mut WriteTx<'_>,
    identity: &Identity,
    rules: &RoomVersionRules,
    room_id: &str,
    state: Vec<WirePdu>,
    auth_chain: Vec<WirePdu>,
    event: WirePdu,
) -> Result<()> {
    if state.len().saturating_add(auth_chain.len()) > MAX_IMPORT_EVENTS {
        return Err(Error::too_large("state answer holds too many events"));
    }
    let room = RoomId::parse(room_id).map_err(|e| Error::invalid_param(e.to_string()))?;
    let mut events: HashMap<String, Pdu> = HashMap::new();
    let mut state_ids = StateIds::new();
    for json in state {
        let pdu = received_pdu(json, rules, &room)?;
        let Some(sk) = pdu.state_key.clone() else {
            return Err(Error::forbidden(format!(
                "{} in the state is not a state event",
                pdu.event_id
            )));
        };
        if state_ids
            .insert((pdu.kind.to_string(), sk), pdu.event_id.to_string())
            .is_some()
        {
            return Err(Error::forbidden("two state events for one (type, state_key)"));
        }
        events.insert(pdu.event_id.to_string(), pdu);
    }
    for json in auth_chain {
        let pdu = received_pdu(json, rules, &room)?;
        events.entry(pdu.event_id.to_string()).or_insert(pdu);
    }
    let create = state_ids
        .get(&("m.room.create".to_owned(), String::new()))
        .cloned()
        .ok_or_else(|| Error::forbidden("no create event in the state"))?;
    let event = received_pdu(event, rules, &room)?;
    let group = store_group(tx, room_id, None, &state_ids)?;

    let order = dependency_order(
        events
            .iter()
            .map(|(id, p)| (id.clone(), p.json.clone()))
            .collect(),
    );
    for (id, _) in order {
        let Some(pdu) = events.get(&id) else {
            continue;
        };
        if get_pdu(tx, &id).is_some() {
            continue;
        }
        authorised_by_auth_events(tx, rules, pdu, |id| get_pdu(tx, id.as_str()), &create)
            .map_err(Error::forbidden)?;
        persist(tx, identity, rules, pdu, Some(group), true, Origin::Remote)?;
        set_outlier(tx, &id, OUTLIER_AUTHORISED)?;
    }

    state_res::check_state_independent_auth_rules(&rules.authorization, &event, |id| {
        get_pdu(tx, id.as_str())
    })
    .map_err(|e| Error::forbidden(format!("not authorised by its auth events: {e}")))?;
    check_against(tx, rules, &event, |t, k| {
        state_ids.get(&(t.to_owned(), k.to_owned())).cloned()
    })
    .map_err(|e| Error::forbidden(format!("not authorised by the state before it: {e}")))?;
    let soft_failed = check_against(tx, rules, &event, |t, k| {
        current_state_id(tx, room_id, t, k).ok().flatten()
    })
    .is_err();
    persist(
        tx,
        identity,
        rules,
        &event,
        Some(group),
        soft_failed,
        Origin::Remote,
    )?;
    Ok(())
}
