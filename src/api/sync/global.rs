//! The parts of a /sync response outside rooms: global account data and presence.

use ruma::api::client::filter::Filter;
use serde_json::{Value, json};

use super::Ctx;
use crate::Result;
use crate::api::account::now_ms;
use crate::api::filter::event_matches;
use crate::api::profile::presence_json;
use crate::storage::sync::{account_data_between, presence_between};
use crate::storage::user_data::GLOBAL;

/// How many events a `Filter` lets through (`limit`, unbounded when absent).
fn limit_of(f: &Filter) -> usize {
    f.limit.map_or(usize::MAX, |l| {
        usize::try_from(u64::from(l)).unwrap_or(usize::MAX)
    })
}

/// Global account data set since the last sync (all of it for an initial sync).
pub(super) fn account_data(ctx: &Ctx<'_>) -> Result<Vec<Value>> {
    let f = &ctx.filter.account_data;
    let rows = account_data_between(ctx.conn, ctx.user, GLOBAL, ctx.since_stream(), ctx.pos.stream)?;
    Ok(rows
        .into_iter()
        .filter(|(kind, _)| event_matches(f, kind, ctx.user))
        .take(limit_of(f))
        .map(|(kind, content)| json!({"type": kind, "content": content}))
        .collect())
}

/// Presence changes of the user and of everyone sharing a room with them.
pub(super) fn presence(ctx: &Ctx<'_>) -> Result<Vec<Value>> {
    let f = &ctx.filter.presence;
    let rows = presence_between(ctx.conn, ctx.user, ctx.since_stream(), ctx.pos.stream)?;
    let now = now_ms();
    Ok(rows
        .into_iter()
        .filter(|(user, _)| event_matches(f, "m.presence", user))
        .take(limit_of(f))
        .map(|(user, p)| json!({"type": "m.presence", "sender": user, "content": presence_json(Some(&p), now)}))
        .collect())
}
