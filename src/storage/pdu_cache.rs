//! Parsed PDUs by event ID, kept beside the writer connection so that authorising a local
//! event does not read and parse the room's create, power-levels and member events from
//! SQLite again for every send.
//!
//! Only the writer uses it (inside `Db::write`, which holds the writer's lock), and every
//! hit is confirmed against the `events` row (see `events::get_pdu_cached`): an entry is
//! used only while its event is stored and unchanged, so rolled-back inserts, deleted
//! outliers and redactions (which rewrite `events.json`) never serve a stale PDU.

use std::collections::HashMap;
use std::sync::Arc;

use crate::pdu::Pdu;

/// How many PDUs the cache holds: the auth events of the rooms being written to (a few per
/// sender), small enough that a full cache is a few MiB at most.
pub const CAPACITY: usize = 512;

#[derive(Default)]
pub struct PduCache {
    entries: HashMap<String, Entry>,
    /// Increases on every use; the entry with the smallest mark is evicted first.
    clock: u64,
}

struct Entry {
    pdu: Arc<Pdu>,
    /// `events.redacted_by` when the PDU was parsed; a different value means the stored
    /// JSON has been rewritten since.
    redacted_by: Option<String>,
    used: u64,
}

impl PduCache {
    /// The cached PDU of `event_id` if it was parsed while `events.redacted_by` was
    /// `redacted_by`; a stale entry is dropped.
    pub fn get(&mut self, event_id: &str, redacted_by: Option<&str>) -> Option<Arc<Pdu>> {
        self.clock += 1;
        let entry = self.entries.get_mut(event_id)?;
        if entry.redacted_by.as_deref() != redacted_by {
            self.entries.remove(event_id);
            return None;
        }
        entry.used = self.clock;
        Some(entry.pdu.clone())
    }

    pub fn insert(&mut self, pdu: Arc<Pdu>, redacted_by: Option<String>) {
        if self.entries.len() >= CAPACITY
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        let entry = Entry {
            pdu: pdu.clone(),
            redacted_by,
            used: self.clock,
        };
        self.entries.insert(pdu.event_id.to_string(), entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests;
