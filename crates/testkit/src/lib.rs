//! # tally-testkit
//!
//! Test support shared by the integration tests, the chaos run and the
//! benchmarks; never a dependency of a shipped binary.
//!
//! ## Layout
//! - [`emulators`]: the pinned local AWS emulators on free loopback ports,
//!   SDK settings for them, unique names (re-exported from the lease
//!   library's `testing` feature, which its own tests use).
//! - [`process`]: `tally` processes that are killed when dropped, and the
//!   command line pointed at the local stack.
//! - [`workload`]: a generated workload and its ground truth.
//! - [`faults`]: the fault layer (re-exported from `tally-faults`).

pub use tally_faults as faults;
pub use tally_lease::testing as emulators;

pub mod process;
pub mod workload;
