//! State resolution v2 (via ruma) over the states after an event's prev_events: the state
//! before an event whose parents disagree, and the current state over several forward
//! extremities.

use std::collections::{HashMap, HashSet};

use ruma::OwnedEventId;
use ruma::events::StateEventType;
use ruma::room_version_rules::{RoomVersionRules, StateResolutionVersion};
use ruma::state_res::{self, StateMap, utils::event_id_set::EventIdSet};
use rusqlite::Connection;

use crate::storage::events::{get_pdu, state_group_of};
use crate::storage::state::{StateIds, load_group};
use crate::{Error, Result};

/// The state before an event (or at a set of extremities): a group to build on and the
/// full state. `exact` says the state *is* `base`'s, so no new group is needed.
pub struct Resolved {
    pub base: Option<i64>,
    pub state: StateIds,
    pub exact: bool,
}

/// Resolves the states after `events` (each must be stored).
pub fn resolve_after(
    conn: &Connection,
    rules: &RoomVersionRules,
    events: &[OwnedEventId],
) -> Result<Resolved> {
    let mut groups = Vec::new();
    for id in events {
        let g = state_group_of(conn, id.as_str())?
            .ok_or_else(|| Error::internal(format!("state of {id} is unknown")))?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    match groups.as_slice() {
        [] => Ok(Resolved {
            base: None,
            state: StateIds::new(),
            exact: true,
        }),
        [one] => Ok(Resolved {
            base: Some(*one),
            state: load_group(conn, *one)?,
            exact: true,
        }),
        _ => {
            let states = groups
                .iter()
                .map(|g| load_group(conn, *g))
                .collect::<Result<Vec<_>>>()?;
            let state = resolve(conn, rules, &states)?;
            Ok(Resolved {
                base: Some(groups[0]),
                state,
                exact: false,
            })
        }
    }
}

/// Runs state resolution v2 over several states of one room.
pub fn resolve(conn: &Connection, rules: &RoomVersionRules, states: &[StateIds]) -> Result<StateIds> {
    let StateResolutionVersion::V2(res_rules) = &rules.state_res else {
        return Err(Error::internal("room version does not use state resolution v2"));
    };
    let maps: Vec<StateMap<OwnedEventId>> = states
        .iter()
        .map(|s| {
            s.iter()
                .filter_map(|((t, k), e)| {
                    Some((
                        (StateEventType::from(t.as_str()), k.clone()),
                        OwnedEventId::try_from(e.as_str()).ok()?,
                    ))
                })
                .collect()
        })
        .collect();
    let auth_chains = maps
        .iter()
        .map(|m| auth_chain(conn, m.values().cloned()))
        .collect::<Vec<_>>();
    let fetch = |id: &ruma::EventId| get_pdu(conn, id.as_str());
    let resolved = state_res::resolve(
        &rules.authorization,
        res_rules,
        maps.iter(),
        auth_chains,
        fetch,
        |conflicted| Some(conflicted_subgraph(conn, conflicted)),
    )
    .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
    Ok(resolved
        .into_iter()
        .map(|((t, k), e)| ((t.to_string(), k), e.to_string()))
        .collect())
}

/// The full auth chain of `start` (excluding the start events themselves).
pub fn auth_chain(
    conn: &Connection,
    start: impl IntoIterator<Item = OwnedEventId>,
) -> EventIdSet<OwnedEventId> {
    let mut seen = HashSet::new();
    let mut stack: Vec<OwnedEventId> = start.into_iter().collect();
    let mut out = EventIdSet::new();
    while let Some(id) = stack.pop() {
        let Some(pdu) = get_pdu(conn, id.as_str()) else {
            continue;
        };
        for a in pdu.auth_events {
            if seen.insert(a.clone()) {
                out.insert(a.clone());
                stack.push(a);
            }
        }
    }
    out
}

/// The conflicted state subgraph (room v12): events on an auth-event path from one
/// conflicted event to another, both ends included.
fn conflicted_subgraph(
    conn: &Connection,
    conflicted: &StateMap<Vec<OwnedEventId>>,
) -> EventIdSet<OwnedEventId> {
    let targets: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
    // reaches[x]: x is conflicted or one of its auth events reaches a conflicted event.
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    fn visit(
        conn: &Connection,
        id: &OwnedEventId,
        targets: &HashSet<OwnedEventId>,
        reaches: &mut HashMap<OwnedEventId, bool>,
    ) -> bool {
        if let Some(r) = reaches.get(id) {
            return *r;
        }
        reaches.insert(id.clone(), false); // the auth DAG has no cycles; this guards bad data
        let mut r = false;
        if let Some(pdu) = get_pdu(conn, id.as_str()) {
            for a in &pdu.auth_events {
                r |= visit(conn, a, targets, reaches);
            }
        }
        let r = r || targets.contains(id);
        reaches.insert(id.clone(), r);
        r
    }
    for t in &targets {
        visit(conn, t, &targets, &mut reaches);
    }
    reaches
        .into_iter()
        .filter(|(_, r)| *r)
        .map(|(id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::identity::Identity;
    use crate::notifier::Notifier;
    use crate::room::create::{CreateRoom, create_room};
    use crate::room::{NewEvent, append_local, rules_for};
    use crate::storage::Db;
    use crate::storage::state::set_current_state;

    /// Two branches set the room name concurrently; resolution keeps exactly one, the one
    /// state resolution v2 orders last (same power: by timestamp, then event ID).
    #[tokio::test]
    async fn concurrent_name_changes_resolve_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), false, Notifier::default()).unwrap();
        let id = Identity::from_seed([3u8; 32], "a_t");
        let out = db
            .write(move |tx| {
                let alice = ruma::UserId::parse(format!("@alice:{}", id.server_name())).unwrap();
                let req = CreateRoom {
                    name: Some("start".into()),
                    ..CreateRoom::default()
                };
                let plan = req.plan(&id)?;
                let room = create_room(tx, &id, &alice, &req, plan)?;
                let fork_point = crate::storage::events::forward_extremities(tx, room.as_str())?;
                let fork_group = crate::room::current_group(tx, room.as_str())?.unwrap();
                let name = |n: &str| NewEvent::state("m.room.name", "", json!({"name": n}));
                let b1 = append_local(tx, &id, &room, &alice, name("left"), None)?;
                // Rewind the room to the fork point and build the other branch on it.
                tx.execute(
                    "DELETE FROM forward_extremities WHERE room_id = ?1",
                    [room.as_str()],
                )?;
                for e in &fork_point {
                    tx.execute(
                        "INSERT INTO forward_extremities VALUES (?1, ?2)",
                        [room.as_str(), e],
                    )?;
                }
                let fork_state = crate::storage::state::load_group(tx, fork_group)?;
                set_current_state(tx, room.as_str(), fork_group, &fork_state)?;
                let b2 = append_local(tx, &id, &room, &alice, name("right"), None)?;
                assert_eq!(
                    b1.prev_events, b2.prev_events,
                    "both branches share the fork point"
                );
                let rules = rules_for(&crate::room::room_version(tx, room.as_str())?)?;
                let resolved = resolve_after(tx, &rules, &[b1.event_id.clone(), b2.event_id.clone()])?.state;
                let reversed = resolve_after(tx, &rules, &[b2.event_id.clone(), b1.event_id.clone()])?.state;
                Ok((b1, b2, resolved, reversed))
            })
            .await
            .unwrap();
        let (b1, b2, resolved, reversed) = out;
        assert_eq!(resolved, reversed, "order of inputs does not matter");
        let winner = resolved.get(&("m.room.name".to_owned(), String::new())).unwrap();
        let key = |p: &crate::pdu::Pdu| (p.origin_server_ts, p.event_id.clone());
        let expected = if key(&b1) > key(&b2) { &b1 } else { &b2 };
        assert_eq!(winner, expected.event_id.as_str());
        // Everything else is the unconflicted state both branches share.
        assert!(resolved.contains_key(&("m.room.create".to_owned(), String::new())));
        assert!(resolved.contains_key(&("m.room.power_levels".to_owned(), String::new())));
    }
}
