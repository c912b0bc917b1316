//! # tally-core
//!
//! The counting core: every decision of the counting protocol as pure
//! functions over our own types, with no I/O, no AWS SDK and no async
//! runtime, so each can be tested exhaustively.
//!
//! ## Layout
//! - [`poll`]: poll definitions, their life cycle and the window rule.
//! - [`count`]: first-wins within a batch, counter items, deltas, commit
//!   chunking and commit tokens.
//! - [`records`]: the records the vote tables keep (votes with their
//!   origin, rejects, commits, counts).
//! - [`recount`]: the recount's arithmetic and its comparison with the
//!   live tallies.

pub mod count;
pub mod poll;
pub mod records;
pub mod recount;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
