//! # tally
//!
//! Real-time, exactly-once vote counting on Kinesis and DynamoDB.
//!
//! ## Layout
//! - Pure decisions, no I/O: [`vote`] (the record contract and reject
//!   reasons), [`poll`] (definitions, life cycle, the window rule),
//!   [`count`] (first-wins, counter items, deltas, commit chunking, tokens).
//! - [`store`]: the vote tables behind [`store::VoteStore`], DynamoDB and
//!   in-memory adapters and their conformance suite.
//! - [`pipeline`]: the per-shard processor that decides and commits each
//!   batch; [`daemon`]: `tally worker` (health, metrics, shutdown).
//! - [`faults`]: fault injection into AWS requests and crash points (tests).
//! - [`admin`]: polls, results and vote status; [`load`]: `tally load`.
//! - [`gateway`]: `tally gateway`, the HTTP API, live results and web pages.
//! - [`workload`]: a generated workload and its ground truth (tests, benchmarks).
//! - [`cli`], [`settings`], [`telemetry`], [`shutdown`], [`time`],
//!   [`metrics`]: the command line, settings, logs, signals, clocks, metrics.
//! - [`leases_view`], [`tail`]: `tally leases` and `tally tail`.

pub mod admin;
pub mod cli;
pub mod close;
pub mod cloudwatch;
pub mod count;
pub mod daemon;
pub mod faults;
pub mod gateway;
pub mod leases_view;
pub mod load;
pub mod metrics;
pub mod pipeline;
pub mod poll;
pub mod replay;
pub mod settings;
pub mod shutdown;
pub mod snapshot;
pub mod store;
pub mod tail;
pub mod telemetry;
pub mod time;
pub mod vote;
pub mod workload;
