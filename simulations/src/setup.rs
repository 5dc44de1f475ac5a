//! Bringing a variant up before the clock starts: nodes started and connected, rooms
//! created, members joined through a member already in (over the network, the same
//! make_join/send_join a client's join takes), and every join seen by every member.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshserver::p2p::join::remote::join_remote;
use meshserver::room::create::{CreateRoom, create_room};
use ruma::OwnedRoomId;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::scenario::Variant;
use crate::schedule::{Plan, RoomPlan};

/// Nodes started at once.
const START_PARALLEL: usize = 8;
/// Attempts per join (a just-started neighbour may not be connected yet).
const JOIN_ATTEMPTS: usize = 5;

type Joined = Arc<Mutex<Vec<BTreeMap<usize, Instant>>>>;
type Failures = Arc<Mutex<Vec<(usize, usize, String)>>>;

pub async fn start_nodes(c: &Arc<Cluster>, nodes: &[usize]) -> anyhow::Result<()> {
    for chunk in nodes.chunks(START_PARALLEL) {
        let mut set = JoinSet::new();
        for &i in chunk {
            let c = c.clone();
            set.spawn(async move { c.start(i).await });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
    }
    Ok(())
}

/// Waits until each node is connected to all its running neighbours (or a deadline that
/// grows with the network passes: the run then goes on and the report shows the effect).
pub async fn wait_connected(c: &Cluster, nodes: &[usize]) {
    let adj = c.graph.neighbours();
    let deadline = Instant::now() + Duration::from_secs(30) + Duration::from_millis(20 * nodes.len() as u64);
    for &i in nodes {
        let want = adj[i].iter().filter(|j| nodes.contains(j)).count();
        loop {
            let Some(s) = c.services(i).await else { break };
            if s.p2p.info().await.peers.len() >= want || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Each room created on its creator: public, everyone allowed to change the topic.
pub async fn create_rooms(c: &Cluster, plan: &Plan) -> anyhow::Result<Vec<OwnedRoomId>> {
    let mut ids = Vec::new();
    for (k, r) in plan.rooms.iter().enumerate() {
        let s = c
            .services(r.creator)
            .await
            .ok_or_else(|| anyhow::anyhow!("creator of room {k} is not running"))?;
        let (identity, user) = (s.identity.clone(), c.slots[r.creator].user.clone());
        let req = json!({
            "preset": "public_chat",
            "name": format!("room {k}"),
            "power_level_content_override": { "users_default": 50 },
        });
        let id =
            s.db.write(move |tx| {
                let req: CreateRoom = serde_json::from_value(req)
                    .map_err(|e| meshserver::Error::internal(format!("createRoom body: {e}")))?;
                let plan = req.plan(&identity)?;
                create_room(tx, &identity, &user, &req, plan)
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating room {k}: {}", e.message))?;
        s.p2p.subscribe(id.as_str()).await;
        ids.push(id);
    }
    Ok(ids)
}

/// Joins the members `now` admits, each room's in breadth-first order, rooms at once.
pub async fn join_members(
    c: &Arc<Cluster>,
    plan: &Plan,
    room_ids: &[OwnedRoomId],
    joined: &Joined,
    failures: &Failures,
    now: impl Fn(usize) -> bool,
) {
    let mut set = JoinSet::new();
    for (k, r) in plan.rooms.iter().enumerate() {
        let members: Vec<(usize, Option<usize>)> = r
            .members
            .iter()
            .filter(|m| m.1.is_some() && now(m.0))
            .cloned()
            .collect();
        let (c, joined, failures, room, creator) = (
            c.clone(),
            joined.clone(),
            failures.clone(),
            room_ids[k].clone(),
            r.creator,
        );
        set.spawn(async move {
            for (node, parent) in members {
                join_one(&c, k, &room, node, parent, creator, &joined, &failures).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// A late joiner's joins.
pub async fn join_late(
    c: &Arc<Cluster>,
    rooms: &[RoomPlan],
    room_ids: &[OwnedRoomId],
    joined: &Joined,
    failures: &Failures,
    node: usize,
) {
    for (k, r) in rooms.iter().enumerate() {
        if let Some(&(_, parent @ Some(_))) = r.members.iter().find(|m| m.0 == node) {
            join_one(c, k, &room_ids[k], node, parent, r.creator, joined, failures).await;
        }
    }
}

/// The nodes to join through, best first: the planned parent, the node's neighbours
/// already in the room, then the creator.
fn via(
    c: &Cluster,
    k: usize,
    node: usize,
    parent: Option<usize>,
    creator: usize,
    joined: &Joined,
) -> Vec<usize> {
    let members_in: Vec<usize> = joined
        .lock()
        .map(|j| j[k].keys().copied().collect())
        .unwrap_or_default();
    let adj = &c.graph.neighbours()[node];
    let mut via: Vec<usize> = parent.into_iter().filter(|p| members_in.contains(p)).collect();
    via.extend(members_in.iter().filter(|m| adj.contains(m)));
    via.push(creator);
    let mut seen = std::collections::BTreeSet::new();
    via.retain(|v| seen.insert(*v));
    via.truncate(meshserver::p2p::join::remote::MAX_CANDIDATES);
    via
}

#[allow(clippy::too_many_arguments)]
async fn join_one(
    c: &Cluster,
    k: usize,
    room: &OwnedRoomId,
    node: usize,
    parent: Option<usize>,
    creator: usize,
    joined: &Joined,
    failures: &Failures,
) {
    let mut last = String::new();
    for attempt in 0..JOIN_ATTEMPTS {
        // One candidate at a time, so the node that let the member in is known.
        for v in via(c, k, node, parent, creator, joined) {
            let Some(s) = c.services(node).await else {
                last = "node is down".into();
                break;
            };
            let server = [c.slots[v].server.clone()];
            match join_remote(&s, &c.slots[node].user, room.as_str(), &server, None).await {
                Ok(_) => {
                    let others: Vec<usize> = match joined.lock() {
                        Ok(mut j) => {
                            j[k].insert(node, Instant::now());
                            j[k].keys().copied().filter(|&m| m != node && m != v).collect()
                        }
                        Err(_) => Vec::new(),
                    };
                    if c.variant == Variant::Fullmesh
                        && let Some(resident) = c.services(v).await
                    {
                        announce(c, &resident, room, &others, None).await;
                    }
                    return;
                }
                Err(e) => last = e.message,
            }
        }
        tokio::time::sleep(Duration::from_millis(500 * (attempt as u64 + 1))).await;
    }
    tracing::warn!(room = k, node, error = %last, "join failed");
    if let Ok(mut f) = failures.lock() {
        f.push((k, node, last));
    }
}

/// Waits until every joined member's node holds every other member's join (bounded).
pub async fn wait_members_seen(c: &Cluster, plan: &Plan, room_ids: &[OwnedRoomId], joined: &Joined) {
    let deadline = Instant::now() + Duration::from_secs(60) + Duration::from_millis(10 * plan.graph.n as u64);
    let members = joined.lock().map(|j| j.clone()).unwrap_or_default();
    for (k, m) in members.iter().enumerate() {
        for &node in m.keys() {
            loop {
                let Some(s) = c.services(node).await else { break };
                let r = room_ids[k].to_string();
                let count =
                    s.db.read(move |conn| meshserver::storage::rooms::members_with(conn, &r, "join"))
                        .await
                        .map(|v| v.len())
                        .unwrap_or(0);
                if count >= m.len() || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The full-mesh baseline has no gossip, and a join reaches the other members only by
/// gossip from the node that let it in (neither node's outbox carries it; the joining
/// node's heads would be refused by members that do not know it joined): that node
/// announces its heads to every member, as a naive fan-out would.
///
/// The baseline also fans each new event out this way the moment it is committed
/// (`heads` = its ID): the outbox would send the same heads, but only after coalescing
/// for `COALESCE_MS`, a delay a naive fan-out would not have.
pub async fn announce(
    c: &Cluster,
    s: &meshserver::services::AppState,
    room: &OwnedRoomId,
    members: &[usize],
    heads: Option<Vec<String>>,
) {
    let r = room.to_string();
    let extremities = match heads {
        Some(h) => h,
        None => match s
            .db
            .read(move |conn| meshserver::storage::events::forward_extremities(conn, &r))
            .await
        {
            Ok(e) => e,
            Err(_) => return,
        },
    };
    let mut set = JoinSet::new();
    for &m in members {
        let (s, server) = (s.clone(), c.slots[m].server.clone());
        let req = meshserver::p2p::wire::Request::Heads {
            room_id: room.to_string(),
            extremities: extremities.clone(),
        };
        set.spawn(async move { s.p2p.request(&server, req).await });
    }
    while set.join_next().await.is_some() {}
}
