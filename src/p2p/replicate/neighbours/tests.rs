//! The per-room debounce and the memory of peers' heads.

use super::*;

fn due(n: &Neighbours, at: Instant) -> Vec<String> {
    n.take_due(at, MAX_ROUNDS, &HashSet::new()).0
}

#[test]
fn a_room_falls_due_after_it_is_quiet_and_a_burst_is_capped() {
    let n = Neighbours::default();
    let t0 = Instant::now();
    n.changed("!a");
    assert!(due(&n, t0 + QUIET - Duration::from_millis(1)).is_empty());
    assert_eq!(due(&n, t0 + QUIET + JITTER), vec!["!a".to_owned()]);
    assert!(due(&n, t0 + MAX_HOLD * 2).is_empty(), "a round is taken once");

    // Changes every 500 ms never leave a quiet second; MAX_HOLD still fires.
    let n = Neighbours::default();
    n.changed("!b");
    let first = n.lock().pending["!b"].first;
    for i in 1..=20 {
        let mut inner = n.lock();
        let p = inner.pending.get_mut("!b").expect("pending");
        p.last = first + Duration::from_millis(500 * i);
    }
    assert!(due(&n, first + MAX_HOLD - Duration::from_millis(1)).is_empty());
    assert_eq!(due(&n, first + MAX_HOLD), vec!["!b".to_owned()]);
}

#[test]
fn nothing_is_due_without_a_change_and_running_rooms_wait() {
    let n = Neighbours::default();
    let (d, next) = n.take_due(Instant::now() + MAX_HOLD, MAX_ROUNDS, &HashSet::new());
    assert!(d.is_empty() && next.is_none(), "no change, no timer");
    n.changed("!a");
    let running = HashSet::from(["!a".to_owned()]);
    let (d, next) = n.take_due(Instant::now() + MAX_HOLD, MAX_ROUNDS, &running);
    assert!(d.is_empty() && next.is_none());
    assert_eq!(due(&n, Instant::now() + MAX_HOLD), vec!["!a".to_owned()]);
}

#[test]
fn digests_ignore_order_and_peers_are_forgotten() {
    let mut x = vec!["$b".to_owned(), "$a".to_owned()];
    let mut y = vec!["$a".to_owned(), "$b".to_owned(), "$a".to_owned()];
    assert_eq!(digest(&mut x), digest(&mut y));
    assert_ne!(digest(&mut x), digest(&mut vec!["$a".to_owned()]));
    let n = Neighbours::default();
    let peer = ruma::server_name!("example.org");
    n.learn(peer, "!a", digest(&mut x));
    assert!(n.agrees(peer, "!a", &digest(&mut y)));
    assert!(!n.agrees(peer, "!b", &digest(&mut y)));
    n.forget(peer);
    assert!(!n.agrees(peer, "!a", &digest(&mut y)));
}
