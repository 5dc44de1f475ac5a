//! The peer wire protocol: protocol IDs, messages, encoding and limits (proto/README.md is
//! the normative text; this is its implementation).
//!
//! Each request-response protocol carries one JSON request and one JSON response on its
//! own QUIC stream, each frame being the whole stream up to its end, capped per protocol.
//! JSON, not CBOR: PDUs are hashed and signed as canonical JSON, so carrying them as JSON
//! keeps the bytes that were signed and spares a re-encoding before verification.

use std::collections::BTreeMap;
use std::io;

use futures::prelude::*;
use libp2p::StreamProtocol;
use ruma::canonical_json::CanonicalJsonObject;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A PDU on the wire: the signed canonical JSON object, without `event_id`.
pub type WirePdu = CanonicalJsonObject;

/// Largest request frame any protocol reads.
pub const MAX_REQUEST_BYTES: u64 = 1024 * 1024;
/// Largest response frame for protocols that return events or state.
pub const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;
/// Largest response frame for the small protocols.
pub const MAX_SMALL_RESPONSE_BYTES: u64 = 256 * 1024;
/// Most event IDs one `get_events` may name.
pub const MAX_EVENT_IDS: usize = 100;
/// Most events one `missing` or `backfill` response holds.
pub const MAX_EVENTS_PER_RESPONSE: usize = 1000;
/// Largest gossip message: a PDU (64 KiB) plus its event ID line.
pub const MAX_GOSSIP_BYTES: usize = 65_536 + 256;

/// The request-response protocols, one libp2p protocol ID each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Join,
    Invite,
    Events,
    Missing,
    State,
    Backfill,
    Heads,
    Directory,
    Profile,
    Keys,
    Devices,
    ToDevice,
    Reconcile,
    Mailbox,
}

impl Protocol {
    pub const ALL: [Protocol; 14] = [
        Protocol::Join,
        Protocol::Invite,
        Protocol::Events,
        Protocol::Missing,
        Protocol::State,
        Protocol::Backfill,
        Protocol::Heads,
        Protocol::Directory,
        Protocol::Profile,
        Protocol::Keys,
        Protocol::Devices,
        Protocol::ToDevice,
        Protocol::Reconcile,
        Protocol::Mailbox,
    ];

    pub const fn id(self) -> &'static str {
        match self {
            Protocol::Join => "/meshserver/join/1",
            Protocol::Invite => "/meshserver/invite/1",
            Protocol::Events => "/meshserver/events/1",
            Protocol::Missing => "/meshserver/missing/1",
            Protocol::State => "/meshserver/state/1",
            Protocol::Backfill => "/meshserver/backfill/1",
            Protocol::Heads => "/meshserver/heads/1",
            Protocol::Directory => "/meshserver/directory/1",
            Protocol::Profile => "/meshserver/profile/1",
            Protocol::Keys => "/meshserver/keys/1",
            Protocol::Devices => "/meshserver/devices/1",
            Protocol::ToDevice => "/meshserver/to-device/1",
            Protocol::Reconcile => "/meshserver/reconcile/1",
            Protocol::Mailbox => "/meshserver/mailbox/1",
        }
    }

    pub fn stream_protocol(self) -> StreamProtocol {
        StreamProtocol::new(self.id())
    }

    pub fn from_id(id: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.id() == id)
    }

    /// The cap on a response frame of this protocol.
    pub const fn max_response(self) -> u64 {
        match self {
            Protocol::Join
            | Protocol::Events
            | Protocol::Missing
            | Protocol::State
            | Protocol::Backfill
            | Protocol::Reconcile
            | Protocol::Mailbox => MAX_RESPONSE_BYTES,
            Protocol::Directory | Protocol::Keys => 1024 * 1024,
            _ => MAX_SMALL_RESPONSE_BYTES,
        }
    }
}

/// The gossipsub topic of a room.
pub fn room_topic(room_id: &str) -> String {
    format!("/meshserver/room/1/{room_id}")
}

/// A request. Externally tagged: `{"make_join": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// `/meshserver/join/1`: a join template for `user_id`.
    MakeJoin {
        room_id: String,
        user_id: String,
        supported_versions: Vec<String>,
    },
    /// `/meshserver/join/1`: the signed join; the resident node stores and gossips it.
    SendJoin { room_id: String, event: WirePdu },
    /// `/meshserver/invite/1`: the invitee's node checks and countersigns the invite.
    Invite {
        room_version: String,
        event: WirePdu,
        #[serde(default)]
        invite_room_state: Vec<Value>,
    },
    /// `/meshserver/events/1`: events by ID (at most [`MAX_EVENT_IDS`]).
    GetEvents { event_ids: Vec<String> },
    /// `/meshserver/missing/1`: the spec's get_missing_events, oldest first.
    GetMissing {
        room_id: String,
        earliest_events: Vec<String>,
        latest_events: Vec<String>,
        limit: u32,
    },
    /// `/meshserver/state/1`: the room state at (before) an event, and its auth chain.
    State {
        room_id: String,
        event_id: String,
        #[serde(default)]
        ids_only: bool,
    },
    /// `/meshserver/backfill/1`: up to `limit` events preceding `from`, newest first.
    Backfill {
        room_id: String,
        from: Vec<String>,
        limit: u32,
    },
    /// `/meshserver/heads/1`: the sender's forward extremities of a room. The receiver
    /// fetches what it lacks before answering, so the answer confirms delivery; the answer
    /// is `extremities` with the receiver's own heads of that room (or `ok`), so the
    /// sender fetches what it lacks in turn.
    Heads {
        room_id: String,
        extremities: Vec<String>,
    },
    /// `/meshserver/directory/1`: the rooms the node publishes.
    PublicRooms {
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        since: Option<String>,
        #[serde(default)]
        filter: Option<String>,
    },
    /// `/meshserver/profile/1`.
    Profile {
        user_id: String,
        #[serde(default)]
        field: Option<String>,
    },
    /// `/meshserver/keys/1`: the spec's federation `user/keys/query` body.
    KeysQuery {
        device_keys: BTreeMap<String, Vec<String>>,
    },
    /// `/meshserver/keys/1`: the spec's federation `user/keys/claim` body.
    KeysClaim {
        one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
    },
    /// `/meshserver/devices/1`: an `m.device_list_update` EDU's content.
    DeviceListUpdate { content: Value },
    /// `/meshserver/devices/1`: the devices of a user (federation `user/devices`).
    UserDevices { user_id: String },
    /// `/meshserver/to-device/1`: an `m.direct_to_device` EDU's content.
    ToDevice { content: Value },
    /// `/meshserver/reconcile/1`: the sender's extremities of the rooms it shares with the
    /// receiver whose IDs are after `after`, sorted; `complete` when no more follow.
    Extremities {
        #[serde(default)]
        after: Option<String>,
        rooms: Vec<RoomHeads>,
        complete: bool,
    },
    /// `/meshserver/reconcile/1`: one round of range-based set reconciliation over the
    /// room's events of depth at least `lower`, fingerprinted under the session's `key`.
    Reconcile {
        room_id: String,
        key: String,
        lower: i64,
        ranges: Vec<Range>,
    },
    /// `/meshserver/reconcile/1`: the events whose keys are in `[lo, hi)`, ascending.
    GetRange {
        room_id: String,
        lo: Key,
        #[serde(default)]
        hi: Option<Key>,
        limit: u32,
    },
    /// `/meshserver/mailbox/1`: the sender hands the receiver, a holder, items it signed
    /// for other nodes (at most [`MAX_MAIL_PER_FRAME`]).
    Deposit { items: Vec<MailItem> },
    /// `/meshserver/mailbox/1`: the requester's mail held here, after deleting the items
    /// up to `ack` (collected before); at most `limit` items.
    Collect {
        #[serde(default)]
        ack: Option<i64>,
        limit: u32,
    },
    /// `/meshserver/mailbox/1`: the requester collected its mail up to `up_to`.
    Ack { up_to: i64 },
    /// `/meshserver/mailbox/1`: a holder tells the receiver it holds `count` items for it.
    HaveMail { count: u32 },
}

/// Most items one `deposit` carries or one `mail` answer returns.
pub const MAX_MAIL_PER_FRAME: usize = 64;

/// A message signed by its `origin` for `destination`, as a mailbox holds it: ed25519 over
/// the canonical JSON of the other six fields, under `signatures.<origin>.ed25519:<v>`
/// (as Matrix signs JSON), so a holder can neither forge nor alter it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailItem {
    pub origin: String,
    pub destination: String,
    /// `to_device` (body: an `m.direct_to_device` content) or `invite` (body: the fields
    /// of an `invite` request).
    pub kind: String,
    pub body: Value,
    /// Stable per message: the same message deposited twice has the same ID.
    pub id: String,
    pub ts: u64,
    pub signatures: BTreeMap<String, BTreeMap<String, String>>,
}

/// A held item and its place in the holder's mailbox (what `ack` counts up to).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldMail {
    pub seq: i64,
    pub item: MailItem,
}

/// Most rooms one `extremities` frame lists (and an answer adds).
pub const MAX_ROOMS_PER_FRAME: usize = 100;
/// Most ranges one `reconcile` request carries; an answer splits each into at most
/// [`RANGE_SPLIT`].
pub const MAX_RANGES: usize = 256;
/// Sub-ranges a mismatched range is split into.
pub const RANGE_SPLIT: usize = 16;
/// A range of at most this many events is answered with their IDs, not split.
pub const RANGE_LEAF: usize = 16;

/// A room's place in an `extremities` exchange: its forward extremities (at most
/// [`MAX_EVENT_IDS`]) and the greatest depth the sender holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomHeads {
    pub room_id: String,
    pub extremities: Vec<String>,
    pub depth: i64,
}

/// The sort key of a room's event set: `[depth, event ID]`, compared as a pair (the ID
/// bytewise). A bound's ID may be any string, e.g. `""` for the start of a depth.
pub type Key = (i64, String);

/// A key range `[lo, hi)` (`hi` absent: unbounded) with the sender's fingerprint of its
/// events, or the IDs of all of them. `lo` absent: the previous range's `hi`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lo: Option<Key>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hi: Option<Key>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
}

impl Request {
    pub fn protocol(&self) -> Protocol {
        match self {
            Request::MakeJoin { .. } | Request::SendJoin { .. } => Protocol::Join,
            Request::Invite { .. } => Protocol::Invite,
            Request::GetEvents { .. } => Protocol::Events,
            Request::GetMissing { .. } => Protocol::Missing,
            Request::State { .. } => Protocol::State,
            Request::Backfill { .. } => Protocol::Backfill,
            Request::Heads { .. } => Protocol::Heads,
            Request::PublicRooms { .. } => Protocol::Directory,
            Request::Profile { .. } => Protocol::Profile,
            Request::KeysQuery { .. } | Request::KeysClaim { .. } => Protocol::Keys,
            Request::DeviceListUpdate { .. } | Request::UserDevices { .. } => Protocol::Devices,
            Request::ToDevice { .. } => Protocol::ToDevice,
            Request::Extremities { .. } | Request::Reconcile { .. } | Request::GetRange { .. } => {
                Protocol::Reconcile
            }
            Request::Deposit { .. }
            | Request::Collect { .. }
            | Request::Ack { .. }
            | Request::HaveMail { .. } => Protocol::Mailbox,
        }
    }
}

/// A response. Externally tagged like [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// The request was refused or failed; `errcode` is a Matrix errcode.
    Error {
        errcode: String,
        error: String,
    },
    /// Done; nothing to return (heads, device list update, to-device).
    Ok {},
    MakeJoin {
        room_version: String,
        event: Value,
    },
    SendJoin {
        event: WirePdu,
        state: Vec<WirePdu>,
        auth_chain: Vec<WirePdu>,
    },
    Invite {
        event: WirePdu,
    },
    Events {
        pdus: Vec<WirePdu>,
    },
    State {
        #[serde(default)]
        pdus: Vec<WirePdu>,
        #[serde(default)]
        pdu_ids: Vec<String>,
        #[serde(default)]
        auth_chain: Vec<WirePdu>,
        #[serde(default)]
        auth_chain_ids: Vec<String>,
    },
    /// Any JSON body shaped as the spec's matching federation response (public rooms,
    /// profile, keys query/claim, user devices).
    Body(Value),
    /// The answerer's extremities of the rooms of an `extremities` request, or of the
    /// room of a `heads` request.
    Extremities {
        rooms: Vec<RoomHeads>,
    },
    /// A `reconcile` round's answer: the ranges that still differ.
    Ranges {
        ranges: Vec<Range>,
    },
    /// A `deposit` taken: items newly held, and items already held before.
    Deposited {
        stored: u32,
        duplicates: u32,
    },
    /// A `collect` page, oldest first; `more` when further items wait.
    Mail {
        items: Vec<HeldMail>,
        more: bool,
    },
}

impl Response {
    pub fn error(errcode: &str, error: impl Into<String>) -> Response {
        Response::Error {
            errcode: errcode.into(),
            error: error.into(),
        }
    }
}

impl From<crate::Error> for Response {
    fn from(e: crate::Error) -> Response {
        Response::error(e.errcode, e.message)
    }
}

/// The request-response codec: one JSON document per frame, capped per protocol. Frames
/// that fail to decode are counted in `bad_frames` and logged: libp2p drops a request that
/// fails to read without telling the behaviour, so the codec is the only place to see it.
#[derive(Debug, Clone, Default)]
pub struct Codec {
    counters: Option<std::sync::Arc<super::Counters>>,
}

impl Codec {
    pub fn counting(counters: std::sync::Arc<super::Counters>) -> Codec {
        Codec {
            counters: Some(counters),
        }
    }

    fn refused<T>(&self, protocol: &StreamProtocol, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            if let Some(c) = &self.counters {
                super::Counters::bump(&c.bad_frames);
            }
            tracing::warn!(protocol = protocol.as_ref(), error = %e, "refused a peer's frame");
        }
        r
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

async fn read_capped<T: AsyncRead + Unpin + Send>(io: &mut T, cap: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(cap + 1).read_to_end(&mut buf).await?;
    if buf.len() as u64 > cap {
        return Err(invalid(format!("frame over the {cap}-byte limit")));
    }
    Ok(buf)
}

/// Decodes a request frame received on `protocol`; a request of another protocol is invalid.
pub fn decode_request(protocol: Protocol, frame: &[u8]) -> io::Result<Request> {
    let req: Request = serde_json::from_slice(frame).map_err(invalid)?;
    if req.protocol() != protocol {
        return Err(invalid(format!("request does not belong to {}", protocol.id())));
    }
    Ok(req)
}

pub fn encode<T: Serialize>(msg: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(msg).map_err(invalid)
}

fn protocol_of(p: &StreamProtocol) -> io::Result<Protocol> {
    Protocol::from_id(p.as_ref()).ok_or_else(|| invalid("unknown protocol"))
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Request> {
        let r = async {
            let p = protocol_of(protocol)?;
            let frame = read_capped(io, MAX_REQUEST_BYTES).await?;
            decode_request(p, &frame)
        }
        .await;
        self.refused(protocol, r)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Response> {
        let r = async {
            let p = protocol_of(protocol)?;
            let frame = read_capped(io, p.max_response()).await?;
            if let Some(c) = &self.counters {
                c.response_bytes_in
                    .fetch_add(frame.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            serde_json::from_slice(&frame).map_err(invalid)
        }
        .await;
        self.refused(protocol, r)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()> {
        let frame = encode(&req)?;
        if frame.len() as u64 > MAX_REQUEST_BYTES || req.protocol() != protocol_of(protocol)? {
            return Err(invalid("request too large or on the wrong protocol"));
        }
        if let Some(c) = &self.counters {
            super::Counters::bump(&c.requests_out);
            c.request_bytes_out
                .fetch_add(frame.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        io.write_all(&frame).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()> {
        let mut frame = encode(&res)?;
        if frame.len() as u64 > protocol_of(protocol)?.max_response() {
            frame = encode(&Response::error("M_TOO_LARGE", "response over the frame limit"))?;
        }
        io.write_all(&frame).await?;
        io.close().await
    }
}

/// A gossip message: `<event ID>\n<canonical JSON PDU>`. The first line is the gossipsub
/// message ID, so a relay dedups without parsing the PDU; receivers recompute the event ID
/// and drop the message when the two differ.
pub fn encode_gossip(event_id: &str, pdu: &WirePdu) -> Vec<u8> {
    let json = serde_json::to_vec(pdu).unwrap_or_default();
    let mut out = Vec::with_capacity(event_id.len() + 1 + json.len());
    out.extend_from_slice(event_id.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&json);
    out
}

/// Splits a gossip frame; `None` when it is malformed or oversize.
pub fn decode_gossip(data: &[u8]) -> Option<(String, WirePdu)> {
    if data.len() > MAX_GOSSIP_BYTES {
        return None;
    }
    let nl = data.iter().position(|b| *b == b'\n')?;
    let id = std::str::from_utf8(&data[..nl]).ok()?;
    if !id.starts_with('$') || id.len() > 255 {
        return None;
    }
    let pdu: WirePdu = serde_json::from_slice(&data[nl + 1..]).ok()?;
    Some((id.to_owned(), pdu))
}

/// The gossipsub message ID of a frame: its first line (an event ID), or for anything
/// else a blake3 hash so malformed frames still dedup.
pub fn gossip_message_id(data: &[u8]) -> Vec<u8> {
    match data.iter().position(|b| *b == b'\n') {
        Some(nl) if nl <= 255 && data.first() == Some(&b'$') => data[..nl].to_vec(),
        _ => blake3::hash(data).as_bytes().to_vec(),
    }
}

/// Ephemeral room data (typing, receipts) rides the room's topic as `edu\n<json>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "edu_type", content = "content")]
pub enum Edu {
    #[serde(rename = "m.typing")]
    Typing {
        room_id: String,
        user_id: String,
        typing: bool,
        /// Milliseconds since the epoch: makes a repeated state a new gossip message.
        ts: u64,
    },
    #[serde(rename = "m.receipt")]
    Receipt {
        room_id: String,
        user_id: String,
        receipt_type: String,
        event_id: String,
        #[serde(default)]
        thread_id: Option<String>,
        ts: u64,
    },
}

pub const EDU_PREFIX: &[u8] = b"edu\n";

pub fn encode_edu(edu: &Edu) -> Vec<u8> {
    let mut out = EDU_PREFIX.to_vec();
    out.extend_from_slice(&serde_json::to_vec(edu).unwrap_or_default());
    out
}

pub fn decode_edu(data: &[u8]) -> Option<Edu> {
    let body = data.strip_prefix(EDU_PREFIX)?;
    if body.len() > MAX_SMALL_RESPONSE_BYTES as usize {
        return None;
    }
    serde_json::from_slice(body).ok()
}

#[cfg(test)]
mod tests;
