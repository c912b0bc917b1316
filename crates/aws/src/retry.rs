//! The one retry helper: exponential backoff with jitter (`backon`), only
//! for errors the caller calls retryable, and it gives up the moment the
//! cancellation token fires. Time is tokio's, so tests can pause it.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

/// The backoff used for lease-table and stream calls.
pub fn policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(usize::MAX)
        .with_jitter()
}

/// Runs `operation` until it succeeds, fails with an error that is not
/// retryable, or `cancel` fires (then `None`).
pub async fn with_backoff<T, E, F, Fut>(
    operation: F,
    retryable: fn(&E) -> bool,
    cancel: &CancellationToken,
) -> Option<Result<T, E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let attempt = operation
        .retry(policy())
        .sleep(tokio::time::sleep)
        .when(retryable)
        .notify(|error: &E, after: Duration| {
            tracing::warn!(error = %error, retry_in_ms = after.as_millis() as u64, "retrying");
        });
    tokio::select! {
        result = attempt => Some(result),
        _ = cancel.cancelled() => None,
    }
}
