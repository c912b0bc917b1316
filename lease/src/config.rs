//! Worker settings, their defaults and why, and validation that names the
//! setting at fault.

use std::time::Duration;

use crate::types::InitialPosition;

/// Settings of one lease worker.
///
/// Defaults and why:
/// - `renew_interval` 600 ms: one heartbeat write per worker per interval is
///   the whole idle cost (100 requests a minute), and it bounds how fast a
///   released lease is noticed (under 1 s after a graceful stop).
/// - `lease_duration` 3 s: five missed heartbeats. A killed worker's leases
///   are taken within `lease_duration` + 2 renew intervals (under 5 s). A
///   worker wrongly declared dead loses nothing: fencing refuses its writes.
/// - `take_interval` 600 ms: planning costs no request; only actions do.
/// - `max_steals_per_cycle` 8: converges from 64-0 to 32-32 in four cycles.
/// - `handoff_timeout` 10 s: how long an owner may take to finish its batch
///   and checkpoint before the requester takes the lease anyway.
/// - `shard_sync_interval` and `full_refresh_interval` 60 s: safety nets;
///   changes are announced through the fleet item's epoch at once.
/// - `poll_interval` 200 ms: Kinesis allows 5 `GetRecords` per shard per
///   second, shared by every consumer of the shard.
/// - `consumer_mode` polling: it needs nothing registered on the stream and
///   costs nothing per hour. Fan-out gives the application its own 2 MiB/s
///   per shard and records pushed as they arrive, for a price per
///   consumer-shard hour and per GB (see docs/DESIGN.md).
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub worker_id: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    pub take_interval: Duration,
    pub max_leases_per_worker: usize,
    pub max_steals_per_cycle: usize,
    pub handoff_timeout: Duration,
    pub shard_sync_interval: Duration,
    pub full_refresh_interval: Duration,
    pub poll_interval: Duration,
    pub max_records: u32,
    pub initial_position: InitialPosition,
    /// How shards are read: polling `GetRecords`, or enhanced fan-out.
    pub consumer_mode: ConsumerMode,
    /// How long a graceful stop waits for processors to finish.
    pub shutdown_timeout: Duration,
    /// Seed of the worker's random choices (tests); `None` picks one.
    pub seed: Option<u64>,
}

/// How a worker reads its shards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ConsumerMode {
    /// `GetRecords` every `poll_interval`, sharing the shard's 5 reads a
    /// second and 2 MiB/s with every other polling application.
    #[default]
    Polling,
    /// Enhanced fan-out: `SubscribeToShard` through the stream consumer
    /// `consumer_name` (registered if missing, never deregistered by a
    /// worker), with 2 MiB/s per shard of its own.
    FanOut { consumer_name: String },
}

impl ConsumerMode {
    /// The setting's value: `polling` or `fan-out`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConsumerMode::Polling => "polling",
            ConsumerMode::FanOut { .. } => "fan-out",
        }
    }
}

/// What a stream consumer's name may hold (the Kinesis rule).
pub fn valid_consumer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A setting with a value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

/// What ids may hold: worker ids become DynamoDB map keys and log fields.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

impl WorkerConfig {
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            lease_duration: Duration::from_secs(3),
            renew_interval: Duration::from_millis(600),
            take_interval: Duration::from_millis(600),
            max_leases_per_worker: usize::MAX,
            max_steals_per_cycle: 8,
            handoff_timeout: Duration::from_secs(10),
            shard_sync_interval: Duration::from_secs(60),
            full_refresh_interval: Duration::from_secs(60),
            poll_interval: Duration::from_millis(200),
            max_records: 10_000,
            initial_position: InitialPosition::TrimHorizon,
            consumer_mode: ConsumerMode::Polling,
            shutdown_timeout: Duration::from_secs(20),
            seed: None,
        }
    }

    /// Checks every setting; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |setting, reason: &str| {
            Err(ConfigError {
                setting,
                reason: reason.to_owned(),
            })
        };
        if !valid_id(&self.worker_id) {
            return fail(
                "worker_id",
                "must be 1 to 128 characters of [A-Za-z0-9._:@-]",
            );
        }
        if self.renew_interval.is_zero() {
            return fail("renew_interval", "must be positive");
        }
        if self.lease_duration < self.renew_interval * 2 {
            return fail(
                "lease_duration",
                "must be at least twice renew_interval, or a live worker looks dead",
            );
        }
        if self.take_interval.is_zero() {
            return fail("take_interval", "must be positive");
        }
        if self.max_leases_per_worker == 0 {
            return fail("max_leases_per_worker", "must be at least 1");
        }
        if self.max_steals_per_cycle == 0 {
            return fail("max_steals_per_cycle", "must be at least 1");
        }
        if !(1..=10_000).contains(&self.max_records) {
            return fail("max_records", "must be 1 to 10000 (the GetRecords limit)");
        }
        if self.shard_sync_interval < Duration::from_secs(1) {
            return fail("shard_sync_interval", "must be at least 1 s");
        }
        if let ConsumerMode::FanOut { consumer_name } = &self.consumer_mode {
            if !valid_consumer_name(consumer_name) {
                return fail(
                    "consumer_mode",
                    "the fan-out consumer name must be 1 to 128 characters of [A-Za-z0-9._-]",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_errors_name_the_setting() {
        assert_eq!(WorkerConfig::new("w-1").validate(), Ok(()));
        let mut config = WorkerConfig::new("bad id");
        assert_eq!(config.validate().unwrap_err().setting, "worker_id");
        config.worker_id = "ok".into();
        config.lease_duration = Duration::from_millis(700);
        assert_eq!(config.validate().unwrap_err().setting, "lease_duration");
        config.lease_duration = Duration::from_secs(3);
        config.max_records = 0;
        assert_eq!(config.validate().unwrap_err().setting, "max_records");
        config.max_records = 100;
        config.consumer_mode = ConsumerMode::FanOut {
            consumer_name: "app:1".into(),
        };
        assert_eq!(config.validate().unwrap_err().setting, "consumer_mode");
        config.consumer_mode = ConsumerMode::FanOut {
            consumer_name: "tally-live_1.0".into(),
        };
        assert_eq!(config.validate(), Ok(()));
    }
}
