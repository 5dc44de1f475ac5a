//! (endpoint group; routes added in `add`)

use axum::Router;

use crate::services::AppState;

pub fn add(r: Router<AppState>) -> Router<AppState> {
    r
}

/// Who is typing where: in memory only, as the spec allows (typing is ephemeral).
pub struct Typing {
    notifier: crate::notifier::Notifier,
}

impl Typing {
    pub fn new(notifier: crate::notifier::Notifier) -> Self {
        Self { notifier }
    }
}
