//! A rate limit per client: by address for the control plane's sensitive doors (starting a
//! sign-in, the OAuth callback, the UI's forms and the admin API), and by any key the
//! `rate_limit` plugin chooses. Each client has a token bucket holding a minute's worth of
//! requests (or `burst`), refilled evenly; an empty bucket means 429 with `Retry-After`.
//! The table of clients is bounded: when full, buckets that have refilled completely
//! (clients gone quiet) are dropped first.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Clients tracked at once; past this, quiet ones are forgotten.
const MAX_CLIENTS: usize = 4096;

#[derive(Debug)]
pub(crate) struct RateLimiter<K = IpAddr> {
    /// Requests per minute per client; 0 turns the limit off.
    per_minute: u32,
    /// Requests a client may make at once after being quiet.
    burst: u32,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// A bucket of a minute's worth of requests per client.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self::with_burst(per_minute, per_minute)
    }

    pub(crate) fn with_burst(per_minute: u32, burst: u32) -> Self {
        Self {
            per_minute,
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `client`'s bucket; `Err(wait)` when it is empty.
    pub(crate) fn check(&self, client: K, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.burst);
        let per_second = f64::from(self.per_minute) / 60.0;
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client) {
            buckets.retain(|_, bucket| refilled(bucket, now, per_second, capacity) < capacity);
            if buckets.len() >= MAX_CLIENTS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(client).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        bucket.tokens = refilled(bucket, now, per_second, capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

fn refilled(bucket: &Bucket, now: Instant, per_second: f64, capacity: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    (bucket.tokens + elapsed * per_second).min(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minutes_worth_passes_then_requests_wait_for_the_refill() {
        let limiter = RateLimiter::new(60);
        let client: IpAddr = "127.0.0.1".parse().expect("ip");
        let other: IpAddr = "127.0.0.2".parse().expect("ip");
        let start = Instant::now();
        for _ in 0..60 {
            assert!(limiter.check(client, start).is_ok());
        }
        let wait = limiter.check(client, start).expect_err("empty");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(
            limiter.check(other, start).is_ok(),
            "buckets are per address"
        );
        assert!(
            limiter
                .check(client, start + Duration::from_secs(2))
                .is_ok()
        );
    }

    #[test]
    fn zero_means_no_limit_and_the_table_stays_bounded() {
        let off = RateLimiter::new(0);
        let client: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..1000 {
            assert!(off.check(client, Instant::now()).is_ok());
        }
        let limiter = RateLimiter::new(10);
        let now = Instant::now();
        for n in 0..(MAX_CLIENTS as u32 + 10) {
            let ip = IpAddr::from(n.to_be_bytes());
            let _ = limiter.check(ip, now);
        }
        assert!(limiter.buckets.lock().len() <= MAX_CLIENTS);
    }
}
