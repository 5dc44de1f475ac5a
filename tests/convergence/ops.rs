//! What the users do, over the Client-Server API: the episode's setup and each scheduled
//! operation. Only a 200 with an event ID counts as acknowledged.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::schedule::{A, B, Op, Plan};
use crate::support::enc;

const V3: &str = "/_matrix/client/v3";

pub struct User {
    pub user_id: String,
    pub token: String,
}

/// The users (`users[node][A or B]`) and the rooms of an episode.
pub struct World {
    pub users: Vec<[User; 2]>,
    pub rooms: Vec<String>,
}

/// An event a client got a 200 for.
#[derive(Debug, Clone)]
pub struct Acked {
    pub node: usize,
    pub room: usize,
    pub event_id: String,
    pub kind: &'static str,
}

async fn register(cluster: &Cluster, node: usize, name: &str) -> anyhow::Result<User> {
    let body = json!({"username": name, "password": format!("pw-{name}"),
                      "auth": {"type": "m.login.dummy"}});
    let res = cluster.slots[node]
        .client
        .call(Method::POST, &format!("{V3}/register"), None, Some(body))
        .await?;
    Ok(User {
        user_id: res["user_id"].as_str().context("no user_id")?.to_owned(),
        token: res["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned(),
    })
}

/// `user` of `node` joins `room` through `via`, retrying while the nodes are still
/// connecting.
async fn join_via(cluster: &Cluster, node: usize, user: &User, room: &str, via: usize) -> anyhow::Result<()> {
    let path = format!(
        "{V3}/join/{}?server_name={}",
        enc(room),
        enc(&cluster.slots[via].server_name)
    );
    let start = Instant::now();
    loop {
        let res = cluster.slots[node]
            .client
            .call(Method::POST, &path, Some(&user.token), Some(json!({})))
            .await;
        match res {
            Ok(_) => return Ok(()),
            Err(e) if start.elapsed() > Duration::from_secs(60) => {
                bail!("node {node} could not join through node {via}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Registers the users, creates the room(s) on node 0 (and node 1) and joins everyone.
pub async fn setup(cluster: &Cluster, plan: &Plan) -> anyhow::Result<World> {
    let mut users = Vec::new();
    for i in 0..cluster.len() {
        users.push([
            register(cluster, i, &format!("a{i}")).await?,
            register(cluster, i, &format!("b{i}")).await?,
        ]);
    }
    // Every A but the creator may change anything; the Bs start without power.
    let powers: serde_json::Map<String, Value> = users
        .iter()
        .skip(1)
        .map(|u| (u[A].user_id.clone(), json!(100)))
        .collect();
    let create = |c: &Cluster, node: usize, user: &User| {
        // The creator's power is implied (room v12) and may not be listed.
        let mut users = powers.clone();
        users.remove(&user.user_id);
        let body = json!({"preset": "public_chat", "name": "start",
                          "power_level_content_override": {"users": users}});
        let client = c.slots[node].client.clone();
        let token = user.token.clone();
        async move {
            let res = client
                .call(
                    Method::POST,
                    &format!("{V3}/createRoom"),
                    Some(&token),
                    Some(body),
                )
                .await?;
            Ok::<_, anyhow::Error>(res["room_id"].as_str().context("no room_id")?.to_owned())
        }
    };
    let mut rooms = vec![create(cluster, 0, &users[0][A]).await?];
    for (i, u) in users.iter().enumerate() {
        for (which, user) in u.iter().enumerate() {
            if (i, which) != (0, A) {
                join_via(cluster, i, user, &rooms[0], 0).await?;
            }
        }
    }
    if plan.two_rooms {
        rooms.push(create(cluster, 1, &users[1][A]).await?);
        for (i, u) in users.iter().enumerate() {
            if i != 1 {
                join_via(cluster, i, &u[A], &rooms[1], 1).await?;
            }
        }
    }
    Ok(World { users, rooms })
}

fn txn() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("fz{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Runs one operation; `Ok(Some)` for an acknowledged event, `Ok(None)` for an
/// acknowledged membership change, `Err` for anything refused or unanswered.
pub async fn run(cluster: &Cluster, world: &World, op: &Op) -> anyhow::Result<Option<Acked>> {
    let ev = |node, room, res: Value, kind| -> anyhow::Result<Option<Acked>> {
        Ok(Some(Acked {
            node,
            room,
            event_id: res["event_id"].as_str().context("no event_id")?.to_owned(),
            kind,
        }))
    };
    match op {
        Op::Send { node, user, room } => {
            let t = txn();
            let path = format!("{V3}/rooms/{}/send/m.room.message/{t}", enc(&world.rooms[*room]));
            let body = json!({"msgtype": "m.text", "body": format!("message {t}")});
            let res = call(cluster, world, *node, *user, Method::PUT, &path, Some(body)).await?;
            ev(*node, *room, res, "message")
        }
        Op::Text {
            node,
            user,
            room,
            topic,
            value,
        } => {
            let (kind, body) = if *topic {
                ("m.room.topic", json!({"topic": value}))
            } else {
                ("m.room.name", json!({"name": value}))
            };
            let path = format!("{V3}/rooms/{}/state/{kind}/", enc(&world.rooms[*room]));
            let res = call(cluster, world, *node, *user, Method::PUT, &path, Some(body)).await?;
            ev(*node, *room, res, if *topic { "topic" } else { "name" })
        }
        Op::Power {
            node,
            user,
            target,
            level,
        } => {
            let path = format!("{V3}/rooms/{}/state/m.room.power_levels/", enc(&world.rooms[0]));
            let mut content = call(cluster, world, *node, *user, Method::GET, &path, None).await?;
            let target = &world.users[target.0][target.1].user_id;
            content["users"][target] = json!(level);
            let res = call(cluster, world, *node, *user, Method::PUT, &path, Some(content)).await?;
            ev(*node, 0, res, "power_levels")
        }
        Op::Leave { node } => {
            let path = format!("{V3}/rooms/{}/leave", enc(&world.rooms[0]));
            call(cluster, world, *node, B, Method::POST, &path, Some(json!({}))).await?;
            Ok(None)
        }
        Op::Join { node } => {
            let path = format!("{V3}/join/{}", enc(&world.rooms[0]));
            call(cluster, world, *node, B, Method::POST, &path, Some(json!({}))).await?;
            Ok(None)
        }
        Op::Kick { node, target } => {
            let path = format!("{V3}/rooms/{}/kick", enc(&world.rooms[0]));
            let body = json!({"user_id": world.users[*target][B].user_id, "reason": "fuzz"});
            call(cluster, world, *node, A, Method::POST, &path, Some(body)).await?;
            Ok(None)
        }
    }
}

async fn call(
    cluster: &Cluster,
    world: &World,
    node: usize,
    user: usize,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let token = &world.users[node][user].token;
    cluster.slots[node]
        .client
        .call(method, path, Some(token), body)
        .await
}
