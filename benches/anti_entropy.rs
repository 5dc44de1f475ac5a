//! Anti-entropy benchmarks (`cargo bench --bench anti_entropy`): catch-up of a node that
//! missed 10,000 events, from the only member online (the sender is gone); range-based
//! reconciliation overhead when 1, 10 and 1,000 of 100,000 event IDs differ; and the
//! replication traffic of a converged, quiet room. Prints a Markdown table.
//!
//! Nodes run in this process (real libp2p/QUIC on loopback, a SQLite file each). Under
//! `cargo test --all-targets` it runs a smoke pass with tiny counts, so the code stays tested.

#[path = "../tests/client_api/common.rs"]
mod common;
#[path = "../tests/p2p/net.rs"]
mod net;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::ensure;
use meshserver::config::Config;
use meshserver::p2p::reconcile::set::{Initiator, Set, respond};
use meshserver::p2p::wire::{Request, Response, encode};
use serde_json::json;

use common::{TestNode, enc};
use net::{addrs, mesh, wait_until};

struct Plan {
    missed: usize,
    set_size: usize,
    differences: [usize; 3],
    quiet: Duration,
}

const FULL: Plan = Plan {
    missed: 10_000,
    set_size: 100_000,
    differences: [1, 10, 1000],
    quiet: Duration::from_secs(60),
};

const SMOKE: Plan = Plan {
    missed: 30,
    set_size: 5_000,
    differences: [1, 10, 100],
    quiet: Duration::from_secs(1),
};

fn services(node: &TestNode) -> &meshserver::services::AppState {
    &node.node.as_ref().expect("running").services
}

/// Request-response bytes a node has written (requests) and read (responses).
fn rr_bytes(node: &TestNode) -> u64 {
    let c = &services(node).p2p.counters;
    c.request_bytes_out.load(Ordering::Relaxed) + c.response_bytes_in.load(Ordering::Relaxed)
}

async fn event_set(node: &TestNode, room: &str) -> BTreeSet<String> {
    let room = room.to_owned();
    services(node)
        .db
        .read(move |c| meshserver::storage::anti_entropy::room_keys(c, &room, 0))
        .await
        .expect("read")
        .into_iter()
        .map(|(_, id)| id)
        .collect()
}

/// Whether the node holds every one of `ids`.
async fn holds(node: &TestNode, ids: Vec<String>) -> bool {
    let n = ids.len();
    services(node)
        .db
        .read(move |c| meshserver::storage::replication::held(c, &ids))
        .await
        .is_ok_and(|h| h.len() == n)
}

/// Bytes of the signed JSON of `ids` as `node` stores them.
async fn raw_bytes(node: &TestNode, ids: Vec<String>) -> u64 {
    services(node)
        .db
        .read(move |c| {
            let mut total = 0u64;
            let mut stmt = c.prepare("SELECT length(json) FROM events WHERE event_id = ?1")?;
            for id in &ids {
                total += stmt.query_row([id], |r| r.get::<_, i64>(0))? as u64;
            }
            Ok(total)
        })
        .await
        .expect("read")
}

async fn stop(mut node: TestNode) -> tempfile::TempDir {
    node.node.take().expect("running").stop().await;
    node.dir
}

struct Row {
    metric: String,
    value: String,
    target: &'static str,
    met: Option<bool>,
}

/// Catch-up of C from B after C missed `n` events of A's, A gone: (seconds, wire bytes,
/// raw bytes of the missed events), then the quiet room's bytes per minute on B and C.
async fn catch_up(plan: &Plan) -> anyhow::Result<(Duration, u64, u64, f64)> {
    let mut nodes = mesh(3).await;
    let c = nodes.pop().expect("c");
    let b = nodes.pop().expect("b");
    let a = nodes.pop().expect("a");
    let alice = a.register("alice").await;
    let room = a.create_room(&alice, json!({"preset": "public_chat"})).await;
    for (node, name) in [(&b, "bob"), (&c, "carol")] {
        let user = node.register(name).await;
        let path = format!(
            "/_matrix/client/v3/join/{}?server_name={}",
            enc(&room),
            enc(&a.server_name())
        );
        let (status, res) = node.post(&path, &user.token, json!({})).await;
        ensure!(status == 200, "join: {res}");
    }
    let limit = Duration::from_secs(600);
    wait_until(limit, || async {
        event_set(&c, &room).await == event_set(&a, &room).await
    })
    .await;
    let before = event_set(&c, &room).await;
    let c_dir = stop(c).await;
    for i in 0..plan.missed {
        a.send_text(&alice, &room, &format!("message {i} sent while carol was away"))
            .await;
    }
    wait_until(limit, || async {
        event_set(&b, &room).await == event_set(&a, &room).await
    })
    .await;
    drop(stop(a).await);
    let want = event_set(&b, &room).await;
    let r = room.clone();
    let heads = services(&b)
        .db
        .read(move |c| meshserver::storage::events::forward_extremities(c, &r))
        .await?;
    let missed: Vec<String> = want.difference(&before).cloned().collect();
    let raw = raw_bytes(&b, missed).await;

    let b_before = rr_bytes(&b);
    let mut config = Config::for_data_dir(c_dir.path());
    config.peers = addrs(&b)
        .await
        .iter()
        .map(|a| a.parse().expect("multiaddr"))
        .collect();
    // ANTI_ENTROPY_MARK=1 marks the start on stderr, for attaching a profiler.
    if std::env::var_os("ANTI_ENTROPY_MARK").is_some() {
        eprintln!("catch-up starts");
    }
    let start = Instant::now();
    let c = TestNode::start_with(c_dir, config).await;
    // B's heads first: reading 10,000 IDs every 20 ms would take CPU from the nodes measured.
    wait_until(limit, || async {
        holds(&c, heads.clone()).await && event_set(&c, &room).await == want
    })
    .await;
    let took = start.elapsed();
    let wire = rr_bytes(&b) - b_before + rr_bytes(&c);

    // Converged and quiet: whatever request traffic remains is periodic.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet_before = rr_bytes(&b) + rr_bytes(&c);
    tokio::time::sleep(plan.quiet).await;
    let quiet = (rr_bytes(&b) + rr_bytes(&c) - quiet_before) as f64 * 60.0 / plan.quiet.as_secs_f64();
    Ok((took, wire, raw, quiet))
}

/// One in-memory reconciliation of `n` IDs of which `d` are missing on the initiator:
/// (rounds, frame bytes both ways, time).
fn reconcile(n: usize, d: usize) -> (usize, usize, Duration) {
    let id = |i: usize| format!("${}", &blake3::hash(&i.to_le_bytes()).to_hex()[..43]);
    let full: Vec<(i64, String)> = (0..n).map(|i| ((i / 3) as i64 + 1, id(i))).collect();
    let step = n / d;
    let partial: Vec<_> = full
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step != step / 2)
        .map(|(_, k)| k.clone())
        .collect();
    let start = Instant::now();
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    let theirs = Set::new(&key, full);
    let mut init = Initiator::new(Set::new(&key, partial), 0);
    let mut bytes = 0;
    while let Some(ranges) = init.next_request() {
        let answer = respond(&theirs, &ranges);
        let req = Request::Reconcile {
            room_id: "!".repeat(44),
            key: hex::encode(key),
            lower: 0,
            ranges,
        };
        bytes += encode(&req).map_or(0, |v| v.len());
        bytes += encode(&Response::Ranges {
            ranges: answer.clone(),
        })
        .map_or(0, |v| v.len());
        if init.on_response(answer).is_err() {
            break;
        }
    }
    (init.rounds, bytes, start.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // RUST_LOG=meshserver::p2p=info shows what each catch-up did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let full = std::env::args().any(|a| a == "--bench");
    let mut plan = if full { FULL } else { SMOKE };
    // ANTI_ENTROPY_MISSED=n measures another catch-up size.
    if let Some(n) = std::env::var("ANTI_ENTROPY_MISSED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        plan.missed = n;
    }
    // ANTI_ENTROPY_QUIET=s shortens (or lengthens) the quiet-room measurement.
    if let Some(s) = std::env::var("ANTI_ENTROPY_QUIET")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        plan.quiet = Duration::from_secs(s);
    }
    let mut rows = Vec::new();
    let (took, wire, raw, quiet) = catch_up(&plan).await?;
    rows.push(Row {
        metric: format!("catch-up after {} missed events, from a bystander", plan.missed),
        value: format!("{:.2} s", took.as_secs_f64()),
        target: "<= 3 s",
        met: Some(took <= Duration::from_secs(3)),
    });
    let ratio = wire as f64 / raw.max(1) as f64;
    rows.push(Row {
        metric: "  its request-response bytes / raw bytes of the missed events".into(),
        value: format!("{ratio:.3} ({wire} / {raw})"),
        target: "<= 1.3x",
        met: Some(ratio <= 1.3),
    });
    for d in plan.differences {
        let (rounds, bytes, t) = reconcile(plan.set_size, d);
        rows.push(Row {
            metric: format!("reconcile {d} of {} IDs differing", plan.set_size),
            value: format!(
                "{rounds} rounds, {bytes} bytes ({} per difference), {:.0} ms",
                bytes / d,
                t.as_secs_f64() * 1e3
            ),
            target: "-",
            met: None,
        });
    }
    rows.push(Row {
        metric: format!(
            "converged quiet room, request-response bytes per minute ({} s measured)",
            plan.quiet.as_secs()
        ),
        value: format!("{quiet:.0}"),
        target: "0",
        met: Some(quiet == 0.0),
    });
    println!("| metric | value | target | met |\n|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "",
        };
        println!("| {} | {} | {} | {met} |", r.metric, r.value, r.target);
    }
    Ok(())
}
