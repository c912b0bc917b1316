//! The `tally` binary's integration tests, one test binary: real `tally`
//! processes and the gateway against the local AWS emulators (each module
//! starts the emulators it needs on free loopback ports), the deployment's
//! static checks, and the browser flow.

mod local_stack;

mod close_processes;
mod cloudwatch_metrics;
mod gateway_api;
mod gateway_jwks;
mod gateway_web;
mod infra;
mod lease_processes;
mod load_command;
mod otlp_traces;
mod producer_faults;
mod replay_processes;
mod vote_processes;
