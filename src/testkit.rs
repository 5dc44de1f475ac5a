//! In-process nodes for the unit tests: real data dirs and SQLite files, no network.
//!
//! [`Node`] is a bare database and key, driven directly through the room state machine as
//! the peer layer would drive it (PDUs handed over through `ingest`); [`TestNode`] runs the
//! full services of a node, for the handler tests (the peer network's command channel is
//! closed, so asking a peer fails at once).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ruma::canonical_json::CanonicalJsonObject;
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId};
use serde_json::{Value, json};

use crate::config::Config;
use crate::identity::Identity;
use crate::notifier::Notifier;
use crate::pdu::Pdu;
use crate::room::create::{CreateRoom, create_room};
use crate::room::ingest::{Outcome, ingest};
use crate::room::{NewEvent, append_local};
use crate::services::AppState;
use crate::storage::Db;
use crate::storage::state::{StateIds, current_state_ids};
use crate::storage::sync::{ToDevice, to_device_between};
use crate::storage::{accounts, e2ee};

/// A node's database and signing key, nothing running.
pub struct Node {
    pub db: Db,
    pub id: Identity,
    _dir: tempfile::TempDir,
}

/// A bare node whose key is made from `seed`.
pub fn bare(seed: u8) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), false, Notifier::default()).unwrap();
    Node {
        db,
        id: Identity::from_seed([seed; 32], "a_t"),
        _dir: dir,
    }
}

impl Node {
    /// The ID `name` has on this node (not registered).
    pub fn user(&self, name: &str) -> OwnedUserId {
        ruma::UserId::parse(format!("@{name}:{}", self.id.server_name())).unwrap()
    }

    /// A registered user of this node.
    pub async fn register(&self, name: &str) -> OwnedUserId {
        let user = self.user(name);
        let u = user.to_string();
        self.db
            .write(move |tx| accounts::insert_user(tx, &u, None, 0))
            .await
            .unwrap();
        user
    }

    pub async fn create(&self, creator: &OwnedUserId, req: Value) -> OwnedRoomId {
        let (id, creator) = (self.id.clone(), creator.clone());
        self.db
            .write(move |tx| {
                let req: CreateRoom = serde_json::from_value(req).unwrap();
                let plan = req.plan(&id)?;
                create_room(tx, &id, &creator, &req, plan)
            })
            .await
            .unwrap()
    }

    /// A local event, as a client sends it.
    pub async fn send(&self, room: &OwnedRoomId, sender: &OwnedUserId, ev: NewEvent) -> Pdu {
        let (id, room, sender) = (self.id.clone(), room.clone(), sender.clone());
        self.db
            .write(move |tx| append_local(tx, &id, &room, &sender, ev, None))
            .await
            .unwrap()
    }

    /// Every stored PDU, in stream order, as a peer would be sent it.
    pub async fn pdus(&self) -> Vec<(String, CanonicalJsonObject)> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare("SELECT event_id, json FROM events ORDER BY stream_ordering")?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                let mut out = Vec::new();
                for row in rows {
                    let (id, json) = row?;
                    out.push((id, serde_json::from_str(&json).unwrap()));
                }
                Ok(out)
            })
            .await
            .unwrap()
    }

    /// A PDU received from a peer.
    pub async fn ingest(&self, json: CanonicalJsonObject) -> Outcome {
        let id = self.id.clone();
        self.db.write(move |tx| ingest(tx, &id, json)).await.unwrap()
    }

    pub async fn state(&self, room: &OwnedRoomId) -> StateIds {
        let room = room.to_string();
        self.db.read(move |c| current_state_ids(c, &room)).await.unwrap()
    }

    /// Hands this node every PDU `from` holds, as gossip would; each must be stored.
    pub async fn take_all(&self, from: &Node) {
        for o in gossip(from, self).await {
            assert!(matches!(o, Outcome::Stored { .. }), "{o:?}");
        }
    }
}

/// Hands `to` everything `from` holds, in `from`'s order; returns the outcomes of the
/// events `to` did not know.
pub async fn gossip(from: &Node, to: &Node) -> Vec<Outcome> {
    let mut out = Vec::new();
    for (_, json) in from.pdus().await {
        match to.ingest(json).await {
            Outcome::AlreadyKnown(_) => {}
            o => out.push(o),
        }
    }
    out
}

/// A node running the full services; `n` is its database and key.
pub struct TestNode {
    pub s: AppState,
    pub n: Node,
}

pub fn node() -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let (services, commands) = crate::node::open_services(Config::for_data_dir(dir.path())).unwrap();
    drop(commands);
    let n = Node {
        db: services.db.clone(),
        id: services.identity.clone(),
        _dir: dir,
    };
    TestNode {
        s: Arc::new(services),
        n,
    }
}

/// The server name of a node keyed by `seed`.
pub fn server(seed: u8) -> OwnedServerName {
    Identity::from_seed([seed; 32], "t").server_name().to_owned()
}

/// A peer's server name (no node runs under it).
pub fn other_server() -> OwnedServerName {
    server(7)
}

impl TestNode {
    pub fn user(&self, name: &str) -> String {
        self.n.user(name).to_string()
    }

    pub async fn add_user(&self, name: &str) -> String {
        let uid = ruma::UserId::parse(self.user(name)).unwrap();
        crate::api::account::create_user(&self.s, &uid, None)
            .await
            .unwrap();
        uid.to_string()
    }

    /// A device with identity keys and the given one-time key IDs.
    pub async fn add_device(&self, user: &str, device: &str, one_time: &[&str]) {
        let (user, device) = (user.to_owned(), device.to_owned());
        let one_time: Vec<String> = one_time.iter().map(|k| (*k).to_owned()).collect();
        self.s
            .db
            .write(move |tx| {
                accounts::upsert_device(tx, &user, &device, Some("my device"))?;
                let keys = json!({
                    "user_id": user, "device_id": device,
                    "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                    "keys": {format!("ed25519:{device}"): "key"},
                    "signatures": {&user: {format!("ed25519:{device}"): "sig"}},
                });
                e2ee::put_device_keys(tx, &user, &device, &keys)?;
                for id in &one_time {
                    let key = json!({"key": format!("otk {id}")});
                    e2ee::put_one_time_key(tx, &user, &device, "signed_curve25519", id, &key)?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    /// Master and user-signing keys (the latter private to the owner).
    pub async fn set_master_key(&self, user: &str) {
        let user = user.to_owned();
        self.s
            .db
            .write(move |tx| {
                for kind in [e2ee::CrossSigning::Master, e2ee::CrossSigning::UserSigning] {
                    let key = json!({"user_id": user, "usage": [kind.as_str()], "keys": {"ed25519:K": "K"}});
                    e2ee::put_cross_signing_key(tx, &user, kind, &key)?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }

    pub async fn create_room(&self, creator: &str, req: Value) -> String {
        let creator = ruma::UserId::parse(creator).unwrap();
        self.n.create(&creator, req).await.to_string()
    }

    pub fn refused(&self) -> u64 {
        self.s.p2p.counters.refused_requests.load(Ordering::Relaxed)
    }

    pub async fn inbox(&self, user: &str, device: &str) -> Vec<ToDevice> {
        let (user, device) = (user.to_owned(), device.to_owned());
        self.s
            .db
            .read(move |c| to_device_between(c, &user, &device, 0, i64::MAX, 1000))
            .await
            .unwrap()
    }

    /// The current global stream position.
    pub fn stream(&self) -> i64 {
        self.s.db.notifier().current().stream
    }

    /// Hands this node every PDU `from` holds, as gossip would.
    pub async fn take_events_of(&self, from: &TestNode) {
        self.n.take_all(&from.n).await;
    }

    /// `user` of this node joins `room` (which this node already replicates).
    pub async fn join(&self, room: &str, user: &str) {
        let (room, user) = (
            ruma::RoomId::parse(room).unwrap(),
            ruma::UserId::parse(user).unwrap(),
        );
        let ev = NewEvent::state("m.room.member", user.as_str(), json!({"membership": "join"}));
        self.n.send(&room, &user, ev).await;
    }
}
