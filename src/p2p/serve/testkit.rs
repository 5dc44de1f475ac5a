//! In-process nodes for the handler tests: real data dirs and SQLite files, no network
//! (the peer network's command channel is closed, so asking a peer fails at once).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ruma::OwnedServerName;
use serde_json::{Value, json};

use crate::config::Config;
use crate::identity::Identity;
use crate::room::create::{CreateRoom, create_room};
use crate::room::ingest::{Outcome, ingest};
use crate::room::{NewEvent, append_local};
use crate::services::AppState;
use crate::storage::sync::{ToDevice, to_device_between};
use crate::storage::{accounts, e2ee};

pub struct TestNode {
    pub s: AppState,
    _dir: tempfile::TempDir,
}

pub fn node() -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let (services, commands) = crate::node::open_services(Config::for_data_dir(dir.path())).unwrap();
    drop(commands);
    TestNode {
        s: Arc::new(services),
        _dir: dir,
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
        format!("@{name}:{}", self.s.server_name())
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
        let (id, creator) = (self.s.identity.clone(), ruma::UserId::parse(creator).unwrap());
        self.s
            .db
            .write(move |tx| {
                let req: CreateRoom = serde_json::from_value(req).unwrap();
                let plan = req.plan(&id)?;
                create_room(tx, &id, &creator, &req, plan)
            })
            .await
            .unwrap()
            .to_string()
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
        let pdus: Vec<String> = from
            .s
            .db
            .read(|c| {
                let mut stmt = c.prepare("SELECT json FROM events ORDER BY stream_ordering")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .await
            .unwrap();
        for json in pdus {
            let id = self.s.identity.clone();
            let pdu = serde_json::from_str(&json).unwrap();
            let out = self.s.db.write(move |tx| ingest(tx, &id, pdu)).await.unwrap();
            assert!(
                matches!(out, Outcome::Stored { .. } | Outcome::AlreadyKnown(_)),
                "{out:?}"
            );
        }
    }

    /// `user` of this node joins `room` (which this node already replicates).
    pub async fn join(&self, room: &str, user: &str) {
        let (id, room, user) = (
            self.s.identity.clone(),
            ruma::RoomId::parse(room).unwrap(),
            ruma::UserId::parse(user).unwrap(),
        );
        self.s
            .db
            .write(move |tx| {
                let ev = NewEvent::state("m.room.member", user.as_str(), json!({"membership": "join"}));
                append_local(tx, &id, &room, &user, ev, None).map(|_| ())
            })
            .await
            .unwrap();
    }
}
