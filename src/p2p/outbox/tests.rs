//! Packing to-device messages into EDUs that fit the peer frame limit.

use ruma::OwnedUserId;
use serde_json::{Map, Value, json};

use super::*;
use crate::identity::Identity;

fn server(seed: u8) -> String {
    Identity::from_seed([seed; 32], "a_t").server_name().to_string()
}

fn content(bytes: usize) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ciphertext".into(), "x".repeat(bytes).into());
    m
}

fn user(name: &str, server: &str) -> OwnedUserId {
    ruma::UserId::parse(format!("@{name}:{server}")).unwrap()
}

#[test]
fn one_edu_per_destination_with_stable_distinct_ids() {
    let (a, b) = (server(1), server(2));
    let msgs = || {
        vec![
            (user("x", &a), [("D1".to_owned(), content(10))].into()),
            (user("y", &a), [("*".to_owned(), content(10))].into()),
            (user("z", &b), [("D2".to_owned(), content(10))].into()),
        ]
    };
    let edus = to_device_edus("@s:me", "m.room_key", "DEV\ntxn1", msgs()).unwrap();
    assert_eq!(edus.len(), 2);
    let (_, c) = &edus[0];
    assert_eq!(c["sender"], "@s:me");
    assert_eq!(c["type"], "m.room_key");
    let for_a = edus.iter().find(|(d, _)| *d == a).unwrap();
    assert_eq!(
        for_a.1["messages"],
        json!({user("x", &a).as_str(): {"D1": content(10)}, user("y", &a).as_str(): {"*": content(10)}})
    );
    // The same transaction gives the same IDs (a resend is recognisable); another does not.
    let again = to_device_edus("@s:me", "m.room_key", "DEV\ntxn1", msgs()).unwrap();
    assert_eq!(edus, again);
    let other = to_device_edus("@s:me", "m.room_key", "DEV\ntxn2", msgs()).unwrap();
    assert_ne!(edus[0].1["message_id"], other[0].1["message_id"]);
    assert_ne!(edus[0].1["message_id"], edus[1].1["message_id"]);
}

#[test]
fn big_batches_split_under_the_frame_limit_and_oversize_messages_are_refused() {
    let a = server(3);
    // 40 devices × 100 KB: about 4 MB for one destination.
    let devices: UserMessages = (0..40).map(|i| (format!("D{i:02}"), content(100_000))).collect();
    let edus = to_device_edus("@s:me", "m.t", "t", vec![(user("x", &a), devices.clone())]).unwrap();
    assert!(edus.len() >= 4, "{} EDUs", edus.len());
    let mut seen = Vec::new();
    for (dest, c) in &edus {
        assert_eq!(dest, &a);
        let frame = wire::encode(&Request::ToDevice { content: c.clone() }).unwrap();
        assert!(
            frame.len() as u64 <= wire::MAX_REQUEST_BYTES,
            "{} bytes",
            frame.len()
        );
        seen.extend(
            c["messages"][user("x", &a).as_str()]
                .as_object()
                .unwrap()
                .keys()
                .cloned(),
        );
    }
    seen.sort();
    assert_eq!(
        seen,
        devices.keys().cloned().collect::<Vec<_>>(),
        "every message exactly once"
    );

    let huge: UserMessages = [("D".to_owned(), content(wire::MAX_REQUEST_BYTES as usize))].into();
    let err = to_device_edus("@s:me", "m.t", "t", vec![(user("x", &a), huge)]).unwrap_err();
    assert_eq!(err.errcode, "M_TOO_LARGE");
}
