//! The link model, checked statistically over real UDP sockets on loopback.

use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{HostAddr, LinkModel, Relay};

struct Pair {
    a: std::sync::Arc<UdpSocket>,
    b: std::sync::Arc<UdpSocket>,
    relay: Relay,
}

async fn pair(model: LinkModel, seed: u64) -> Pair {
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay = Relay::start(
        HostAddr::new(Some(a.local_addr().unwrap())),
        HostAddr::new(Some(b.local_addr().unwrap())),
        model,
        seed,
    )
    .await
    .unwrap();
    Pair {
        a: a.into(),
        b: b.into(),
        relay,
    }
}

impl Pair {
    fn relay_addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.relay.port()).into()
    }

    /// Sends `n` datagrams of `len` bytes from `a`, paced so loopback itself drops none.
    async fn send_from_a(&self, n: usize, len: usize) {
        let to = self.relay_addr();
        for i in 0..n {
            let mut d = vec![0u8; len.max(8)];
            d[..8].copy_from_slice(&(i as u64).to_be_bytes());
            self.a.send_to(&d, to).await.unwrap();
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
}

/// Receives on `sock` from now on, in its own task so the socket buffer never fills.
fn sink(sock: std::sync::Arc<UdpSocket>) -> tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, _)) = sock.recv_from(&mut buf).await {
            let seq = u64::from_be_bytes(buf[..8.min(n)].try_into().unwrap_or([0; 8]));
            if tx.send((seq, Instant::now())).is_err() {
                break;
            }
        }
    });
    rx
}

/// What the sink received until `quiet` passed with nothing new.
async fn drain(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>,
    quiet: Duration,
) -> Vec<(u64, Instant)> {
    let mut out = Vec::new();
    while let Ok(Some(x)) = tokio::time::timeout(quiet, rx.recv()).await {
        out.push(x);
    }
    out
}

#[tokio::test]
async fn loss_is_binomial_within_four_sigma() {
    // Dropped ~ Binomial(n, p): mean n·p, sd sqrt(n·p·(1-p)). |X - n·p| > 4 sd has
    // probability < 1e-4 per seed (normal approximation, n·p = 200 ≫ 10), so five seeds
    // fail together by chance with probability < 5e-4.
    let (n, p) = (2000usize, 0.1f64);
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    for seed in 1..=5 {
        let model = LinkModel {
            loss: p,
            ..LinkModel::default()
        };
        let t = pair(model, seed).await;
        let mut rx = sink(t.b.clone());
        t.send_from_a(n, 64).await;
        let got = drain(&mut rx, Duration::from_millis(300)).await;
        let s = t.relay.stats().forward;
        assert_eq!(s.offered_datagrams, n as u64);
        assert_eq!(s.lost + s.delivered_datagrams, n as u64, "{s:?}");
        assert_eq!(
            got.len() as u64,
            s.delivered_datagrams,
            "what the relay sent arrived"
        );
        let dev = (s.lost as f64 - n as f64 * p).abs();
        assert!(
            dev <= 4.0 * sd,
            "seed {seed}: {} lost, expected {} ± {}",
            s.lost,
            n as f64 * p,
            4.0 * sd
        );
    }
}

#[tokio::test]
async fn no_loss_configured_drops_nothing() {
    let t = pair(LinkModel::default(), 7).await;
    let mut rx = sink(t.b.clone());
    t.send_from_a(500, 100).await;
    let got = drain(&mut rx, Duration::from_millis(200)).await;
    assert_eq!(got.len(), 500);
    assert_eq!(t.relay.stats().forward.delivered_bytes, 500 * 100);
}

#[tokio::test]
async fn latency_and_jitter_stay_within_bounds() {
    let (lat, jit) = (40.0, 10.0);
    let model = LinkModel {
        latency_ms: lat,
        jitter_ms: jit,
        ..LinkModel::default()
    };
    let t = pair(model, 3).await;
    let mut rx = sink(t.b.clone());
    let to = t.relay_addr();
    let mut sent = Vec::new();
    for i in 0..60u64 {
        sent.push(Instant::now());
        t.a.send_to(&i.to_be_bytes(), to).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let got = drain(&mut rx, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 60);
    let delays: Vec<f64> = got
        .iter()
        .map(|(seq, at)| (*at - sent[*seq as usize]).as_secs_f64() * 1000.0)
        .collect();
    // Never early; late only by scheduling slack, which a busy CI machine stretches.
    let slack = 40.0;
    for d in &delays {
        assert!(*d >= lat - jit - 1.0, "arrived after {d} ms");
        assert!(*d <= lat + jit + slack, "arrived after {d} ms");
    }
    let mean = delays.iter().sum::<f64>() / delays.len() as f64;
    assert!(
        mean >= lat - jit / 2.0 && mean <= lat + slack / 2.0,
        "mean {mean} ms"
    );
    let spread =
        delays.iter().cloned().fold(f64::MIN, f64::max) - delays.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread >= jit / 2.0, "jitter shows as spread: {spread} ms");
}

#[tokio::test]
async fn bandwidth_serialises_datagrams() {
    // 50 × 1250 bytes at 1 Mbit/s take 0.5 s to send.
    let model = LinkModel {
        bandwidth_bps: Some(1_000_000),
        ..LinkModel::default()
    };
    let t = pair(model, 4).await;
    let mut rx = sink(t.b.clone());
    let start = Instant::now();
    t.send_from_a(50, 1250).await;
    let got = drain(&mut rx, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 50);
    let took = (got.last().unwrap().1 - start).as_secs_f64();
    assert!((0.48..=0.9).contains(&took), "took {took} s");
}

#[tokio::test]
async fn a_full_queue_drops_the_tail() {
    let model = LinkModel {
        bandwidth_bps: Some(80_000),
        queue_bytes: 10_000,
        ..LinkModel::default()
    };
    let t = pair(model, 5).await;
    let _rx = sink(t.b.clone());
    let to = t.relay_addr();
    for i in 0..40u64 {
        let mut d = vec![0u8; 1000];
        d[..8].copy_from_slice(&i.to_be_bytes());
        t.a.send_to(&d, to).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = t.relay.stats().forward;
    assert!(s.overflow >= 25, "{s:?}");
}

#[tokio::test]
async fn cut_drops_everything_and_heal_restores() {
    let t = pair(
        LinkModel {
            latency_ms: 30.0,
            ..LinkModel::default()
        },
        6,
    )
    .await;
    let mut rx = sink(t.b.clone());
    t.send_from_a(20, 64).await;
    // Cut while those are in flight: they are lost too.
    t.relay.cut();
    t.send_from_a(100, 64).await;
    assert!(drain(&mut rx, Duration::from_millis(150)).await.is_empty());
    let s = t.relay.stats().forward;
    assert_eq!(s.cut, 120);
    assert_eq!(s.delivered_datagrams, 0);

    t.relay.heal();
    t.send_from_a(100, 64).await;
    assert_eq!(drain(&mut rx, Duration::from_millis(150)).await.len(), 100);
}

#[tokio::test]
async fn replies_go_back_and_strangers_are_refused() {
    let t = pair(LinkModel::default(), 8).await;
    t.a.send_to(&0u64.to_be_bytes(), t.relay_addr()).await.unwrap();
    let mut buf = [0u8; 64];
    let (_, from) = t.b.recv_from(&mut buf).await.unwrap();
    assert_eq!(from, t.relay_addr(), "b sees the relay, not a");
    t.b.send_to(&1u64.to_be_bytes(), from).await.unwrap();
    let (n, from) = t.a.recv_from(&mut buf).await.unwrap();
    assert_eq!((n, from), (8, t.relay_addr()));

    let mut rx = sink(t.b.clone());
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stranger
        .send_to(&2u64.to_be_bytes(), t.relay_addr())
        .await
        .unwrap();
    assert!(drain(&mut rx, Duration::from_millis(100)).await.is_empty());
    let s = t.relay.stats();
    assert_eq!(s.stray, 1);
    assert_eq!(
        (s.forward.delivered_datagrams, s.backward.delivered_datagrams),
        (1, 1)
    );
}
