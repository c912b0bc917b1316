//! The AWS SDK configuration that every Tally program loads.
//!
//! This module owns the timeouts (a lost response ends as an error instead
//! of a hang), the SDK's own retry settings, and the check that a region is
//! set. The standard AWS settings apply (region, credentials,
//! `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_KINESIS`,
//! `AWS_ENDPOINT_URL_DYNAMODB`). It never builds a service client and never
//! reads Tally's own settings.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

/// Why no configuration could be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no AWS region: set AWS_REGION (for the local stack, any region, e.g. us-east-1)")]
    NoRegion,
}

/// The timeouts of every call: 3 s to connect, 10 s for one attempt, 30 s
/// for a call with all its attempts.
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(Duration::from_secs(30))
        .build()
}

/// The SDK's own retries: at most 4 attempts, backing off from 50 ms up to
/// 2 s (the SDK's default starts at 1 s): a vote waits on its put, and
/// results should be live within a second; longer outages are the
/// callers' retries' job.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(4)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_secs(2))
}

/// Loads the configuration from the standard AWS settings, with
/// [`timeout_config`] and [`retry_config`]. When `http_client` is given,
/// the service clients built from the configuration send every request
/// through it (the credential providers keep the default client, since it
/// is set after loading).
pub async fn load_config(http_client: Option<SharedHttpClient>) -> Result<SdkConfig, ConfigError> {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeout_config())
        .retry_config(retry_config())
        .load()
        .await;
    if config.region().is_none() {
        return Err(ConfigError::NoRegion);
    }
    Ok(match http_client {
        None => config,
        Some(client) => config.into_builder().http_client(client).build(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let timeouts = timeout_config();
        assert_eq!(timeouts.connect_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(
            timeouts.operation_attempt_timeout(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(timeouts.operation_timeout(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn retries() {
        let retries = retry_config();
        assert_eq!(retries.max_attempts(), 4);
        assert_eq!(retries.initial_backoff(), Duration::from_millis(50));
        assert_eq!(retries.max_backoff(), Duration::from_secs(2));
    }

    #[test]
    fn no_region_names_the_setting() {
        assert!(ConfigError::NoRegion.to_string().contains("AWS_REGION"));
    }
}
