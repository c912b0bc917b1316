//! # tally
//!
//! Real-time, exactly-once vote counting on Kinesis and DynamoDB.
//!
//! ## Layout
//! - [`cli`]: the command line (`tally init`, `tally leases`, `tally tail`).
//! - [`settings`]: common settings (stream, table names, AWS clients) and
//!   the lease worker's settings, from flags and environment variables.
//! - [`leases_view`]: the lease table as a person wants to read it.
//! - [`tail`]: a lease worker that prints every record it reads.
//! - [`shutdown`]: signal handling.
//! - [`telemetry`]: JSON logs.

pub mod admin;
pub mod cli;
pub mod count;
pub mod daemon;
pub mod faults;
pub mod leases_view;
pub mod load;
pub mod metrics;
pub mod pipeline;
pub mod poll;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod tail;
pub mod telemetry;
pub mod time;
pub mod vote;
pub mod workload;
