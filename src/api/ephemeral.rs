//! Ephemeral room data: typing notifications (`PUT /rooms/{roomId}/typing/{userId}`),
//! receipts (`POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`) and read markers
//! (`POST /rooms/{roomId}/read_markers`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Router;

use crate::notifier::Notifier;
use crate::services::AppState;

pub fn add(r: Router<AppState>) -> Router<AppState> {
    r
}

/// Longest typing timeout a client may ask for; typing is a hint, not state.
pub const MAX_TYPING: Duration = Duration::from_secs(120);

/// Who is typing where: in memory only, as the spec allows (typing is ephemeral).
/// Every change bumps the notifier's typing serial so long-polls wake.
pub struct Typing {
    notifier: Notifier,
    rooms: Mutex<HashMap<String, HashMap<String, Instant>>>,
}

impl Typing {
    pub fn new(notifier: Notifier) -> Self {
        Self {
            notifier,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    /// Marks `user` typing in `room` until `timeout` passes, or stops it.
    pub fn set(&self, room: &str, user: &str, typing: Option<Duration>) {
        if let Ok(mut rooms) = self.rooms.lock() {
            let users = rooms.entry(room.to_owned()).or_default();
            match typing {
                Some(t) => {
                    users.insert(user.to_owned(), Instant::now() + t.min(MAX_TYPING));
                }
                None => {
                    users.remove(user);
                }
            }
        }
        self.notifier.bump_typing();
    }

    /// The users typing in `room` now (expired entries dropped).
    pub fn users_in(&self, room: &str) -> Vec<String> {
        let now = Instant::now();
        let Ok(mut rooms) = self.rooms.lock() else {
            return Vec::new();
        };
        let Some(users) = rooms.get_mut(room) else {
            return Vec::new();
        };
        users.retain(|_, until| *until > now);
        let mut out: Vec<String> = users.keys().cloned().collect();
        out.sort();
        out
    }
}
