//! Two network namespaces joined by one veth pair, so that the traffic between two nodes can be
//! counted on a real link; and tokio runtimes whose thread lives in one of them, so that the
//! benchmark's HTTP calls reach each node on that namespace's own loopback, off the veth.
//! Nothing is created in the root namespace.

use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{Context, ensure};
use serde_json::Value;

pub const IP_A: &str = "10.78.0.1";
pub const IP_B: &str = "10.78.0.2";
pub const DIAL_A: &str = "/ip4/10.78.0.1/";
pub const DIAL_B: &str = "/ip4/10.78.0.2/";
const PREFIX: &str = "msbench-";

/// The namespaces `a` and `b`, each with `eth0`, one end of the same veth pair; both are
/// deleted on drop (which takes the veth with them), also when the benchmark panics.
pub struct Link {
    pub a: String,
    pub b: String,
    made: Vec<String>,
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Link {
    pub fn create() -> anyhow::Result<Link> {
        reap_leftovers();
        // Named after this process, so that concurrent runs do not collide.
        let pid = std::process::id();
        let mut link = Link {
            a: format!("{PREFIX}{pid}-a"),
            b: format!("{PREFIX}{pid}-b"),
            made: Vec::new(),
        };
        for ns in [link.a.clone(), link.b.clone()] {
            ip(&["netns", "add", &ns])?;
            link.made.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (a, b) = (link.a.as_str(), link.b.as_str());
        ip(&[
            "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b,
        ])?;
        for (ns, addr) in [(a, IP_A), (b, IP_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(link)
    }

    /// Traffic through A's end of the veth so far: every frame between the two nodes, once.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        let out = Command::new("ip")
            .args(["-n", &self.a, "-s", "-j", "link", "show", "dev", "eth0"])
            .output()
            .context("running `ip`")?;
        ensure!(
            out.status.success(),
            "ip link show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout)?;
        let stats = &v[0]["stats64"];
        let get = |dir: &str, what: &str| stats[dir][what].as_u64().context("no interface statistics");
        Ok(Counters {
            tx: get("tx", "bytes")?,
            rx: get("rx", "bytes")?,
            tx_packets: get("tx", "packets")?,
            rx_packets: get("rx", "packets")?,
        })
    }
}

/// Deletes namespaces that earlier runs left behind when they were killed outright (their nodes
/// died with them: see `PR_SET_PDEATHSIG` in support).
fn reap_leftovers() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            println!("removed namespace {name} left by an earlier run");
        }
    }
}

/// Interface byte and packet counters (Ethernet frames, as the kernel counts them).
#[derive(Clone, Copy)]
pub struct Counters {
    tx: u64,
    rx: u64,
    tx_packets: u64,
    rx_packets: u64,
}

impl Counters {
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            tx: self.tx.saturating_sub(earlier.tx),
            rx: self.rx.saturating_sub(earlier.rx),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
        }
    }

    /// As fractional quantities, each multiplied by `k` (`1 / seconds` gives a rate).
    pub fn scaled(&self, k: f64) -> Rates {
        Rates {
            tx: self.tx as f64 * k,
            rx: self.rx as f64 * k,
            packets: (self.tx_packets + self.rx_packets) as f64 * k,
        }
    }
}

/// Counters as rates or per-message shares.
#[derive(Clone, Copy)]
pub struct Rates {
    pub tx: f64,
    pub rx: f64,
    packets: f64,
}

impl Rates {
    pub fn times(&self, k: f64) -> Rates {
        Rates {
            tx: self.tx * k,
            rx: self.rx * k,
            packets: self.packets * k,
        }
    }

    pub fn minus(&self, other: &Rates) -> Rates {
        Rates {
            tx: self.tx - other.tx,
            rx: self.rx - other.rx,
            packets: self.packets - other.packets,
        }
    }

    pub fn bytes(&self) -> f64 {
        self.tx + self.rx
    }

    pub fn packets(&self) -> f64 {
        self.packets
    }
}

/// A current-thread tokio runtime on a thread of its own that has entered a network namespace:
/// sockets opened by tasks spawned on it belong to that namespace.
pub struct Runtime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runtime {
    pub fn enter(ns: &str) -> anyhow::Result<Runtime> {
        let path = format!("/run/netns/{ns}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let setup = || -> anyhow::Result<tokio::runtime::Runtime> {
                let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                // SAFETY: setns on a namespace file we hold open; it moves this thread only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                ensure!(rc == 0, "setns {path}: {}", std::io::Error::last_os_error());
                Ok(tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?)
            };
            match setup() {
                Ok(rt) => {
                    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                    if ready_tx.send(Ok((rt.handle().clone(), stop_tx))).is_ok() {
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        let (handle, stop) = ready_rx.recv().context("namespace thread died")??;
        Ok(Runtime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
