//! The destination side of `/meshserver/mailbox/1`: a holder's notice makes this node
//! collect its mail from that holder, open each item, and acknowledge what it is done with.

use ruma::ServerName;

use super::item::{Opened, open};
use crate::p2p::wire::{MAX_MAIL_PER_FRAME, Request, Response};
use crate::services::AppState;
use crate::{Error, Result};

/// Most pages one collection reads: the holder's per-destination quota in full pages,
/// with room to spare.
const MAX_PAGES: usize = 16;

/// What one collection did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub delivered: usize,
    pub refused: usize,
}

/// Collects this node's mail from `holder` page by page. Each page acknowledges the one
/// before it, and a last `ack` the final one; an item this node cannot take now (busy)
/// stops the collection before it, so it stays with the holder.
pub async fn collect_from(s: &AppState, holder: &ServerName) -> Result<Collected> {
    let mut done = Collected::default();
    let mut ack: Option<i64> = None;
    for _ in 0..MAX_PAGES {
        let req = Request::Collect {
            ack,
            limit: MAX_MAIL_PER_FRAME as u32,
        };
        let (items, more) = match s.p2p.request(holder, req).await? {
            Response::Mail { items, more } if items.len() <= MAX_MAIL_PER_FRAME => (items, more),
            Response::Error { errcode, error } => {
                return Err(Error::internal(format!(
                    "{holder} refused collect: {errcode} {error}"
                )));
            }
            _ => return Err(Error::internal(format!("{holder} answered collect wrongly"))),
        };
        let mut last = ack;
        let mut stopped = false;
        for held in items {
            // Pages ascend; anything else is the holder's mistake, and is skipped.
            if last.is_some_and(|l| held.seq <= l) {
                continue;
            }
            match open(s, held.item).await {
                Opened::Delivered => done.delivered += 1,
                Opened::Refused(why) => {
                    tracing::info!(%holder, seq = held.seq, why, "refused a collected mail item");
                    done.refused += 1;
                }
                Opened::Retry => {
                    stopped = true;
                    break;
                }
            }
            last = Some(held.seq);
        }
        let progressed = last != ack;
        ack = last;
        if stopped || !more || !progressed {
            break;
        }
    }
    if let Some(up_to) = ack {
        match s.p2p.request(holder, Request::Ack { up_to }).await {
            Ok(Response::Ok {}) => {}
            // Unacknowledged items are served again and stored once: no harm.
            other => tracing::debug!(%holder, ?other, "mail ack not confirmed"),
        }
    }
    Ok(done)
}

/// `have_mail` on `/meshserver/mailbox/1`: the holder (`origin`) says it holds mail for
/// this node; collecting it happens within the request, so the inbound limit bounds how
/// many collections run at once.
pub async fn have_mail(s: &AppState, origin: &ServerName, count: u32) -> Result<Response> {
    if count > 0 {
        match collect_from(s, origin).await {
            Ok(c) => {
                tracing::info!(holder = %origin, delivered = c.delivered, refused = c.refused, "collected mail")
            }
            Err(e) => tracing::info!(holder = %origin, error = %e.message, "collecting mail failed"),
        }
    }
    Ok(Response::Ok {})
}
