//! # tally-producer
//!
//! A Kinesis producer for Tally's votes, and for any other records: it
//! buffers records (bounded), sends `PutRecords` calls of at most 500
//! records and 5 MiB after a linger time or when full, optionally packs
//! records into KPL aggregates per predicted shard, retries only the
//! records that failed (with backoff and jitter, within a time to live),
//! and resolves each record to its receipt or to an error. No native
//! binary, no silent loss.
//!
//! ## Layout
//! - [`shard_map`], [`batch`]: the pure part (which shard a key lands in,
//!   entries and aggregates, calls within the limits).
//! - [`sink`]: the `PutRecords` boundary: the Kinesis adapter, and an
//!   in-memory stream that fails on demand for tests.
//! - [`producer`]: the buffer, the task, receipts, flush and close, metrics.
//! - [`vote`]: records that follow Tally's vote contract.
//! - `http` (feature `http`): a client for the gateway's vote endpoint, with
//!   retries made safe by the vote id as idempotency key.

pub mod batch;
#[cfg(feature = "http")]
pub mod http;
pub mod producer;
pub mod shard_map;
pub mod sink;
pub mod vote;

pub use batch::Aggregation;
pub use producer::{
    Metrics, Producer, ProducerConfig, ProducerError, Receipt, ReceiptFuture, Record,
};
pub use sink::{KinesisSink, MemorySink, Sink};
pub use vote::VoteBuilder;
