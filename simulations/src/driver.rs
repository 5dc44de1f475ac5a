//! Runs one variant of a plan in real time: start the nodes, set up the rooms, play the
//! timeline, wait for convergence, and collect the raw records [`crate::metrics`] reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshserver::netem::RelayStats;
use meshserver::room::{NewEvent, append_local};
use ruma::OwnedRoomId;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::observe::{self, Observer};
use crate::scenario::{Scenario, Variant};
use crate::schedule::{Action, Plan};
use crate::setup;
use crate::topology::{Edge, Graph, edge};

#[derive(Debug, Clone)]
pub struct SendRecord {
    pub msg: usize,
    pub room: usize,
    pub node: usize,
    pub state: bool,
    pub planned_ms: u64,
    pub sent: Option<Instant>,
    pub event_id: Option<String>,
    pub error: Option<String>,
}

/// A moment after which the network should converge again.
#[derive(Debug, Clone)]
pub struct Heal {
    pub what: String,
    pub at: Instant,
    /// The node woken (for a wake): only its catching up is measured.
    pub node: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub room: usize,
    pub members_up: usize,
    pub distinct_states: usize,
}

pub struct Raw {
    pub variant: Variant,
    pub n: usize,
    pub links: usize,
    pub t0: Instant,
    pub final_heal: Instant,
    pub end: Instant,
    pub converged: bool,
    pub sends: Vec<SendRecord>,
    /// Per room: member node → when its join completed (the creator: creation).
    pub joined: Vec<BTreeMap<usize, Instant>>,
    pub join_failures: Vec<(usize, usize, String)>,
    pub heals: Vec<Heal>,
    pub samples: Vec<Sample>,
    pub stats_t0: BTreeMap<Edge, RelayStats>,
    pub stats_end: BTreeMap<Edge, RelayStats>,
    pub seen: Vec<HashMap<String, Instant>>,
    /// Per node: event ID → duplicate gossip copies dropped.
    pub duplicates: Vec<HashMap<String, u32>>,
    pub setup_s: f64,
    pub cpu_setup_s: f64,
    pub cpu_run_s: f64,
    pub rss_before: u64,
    pub rss_started: u64,
    pub rss_end: u64,
    pub db_bytes: Vec<u64>,
    /// Per node: peers connected when the run ended (`None`: the node was down).
    pub peers_at_end: Vec<Option<usize>>,
    /// Largest delay of a timeline action behind its planned time, ms.
    pub max_lag_ms: f64,
    pub idle: Idle,
}

/// A quiet stretch between setup and workload: what nodes cost doing nothing.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Idle {
    pub seconds: f64,
    pub cpu_s: f64,
    pub bytes: u64,
    pub datagrams: u64,
}

async fn measure_idle(c: &Cluster, seconds: f64) -> Idle {
    if seconds <= 0.0 {
        return Idle::default();
    }
    let total = |c: &Cluster| {
        c.relay_stats()
            .values()
            .flat_map(|r| [r.forward, r.backward])
            .fold((0, 0), |(by, dg), d| {
                (by + d.offered_bytes, dg + d.offered_datagrams)
            })
    };
    let ((bytes0, datagrams0), cpu0) = (total(c), observe::cpu_seconds());
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let ((bytes1, datagrams1), cpu1) = (total(c), observe::cpu_seconds());
    Idle {
        seconds,
        cpu_s: cpu1 - cpu0,
        bytes: bytes1 - bytes0,
        datagrams: datagrams1 - datagrams0,
    }
}

/// The links a variant has: the topology's for gossip; for the full-mesh baseline, every
/// pair of nodes that share a room (all a naive fan-out needs).
pub fn links_for(variant: Variant, plan: &Plan) -> Graph {
    match variant {
        Variant::Gossip => plan.graph.clone(),
        Variant::Fullmesh => {
            let mut edges = BTreeSet::new();
            for r in &plan.rooms {
                let m: Vec<usize> = r.members.iter().map(|m| m.0).collect();
                for (i, &a) in m.iter().enumerate() {
                    for &b in &m[i + 1..] {
                        edges.insert(edge(a, b));
                    }
                }
            }
            Graph {
                n: plan.graph.n,
                edges,
            }
        }
    }
}

pub async fn run(s: &Scenario, plan: &Plan, variant: Variant, seed: u64, dir: &Path) -> anyhow::Result<Raw> {
    let n = plan.graph.n;
    let observer = Arc::new(Observer::new(n));
    let rss_before = observe::rss_bytes();
    let cpu0 = observe::cpu_seconds();
    let setup_start = Instant::now();
    let graph = links_for(variant, plan);
    let links = graph.edges.len();
    let c = Arc::new(Cluster::new(s, variant, graph, dir.to_path_buf(), seed, observer.clone()).await?);
    let early: Vec<usize> = (0..n).filter(|i| !plan.late.contains(i)).collect();
    setup::start_nodes(&c, &early).await?;
    setup::wait_connected(&c, &early).await;
    let rss_started = observe::rss_bytes();
    let room_ids = setup::create_rooms(&c, plan).await?;
    let joined: Arc<Mutex<Vec<BTreeMap<usize, Instant>>>> = Arc::new(Mutex::new(
        plan.rooms
            .iter()
            .map(|r| BTreeMap::from([(r.creator, Instant::now())]))
            .collect(),
    ));
    let failures = Arc::new(Mutex::new(Vec::new()));
    setup::join_members(&c, plan, &room_ids, &joined, &failures, |m| {
        !plan.late.contains(&m)
    })
    .await;
    setup::wait_members_seen(&c, plan, &room_ids, &joined).await;
    let setup_s = setup_start.elapsed().as_secs_f64();
    let cpu_setup_s = observe::cpu_seconds() - cpu0;
    let idle = measure_idle(&c, s.idle_s).await;
    let cpu1 = observe::cpu_seconds();

    let stats_t0 = c.relay_stats();
    let t0 = Instant::now();
    let sends: Arc<Mutex<Vec<Option<SendRecord>>>> = Arc::new(Mutex::new(vec![None; plan.sends().count()]));
    let (stop_sampler, stopped) = tokio::sync::watch::channel(false);
    let sampler = spawn_sampler(c.clone(), room_ids.clone(), joined.clone(), s.sample_ms, stopped);
    let mut heals = Vec::new();
    let mut tasks = JoinSet::new();
    let mut max_lag_ms: f64 = 0.0;
    let mut final_heal = t0;
    for step in &plan.timeline {
        let due = t0 + Duration::from_millis(step.at_ms);
        tokio::time::sleep_until(due).await;
        max_lag_ms = max_lag_ms.max(due.elapsed().as_secs_f64() * 1000.0);
        match step.action {
            Action::Send {
                msg,
                room,
                node,
                state,
            } => {
                let (c, sends, room_id) = (c.clone(), sends.clone(), room_ids[room].clone());
                let body = "x".repeat(s.workload.body_bytes);
                let planned_ms = step.at_ms;
                let joined = joined.clone();
                tasks.spawn(async move {
                    let r = send(&c, node, room_id.clone(), msg, state, body).await;
                    if let (Ok((_, id)), Variant::Fullmesh) = (&r, c.variant) {
                        let members: Vec<usize> = joined
                            .lock()
                            .map(|j| j[room].keys().copied().filter(|&m| m != node).collect())
                            .unwrap_or_default();
                        if let Some(s) = c.services(node).await {
                            setup::announce(&c, &s, &room_id, &members, Some(vec![id.clone()])).await;
                        }
                    }
                    let (sent, event_id, error) = match r {
                        Ok((at, id)) => (Some(at), Some(id), None),
                        Err(e) => (None, None, Some(e)),
                    };
                    if let Ok(mut v) = sends.lock() {
                        v[msg] = Some(SendRecord {
                            msg,
                            room,
                            node,
                            state,
                            planned_ms,
                            sent,
                            event_id,
                            error,
                        });
                    }
                });
            }
            Action::Sleep { node } => c.stop(node).await,
            Action::Wake { node } => {
                if let Err(e) = c.start(node).await {
                    tracing::error!(node, error = %e, "wake failed");
                }
                heals.push(Heal {
                    what: format!("wake {node}"),
                    at: Instant::now(),
                    node: Some(node),
                });
            }
            Action::Split { partition } => c.split(partition, plan.partitions[partition].clone()),
            Action::Heal { partition } => {
                c.heal(partition);
                heals.push(Heal {
                    what: format!("heal {partition}"),
                    at: Instant::now(),
                    node: None,
                });
            }
            Action::Start { node } => {
                if let Err(e) = c.start(node).await {
                    tracing::error!(node, error = %e, "late start failed");
                }
                let (c, joined, failures, room_ids) =
                    (c.clone(), joined.clone(), failures.clone(), room_ids.clone());
                let rooms = plan.rooms.clone();
                tasks.spawn(async move {
                    setup::join_late(&c, &rooms, &room_ids, &joined, &failures, node).await;
                });
            }
            Action::Move { tick } => {
                if let Some(m) = &plan.mobility {
                    c.set_in_range(Some(m.links_at(tick)));
                }
            }
            Action::FinalHeal => {
                for i in 0..n {
                    if !c.is_up(i).await
                        && let Err(e) = c.start(i).await
                    {
                        tracing::error!(node = i, error = %e, "final wake failed");
                    }
                }
                for p in 0..plan.partitions.len() {
                    c.heal(p);
                }
                c.set_in_range(None);
                final_heal = Instant::now();
                heals.push(Heal {
                    what: "final".into(),
                    at: final_heal,
                    node: None,
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let sends: Vec<SendRecord> = sends
        .lock()
        .map(|v| v.iter().flatten().cloned().collect())
        .unwrap_or_default();
    let joined_now = joined.lock().map(|j| j.clone()).unwrap_or_default();
    let converged = settle(&observer, &sends, &joined_now, s.settle_s).await;
    let end = Instant::now();
    // One more sample, so the last one shows the converged state.
    tokio::time::sleep(Duration::from_millis(s.sample_ms + 50)).await;
    let _ = stop_sampler.send(true);
    let samples = sampler.await.unwrap_or_default();

    let stats_end = c.relay_stats();
    let cpu_run_s = observe::cpu_seconds() - cpu1;
    let rss_end = observe::rss_bytes();
    let seen: Vec<HashMap<String, Instant>> = observer
        .seen
        .iter()
        .map(|m| m.lock().map(|m| m.clone()).unwrap_or_default())
        .collect();
    let by_peer: HashMap<String, usize> = c
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| (s.peer_id.clone(), i))
        .collect();
    let mut duplicates = vec![HashMap::new(); n];
    if let Ok(mut d) = observe::duplicates().lock() {
        d.retain(|(peer, event), count| match by_peer.get(peer) {
            Some(&i) => {
                duplicates[i].insert(event.clone(), *count);
                false
            }
            None => true,
        });
    }
    let db_bytes = c.slots.iter().map(|s| observe::db_bytes(&s.dir)).collect();
    let mut peers_at_end = Vec::new();
    for i in 0..n {
        peers_at_end.push(match c.services(i).await {
            Some(s) => Some(s.p2p.info().await.peers.len()),
            None => None,
        });
    }
    c.stop_all().await;
    Ok(Raw {
        variant,
        n,
        links,
        t0,
        final_heal,
        end,
        converged,
        sends,
        joined: joined_now,
        join_failures: failures.lock().map(|f| f.clone()).unwrap_or_default(),
        heals,
        samples,
        stats_t0,
        stats_end,
        seen,
        duplicates,
        setup_s,
        cpu_setup_s,
        cpu_run_s,
        rss_before,
        rss_started,
        rss_end,
        db_bytes,
        peers_at_end,
        max_lag_ms,
        idle,
    })
}

/// Creates event `msg` on `node`: a message, or a topic change.
async fn send(
    c: &Cluster,
    node: usize,
    room: OwnedRoomId,
    msg: usize,
    state: bool,
    body: String,
) -> Result<(Instant, String), String> {
    // Held for the write, so the node cannot be stopped under it.
    let guard = c.slots[node].node.read().await;
    let Some(n) = guard.as_ref() else {
        return Err("node is down".into());
    };
    let s = n.services.clone();
    let user = c.slots[node].user.clone();
    let ev = if state {
        NewEvent::state("m.room.topic", "", json!({ "topic": format!("topic {msg}") }))
    } else {
        NewEvent::message(
            "m.room.message",
            json!({ "msgtype": "m.text", "body": body, "sim_msg": msg }),
        )
    };
    let identity = s.identity.clone();
    let r =
        s.db.write(move |tx| {
            Ok(append_local(tx, &identity, &room, &user, ev, None)?
                .event_id
                .to_string())
        })
        .await;
    drop(guard);
    r.map(|id| (Instant::now(), id)).map_err(|e| e.message)
}

/// Waits until every sent event is stored on every node that was a member when it was
/// sent, or `limit` seconds pass; returns whether it converged.
async fn settle(o: &Observer, sends: &[SendRecord], joined: &[BTreeMap<usize, Instant>], limit: f64) -> bool {
    let deadline = Instant::now() + Duration::from_secs_f64(limit);
    loop {
        let done = sends.iter().all(|m| {
            let (Some(id), Some(at)) = (&m.event_id, m.sent) else {
                return true;
            };
            joined[m.room]
                .iter()
                .filter(|(_, j)| **j <= at)
                .all(|(node, _)| o.has(*node, id))
        });
        if done {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every `every_ms` until told to stop: per room, how many distinct current states its
/// up members hold.
fn spawn_sampler(
    c: Arc<Cluster>,
    room_ids: Vec<OwnedRoomId>,
    joined: Arc<Mutex<Vec<BTreeMap<usize, Instant>>>>,
    every_ms: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(every_ms.max(10)));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return out,
            }
            let at = Instant::now();
            let members = joined.lock().map(|j| j.clone()).unwrap_or_default();
            for (room, ids) in members.iter().enumerate() {
                // The members' reads at once: one at a time, a sample of a thousand busy
                // nodes outlasts the sampling interval.
                let mut reads = JoinSet::new();
                for &node in ids.keys() {
                    let Some(s) = c.services(node).await else { continue };
                    let r = room_ids[room].to_string();
                    reads.spawn(async move {
                        s.db.read(move |conn| meshserver::storage::state::current_state_ids(conn, &r))
                            .await
                    });
                }
                let mut states = BTreeSet::new();
                let mut up = 0;
                while let Some(r) = reads.join_next().await {
                    if let Ok(Ok(ids)) = r {
                        let mut v: Vec<_> = ids.into_iter().collect();
                        v.sort();
                        states.insert(*blake3::hash(format!("{v:?}").as_bytes()).as_bytes());
                        up += 1;
                    }
                }
                out.push(Sample {
                    at,
                    room,
                    members_up: up,
                    distinct_states: states.len(),
                });
            }
        }
    })
}
