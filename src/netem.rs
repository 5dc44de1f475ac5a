//! Link emulation for tests and simulations/: a userspace UDP relay on 127.0.0.1 between two
//! nodes, applying a link model (latency, jitter, loss, bandwidth) and cut/heal at run time.
//!
//! Node A reaches node B only through the relay's port: that port, with B's PeerId, is B's
//! static peer address in A's config, and A must not learn B's real address (turn off
//! [`crate::config::Config::learn_peer_addresses`]). QUIC runs over the relay for real, so
//! a lost datagram costs a real retransmission. A relay forwards only between the two
//! addresses it serves, looked up on every datagram so a restarted node (on a new port) is
//! found again; datagrams from any other source are counted as stray and dropped.
//!
//! The model, per direction: a datagram is dropped while the link is cut (also if it was
//! cut while the datagram was in flight), else with probability `loss`; else it leaves
//! after the datagrams queued before it, taking `len * 8 / bandwidth` seconds to send
//! (drop-tail past `queue_bytes` of backlog), and arrives `latency ± jitter` (uniform)
//! later. Jitter may reorder datagrams, as on a real path.

use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

/// Largest datagram relayed (QUIC stays well under it).
const MAX_DATAGRAM: usize = 65_535;

/// How a link treats datagrams; the same in both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkModel {
    /// One-way delay, milliseconds.
    pub latency_ms: f64,
    /// Half-width of the uniform delay variation, milliseconds.
    pub jitter_ms: f64,
    /// Probability that a datagram is dropped, 0..=1.
    pub loss: f64,
    /// Bits per second each way; `None` is unlimited.
    pub bandwidth_bps: Option<u64>,
    /// Backlog beyond which datagrams are dropped (only with a bandwidth).
    pub queue_bytes: u64,
}

impl Default for LinkModel {
    fn default() -> Self {
        LinkModel {
            latency_ms: 0.0,
            jitter_ms: 0.0,
            loss: 0.0,
            bandwidth_bps: None,
            queue_bytes: 256 * 1024,
        }
    }
}

impl LinkModel {
    /// Refuses values that make no sense, so a typo in a scenario is not a silent no-op.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(format!("loss must be within 0..=1, not {}", self.loss));
        }
        if !(self.latency_ms >= 0.0 && self.jitter_ms >= 0.0) {
            return Err("latency_ms and jitter_ms must be >= 0".into());
        }
        if self.bandwidth_bps == Some(0) {
            return Err("bandwidth_bps must be > 0 (leave it out for unlimited)".into());
        }
        Ok(())
    }
}

/// A node's current UDP address, shared by every relay that reaches it; `None` while the
/// node is down (datagrams to it are then dropped as if by a cut).
#[derive(Debug, Default)]
pub struct HostAddr(RwLock<Option<SocketAddr>>);

impl HostAddr {
    pub fn new(addr: Option<SocketAddr>) -> Arc<HostAddr> {
        Arc::new(HostAddr(RwLock::new(addr)))
    }
    pub fn set(&self, addr: Option<SocketAddr>) {
        if let Ok(mut a) = self.0.write() {
            *a = addr;
        }
    }
    pub fn get(&self) -> Option<SocketAddr> {
        self.0.read().ok().and_then(|a| *a)
    }
}

/// Counters of one direction. `offered` is what the sending side put on the link;
/// `delivered` what reached the other side; the rest were dropped for the reason named.
#[derive(Debug, Default)]
pub struct DirCounters {
    pub offered_datagrams: AtomicU64,
    pub offered_bytes: AtomicU64,
    pub delivered_datagrams: AtomicU64,
    pub delivered_bytes: AtomicU64,
    pub lost: AtomicU64,
    pub cut: AtomicU64,
    pub overflow: AtomicU64,
}

/// A snapshot of [`DirCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DirStats {
    pub offered_datagrams: u64,
    pub offered_bytes: u64,
    pub delivered_datagrams: u64,
    pub delivered_bytes: u64,
    pub lost: u64,
    pub cut: u64,
    pub overflow: u64,
}

impl DirCounters {
    fn snapshot(&self) -> DirStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirStats {
            offered_datagrams: g(&self.offered_datagrams),
            offered_bytes: g(&self.offered_bytes),
            delivered_datagrams: g(&self.delivered_datagrams),
            delivered_bytes: g(&self.delivered_bytes),
            lost: g(&self.lost),
            cut: g(&self.cut),
            overflow: g(&self.overflow),
        }
    }
}

/// Both directions of a relay: `forward` is from the dialling side (`a`) to `b`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RelayStats {
    pub forward: DirStats,
    pub backward: DirStats,
    pub stray: u64,
}

struct Shared {
    model: Mutex<LinkModel>,
    up: AtomicBool,
    dirs: [DirCounters; 2],
    stray: AtomicU64,
}

/// A running relay; dropping it stops the relay.
pub struct Relay {
    port: u16,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

/// A datagram in flight, ordered by arrival time (then by sequence, for a stable order).
struct InFlight {
    at: Instant,
    seq: u64,
    dir: usize,
    data: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    // Reversed: BinaryHeap is a max-heap and the earliest arrival must come out first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

impl Relay {
    /// Binds a relay on 127.0.0.1 (any free port) between `a` and `b`. `seed` fixes its
    /// loss and jitter draws.
    pub async fn start(a: Arc<HostAddr>, b: Arc<HostAddr>, model: LinkModel, seed: u64) -> io::Result<Relay> {
        model
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let port = socket.local_addr()?.port();
        let shared = Arc::new(Shared {
            model: Mutex::new(model),
            up: AtomicBool::new(true),
            dirs: Default::default(),
            stray: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let worker = Worker {
            socket,
            ends: [a, b],
            shared: shared.clone(),
            rng: StdRng::seed_from_u64(seed),
            busy_until: [Instant::now(); 2],
            queue: BinaryHeap::new(),
            seq: 0,
        };
        tokio::spawn(worker.run(stopped));
        Ok(Relay { port, shared, stop })
    }

    /// The port the dialling side (`a`) sends to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops everything from now on, datagrams in flight included.
    pub fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
    }

    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::SeqCst)
    }

    pub fn set_model(&self, model: LinkModel) -> Result<(), String> {
        model.validate()?;
        if let Ok(mut m) = self.shared.model.lock() {
            *m = model;
        }
        Ok(())
    }

    pub fn stats(&self) -> RelayStats {
        RelayStats {
            forward: self.shared.dirs[0].snapshot(),
            backward: self.shared.dirs[1].snapshot(),
            stray: self.shared.stray.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Worker {
    socket: UdpSocket,
    ends: [Arc<HostAddr>; 2],
    shared: Arc<Shared>,
    rng: StdRng,
    busy_until: [Instant; 2],
    queue: BinaryHeap<InFlight>,
    seq: u64,
}

impl Worker {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let next = self.queue.peek().map(|d| d.at);
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.on_datagram(&buf[..n], from),
                    // ICMP "port unreachable" from an earlier send surfaces here on Linux.
                    Err(_) => continue,
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    self.deliver_due().await;
                }
                _ = stopped.changed() => break,
            }
        }
    }

    fn on_datagram(&mut self, data: &[u8], from: SocketAddr) {
        let dir = match (self.ends[0].get(), self.ends[1].get()) {
            (Some(a), _) if a == from => 0,
            (_, Some(b)) if b == from => 1,
            _ => {
                self.shared.stray.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let c = &self.shared.dirs[dir];
        c.offered_datagrams.fetch_add(1, Ordering::Relaxed);
        c.offered_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        if !self.shared.up.load(Ordering::SeqCst) {
            c.cut.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let model = match self.shared.model.lock() {
            Ok(m) => m.clone(),
            Err(_) => return,
        };
        if model.loss > 0.0 && self.rng.random::<f64>() < model.loss {
            c.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = Instant::now();
        let mut leaves = now;
        if let Some(bps) = model.bandwidth_bps {
            let start = self.busy_until[dir].max(now);
            let backlog_bytes = (start - now).as_secs_f64() * bps as f64 / 8.0;
            if backlog_bytes > model.queue_bytes as f64 {
                c.overflow.fetch_add(1, Ordering::Relaxed);
                return;
            }
            leaves = start + Duration::from_secs_f64(data.len() as f64 * 8.0 / bps as f64);
            self.busy_until[dir] = leaves;
        }
        let jitter = if model.jitter_ms > 0.0 {
            self.rng.random_range(-model.jitter_ms..=model.jitter_ms)
        } else {
            0.0
        };
        let delay_ms = (model.latency_ms + jitter).max(0.0);
        self.seq += 1;
        self.queue.push(InFlight {
            at: leaves + Duration::from_secs_f64(delay_ms / 1000.0),
            seq: self.seq,
            dir,
            data: data.to_vec(),
        });
    }

    async fn deliver_due(&mut self) {
        let now = Instant::now();
        while self.queue.peek().is_some_and(|d| d.at <= now) {
            let Some(d) = self.queue.pop() else { break };
            let c = &self.shared.dirs[d.dir];
            if !self.shared.up.load(Ordering::SeqCst) {
                c.cut.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(to) = self.ends[1 - d.dir].get() else {
                c.cut.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if self.socket.send_to(&d.data, to).await.is_ok() {
                c.delivered_datagrams.fetch_add(1, Ordering::Relaxed);
                c.delivered_bytes
                    .fetch_add(d.data.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests;
