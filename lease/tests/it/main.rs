//! The lease library's integration tests, one test binary: the lease-store
//! conformance suite (in memory and on DynamoDB in the emulator) and the
//! deterministic simulation of the real worker code.

mod fan_out;
mod simulation;
mod store_conformance;
