//! The checks, read straight from the nodes' SQLite files (while they run, through WAL
//! readers; after they stop, on the files alone) and over the Client-Server API.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use meshserver::pdu::Pdu;
use meshserver::room::resolve::resolve_after;
use meshserver::room::{room_version, rules_for};
use meshserver::storage::events::get_pdu;
use reqwest::Method;
use ruma::events::StateEventType;
use ruma::state_res;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::ops::{Acked, World};
use crate::schedule::A;
use crate::support::enc;

/// A reader on a node's database that cannot write (the node may be running).
pub fn open(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// A room's current state as stored, one `type \t state_key \t event_id` line per entry,
/// sorted: equal strings are byte-identical resolved states.
pub fn current_state(conn: &Connection, room: &str) -> anyhow::Result<String> {
    let mut stmt = conn.prepare(
        "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?1 ORDER BY type, state_key",
    )?;
    let rows = stmt.query_map([room], |r| {
        Ok(format!(
            "{}\t{}\t{}\n",
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<String>>()?)
}

/// How a node holds an event: `None` if it does not, else whether soft-failed.
pub fn held(conn: &Connection, event_id: &str) -> anyhow::Result<Option<bool>> {
    Ok(conn
        .query_row(
            "SELECT soft_failed FROM events WHERE event_id = ?1 AND outlier = 0",
            [event_id],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|s| s != 0))
}

/// Every room's state on every node: `states[room][node]`.
pub fn states(cluster: &Cluster, world: &World, nodes: &[usize]) -> anyhow::Result<Vec<Vec<String>>> {
    let mut out = vec![Vec::new(); world.rooms.len()];
    for &i in nodes {
        let conn = open(&cluster.slots[i].db_path())?;
        for (r, room) in world.rooms.iter().enumerate() {
            out[r].push(current_state(&conn, room)?);
        }
    }
    Ok(out)
}

/// Which nodes have a user joined to `room`, as node `view` holds its state.
pub fn member_nodes(cluster: &Cluster, view: &Connection, room: &str) -> anyhow::Result<Vec<usize>> {
    let mut stmt = view.prepare(
        "SELECT state_key FROM current_state \
         WHERE room_id = ?1 AND type = 'm.room.member' AND membership = 'join'",
    )?;
    let joined: Vec<String> = stmt
        .query_map([room], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok((0..cluster.len())
        .filter(|&i| {
            let suffix = format!(":{}", cluster.slots[i].server_name);
            joined.iter().any(|u| u.ends_with(&suffix))
        })
        .collect())
}

/// Where acknowledged events are missing from a node in their room, how many events that
/// is, and how many are held soft-failed somewhere (allowed by the spec, but worth counting).
pub fn missing_acked(
    cluster: &Cluster,
    world: &World,
    acked: &[Acked],
) -> anyhow::Result<(Vec<String>, usize, usize)> {
    let view = open(&cluster.slots[0].db_path())?;
    let members = world
        .rooms
        .iter()
        .map(|r| member_nodes(cluster, &view, r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut lost = 0;
    let conns = (0..cluster.len())
        .map(|i| open(&cluster.slots[i].db_path()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut missing = Vec::new();
    let mut soft = 0;
    for a in acked {
        let mut soft_here = false;
        let mut lost_here = false;
        for &i in &members[a.room] {
            match held(&conns[i], &a.event_id)? {
                None => missing.push({
                    lost_here = true;
                    format!(
                        "{} {} (acknowledged by node {}, room {}) missing on node {i}",
                        a.kind, a.event_id, a.node, world.rooms[a.room]
                    )
                }),
                Some(s) => soft_here |= s,
            }
        }
        soft += usize::from(soft_here);
        lost += usize::from(lost_here);
    }
    Ok((missing, lost, soft))
}

/// Sorted keys, no whitespace: equal values print equal bytes.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let inner: BTreeMap<&String, String> = m.iter().map(|(k, v)| (k, canonical(v))).collect();
            let parts: Vec<String> = inner
                .iter()
                .map(|(k, v)| format!("{}:{v}", Value::String((*k).clone())))
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// `GET /rooms/{room}/state` as A of `node` sees it, `unsigned` (ages) dropped, sorted by
/// type and state key, in canonical JSON.
pub async fn http_state(
    cluster: &Cluster,
    world: &World,
    node: usize,
    room: usize,
) -> anyhow::Result<String> {
    let path = format!("/_matrix/client/v3/rooms/{}/state", enc(&world.rooms[room]));
    let res = cluster.slots[node]
        .client
        .call(Method::GET, &path, Some(&world.users[node][A].token), None)
        .await?;
    let mut events: Vec<Value> = res.as_array().context("state is not an array")?.clone();
    for e in &mut events {
        if let Some(o) = e.as_object_mut() {
            o.remove("unsigned");
        }
    }
    events.sort_by_key(|e| (e["type"].to_string(), e["state_key"].to_string()));
    Ok(events.iter().map(canonical).collect::<Vec<_>>().join("\n"))
}

/// Line-by-line difference of two state texts.
pub fn diff(a: &str, b: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out = String::new();
    for l in &la {
        if !lb.contains(l) {
            out.push_str(&format!("    - {l}\n"));
        }
    }
    for l in &lb {
        if !la.contains(l) {
            out.push_str(&format!("    + {l}\n"));
        }
    }
    out
}

/// Re-checks every accepted event a stopped node holds with the room version's auth rules:
/// against its auth events, and (for events in the DAG) against the state before it,
/// resolved afresh from its prev events. Soft-failed events are not accepted; rejected
/// ones are never stored; invite outliers (kind 2) carry no auth chain. Returns how many
/// events were checked and the violations.
pub fn auth_violations(db: &Path) -> anyhow::Result<(usize, Vec<String>)> {
    let conn = open(db)?;
    let mut stmt = conn.prepare(
        "SELECT event_id, json, room_id, outlier FROM events \
         WHERE soft_failed = 0 AND outlier IN (0, 1) ORDER BY stream_ordering",
    )?;
    let rows: Vec<(String, String, String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut violations = Vec::new();
    for (event_id, json, room, outlier) in &rows {
        let pdu = Pdu::from_stored(event_id, json).map_err(anyhow::Error::msg)?;
        let version = room_version(&conn, room).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let rules = rules_for(&version).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let what = format!("{} {} by {}", pdu.kind, event_id, pdu.sender);
        if let Err(e) = state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |id| {
            get_pdu(&conn, id.as_str())
        }) {
            violations.push(format!("{what}: fails its auth events: {e}"));
            continue;
        }
        let create: Option<String> = conn
            .query_row(
                "SELECT event_id FROM events WHERE room_id = ?1 AND type = 'm.room.create'",
                [room],
                |r| r.get(0),
            )
            .optional()?;
        let mut by_auth: HashMap<(String, String), String> = pdu
            .auth_events
            .iter()
            .filter_map(|id| get_pdu(&conn, id.as_str()))
            .filter_map(|a| Some(((a.kind.to_string(), a.state_key.clone()?), a.event_id.to_string())))
            .collect();
        if let Some(c) = create {
            by_auth
                .entry(("m.room.create".into(), String::new()))
                .or_insert(c);
        }
        if let Err(e) = against(&conn, &rules, &pdu, &by_auth) {
            violations.push(format!("{what}: not allowed by its auth events: {e}"));
            continue;
        }
        if *outlier == 0 {
            let before = resolve_after(&conn, &rules, &pdu.prev_events)
                .map_err(|e| anyhow::anyhow!("state before {event_id}: {}", e.message))?;
            let state: HashMap<(String, String), String> = before.state.into_iter().collect();
            if let Err(e) = against(&conn, &rules, &pdu, &state) {
                violations.push(format!("{what}: not allowed by the state before it: {e}"));
            }
        }
    }
    Ok((rows.len(), violations))
}

fn against(
    conn: &Connection,
    rules: &ruma::room_version_rules::RoomVersionRules,
    pdu: &Pdu,
    state: &HashMap<(String, String), String>,
) -> Result<(), String> {
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |t: &StateEventType, k: &str| {
        state
            .get(&(t.to_string(), k.to_owned()))
            .and_then(|id| get_pdu(conn, id))
    })
}

/// Proves check 3 can fail: a copy of a stopped node's database with one accepted message
/// re-attributed to a user who never joined must show exactly that event as a violation.
pub fn auth_check_catches_forgery(db: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("forged.db");
    Connection::open(db)?.execute("VACUUM INTO ?1", [copy.display().to_string()])?;
    let conn = Connection::open(&copy)?;
    let victim: String = conn.query_row(
        "SELECT event_id FROM events WHERE type = 'm.room.message' AND soft_failed = 0 \
         AND outlier = 0 ORDER BY stream_ordering LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    conn.execute(
        "UPDATE events SET json = json_set(json, '$.sender', '@intruder:example.org') WHERE event_id = ?1",
        [&victim],
    )?;
    drop(conn);
    let (_, violations) = auth_violations(&copy)?;
    anyhow::ensure!(
        violations.len() == 1 && violations[0].contains(&victim),
        "the auth re-check missed a forged event: {violations:?}"
    );
    Ok(())
}
