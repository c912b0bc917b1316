//! # tally-aws
//!
//! The AWS plumbing that Tally's crates share, written once:
//!
//! - [`error`]: one classification of every AWS error ([`ErrorClass`]),
//!   by error code, HTTP status and failure kind.
//! - [`retry`]: the one retry helper (exponential backoff with jitter,
//!   cancellable).
//! - [`client`]: the SDK configuration (timeouts, SDK retries, region check).
//! - `table` (feature `dynamodb`): creating a DynamoDB table unless it
//!   exists, and waiting until it is `ACTIVE`.
//!
//! It owns no business types: no votes, leases or records, and no error
//! type of a caller's. Each caller keeps its own error enum and maps an
//! [`ErrorClass`] to it. Without the `dynamodb` feature it does not depend
//! on the DynamoDB SDK, and it never depends on a service SDK for error
//! classification (only on the generic error metadata).

pub mod client;
pub mod error;
pub mod retry;
#[cfg(feature = "dynamodb")]
pub mod table;

pub use error::{classify, classify_cancellation, classify_code, describe, AwsError, ErrorClass};
