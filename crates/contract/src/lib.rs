//! # tally-contract
//!
//! The contracts other programs depend on, as pure code: no I/O, no AWS
//! SDK, no async runtime, so the producer SDK, the lease library and the
//! worker all share one definition.
//!
//! ## Layout
//! - [`vote`]: the vote record (decoding, encoding, the id rule, the
//!   limits) and the reasons a record is rejected.
//! - [`kpl`]: the KPL aggregation format (aggregate, de-aggregate).
//! - [`hash`]: the 128-bit hash key Kinesis derives from a partition key.
//! - [`time`]: milliseconds since the epoch and RFC 3339 text.
//! - [`stream`]: shard ids, sequence numbers (numeric order), checkpoints,
//!   leases and records: the data of the stream and the lease table.

pub mod hash;
pub mod kpl;
pub mod stream;
pub mod time;
pub mod vote;
