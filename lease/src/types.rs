//! Shard ids, sequence numbers (numeric order), checkpoints, leases and
//! records: plain data, defined in `tally_contract::stream` so that the
//! counting core can use them without this crate's AWS adapters.

pub use tally_contract::stream::*;
