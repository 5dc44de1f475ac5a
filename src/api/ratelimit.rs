//! A small per-key token bucket, for the endpoints where guessing must be slow
//! (login, registration). Exceeding it yields `M_LIMIT_EXCEEDED` with `retry_after_ms`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Bucket size and refill: a burst of `BURST` attempts, then one per `REFILL`.
const BURST: f64 = 10.0;
const REFILL: Duration = Duration::from_millis(500);
/// Bounds memory: buckets beyond this many are dropped oldest-first.
const MAX_KEYS: usize = 10_000;

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one token for `key`, or says how long to wait.
    pub fn check(&self, key: &str) -> Result<()> {
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .map_err(|_| Error::internal("rate limiter poisoned"))?;
        if buckets.len() >= MAX_KEYS
            && !buckets.contains_key(key)
            && let Some(oldest) = buckets
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
        {
            buckets.remove(&oldest);
        }
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((BURST, now));
        let refill = now.duration_since(*last).as_secs_f64() / REFILL.as_secs_f64();
        *tokens = (*tokens + refill).min(BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - *tokens) * REFILL.as_secs_f64() * 1000.0;
            Err(Error::limit_exceeded(wait.ceil() as u64))
        }
    }
}
