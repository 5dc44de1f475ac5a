//! The holder side of `/meshserver/mailbox/1`: taking deposits, serving a destination its
//! own mail, and telling a destination that connects that mail waits for it.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ruma::{OwnedServerName, ServerName};

use super::item::verify_item;
use crate::api::account::now_ms;
use crate::identity::public_key_of;
use crate::p2p::Counters;
use crate::p2p::wire::{HeldMail, MAX_MAIL_PER_FRAME, MailItem, Request, Response};
use crate::services::AppState;
use crate::storage::mailbox::{self as store, Deposit};
use crate::storage::outbox::{KIND_INVITE, KIND_TO_DEVICE};
use crate::{Error, Result};

/// Bytes of items one `mail` page holds (the response frame cap is 16 MiB).
const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// A destination is told about its mail at most this often, however often it is seen.
const NOTICE_EVERY: Duration = Duration::from_secs(60);
/// Most destinations whose last notice is remembered.
const MAX_NOTICES: usize = 1024;

/// Counts and builds a refusal.
fn refuse(s: &AppState, message: impl Into<String>) -> Error {
    Counters::bump(&s.p2p.counters.refused_requests);
    Error::forbidden(message)
}

/// `deposit` on `/meshserver/mailbox/1`: holds `items` if every one is `origin`'s own,
/// signed, well-formed, for a node sharing a room with `origin` and with this node, and
/// within the quotas; all or none.
pub async fn deposit(s: &AppState, origin: &ServerName, items: Vec<MailItem>) -> Result<Response> {
    if items.len() > MAX_MAIL_PER_FRAME {
        return Err(Error::too_large(format!(
            "at most {MAX_MAIL_PER_FRAME} items per deposit"
        )));
    }
    let mut deposits = Vec::with_capacity(items.len());
    let mut destinations = BTreeSet::new();
    for item in items {
        if item.origin != origin.as_str() {
            return Err(refuse(s, "a node deposits only items it signed itself"));
        }
        if let Err(e) = verify_item(&item) {
            Counters::bump(&s.p2p.counters.refused_requests);
            return Err(e);
        }
        let dest = ServerName::parse(&item.destination)
            .ok()
            .filter(|d| public_key_of(d).is_some())
            .ok_or_else(|| Error::invalid_param("the destination is not a node"))?;
        if dest == s.server_name() || dest == origin {
            return Err(Error::invalid_param(
                "mail for the holder or its sender is not held",
            ));
        }
        if item.kind != KIND_TO_DEVICE && item.kind != KIND_INVITE {
            return Err(Error::invalid_param(format!("unknown mail kind {:?}", item.kind)));
        }
        let text = serde_json::to_string(&item)?;
        if text.len() > store::MAX_ITEM_BYTES {
            return Err(Error::too_large(format!(
                "mail items are at most {} bytes",
                store::MAX_ITEM_BYTES
            )));
        }
        destinations.insert(dest.to_string());
        deposits.push(Deposit {
            destination: dest.to_string(),
            item_id: item.id,
            item: text,
        });
    }
    let (origin_s, now) = (origin.to_string(), now_ms());
    let held =
        s.db.write(move |tx| {
            for d in &destinations {
                if !store::shares_room(tx, d, &origin_s)? {
                    return Err(Error::forbidden(format!(
                        "{d} shares no room with {origin_s} and this node"
                    )));
                }
            }
            store::hold(tx, &origin_s, &deposits, now)
        })
        .await
        .inspect_err(|e| {
            if e.errcode == "M_FORBIDDEN" {
                Counters::bump(&s.p2p.counters.refused_requests);
            }
        })?;
    Ok(Response::Deposited {
        stored: held.stored,
        duplicates: held.duplicates,
    })
}

/// `collect` on `/meshserver/mailbox/1`: deletes `origin`'s mail up to `ack`, then serves
/// the next page of it. Only mail addressed to the connection's proven name is served.
pub async fn collect(s: &AppState, origin: &ServerName, ack: Option<i64>, limit: u32) -> Result<Response> {
    let (dest, now) = (origin.to_string(), now_ms());
    let limit = (limit as usize).clamp(1, MAX_MAIL_PER_FRAME);
    if let Some(up_to) = ack {
        let d = dest.clone();
        s.db.write(move |tx| store::ack(tx, &d, up_to)).await?;
    }
    let after = ack.unwrap_or(0);
    let (rows, more) =
        s.db.read(move |c| store::page(c, &dest, after, limit, PAGE_BYTES, now))
            .await?;
    let items = rows
        .into_iter()
        .filter_map(|(seq, text)| {
            let item: MailItem = serde_json::from_str(&text).ok()?;
            Some(HeldMail { seq, item })
        })
        .collect();
    Ok(Response::Mail { items, more })
}

/// `ack` on `/meshserver/mailbox/1`.
pub async fn ack(s: &AppState, origin: &ServerName, up_to: i64) -> Result<Response> {
    let dest = origin.to_string();
    s.db.write(move |tx| store::ack(tx, &dest, up_to)).await?;
    Ok(Response::Ok {})
}

/// When each destination was last told it has mail.
#[derive(Default)]
pub struct Notices {
    last: HashMap<OwnedServerName, Instant>,
}

impl Notices {
    /// `server` was seen: if mail waits for it here and it was not told lately, tell it
    /// (one small request, in the background). Costs one indexed read per sighting and
    /// nothing on the wire while the mailbox holds nothing for it.
    pub async fn seen(&mut self, s: &AppState, server: OwnedServerName) {
        if self.last.get(&server).is_some_and(|t| t.elapsed() < NOTICE_EVERY) {
            return;
        }
        let (d, now) = (server.to_string(), now_ms());
        let count =
            s.db.read(move |c| store::count_for(c, &d, now))
                .await
                .unwrap_or(0);
        if count == 0 {
            return;
        }
        if self.last.len() >= MAX_NOTICES {
            self.last.retain(|_, t| t.elapsed() < NOTICE_EVERY);
        }
        self.last.insert(server.clone(), Instant::now());
        let s = s.clone();
        tokio::spawn(async move {
            let req = Request::HaveMail {
                count: u32::try_from(count).unwrap_or(u32::MAX),
            };
            if let Err(e) = s.p2p.request(&server, req).await {
                tracing::debug!(%server, error = %e.message, "mail notice not delivered");
            }
        });
    }
}
