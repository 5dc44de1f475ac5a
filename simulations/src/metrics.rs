//! From raw records to metrics. Times are milliseconds from the start of the workload.
//! A delivery is a (message, member node) pair: the message is stored on that node. A pair
//! is expected when the node's user had joined the room before the message was sent and
//! the node is not the sender.

use std::collections::HashMap;

use serde::Serialize;
use tokio::time::Instant;

use crate::driver::Raw;
use crate::schedule::{Action, Plan};

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub msg: usize,
    pub node: usize,
    pub latency_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageRow {
    pub msg: usize,
    pub room: usize,
    pub sender: usize,
    pub kind: &'static str,
    pub planned_ms: u64,
    pub sent_ms: Option<f64>,
    pub expected: usize,
    pub delivered: usize,
    pub ratio: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub duplicates: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub node: usize,
    pub degree: usize,
    pub churner: bool,
    pub late: bool,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub bytes_sent_per_msg: f64,
    pub bytes_received_per_msg: f64,
    /// Messages sent in the rooms this node is a member of, and its bytes per such message.
    pub room_messages: usize,
    pub bytes_sent_per_room_msg: f64,
    pub bytes_received_per_room_msg: f64,
    pub deliveries: usize,
    pub duplicates: u64,
    pub db_bytes: u64,
    /// Peers connected at the end of the run (links it has: `degree`).
    pub peers_at_end: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealRow {
    pub what: String,
    pub at_ms: f64,
    /// Until every pair expected of the nodes up at the heal was delivered; `None` if
    /// some never were.
    pub convergence_ms: Option<f64>,
    pub pairs: usize,
    pub missing: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgressRow {
    pub t_ms: f64,
    /// Delivered pairs / expected pairs among messages sent by then.
    pub delivered_fraction: f64,
    /// Mean and max over rooms of distinct current states among up members.
    pub mean_distinct_states: f64,
    pub max_distinct_states: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub variant: &'static str,
    pub nodes: usize,
    pub links: usize,
    pub messages_planned: usize,
    pub messages_sent: usize,
    pub send_errors: usize,
    pub skipped_sends: usize,
    pub join_failures: usize,
    pub expected_pairs: usize,
    pub delivered_pairs: usize,
    pub delivery_ratio: f64,
    pub converged: bool,
    pub latency_ms: Percentiles,
    pub duplicates: u64,
    pub duplicates_per_delivery: f64,
    pub bytes_total: u64,
    /// Mean over nodes of bytes each node sent (and received) per message sent.
    pub bytes_sent_per_msg_per_node: f64,
    pub bytes_received_per_msg_per_node: f64,
    /// Mean over member nodes (in at least one room) of bytes per message sent in their own
    /// rooms: in a large network a node carries only its rooms' traffic.
    pub member_nodes: usize,
    pub bytes_sent_per_msg_per_member: f64,
    pub bytes_received_per_msg_per_member: f64,
    pub final_convergence_ms: Option<f64>,
    pub heal_convergence_ms: Vec<Option<f64>>,
    pub setup_s: f64,
    pub workload_s: f64,
    pub cpu_setup_s: f64,
    pub cpu_run_s: f64,
    /// CPU seconds per node per second of workload (process CPU divided by nodes).
    pub cpu_per_node_per_s: f64,
    pub rss_before_bytes: u64,
    pub rss_started_bytes: u64,
    pub rss_end_bytes: u64,
    /// (RSS once every early node runs − RSS before) / nodes started.
    pub rss_per_node_bytes: u64,
    pub db_bytes_mean: u64,
    pub db_bytes_max: u64,
    pub max_timeline_lag_ms: f64,
    /// The idle stretch (`idle_s`): CPU per node per second, bytes per node per second.
    pub idle_cpu_ms_per_node_per_s: f64,
    pub idle_bytes_per_node_per_s: f64,
    /// Every relay's counters over the variant's whole life (setup included).
    pub wire: WireTotals,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WireTotals {
    pub offered_datagrams: u64,
    pub offered_bytes: u64,
    pub delivered_datagrams: u64,
    pub delivered_bytes: u64,
    pub lost: u64,
    pub cut: u64,
    pub overflow: u64,
    pub stray: u64,
}

fn wire_totals(raw: &Raw) -> WireTotals {
    let mut w = WireTotals::default();
    for r in raw.stats_end.values() {
        for d in [r.forward, r.backward] {
            w.offered_datagrams += d.offered_datagrams;
            w.offered_bytes += d.offered_bytes;
            w.delivered_datagrams += d.delivered_datagrams;
            w.delivered_bytes += d.delivered_bytes;
            w.lost += d.lost;
            w.cut += d.cut;
            w.overflow += d.overflow;
        }
        w.stray += r.stray;
    }
    w
}

pub struct Metrics {
    pub summary: Summary,
    pub deliveries: Vec<Delivery>,
    pub messages: Vec<MessageRow>,
    pub nodes: Vec<NodeRow>,
    pub heals: Vec<HealRow>,
    pub progress: Vec<ProgressRow>,
}

fn ms(t0: Instant, t: Instant) -> f64 {
    if t >= t0 {
        (t - t0).as_secs_f64() * 1000.0
    } else {
        -((t0 - t).as_secs_f64() * 1000.0)
    }
}

pub fn percentiles(v: &mut [f64]) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[(((v.len() as f64) * q).ceil() as usize).clamp(1, v.len()) - 1];
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: v[v.len() - 1],
    }
}

/// Whether `node` is up at `t_ms` by the plan (churn and late starts).
fn up_at(plan: &Plan, node: usize, t_ms: f64) -> bool {
    let mut up = !plan.late.contains(&node);
    for step in &plan.timeline {
        if step.at_ms as f64 > t_ms {
            break;
        }
        match step.action {
            Action::Sleep { node: n } if n == node => up = false,
            Action::Wake { node: n } | Action::Start { node: n } if n == node => up = true,
            Action::FinalHeal => up = true,
            _ => {}
        }
    }
    up
}

pub fn compute(raw: &Raw, plan: &Plan, sample_ms: u64) -> Metrics {
    let t0 = raw.t0;
    // Expected pairs per message: (node, delivered at).
    let mut deliveries = Vec::new();
    let mut messages = Vec::new();
    let mut pairs: Vec<(usize, usize, f64, Option<f64>)> = Vec::new(); // (msg, node, sent, seen)
    let dup_of = |node: usize, id: &str| raw.duplicates[node].get(id).copied().unwrap_or(0) as u64;
    for m in &raw.sends {
        let kind = if m.state { "state" } else { "message" };
        let (Some(id), Some(sent)) = (&m.event_id, m.sent) else {
            messages.push(MessageRow {
                msg: m.msg,
                room: m.room,
                sender: m.node,
                kind,
                planned_ms: m.planned_ms,
                sent_ms: None,
                expected: 0,
                delivered: 0,
                ratio: 0.0,
                latency_p50_ms: None,
                latency_max_ms: None,
                duplicates: 0,
                error: m.error.clone(),
            });
            continue;
        };
        let sent_ms = ms(t0, sent);
        let mut lat = Vec::new();
        let mut expected = 0;
        let mut dups = 0;
        for (&node, &joined) in &raw.joined[m.room] {
            dups += dup_of(node, id);
            if node == m.node || joined > sent {
                continue;
            }
            expected += 1;
            let seen = raw.seen[node].get(id).map(|&t| ms(t0, t));
            if let Some(s) = seen {
                let l = (s - sent_ms).max(0.0);
                lat.push(l);
                deliveries.push(Delivery {
                    msg: m.msg,
                    node,
                    latency_ms: l,
                });
            }
            pairs.push((m.msg, node, sent_ms, seen));
        }
        let delivered = lat.len();
        let p = percentiles(&mut lat);
        messages.push(MessageRow {
            msg: m.msg,
            room: m.room,
            sender: m.node,
            kind,
            planned_ms: m.planned_ms,
            sent_ms: Some(sent_ms),
            expected,
            delivered,
            ratio: if expected == 0 {
                1.0
            } else {
                delivered as f64 / expected as f64
            },
            latency_p50_ms: (delivered > 0).then_some(p.p50),
            latency_max_ms: (delivered > 0).then_some(p.max),
            duplicates: dups,
            error: None,
        });
    }
    let sent_count = raw.sends.iter().filter(|m| m.event_id.is_some()).count();
    let nodes = node_rows(raw, plan, sent_count, &deliveries);

    let heals = raw
        .heals
        .iter()
        .map(|h| {
            let at = ms(t0, h.at);
            let relevant: Vec<&(usize, usize, f64, Option<f64>)> = pairs
                .iter()
                .filter(|p| p.2 <= at)
                .filter(|p| match h.node {
                    Some(n) => p.1 == n,
                    None => up_at(plan, p.1, at),
                })
                .collect();
            let missing = relevant.iter().filter(|p| p.3.is_none()).count();
            let conv = relevant
                .iter()
                .filter_map(|p| p.3)
                .fold(0.0f64, |a, s| a.max(s - at));
            HealRow {
                what: h.what.clone(),
                at_ms: at,
                convergence_ms: (missing == 0).then_some(conv),
                pairs: relevant.len(),
                missing,
            }
        })
        .collect::<Vec<_>>();

    let progress = progress_rows(raw, &pairs, sample_ms);
    let mut lat: Vec<f64> = deliveries.iter().map(|d| d.latency_ms).collect();
    let latency_ms = percentiles(&mut lat);
    let duplicates: u64 = raw
        .duplicates
        .iter()
        .flat_map(|d| d.values())
        .map(|&c| c as u64)
        .sum();
    let started = raw.n - plan.late.len();
    let workload_s = (raw.end - t0).as_secs_f64();
    let mean = |f: &dyn Fn(&NodeRow) -> f64| nodes.iter().map(f).sum::<f64>() / nodes.len().max(1) as f64;
    let is_member: std::collections::BTreeSet<usize> = plan
        .rooms
        .iter()
        .flat_map(|r| r.members.iter().map(|m| m.0))
        .collect();
    let member_mean = |f: &dyn Fn(&NodeRow) -> f64| {
        nodes
            .iter()
            .filter(|n| is_member.contains(&n.node))
            .map(f)
            .sum::<f64>()
            / is_member.len().max(1) as f64
    };
    let summary = Summary {
        variant: raw.variant.name(),
        nodes: raw.n,
        links: raw.links,
        messages_planned: raw.sends.len(),
        messages_sent: sent_count,
        send_errors: raw.sends.len() - sent_count,
        skipped_sends: plan.skipped_sends,
        join_failures: raw.join_failures.len(),
        expected_pairs: pairs.len(),
        delivered_pairs: deliveries.len(),
        delivery_ratio: if pairs.is_empty() {
            1.0
        } else {
            deliveries.len() as f64 / pairs.len() as f64
        },
        converged: raw.converged,
        latency_ms,
        duplicates,
        duplicates_per_delivery: duplicates as f64 / deliveries.len().max(1) as f64,
        bytes_total: nodes.iter().map(|n| n.bytes_sent).sum(),
        bytes_sent_per_msg_per_node: mean(&|n| n.bytes_sent_per_msg),
        bytes_received_per_msg_per_node: mean(&|n| n.bytes_received_per_msg),
        member_nodes: is_member.len(),
        bytes_sent_per_msg_per_member: member_mean(&|n| n.bytes_sent_per_room_msg),
        bytes_received_per_msg_per_member: member_mean(&|n| n.bytes_received_per_room_msg),
        final_convergence_ms: heals
            .iter()
            .rfind(|h| h.what == "final")
            .and_then(|h| h.convergence_ms),
        heal_convergence_ms: heals
            .iter()
            .filter(|h| h.what.starts_with("heal"))
            .map(|h| h.convergence_ms)
            .collect(),
        setup_s: raw.setup_s,
        workload_s,
        cpu_setup_s: raw.cpu_setup_s,
        cpu_run_s: raw.cpu_run_s,
        cpu_per_node_per_s: raw.cpu_run_s / raw.n as f64 / workload_s.max(1e-9),
        rss_before_bytes: raw.rss_before,
        rss_started_bytes: raw.rss_started,
        rss_end_bytes: raw.rss_end,
        rss_per_node_bytes: raw.rss_started.saturating_sub(raw.rss_before) / started.max(1) as u64,
        db_bytes_mean: raw.db_bytes.iter().sum::<u64>() / raw.n.max(1) as u64,
        db_bytes_max: raw.db_bytes.iter().copied().max().unwrap_or(0),
        max_timeline_lag_ms: raw.max_lag_ms,
        wire: wire_totals(raw),
        idle_cpu_ms_per_node_per_s: raw.idle.cpu_s * 1000.0
            / started.max(1) as f64
            / raw.idle.seconds.max(1e-9),
        idle_bytes_per_node_per_s: raw.idle.bytes as f64 / started.max(1) as f64 / raw.idle.seconds.max(1e-9),
    };
    Metrics {
        summary,
        deliveries,
        messages,
        nodes,
        heals,
        progress,
    }
}

fn node_rows(raw: &Raw, plan: &Plan, sent: usize, deliveries: &[Delivery]) -> Vec<NodeRow> {
    let n = raw.n;
    let mut tx = vec![(0u64, 0u64); n];
    let mut rx = vec![(0u64, 0u64); n];
    let mut degree = vec![0; n];
    for (&(a, b), r1) in &raw.stats_end {
        let r0 = raw.stats_t0.get(&(a, b)).copied().unwrap_or_default();
        degree[a] += 1;
        degree[b] += 1;
        let d = |x: u64, y: u64| x.saturating_sub(y);
        let a_to_b = [(r1.forward, r0.forward)];
        let b_to_a = [(r1.backward, r0.backward)];
        for (now, then) in a_to_b {
            tx[a].0 += d(now.offered_bytes, then.offered_bytes);
            tx[a].1 += d(now.offered_datagrams, then.offered_datagrams);
            rx[b].0 += d(now.delivered_bytes, then.delivered_bytes);
            rx[b].1 += d(now.delivered_datagrams, then.delivered_datagrams);
        }
        for (now, then) in b_to_a {
            tx[b].0 += d(now.offered_bytes, then.offered_bytes);
            tx[b].1 += d(now.offered_datagrams, then.offered_datagrams);
            rx[a].0 += d(now.delivered_bytes, then.delivered_bytes);
            rx[a].1 += d(now.delivered_datagrams, then.delivered_datagrams);
        }
    }
    let mut got: HashMap<usize, usize> = HashMap::new();
    for d in deliveries {
        *got.entry(d.node).or_default() += 1;
    }
    let per = |b: u64| b as f64 / sent.max(1) as f64;
    let mut room_messages = vec![0usize; n];
    for m in raw.sends.iter().filter(|m| m.event_id.is_some()) {
        for &member in plan.rooms[m.room].members.iter().map(|(v, _)| v) {
            room_messages[member] += 1;
        }
    }
    let per_room = |b: u64, i: usize| b as f64 / room_messages[i].max(1) as f64;
    (0..n)
        .map(|i| NodeRow {
            node: i,
            degree: degree[i],
            churner: plan.churners.contains(&i),
            late: plan.late.contains(&i),
            bytes_sent: tx[i].0,
            bytes_received: rx[i].0,
            datagrams_sent: tx[i].1,
            datagrams_received: rx[i].1,
            bytes_sent_per_msg: per(tx[i].0),
            bytes_received_per_msg: per(rx[i].0),
            room_messages: room_messages[i],
            bytes_sent_per_room_msg: per_room(tx[i].0, i),
            bytes_received_per_room_msg: per_room(rx[i].0, i),
            deliveries: got.get(&i).copied().unwrap_or(0),
            duplicates: raw.duplicates[i].values().map(|&c| c as u64).sum(),
            db_bytes: raw.db_bytes[i],
            peers_at_end: raw.peers_at_end[i],
        })
        .collect()
}

/// On a grid of `step_ms` from the start to the end of the run: delivered / due from the
/// delivery records, and each room's latest state sample at or before that time.
fn progress_rows(raw: &Raw, pairs: &[(usize, usize, f64, Option<f64>)], step_ms: u64) -> Vec<ProgressRow> {
    let t0 = raw.t0;
    let end = ms(t0, raw.end);
    let mut samples: Vec<(f64, usize, usize)> = raw
        .samples
        .iter()
        .map(|s| (ms(t0, s.at), s.room, s.distinct_states))
        .collect();
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut latest: std::collections::BTreeMap<usize, usize> = Default::default();
    let mut next = 0;
    let mut rows = Vec::new();
    let mut t = 0.0;
    while t <= end + step_ms as f64 {
        while next < samples.len() && samples[next].0 <= t {
            latest.insert(samples[next].1, samples[next].2);
            next += 1;
        }
        let due: Vec<_> = pairs.iter().filter(|p| p.2 <= t).collect();
        let done = due.iter().filter(|p| p.3.is_some_and(|s| s <= t)).count();
        rows.push(ProgressRow {
            t_ms: t,
            delivered_fraction: if due.is_empty() {
                1.0
            } else {
                done as f64 / due.len() as f64
            },
            mean_distinct_states: latest.values().sum::<usize>() as f64 / latest.len().max(1) as f64,
            max_distinct_states: latest.values().copied().max().unwrap_or(0),
        });
        t += step_ms.max(1) as f64;
    }
    rows
}
