//! What the simulator sees of the nodes, through the library only: when each event
//! becomes stored on each node (a watcher per node wakes on its notifier and reads the
//! new rows), how many duplicate gossip copies each node's swarm dropped (counted from
//! gossipsub's own debug event inside the swarm task's span), and process resources.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use meshserver::services::AppState;
use meshserver::storage::replication::events_after;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Event types the workload sends; others (joins, setup) are not measured.
pub const MEASURED: [&str; 2] = ["m.room.message", "m.room.topic"];
/// Rows read per turn of a watcher.
const BATCH: usize = 1000;

/// Per node: event ID → when it was first seen stored there.
#[derive(Default)]
pub struct Observer {
    pub seen: Vec<Mutex<HashMap<String, Instant>>>,
    watchers: Mutex<HashMap<usize, JoinHandle<()>>>,
}

impl Observer {
    pub fn new(n: usize) -> Observer {
        Observer {
            seen: (0..n).map(|_| Mutex::default()).collect(),
            watchers: Mutex::default(),
        }
    }

    /// Watches node `i` (again, after a restart: what it saw before is kept).
    pub fn watch(self: &Arc<Self>, i: usize, s: AppState) {
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut pos = 0;
            loop {
                let now = s.db.notifier().current();
                let rows = match s.db.read(move |c| events_after(c, pos, BATCH)).await {
                    Ok(r) => r,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let at = Instant::now();
                let full = rows.len() == BATCH;
                if let Ok(mut seen) = me.seen[i].lock() {
                    for r in rows {
                        pos = r.stream;
                        if MEASURED.contains(&r.kind.as_str()) {
                            seen.entry(r.event_id).or_insert(at);
                        }
                    }
                }
                if !full {
                    s.db.notifier().wait_past(now, Duration::from_secs(1)).await;
                }
            }
        });
        if let Ok(mut w) = self.watchers.lock()
            && let Some(old) = w.insert(i, task)
        {
            old.abort();
        }
    }

    pub fn unwatch(&self, i: usize) {
        if let Ok(mut w) = self.watchers.lock()
            && let Some(t) = w.remove(&i)
        {
            t.abort();
        }
    }

    pub fn has(&self, i: usize, event_id: &str) -> bool {
        self.seen[i].lock().is_ok_and(|s| s.contains_key(event_id))
    }
}

/// Duplicate gossip copies dropped, by (node PeerId, event ID). Global because the tracing
/// subscriber is; PeerIds differ between runs, so runs do not mix.
pub fn duplicates() -> &'static Mutex<HashMap<(String, String), u32>> {
    static D: OnceLock<Mutex<HashMap<(String, String), u32>>> = OnceLock::new();
    D.get_or_init(Mutex::default)
}

/// A tracing layer that counts gossipsub's "Message already received" per swarm span.
pub struct DuplicateLayer;

struct NodeOfSpan(String);

#[derive(Default)]
struct Fields {
    node: Option<String>,
    message: Option<String>,
    message_id: Option<String>,
}

impl Visit for Fields {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        let v = format!("{v:?}");
        match f.name() {
            "node" => self.node = Some(v),
            "message" => self.message = Some(v),
            "message_id" => self.message_id = Some(v),
            _ => {}
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for DuplicateLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "swarm" {
            return;
        }
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let (Some(node), Some(span)) = (f.node, ctx.span(id)) {
            span.extensions_mut().insert(NodeOfSpan(node));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if !event.metadata().target().starts_with("libp2p_gossipsub") {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        if f.message.as_deref() != Some("Message already received, ignoring") {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let Some(node) = scope
            .from_root()
            .find_map(|s| s.extensions().get::<NodeOfSpan>().map(|n| n.0.clone()))
        else {
            return;
        };
        // The message ID is the event ID's bytes, printed as hex.
        let event_id = f.message_id.as_deref().and_then(unhex).unwrap_or_default();
        if let Ok(mut d) = duplicates().lock() {
            *d.entry((node, event_id)).or_default() += 1;
        }
    }
}

fn unhex(s: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Installs the duplicate counter (and `RUST_LOG`-filtered logs to stderr) once per process.
pub fn init_tracing() {
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::{EnvFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dup_filter = Targets::new()
            .with_target("libp2p_gossipsub::behaviour", tracing::Level::DEBUG)
            .with_target("meshserver::p2p::swarm", tracing::Level::INFO);
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error")));
        let _ = tracing_subscriber::registry()
            .with(DuplicateLayer.with_filter(dup_filter))
            .with(logs)
            .try_init();
    });
}

/// CPU time (user + system) of the whole process so far, seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Resident set size of the process now, bytes (0 where /proc is absent).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    pages * page
}

/// Bytes of a node's database files (main file, WAL, shared memory index).
pub fn db_bytes(dir: &std::path::Path) -> u64 {
    ["meshserver.db", "meshserver.db-wal", "meshserver.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}
