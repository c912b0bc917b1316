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
    /// How long a graceful stop waits for processors to finish.
    pub shutdown_timeout: Duration,
    /// Seed of the worker's random choices (tests); `None` picks one.
    pub seed: Option<u64>,
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
    }
}
