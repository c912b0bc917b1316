//! # tally-lease
//!
//! Kinesis shard lease coordination over DynamoDB, in the manner of the
//! Kinesis Client Library (KCL), with three differences:
//!
//! - **Liveness is per worker, not per lease.** Each worker writes one
//!   heartbeat to a fleet item per renew interval and reads every other
//!   worker's heartbeat back in the same request, so the idle cost of a
//!   worker is flat in the number of leases it holds. A lease is expired
//!   when its owner's heartbeat has not changed for the lease duration on
//!   the observer's monotonic clock.
//! - **Fencing.** Every change of owner increments `leaseCounter`, and
//!   every checkpoint is conditional on owner and counter: a paused or
//!   partitioned ex-owner can never write.
//! - **Balance and handoff.** Free and expired leases are taken first;
//!   then a worker below its fair share asks the most loaded worker for
//!   several leases at once, and the owner hands each over after its
//!   in-flight batch and checkpoint.
//!
//! ## Layout
//! - [`types`]: shard ids, sequence numbers (numeric order), checkpoints,
//!   leases, records (defined in `tally-contract`).
//! - [`kpl`]: the KPL aggregation format (from `tally-contract`).
//! - [`retry`]: the one retry helper (from `tally-aws`).
//! - [`graph`], [`decide`]: the pure core (shard DAG; liveness and planning).
//! - [`store`]: the lease table trait, DynamoDB and in-memory adapters.
//! - [`stream`]: the Kinesis trait, AWS and in-memory adapters.
//! - [`processor`]: the application's trait and the fenced checkpointer.
//! - [`reader`]: the read side of a shard consumer: polling or enhanced
//!   fan-out, one page at a time.
//! - [`consumer`], [`worker`]: the tasks that run it all.

pub mod config;
pub mod consumer;
pub mod decide;
pub mod graph;
pub use tally_contract::kpl;
pub mod metrics;
pub mod processor;
pub mod reader;
pub use tally_aws::retry;
pub mod store;
pub mod stream;
pub mod types;
pub mod worker;

#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{ConsumerMode, WorkerConfig};
pub use processor::{
    Batch, CheckpointOutcome, Checkpointer, ProcessorFactory, RecordProcessor, ShardStart,
};
pub use store::{dynamo::DynamoStore, memory::MemoryStore, LeaseStore};
pub use stream::{kinesis::KinesisStream, memory::MemoryStream, StreamSource};
pub use types::*;
pub use worker::Worker;
