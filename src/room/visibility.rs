//! History visibility: who may read a room, and which of its events.
//!
//! The spec's rules (Room History Visibility, "Server behaviour") are applied with the
//! state of the room *at each event*: the `m.room.history_visibility` and the reader's
//! membership then, not now. So changing the setting never re-opens or hides old history.

use std::collections::HashMap;

use rusqlite::Connection;

use crate::storage::events::{StoredEvent, content_str, last_membership_at, state_entry_at, state_group_of};
use crate::storage::state::current_state_id;
use crate::{Error, Result};

const MEMBER: &str = "m.room.member";
const HISTORY_VISIBILITY: &str = "m.room.history_visibility";

/// How a user may read a room as a whole (`/messages`, `/context`, `/state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomAccess {
    /// Joined now: the current state.
    Joined,
    /// Left or banned after having been joined: the state and timeline up to their
    /// membership change, never after it.
    Departed { stream: i64, state_group: i64 },
    /// Not a member, but the room is `world_readable` now.
    WorldReadable,
}

/// The reader's access to a room, or `M_FORBIDDEN`. Unknown rooms are forbidden too, so the
/// answer does not reveal which rooms exist.
pub fn room_access(conn: &Connection, room_id: &str, user_id: &str) -> Result<RoomAccess> {
    let forbidden = || Error::forbidden("You are not a member of this room");
    if let Some(member_id) = current_state_id(conn, room_id, MEMBER, user_id)? {
        match content_str(conn, &member_id, "membership")?.as_deref() {
            Some("join") => return Ok(RoomAccess::Joined),
            Some("leave" | "ban") if last_membership_at(conn, room_id, user_id, "join")?.is_some() => {
                let stream = crate::storage::events::stream_ordering_of(conn, &member_id)?;
                let group = state_group_of(conn, &member_id)?;
                if let (Some(stream), Some(state_group)) = (stream, group) {
                    return Ok(RoomAccess::Departed { stream, state_group });
                }
            }
            _ => {}
        }
    }
    let world_readable = match current_state_id(conn, room_id, HISTORY_VISIBILITY, "")? {
        Some(id) => content_str(conn, &id, "history_visibility")?.as_deref() == Some("world_readable"),
        None => false,
    };
    if world_readable {
        Ok(RoomAccess::WorldReadable)
    } else {
        Err(forbidden())
    }
}

/// Decides event by event whether one user may see events of one room. Lookups are cached
/// per state group: consecutive messages share their group.
pub struct Visibility<'c> {
    conn: &'c Connection,
    user_id: String,
    /// The user's latest join: under `shared`, every event before it is visible.
    last_join: Option<i64>,
    at_group: HashMap<i64, (Setting, Option<String>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl Setting {
    fn parse(s: Option<&str>) -> Self {
        // Absent or unknown values mean `shared`, as the spec says.
        match s {
            Some("world_readable") => Self::WorldReadable,
            Some("invited") => Self::Invited,
            Some("joined") => Self::Joined,
            _ => Self::Shared,
        }
    }
}

impl<'c> Visibility<'c> {
    pub fn new(conn: &'c Connection, room_id: &str, user_id: &str) -> Result<Self> {
        Ok(Self {
            conn,
            user_id: user_id.to_owned(),
            last_join: last_membership_at(conn, room_id, user_id, "join")?,
            at_group: HashMap::new(),
        })
    }

    /// Whether the user may see `ev`.
    pub fn can_see(&mut self, ev: &StoredEvent) -> Result<bool> {
        if ev.soft_failed {
            return Ok(false);
        }
        let Some(after) = state_group_of(self.conn, ev.pdu.event_id.as_str())? else {
            return Ok(false);
        };
        if self.allowed_at(Some(after), ev.stream_ordering)? {
            return Ok(true);
        }
        // A state event's group is the state after it. For a change of the visibility
        // itself or of the reader's own membership, the state before counts too.
        let kind = ev.pdu.kind.to_string();
        let own_member = kind == MEMBER && ev.pdu.state_key.as_deref() == Some(self.user_id.as_str());
        let visibility_change = kind == HISTORY_VISIBILITY && ev.pdu.state_key.as_deref() == Some("");
        if own_member || visibility_change {
            let before = match ev.pdu.prev_events.first() {
                Some(prev) => state_group_of(self.conn, prev.as_str())?,
                None => None,
            };
            return self.allowed_at(before, ev.stream_ordering);
        }
        Ok(false)
    }

    /// Keeps the events the user may see, in order.
    pub fn filter(&mut self, events: Vec<StoredEvent>) -> Result<Vec<StoredEvent>> {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            if self.can_see(&ev)? {
                out.push(ev);
            }
        }
        Ok(out)
    }

    fn allowed_at(&mut self, group: Option<i64>, stream: i64) -> Result<bool> {
        let (setting, membership) = match group {
            Some(g) => self.lookup(g)?,
            None => (Setting::Shared, None),
        };
        Ok(match (setting, membership.as_deref()) {
            (Setting::WorldReadable, _) | (_, Some("join")) => true,
            (Setting::Shared, _) => self.last_join.is_some_and(|j| j > stream),
            (Setting::Invited, Some("invite")) => true,
            _ => false,
        })
    }

    fn lookup(&mut self, group: i64) -> Result<(Setting, Option<String>)> {
        if let Some(v) = self.at_group.get(&group) {
            return Ok(v.clone());
        }
        let setting = match state_entry_at(self.conn, group, HISTORY_VISIBILITY, "")? {
            Some(id) => Setting::parse(content_str(self.conn, &id, "history_visibility")?.as_deref()),
            None => Setting::Shared,
        };
        let membership = match state_entry_at(self.conn, group, MEMBER, &self.user_id)? {
            Some(id) => content_str(self.conn, &id, "membership")?,
            None => None,
        };
        self.at_group.insert(group, (setting, membership.clone()));
        Ok((setting, membership))
    }
}
