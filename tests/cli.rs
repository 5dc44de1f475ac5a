//! The `meshserver` binary as a user runs it: `info`, `user add`, `run`, and how flags,
//! `MESHSERVER_*` environment variables and a TOML `--config` file combine.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_meshserver");
/// Every variable the binary reads; cleared so the caller's environment cannot leak in.
const ENV_VARS: [&str; 8] = [
    "MESHSERVER_CONFIG",
    "MESHSERVER_DATA_DIR",
    "MESHSERVER_CLIENT_LISTEN",
    "MESHSERVER_REGISTRATION_OPEN",
    "MESHSERVER_REGISTRATION_TOKEN",
    "MESHSERVER_SQLITE_SYNCHRONOUS",
    "MESHSERVER_MAX_REQUEST_BYTES",
    "MESHSERVER_MAX_UPLOAD_BYTES",
];
/// Generous upper bound for a debug node to start answering on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn meshserver(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    // Request logs stay off: a child's piped stderr must not fill up and stall it.
    cmd.args(args).stdin(Stdio::null()).env("RUST_LOG", "warn");
    for var in ENV_VARS {
        cmd.env_remove(var);
    }
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("meshserver binary runs")
}

fn assert_success(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn info_json(cmd: &mut Command) -> Value {
    let stdout = assert_success(&output(cmd));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("info --json printed {stdout:?}: {e}"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A loopback port the kernel just handed out and released.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

/// A `meshserver run` child process, killed when dropped so a failing test leaks no node.
struct RunningNode {
    child: Child,
    url: String,
}

impl RunningNode {
    /// Spawns `cmd` (a `run` command) and waits until `url` answers `GET /_meshserver/v1/node`.
    async fn spawn(mut cmd: Command, url: String) -> (RunningNode, Value) {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meshserver run");
        let mut node = RunningNode { child, url };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = node.child.try_wait().expect("try_wait") {
                panic!(
                    "node exited early with {status}: {}",
                    read_all(node.child.stderr.take())
                );
            }
            if let Ok(res) = reqwest::get(format!("{}/_meshserver/v1/node", node.url)).await {
                assert_eq!(res.status(), 200);
                let info: Value = res.json().await.expect("node info is JSON");
                return (node, info);
            }
            assert!(
                Instant::now() < deadline,
                "node at {} did not answer in time",
                node.url
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

/// Everything left in a child's pipe (it has exited, so this ends).
fn read_all(pipe: Option<impl std::io::Read>) -> String {
    let mut text = String::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_string(&mut text);
    }
    text
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn info_prints_a_stable_self_certifying_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let first = info_json(&mut meshserver(&[
        "info",
        "--json",
        "--data-dir",
        path_str(&data),
    ]));
    let name = first["server_name"].as_str().expect("server_name string");
    assert_eq!(name.len(), 64, "{name}");
    assert!(
        name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{name}"
    );
    assert_eq!(first["data_dir"], path_str(&data));
    assert_eq!(first["client_url"], "http://127.0.0.1:8008");

    let second = info_json(&mut meshserver(&[
        "info",
        "--json",
        "--data-dir",
        path_str(&data),
    ]));
    assert_eq!(first, second, "identity changed between runs");

    let key_path = data.join("signing.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path)
            .expect("signing.key exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "signing.key mode is {:o}", mode & 0o777);
    }
    let text = std::fs::read_to_string(&key_path).expect("read signing.key");
    let parts: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(parts.len(), 3, "signing.key is {text:?}");
    assert_eq!(parts[0], "ed25519");
    assert_eq!(first["key_id"], format!("ed25519:{}", parts[1]));
    let seed = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(parts[2])
        .expect("unpadded base64 seed");
    let seed: [u8; 32] = seed.try_into().expect("32-byte seed");
    // The name is the public key: derive it independently of the node's code.
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    assert_eq!(hex::encode(public.as_bytes()), name);

    // The text form names the same server; another data dir is another identity.
    let text_out = assert_success(&output(&mut meshserver(&["info", "--data-dir", path_str(&data)])));
    assert!(text_out.contains(&format!("server_name: {name}")), "{text_out}");
    let other = info_json(&mut meshserver(&[
        "info",
        "--json",
        "--data-dir",
        path_str(&dir.path().join("b")),
    ]));
    assert_ne!(other["server_name"], first["server_name"]);
}

#[test]
fn info_rejects_a_corrupt_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("signing.key"), "ed25519 a_x not-base64!\n").expect("write key");
    let out = output(&mut meshserver(&["info", "--data-dir", path_str(dir.path())]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("signing.key"));
}

#[tokio::test]
async fn user_add_creates_an_account_a_running_node_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, "correct horse\nignored second line\n").expect("write password");
    let add = |name: &str| {
        output(&mut meshserver(&[
            "user",
            "add",
            name,
            "--password-file",
            path_str(&pw_file),
            "--data-dir",
            path_str(&data),
        ]))
    };
    let stdout = assert_success(&add("alice"));
    let server_name = info_json(&mut meshserver(&[
        "info",
        "--json",
        "--data-dir",
        path_str(&data),
    ]))["server_name"]
        .as_str()
        .expect("server_name")
        .to_owned();
    let alice = format!("@alice:{server_name}");
    assert_eq!(stdout.trim(), alice);

    // Taken names, invalid names, missing and empty password files all fail and say so.
    assert!(!add("alice").status.success(), "adding alice twice succeeded");
    assert!(
        !add("Not Valid!").status.success(),
        "an invalid localpart was accepted"
    );
    let missing = output(&mut meshserver(&[
        "user",
        "add",
        "bob",
        "--password-file",
        path_str(&dir.path().join("nope")),
        "--data-dir",
        path_str(&data),
    ]));
    assert!(!missing.status.success());
    std::fs::write(&pw_file, "\n").expect("write empty password");
    assert!(!add("carol").status.success(), "an empty password was accepted");

    // Without --password-file the password is the first line of stdin.
    let mut child = meshserver(&["user", "add", "dave", "--data-dir", path_str(&data)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn user add");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin piped");
        stdin.write_all(b"from stdin\n").expect("write password");
    }
    let out = child.wait_with_output().expect("user add finishes");
    assert_eq!(assert_success(&out).trim(), format!("@dave:{server_name}"));

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let cmd = meshserver(&["run", "--data-dir", path_str(&data), "--client-listen", &listen]);
    let (node, _) = RunningNode::spawn(cmd, url).await;
    let login = |user: &str, password: &str| {
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
               "password": password})
    };
    let (status, body) = node
        .post("/_matrix/client/v3/login", login("alice", "correct horse"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], alice);
    assert!(body["access_token"].is_string());
    // Only the first line of the file is the password.
    let (status, body) = node
        .post(
            "/_matrix/client/v3/login",
            login("alice", "correct horse\nignored second line"),
        )
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
    let (status, body) = node
        .post("/_matrix/client/v3/login", login("dave", "from stdin"))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = node
        .post("/_matrix/client/v3/login", login("bob", "correct horse"))
        .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{body}"
    );
}

#[tokio::test]
async fn run_serves_node_info_and_stops_on_sigint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let expected = info_json(&mut meshserver(&[
        "info",
        "--json",
        "--data-dir",
        path_str(&data),
        "--client-listen",
        &listen,
    ]));
    let cmd = meshserver(&["run", "--data-dir", path_str(&data), "--client-listen", &listen]);
    let (mut node, info) = RunningNode::spawn(cmd, url.clone()).await;
    assert_eq!(info["server_name"], expected["server_name"]);
    assert_eq!(info["key_id"], expected["key_id"]);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["client_url"], url);
    assert!(info["uptime_ms"].is_u64(), "{info}");

    // Ctrl-C (SIGINT) shuts the node down cleanly, printing where it listened first.
    let pid = node.child.id().to_string();
    let kill = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = node.child.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "node ignored SIGINT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    let stdout = read_all(node.child.stdout.take());
    let name = expected["server_name"].as_str().expect("server_name");
    assert!(
        stdout.contains(&format!("meshserver {name} listening on {url}")),
        "{stdout:?}"
    );
}

#[tokio::test]
async fn run_honours_env_and_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Environment only.
    let port = free_port();
    let mut cmd = meshserver(&["run", "--data-dir", path_str(&dir.path().join("env"))]);
    cmd.env("MESHSERVER_CLIENT_LISTEN", format!("127.0.0.1:{port}"));
    let (node, info) = RunningNode::spawn(cmd, format!("http://127.0.0.1:{port}")).await;
    assert_eq!(info["client_url"], node.url);
    drop(node);

    // Config file only, data dir included.
    let port = free_port();
    let file_dir = dir.path().join("file");
    let config = dir.path().join("meshserver.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nclient_listen = \"127.0.0.1:{port}\"\nsqlite_synchronous = \"full\"\n",
            path_str(&file_dir)
        ),
    )
    .expect("write config");
    let cmd = meshserver(&["run", "--config", path_str(&config)]);
    let (node, info) = RunningNode::spawn(cmd, format!("http://127.0.0.1:{port}")).await;
    assert_eq!(info["client_url"], node.url);
    assert!(
        file_dir.join("signing.key").exists(),
        "data_dir from the file was not used"
    );
    let by_dir = info_json(&mut meshserver(&[
        "info",
        "--json",
        "--data-dir",
        path_str(&file_dir),
    ]));
    assert_eq!(info["server_name"], by_dir["server_name"]);
}

#[test]
fn flags_override_env_override_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("meshserver.toml");
    let file_data = dir.path().join("from-file");
    let env_data = dir.path().join("from-env");
    let flag_data = dir.path().join("from-flag");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nclient_listen = \"127.0.0.1:1001\"\n",
            path_str(&file_data)
        ),
    )
    .expect("write config");
    let info = |env: &[(&str, &str)], flags: &[&str]| {
        let mut args = vec!["info", "--json"];
        args.extend_from_slice(flags);
        let mut cmd = meshserver(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let v = info_json(&mut cmd);
        (
            v["data_dir"].as_str().map(str::to_owned),
            v["client_url"].as_str().map(str::to_owned),
        )
    };
    let cfg = path_str(&config);
    let want = |data: &Path, port: u16| {
        (
            Some(path_str(data).to_owned()),
            Some(format!("http://127.0.0.1:{port}")),
        )
    };

    assert_eq!(info(&[], &["--config", cfg]), want(&file_data, 1001));
    // The file's path may itself come from the environment.
    assert_eq!(info(&[("MESHSERVER_CONFIG", cfg)], &[]), want(&file_data, 1001));
    let env = [
        ("MESHSERVER_DATA_DIR", path_str(&env_data)),
        ("MESHSERVER_CLIENT_LISTEN", "127.0.0.1:1002"),
    ];
    assert_eq!(info(&env, &["--config", cfg]), want(&env_data, 1002));
    let flags = [
        "--config",
        cfg,
        "--data-dir",
        path_str(&flag_data),
        "--client-listen",
        "127.0.0.1:1003",
    ];
    assert_eq!(info(&env, &flags), want(&flag_data, 1003));
    // Unset layers fall through: a flag for one key leaves the others to env and file.
    assert_eq!(
        info(
            &[("MESHSERVER_CLIENT_LISTEN", "127.0.0.1:1002")],
            &["--config", cfg, "--data-dir", path_str(&flag_data)]
        ),
        want(&flag_data, 1002)
    );
}

#[test]
fn bad_configuration_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = path_str(dir.path());
    let config = dir.path().join("bad.toml");
    let refused = |cmd: &mut Command, needle: &str| {
        let out = output(cmd);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "accepted; stderr: {stderr}");
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    };
    std::fs::write(&config, "listen = \"127.0.0.1:1\"\n").expect("write config");
    refused(
        &mut meshserver(&["info", "--data-dir", data, "--config", path_str(&config)]),
        "bad.toml",
    );
    std::fs::write(&config, "sqlite_synchronous = \"sometimes\"\n").expect("write config");
    refused(
        &mut meshserver(&["info", "--data-dir", data, "--config", path_str(&config)]),
        "sqlite_synchronous",
    );
    refused(
        &mut meshserver(&[
            "info",
            "--data-dir",
            data,
            "--config",
            path_str(&dir.path().join("missing.toml")),
        ]),
        "missing.toml",
    );
    refused(
        &mut meshserver(&["info", "--data-dir", data, "--client-listen", "nowhere"]),
        "client-listen",
    );
    refused(
        meshserver(&["info", "--data-dir", data]).env("MESHSERVER_CLIENT_LISTEN", "nowhere"),
        "client-listen",
    );
}
