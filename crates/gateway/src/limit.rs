//! Token-bucket rate limits, one bucket per key (a voter, or a client
//! address). Pure: the caller passes the time, so tests need no clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A bucket's refill rate and size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Above this many keys, full buckets are forgotten (they equal new ones).
const MAX_KEYS_BEFORE_SWEEP: usize = 100_000;
const SHARDS: usize = 16;

/// Buckets by key, sharded so that concurrent requests rarely contend.
pub struct RateLimiter {
    rate: Rate,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
}

impl RateLimiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Bucket>> {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
        });
        &self.shards[(hash as usize) % SHARDS]
    }

    /// Takes one token for `key` at `now`: `Ok` or the whole seconds to wait.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), u64> {
        let rate = self.rate;
        let mut buckets = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > MAX_KEYS_BEFORE_SWEEP / SHARDS {
            buckets.retain(|_, bucket| {
                let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
                bucket.tokens + elapsed * rate.per_second < rate.burst
            });
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: rate.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / rate.per_second;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::new(Rate {
            per_second: 2.0,
            burst: 3.0,
        });
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("v", start).is_ok());
        }
        assert_eq!(limiter.check("v", start), Err(1));
        assert!(limiter.check("other", start).is_ok(), "keys are separate");
        assert!(limiter
            .check("v", start + Duration::from_millis(500))
            .is_ok());
        assert!(limiter
            .check("v", start + Duration::from_millis(500))
            .is_err());
        let slow = RateLimiter::new(Rate {
            per_second: 0.1,
            burst: 1.0,
        });
        assert!(slow.check("v", start).is_ok());
        assert_eq!(
            slow.check("v", start),
            Err(10),
            "wait until one token is back"
        );
    }
}
