//! The sender side of `/meshserver/mailbox/1`: to-device and invite messages that wait in
//! the outbox for a destination that has failed [`STALLED_ATTEMPTS`] times are also
//! deposited, signed, with up to [`MAX_HOLDERS`] connected nodes that share a room with
//! it. They stay in the outbox: whichever copy arrives first is stored, the rest are
//! recognised as duplicates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::item::{item_id, sign_item};
use crate::api::account::now_ms;
use crate::p2p::wire::{MAX_MAIL_PER_FRAME, MAX_REQUEST_BYTES, Request, Response};
use crate::services::AppState;
use crate::storage::mailbox::{self as store, MAX_ITEM_BYTES, Pending};

/// Failed attempts after which a destination counts as away and its mail is deposited.
pub const STALLED_ATTEMPTS: i64 = 2;
/// Most holders one message is deposited with.
pub const MAX_HOLDERS: usize = 3;
/// Most outbox rows one round looks at.
const MAX_ROWS: usize = 1024;
/// Bytes of items per deposit frame, under the request cap with room for the envelope.
const DEPOSIT_BYTES: usize = MAX_REQUEST_BYTES as usize - 64 * 1024;

/// How long a holder that refused or failed a deposit is left alone.
const HOLDER_PAUSE: Duration = Duration::from_secs(30);

/// What the sender remembers between rounds: which rows each holder already took, and
/// which holders refused lately.
#[derive(Default)]
pub struct Sender {
    deposited: HashSet<(String, i64)>,
    paused: HashMap<String, Instant>,
}

impl Sender {
    /// Deposits stalled mail with connected holders. Returns whether to look again soon:
    /// some mail has not stalled yet (it may, or be delivered). With nothing queued, or
    /// everything stalled and deposited where possible, only a commit or a newly seen
    /// peer starts the next round.
    pub async fn round(&mut self, s: &AppState) -> bool {
        let pending = match s.db.read(|c| store::pending_mail(c, MAX_ROWS)).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e.message, "reading the outbox for mailboxes failed");
                return false;
            }
        };
        if pending.is_empty() {
            self.paused.clear();
        }
        let queued: HashSet<i64> = pending.iter().map(|p| p.id).collect();
        self.deposited.retain(|(_, id)| queued.contains(id));
        let again = pending.iter().any(|p| p.attempts < STALLED_ATTEMPTS);
        let mut stalled: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        for p in pending.into_iter().filter(|p| p.attempts >= STALLED_ATTEMPTS) {
            stalled.entry(p.destination.clone()).or_default().push(p);
        }
        if stalled.is_empty() {
            return again;
        }
        let connected: HashSet<String> = s
            .p2p
            .info()
            .await
            .peers
            .into_iter()
            .filter_map(|p| p.server_name)
            .collect();
        for (dest, rows) in stalled {
            // Reachable again: the outbox delivers it itself.
            if connected.contains(&dest) {
                continue;
            }
            let d = dest.clone();
            let holders =
                s.db.read(move |c| store::holders_for(c, &d))
                    .await
                    .unwrap_or_default();
            let ours = s.server_name().as_str();
            let chosen = holders
                .into_iter()
                .filter(|h| connected.contains(h) && h != &dest && h != ours)
                .filter(|h| self.paused.get(h).is_none_or(|t| t.elapsed() >= HOLDER_PAUSE))
                .take(MAX_HOLDERS)
                .collect::<Vec<_>>();
            for holder in chosen {
                self.deposit_with(s, &holder, &dest, &rows).await;
            }
        }
        again
    }

    /// Deposits with `holder` the rows it does not hold yet, in frames under the cap.
    async fn deposit_with(&mut self, s: &AppState, holder: &str, dest: &str, rows: &[Pending]) {
        let Ok(server) = ruma::ServerName::parse(holder) else {
            return;
        };
        let mut frame: Vec<(i64, crate::p2p::wire::MailItem)> = Vec::new();
        let mut used = 0;
        let todo: Vec<&Pending> = rows
            .iter()
            .filter(|r| !self.deposited.contains(&(holder.to_owned(), r.id)))
            .collect();
        for row in todo {
            let Some(item) = signed(s, dest, row) else {
                continue;
            };
            let size = serde_json::to_string(&item).map_or(usize::MAX, |t| t.len());
            if size > MAX_ITEM_BYTES {
                continue;
            }
            if frame.len() == MAX_MAIL_PER_FRAME || (!frame.is_empty() && used + size > DEPOSIT_BYTES) {
                if !self.send(s, &server, std::mem::take(&mut frame)).await {
                    return;
                }
                used = 0;
            }
            used += size;
            frame.push((row.id, item));
        }
        if !frame.is_empty() {
            self.send(s, &server, frame).await;
        }
    }

    /// One deposit; remembers its rows as held by `holder` when it took them.
    async fn send(
        &mut self,
        s: &AppState,
        holder: &ruma::ServerName,
        frame: Vec<(i64, crate::p2p::wire::MailItem)>,
    ) -> bool {
        let (ids, items): (Vec<i64>, Vec<_>) = frame.into_iter().unzip();
        match s.p2p.request(holder, Request::Deposit { items }).await {
            Ok(Response::Deposited { stored, duplicates }) => {
                tracing::info!(%holder, stored, duplicates, "deposited mail for an absent node");
                self.deposited
                    .extend(ids.into_iter().map(|id| (holder.to_string(), id)));
                true
            }
            other => {
                tracing::info!(%holder, ?other, "holder did not take the deposit");
                self.paused.retain(|_, t| t.elapsed() < HOLDER_PAUSE);
                self.paused.insert(holder.to_string(), Instant::now());
                false
            }
        }
    }
}

/// The signed item for a queued row; `None` for a body that is not canonical JSON (it
/// then travels by the outbox only).
fn signed(s: &AppState, dest: &str, row: &Pending) -> Option<crate::p2p::wire::MailItem> {
    let body: Value = serde_json::from_str(&row.body).ok()?;
    let id = item_id(&row.kind, &row.body);
    let ts = u64::try_from(now_ms()).unwrap_or(0);
    sign_item(&s.identity, dest, &row.kind, body, id, ts).ok()
}
