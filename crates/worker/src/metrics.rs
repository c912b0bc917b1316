//! The vote pipeline's metrics, in one place. Counters are added once per
//! batch (never per record); latencies go into fixed-bucket histograms.
//! [`Metrics::snapshot`] is what the worker logs and serves at `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tally_contract::vote::Reason;

/// Bucket upper bounds, in milliseconds (the last bucket is unbounded).
const BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000];

/// A latency or size histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    count: AtomicU64,
    sum: AtomicU64,
    max: AtomicU64,
    buckets: [AtomicU64; BUCKETS_MS.len() + 1],
}

impl Histogram {
    pub fn record(&self, value: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
        let bucket = BUCKETS_MS
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(BUCKETS_MS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_duration(&self, elapsed: Duration) {
        self.record(elapsed.as_millis() as u64);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The upper bound of the bucket holding the `quantile` (0 to 1).
    fn quantile(&self, quantile: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = ((count as f64) * quantile).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return BUCKETS_MS
                    .get(index)
                    .copied()
                    .unwrap_or_else(|| self.max.load(Ordering::Relaxed));
            }
        }
        self.max.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count(),
            "sum": self.sum.load(Ordering::Relaxed),
            "max": self.max.load(Ordering::Relaxed),
            "p50_le": self.quantile(0.5),
            "p99_le": self.quantile(0.99),
        })
    }
}

/// Causes of retries, as counted.
pub const RETRY_CAUSES: [&str; 6] = [
    "throttled",
    "conflict",
    "unavailable",
    "table_missing",
    "malformed",
    "other",
];

/// The worker's vote metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub votes_counted: AtomicU64,
    pub votes_duplicate: AtomicU64,
    rejected: [AtomicU64; Reason::ALL.len()],
    pub batches: AtomicU64,
    /// Records per batch.
    pub batch_records: Histogram,
    pub commits: AtomicU64,
    pub commits_lost: AtomicU64,
    /// Milliseconds per `TransactWriteItems` (with its retries).
    pub commit_latency: Histogram,
    /// Milliseconds per conditional put (with its retries).
    pub put_latency: Histogram,
    retries: [AtomicU64; RETRY_CAUSES.len()],
    /// Reads of the polls table (shared with the poll cache).
    pub poll_reads: Arc<AtomicU64>,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    pub fn add_rejected(&self, reason: Reason, value: u64) {
        let index = Reason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.rejected[index].fetch_add(value, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: Reason) -> u64 {
        let index = Reason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is listed");
        self.rejected[index].load(Ordering::Relaxed)
    }

    pub fn add_retry(&self, cause: &str) {
        let index = RETRY_CAUSES
            .iter()
            .position(|known| *known == cause)
            .unwrap_or(RETRY_CAUSES.len() - 1);
        self.retries[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn retries(&self) -> u64 {
        self.retries.iter().map(|r| r.load(Ordering::Relaxed)).sum()
    }

    /// Every metric, by its name.
    pub fn snapshot(&self) -> serde_json::Value {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let rejected: serde_json::Map<String, serde_json::Value> = Reason::ALL
            .iter()
            .map(|reason| (reason.as_str().to_owned(), self.rejected(*reason).into()))
            .collect();
        let retries: serde_json::Map<String, serde_json::Value> = RETRY_CAUSES
            .iter()
            .zip(&self.retries)
            .map(|(cause, count)| ((*cause).to_owned(), load(count).into()))
            .collect();
        serde_json::json!({
            "tally_votes_counted_total": load(&self.votes_counted),
            "tally_votes_duplicate_total": load(&self.votes_duplicate),
            "tally_votes_rejected_total": rejected,
            "tally_batches_total": load(&self.batches),
            "tally_batch_records": self.batch_records.snapshot(),
            "tally_commits_total": load(&self.commits),
            "tally_commits_lost_total": load(&self.commits_lost),
            "tally_commit_latency_ms": self.commit_latency.snapshot(),
            "tally_put_latency_ms": self.put_latency.snapshot(),
            "tally_retries_total": retries,
            "tally_poll_reads_total": load(&self.poll_reads),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_bucket_bounds() {
        let histogram = Histogram::default();
        for value in [1, 1, 3, 40, 9_000] {
            histogram.record(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot["count"], 5);
        assert_eq!(snapshot["max"], 9_000);
        assert_eq!(snapshot["p50_le"], 5);
        assert_eq!(snapshot["p99_le"], 9_000);
    }

    #[test]
    fn counters_by_label() {
        let metrics = Metrics::default();
        metrics.add_rejected(Reason::UnknownPoll, 2);
        metrics.add_retry("throttled");
        metrics.add_retry("something new");
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot["tally_votes_rejected_total"]["unknown_poll"], 2);
        assert_eq!(snapshot["tally_retries_total"]["throttled"], 1);
        assert_eq!(snapshot["tally_retries_total"]["other"], 1);
        assert_eq!(metrics.retries(), 2);
    }
}
