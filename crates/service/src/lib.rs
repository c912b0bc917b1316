//! # tally-service
//!
//! What the long-running commands (`tally worker`, `tally gateway`) and
//! the others share, and nothing of the counting itself.
//!
//! ## Layout
//! - [`settings`]: where the data lives, the lease settings, and the AWS
//!   clients built from the standard AWS settings.
//! - [`faults`]: the fault switches; the fault layer only with the
//!   `faults` feature (tests), never in a release build.
//! - [`cloudwatch`]: publishing metrics with `PutMetricData`.
//! - [`telemetry`]: JSON logs and OTLP traces.
//! - [`shutdown`]: the stop signals.

pub mod cloudwatch;
pub mod faults;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

/// When this process started (for rates computed from the metrics lines).
pub fn started() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}
