//! Range-based reconciliation in memory: exact differences among 100,000 IDs, the rounds
//! and bytes they take, and chosen IDs that do not raise the round bound.

use std::collections::HashSet;

use super::set::{Initiator, Set, respond, round_bound};
use crate::p2p::wire::{Key, Request, Response, encode};

/// An event-ID-shaped string from a number (`$` + 43 characters, as room version 4+).
fn id(n: u64) -> String {
    let h = blake3::hash(&n.to_le_bytes());
    format!("${}", &hex::encode(h.as_bytes())[..43])
}

/// `n` keys at depths 1.. in order, a few events per depth as in a busy room.
fn room(n: u64) -> Vec<Key> {
    (0..n).map(|i| ((i / 3 + 1) as i64, id(i))).collect()
}

struct Run {
    need: Vec<String>,
    have: Vec<String>,
    absent: Vec<(Key, Option<Key>)>,
    rounds: usize,
    /// Request and response frames as encoded on the wire.
    bytes: usize,
}

/// Runs a whole session with fresh random keys, as two nodes would.
fn reconcile(initiator: Vec<Key>, responder: Vec<Key>) -> Run {
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    let theirs = Set::new(&key, responder);
    let mut init = Initiator::new(Set::new(&key, initiator), 0);
    let mut bytes = 0;
    while let Some(ranges) = init.next_request() {
        assert!(init.rounds <= 64, "runaway session");
        let answer = respond(&theirs, &ranges);
        let req = Request::Reconcile {
            room_id: "!r:x".into(),
            key: hex::encode(key),
            lower: 0,
            ranges,
        };
        bytes += encode(&req).unwrap().len();
        bytes += encode(&Response::Ranges {
            ranges: answer.clone(),
        })
        .unwrap()
        .len();
        init.on_response(answer).unwrap();
    }
    Run {
        need: init.need,
        have: init.have,
        absent: init.absent,
        rounds: init.rounds,
        bytes,
    }
}

/// Removes every `n / d`-th of `keys` (d of them, spread over the whole set).
fn without(keys: &[Key], d: usize) -> (Vec<Key>, HashSet<String>) {
    let step = keys.len() / d;
    let mut kept = Vec::new();
    let mut gone = HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        if i % step == step / 2 && gone.len() < d {
            gone.insert(k.1.clone());
        } else {
            kept.push(k.clone());
        }
    }
    (kept, gone)
}

fn check_exact(full: &[Key], d: usize) -> Run {
    let (partial, gone) = without(full, d);
    assert_eq!(gone.len(), d);
    // The side lacking events asks; it learns exactly what it lacks.
    let run = reconcile(partial.clone(), full.to_vec());
    // Named by ID, or inside a range this side holds nothing of (fetched whole).
    let in_absent: Vec<String> = full
        .iter()
        .filter(|k| {
            run.absent
                .iter()
                .any(|(lo, hi)| *k >= lo && hi.as_ref().is_none_or(|h| *k < h))
        })
        .map(|k| k.1.clone())
        .collect();
    let need: HashSet<String> = run.need.iter().chain(&in_absent).cloned().collect();
    assert_eq!(need, gone, "lacking side");
    assert_eq!(run.need.len() + in_absent.len(), d, "no ID twice");
    assert!(run.have.is_empty());
    assert!(run.rounds <= round_bound(full.len(), d), "{} rounds", run.rounds);
    // The side holding more asks; it learns exactly what the peer lacks.
    let back = reconcile(full.to_vec(), partial);
    let have: HashSet<String> = back.have.iter().cloned().collect();
    assert_eq!(have, gone, "holding side");
    assert!(back.need.is_empty());
    println!(
        "reconcile: {d} of {} differ: {} rounds, {} bytes ({:.0} bytes per difference)",
        full.len(),
        run.rounds,
        run.bytes,
        run.bytes as f64 / d as f64
    );
    run
}

#[test]
fn one_ten_and_a_thousand_differences_among_100_000_reconcile_exactly() {
    let full = room(100_000);
    let one = check_exact(&full, 1);
    let ten = check_exact(&full, 10);
    let thousand = check_exact(&full, 1000);
    // Bytes grow with the differences, not with the set: a handful of KiB per difference.
    assert!(one.bytes < 16 * 1024, "{}", one.bytes);
    assert!(ten.bytes < 10 * 16 * 1024, "{}", ten.bytes);
    assert!(thousand.bytes < 1000 * 4 * 1024, "{}", thousand.bytes);
}

#[test]
fn identical_sets_settle_in_one_round_of_one_range() {
    let full = room(100_000);
    let run = reconcile(full.clone(), full);
    assert_eq!((run.rounds, run.need.len(), run.have.len()), (1, 0, 0));
    assert!(run.bytes < 300, "{}", run.bytes);
}

#[test]
fn a_missing_tail_is_fetched_as_ranges_not_listed() {
    // Offline for the last 10,000 of 100,000 events: the lacking side holds nothing of
    // most of that tail, so it is fetched whole by range, not named ID by ID.
    let full = room(100_000);
    let run = reconcile(full[..90_000].to_vec(), full.clone());
    assert!(!run.absent.is_empty());
    assert!(run.need.len() < 100, "{} listed", run.need.len());
    let covered = full[90_000..]
        .iter()
        .filter(|k| {
            run.need.contains(&k.1)
                || run
                    .absent
                    .iter()
                    .any(|(lo, hi)| *k >= lo && hi.as_ref().is_none_or(|h| *k < h))
        })
        .count();
    assert_eq!(covered, 10_000);
    assert!(full[..90_000].iter().all(|k| {
        !run.absent
            .iter()
            .any(|(lo, hi)| k >= lo && hi.as_ref().is_none_or(|h| k < h))
    }));
    println!(
        "reconcile: 10,000-event tail: {} rounds, {} bytes",
        run.rounds, run.bytes
    );
}

#[test]
fn chosen_ids_do_not_raise_the_round_bound() {
    // An attacker's events: all at one depth, IDs sharing a long prefix (as ground
    // reference hashes would), interleaved with the honest ones; every difference placed
    // in its own leaf so that each level is as wide as it can be.
    let n = 100_000u64;
    let mut keys: Vec<Key> = (0..n / 2).map(|i| ((i / 3 + 1) as i64, id(i))).collect();
    keys.extend((0..n / 2).map(|i| (7, format!("$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA{i:09}"))));
    for d in [1, 16, 256, 1000] {
        let run = check_exact(&keys, d);
        assert!(
            run.rounds <= round_bound(keys.len(), d),
            "{d}: {} rounds",
            run.rounds
        );
    }
    // The bound itself: a 100,000-event room settles in 5 levels, plus queued ranges.
    assert_eq!(round_bound(100_000, 1), 6);
    assert_eq!(
        round_bound(100_000, 1000),
        5 + (1 + 16 + 256 + 1000 + 1000usize).div_ceil(256)
    );
}

#[test]
fn fingerprints_depend_on_the_session_key() {
    // A collision found offline under one key (here: two sets' answers agreeing) says
    // nothing under another: the same sets yield different fingerprints per key.
    let keys = room(100);
    let ranges = |k: [u8; 32]| {
        let mut init = Initiator::new(Set::new(&k, keys.clone()), 0);
        init.next_request().unwrap()
    };
    assert_ne!(ranges([1; 32]), ranges([2; 32]));
}

#[test]
fn an_answer_outside_the_asked_ranges_is_refused() {
    let keys = room(100);
    let mut init = Initiator::new(Set::new(&[0; 32], keys), 10);
    init.next_request().unwrap();
    let stray = crate::p2p::wire::Range {
        lo: Some((1, String::new())),
        hi: None,
        fp: Some("00".repeat(16)),
        ids: None,
    };
    assert!(init.on_response(vec![stray]).is_err());
    let mut init = Initiator::new(Set::new(&[0; 32], room(100)), 0);
    init.next_request().unwrap();
    let too_many = crate::p2p::wire::Range {
        lo: Some((0, String::new())),
        hi: None,
        fp: None,
        ids: Some((0..17).map(id).collect()),
    };
    assert!(init.on_response(vec![too_many]).is_err());
}
