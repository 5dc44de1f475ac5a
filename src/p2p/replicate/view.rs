//! What another server may read of a room: the spec's server ACLs, then history
//! visibility for servers — a server sees an event if any of its users could at that event
//! (`joined`: one was joined; `invited`: one was invited or joined), always under
//! `world_readable`, and under `shared` if it ever had a joined member. A server's own
//! users' membership events are always visible to it.
//!
//! An event a server may not see is served redacted rather than left out, so the DAG it
//! walks stays connected while the content stays private.

use std::collections::HashMap;

use ruma::ServerName;
use ruma::events::room::server_acl::RoomServerAclEventContent;
use rusqlite::Connection;

use crate::Result;
use crate::storage::events::{StoredEvent, content_str, last_membership_at, state_entry_at, state_group_of};
use crate::storage::replication::server_members;
use crate::storage::rooms::state_content;
use crate::storage::state::current_state_id;

const MEMBER: &str = "m.room.member";
const HISTORY_VISIBILITY: &str = "m.room.history_visibility";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    WorldReadable,
    Shared,
    Invited,
    Joined,
}

impl Setting {
    pub fn parse(s: Option<&str>) -> Self {
        // Absent or unknown values mean `shared`, as the spec says.
        match s {
            Some("world_readable") => Self::WorldReadable,
            Some("invited") => Self::Invited,
            Some("joined") => Self::Joined,
            _ => Self::Shared,
        }
    }
}

/// The rule itself: whether a server whose users had `memberships` at an event with
/// history visibility `setting` may see it.
pub fn server_may_see(setting: Setting, memberships: &[String], ever_joined: bool) -> bool {
    let any = |m: &str| memberships.iter().any(|x| x == m);
    match setting {
        Setting::WorldReadable => true,
        _ if any("join") => true,
        Setting::Shared => ever_joined,
        Setting::Invited => any("invite"),
        Setting::Joined => false,
    }
}

/// One server's view of one room, with lookups cached per state group.
pub struct ServerView<'c> {
    conn: &'c Connection,
    users: Vec<String>,
    ever_joined: bool,
    at_group: HashMap<i64, bool>,
}

impl<'c> ServerView<'c> {
    /// The view of `server`, or `None` when it may read nothing of the room: unknown room,
    /// denied by the room's server ACL, or neither a member event of its own nor a
    /// `world_readable` room.
    pub fn open(conn: &'c Connection, room_id: &str, server: &ServerName) -> Result<Option<Self>> {
        if !crate::storage::rooms::room_exists(conn, room_id)? {
            return Ok(None);
        }
        if let Some(acl) = state_content(conn, room_id, "m.room.server_acl", "")?
            && let Ok(acl) = serde_json::from_value::<RoomServerAclEventContent>(acl)
            && !acl.is_allowed(server)
        {
            return Ok(None);
        }
        let users: Vec<String> = server_members(conn, room_id, server.as_str())?
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        let mut ever_joined = false;
        for u in &users {
            if last_membership_at(conn, room_id, u, "join")?.is_some() {
                ever_joined = true;
                break;
            }
        }
        if users.is_empty() {
            let world = match current_state_id(conn, room_id, HISTORY_VISIBILITY, "")? {
                Some(id) => {
                    content_str(conn, &id, "history_visibility")?.as_deref() == Some("world_readable")
                }
                None => false,
            };
            if !world {
                return Ok(None);
            }
        }
        Ok(Some(Self {
            conn,
            users,
            ever_joined,
            at_group: HashMap::new(),
        }))
    }

    /// Whether the server may see `ev` unredacted.
    pub fn can_see(&mut self, ev: &StoredEvent) -> Result<bool> {
        let kind = ev.pdu.kind.to_string();
        let state_key = ev.pdu.state_key.as_deref();
        if kind == MEMBER && state_key.is_some_and(|k| self.users.iter().any(|u| u == k)) {
            return Ok(true);
        }
        if let Some(after) = state_group_of(self.conn, ev.pdu.event_id.as_str())?
            && self.allowed_at(after)?
        {
            return Ok(true);
        }
        // The group of a state event is the state after it; a change of the visibility
        // itself is also judged by the setting before it, as for clients.
        if kind == HISTORY_VISIBILITY
            && state_key == Some("")
            && let Some(prev) = ev.pdu.prev_events.first()
            && let Some(before) = state_group_of(self.conn, prev.as_str())?
        {
            return self.allowed_at(before);
        }
        Ok(false)
    }

    fn allowed_at(&mut self, group: i64) -> Result<bool> {
        if let Some(v) = self.at_group.get(&group) {
            return Ok(*v);
        }
        let setting = match state_entry_at(self.conn, group, HISTORY_VISIBILITY, "")? {
            Some(id) => Setting::parse(content_str(self.conn, &id, "history_visibility")?.as_deref()),
            None => Setting::Shared,
        };
        let mut memberships = Vec::with_capacity(self.users.len());
        for u in &self.users {
            if let Some(id) = state_entry_at(self.conn, group, MEMBER, u)?
                && let Some(m) = content_str(self.conn, &id, "membership")?
            {
                memberships.push(m);
            }
        }
        let ok = server_may_see(setting, &memberships, self.ever_joined);
        self.at_group.insert(group, ok);
        Ok(ok)
    }
}
