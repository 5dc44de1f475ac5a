//! matrix-rust-sdk (the SDK under Element X) against a real meshserver node: two users register
//! and log in, exchange end-to-end encrypted messages in an `m.room.encryption` room and each
//! decrypts the other's, and a media upload downloads back byte for byte.
//!
//! The test starts the node itself from the built binary (`MESHSERVER_BIN`, else the root's
//! `target/debug/meshserver`) so that `cargo test` alone runs it; it fails, never skips, when the
//! binary is missing. `bash scripts/test-rust-sdk` builds the binary first. On failure the tail
//! of the node's log is printed (set `RUST_LOG=debug` for every request).

// The SDK's sync future is deep enough to overflow the default limit when checking it is Send.
#![recursion_limit = "256"]

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::EncryptionInfo;
use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::room::Room;
use matrix_sdk::ruma::api::client::account::register::v3::Request as RegistrationRequest;
use matrix_sdk::ruma::api::client::room::create_room::v3::Request as CreateRoomRequest;
use matrix_sdk::ruma::api::client::uiaa::{AuthData, Dummy};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::MediaSource;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::{
    MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent,
};
use matrix_sdk::ruma::{OwnedEventId, OwnedUserId, RoomId, UserId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const PASSWORD: &str = "correct horse battery staple";
/// Generous bound for anything that needs a round of /sync on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(60);

/// A meshserver process on a free loopback port with a throwaway data dir; killed on drop.
struct Node {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start() -> Node {
        let bin = meshserver_bin();
        assert!(
            bin.is_file(),
            "meshserver binary not found at {}: run `cargo build --bin meshserver` at the \
             repository root (or `bash scripts/test-rust-sdk`), or set MESHSERVER_BIN",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("node.log");
        let log_file = File::create(&log).expect("create node log");
        let err_file = log_file.try_clone().expect("clone node log handle");
        // A port the kernel just handed out and released: free unless something grabs it first.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(&bin)
            .arg("run")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--client-listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut node = Node {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        node.wait_ready().await;
        node
    }

    async fn wait_ready(&mut self) {
        let versions = format!("{}/_matrix/client/versions", self.url);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("meshserver exited before serving: {status}");
            }
            if let Ok(r) = matrix_sdk::reqwest::get(&versions).await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "meshserver did not answer {versions} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let mut log = String::new();
            let _ = File::open(&self.log).and_then(|mut f| f.read_to_string(&mut log));
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!("--- meshserver log (last {} lines)", tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

fn meshserver_bin() -> PathBuf {
    match std::env::var_os("MESHSERVER_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/meshserver"),
    }
}

/// Registers `name` the way a client must: the first call gets the user-interactive auth
/// challenge, the second completes its `m.login.dummy` stage with the returned session.
async fn register(url: &str, name: &str) -> OwnedUserId {
    let client = Client::builder()
        .homeserver_url(url)
        .build()
        .await
        .expect("build client");
    let mut req = RegistrationRequest::new();
    req.username = Some(name.to_owned());
    req.password = Some(PASSWORD.to_owned());
    // The test logs in separately, as an app does after sign-up, so /login is exercised too.
    req.inhibit_login = true;
    let challenge = client
        .matrix_auth()
        .register(req.clone())
        .await
        .expect_err("registration without auth must return the UIA challenge");
    let info = challenge
        .as_uiaa_response()
        .unwrap_or_else(|| panic!("expected a 401 UIA response, got {challenge:?}"));
    assert!(
        info.flows
            .iter()
            .any(|f| f.stages.iter().any(|s| s.as_str() == "m.login.dummy")),
        "no m.login.dummy flow offered: {:?}",
        info.flows
    );
    let mut dummy = Dummy::new();
    dummy.session = info.session.clone();
    req.auth = Some(AuthData::Dummy(dummy));
    let resp = client
        .matrix_auth()
        .register(req)
        .await
        .unwrap_or_else(|e| panic!("register {name}: {e:?}"));
    resp.user_id
}

async fn login(url: &str, user: &UserId) -> Client {
    // No store configured: without the `sqlite` feature the SDK keeps state and crypto in memory.
    let client = Client::builder()
        .homeserver_url(url)
        .build()
        .await
        .expect("build client");
    client
        .matrix_auth()
        .login_username(user, PASSWORD)
        .initial_device_display_name("rust-sdk test")
        .send()
        .await
        .unwrap_or_else(|e| panic!("login {user}: {e:?}"));
    // The first sync also uploads the new device's identity and one-time keys.
    client
        .sync_once(SyncSettings::default())
        .await
        .unwrap_or_else(|e| panic!("first sync of {user}: {e:?}"));
    client
}

fn sync_forever(client: &Client) -> JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move {
        let settings = SyncSettings::default().timeout(Duration::from_secs(10));
        if let Err(e) = client.sync(settings).await {
            eprintln!("sync loop of {:?} ended: {e:?}", client.user_id());
        }
    })
}

/// What a client's handlers saw: decrypted messages (with how they were encrypted) and events
/// the SDK could not decrypt, which it never retries for handlers, so one is a failure.
enum Seen {
    Message(Box<OriginalSyncRoomMessageEvent>, Option<EncryptionInfo>),
    Undecryptable(Box<OriginalSyncRoomEncryptedEvent>),
}

fn watch(client: &Client, room_id: &RoomId) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (room_a, room_b) = (room_id.to_owned(), room_id.to_owned());
    let tx2 = tx.clone();
    client.add_event_handler(
        move |ev: OriginalSyncRoomMessageEvent, room: Room, enc: Option<EncryptionInfo>| {
            let (tx, want) = (tx.clone(), room_a.clone());
            async move {
                if room.room_id() == want {
                    let _ = tx.send(Seen::Message(Box::new(ev), enc));
                }
            }
        },
    );
    client.add_event_handler(move |ev: OriginalSyncRoomEncryptedEvent, room: Room| {
        let (tx, want) = (tx2.clone(), room_b.clone());
        async move {
            if room.room_id() == want {
                let _ = tx.send(Seen::Undecryptable(Box::new(ev)));
            }
        }
    });
    rx
}

/// Waits for `event_id` to arrive decrypted; returns its body and encryption info.
async fn expect_decrypted(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    who: &str,
    event_id: &OwnedEventId,
) -> (OriginalSyncRoomMessageEvent, EncryptionInfo) {
    let wait = async {
        loop {
            match rx.recv().await {
                Some(Seen::Message(ev, enc)) if ev.event_id == *event_id => {
                    let enc = enc.unwrap_or_else(|| {
                        panic!("{who} got {event_id} in plain text, not decrypted from megolm")
                    });
                    return (*ev, enc);
                }
                Some(Seen::Undecryptable(ev)) if ev.event_id == *event_id => {
                    panic!("{who} could not decrypt {event_id} (no room key arrived): {ev:?}")
                }
                Some(_) => {}
                None => panic!("{who}'s event handlers were dropped"),
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("{who} did not receive {event_id} within {WAIT:?}"))
}

async fn wait_joined(client: &Client, room_id: &RoomId, member: &UserId) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(room) = client.get_room(room_id)
            && let Ok(Some(m)) = room.get_member_no_sync(member).await
            && *m.membership() == MembershipState::Join
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{:?} did not see {member} join {room_id} within {WAIT:?}",
            client.user_id()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn text_of(ev: &OriginalSyncRoomMessageEvent) -> &str {
    match &ev.content.msgtype {
        MessageType::Text(t) => &t.body,
        other => panic!("expected m.text, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_exchange_and_media_round_trip() {
    let node = Node::start().await;
    let url = node.url.as_str();

    let alice_id = register(url, "alice").await;
    let bob_id = register(url, "bob").await;
    let alice = login(url, &alice_id).await;
    let bob = login(url, &bob_id).await;
    let alice_device = alice.device_id().expect("alice logged in").to_owned();
    let bob_device = bob.device_id().expect("bob logged in").to_owned();

    let mut create = CreateRoomRequest::new();
    create.name = Some("rust-sdk e2ee".to_owned());
    create.invite = vec![bob_id.clone()];
    create.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
            .to_raw_any(),
    ];
    let room = alice.create_room(create).await.expect("alice creates the room");
    let room_id = room.room_id().to_owned();
    assert!(
        room.latest_encryption_state()
            .await
            .expect("encryption state")
            .is_encrypted(),
        "the room's m.room.encryption state did not take"
    );

    let mut alice_seen = watch(&alice, &room_id);
    let mut bob_seen = watch(&bob, &room_id);
    let alice_sync = sync_forever(&alice);
    let bob_sync = sync_forever(&bob);

    bob.join_room_by_id(&room_id).await.expect("bob joins");
    // Alice shares the room key with the members she knows of; she must know bob has joined.
    wait_joined(&alice, &room_id, &bob_id).await;

    let body = "hello bob, only you can read this";
    let sent = room
        .send(RoomMessageEventContent::text_plain(body))
        .await
        .expect("alice sends");
    let (ev, enc) = expect_decrypted(&mut bob_seen, "bob", &sent.response.event_id).await;
    assert_eq!(text_of(&ev), body);
    assert_eq!(ev.sender, alice_id);
    assert_eq!(enc.sender, alice_id);
    assert_eq!(enc.sender_device.as_deref(), Some(&*alice_device));

    // The other way round: bob's own outbound session, shared with alice's device over Olm.
    let bob_room = bob.get_room(&room_id).expect("bob knows the room");
    let reply = "hi alice, read you loud and clear";
    let sent = bob_room
        .send(RoomMessageEventContent::text_plain(reply))
        .await
        .expect("bob replies");
    let (ev, enc) = expect_decrypted(&mut alice_seen, "alice", &sent.response.event_id).await;
    assert_eq!(text_of(&ev), reply);
    assert_eq!(enc.sender, bob_id);
    assert_eq!(enc.sender_device.as_deref(), Some(&*bob_device));

    // Media: alice uploads, bob (another client, so no shared media cache) downloads.
    let blob: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let upload = alice
        .media()
        .upload(&mime::APPLICATION_OCTET_STREAM, blob.clone(), None)
        .await
        .expect("alice uploads media");
    let request = MediaRequestParameters {
        source: MediaSource::Plain(upload.content_uri.clone()),
        format: MediaFormat::File,
    };
    let downloaded = bob
        .media()
        .get_media_content(&request, false)
        .await
        .unwrap_or_else(|e| panic!("bob downloads {}: {e:?}", upload.content_uri));
    assert_eq!(downloaded.len(), blob.len(), "downloaded size differs");
    assert!(downloaded == blob, "downloaded bytes differ from the upload");

    alice_sync.abort();
    bob_sync.abort();
    drop(node);
}
