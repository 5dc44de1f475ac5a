//! The end-to-end encryption parts of a /sync response: the device's to-device inbox,
//! `device_lists`, and the state of its one-time and fallback keys.
//!
//! To-device messages sit on the global stream: each has the stream position it was sent
//! at. A sync from `since` delivers the device's messages above `since` and deletes the
//! ones at or below it, which the client proved it received by syncing from a token past
//! them. A response that cannot carry the whole backlog ends (its `next_batch`) at its last
//! message, so the next sync continues with the rest.

use serde_json::{Map, Value, json};

use super::Ctx;
use crate::Result;
use crate::api::extract::Auth;
use crate::services::AppState;
use crate::storage::e2ee::{device_list_delta, one_time_key_counts, unused_fallback_key_types};
use crate::storage::sync::{ack_to_device, has_to_device_upto, to_device_between};

/// Most to-device messages one response carries (the spec's recommendation).
const TO_DEVICE_LIMIT: usize = 100;

/// Deletes the device's messages at or below the `since` position the client synced from.
/// Reads first: most syncs have nothing to acknowledge and need not queue for the writer.
pub(super) async fn acknowledge(s: &AppState, auth: &Auth, since: i64) -> Result<()> {
    let (user, device) = (auth.user_id.to_string(), auth.device_id.clone());
    let (u, d) = (user.clone(), device.clone());
    if !s.db.read(move |c| has_to_device_upto(c, &u, &d, since)).await? {
        return Ok(());
    }
    s.db.write(move |tx| ack_to_device(tx, &user, &device, since))
        .await
}

/// The device's messages after `since` (the whole inbox on an initial sync), oldest first,
/// and the stream position the response must end at: `ctx.pos`, or the last message
/// delivered when more are queued than one response carries.
pub(super) fn to_device(ctx: &Ctx<'_>) -> Result<(Vec<Value>, i64)> {
    let mut rows = to_device_between(
        ctx.conn,
        ctx.user,
        ctx.device,
        ctx.since_stream(),
        ctx.pos.stream,
        TO_DEVICE_LIMIT + 1,
    )?;
    let mut upto = ctx.pos.stream;
    if rows.len() > TO_DEVICE_LIMIT {
        rows.truncate(TO_DEVICE_LIMIT);
        if let Some(last) = rows.last() {
            upto = last.stream_id;
        }
    }
    let mut events = Vec::with_capacity(rows.len());
    for m in rows {
        let content: Value = serde_json::from_str(&m.content)?;
        events.push(json!({"sender": m.sender, "type": m.kind, "content": content}));
    }
    Ok((events, upto))
}

/// `device_lists` `(changed, left)`: on an incremental sync, the users whose device lists
/// the client must refetch or may stop tracking (the same delta `/keys/changes` reports).
/// Empty on an initial sync: the client then queries everyone it tracks anyway.
pub(super) fn device_lists(ctx: &Ctx<'_>) -> Result<(Vec<String>, Vec<String>)> {
    match ctx.since {
        Some(since) if since.stream < ctx.pos.stream => {
            device_list_delta(ctx.conn, ctx.user, since.stream, ctx.pos.stream)
        }
        _ => Ok((Vec::new(), Vec::new())),
    }
}

/// `device_one_time_keys_count` and `device_unused_fallback_key_types`.
pub(super) fn key_counts(ctx: &Ctx<'_>) -> Result<(Map<String, Value>, Vec<String>)> {
    let mut counts = Map::new();
    for (algorithm, n) in one_time_key_counts(ctx.conn, ctx.user, ctx.device)? {
        counts.insert(algorithm, json!(n));
    }
    let fallback = unused_fallback_key_types(ctx.conn, ctx.user, ctx.device)?;
    Ok((counts, fallback))
}
