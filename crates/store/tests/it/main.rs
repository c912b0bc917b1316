//! The vote stores' integration tests, one test binary: the conformance
//! suite against the in-memory store and DynamoDB in the emulator.

mod conformance;
