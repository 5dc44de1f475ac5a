//! What a receiver refuses: requests on the wrong protocol or with unknown fields,
//! oversize frames (driven through the libp2p codec itself), malformed gossip frames.

use futures::io::Cursor;
use libp2p::StreamProtocol;
use libp2p::request_response::Codec as _;

use super::*;

fn heads() -> Request {
    Request::Heads {
        room_id: "!room:example".into(),
        extremities: vec!["$event".into()],
    }
}

fn is_invalid_data<T: std::fmt::Debug>(r: io::Result<T>) -> bool {
    matches!(r, Err(ref e) if e.kind() == io::ErrorKind::InvalidData)
}

/// A `get_events` frame padded with trailing whitespace (valid JSON) to exactly `len` bytes.
fn padded_request(len: usize) -> Vec<u8> {
    let mut frame = encode(&Request::GetEvents { event_ids: vec![] }).unwrap();
    frame.resize(len, b' ');
    frame
}

async fn read_request(protocol: Protocol, frame: Vec<u8>) -> io::Result<Request> {
    Codec::default()
        .read_request(&protocol.stream_protocol(), &mut Cursor::new(frame))
        .await
}

async fn read_response(protocol: Protocol, frame: Vec<u8>) -> io::Result<Response> {
    Codec::default()
        .read_response(&protocol.stream_protocol(), &mut Cursor::new(frame))
        .await
}

#[tokio::test]
async fn a_request_on_another_protocol_is_refused() {
    let frame = encode(&heads()).unwrap();
    assert!(is_invalid_data(decode_request(Protocol::Events, &frame)));
    assert_eq!(decode_request(Protocol::Heads, &frame).unwrap(), heads());
    // The same through the codec, as a peer's stream delivers it.
    assert!(is_invalid_data(
        read_request(Protocol::Events, frame.clone()).await
    ));
    assert_eq!(read_request(Protocol::Heads, frame).await.unwrap(), heads());
    // An unknown protocol ID names no request at all.
    let unknown = StreamProtocol::new("/meshserver/heads/2");
    let r = Codec::default()
        .read_request(&unknown, &mut Cursor::new(encode(&heads()).unwrap()))
        .await;
    assert!(is_invalid_data(r));
    // A sender refuses to put a request on the wrong protocol, and writes nothing.
    let mut out = Cursor::new(Vec::new());
    let r = Codec::default()
        .write_request(&Protocol::Events.stream_protocol(), &mut out, heads())
        .await;
    assert!(is_invalid_data(r));
    assert!(out.into_inner().is_empty());
}

#[test]
fn unknown_fields_and_shapes_are_refused() {
    // A body cannot claim an origin (or anything else the schema lacks): the connection
    // is the only origin.
    let with_origin = br#"{"heads":{"room_id":"!r:x","extremities":[],"origin":"example.org"}}"#;
    assert!(is_invalid_data(decode_request(Protocol::Heads, with_origin)));
    let two_tags = br#"{"heads":{"room_id":"!r:x","extremities":[]},"get_events":{"event_ids":[]}}"#;
    assert!(is_invalid_data(decode_request(Protocol::Heads, two_tags)));
    assert!(is_invalid_data(decode_request(Protocol::Heads, b"heads")));
    assert!(is_invalid_data(decode_request(Protocol::Events, b"")));
    // Defaults apply only to the fields the spec marks optional.
    let state = br#"{"state":{"room_id":"!r:x","event_id":"$e"}}"#;
    assert!(matches!(
        decode_request(Protocol::State, state),
        Ok(Request::State { ids_only: false, .. })
    ));
    let no_limit = br#"{"backfill":{"room_id":"!r:x","from":["$e"]}}"#;
    assert!(is_invalid_data(decode_request(Protocol::Backfill, no_limit)));
}

#[tokio::test]
async fn an_oversize_request_frame_is_refused() {
    let cap = MAX_REQUEST_BYTES as usize;
    let at_cap = read_request(Protocol::Events, padded_request(cap)).await.unwrap();
    assert_eq!(at_cap, Request::GetEvents { event_ids: vec![] });
    let err = read_request(Protocol::Events, padded_request(cap + 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("limit"), "{err}");
    // A sender refuses to write one.
    let huge = Request::GetEvents {
        event_ids: vec!["$".repeat(1000); cap / 1000 + 1],
    };
    let mut out = Cursor::new(Vec::new());
    let r = Codec::default()
        .write_request(&Protocol::Events.stream_protocol(), &mut out, huge)
        .await;
    assert!(is_invalid_data(r));
}

#[tokio::test]
async fn response_caps_are_per_protocol() {
    let body = |len: usize| {
        let mut frame = encode(&Response::Ok {}).unwrap();
        frame.resize(len, b' ');
        frame
    };
    let small = MAX_SMALL_RESPONSE_BYTES as usize;
    assert_eq!(
        read_response(Protocol::Profile, body(small)).await.unwrap(),
        Response::Ok {}
    );
    assert!(is_invalid_data(
        read_response(Protocol::Profile, body(small + 1)).await
    ));
    // The event protocols allow far larger frames.
    assert_eq!(
        read_response(Protocol::Events, body(small + 1)).await.unwrap(),
        Response::Ok {}
    );
    let big = MAX_RESPONSE_BYTES as usize;
    assert!(is_invalid_data(
        read_response(Protocol::State, body(big + 1)).await
    ));

    // A responder whose answer is over the cap sends M_TOO_LARGE instead.
    let oversize = Response::Body(serde_json::json!({ "displayname": "x".repeat(small) }));
    let mut out = Cursor::new(Vec::new());
    Codec::default()
        .write_response(&Protocol::Profile.stream_protocol(), &mut out, oversize)
        .await
        .unwrap();
    let sent: Response = serde_json::from_slice(&out.into_inner()).unwrap();
    assert!(
        matches!(sent, Response::Error { ref errcode, .. } if errcode == "M_TOO_LARGE"),
        "{sent:?}"
    );
}

#[test]
fn malformed_gossip_frames_are_refused() {
    let room = ExampleRoom::build();
    let (event_id, pdu) = room.message();
    let body = serde_json::to_vec(pdu).unwrap();
    let frame = |id: &[u8]| [id, b"\n", &body].concat();
    assert!(decode_gossip(&frame(event_id.as_bytes())).is_some());

    let bad_id_lines: [&[u8]; 4] = [
        b"",                                         // empty ID line
        event_id.trim_start_matches('$').as_bytes(), // no sigil
        b"edu",                                      // the EDU prefix is not an event ID
        &[b"$".as_slice(), &[b'a'; 255]].concat(),   // 256 bytes: over the event ID limit
    ];
    for id in bad_id_lines {
        let f = frame(id);
        assert_eq!(decode_gossip(&f), None, "{:?}", String::from_utf8_lossy(id));
        // Relays still dedup it, by content hash rather than the bogus line.
        assert_eq!(gossip_message_id(&f), blake3::hash(&f).as_bytes().to_vec());
    }
    // A `$` line that is not UTF-8 is refused too; relays key it by its raw line.
    let f = frame(b"$\xff\xfe");
    assert_eq!(decode_gossip(&f), None);
    assert_eq!(gossip_message_id(&f), b"$\xff\xfe");
    // No ID line at all; a body that is not a JSON object.
    assert_eq!(decode_gossip(&body), None);
    assert_eq!(decode_gossip(format!("{event_id}\n[1,2]").as_bytes()), None);
    assert_eq!(decode_gossip(format!("{event_id}\n").as_bytes()), None);
    // Over the gossip cap, however well formed.
    let mut big = pdu.clone();
    big.insert(
        "pad".into(),
        ruma::canonical_json::CanonicalJsonValue::String("x".repeat(MAX_GOSSIP_BYTES)),
    );
    assert_eq!(decode_gossip(&encode_gossip(event_id, &big)), None);
    // Well formed but lying: the ID line is not the body's hash. decode_gossip passes it;
    // the receiver's recomputation (tested in p2p::replicate) is what refuses it.
    let other = &room.events[2].0;
    let rules = rules_for(&RoomVersionId::V12).unwrap();
    let (claimed, body) = decode_gossip(&frame(other.as_bytes())).unwrap();
    assert_ne!(event_id_of(&body, &rules).unwrap().as_str(), claimed);
}

#[test]
fn malformed_edu_frames_are_refused() {
    assert_eq!(
        decode_edu(b"edu\n{\"edu_type\":\"m.presence\",\"content\":{}}"),
        None
    );
    assert_eq!(decode_edu(b"edu\nnot json"), None);
    assert_eq!(decode_edu(b"EDU\n{}"), None);
    let mut big = b"edu\n".to_vec();
    big.resize(EDU_PREFIX.len() + MAX_SMALL_RESPONSE_BYTES as usize + 1, b' ');
    assert_eq!(decode_edu(&big), None);
}
