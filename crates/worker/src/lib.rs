//! # tally-worker
//!
//! Counting: the per-shard pipeline that decides and commits each batch
//! exactly once, the `tally worker` daemon around it, and what happens at
//! the end of a poll (recount, audit, finalize, replay, snapshots).
//!
//! ## Layout
//! - [`pipeline`]: the record processor: decode, validate, first-wins,
//!   conditional puts, counter deltas and the fenced commit.
//! - [`metrics`]: the worker's counters.
//! - [`daemon`]: `tally worker`: leases, health, metrics, shutdown.
//! - [`close`]: processed-past-the-close checks, the recount scan, audit,
//!   finalize and resolve.
//! - [`replay`]: rebuilding a poll's tallies into shadow tables.
//! - [`snapshot`]: results in S3.

pub mod close;
pub mod daemon;
pub mod metrics;
pub mod pipeline;
pub mod replay;
pub mod snapshot;
