//! Peer network benchmarks over real HTTP and real libp2p/QUIC between two `meshserver run`
//! processes (`cargo bench --bench p2p`): send on node A → long-poll /sync on node B, beside the
//! same wake on A alone; how long a restarted node takes to receive the messages it missed; and
//! the bytes on the wire per message between two nodes in network namespaces, against the size
//! of the event itself. Prints a Markdown table with the targets beside each figure.
//!
//! Under `cargo test --all-targets` (no `--bench` flag) it runs a smoke pass with tiny counts
//! against the debug binary, so the benchmark code itself stays tested.

#[path = "p2p/catchup.rs"]
mod catchup;
#[path = "p2p/netns.rs"]
mod netns;
mod support;
#[path = "p2p/wire.rs"]
mod wire;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use support::{Client, NodeProcess, Row, enc, median, ms, next_batch, percentile, print_table};

/// How much work each measurement does: full figures under `cargo bench`, a smoke pass otherwise.
struct Plan {
    floor_requests: usize,
    /// Wake rounds of each kind (local and cross-node), interleaved.
    wake_rounds: usize,
    catchup_messages: usize,
    catchup_runs: usize,
    /// How long B stays down in the last catch-up run.
    long_outage: Duration,
    /// Messages in the paced and back-to-back wire runs.
    wire_paced: usize,
    wire_messages: usize,
    /// Quiet time after setup before the idle traffic is measured.
    wire_settle: Duration,
    wire_idle: Duration,
}

const FULL: Plan = Plan {
    floor_requests: 2000,
    wake_rounds: 300,
    catchup_messages: 1000,
    catchup_runs: 3,
    long_outage: Duration::from_secs(15),
    wire_paced: 200,
    wire_messages: 500,
    wire_settle: Duration::from_secs(5),
    wire_idle: Duration::from_secs(30),
};

const SMOKE: Plan = Plan {
    floor_requests: 20,
    wake_rounds: 5,
    catchup_messages: 20,
    catchup_runs: 1,
    long_outage: Duration::from_secs(12),
    wire_paced: 5,
    wire_messages: 10,
    wire_settle: Duration::from_millis(500),
    wire_idle: Duration::from_secs(1),
};

/// Generous limits: the debug binary on a busy machine is slow, but a stuck step must fail.
const DELIVERY_LIMIT: Duration = Duration::from_secs(60);

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full { FULL } else { SMOKE };
    let mut rows = Vec::new();
    loopback(&plan, &mut rows).await?;
    wire::wire(&plan, &mut rows).await?;
    print_table(&rows, full, "p2p");
    Ok(())
}

/// Where a node runs and how the benchmark reaches its Client-Server API.
#[derive(Clone)]
struct Site {
    client: Client,
    /// `--client-listen` and `--p2p-listen`, matching `client`.
    listen: Vec<String>,
    netns: Option<String>,
    /// Prefix of the listen multiaddr other nodes should dial.
    dial_prefix: &'static str,
}

impl Site {
    fn args(&self, peer: Option<&str>) -> Vec<String> {
        let mut args = self.listen.clone();
        args.push("--no-mdns".into());
        if let Some(p) = peer {
            args.extend(["--peer".into(), p.into()]);
        }
        args
    }
}

/// Two connected nodes sharing a room: alice on A created it, bob on B joined it by invite.
struct Pair {
    _a: NodeProcess,
    b: Option<NodeProcess>,
    ca: Client,
    cb: Client,
    b_site: Site,
    a_addr: String,
    alice: String,
    bob: String,
    room: String,
    b_dir: tempfile::TempDir,
    _a_dir: tempfile::TempDir,
}

impl Pair {
    async fn start(a_site: Site, b_site: Site) -> anyhow::Result<Pair> {
        let (a_dir, b_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let ca = a_site.client.clone();
        let every = Duration::from_millis(20);
        let a = NodeProcess::spawn(
            &ca,
            a_dir.path(),
            &a_site.args(None),
            a_site.netns.as_deref(),
            every,
        )
        .await?;
        let a_info = node_info(&ca).await?;
        let addrs = a_info["listen_addrs"].as_array().context("no listen_addrs")?;
        let a_addr = addrs
            .iter()
            .filter_map(Value::as_str)
            .find(|a| a.starts_with(a_site.dial_prefix))
            .with_context(|| format!("A listens on no {} address: {a_info}", a_site.dial_prefix))?
            .to_owned();
        let a_name = a_info["server_name"]
            .as_str()
            .context("no server_name")?
            .to_owned();
        let cb = b_site.client.clone();
        let b_args = b_site.args(Some(&a_addr));
        let b = NodeProcess::spawn(&cb, b_dir.path(), &b_args, b_site.netns.as_deref(), every).await?;
        let b_name = node_info(&cb).await?["server_name"]
            .as_str()
            .context("no server_name")?
            .to_owned();
        for c in [&ca, &cb] {
            wait_connected(c, Instant::now()).await?;
        }

        let alice = ca.register("alice").await?;
        let bob = cb.register("bob").await?;
        let room = ca.create_room(&alice, json!({"preset": "public_chat"})).await?;
        let invite = format!("/_matrix/client/v3/rooms/{}/invite", enc(&room));
        let body = json!({"user_id": format!("@bob:{b_name}")});
        ca.call(reqwest::Method::POST, &invite, Some(&alice), Some(body))
            .await?;
        let join = format!(
            "/_matrix/client/v3/join/{}?server_name={}",
            enc(&room),
            enc(&a_name)
        );
        cb.call(reqwest::Method::POST, &join, Some(&bob), Some(json!({})))
            .await?;
        Ok(Pair {
            _a: a,
            b: Some(b),
            ca,
            cb,
            b_site,
            a_addr,
            alice,
            bob,
            room,
            b_dir,
            _a_dir: a_dir,
        })
    }

    /// Sends one message from alice on A.
    async fn send(&self, txn: &str) -> anyhow::Result<String> {
        self.ca.send(&self.alice, &self.room, txn).await
    }
}

async fn node_info(c: &Client) -> anyhow::Result<Value> {
    c.call(reqwest::Method::GET, "/_meshserver/v1/node", None, None)
        .await
}

/// Polls `/_meshserver/v1/node` every 5 ms until it lists a connected peer; the time since `from`.
async fn wait_connected(c: &Client, from: Instant) -> anyhow::Result<Duration> {
    loop {
        let info = node_info(c).await?;
        if info["peers"].as_array().is_some_and(|p| !p.is_empty()) {
            return Ok(from.elapsed());
        }
        ensure!(
            from.elapsed() < DELIVERY_LIMIT,
            "no peer connected within {DELIVERY_LIMIT:?}: {info}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One user's /sync position and the events of one room it has seen there.
struct Poller {
    c: Client,
    token: String,
    room: String,
    since: String,
    seen: HashSet<String>,
}

impl Poller {
    async fn new(c: &Client, token: &str, room: &str) -> anyhow::Result<Poller> {
        let res = c.sync(token, None, 0).await?;
        let mut p = Poller {
            c: c.clone(),
            token: token.to_owned(),
            room: room.to_owned(),
            since: String::new(),
            seen: HashSet::new(),
        };
        p.absorb(&res)?;
        Ok(p)
    }

    fn absorb(&mut self, res: &Value) -> anyhow::Result<()> {
        self.since = next_batch(res)?;
        let events = res["rooms"]["join"][self.room.as_str()]["timeline"]["events"].as_array();
        for e in events.into_iter().flatten() {
            if let Some(id) = e["event_id"].as_str() {
                self.seen.insert(id.to_owned());
            }
        }
        Ok(())
    }

    /// Parks a long-poll from the current position.
    fn park(&self) -> tokio::task::JoinHandle<anyhow::Result<Value>> {
        let (c, token, since) = (self.c.clone(), self.token.clone(), self.since.clone());
        tokio::spawn(async move { c.sync(&token, Some(&since), 30_000).await })
    }

    /// Long-polls until `event_id` has come down /sync.
    async fn wait_for(&mut self, event_id: &str) -> anyhow::Result<()> {
        let start = Instant::now();
        while !self.seen.contains(event_id) {
            ensure!(
                start.elapsed() < DELIVERY_LIMIT,
                "{event_id} did not reach {}'s /sync within {DELIVERY_LIMIT:?}",
                self.c.base
            );
            let res = self.c.sync(&self.token, Some(&self.since), 1000).await?;
            self.absorb(&res)?;
        }
        Ok(())
    }
}

/// A timed send → /sync wake: (from the PUT's start, from the PUT's response, event ID).
async fn wake(p: &mut Poller, pair: &Pair, txn: &str) -> anyhow::Result<(Duration, Duration, String)> {
    let poll = p.park();
    // Let the long-poll reach the server and park before the send.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t = Instant::now();
    let event_id = pair.send(txn).await?;
    let sent = t.elapsed();
    let res = poll.await??;
    p.absorb(&res)?;
    // A wake for anything else (a receipt, say) is not the one being timed: poll on.
    p.wait_for(&event_id).await?;
    Ok((t.elapsed(), t.elapsed().saturating_sub(sent), event_id))
}

/// The HTTP floor, local and cross-node wakes, and catch-up, with both nodes on loopback.
async fn loopback(plan: &Plan, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let site = |port: u16| Site {
        client: Client::new(reqwest::Client::new(), format!("http://127.0.0.1:{port}")),
        listen: vec![
            "--client-listen".into(),
            format!("127.0.0.1:{port}"),
            "--p2p-listen".into(),
            "/ip4/127.0.0.1/udp/0/quic-v1".into(),
        ],
        netns: None,
        dial_prefix: "/ip4/127.0.0.1/",
    };
    let mut pair = Pair::start(site(support::free_port()?), site(support::free_port()?)).await?;

    // The HTTP floor: a request that touches no storage.
    let mut floor = Vec::with_capacity(plan.floor_requests);
    for _ in 0..plan.floor_requests {
        let t = Instant::now();
        pair.ca
            .call(reqwest::Method::GET, "/_matrix/client/versions", None, None)
            .await?;
        floor.push(t.elapsed());
    }
    let floor = median(floor);
    rows.push(Row {
        metric: "GET /versions round trip on A (HTTP floor)".into(),
        value: ms(floor),
        target: "-",
        met: true,
        note: "baseline".into(),
    });

    // carol on A and bob on B wait on the same room, in alternate rounds, for alice's sends.
    let carol = pair.ca.register("carol").await?;
    let join = format!("/_matrix/client/v3/rooms/{}/join", enc(&pair.room));
    pair.ca
        .call(reqwest::Method::POST, &join, Some(&carol), Some(json!({})))
        .await?;
    let mut local = Poller::new(&pair.ca, &carol, &pair.room).await?;
    let mut remote = Poller::new(&pair.cb, &pair.bob, &pair.room).await?;
    // The first message across also proves the join and the replication path.
    let warm = pair.send("warm-up").await?;
    remote.wait_for(&warm).await?;
    local.wait_for(&warm).await?;
    let (mut local_wakes, mut remote_wakes, mut remote_after) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = warm;
    for i in 0..plan.wake_rounds {
        // Each poller first catches up with the other's last round, so that its parked poll
        // waits for the new message alone.
        local.wait_for(&last).await?;
        let (t, _, id) = wake(&mut local, &pair, &format!("local-{i}")).await?;
        local_wakes.push(t);
        remote.wait_for(&id).await?;
        let (t, after, id) = wake(&mut remote, &pair, &format!("remote-{i}")).await?;
        remote_wakes.push(t);
        remote_after.push(after);
        last = id;
    }
    local_wakes.sort();
    remote_wakes.sort();
    let (l50, l99) = (percentile(&local_wakes, 0.5), percentile(&local_wakes, 0.99));
    let (r50, r99) = (percentile(&remote_wakes, 0.5), percentile(&remote_wakes, 0.99));
    let ratio =
        |r: Duration, l: Duration| format!("{:.1}x the local wake", r.as_secs_f64() / l.as_secs_f64());
    rows.push(Row {
        metric: format!(
            "send on A -> long-poll /sync on A (local wake), p50 / p99 ({} messages)",
            plan.wake_rounds
        ),
        value: format!("{} / {}", ms(l50), ms(l99)),
        target: "-",
        met: true,
        note: "same room, a second user on A: the single-node baseline".into(),
    });
    rows.push(Row {
        metric: format!(
            "send on A -> long-poll /sync on B, p50 ({} messages)",
            plan.wake_rounds
        ),
        value: ms(r50),
        target: "<= 5 ms",
        met: r50 <= Duration::from_millis(5),
        note: format!("from PUT start to B's /sync body read; {}", ratio(r50, l50)),
    });
    rows.push(Row {
        metric: "send on A -> long-poll /sync on B, p99".into(),
        value: ms(r99),
        target: "<= 25 ms",
        met: r99 <= Duration::from_millis(25),
        note: ratio(r99, l99),
    });
    rows.push(Row {
        metric: "  of which after A's PUT response arrived, p50".into(),
        value: ms(median(remote_after)),
        target: "-",
        met: true,
        note: "gossip, verification and storage on B, and B's wake".into(),
    });

    catchup::catchup(plan, &mut pair, &mut remote, rows).await
}
