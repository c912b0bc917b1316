//! Token-bucket rate limits, one bucket per key (a voter, or a client
//! address). Pure: the caller passes the time, so tests need no clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
/// A shard holds at most this many buckets. While it is full (a flood of
/// distinct keys, all active), keys it does not hold share one overflow
/// bucket: memory stays bounded, and a key being throttled keeps its
/// bucket (forgetting it would give it a fresh burst).
const MAX_KEYS_PER_SHARD: usize = 2 * MAX_KEYS_BEFORE_SWEEP / SHARDS;
/// A full shard is swept again at most this often, so that buckets that
/// have refilled since make room for new keys.
const FULL_SHARD_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// One shard's buckets, and the size at which it is swept next: a sweep
/// costs the shard's size, so it runs again only once the shard has grown
/// by half (amortized O(1) a call, however many keys stay active), or,
/// once the shard is full, after [`FULL_SHARD_SWEEP_INTERVAL`].
#[derive(Default)]
struct Shard {
    buckets: HashMap<String, Bucket>,
    sweep_at: usize,
    swept: Option<Instant>,
    /// Shared by the keys the shard has no room for.
    overflow: Option<Bucket>,
}

/// Buckets by key, sharded so that concurrent requests rarely contend.
pub struct RateLimiter {
    rate: Rate,
    shards: Vec<Mutex<Shard>>,
}

impl RateLimiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
        });
        &self.shards[(hash as usize) % SHARDS]
    }

    /// Takes one token for `key` at `now`: `Ok` or the whole seconds to wait.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), u64> {
        let rate = self.rate;
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let shard = &mut *shard;
        // A known key is found without allocating, and never forgotten
        // while it is not full.
        if let Some(bucket) = shard.buckets.get_mut(key) {
            return take(bucket, rate, now);
        }
        let full = shard.buckets.len() >= MAX_KEYS_PER_SHARD;
        let grown = shard.buckets.len() > shard.sweep_at.max(MAX_KEYS_BEFORE_SWEEP / SHARDS);
        let due = shard
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) >= FULL_SHARD_SWEEP_INTERVAL);
        if grown || (full && due) {
            shard.buckets.retain(|_, bucket| {
                let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
                bucket.tokens + elapsed * rate.per_second < rate.burst
            });
            shard.sweep_at = shard.buckets.len() + shard.buckets.len() / 2;
            shard.swept = Some(now);
        }
        let bucket = if shard.buckets.len() >= MAX_KEYS_PER_SHARD {
            shard.overflow.get_or_insert(Bucket {
                tokens: rate.burst,
                updated: now,
            })
        } else {
            shard.buckets.entry(key.to_owned()).or_insert(Bucket {
                tokens: rate.burst,
                updated: now,
            })
        };
        take(bucket, rate, now)
    }
}

/// Refills `bucket` up to `now` and takes one token from it.
fn take(bucket: &mut Bucket, rate: Rate, now: Instant) -> Result<(), u64> {
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

    /// A flood of distinct keys, all still refilling: the map stays
    /// bounded, and sweeps do not run on every call.
    #[test]
    fn a_flood_of_distinct_keys_stays_bounded() {
        let limiter = RateLimiter::new(Rate {
            per_second: 0.001,
            burst: 2.0,
        });
        let start = Instant::now();
        let mut allowed = 0;
        for key in 0..(5 * MAX_KEYS_BEFORE_SWEEP) {
            allowed += usize::from(limiter.check(&format!("k{key}"), start).is_ok());
        }
        // Each key the shards hold had its own burst; the rest shared one
        // overflow bucket per shard.
        assert!(allowed >= MAX_KEYS_BEFORE_SWEEP, "{allowed}");
        assert!(
            allowed <= 2 * MAX_KEYS_BEFORE_SWEEP + 2 * SHARDS,
            "{allowed}"
        );
        for shard in &limiter.shards {
            let shard = shard.lock().unwrap();
            // At most half again the cap between two sweeps.
            assert!(
                shard.buckets.len() <= MAX_KEYS_PER_SHARD * 3 / 2,
                "{}",
                shard.buckets.len()
            );
        }
    }

    /// Keys in the same shard as `key`, none of them `key`.
    fn shard_mates<'a>(
        limiter: &'a RateLimiter,
        key: &'a str,
    ) -> impl Iterator<Item = String> + 'a {
        (0..)
            .map(|n| format!("flood{n}"))
            .filter(move |other| std::ptr::eq(limiter.shard(other), limiter.shard(key)))
    }

    /// A flood of distinct keys in a throttled key's shard (as from many
    /// IPv6 addresses) neither gives that key a fresh burst nor grows the
    /// shard past its cap; once the flood's buckets refill, new keys get
    /// their own again.
    #[test]
    fn a_flood_of_distinct_keys_does_not_free_a_throttled_key() {
        let limiter = RateLimiter::new(Rate {
            per_second: 0.01,
            burst: 1.0,
        });
        let start = Instant::now();
        assert!(limiter.check("k", start).is_ok());
        assert_eq!(limiter.check("k", start), Err(100));
        for (n, other) in shard_mates(&limiter, "k")
            .take(3 * MAX_KEYS_PER_SHARD)
            .enumerate()
        {
            let now = start + Duration::from_millis(n as u64);
            let _ = limiter.check(&other, now);
            let shard = limiter.shard("k").lock().unwrap();
            assert!(shard.buckets.len() <= MAX_KEYS_PER_SHARD);
        }
        let later = start + Duration::from_secs(60);
        assert!(limiter.check("k", later).is_err(), "a fresh burst");
        let newcomer = shard_mates(&limiter, "k")
            .nth(3 * MAX_KEYS_PER_SHARD)
            .unwrap();
        assert!(
            limiter.check(&newcomer, later).is_err(),
            "the flood shares one bucket"
        );
        assert!(!limiter
            .shard("k")
            .lock()
            .unwrap()
            .buckets
            .contains_key(&newcomer));

        let refilled = start + Duration::from_secs(200);
        assert!(limiter.check("k", refilled).is_ok());
        assert!(limiter.check(&newcomer, refilled).is_ok());
        let shard = limiter.shard("k").lock().unwrap();
        assert!(shard.buckets.contains_key(&newcomer), "tracked again");
    }
}

/// Open results streams by key (a client address, a token's subject), so
/// that a few clients cannot take all of a process's streams. An entry
/// lives only while its key has a stream open.
#[derive(Default)]
pub struct StreamCounts {
    open: Mutex<HashMap<String, u32>>,
}

/// One open stream counted under a key; uncounted when dropped.
pub struct StreamSlot {
    counts: std::sync::Arc<StreamCounts>,
    key: String,
}

impl StreamCounts {
    /// Counts a stream under `key` unless `max` are open under it.
    pub fn acquire(self: &std::sync::Arc<Self>, key: String, max: u32) -> Option<StreamSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= max {
            if *count == 0 {
                open.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            counts: self.clone(),
            key,
        })
    }

    /// Streams open under `key`.
    pub fn open(&self, key: &str) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(key).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn streams_are_capped_per_key_and_freed_on_drop() {
        let counts = Arc::new(StreamCounts::default());
        let first = counts.acquire("a:1.2.3.4".into(), 2).unwrap();
        let _second = counts.acquire("a:1.2.3.4".into(), 2).unwrap();
        assert!(counts.acquire("a:1.2.3.4".into(), 2).is_none());
        assert!(counts.acquire("a:5.6.7.8".into(), 2).is_some());
        drop(first);
        assert_eq!(counts.open("a:1.2.3.4"), 1);
        assert!(counts.acquire("a:1.2.3.4".into(), 2).is_some());
        assert!(counts.acquire("s:x".into(), 0).is_none());
        assert_eq!(
            counts.open.lock().unwrap().len(),
            1,
            "keys without streams are forgotten"
        );
    }
}
