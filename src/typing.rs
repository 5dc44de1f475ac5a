//! Who is typing where: in memory only, as the spec allows (typing is ephemeral).
//!
//! Each change takes the next node-wide typing serial from the notifier (waking long-polls)
//! and records it per room, so /sync sends `m.typing` only for rooms that changed since the
//! client's token. Expiry is a change too: [`run_expiry`] wakes exactly when the next
//! entry runs out, and sleeps while nobody is typing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::notifier::Notifier;

/// Longest typing timeout a client may ask for; typing is a hint, not state.
pub const MAX_TYPING: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    users: HashMap<String, Instant>,
    serial: u64,
}

pub struct Typing {
    notifier: Notifier,
    rooms: Mutex<HashMap<String, RoomTyping>>,
    changed: Notify,
}

impl Typing {
    pub fn new(notifier: Notifier) -> Self {
        Self {
            notifier,
            rooms: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        }
    }

    /// Marks `user` typing in `room` for `typing` (capped), or stops it with `None`.
    pub fn set(&self, room: &str, user: &str, typing: Option<Duration>) {
        if let Ok(mut rooms) = self.rooms.lock() {
            let entry = rooms.entry(room.to_owned()).or_default();
            match typing {
                Some(t) => {
                    entry
                        .users
                        .insert(user.to_owned(), Instant::now() + t.min(MAX_TYPING));
                }
                None => {
                    entry.users.remove(user);
                }
            }
            entry.serial = self.notifier.bump_typing();
        }
        self.changed.notify_one();
    }

    /// The users typing in `room` now.
    pub fn users_in(&self, room: &str) -> Vec<String> {
        let now = Instant::now();
        let Ok(rooms) = self.rooms.lock() else {
            return Vec::new();
        };
        let Some(entry) = rooms.get(room) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entry
            .users
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(u, _)| u.clone())
            .collect();
        out.sort();
        out
    }

    /// The typing serial of the last change in `room` (0 if none since start).
    pub fn room_serial(&self, room: &str) -> u64 {
        self.rooms
            .lock()
            .ok()
            .and_then(|r| r.get(room).map(|e| e.serial))
            .unwrap_or(0)
    }

    /// Drops expired entries, bumping the serial of each room that changed. Returns when
    /// the next entry expires, if any.
    fn expire(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut rooms = self.rooms.lock().ok()?;
        let mut next: Option<Instant> = None;
        rooms.retain(|_, entry| {
            let before = entry.users.len();
            entry.users.retain(|_, until| *until > now);
            if entry.users.len() != before {
                entry.serial = self.notifier.bump_typing();
            }
            if let Some(first) = entry.users.values().min() {
                next = Some(next.map_or(*first, |n| n.min(*first)));
            }
            // Keep empty rooms that changed: their serial tells syncs to send the empty list.
            !entry.users.is_empty() || entry.serial > 0
        });
        next
    }
}

/// Expires typing entries on time, so waiting syncs hear that someone stopped.
pub async fn run_expiry(typing: Arc<Typing>) {
    loop {
        let notified = typing.changed.notified();
        match typing.expire() {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}
