//! A stored Matrix PDU: the signed canonical JSON plus the fields the room state machine
//! reads, and its rendering as a client event.

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use ruma::events::TimelineEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::value::RawValue as RawJsonValue;
use serde_json::{Value, json};

/// Size limit for a whole PDU in canonical JSON, per the spec.
pub const MAX_PDU_BYTES: usize = 65_536;

#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    /// The room the event belongs to: for a v12 create event, derived from its event ID.
    pub room: OwnedRoomId,
    /// The `room_id` field as it appears in the PDU (absent on v12 create events).
    pub room_id_field: Option<OwnedRoomId>,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    pub rejected: bool,
    /// The full signed PDU as hashed (without `event_id`, which is derived).
    pub json: CanonicalJsonObject,
}

/// Computes the event ID (`$` + reference hash) of a hashed and signed PDU.
pub fn event_id_of(json: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId, String> {
    let hash = ruma::signatures::reference_hash(json, rules).map_err(|e| e.to_string())?;
    EventId::parse(format!("${hash}")).map_err(|e| e.to_string())
}

fn str_field<'a>(json: &'a CanonicalJsonObject, key: &str) -> Result<&'a str, String> {
    match json.get(key) {
        Some(CanonicalJsonValue::String(s)) => Ok(s),
        _ => Err(format!("missing or non-string `{key}`")),
    }
}

fn id_list(json: &CanonicalJsonObject, key: &str) -> Result<Vec<OwnedEventId>, String> {
    match json.get(key) {
        Some(CanonicalJsonValue::Array(items)) => items
            .iter()
            .map(|v| match v {
                CanonicalJsonValue::String(s) => EventId::parse(s).map_err(|e| format!("`{key}`: {e}")),
                _ => Err(format!("`{key}` must list event IDs")),
            })
            .collect(),
        _ => Err(format!("missing or non-array `{key}`")),
    }
}

impl Pdu {
    /// Reads a PDU's fields. `event_id` is the derived ID; for v12 create events the room
    /// ID is derived from it.
    pub fn from_json(event_id: OwnedEventId, json: CanonicalJsonObject) -> Result<Pdu, String> {
        let kind = TimelineEventType::from(str_field(&json, "type")?);
        let room_id_field = match json.get("room_id") {
            Some(CanonicalJsonValue::String(s)) => {
                Some(RoomId::parse(s).map_err(|e| format!("`room_id`: {e}"))?)
            }
            None => None,
            Some(_) => return Err("non-string `room_id`".into()),
        };
        let room = match &room_id_field {
            Some(r) => r.clone(),
            None if kind == TimelineEventType::RoomCreate => {
                let hash = event_id.as_str().trim_start_matches('$');
                RoomId::new_v2(hash).map_err(|e| e.to_string())?
            }
            None => return Err("missing `room_id`".into()),
        };
        let sender = UserId::parse(str_field(&json, "sender")?).map_err(|e| format!("`sender`: {e}"))?;
        let origin_server_ts = match json.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(i)) => MilliSecondsSinceUnixEpoch(
                UInt::try_from(i64::from(*i)).map_err(|_| "negative `origin_server_ts`")?,
            ),
            _ => return Err("missing or non-integer `origin_server_ts`".into()),
        };
        let depth = match json.get("depth") {
            Some(CanonicalJsonValue::Integer(i)) => {
                u64::try_from(i64::from(*i)).map_err(|_| "negative `depth`")?
            }
            _ => return Err("missing or non-integer `depth`".into()),
        };
        let content = match json.get("content") {
            Some(c @ CanonicalJsonValue::Object(_)) => {
                RawJsonValue::from_string(serde_json::to_string(c).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?
            }
            _ => return Err("missing or non-object `content`".into()),
        };
        let state_key = match json.get("state_key") {
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            None => None,
            Some(_) => return Err("non-string `state_key`".into()),
        };
        // v11 moved `redacts` into content; accept either place.
        let redacts = match json.get("redacts").or_else(|| match json.get("content") {
            Some(CanonicalJsonValue::Object(c)) => c.get("redacts"),
            _ => None,
        }) {
            Some(CanonicalJsonValue::String(s)) => Some(EventId::parse(s).map_err(|e| e.to_string())?),
            _ => None,
        };
        Ok(Pdu {
            prev_events: id_list(&json, "prev_events")?,
            auth_events: id_list(&json, "auth_events")?,
            event_id,
            room,
            room_id_field,
            sender,
            origin_server_ts,
            kind,
            content,
            state_key,
            redacts,
            depth,
            rejected: false,
            json,
        })
    }

    /// Parses a PDU as stored (`json` text, known event ID).
    pub fn from_stored(event_id: &str, json: &str) -> Result<Pdu, String> {
        let object: CanonicalJsonObject = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Pdu::from_json(EventId::parse(event_id).map_err(|e| e.to_string())?, object)
    }

    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Object(Default::default()))
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The event in the client format (`ClientEvent`); `unsigned` is merged in.
    pub fn to_client_event(&self, include_room_id: bool, unsigned: serde_json::Map<String, Value>) -> Value {
        let mut ev = json!({
            "content": self.json.get("content").cloned().unwrap_or(CanonicalJsonValue::Object(Default::default())),
            "event_id": self.event_id,
            "origin_server_ts": self.origin_server_ts,
            "sender": self.sender,
            "type": self.kind.to_string(),
        });
        let obj = ev.as_object_mut().expect("literal object");
        if include_room_id {
            obj.insert("room_id".into(), json!(self.room));
        }
        if let Some(sk) = &self.state_key {
            obj.insert("state_key".into(), json!(sk));
        }
        if let Some(r) = &self.redacts {
            obj.insert("redacts".into(), json!(r));
        }
        let mut u = match self.json.get("unsigned") {
            Some(CanonicalJsonValue::Object(stored)) => serde_json::to_value(stored)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default(),
            _ => serde_json::Map::new(),
        };
        u.extend(unsigned);
        let now = MilliSecondsSinceUnixEpoch::now().get();
        u.insert(
            "age".into(),
            json!(u64::from(now).saturating_sub(u64::from(self.origin_server_ts.get()))),
        );
        obj.insert("unsigned".into(), Value::Object(u));
        ev
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id_field.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawJsonValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}
