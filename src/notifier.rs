//! Wakes long-polling `/sync` requests. Storage advances the stream position after each
//! commit; typing (kept in memory) bumps its own serial. Waiters re-check what changed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Where the node's streams stand: persisted stream position and in-memory typing serial.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    pub stream: i64,
    pub typing: u64,
}

#[derive(Clone)]
pub struct Notifier {
    tx: Arc<watch::Sender<Position>>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::channel(Position::default()).0),
        }
    }
}

impl Notifier {
    pub fn current(&self) -> Position {
        *self.tx.borrow()
    }

    pub fn advance_stream(&self, pos: i64) {
        self.tx.send_if_modified(|p| {
            let changed = pos > p.stream;
            p.stream = p.stream.max(pos);
            changed
        });
    }

    pub fn bump_typing(&self) -> u64 {
        let mut out = 0;
        self.tx.send_modify(|p| {
            p.typing += 1;
            out = p.typing;
        });
        out
    }

    /// Waits until the position differs from `seen`, or `timeout` passes.
    pub async fn wait_past(&self, seen: Position, timeout: Duration) {
        let mut rx = self.tx.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|p| *p != seen)).await;
    }
}
