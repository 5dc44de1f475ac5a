//! What the benchmarks share: `meshserver run` child processes, a small Client-Server API
//! client, percentiles and the Markdown table the figures are printed as.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshserver");

/// A node under test, killed on drop.
pub struct NodeProcess {
    child: Child,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// A node with default settings, as `meshserver run` ships, in a fresh data dir on a free
    /// loopback port.
    pub async fn start(http: &reqwest::Client) -> anyhow::Result<NodeProcess> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let client = Client::new(http.clone(), format!("http://127.0.0.1:{port}"));
        let args = ["--client-listen".to_owned(), format!("127.0.0.1:{port}")];
        let mut node =
            NodeProcess::spawn(&client, dir.path(), &args, None, Duration::from_millis(50)).await?;
        node._dir = Some(dir);
        Ok(node)
    }

    /// `meshserver run --data-dir <data_dir> <args>`, inside network namespace `netns` if given,
    /// returning once `client` (whose base URL is the node's) gets an answer from it; `probe_every`
    /// is how often it asks.
    pub async fn spawn(
        client: &Client,
        data_dir: &Path,
        args: &[String],
        netns: Option<&str>,
        probe_every: Duration,
    ) -> anyhow::Result<NodeProcess> {
        let mut cmd = match netns {
            // `ip netns exec` execs the node in place, so the child's PID is the node's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("run")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("MESHSERVER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_sink(data_dir)?);
        // A benchmark killed outright must not leave nodes behind (inside namespaces, they would
        // keep them alive).
        // SAFETY: prctl is async-signal-safe and touches only the child's own attributes.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {BIN}"))?;
        let mut node = NodeProcess {
            child,
            url: client.base.clone(),
            _dir: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = node.child.try_wait()? {
                bail!("node exited with {status} before serving");
            }
            if client
                .call(reqwest::Method::GET, "/_matrix/client/versions", None, None)
                .await
                .is_ok()
            {
                return Ok(node);
            }
            ensure!(Instant::now() < deadline, "node did not start within 60 s");
            tokio::time::sleep(probe_every).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Stops the node as a supervisor would (SIGTERM), killing it if it has not exited in 10 s.
    pub async fn terminate(mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: a plain signal to our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!("node ignored SIGTERM for 10 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Resident memory of the node process, from /proc.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS line")?;
        let kib = line.split_whitespace().nth(1).context("empty VmRSS line")?;
        Ok(kib.parse()?)
    }
}

/// Where a node's log goes: nowhere, unless `MESHSERVER_BENCH_LOGS` names a directory (for
/// finding out why a figure is what it is; `RUST_LOG` reaches the node as usual). One file per
/// data dir, appended to across restarts.
fn log_sink(data_dir: &Path) -> anyhow::Result<Stdio> {
    let Some(dir) = std::env::var_os("MESHSERVER_BENCH_LOGS") else {
        return Ok(Stdio::null());
    };
    let name = data_dir.file_name().context("data dir has no name")?;
    let path = Path::new(&dir).join(name).with_extension("log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(file.into())
}

/// A loopback TCP port nobody is listening on at the moment.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    /// Requests run on this runtime instead of the caller's: one whose thread sits in another
    /// network namespace, so that the connections are made there.
    runtime: Option<tokio::runtime::Handle>,
}

impl Client {
    pub fn new(http: reqwest::Client, base: String) -> Client {
        Client {
            http,
            base,
            runtime: None,
        }
    }

    /// A client whose requests run on `runtime`.
    pub fn on_runtime(http: reqwest::Client, base: String, runtime: tokio::runtime::Handle) -> Client {
        Client {
            http,
            base,
            runtime: Some(runtime),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let exchange = async move {
            let res = req.send().await?;
            let status = res.status();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            Ok::<_, reqwest::Error>((status, body))
        };
        let (status, body) = match &self.runtime {
            None => exchange.await?,
            Some(rt) => rt.spawn(exchange).await??,
        };
        ensure!(status.is_success(), "{method} {path}: {status} {body}");
        Ok(body)
    }

    pub async fn register(&self, name: &str) -> anyhow::Result<String> {
        let body = json!({"username": name, "password": format!("pw-{name}"),
                          "auth": {"type": "m.login.dummy"}});
        let res = self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/register",
                None,
                Some(body),
            )
            .await?;
        Ok(res["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned())
    }

    pub async fn create_room(&self, token: &str, body: Value) -> anyhow::Result<String> {
        let res = self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(token),
                Some(body),
            )
            .await?;
        Ok(res["room_id"].as_str().context("no room_id")?.to_owned())
    }

    pub async fn send(&self, token: &str, room: &str, txn: &str) -> anyhow::Result<String> {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
        let body = json!({"msgtype": "m.text", "body": format!("message {txn}")});
        let res = self
            .call(reqwest::Method::PUT, &path, Some(token), Some(body))
            .await?;
        Ok(res["event_id"].as_str().context("no event_id")?.to_owned())
    }

    pub async fn sync(&self, token: &str, since: Option<&str>, timeout_ms: u64) -> anyhow::Result<Value> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(s) = since {
            path.push_str(&format!("&since={}", enc(s)));
        }
        self.call(reqwest::Method::GET, &path, Some(token), None).await
    }
}

pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn next_batch(sync: &Value) -> anyhow::Result<String> {
    Ok(sync["next_batch"].as_str().context("no next_batch")?.to_owned())
}

pub fn timeline_has(sync: &Value, room: &str, event_id: &str) -> bool {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .is_some_and(|evs| evs.iter().any(|e| e["event_id"] == event_id))
}

/// Nearest-rank percentile of an already sorted slice.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    percentile(&v, 0.5)
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub struct Row {
    pub metric: String,
    pub value: String,
    pub target: &'static str,
    pub met: bool,
    pub note: String,
}

/// Prints the rows as a Markdown table; `bench` names the `cargo bench --bench` target that
/// gives real figures, for the smoke pass's heading.
pub fn print_table(rows: &[Row], full: bool, bench: &str) {
    if !full {
        println!("smoke pass (debug binary, tiny counts; `cargo bench --bench {bench}` for figures)");
    }
    println!("| metric | value | target | met | notes |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let met = if r.target == "-" {
            ""
        } else if r.met {
            "yes"
        } else {
            "NO"
        };
        println!(
            "| {} | {} | {} | {met} | {} |",
            r.metric, r.value, r.target, r.note
        );
    }
}
