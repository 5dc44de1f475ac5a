//! The `rooms` part of a /sync response: joined, invited, left and knocked rooms.
//!
//! A joined room the client already knows gets a delta: the events after `since`, and in
//! `state` only the state that changed in a gap the timeline skipped. A room new to the
//! client (initial sync, joined since, `full_state`) gets the last events and the full
//! state at the start of its timeline. Left rooms end at the leave event.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value, json};

use super::Ctx;
use crate::Result;
use crate::api::filter::{room_allowed, room_event_matches, room_kind_matches};
use crate::api::render::{client_event, client_events};
use crate::api::room_events::{MAX_LIMIT, stream_token};
use crate::room::visibility::Visibility;
use crate::storage::events::{StoredEvent, get_event, room_events, state_entry_at, state_group_of};
use crate::storage::rooms::members_with;
use crate::storage::state::load_group;
use crate::storage::sync::{
    Membership, account_data_between, membership_at, memberships, receipts_between, state_group_at,
    state_ids_between,
};

/// Timeline length when the filter gives none (as Synapse).
const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// Events read from the store per query while filling a timeline.
const BATCH: usize = 100;
/// Events examined per timeline at most: a filter that matches nothing must not walk a
/// room's whole history. Past it the timeline reports `limited`.
const MAX_SCAN: usize = 5000;
/// State shown to invitees and knockers (the spec's recommended stripped state).
pub(crate) const STRIPPED_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
];

#[derive(Default)]
pub(super) struct Rooms {
    pub join: Map<String, Value>,
    pub invite: Map<String, Value>,
    pub leave: Map<String, Value>,
    pub knock: Map<String, Value>,
}

impl Rooms {
    pub fn is_empty(&self) -> bool {
        self.join.is_empty() && self.invite.is_empty() && self.leave.is_empty() && self.knock.is_empty()
    }
}

pub(super) fn rooms(ctx: &Ctx<'_>) -> Result<Rooms> {
    let upto = ctx.pos.stream;
    let mut out = Rooms::default();
    for m in memberships(ctx.conn, ctx.user)? {
        if !room_allowed(&ctx.filter.room, &m.room_id) {
            continue;
        }
        // A membership change committed after `upto` belongs to the next sync.
        let m = if m.stream > upto {
            match membership_at(ctx.conn, &m.room_id, ctx.user, upto)? {
                Some(m) => m,
                None => continue,
            }
        } else {
            m
        };
        let is_new = ctx.since.is_none_or(|s| m.stream > s.stream);
        match m.membership.as_str() {
            "join" => {
                if let Some(v) = joined(ctx, &m)? {
                    out.join.insert(m.room_id, v);
                }
            }
            "invite" if is_new => {
                let v = json!({"invite_state": {"events": stripped_state(ctx, &m)?}});
                out.invite.insert(m.room_id, v);
            }
            "knock" if is_new => {
                let v = json!({"knock_state": {"events": stripped_state(ctx, &m)?}});
                out.knock.insert(m.room_id, v);
            }
            "leave" | "ban" => {
                if let Some(v) = left(ctx, &m)? {
                    out.leave.insert(m.room_id, v);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Whether the user was joined to the room at the `since` position.
fn joined_at_since(ctx: &Ctx<'_>, room: &str) -> Result<bool> {
    Ok(match ctx.since {
        None => false,
        Some(s) => membership_at(ctx.conn, room, ctx.user, s.stream)?.is_some_and(|m| m.membership == "join"),
    })
}

fn joined(ctx: &Ctx<'_>, m: &Membership) -> Result<Option<Value>> {
    let room = m.room_id.as_str();
    // Joined at `since` too (the latest join being older proves it): a delta.
    let delta = match ctx.since {
        Some(s) => m.stream <= s.stream || joined_at_since(ctx, room)?,
        None => false,
    };
    let after = if delta { ctx.since_stream() } else { 0 };
    let window = Window {
        after,
        upto: ctx.pos.stream,
        own: m.stream,
    };
    let tl = timeline(ctx, room, &window)?;
    let full = !delta || ctx.full_state;
    let state = state(ctx, room, &tl, &window, full)?;
    let ephemeral = ephemeral(ctx, room, delta)?;
    let account_data = room_account_data(ctx, room, after)?;
    if !full && tl.events.is_empty() && state.is_empty() && ephemeral.is_empty() && account_data.is_empty() {
        return Ok(None);
    }
    Ok(Some(json!({
        "timeline": tl.render(ctx, &window)?,
        "state": {"events": state},
        "ephemeral": {"events": ephemeral},
        "account_data": {"events": account_data},
        "summary": summary(ctx, room)?,
        "unread_notifications": {"highlight_count": 0, "notification_count": 0},
    })))
}

/// A left (or kicked, or banned) room: shown once, in the sync after the leave, or every
/// time when the filter asks for `include_leave` on a full sync.
fn left(ctx: &Ctx<'_>, m: &Membership) -> Result<Option<Value>> {
    let room = m.room_id.as_str();
    let include_leave = ctx.filter.room.include_leave;
    let wanted = match ctx.since {
        None => include_leave,
        Some(s) => m.stream > s.stream || (ctx.full_state && include_leave),
    };
    if !wanted {
        return Ok(None);
    }
    let delta = ctx.since.is_some_and(|s| m.stream > s.stream) && joined_at_since(ctx, room)?;
    let after = if delta { ctx.since_stream() } else { 0 };
    let window = Window {
        after,
        upto: m.stream,
        own: m.stream,
    };
    let tl = timeline(ctx, room, &window)?;
    let state = state(ctx, room, &tl, &window, !delta || ctx.full_state)?;
    Ok(Some(json!({
        "timeline": tl.render(ctx, &window)?,
        "state": {"events": state},
        "account_data": {"events": room_account_data(ctx, room, after)?},
    })))
}

/// The stream range a room's timeline comes from, `after < stream <= upto`, and the
/// user's membership event `own` that put the room in this section.
struct Window {
    after: i64,
    upto: i64,
    own: i64,
}

struct Timeline {
    events: Vec<StoredEvent>,
    limited: bool,
}

impl Timeline {
    /// The stream position just before the first event (the window's end when empty).
    fn start(&self, w: &Window) -> i64 {
        self.events.first().map_or(w.upto, |e| e.stream_ordering - 1)
    }

    fn render(&self, ctx: &Ctx<'_>, w: &Window) -> Result<Value> {
        Ok(json!({
            "events": client_events(ctx.conn, &self.events, Some(ctx.viewer()), false)?,
            "limited": self.limited,
            // /messages backwards from here continues where the timeline starts.
            "prev_batch": stream_token(self.start(w)),
        }))
    }
}

/// The newest events of the window the timeline filter and history visibility let
/// through, at most the filter's limit; `limited` when more exist.
fn timeline(ctx: &Ctx<'_>, room: &str, w: &Window) -> Result<Timeline> {
    let f = &ctx.filter.room.timeline;
    let limit = f.limit.map_or(DEFAULT_TIMELINE_LIMIT, |l| {
        usize::try_from(u64::from(l)).unwrap_or(MAX_LIMIT).min(MAX_LIMIT)
    });
    // Most deltas never need it: it is built on the first event it must judge.
    let mut vis: Option<Visibility<'_>> = None;
    let mut events = Vec::new();
    let mut before = w.upto.saturating_add(1);
    let mut scanned = 0;
    let limited = 'scan: loop {
        let batch = room_events(ctx.conn, room, w.after, before, true, BATCH)?;
        let exhausted = batch.len() < BATCH;
        for ev in batch {
            before = ev.stream_ordering;
            scanned += 1;
            if !room_event_matches(f, &ev.pdu) {
                continue;
            }
            // After its membership event the user is in the room and sees everything; the
            // membership event itself is shown even when the rules would hide it (a
            // rejected invite), or the client would never learn the room went away.
            if ev.stream_ordering < w.own {
                let v = match &mut vis {
                    Some(v) => v,
                    None => vis.insert(Visibility::new(ctx.conn, room, ctx.user)?),
                };
                if !v.can_see(&ev)? {
                    continue;
                }
            }
            if events.len() >= limit {
                break 'scan true;
            }
            events.push(ev);
        }
        if exhausted {
            break false;
        }
        if scanned >= MAX_SCAN {
            break true;
        }
    };
    events.reverse();
    Ok(Timeline { events, limited })
}

/// The `state` of a room: the state at the start of the timeline, in full or only the
/// entries set in the gap between `since` and the timeline (nothing when there is none).
fn state(ctx: &Ctx<'_>, room: &str, tl: &Timeline, w: &Window, full: bool) -> Result<Vec<Value>> {
    let start = tl.start(w);
    let gap = if full {
        None
    } else {
        let gap = state_ids_between(ctx.conn, room, w.after, start)?;
        if gap.is_empty() {
            return Ok(Vec::new());
        }
        Some(gap)
    };
    let Some(group) = state_group_at(ctx.conn, room, start)? else {
        return Ok(Vec::new());
    };
    let in_timeline: HashSet<&str> = tl.events.iter().map(|e| e.pdu.event_id.as_str()).collect();
    let mut events = Vec::new();
    for id in load_group(ctx.conn, group)?.into_values() {
        if in_timeline.contains(id.as_str()) || gap.as_ref().is_some_and(|g| !g.contains(&id)) {
            continue;
        }
        if let Some(ev) = get_event(ctx.conn, &id)?
            && room_event_matches(&ctx.filter.room.state, &ev.pdu)
        {
            events.push(ev);
        }
    }
    events.sort_by_key(|e| e.stream_ordering);
    client_events(ctx.conn, &events, Some(ctx.viewer()), false)
}

/// Typing and receipts. Typing is in memory: a delta carries a room's list when that room's
/// typing serial moved past the token's.
fn ephemeral(ctx: &Ctx<'_>, room: &str, delta: bool) -> Result<Vec<Value>> {
    let f = &ctx.filter.room.ephemeral;
    let mut out = Vec::new();
    if room_kind_matches(f, room, "m.typing") {
        let users = ctx.typing.users_in(room);
        let send = match ctx.since {
            Some(s) if delta => s.typing.is_none_or(|t| ctx.typing.room_serial(room) > t),
            _ => !users.is_empty(),
        };
        if send {
            out.push(json!({"type": "m.typing", "content": {"user_ids": users}}));
        }
    }
    if room_kind_matches(f, room, "m.receipt") {
        let after = if delta { ctx.since_stream() } else { 0 };
        // event ID → receipt type → user → receipt
        let mut content: BTreeMap<String, BTreeMap<String, Map<String, Value>>> = BTreeMap::new();
        for r in receipts_between(ctx.conn, room, after, ctx.pos.stream)? {
            if r.receipt_type == "m.read.private" && r.user_id != ctx.user {
                continue;
            }
            let mut receipt = json!({"ts": r.ts});
            if !r.thread_id.is_empty() {
                receipt["thread_id"] = r.thread_id.into();
            }
            content
                .entry(r.event_id)
                .or_default()
                .entry(r.receipt_type)
                .or_default()
                .insert(r.user_id, receipt);
        }
        if !content.is_empty() {
            out.push(json!({"type": "m.receipt", "content": content}));
        }
    }
    Ok(out)
}

fn room_account_data(ctx: &Ctx<'_>, room: &str, after: i64) -> Result<Vec<Value>> {
    let f = &ctx.filter.room.account_data;
    Ok(
        account_data_between(ctx.conn, ctx.user, room, after, ctx.pos.stream)?
            .into_iter()
            .filter(|(kind, _)| room_kind_matches(f, room, kind))
            .map(|(kind, content)| json!({"type": kind, "content": content}))
            .collect(),
    )
}

/// Member counts and up to five heroes (other members, by user ID) to name the room by.
fn summary(ctx: &Ctx<'_>, room: &str) -> Result<Value> {
    let joined = members_with(ctx.conn, room, "join")?;
    let invited = members_with(ctx.conn, room, "invite")?;
    let others = |users: Vec<&String>| {
        let mut v: Vec<String> = users.into_iter().filter(|u| *u != ctx.user).cloned().collect();
        v.sort();
        v.truncate(5);
        v
    };
    let mut heroes = others(joined.iter().chain(&invited).collect());
    if heroes.is_empty() {
        // Everyone else left: name the room after who was there.
        let left = members_with(ctx.conn, room, "leave")?;
        let banned = members_with(ctx.conn, room, "ban")?;
        heroes = others(left.iter().chain(&banned).collect());
    }
    Ok(json!({
        "m.heroes": heroes,
        "m.joined_member_count": joined.len(),
        "m.invited_member_count": invited.len(),
    }))
}

/// The stripped state an invitee or knocker sees (at their membership event), the sender's
/// membership, and the membership event itself in full.
fn stripped_state(ctx: &Ctx<'_>, m: &Membership) -> Result<Vec<Value>> {
    let Some(own) = get_event(ctx.conn, &m.event_id)? else {
        return Ok(Vec::new());
    };
    let Some(group) = state_group_of(ctx.conn, &m.event_id)? else {
        return Ok(Vec::new());
    };
    let sender = own.pdu.sender.to_string();
    let keys = STRIPPED_TYPES
        .iter()
        .map(|t| (*t, ""))
        .chain((sender != ctx.user).then_some(("m.room.member", sender.as_str())));
    let mut out = Vec::new();
    for (kind, key) in keys {
        let Some(id) = state_entry_at(ctx.conn, group, kind, key)? else {
            continue;
        };
        if let Some(ev) = get_event(ctx.conn, &id)? {
            out.push(json!({
                "type": kind,
                "state_key": key,
                "content": ev.pdu.content_value(),
                "sender": ev.pdu.sender,
            }));
        }
    }
    out.push(client_event(ctx.conn, &own, Some(ctx.viewer()), false)?);
    Ok(out)
}
