//! The CI check of the simulator: a short scenario (scenarios/ci-short.toml: a lossy
//! 4-regular mesh of six real nodes, a partition that heals, a node that sleeps and wakes)
//! runs both variants; every message must reach every member after the final heal, the
//! plots and tables must be written, and the metrics must agree with each other.

use std::path::{Path, PathBuf};

use simulations::scenario::Scenario;
use simulations::schedule::Plan;

fn scenario(name: &str) -> (PathBuf, Scenario) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(name);
    let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
    (path, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_scenario_converges_and_writes_consistent_outputs() {
    let (_, s) = scenario("ci-short.toml");
    let out = tempfile::tempdir().expect("tempdir");
    let report = simulations::run(&s, s.seed, out.path()).await.expect("run");
    assert_eq!(report.runs.len(), 2, "gossip and the full-mesh baseline");
    let members = s.members_per_room();
    for (name, m) in &report.runs {
        let sm = &m.summary;
        eprintln!("{name}: {}", serde_json::to_string(sm).unwrap_or_default());
        assert!(
            sm.messages_sent >= 5,
            "{name}: the workload sent {}",
            sm.messages_sent
        );
        assert_eq!(sm.join_failures, 0, "{name}: every member joined");
        assert!(
            sm.converged,
            "{name}: some message never reached a member after the final heal"
        );
        assert_eq!(sm.delivered_pairs, sm.expected_pairs, "{name}");
        let last = m.heals.last().expect("the final heal is recorded");
        assert_eq!((last.what.as_str(), last.missing), ("final", 0), "{name}");
        assert!(sm.final_convergence_ms.is_some(), "{name}");

        // Internal consistency.
        assert!(sm.delivered_pairs <= sm.messages_sent * (members - 1), "{name}");
        assert!(
            sm.delivery_ratio <= 1.0 && sm.latency_ms.p50 <= sm.latency_ms.p99,
            "{name}"
        );
        assert!(sm.latency_ms.p99 <= sm.latency_ms.max, "{name}");
        assert_eq!(m.deliveries.len(), sm.delivered_pairs, "{name}");
        let per_message: usize = m.messages.iter().map(|r| r.delivered).sum();
        assert_eq!(per_message, sm.delivered_pairs, "{name}: messages.csv adds up");
        assert!(m.messages.iter().all(|r| r.delivered <= r.expected), "{name}");
        assert!(m.deliveries.iter().all(|d| d.latency_ms >= 0.0), "{name}");
        let w = &sm.wire;
        assert!(
            sm.bytes_total > 0 && w.offered_bytes > 0,
            "{name}: bytes on the wire"
        );
        assert!(w.delivered_bytes <= w.offered_bytes, "{name}: {w:?}");
        assert!(
            w.delivered_datagrams + w.lost + w.cut + w.overflow <= w.offered_datagrams,
            "{name}: every datagram offered is delivered, dropped or in flight: {w:?}"
        );
        assert!(w.lost > 0, "{name}: 2% loss drops something");
        assert!(w.cut > 0, "{name}: the partition cut something");
        let sent: u64 = m.nodes.iter().map(|n| n.bytes_sent).sum();
        assert_eq!(sent, sm.bytes_total, "{name}");
        assert!(
            m.nodes.iter().all(|n| n.bytes_sent > 0 && n.bytes_received > 0),
            "{name}: every node talked"
        );
        assert!(!m.progress.is_empty(), "{name}: divergence was sampled");
        assert!(
            m.progress.last().is_some_and(|p| p.max_distinct_states <= 1),
            "{name}: one state at the end"
        );
        assert!(sm.rss_end_bytes > 0 && sm.cpu_run_s > 0.0, "{name}");

        let dir = out.path().join(name);
        for t in ["deliveries", "messages", "nodes", "heals", "progress"] {
            let csv = std::fs::read_to_string(dir.join(format!("{t}.csv"))).expect("csv");
            assert!(csv.lines().count() >= 2, "{name}/{t}.csv has a header and rows");
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).expect("json")).expect("parses");
        assert_eq!(json["summary"]["delivered_pairs"], sm.delivered_pairs);
    }
    let gossip = &report.runs[0].1.summary;
    assert!(
        gossip.duplicates > 0,
        "gossipsub delivers some copies twice; the counter sees them"
    );
    assert_eq!(
        report.runs[1].1.summary.duplicates, 0,
        "no gossip, no gossip duplicates"
    );

    for plot in ["latency_cdf", "convergence", "bytes_per_node"] {
        let svg = std::fs::read_to_string(out.path().join(format!("{plot}.svg"))).expect("svg");
        assert!(
            svg.contains("<svg") && svg.contains("gossip") && svg.contains("fullmesh"),
            "{plot}.svg"
        );
        let png = std::fs::read(out.path().join(format!("{plot}.png"))).expect("png");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{plot}.png");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("summary.json")).expect("summary"))
            .expect("parses");
    assert_eq!(summary["schedule_fingerprint"], report.fingerprint.as_str());
    assert!(
        std::fs::read_to_string(out.path().join("summary.md"))
            .expect("md")
            .contains("| gossip |")
    );
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    for file in [
        "ci-short.toml",
        "lan-10.toml",
        "split-brain.toml",
        "random-100-churn.toml",
        "mobile-50.toml",
        "smallworld-1000.toml",
    ] {
        let (_, s) = scenario(file);
        let a = Plan::new(&s, s.seed);
        let b = Plan::new(&s, s.seed);
        assert_eq!(a.fingerprint(), b.fingerprint(), "{file}");
        assert!(a.sends().count() > 0, "{file}: the workload sends something");
        assert_ne!(
            a.fingerprint(),
            Plan::new(&s, s.seed + 1).fingerprint(),
            "{file}: the seed matters"
        );
    }
}

#[test]
fn churn_and_partitions_follow_the_scenario() {
    let (_, s) = scenario("random-100-churn.toml");
    let plan = Plan::new(&s, s.seed);
    assert_eq!(plan.churners.len(), 30, "30% of 100 nodes churn");
    let creators: Vec<usize> = plan.rooms.iter().map(|r| r.creator).collect();
    assert!(
        creators.iter().all(|c| !plan.churners.contains(c)),
        "creators stay up"
    );
    assert!(plan.rooms.iter().all(|r| r.members.len() == 20));
    let (_, s) = scenario("split-brain.toml");
    let plan = Plan::new(&s, s.seed);
    assert_eq!(plan.partitions[0], vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
}
