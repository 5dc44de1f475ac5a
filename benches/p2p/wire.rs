//! Bytes on the wire per message between two nodes in network namespaces, and idle traffic.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::support::{Client, Row};
use crate::{Pair, Plan, Poller, Site, netns};

/// Bytes on the wire per message between two nodes in two network namespaces joined by a veth
/// pair, against the size of the event, and the idle keepalive traffic.
pub async fn wire(plan: &Plan, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let skip = |why: String| Row {
        metric: "wire bytes per message A -> B".into(),
        value: "skipped".into(),
        target: "<= 2x event bytes",
        met: false,
        note: why,
    };
    let ns = match netns::Link::create() {
        Ok(ns) => ns,
        Err(e) => {
            println!("wire-bytes row skipped: cannot create network namespaces here: {e:#}");
            rows.push(skip(format!("no network namespaces: {e:#}")));
            return Ok(());
        }
    };
    // Each node's client traffic stays on its own namespace's loopback, off the veth.
    let (rt_a, rt_b) = (netns::Runtime::enter(&ns.a)?, netns::Runtime::enter(&ns.b)?);
    let site = |rt: &netns::Runtime, name: &str, ip: &'static str, prefix: &'static str| Site {
        client: Client::on_runtime(
            reqwest::Client::new(),
            "http://127.0.0.1:8008".into(),
            rt.handle(),
        ),
        listen: vec![
            "--client-listen".into(),
            "127.0.0.1:8008".into(),
            "--p2p-listen".into(),
            format!("/ip4/{ip}/udp/0/quic-v1"),
        ],
        netns: Some(name.to_owned()),
        dial_prefix: prefix,
    };
    let pair = Pair::start(
        site(&rt_a, &ns.a, netns::IP_A, netns::DIAL_A),
        site(&rt_b, &ns.b, netns::IP_B, netns::DIAL_B),
    )
    .await?;
    let mut bob = Poller::new(&pair.cb, &pair.bob, &pair.room).await?;
    let warm = pair.send("warm-up").await?;
    bob.wait_for(&warm).await?;

    tokio::time::sleep(plan.wire_settle).await;
    let (i0, t) = (ns.counters()?, Instant::now());
    tokio::time::sleep(plan.wire_idle).await;
    let (idle, idle_secs) = (ns.counters()?.since(&i0), t.elapsed().as_secs_f64());

    let idle_rate = idle.scaled(1.0 / idle_secs);
    let paced = wire_run(&pair, &mut bob, &ns, "paced", plan.wire_paced, true, &idle_rate).await?;
    let burst = wire_run(
        &pair,
        &mut bob,
        &ns,
        "burst",
        plan.wire_messages,
        false,
        &idle_rate,
    )
    .await?;
    let ids: Vec<String> = paced.ids.iter().chain(&burst.ids).cloned().collect();
    let event = mean_pdu_bytes(&pair.b_dir.path().join("meshserver.db"), &ids)?;
    for (run, how) in [
        (&paced, "each sent once B's /sync showed the one before"),
        (&burst, "sent back to back"),
    ] {
        let ratio = run.per_msg.bytes() / event;
        rows.push(Row {
            metric: format!("wire bytes per message A -> B ({} messages, {})", run.ids.len(), run.tag),
            value: format!("{:.0} B ({ratio:.2}x event)", run.per_msg.bytes()),
            target: "<= 2x event bytes",
            met: ratio <= 2.0,
            note: format!(
                "{how}; veth frames both ways, idle traffic subtracted: A->B {:.0} B, B->A {:.0} B, {:.1} packets",
                run.per_msg.tx,
                run.per_msg.rx,
                run.per_msg.packets(),
            ),
        });
    }
    rows.push(Row {
        metric: "  event size (signed PDU JSON as B stores it), mean".into(),
        value: format!("{event:.0} B"),
        target: "-",
        met: true,
        note: "events.json on B, canonical JSON with hashes and signatures".into(),
    });
    rows.push(Row {
        metric: format!("idle traffic between two connected nodes ({:.0} s)", idle_secs),
        value: format!("{:.0} B/min", idle_rate.bytes() * 60.0),
        target: "-",
        met: true,
        note: format!("{:.1} packets/min, mDNS off", idle_rate.packets() * 60.0),
    });
    drop(pair);
    Ok(())
}

/// The traffic of one batch of messages.
struct WireRun {
    tag: &'static str,
    ids: Vec<String>,
    /// Per message, idle traffic subtracted.
    per_msg: netns::Rates,
}

/// Sends `n` messages from A to B (each once B's /sync showed the previous one, if `paced`)
/// and measures the veth traffic until B has the last, plus half a second for whatever that
/// still sets off (acknowledgements), less the idle traffic over the same time.
async fn wire_run(
    pair: &Pair,
    bob: &mut Poller,
    ns: &netns::Link,
    tag: &'static str,
    n: usize,
    paced: bool,
    idle_rate: &netns::Rates,
) -> anyhow::Result<WireRun> {
    let (c0, t) = (ns.counters()?, Instant::now());
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = pair.send(&format!("{tag}-{i}")).await?;
        if paced {
            bob.wait_for(&id).await?;
        }
        ids.push(id);
    }
    bob.wait_for(ids.last().context("no messages")?).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, secs) = (ns.counters()?.since(&c0), t.elapsed().as_secs_f64());
    let per_msg = sent
        .scaled(1.0)
        .minus(&idle_rate.times(secs))
        .times(1.0 / n as f64);
    Ok(WireRun { tag, ids, per_msg })
}

/// Mean size in bytes of the stored PDU JSON of `ids` in a node's database.
fn mean_pdu_bytes(db: &std::path::Path, ids: &[String]) -> anyhow::Result<f64> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT length(CAST(json AS BLOB)) FROM events WHERE event_id = ?1")?;
    let mut total = 0i64;
    for id in ids {
        total += stmt
            .query_row([id], |r| r.get::<_, i64>(0))
            .with_context(|| format!("B does not hold {id}"))?;
    }
    ensure!(!ids.is_empty(), "no events to measure");
    Ok(total as f64 / ids.len() as f64)
}
