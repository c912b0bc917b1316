//! Every metric of the lease library, in one place. Counters are totals
//! since start; gauges are current values. Emitted per batch or per cycle,
//! never per record.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! metrics {
    ($( $(#[$doc:meta])* $name:ident : $kind:ident ),* $(,)?) => {
        /// The lease library's metrics for one worker.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[$doc])* pub $name: $kind, )*
        }

        impl Metrics {
            /// Every metric by its exported name (`tally_lease_<name>`).
            pub fn snapshot(&self) -> Vec<(&'static str, i64)> {
                vec![ $( (concat!("tally_lease_", stringify!($name)), self.$name.load(Ordering::Relaxed) as i64), )* ]
            }
        }
    };
}

metrics! {
    /// Gauge: leases this worker holds.
    leases_held: AtomicI64,
    /// Leases taken (free or expired).
    leases_taken_total: AtomicU64,
    /// Leases received through a handoff or taken after a handoff timed out.
    leases_stolen_total: AtomicU64,
    /// Leases handed over to another worker on its request.
    leases_handed_off_total: AtomicU64,
    /// Leases lost (a fenced write was refused, or the table showed another owner).
    leases_lost_total: AtomicU64,
    /// Heartbeats written.
    heartbeats_total: AtomicU64,
    /// Heartbeats that failed.
    heartbeat_failures_total: AtomicU64,
    /// Gauge: latency of the last heartbeat, milliseconds.
    renew_latency_ms: AtomicI64,
    /// Gauge: items of the lease table that are not leases, skipped by the
    /// last full read (fix or delete them; `tally leases` lists them).
    lease_table_skipped_items: AtomicI64,
    /// Lease-table requests sent by the coordinator, the sync and checkpoints.
    lease_table_requests_total: AtomicU64,
    /// Kinesis records read (before de-aggregation).
    records_read_total: AtomicU64,
    /// User records delivered to processors (after de-aggregation).
    user_records_total: AtomicU64,
    /// Records with the aggregation magic that failed to de-aggregate.
    bad_aggregates_total: AtomicU64,
    /// Bytes read.
    bytes_read_total: AtomicU64,
    /// GetRecords calls.
    get_records_total: AtomicU64,
    /// GetRecords calls throttled.
    get_records_throttles_total: AtomicU64,
    /// SubscribeToShard subscriptions opened (fan-out).
    subscriptions_total: AtomicU64,
    /// SubscribeToShard events received (fan-out).
    subscription_events_total: AtomicU64,
    /// SubscribeToShard calls throttled (fan-out).
    subscribe_throttles_total: AtomicU64,
    /// Of the GetRecords calls, those a fan-out reader made to find the end
    /// of a closed shard whose subscription never says so (kinesis-mock).
    fan_out_end_checks_total: AtomicU64,
    /// Gauge: the largest MillisBehindLatest over this worker's shards (each
    /// shard's last page), updated every renew interval.
    millis_behind_latest: AtomicI64,
    /// Checkpoints written.
    checkpoints_total: AtomicU64,
    /// Shards read to their end.
    shards_ended_total: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
    pub fn set(gauge: &AtomicI64, value: i64) {
        gauge.store(value, Ordering::Relaxed);
    }
}
