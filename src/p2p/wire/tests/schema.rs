//! The JSON Schemas in proto/schemas/ against the code: every request and response kind
//! the code can encode validates, each request kind names the protocol the code gives it,
//! the schemas list no kind the code lacks, and the frame vectors validate too. The
//! validator covers the keywords the schemas use, and fails on any other.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::*;

fn schema(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("proto/schemas")
        .join(name);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "examples",
    "x-protocol",
    "$defs",
    "format",
];

/// Validates `v` against `s` (a subschema of `root`); returns the first violation.
fn check(root: &Value, s: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = match s {
        Value::Bool(true) => return Ok(()),
        Value::Bool(false) => return Err(format!("{at}: not allowed")),
        Value::Object(o) => o,
        _ => panic!("{at}: a schema must be an object or a boolean"),
    };
    for (key, want) in s {
        match key.as_str() {
            "$ref" => {
                let r = want.as_str().unwrap();
                match r.strip_prefix("#/$defs/") {
                    Some(name) => {
                        let def = root["$defs"]
                            .get(name)
                            .unwrap_or_else(|| panic!("no $defs/{name}"));
                        check(root, def, v, at)?;
                    }
                    // Another file of proto/schemas/, validated as its own root.
                    None => {
                        let other = schema(r);
                        check(&other, &other, v, at)?;
                    }
                }
            }
            "type" => {
                let types: Vec<&str> = match want {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => panic!("{at}: bad type"),
                };
                if !types.iter().any(|t| type_matches(t, v)) {
                    return Err(format!("{at}: expected {types:?}, got {v}"));
                }
            }
            "const" if v != want => return Err(format!("{at}: expected {want}")),
            "enum" if !want.as_array().unwrap().contains(v) => {
                return Err(format!("{at}: {v} not in {want}"));
            }
            "oneOf" => {
                let ok = want
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|alt| check(root, alt, v, at).is_ok());
                if ok.count() != 1 {
                    return Err(format!("{at}: matches not exactly one of oneOf"));
                }
            }
            "required" => {
                for field in want.as_array().unwrap() {
                    let f = field.as_str().unwrap();
                    if v.get(f).is_none() {
                        return Err(format!("{at}: missing {f}"));
                    }
                }
            }
            // Checked together below: additionalProperties depends on properties.
            "properties" | "additionalProperties" | "propertyNames" => {}
            "items" => {
                for (i, item) in v.as_array().into_iter().flatten().enumerate() {
                    check(root, want, item, &format!("{at}[{i}]"))?;
                }
            }
            "maxItems" | "minItems" | "maxLength" | "minLength" | "maxProperties" | "minimum" | "maximum" => {
                check_bound(key, want.as_u64().unwrap(), v, at)?;
            }
            "pattern" => {
                // Only the patterns the schemas use: a required leading sigil.
                let p = want.as_str().unwrap();
                let sigil = p.strip_prefix("^\\").or_else(|| p.strip_prefix('^')).unwrap();
                assert_eq!(sigil.chars().count(), 1, "{at}: unsupported pattern {p}");
                if v.as_str().is_some_and(|s| !s.starts_with(sigil)) {
                    return Err(format!("{at}: {v} does not match {p}"));
                }
            }
            k if ANNOTATIONS.contains(&k) || k == "const" || k == "enum" => {}
            k => panic!("{at}: the test validator does not know the keyword {k}"),
        }
    }
    check_object(root, s, v, at)
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => panic!("unknown type {t}"),
    }
}

fn check_object(root: &Value, s: &Map<String, Value>, v: &Value, at: &str) -> Result<(), String> {
    let Some(obj) = v.as_object() else { return Ok(()) };
    let props = s.get("properties").and_then(Value::as_object);
    for (k, item) in obj {
        if let Some(names) = s.get("propertyNames") {
            check(root, names, &Value::String(k.clone()), &format!("{at} key {k}"))?;
        }
        // Absent `additionalProperties` allows anything.
        if let Some(sub) = props
            .and_then(|p| p.get(k))
            .or_else(|| s.get("additionalProperties"))
        {
            check(root, sub, item, &format!("{at}.{k}"))?;
        }
    }
    Ok(())
}

fn check_bound(key: &str, n: u64, v: &Value, at: &str) -> Result<(), String> {
    let (actual, max) = match (key, v) {
        ("maxItems" | "minItems", Value::Array(a)) => (a.len() as u64, key == "maxItems"),
        ("maxLength" | "minLength", Value::String(s)) => (s.chars().count() as u64, key == "maxLength"),
        ("maxProperties", Value::Object(o)) => (o.len() as u64, true),
        ("maximum" | "minimum", Value::Number(x)) => (x.as_u64().unwrap_or(0), key == "maximum"),
        _ => return Ok(()),
    };
    if (max && actual > n) || (!max && actual < n) {
        return Err(format!("{at}: {key} {n}, got {actual}"));
    }
    Ok(())
}

/// One request of every kind, with every optional field set.
fn every_request(room: &ExampleRoom) -> Vec<Request> {
    let (r, ids) = (
        room.room_id.clone(),
        room.events.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
    );
    let bob = user(&bob(), "bob");
    let pdu = room.message().1.clone();
    vec![
        Request::MakeJoin {
            room_id: r.clone(),
            user_id: bob.clone(),
            supported_versions: vec!["12".into()],
        },
        Request::SendJoin {
            room_id: r.clone(),
            event: pdu.clone(),
        },
        Request::Invite {
            room_version: "12".into(),
            event: pdu.clone(),
            invite_room_state: vec![serde_json::to_value(&room.events[0].1).unwrap()],
        },
        Request::GetEvents {
            event_ids: ids.clone(),
        },
        Request::GetMissing {
            room_id: r.clone(),
            earliest_events: ids[..1].to_vec(),
            latest_events: ids[3..].to_vec(),
            limit: 10,
        },
        Request::State {
            room_id: r.clone(),
            event_id: ids[3].clone(),
            ids_only: true,
        },
        Request::Backfill {
            room_id: r.clone(),
            from: ids[3..].to_vec(),
            limit: 10,
        },
        Request::Heads {
            room_id: r.clone(),
            extremities: ids[3..].to_vec(),
        },
        Request::PublicRooms {
            limit: Some(10),
            since: Some("10".into()),
            filter: Some("mesh".into()),
        },
        Request::Profile {
            user_id: bob.clone(),
            field: Some("displayname".into()),
        },
        Request::KeysQuery {
            device_keys: BTreeMap::from([(bob.clone(), vec!["PHONE".into()])]),
        },
        Request::KeysClaim {
            one_time_keys: BTreeMap::from([(
                bob.clone(),
                BTreeMap::from([("PHONE".into(), "signed_curve25519".into())]),
            )]),
        },
        Request::DeviceListUpdate {
            content: json!({"user_id": bob, "device_id": "PHONE", "stream_id": 1, "deleted": false}),
        },
        Request::UserDevices { user_id: bob.clone() },
        Request::ToDevice {
            content: json!({"sender": bob, "type": "m.room_key", "message_id": "m1",
                "messages": {&bob: {"*": {"k": 1}}}}),
        },
        Request::Extremities {
            after: Some("!a".into()),
            rooms: vec![heads(&r, &ids)],
            complete: true,
        },
        Request::Reconcile {
            room_id: r.clone(),
            key: "ab".repeat(32),
            lower: 1,
            ranges: vec![range(&ids)],
        },
        Request::GetRange {
            room_id: r.clone(),
            lo: (1, String::new()),
            hi: Some((4, ids[3].clone())),
            limit: 1000,
        },
        Request::Deposit {
            items: vec![super::mail_item()],
        },
        Request::Collect {
            ack: Some(3),
            limit: 64,
        },
        Request::Ack { up_to: 3 },
        Request::HaveMail { count: 2 },
    ]
}

fn heads(room_id: &str, ids: &[String]) -> RoomHeads {
    RoomHeads {
        room_id: room_id.to_owned(),
        extremities: ids.iter().rev().take(1).cloned().collect(),
        depth: 4,
    }
}

/// A reconcile range with every field but `ids` set.
fn range(ids: &[String]) -> Range {
    Range {
        lo: Some((1, String::new())),
        hi: Some((4, ids.first().map_or("$", |i| &i[..3]).to_owned())),
        fp: Some("A".repeat(22)),
        ids: None,
    }
}

fn every_response(room: &ExampleRoom) -> Vec<Response> {
    let pdu = room.message().1.clone();
    let id = room.message().0.clone();
    vec![
        Response::error("M_FORBIDDEN", "no"),
        Response::Ok {},
        Response::MakeJoin {
            room_version: "12".into(),
            event: room.bob_join_template(),
        },
        Response::SendJoin {
            event: pdu.clone(),
            state: vec![pdu.clone()],
            auth_chain: vec![pdu.clone()],
        },
        Response::Invite { event: pdu.clone() },
        Response::Events {
            pdus: vec![pdu.clone()],
        },
        Response::State {
            pdus: vec![pdu.clone()],
            pdu_ids: vec![id.clone()],
            auth_chain: vec![pdu],
            auth_chain_ids: vec![id.clone()],
        },
        Response::Body(json!({"displayname": "Bob"})),
        Response::Extremities {
            rooms: vec![heads(&room.room_id, std::slice::from_ref(&id))],
        },
        Response::Ranges {
            ranges: vec![
                range(std::slice::from_ref(&id)),
                Range {
                    ids: Some(vec![id.clone()]),
                    ..range(&[])
                },
            ],
        },
        Response::Deposited {
            stored: 1,
            duplicates: 0,
        },
        Response::Mail {
            items: vec![HeldMail {
                seq: 4,
                item: super::mail_item(),
            }],
            more: false,
        },
    ]
}

fn tag(v: &Value) -> String {
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 1, "externally tagged: {v}");
    o.keys().next().unwrap().clone()
}

/// The kinds a frame schema's top-level `oneOf` lists.
fn listed_kinds(root: &Value) -> BTreeSet<String> {
    root["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["$ref"]
                .as_str()
                .unwrap()
                .trim_start_matches("#/$defs/")
                .to_owned()
        })
        .collect()
}

#[test]
fn every_request_matches_the_schema_and_names_its_protocol() {
    let root = schema("request.schema.json");
    let room = ExampleRoom::build();
    let mut seen = BTreeSet::new();
    for req in every_request(&room) {
        let v = serde_json::to_value(&req).unwrap();
        let kind = tag(&v);
        check(&root, &root, &v, &kind).unwrap();
        assert_eq!(root["$defs"][&kind]["x-protocol"], req.protocol().id(), "{kind}");
        // The schema refuses what the decoder refuses: unknown fields, and other kinds.
        let mut extra = v.clone();
        extra[&kind]["origin"] = json!("example.org");
        assert!(
            check(&root, &root, &extra, &kind).is_err(),
            "{kind} takes unknown fields"
        );
        assert!(decode_request(req.protocol(), &serde_json::to_vec(&extra).unwrap()).is_err());
        seen.insert(kind);
    }
    assert_eq!(listed_kinds(&root), seen);
    for name in [
        "request_get_events.json",
        "request_heads.json",
        "request_make_join.json",
        "request_deposit.json",
    ] {
        let v: Value = serde_json::from_slice(&std::fs::read(vector_path(name)).unwrap()).unwrap();
        check(&root, &root, &v, name).unwrap();
    }
    // Lists over their caps fail the schema as they fail the handlers.
    let too_many = json!({"get_events": {"event_ids": vec!["$e"; MAX_EVENT_IDS + 1]}});
    assert!(check(&root, &root, &too_many, "get_events").is_err());
}

#[test]
fn every_response_matches_the_schema() {
    let root = schema("response.schema.json");
    let room = ExampleRoom::build();
    let mut seen = BTreeSet::new();
    for res in every_response(&room) {
        let v = serde_json::to_value(&res).unwrap();
        let kind = tag(&v);
        check(&root, &root, &v, &kind).unwrap();
        seen.insert(kind);
    }
    assert_eq!(listed_kinds(&root), seen);
    for name in [
        "response_make_join.json",
        "response_ok.json",
        "response_error.json",
    ] {
        let v: Value = serde_json::from_slice(&std::fs::read(vector_path(name)).unwrap()).unwrap();
        check(&root, &root, &v, name).unwrap();
    }
    let bad = json!({"error": {"errcode": "M_FORBIDDEN"}});
    assert!(check(&root, &root, &bad, "error").is_err());
}

#[test]
fn every_edu_and_the_pdu_vector_match_their_schemas() {
    let root = schema("edu.schema.json");
    let room = ExampleRoom::build();
    let edus = [
        Edu::Typing {
            room_id: room.room_id.clone(),
            user_id: user(&alice(), "alice"),
            typing: false,
            ts: TS,
        },
        Edu::Receipt {
            room_id: room.room_id.clone(),
            user_id: user(&alice(), "alice"),
            receipt_type: "m.read".into(),
            event_id: room.message().0.clone(),
            thread_id: Some("$thread".into()),
            ts: TS,
        },
    ];
    for edu in edus {
        let v = serde_json::to_value(&edu).unwrap();
        check(&root, &root, &v, "edu").unwrap();
    }
    let frame = std::fs::read(vector_path("edu_typing.bin")).unwrap();
    let body: Value = serde_json::from_slice(frame.strip_prefix(EDU_PREFIX).unwrap()).unwrap();
    check(&root, &root, &body, "edu_typing.bin").unwrap();

    let pdu_schema = schema("pdu.schema.json");
    let file: Value = serde_json::from_slice(&std::fs::read(vector_path("room.json")).unwrap()).unwrap();
    for ev in file["events"].as_array().unwrap() {
        check(&pdu_schema, &pdu_schema, &ev["pdu"], "room.json").unwrap();
    }
}
