//! The producer SDK's integration tests, one test binary: behaviour against
//! an in-memory stream that fails on demand, KPL interop with
//! `aws-kinesis-agg`, and the HTTP producer against a real endpoint.

mod http_producer;
mod kpl_interop;
mod producer_memory;
