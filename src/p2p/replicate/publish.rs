//! Gossip out: every event this node creates is published on its room's topic once it is
//! committed (stored first, published second), and typing and public read receipts of
//! local users as EDUs. Gossip is best effort: the outbox and the repair path deliver what
//! it loses. Reading every stored event anyway, the publisher also tells the neighbours
//! task ([`super::neighbours`]) which rooms changed.

use std::collections::BTreeSet;
use std::time::Duration;

use ruma::UserId;

use crate::p2p::wire::{Edu, WirePdu, encode_edu, encode_gossip};
use crate::services::AppState;
use crate::storage::replication::{events_after, has_local_member};
use crate::storage::user_data::UNTHREADED;

/// Events read per wake-up; more are read at once on the next turn of the loop.
const BATCH: usize = 500;
/// Longest sleep without a wake-up, so a missed notification cannot stall publishing.
const IDLE: Duration = Duration::from_secs(30);

/// Publishes every local event committed after the node started, in stream order. Older
/// ones are the outbox's to deliver. Also keeps the node subscribed to exactly the rooms
/// with a joined local user.
pub async fn run_publisher(s: AppState) {
    let notifier = s.db.notifier().clone();
    let mut pos = notifier.current().stream;
    loop {
        let now = notifier.current();
        if now.stream <= pos {
            notifier.wait_past(now, IDLE).await;
            continue;
        }
        match publish_after(&s, pos, now.stream).await {
            Ok(p) => pos = p,
            Err(e) => {
                tracing::warn!(error = %e.message, "publisher could not read new events");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Publishes local events after `pos`; returns the position reached (`upto`, committed
/// before the read began, once the batch is not full).
async fn publish_after(s: &AppState, pos: i64, upto: i64) -> crate::Result<i64> {
    let rows = s.db.read(move |c| events_after(c, pos, BATCH)).await?;
    let full = rows.len() == BATCH;
    let mut reached = pos;
    let mut membership_changed = BTreeSet::new();
    let mut changed_rooms = BTreeSet::new();
    for ev in rows {
        reached = ev.stream;
        if !changed_rooms.contains(&ev.room_id) {
            changed_rooms.insert(ev.room_id.clone());
        }
        let is_local = |user: &str| UserId::parse(user).is_ok_and(|u| u.server_name() == s.server_name());
        if ev.kind == "m.room.member" && ev.state_key.as_deref().is_some_and(is_local) {
            membership_changed.insert(ev.room_id.clone());
        }
        if !is_local(&ev.sender) {
            continue;
        }
        match serde_json::from_str::<WirePdu>(&ev.json) {
            Ok(mut pdu) => {
                pdu.remove("unsigned");
                s.p2p
                    .publish(&ev.room_id, encode_gossip(&ev.event_id, &pdu))
                    .await;
            }
            Err(e) => tracing::warn!(event_id = ev.event_id, error = %e, "stored event is not JSON"),
        }
    }
    // Every stored event, whoever sent it, may move the room's heads for the neighbours.
    for room in &changed_rooms {
        s.p2p.neighbours.changed(room);
    }
    // After publishing, so a leave still goes out before the topic is dropped.
    for room in membership_changed {
        let r = room.clone();
        if s.db.read(move |c| has_local_member(c, &r)).await? {
            s.p2p.subscribe(&room).await;
        } else {
            s.p2p.unsubscribe(&room).await;
        }
    }
    Ok(if full { reached } else { reached.max(upto) })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Tells the room's other nodes that a local user started or stopped typing.
pub async fn publish_typing(s: &AppState, room_id: &str, user_id: &str, typing: bool) {
    let edu = Edu::Typing {
        room_id: room_id.to_owned(),
        user_id: user_id.to_owned(),
        typing,
        ts: now_ms(),
    };
    s.p2p.publish(room_id, encode_edu(&edu)).await;
}

/// Tells the room's other nodes about a local user's receipt. Only public `m.read`
/// receipts leave the node: private ones and the fully-read marker are the user's own.
pub async fn publish_receipt(
    s: &AppState,
    room_id: &str,
    user_id: &str,
    receipt_type: &str,
    event_id: &str,
    thread_id: &str,
) {
    if receipt_type != "m.read" {
        return;
    }
    let edu = Edu::Receipt {
        room_id: room_id.to_owned(),
        user_id: user_id.to_owned(),
        receipt_type: receipt_type.to_owned(),
        event_id: event_id.to_owned(),
        thread_id: (thread_id != UNTHREADED).then(|| thread_id.to_owned()),
        ts: now_ms(),
    };
    s.p2p.publish(room_id, encode_edu(&edu)).await;
}
