//! Common settings, read from flags or environment variables, and the AWS
//! clients built from them. The standard AWS variables apply (region,
//! credentials, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_KINESIS`,
//! `AWS_ENDPOINT_URL_DYNAMODB`).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tally_lease::{ConsumerMode, InitialPosition, WorkerConfig};

/// Where Tally's data lives.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// The Kinesis stream of votes.
    #[arg(
        long,
        env = "TALLY_STREAM",
        default_value = "tally-votes",
        global = true
    )]
    pub stream: String,
    /// Application name: the lease table is `<app>-leases`. A separate
    /// application reads the stream independently, with its own leases.
    #[arg(long, env = "TALLY_APP", default_value = "tally", global = true)]
    pub app: String,
    /// Prefix of the vote tables' names: `<prefix>polls`, `<prefix>votes`,
    /// `<prefix>tallies`, `<prefix>rejects`.
    #[arg(
        long,
        env = "TALLY_TABLE_PREFIX",
        default_value = "tally-",
        global = true
    )]
    pub table_prefix: String,
}

impl Common {
    pub fn lease_table(&self) -> String {
        format!("{}-leases", self.app)
    }

    /// The vote tables, and the lease table the commits checkpoint in.
    pub fn table_names(&self) -> tally_store::dynamo::TableNames {
        tally_store::dynamo::TableNames::with_prefix(&self.table_prefix, self.lease_table())
    }

    /// Checks names before any request, naming the setting at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        let name_ok = |text: &str, max: usize| {
            !text.is_empty()
                && text.len() <= max
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !name_ok(&self.stream, 128) {
            bail!("invalid setting TALLY_STREAM (--stream): {:?} must be 1 to 128 characters of [A-Za-z0-9._-]", self.stream);
        }
        if !name_ok(&self.app, 200) {
            bail!("invalid setting TALLY_APP (--app): {:?} must be 1 to 200 characters of [A-Za-z0-9._-]", self.app);
        }
        let prefix_ok = self.table_prefix.len() <= 200
            && self
                .table_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !prefix_ok {
            bail!("invalid setting TALLY_TABLE_PREFIX (--table-prefix): {:?} must be 0 to 200 characters of [A-Za-z0-9._-]", self.table_prefix);
        }
        Ok(())
    }
}

/// The AWS clients.
pub struct Clients {
    pub kinesis: aws_sdk_kinesis::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// The settings they were built from, for other clients (S3).
    pub config: aws_config::SdkConfig,
}

impl Clients {
    /// Builds clients from the standard AWS settings, with timeouts so
    /// that a lost response ends as an error instead of a hang.
    pub async fn from_env() -> anyhow::Result<Self> {
        Self::with_faults(None).await
    }

    /// Like [`Clients::from_env`], with every request going through the
    /// fault layer when one is given (tests only).
    pub async fn with_faults(
        faults: Option<std::sync::Arc<crate::faults::Faults>>,
    ) -> anyhow::Result<Self> {
        let config = tally_aws::client::load_config(None).await?;
        let config = crate::faults::wrap_config(config, faults.as_ref());
        Ok(Self {
            kinesis: aws_sdk_kinesis::Client::new(&config),
            dynamodb: aws_sdk_dynamodb::Client::new(&config),
            config,
        })
    }
}

/// The lease worker's settings.
#[derive(Args, Clone, Debug)]
pub struct LeaseSettings {
    /// This worker's id (default: host name and process id).
    #[arg(long, env = "TALLY_WORKER_ID")]
    pub worker_id: Option<String>,
    /// A lease is expired when its owner's heartbeat has not changed for this long.
    #[arg(long, env = "TALLY_LEASE_DURATION_MS", default_value_t = 3000)]
    pub lease_duration_ms: u64,
    /// How often the worker writes its heartbeat and reads the fleet's.
    #[arg(long, env = "TALLY_RENEW_INTERVAL_MS", default_value_t = 600)]
    pub renew_interval_ms: u64,
    /// How often the worker plans takes and steals.
    #[arg(long, env = "TALLY_TAKE_INTERVAL_MS", default_value_t = 600)]
    pub take_interval_ms: u64,
    /// Most leases one worker holds (0: no limit).
    #[arg(long, env = "TALLY_MAX_LEASES", default_value_t = 0)]
    pub max_leases: usize,
    /// Most leases one worker asks for in one cycle.
    #[arg(long, env = "TALLY_MAX_STEALS", default_value_t = 8)]
    pub max_steals: usize,
    /// How long an owner may take to hand a requested lease over.
    #[arg(long, env = "TALLY_HANDOFF_TIMEOUT_MS", default_value_t = 10_000)]
    pub handoff_timeout_ms: u64,
    /// Interval of the periodic shard sync (ListShards).
    #[arg(long, env = "TALLY_SHARD_SYNC_INTERVAL_MS", default_value_t = 60_000)]
    pub shard_sync_interval_ms: u64,
    /// Least time between two GetRecords calls on one shard (Kinesis allows 5/s per shard).
    #[arg(long, env = "TALLY_POLL_INTERVAL_MS", default_value_t = 200)]
    pub poll_interval_ms: u64,
    /// Most records per GetRecords call (1 to 10000).
    #[arg(long, env = "TALLY_MAX_RECORDS", default_value_t = 10_000)]
    pub max_records: u32,
    /// Where a brand-new lease starts: trim_horizon, latest, or an RFC 3339 time.
    #[arg(long, env = "TALLY_INITIAL_POSITION", default_value = "trim_horizon")]
    pub initial_position: String,
    /// How shards are read: polling (GetRecords) or fan-out (SubscribeToShard through the stream consumer named after the application, registered if missing).
    #[arg(long, env = "TALLY_CONSUMER_MODE", default_value = "polling")]
    pub consumer_mode: String,
}

impl LeaseSettings {
    /// The worker's config; `app` names the fan-out stream consumer.
    pub fn worker_config(&self, app: &str) -> anyhow::Result<WorkerConfig> {
        let worker_id = match &self.worker_id {
            Some(id) => id.clone(),
            None => {
                let host =
                    std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "worker".into());
                let host: String = host
                    .trim()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .take(64)
                    .collect();
                format!(
                    "{}-{}",
                    if host.is_empty() { "worker" } else { &host },
                    std::process::id()
                )
            }
        };
        let mut config = WorkerConfig::new(worker_id);
        config.lease_duration = Duration::from_millis(self.lease_duration_ms);
        config.renew_interval = Duration::from_millis(self.renew_interval_ms);
        config.take_interval = Duration::from_millis(self.take_interval_ms);
        config.max_leases_per_worker = if self.max_leases == 0 {
            usize::MAX
        } else {
            self.max_leases
        };
        config.max_steals_per_cycle = self.max_steals;
        config.handoff_timeout = Duration::from_millis(self.handoff_timeout_ms);
        config.shard_sync_interval = Duration::from_millis(self.shard_sync_interval_ms);
        config.poll_interval = Duration::from_millis(self.poll_interval_ms);
        config.max_records = self.max_records;
        config.initial_position = parse_initial_position(&self.initial_position)?;
        config.consumer_mode = parse_consumer_mode(&self.consumer_mode, app)?;
        config.validate().map_err(|error| {
            let variable = match error.setting {
                "worker_id" => "TALLY_WORKER_ID",
                "lease_duration" => "TALLY_LEASE_DURATION_MS",
                "renew_interval" => "TALLY_RENEW_INTERVAL_MS",
                "take_interval" => "TALLY_TAKE_INTERVAL_MS",
                "max_leases_per_worker" => "TALLY_MAX_LEASES",
                "max_steals_per_cycle" => "TALLY_MAX_STEALS",
                "max_records" => "TALLY_MAX_RECORDS",
                "shard_sync_interval" => "TALLY_SHARD_SYNC_INTERVAL_MS",
                "consumer_mode" => "TALLY_CONSUMER_MODE",
                other => other,
            };
            anyhow::anyhow!("invalid setting {variable}: {}", error.reason)
        })?;
        Ok(config)
    }
}

/// `polling` or `fan-out` (through the stream consumer `app`).
pub fn parse_consumer_mode(text: &str, app: &str) -> anyhow::Result<ConsumerMode> {
    match text.to_ascii_lowercase().as_str() {
        "polling" => Ok(ConsumerMode::Polling),
        "fan-out" | "fanout" | "fan_out" => {
            // Kinesis names a stream consumer with 1 to 128 of these.
            if !tally_lease::config::valid_consumer_name(app) {
                bail!(
                    "invalid setting TALLY_APP (--app, or --replay-app for a replay): in fan-out mode the stream consumer is named after the application, so {app:?} must be 1 to 128 characters of [A-Za-z0-9._-]"
                );
            }
            Ok(ConsumerMode::FanOut {
                consumer_name: app.to_owned(),
            })
        }
        _ => bail!("invalid setting TALLY_CONSUMER_MODE (--consumer-mode): {text:?} is not polling or fan-out"),
    }
}

/// `trim_horizon`, `latest`, or an RFC 3339 timestamp.
pub fn parse_initial_position(text: &str) -> anyhow::Result<InitialPosition> {
    match text.to_ascii_lowercase().as_str() {
        "trim_horizon" => Ok(InitialPosition::TrimHorizon),
        "latest" => Ok(InitialPosition::Latest),
        _ => {
            let time = aws_smithy_types::DateTime::from_str(text, aws_smithy_types::date_time::Format::DateTime)
                .with_context(|| {
                    format!("invalid setting TALLY_INITIAL_POSITION: {text:?} is not trim_horizon, latest or an RFC 3339 time")
                })?;
            Ok(InitialPosition::AtTimestamp(
                time.to_millis().context("timestamp out of range")?,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_modes_parse_and_bad_ones_name_the_setting() {
        assert_eq!(
            parse_consumer_mode("polling", "tally").unwrap(),
            ConsumerMode::Polling
        );
        assert_eq!(
            parse_consumer_mode("fan-out", "tally-replay").unwrap(),
            ConsumerMode::FanOut {
                consumer_name: "tally-replay".into()
            }
        );
        let error = parse_consumer_mode("push", "tally")
            .unwrap_err()
            .to_string();
        assert!(error.contains("TALLY_CONSUMER_MODE"), "{error}");
        // A name Kinesis would refuse for the consumer fails here, naming
        // the application setting it comes from.
        let long = "a".repeat(129);
        let error = parse_consumer_mode("fan-out", &long)
            .unwrap_err()
            .to_string();
        assert!(error.contains("TALLY_APP"), "{error}");
        assert!(parse_consumer_mode("polling", &long).is_ok());
        assert!(parse_consumer_mode("fan-out", &"a".repeat(128)).is_ok());
    }

    #[test]
    fn initial_positions_parse_and_bad_ones_name_the_setting() {
        assert_eq!(
            parse_initial_position("LATEST").unwrap(),
            InitialPosition::Latest
        );
        assert_eq!(
            parse_initial_position("2026-11-22T10:00:00Z").unwrap(),
            InitialPosition::AtTimestamp(1_795_341_600_000)
        );
        let error = parse_initial_position("yesterday").unwrap_err().to_string();
        assert!(error.contains("TALLY_INITIAL_POSITION"), "{error}");
    }

    #[test]
    fn bad_names_fail_naming_the_setting() {
        let common = Common {
            stream: "bad name".into(),
            app: "tally".into(),
            table_prefix: "tally-".into(),
        };
        assert!(common
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TALLY_STREAM"));
        assert_eq!(common.lease_table(), "tally-leases");
        let common = Common {
            stream: "votes".into(),
            table_prefix: "no spaces".into(),
            ..common
        };
        assert!(common
            .validate()
            .unwrap_err()
            .to_string()
            .contains("TALLY_TABLE_PREFIX"));
        let names = Common {
            table_prefix: "x-".into(),
            ..common
        }
        .table_names();
        assert_eq!(
            (names.votes.as_str(), names.leases.as_str()),
            ("x-votes", "tally-leases")
        );
    }
}
