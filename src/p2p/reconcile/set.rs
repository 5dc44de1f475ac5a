//! Range-based set reconciliation (the negentropy design) over a room's event IDs, sorted
//! by `(depth, event ID)`, with keyed fingerprints.
//!
//! The initiator sends ranges with its fingerprint of each; the responder, keeping no
//! state between rounds, drops the ranges whose fingerprints match its own, answers a
//! range holding at most [`RANGE_LEAF`] of its events with their IDs, and splits any other
//! into [`RANGE_SPLIT`] sub-ranges of equal *count* with its fingerprints. The initiator
//! compares each sub-range with its own events and asks again about those that differ.
//!
//! Why chosen IDs cannot hurt: a fingerprint is the XOR of BLAKE3 keyed hashes (16 bytes)
//! of the IDs, under a key the initiator draws per session, after the events exist. An
//! attacker grinding event IDs cannot predict fingerprints, so cannot make two different
//! ranges agree (each comparison errs with probability 2^-128). Splits are by count, never
//! by key value, so however IDs and depths cluster, a range of n events is settled in at
//! most ⌈log16(n / 16)⌉ + 1 rounds — the bound is the honest one.

use std::collections::{HashSet, VecDeque};

use crate::p2p::wire::{Key, MAX_RANGES, RANGE_LEAF, RANGE_SPLIT, Range};

const FP_BYTES: usize = 16;

/// One side's events of a room, sorted, with prefix XORs of their keyed hashes so any
/// range's fingerprint is one XOR.
pub struct Set {
    keys: Vec<Key>,
    prefix: Vec<[u8; FP_BYTES]>,
    ids: HashSet<String>,
}

impl Set {
    pub fn new(session_key: &[u8; 32], mut keys: Vec<Key>) -> Set {
        keys.sort();
        keys.dedup();
        let mut prefix = Vec::with_capacity(keys.len() + 1);
        let mut acc = [0u8; FP_BYTES];
        prefix.push(acc);
        for (_, id) in &keys {
            let h = blake3::keyed_hash(session_key, id.as_bytes());
            for (a, b) in acc.iter_mut().zip(h.as_bytes()) {
                *a ^= b;
            }
            prefix.push(acc);
        }
        let ids = keys.iter().map(|(_, id)| id.clone()).collect();
        Set { keys, prefix, ids }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Indices `[a, b)` of the keys in `[lo, hi)`.
    fn span(&self, lo: &Key, hi: Option<&Key>) -> (usize, usize) {
        let a = self.keys.partition_point(|k| k < lo);
        let b = hi.map_or(self.keys.len(), |hi| self.keys.partition_point(|k| k < hi));
        (a, b.max(a))
    }

    fn fingerprint(&self, a: usize, b: usize) -> String {
        use base64::Engine;
        let fp: Vec<u8> = self.prefix[a]
            .iter()
            .zip(&self.prefix[b])
            .map(|(x, y)| x ^ y)
            .collect();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(fp)
    }

    /// The shortest key above `keys[e - 1]` and at most `keys[e]`, as negentropy bounds
    /// are: a new depth starts at `""`; within one depth, the shortest prefix of the ID
    /// that sorts after the previous one. A few bytes for hash-like IDs; ground IDs with
    /// long shared prefixes only lengthen bounds (to at most one ID), never add rounds.
    fn bound(&self, e: usize) -> Key {
        let (prev, next) = (&self.keys[e - 1], &self.keys[e]);
        if prev.0 < next.0 {
            return (next.0, String::new());
        }
        let common = prev
            .1
            .bytes()
            .zip(next.1.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let mut end = (common + 1).min(next.1.len());
        while !next.1.is_char_boundary(end) {
            end += 1;
        }
        (next.0, next.1[..end].to_owned())
    }

    fn ids_of(&self, a: usize, b: usize) -> impl Iterator<Item = &String> {
        self.keys[a..b].iter().map(|(_, id)| id)
    }
}

/// The responder's answer to one round: the ranges that still differ, split or listed.
/// At most [`MAX_RANGES`] asked ranges are looked at.
pub fn respond(set: &Set, asked: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    let mut prev_hi: Option<Key> = None;
    for r in asked.iter().take(MAX_RANGES) {
        let Some(lo) = r.lo.clone().or_else(|| prev_hi.clone()) else {
            continue;
        };
        prev_hi = r.hi.clone();
        let (a, b) = set.span(&lo, r.hi.as_ref());
        if r.fp.as_deref() == Some(set.fingerprint(a, b).as_str()) {
            continue;
        }
        if b - a <= RANGE_LEAF {
            out.push(Range {
                lo: Some(lo),
                hi: r.hi.clone(),
                fp: None,
                ids: Some(set.ids_of(a, b).cloned().collect()),
            });
            continue;
        }
        let n = b - a;
        for i in 0..RANGE_SPLIT {
            let (s, e) = (a + n * i / RANGE_SPLIT, a + n * (i + 1) / RANGE_SPLIT);
            out.push(Range {
                // Consecutive sub-ranges share their bounds: only the first names its `lo`.
                lo: (i == 0).then(|| lo.clone()),
                hi: if i + 1 == RANGE_SPLIT {
                    r.hi.clone()
                } else {
                    Some(set.bound(e))
                },
                fp: Some(set.fingerprint(s, e)),
                ids: None,
            });
        }
    }
    out
}

/// Why an answer was refused: it strays outside what was asked, or grows without bound.
#[derive(Debug, PartialEq, Eq)]
pub struct BadAnswer(pub &'static str);

/// The initiator's side of a session.
pub struct Initiator {
    set: Set,
    queue: VecDeque<(Key, Option<Key>)>,
    asked: Vec<(Key, Option<Key>)>,
    /// IDs the peer holds and this side does not.
    pub need: Vec<String>,
    /// IDs this side holds and the peer does not.
    pub have: Vec<String>,
    /// Ranges where this side holds nothing and the peer holds many: fetched whole.
    pub absent: Vec<(Key, Option<Key>)>,
    pub rounds: usize,
}

impl Initiator {
    /// A session over every event of depth at least `lower`.
    pub fn new(set: Set, lower: i64) -> Initiator {
        Initiator {
            set,
            queue: VecDeque::from([((lower, String::new()), None)]),
            asked: Vec::new(),
            need: Vec::new(),
            have: Vec::new(),
            absent: Vec::new(),
            rounds: 0,
        }
    }

    /// The next round's ranges, or `None` when the sets are reconciled.
    pub fn next_request(&mut self) -> Option<Vec<Range>> {
        if self.queue.is_empty() {
            return None;
        }
        let n = self.queue.len().min(MAX_RANGES);
        self.asked = self.queue.drain(..n).collect();
        self.rounds += 1;
        let mut prev_hi: Option<&Key> = None;
        let ranges = self
            .asked
            .iter()
            .map(|(lo, hi)| {
                let (a, b) = self.set.span(lo, hi.as_ref());
                let r = Range {
                    lo: (prev_hi != Some(lo)).then(|| lo.clone()),
                    hi: hi.clone(),
                    fp: Some(self.set.fingerprint(a, b)),
                    ids: None,
                };
                prev_hi = hi.as_ref();
                r
            })
            .collect();
        Some(ranges)
    }

    /// Takes the peer's answer to the last round.
    pub fn on_response(&mut self, answer: Vec<Range>) -> Result<(), BadAnswer> {
        if answer.len() > self.asked.len() * RANGE_SPLIT {
            return Err(BadAnswer("more ranges than asked for"));
        }
        let mut prev_hi: Option<Key> = None;
        for r in answer {
            let lo =
                r.lo.or_else(|| prev_hi.clone())
                    .ok_or(BadAnswer("range without a start"))?;
            prev_hi = r.hi.clone();
            let within = self.asked.iter().any(|(alo, ahi)| {
                *alo <= lo
                    && match (ahi, &r.hi) {
                        (None, _) => true,
                        (Some(a), Some(h)) => h <= a,
                        (Some(_), None) => false,
                    }
            });
            if !within || r.hi.as_ref().is_some_and(|h| *h < lo) {
                return Err(BadAnswer("a range outside those asked"));
            }
            let (a, b) = self.set.span(&lo, r.hi.as_ref());
            match (r.ids, r.fp) {
                (Some(ids), _) => {
                    if ids.len() > RANGE_LEAF {
                        return Err(BadAnswer("too many IDs in one range"));
                    }
                    let theirs: HashSet<&String> = ids.iter().collect();
                    self.have
                        .extend(self.set.ids_of(a, b).filter(|id| !theirs.contains(id)).cloned());
                    self.need
                        .extend(ids.iter().filter(|id| !self.set.contains(id)).cloned());
                }
                (None, Some(fp)) => {
                    if fp == self.set.fingerprint(a, b) {
                        continue;
                    }
                    if a == b {
                        self.absent.push((lo, r.hi));
                    } else {
                        self.queue.push_back((lo, r.hi));
                    }
                }
                (None, None) => return Err(BadAnswer("a range with neither IDs nor fingerprint")),
            }
        }
        self.asked.clear();
        Ok(())
    }
}

/// The most rounds a session needs when the responder holds `n` events and the two
/// sets differ by `d`: one per level of 16-way splits until ranges hold at most
/// [`RANGE_LEAF`] (L levels), plus one per [`MAX_RANGES`] mismatched ranges queued (a level
/// ℓ has at most min(d, 16^ℓ) of them, as each holds a difference). Key values play no
/// part, so no choice of IDs or depths raises it.
pub fn round_bound(n: usize, d: usize) -> usize {
    let (mut levels, mut size, mut mismatched, mut width) = (1usize, n, 0usize, 1usize);
    while size > RANGE_LEAF {
        mismatched += d.min(width);
        width = width.saturating_mul(RANGE_SPLIT);
        size = size.div_ceil(RANGE_SPLIT);
        levels += 1;
    }
    mismatched += d.min(width);
    levels + mismatched.div_ceil(MAX_RANGES)
}
