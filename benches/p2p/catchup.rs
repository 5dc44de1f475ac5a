//! Catch-up: how long a restarted node takes to receive the messages it missed.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::support::{Client, NodeProcess, Row, enc, median, ms};
use crate::{DELIVERY_LIMIT, Pair, Plan, Poller, wait_connected};

/// One catch-up run's times.
struct Catchup {
    /// From B's process start until it held every missed message.
    from_start: Duration,
    /// From B's first connection to A until then.
    from_conn: Duration,
    /// From B's process start until it answered HTTP.
    ready: Duration,
    /// How long sending the messages took on A.
    sending: Duration,
}

/// Stops B, sends `n` messages on A, keeps B down for at least `down`, restarts it on its data
/// dir and times until the last message is in bob's /sync and all of them are in /messages.
async fn catchup_run(
    pair: &mut Pair,
    bob: &mut Poller,
    tag: &str,
    n: usize,
    down: Duration,
) -> anyhow::Result<Catchup> {
    pair.b.take().context("B is not running")?.terminate().await?;
    let t = Instant::now();
    let mut last = String::new();
    for i in 0..n {
        last = pair.send(&format!("{tag}-{i}")).await?;
    }
    let sending = t.elapsed();
    tokio::time::sleep(down.saturating_sub(t.elapsed())).await;

    // A fresh client: the old one's pooled connections went with the old process.
    let cb = Client::new(reqwest::Client::new(), pair.b_site.client.base.clone());
    bob.c = cb.clone();
    pair.cb = cb.clone();
    let args = pair.b_site.args(Some(&pair.a_addr));
    let t0 = Instant::now();
    let b = NodeProcess::spawn(&cb, pair.b_dir.path(), &args, None, Duration::from_millis(5)).await?;
    let ready = t0.elapsed();
    pair.b = Some(b);
    let got = async {
        bob.wait_for(&last).await?;
        let mut at = t0.elapsed();
        // The last one in /sync is not proof of the rest: count them, and wait for any missing.
        let prefix = format!("message {tag}-");
        while count_messages(&cb, &pair.bob, &pair.room, &prefix, n).await? < n {
            ensure!(
                t0.elapsed() < DELIVERY_LIMIT,
                "B never held all {n} missed messages"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            at = t0.elapsed();
        }
        Ok(at)
    };
    let (conn, from_start) = tokio::try_join!(wait_connected(&cb, t0), got)?;
    Ok(Catchup {
        from_start,
        from_conn: from_start.saturating_sub(conn),
        ready,
        sending,
    })
}

/// Catch-up after quick restarts (median of `catchup_runs`), then after one outage longer
/// than QUIC's idle timeout, so that A has noticed the old connection is gone.
pub async fn catchup(
    plan: &Plan,
    pair: &mut Pair,
    bob: &mut Poller,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let n = plan.catchup_messages;
    let mut runs = Vec::new();
    for run in 0..plan.catchup_runs {
        runs.push(catchup_run(pair, bob, &format!("c{run}"), n, Duration::ZERO).await?);
    }
    let of = |f: fn(&Catchup) -> Duration| median(runs.iter().map(f).collect());
    let median_of = if plan.catchup_runs > 1 {
        format!(", median of {}", plan.catchup_runs)
    } else {
        String::new()
    };
    let (start, conn) = (of(|c| c.from_start), of(|c| c.from_conn));
    rows.push(Row {
        metric: format!("restarted B receives {n} missed messages, from process start{median_of}"),
        value: ms(start),
        target: "<= 1 s",
        met: start <= Duration::from_secs(1),
        note: format!(
            "B down only while A sent them ({}); last one in bob's /sync, all {n} in /messages; B answered HTTP after {}",
            ms(of(|c| c.sending)),
            ms(of(|c| c.ready))
        ),
    });
    rows.push(Row {
        metric: format!("  the same, from B's first connection to A{median_of}"),
        value: ms(conn),
        target: "<= 1 s",
        met: conn <= Duration::from_secs(1),
        note: "connection seen by polling B's /_meshserver/v1/node every 5 ms".into(),
    });
    let long = catchup_run(pair, bob, "long", n, plan.long_outage).await?;
    rows.push(Row {
        metric: format!(
            "  the same after B was down {:.0} s, from process start / from connection",
            plan.long_outage.as_secs_f64()
        ),
        value: format!("{} / {}", ms(long.from_start), ms(long.from_conn)),
        target: "<= 1 s",
        met: long.from_conn <= Duration::from_secs(1),
        note: "one run; past QUIC's idle timeout, so A knows the old connection is dead".into(),
    });
    Ok(())
}

/// How many of the newest messages in `room` (at most `want` are looked for) have a body
/// starting with `prefix`, as bob sees them through `GET /messages`.
async fn count_messages(
    c: &Client,
    token: &str,
    room: &str,
    prefix: &str,
    want: usize,
) -> anyhow::Result<usize> {
    let mut count = 0;
    let mut from: Option<String> = None;
    // Newest first; what is looked for was sent last, so a few pages at most.
    for _ in 0..20 {
        let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000", enc(room));
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let res = c.call(reqwest::Method::GET, &path, Some(token), None).await?;
        let chunk = res["chunk"].as_array().context("no chunk")?;
        count += chunk
            .iter()
            .filter(|e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with(prefix))
            })
            .count();
        match res["end"].as_str() {
            Some(end) if !chunk.is_empty() && count < want => from = Some(end.to_owned()),
            _ => break,
        }
    }
    Ok(count)
}
