//! Versioned schema migrations, applied in order inside one transaction each.
//! `PRAGMA user_version` records how many have run. Never edit a released migration:
//! append a new one.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
INSERT INTO meta (key, value) VALUES ('stream_pos', 0);

CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT,
    displayname TEXT,
    avatar_url TEXT,
    created_ts INTEGER NOT NULL
) STRICT;

CREATE TABLE devices (
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    device_id TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts INTEGER,
    last_seen_ip TEXT,
    PRIMARY KEY (user_id, device_id)
) STRICT;

-- Tokens are stored as blake3 hashes: a copied database does not leak live sessions.
CREATE TABLE access_tokens (
    token_hash BLOB PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
) STRICT;

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    -- State group holding the resolved state at the forward extremities.
    current_state_group INTEGER,
    published INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Every PDU the node holds. `json` is the signed PDU exactly as hashed (redacted in place
-- once a redaction applies). `stream_ordering` is the global order /sync follows.
CREATE TABLE events (
    stream_ordering INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL REFERENCES rooms(room_id),
    type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    depth INTEGER NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    json TEXT NOT NULL,
    -- State after this event (state before it, for a non-state event).
    state_group INTEGER NOT NULL,
    soft_failed INTEGER NOT NULL DEFAULT 0,
    redacted_by TEXT,
    -- m.relates_to, for /relations and threads.
    relates_to TEXT,
    rel_type TEXT,
    -- Which local device sent it, so its sync sees `transaction_id`.
    txn_user TEXT,
    txn_device TEXT,
    txn_id TEXT
) STRICT;
CREATE INDEX events_room_stream ON events(room_id, stream_ordering);
CREATE INDEX events_relates ON events(relates_to, rel_type);

CREATE TABLE event_edges (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
) STRICT;

CREATE TABLE event_auth (
    event_id TEXT NOT NULL,
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_event_id)
) STRICT;

CREATE TABLE forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
) STRICT;

-- State snapshots that share structure: a group is either full (prev_group NULL) or a
-- delta over prev_group. `chain_len` bounds how many deltas a lookup walks.
CREATE TABLE state_groups (
    id INTEGER PRIMARY KEY,
    room_id TEXT NOT NULL,
    prev_group INTEGER REFERENCES state_groups(id),
    chain_len INTEGER NOT NULL
) STRICT;
CREATE TABLE state_group_entries (
    state_group INTEGER NOT NULL REFERENCES state_groups(id),
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (state_group, type, state_key)
) STRICT;

-- Current state, materialised from rooms.current_state_group for fast lookups.
CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    -- For m.room.member: the membership, to list members and rooms cheaply.
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
) STRICT;
CREATE INDEX current_state_member ON current_state(type, state_key, membership);

-- Membership history of local users, for /sync (joins, invites, leaves) and forget.
CREATE TABLE local_membership (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    forgotten INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, room_id)
) STRICT;

CREATE TABLE txn_ids (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, kind, txn_id)
) STRICT;

CREATE TABLE room_aliases (
    alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
) STRICT;

CREATE TABLE filters (
    user_id TEXT NOT NULL,
    filter_id INTEGER NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
) STRICT;

-- room_id is '' for global account data.
CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
) STRICT;
CREATE INDEX account_data_stream ON account_data(user_id, stream_id);

CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    stream_id INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
) STRICT;
CREATE INDEX receipts_stream ON receipts(room_id, stream_id);

CREATE TABLE presence (
    user_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts INTEGER NOT NULL,
    stream_id INTEGER NOT NULL
) STRICT;
"#,
    // 2: end-to-end encryption plumbing. The server stores and routes keys; it never
    // decrypts anything.
    r#"
-- The signed device keys object a device uploaded (signatures from cross-signing merged in
-- at query time from key_signatures).
CREATE TABLE device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
) STRICT;

-- One-time keys: each is handed out at most once (the claim deletes it in the same
-- transaction that returns it).
CREATE TABLE one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
) STRICT;

-- Fallback keys: one per algorithm, reused when one-time keys run out; `used` feeds
-- device_unused_fallback_key_types.
CREATE TABLE fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    json TEXT NOT NULL,
    used INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm),
    FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
) STRICT;

-- key_type: master, self_signing, user_signing.
CREATE TABLE cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
) STRICT;

-- Signatures uploaded through /keys/signatures/upload, merged into query results.
-- target_key_id is a device ID or a cross-signing public key (base64).
CREATE TABLE key_signatures (
    target_user TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    signer_user TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user, target_key_id, signer_user, signer_key_id)
) STRICT;

-- A user's devices or keys changed at stream_id: /sync device_lists.changed and
-- /keys/changes read this.
CREATE TABLE device_list_changes (
    stream_id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL
) STRICT;
CREATE INDEX device_list_changes_user ON device_list_changes(user_id, stream_id);

-- To-device inbox. A message stays until the device syncs with a `since` past its
-- stream_id, which proves the client received it.
CREATE TABLE to_device (
    stream_id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT NOT NULL
) STRICT;
CREATE INDEX to_device_inbox ON to_device(user_id, device_id, stream_id);

-- Server-side key backup.
CREATE TABLE room_key_versions (
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag INTEGER NOT NULL DEFAULT 0,
    deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
) STRICT;
CREATE TABLE room_keys (
    user_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
) STRICT;
"#,
    // 3: media. Blobs live on disk under media/, named by their blake3 hash, so identical
    // uploads are stored once; this table maps media IDs to them.
    r#"
CREATE TABLE media (
    media_id TEXT PRIMARY KEY,
    uploader TEXT NOT NULL,
    content_type TEXT,
    filename TEXT,
    size INTEGER,
    -- NULL while reserved by POST /_matrix/media/v1/create and not yet uploaded.
    blake3 TEXT,
    created_ts INTEGER NOT NULL,
    unused_expires_ts INTEGER
) STRICT;
CREATE INDEX media_blob ON media(blake3);
"#,
    // 4: content reports for the server admins, and an index for listing a room's
    // threads (partial: only thread replies pay for it on insert).
    r#"
CREATE TABLE reports (
    id INTEGER PRIMARY KEY,
    reporter TEXT NOT NULL,
    room_id TEXT NOT NULL,
    -- NULL for a report of the whole room.
    event_id TEXT,
    reason TEXT,
    score INTEGER,
    ts INTEGER NOT NULL
) STRICT;
CREATE INDEX events_threads ON events(room_id, stream_ordering) WHERE rel_type = 'm.thread';
"#,
    // 5: the peer network.
    r#"
-- The address book: peers and the addresses they were last reached at, so a restarted
-- node redials them without waiting for discovery.
CREATE TABLE peer_addresses (
    peer_id TEXT NOT NULL,
    addr TEXT NOT NULL,
    last_seen_ts INTEGER NOT NULL,
    PRIMARY KEY (peer_id, addr)
) STRICT;
-- To-device messages peers delivered, by (origin, message_id): a retried delivery is
-- recognised and queued once. IDs older than a week are pruned as new ones arrive.
CREATE TABLE to_device_received (
    origin TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_ts INTEGER NOT NULL,
    PRIMARY KEY (origin, message_id)
) STRICT;
CREATE INDEX to_device_received_ts ON to_device_received(received_ts);
-- Remote users' keys as their node last reported them (a key query; device-list updates
-- carrying keys). A remote_key_users row means the user's device list is complete here;
-- it is served when their node cannot be reached.
CREATE TABLE remote_key_users (
    user_id TEXT PRIMARY KEY,
    master_key TEXT,
    self_signing_key TEXT,
    fetched_ts INTEGER NOT NULL
) STRICT;
CREATE TABLE remote_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
) STRICT;
-- The outbox: what peers must receive, queued in the transaction that stores it. A row of
-- outbox_rooms means `destination` has not confirmed the room's local events up to
-- `stream` (delivered by sending the forward extremities); an outbox row is one message
-- (kind 'to_device' or 'device_list_update', body its EDU content). attempts and
-- next_attempt_ts are the retry backoff; a peer seen again resets them.
CREATE TABLE outbox_rooms (
    destination TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ts INTEGER NOT NULL,
    PRIMARY KEY (destination, room_id)
) STRICT;
CREATE INDEX outbox_rooms_due ON outbox_rooms(destination, next_attempt_ts);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ts INTEGER NOT NULL
) STRICT;
CREATE INDEX outbox_destination ON outbox(destination);
CREATE INDEX outbox_due ON outbox(destination, next_attempt_ts);
-- Events held outside the room DAG, never in a timeline or /sync (stored soft-failed as
-- well, so every timeline query already skips them): 1 = from a join's state and auth
-- chain, authorised by its own auth events; 2 = an invite and its room state as the
-- invitee's node received them, signatures checked only (replaced when the user joins).
ALTER TABLE events ADD COLUMN outlier INTEGER NOT NULL DEFAULT 0;
"#,
    // 6: mailboxes. Other nodes' mail held here for a node that is away, so it reaches that
    // node even if its sender never comes back; durable because the holder may restart
    // before the destination returns. `item` is the origin's signed JSON, served as is;
    // rows expire (expires_ts) and are bounded per destination, per origin and in total.
    r#"
CREATE TABLE mailbox (
    seq INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    origin TEXT NOT NULL,
    item_id TEXT NOT NULL,
    item TEXT NOT NULL,
    size INTEGER NOT NULL,
    expires_ts INTEGER NOT NULL,
    UNIQUE (destination, origin, item_id)
) STRICT;
CREATE INDEX mailbox_destination ON mailbox(destination, seq);
CREATE INDEX mailbox_origin ON mailbox(origin);
CREATE INDEX mailbox_expiry ON mailbox(expires_ts);
"#,
    // 7: anti-entropy reads. A room's events in key order (depth, event ID) without reading
    // their rows (`reconcile` sets, `get_range` pages), and a user's member events in a
    // room (history visibility for each page served) without scanning the room.
    r#"
CREATE INDEX events_room_depth ON events(room_id, depth, event_id, outlier);
CREATE INDEX events_room_state ON events(room_id, type, state_key) WHERE state_key IS NOT NULL;
"#,
];

/// Brings the schema up to date.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_apply_twice_without_error() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::migrate(&mut conn).unwrap();
        super::migrate(&mut conn).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v as usize, super::MIGRATIONS.len());
    }
}
