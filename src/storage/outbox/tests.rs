//! The outbox against a real SQLite file: rows are written in the storing transaction,
//! confirmed by compare-and-delete, backed off within their jitter bounds, and reset when
//! the peer is seen.

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::json;

use super::*;
use crate::identity::Identity;
use crate::notifier::Notifier;
use crate::room::create::{CreateRoom, create_room};
use crate::room::{NewEvent, append_local};
use crate::storage::Db;

struct Fixture {
    db: Db,
    id: Identity,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        db: Db::open(dir.path(), false, Notifier::default()).unwrap(),
        id: Identity::from_seed([7; 32], "a_t"),
        _dir: dir,
    }
}

/// A server name the peer layer can reach (a meshserver key).
fn peer(seed: u8) -> String {
    Identity::from_seed([seed; 32], "a_t").server_name().to_string()
}

fn user(name: &str, server: &str) -> OwnedUserId {
    ruma::UserId::parse(format!("@{name}:{server}")).unwrap()
}

impl Fixture {
    fn alice(&self) -> OwnedUserId {
        user("alice", self.id.server_name().as_str())
    }

    /// A room of alice's with `invitee` invited.
    async fn room_inviting(&self, invitee: OwnedUserId) -> OwnedRoomId {
        let (id, alice) = (self.id.clone(), self.alice());
        self.db
            .write(move |tx| {
                let req = CreateRoom::default();
                let plan = req.plan(&id)?;
                let room = create_room(tx, &id, &alice, &req, plan)?;
                let invite =
                    NewEvent::state("m.room.member", invitee.as_str(), json!({"membership": "invite"}));
                append_local(tx, &id, &room, &alice, invite, None)?;
                Ok(room)
            })
            .await
            .unwrap()
    }

    async fn send(&self, room: &OwnedRoomId) -> crate::Result<()> {
        let (id, alice, room) = (self.id.clone(), self.alice(), room.clone());
        self.db
            .write(move |tx| {
                append_local(
                    tx,
                    &id,
                    &room,
                    &alice,
                    NewEvent::message("m.room.message", json!({"body": "hi"})),
                    None,
                )
                .map(|_| ())
            })
            .await
    }

    async fn rooms(&self, dest: &str, now: i64) -> Vec<RoomHead> {
        let dest = dest.to_owned();
        self.db.read(move |c| due_rooms(c, &dest, now, 64)).await.unwrap()
    }

    async fn messages(&self, dest: &str, now: i64) -> Vec<Message> {
        let dest = dest.to_owned();
        self.db
            .read(move |c| due_messages(c, &dest, now, 2000))
            .await
            .unwrap()
    }

    async fn stream_pos(&self) -> i64 {
        self.db.notifier().current().stream
    }
}

const FAR: i64 = i64::MAX / 2;

#[tokio::test]
async fn local_events_queue_a_head_per_remote_server_in_their_transaction() {
    let f = fixture();
    let bob_server = peer(8);
    let room = f.room_inviting(user("bob", &bob_server)).await;
    // The invite is an event for the invitee's server; nothing is queued for ourselves.
    let rows = f.rooms(&bob_server, FAR).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].room_id, room.as_str());
    assert_eq!(rows[0].stream, f.stream_pos().await);
    assert!(f.rooms(f.id.server_name().as_str(), FAR).await.is_empty());
    // Not due before the coalescing delay.
    assert!(f.rooms(&bob_server, now_ms()).await.is_empty());

    f.send(&room).await.unwrap();
    let after_send = f.rooms(&bob_server, FAR).await;
    assert_eq!(after_send.len(), 1, "a burst of events is one row");
    assert_eq!(after_send[0].stream, f.stream_pos().await);

    // An event whose transaction rolls back queues nothing.
    let (id, alice, r) = (f.id.clone(), f.alice(), room.clone());
    let err =
        f.db.write(move |tx| {
            append_local(
                tx,
                &id,
                &r,
                &alice,
                NewEvent::message("m.room.message", json!({"body": "x"})),
                None,
            )?;
            Err::<(), _>(crate::Error::forbidden("rolled back"))
        })
        .await;
    assert!(err.is_err());
    assert_eq!(f.rooms(&bob_server, FAR).await, after_send);

    // A server that is not a meshserver key gets nothing queued.
    let room2 = f.room_inviting(user("carol", "example.org")).await;
    assert!(f.rooms("example.org", FAR).await.is_empty());
    assert!(
        f.rooms(&bob_server, FAR)
            .await
            .iter()
            .all(|r| r.room_id != room2.as_str())
    );
}

#[tokio::test]
async fn confirmation_deletes_only_if_no_newer_event_arrived() {
    let f = fixture();
    let dest = peer(9);
    let room = f.room_inviting(user("bob", &dest)).await;
    let sent = f.rooms(&dest, FAR).await.remove(0);
    f.send(&room).await.unwrap();

    // The answer covers only what was sent: the newer event keeps the row, due again soon.
    let (d, r) = (dest.clone(), room.to_string());
    let now = now_ms();
    let deleted =
        f.db.write(move |tx| confirm_room(tx, &d, &r, sent.stream, now))
            .await
            .unwrap();
    assert!(!deleted);
    let kept = f.rooms(&dest, FAR).await;
    assert_eq!(kept.len(), 1);
    assert!(kept[0].stream > sent.stream);
    assert!(f.rooms(&dest, now + COALESCE_MS - 1).await.is_empty());
    assert_eq!(f.rooms(&dest, now + COALESCE_MS).await.len(), 1);

    let (d, r, s) = (dest.clone(), room.to_string(), kept[0].stream);
    assert!(
        f.db.write(move |tx| confirm_room(tx, &d, &r, s, now))
            .await
            .unwrap()
    );
    assert!(f.rooms(&dest, FAR).await.is_empty());
}

#[test]
fn backoff_doubles_from_250_ms_to_a_4_s_cap_within_jitter_bounds() {
    assert_eq!((backoff_ms(1, 0.0), backoff_ms(1, 1.0)), (125, 250));
    assert_eq!((backoff_ms(2, 0.0), backoff_ms(2, 1.0)), (250, 500));
    assert_eq!((backoff_ms(5, 0.0), backoff_ms(5, 1.0)), (2_000, 4_000));
    assert_eq!(
        (backoff_ms(1_000, 0.0), backoff_ms(i64::MAX, 1.0)),
        (2_000, 4_000)
    );
    for attempts in 0..40 {
        let d = (BACKOFF_BASE_MS << (attempts.clamp(1, 16) - 1)).min(BACKOFF_CAP_MS);
        let samples: Vec<i64> = (0..200).map(|_| jittered_backoff_ms(attempts)).collect();
        assert!(
            samples.iter().all(|s| (d / 2..=d).contains(s)),
            "attempt {attempts}: {samples:?}"
        );
        // Jitter really spreads retries.
        assert!(
            samples.iter().any(|s| *s != samples[0]),
            "attempt {attempts}: no jitter"
        );
    }
}

#[tokio::test]
async fn seeing_a_peer_makes_its_backed_off_rows_due_now() {
    let f = fixture();
    let (a, b) = (peer(10), peer(11));
    let room = f.room_inviting(user("bob", &a)).await;
    let (a2, b2) = (a.clone(), b.clone());
    f.db.write(move |tx| {
        enqueue_message(tx, &a2, KIND_TO_DEVICE, &json!({"n": 1}))?;
        enqueue_message(tx, &b2, KIND_TO_DEVICE, &json!({"n": 2}))?;
        back_off_destination(tx, &a2, 7, FAR)?;
        back_off_destination(tx, &b2, 3, FAR)
    })
    .await
    .unwrap();
    let now = now_ms() + COALESCE_MS;
    assert!(f.messages(&a, now).await.is_empty());
    assert!(f.rooms(&a, now).await.is_empty());
    let a2 = a.clone();
    assert!(f.db.read(move |c| backing_off(c, Some(&a2))).await.unwrap());

    let (a2, t) = (a.clone(), now_ms());
    assert_eq!(
        f.db.write(move |tx| reset_destination(tx, Some(&a2), t))
            .await
            .unwrap(),
        2
    );
    let msgs = f.messages(&a, t).await;
    assert_eq!((msgs.len(), msgs[0].attempts), (1, 0));
    let rooms = f.rooms(&a, t).await;
    assert_eq!(
        (rooms.len(), rooms[0].room_id.as_str(), rooms[0].attempts),
        (1, room.as_str(), 0)
    );
    // Another peer's backoff is untouched.
    assert!(f.messages(&b, t).await.is_empty());
    let a2 = a.clone();
    assert!(!f.db.read(move |c| backing_off(c, Some(&a2))).await.unwrap());
    // Resetting everyone (after missed peer events) frees the other peer too.
    assert_eq!(
        f.db.write(move |tx| reset_destination(tx, None, t))
            .await
            .unwrap(),
        1
    );
    assert_eq!(f.messages(&b, t).await.len(), 1);

    // A row still coalescing is not pulled forward by a sighting.
    f.send(&room).await.unwrap();
    let (a2, t2) = (a.clone(), now_ms());
    let r = room.to_string();
    f.db.write(move |tx| confirm_room(tx, &a2, &r, 0, t2))
        .await
        .unwrap();
    let a2 = a.clone();
    assert_eq!(
        f.db.write(move |tx| reset_destination(tx, Some(&a2), t2))
            .await
            .unwrap(),
        0
    );
    assert!(f.rooms(&a, t2).await.is_empty());
}

#[tokio::test]
async fn messages_keep_order_and_a_bounded_queue() {
    let f = fixture();
    let dest = peer(12);
    let d = dest.clone();
    f.db.write(move |tx| {
        for n in 0..MAX_MESSAGES_PER_DESTINATION + 5 {
            enqueue_message(tx, &d, KIND_TO_DEVICE, &json!({"n": n}))?;
        }
        Ok(())
    })
    .await
    .unwrap();
    let msgs = f.messages(&dest, now_ms()).await;
    assert_eq!(msgs.len() as i64, MAX_MESSAGES_PER_DESTINATION);
    let ns: Vec<i64> = msgs
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(&m.body).unwrap()["n"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        ns,
        (5..MAX_MESSAGES_PER_DESTINATION + 5).collect::<Vec<_>>(),
        "oldest dropped, order kept"
    );
    let id = msgs[0].id;
    f.db.write(move |tx| delete_message(tx, id)).await.unwrap();
    assert_eq!(f.messages(&dest, now_ms()).await[0].id, msgs[1].id);
}

#[tokio::test]
async fn device_updates_go_to_servers_sharing_a_joined_room_latest_only() {
    let f = fixture();
    let (joined, invited) = (peer(13), peer(14));
    let room = f.room_inviting(user("bob", &invited)).await;
    let (r, carol) = (room.to_string(), user("carol", &joined).to_string());
    let alice = f.alice().to_string();
    f.db.write(move |tx| {
        // Carol's join as a peer's event would leave it in current state.
        tx.execute(
            "INSERT INTO current_state (room_id, type, state_key, event_id, membership) \
                 VALUES (?1, 'm.room.member', ?2, '$carol_join', 'join')",
            params![r, carol],
        )?;
        let keys = json!({"device_id": "D1"});
        for (stream_id, deleted, keys) in [(1, false, Some(&keys)), (2, true, None)] {
            enqueue_device_list_update(
                tx,
                DeviceUpdate {
                    user_id: &alice,
                    device_id: "D1",
                    stream_id,
                    deleted,
                    keys,
                },
            )?;
        }
        enqueue_device_list_update(
            tx,
            DeviceUpdate {
                user_id: &alice,
                device_id: "D2",
                stream_id: 3,
                deleted: false,
                keys: None,
            },
        )
    })
    .await
    .unwrap();
    assert!(
        f.messages(&invited, FAR).await.is_empty(),
        "an invitee shares no joined room"
    );
    let msgs = f.messages(&joined, FAR).await;
    let bodies: Vec<Value> = msgs
        .iter()
        .map(|m| serde_json::from_str(&m.body).unwrap())
        .collect();
    assert!(msgs.iter().all(|m| m.kind == KIND_DEVICE_LIST_UPDATE));
    assert_eq!(
        bodies,
        vec![
            json!({"user_id": f.alice(), "device_id": "D1", "stream_id": 2, "prev_id": [], "deleted": true}),
            json!({"user_id": f.alice(), "device_id": "D2", "stream_id": 3, "prev_id": []}),
        ]
    );
}
