//! Events some task is storing right now, so that a task needing one waits for it instead
//! of fetching it again.
//!
//! Gossip hands the node a burst's events concurrently (one task each), so the task of an
//! event can find its parent missing while the parent's own task is still verifying it;
//! and a peer's heads can name an event whose gossip copy is a moment behind. Fetching in
//! either case moves every event twice. Likewise several peers' heads naming one gap
//! would each fetch it: fetches for a room take turns ([`InFlight::room_turn`]), and each
//! turn first drops what an earlier one brought.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedMutexGuard};

/// Rooms remembered for their last gossip arrival before old ones are pruned.
const MAX_ROOMS: usize = 1024;
/// How long a room counts as receiving gossip after its last gossiped event.
pub const GOSSIP_ACTIVE: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct InFlight {
    ids: Mutex<HashSet<String>>,
    released: Notify,
    gossip: Mutex<HashMap<String, Instant>>,
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An event claimed by the task storing it; released (and waiters woken) on drop.
pub struct Claim<'a> {
    owner: &'a InFlight,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(&self.owner.ids).remove(&self.id);
        self.owner.released.notify_waiters();
    }
}

/// A poisoned lock only means another task panicked mid-update of a cache: keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl InFlight {
    /// Claims `id` for the caller; `None` when another task is storing it already.
    pub fn claim(&self, id: &str) -> Option<Claim<'_>> {
        lock(&self.ids).insert(id.to_owned()).then(|| Claim {
            owner: self,
            id: id.to_owned(),
        })
    }

    fn any(&self, ids: &[String]) -> bool {
        let held = lock(&self.ids);
        ids.iter().any(|id| held.contains(id))
    }

    /// Waits until none of `ids` is being stored by another task, or `limit` passes.
    /// Returns whether any was (so the caller should look again before fetching).
    pub async fn settle(&self, ids: &[String], limit: Duration) -> bool {
        if !self.any(ids) {
            return false;
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.any(ids) {
                return true;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return true;
            }
        }
    }

    /// Notes that a gossiped event of `room` arrived now.
    pub fn gossip_arrived(&self, room: &str) {
        let mut rooms = lock(&self.gossip);
        if rooms.len() >= MAX_ROOMS && !rooms.contains_key(room) {
            rooms.retain(|_, at| at.elapsed() < GOSSIP_ACTIVE);
            if rooms.len() >= MAX_ROOMS {
                return;
            }
        }
        rooms.insert(room.to_owned(), Instant::now());
    }

    /// Whether gossip is flowing in `room`: an event arrived within [`GOSSIP_ACTIVE`].
    pub fn gossip_active(&self, room: &str) -> bool {
        lock(&self.gossip)
            .get(room)
            .is_some_and(|at| at.elapsed() < GOSSIP_ACTIVE)
    }

    /// Waits for this node's turn to fetch heads of `room`; the turn ends when the guard
    /// is dropped.
    pub async fn room_turn(&self, room: &str) -> OwnedMutexGuard<()> {
        let turn = {
            let mut turns = lock(&self.turns);
            // Turns nobody holds or waits for are only kept while few rooms are busy.
            if turns.len() >= MAX_ROOMS {
                turns.retain(|_, t| Arc::strong_count(t) > 1);
            }
            turns.entry(room.to_owned()).or_default().clone()
        };
        turn.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_when_the_claim_is_released() {
        let f = Arc::new(InFlight::default());
        let ids = vec!["$a".to_owned()];
        assert!(
            !f.settle(&ids, Duration::from_secs(5)).await,
            "nothing claimed: no wait"
        );
        let f2 = f.clone();
        let holder = tokio::spawn(async move {
            let claim = f2.claim("$a");
            assert!(claim.is_some());
            assert!(f2.claim("$a").is_none(), "one claim per event");
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(claim);
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let start = Instant::now();
        assert!(f.settle(&ids, Duration::from_secs(5)).await);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "woken by the release, not the limit"
        );
        holder.await.unwrap();
        assert!(f.claim("$a").is_some(), "released");
    }

    #[tokio::test]
    async fn a_claim_never_released_is_waited_for_only_until_the_limit() {
        let f = InFlight::default();
        let _stuck = f.claim("$b");
        assert!(f.settle(&["$b".to_owned()], Duration::from_millis(30)).await);
    }

    #[test]
    fn gossip_activity_is_remembered_per_room() {
        let f = InFlight::default();
        assert!(!f.gossip_active("!r:x"));
        f.gossip_arrived("!r:x");
        assert!(f.gossip_active("!r:x"));
        assert!(!f.gossip_active("!other:x"));
    }
}
