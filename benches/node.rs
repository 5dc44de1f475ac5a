//! Node benchmarks over real HTTP against the `meshserver` binary (`cargo bench --bench node`):
//! send throughput, send → long-poll /sync wake latency, initial /sync of a 1,000-message room,
//! and idle memory. Prints a Markdown table with the targets beside each figure.
//!
//! Under `cargo test --all-targets` (no `--bench` flag) it runs a smoke pass with tiny counts
//! against the debug binary, so the benchmark code itself stays tested.

mod support;

use std::time::{Duration, Instant};

use anyhow::ensure;
use serde_json::json;

use support::{Client, NodeProcess, Row, enc, median, ms, next_batch, percentile, print_table, timeline_has};

/// How much work each measurement does: full figures under `cargo bench`, a smoke pass otherwise.
struct Plan {
    floor_requests: usize,
    sends_per_run: usize,
    send_runs: usize,
    wake_messages: usize,
    room_messages: usize,
    initial_syncs: usize,
    idle: Duration,
}

const FULL: Plan = Plan {
    floor_requests: 2000,
    sends_per_run: 2000,
    send_runs: 3,
    wake_messages: 300,
    room_messages: 1000,
    initial_syncs: 20,
    idle: Duration::from_secs(2),
};

const SMOKE: Plan = Plan {
    floor_requests: 20,
    sends_per_run: 20,
    send_runs: 1,
    wake_messages: 5,
    room_messages: 20,
    initial_syncs: 3,
    idle: Duration::from_millis(200),
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full { FULL } else { SMOKE };
    let http = reqwest::Client::new();
    let node = NodeProcess::start(&http).await?;
    let c = Client::new(http, node.url.clone());
    let mut rows = Vec::new();

    // Idle memory first, before any load has grown caches.
    tokio::time::sleep(plan.idle).await;
    let idle_kib = node.rss_kib()?;
    rows.push(Row {
        metric: format!("idle RSS ({} s after start)", plan.idle.as_secs_f64()),
        value: format!("{:.1} MiB", idle_kib as f64 / 1024.0),
        target: "<= 20 MiB",
        met: idle_kib <= 20 * 1024,
        note: "VmRSS from /proc".into(),
    });

    // The HTTP floor: a request that touches no storage.
    let mut floor = Vec::with_capacity(plan.floor_requests);
    for _ in 0..plan.floor_requests {
        let t = Instant::now();
        c.call(reqwest::Method::GET, "/_matrix/client/versions", None, None)
            .await?;
        floor.push(t.elapsed());
    }
    let floor = median(floor);
    rows.push(Row {
        metric: "GET /versions round trip (HTTP floor)".into(),
        value: ms(floor),
        target: "-",
        met: true,
        note: "baseline for the ratios".into(),
    });
    let vs_floor = |d: Duration| format!("{:.1}x floor", d.as_secs_f64() / floor.as_secs_f64());

    // Sequential sends by one user into one room.
    let alice = c.register("alice").await?;
    let room = c.create_room(&alice, json!({"preset": "public_chat"})).await?;
    let mut rates = Vec::new();
    let mut each = Vec::with_capacity(plan.sends_per_run * plan.send_runs);
    for run in 0..plan.send_runs {
        let t = Instant::now();
        for i in 0..plan.sends_per_run {
            let one = Instant::now();
            c.send(&alice, &room, &format!("r{run}-{i}")).await?;
            each.push(one.elapsed());
        }
        rates.push(plan.sends_per_run as f64 / t.elapsed().as_secs_f64());
    }
    each.sort();
    rates.sort_by(f64::total_cmp);
    let rate = rates[rates.len() / 2];
    rows.push(Row {
        metric: format!(
            "sequential PUT /send ({} sends, median of {})",
            plan.sends_per_run, plan.send_runs
        ),
        value: format!("{rate:.0} sends/s"),
        target: ">= 1000 sends/s",
        met: rate >= 1000.0,
        note: format!(
            "{:.2} ms each, {}",
            1000.0 / rate,
            vs_floor(Duration::from_secs_f64(1.0 / rate))
        ),
    });

    rows.push(Row {
        metric: "  one PUT /send, p50 / p99 / max".into(),
        value: format!(
            "{} / {} / {}",
            ms(percentile(&each, 0.5)),
            ms(percentile(&each, 0.99)),
            ms(percentile(&each, 1.0))
        ),
        target: "-",
        met: true,
        note: "spread of the sends above".into(),
    });

    // Send → another user's parked long-poll /sync.
    let bob = c.register("bob").await?;
    let join = format!("/_matrix/client/v3/rooms/{}/join", enc(&room));
    c.call(reqwest::Method::POST, &join, Some(&bob), Some(json!({})))
        .await?;
    let mut since = next_batch(&c.sync(&bob, None, 0).await?)?;
    let mut wakes = Vec::with_capacity(plan.wake_messages);
    let mut after_send = Vec::with_capacity(plan.wake_messages);
    for i in 0..plan.wake_messages {
        let (client, token, s) = (c.clone(), bob.clone(), since.clone());
        let poll = tokio::spawn(async move { client.sync(&token, Some(&s), 30_000).await });
        // Let the long-poll reach the server and park before the send.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        let event_id = c.send(&alice, &room, &format!("wake-{i}")).await?;
        let sent = t.elapsed();
        let mut res = poll.await??;
        // A wake for anything else (a receipt, say) is not the one being timed: poll on.
        while !timeline_has(&res, &room, &event_id) {
            ensure!(
                t.elapsed() < Duration::from_secs(30),
                "message {event_id} never reached /sync"
            );
            res = c.sync(&bob, Some(&next_batch(&res)?), 30_000).await?;
        }
        wakes.push(t.elapsed());
        after_send.push(t.elapsed().saturating_sub(sent));
        since = next_batch(&res)?;
    }
    wakes.sort();
    let (p50, p99) = (percentile(&wakes, 0.5), percentile(&wakes, 0.99));
    rows.push(Row {
        metric: format!(
            "send -> long-poll /sync wake, p50 ({} messages)",
            plan.wake_messages
        ),
        value: ms(p50),
        target: "<= 2 ms",
        met: p50 <= Duration::from_millis(2),
        note: format!("from PUT start to /sync body read; {}", vs_floor(p50)),
    });
    rows.push(Row {
        metric: "send -> long-poll /sync wake, p99".into(),
        value: ms(p99),
        target: "-",
        met: true,
        note: vs_floor(p99),
    });
    rows.push(Row {
        metric: "  of which after the PUT's response arrived, p50".into(),
        value: ms(median(after_send)),
        target: "-",
        met: true,
        note: "the wake alone, without the send's own work".into(),
    });

    // Initial sync of a user whose one room holds `room_messages` messages.
    let carol = c.register("carol").await?;
    let big = c.create_room(&carol, json!({"name": "history"})).await?;
    for i in 0..plan.room_messages {
        c.send(&carol, &big, &format!("h{i}")).await?;
    }
    let mut initial = Vec::with_capacity(plan.initial_syncs);
    for _ in 0..plan.initial_syncs {
        let t = Instant::now();
        let res = c.sync(&carol, None, 0).await?;
        initial.push(t.elapsed());
        ensure!(
            res["rooms"]["join"][big.as_str()]["timeline"]["events"]
                .as_array()
                .is_some_and(|e| !e.is_empty()),
            "initial sync lacks the room's timeline: {res}"
        );
    }
    let initial = median(initial);
    rows.push(Row {
        metric: format!(
            "initial /sync, room with {} messages (median of {})",
            plan.room_messages, plan.initial_syncs
        ),
        value: ms(initial),
        target: "<= 5 ms",
        met: initial <= Duration::from_millis(5),
        note: vs_floor(initial),
    });

    let after_kib = node.rss_kib()?;
    rows.push(Row {
        metric: "RSS after the runs above".into(),
        value: format!("{:.1} MiB", after_kib as f64 / 1024.0),
        target: "-",
        met: true,
        note: "informational".into(),
    });

    print_table(&rows, full, "node");
    Ok(())
}
