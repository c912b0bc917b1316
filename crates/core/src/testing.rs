//! Test data shared with other crates' tests (feature `testing`).

use crate::poll::{parse_option, Poll, PollStatus};

/// An open poll `id` with the options `a` ("Alpha") and `b`.
pub fn sample_poll(id: &str) -> Poll {
    Poll {
        id: id.into(),
        question: "Who wins?".into(),
        options: vec![parse_option("a=Alpha").unwrap(), parse_option("b").unwrap()],
        opens_at: None,
        closes_at: None,
        status: PollStatus::Open,
        counter_shards: 4,
        created_at: 0,
    }
}
