//! The request and response bodies of the API, with their OpenAPI schemas.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A vote: the option only. The voter is the token's voter claim.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoteRequest {
    /// The option's id.
    pub option: String,
}

/// A vote on the stream, to be counted by the workers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VoteAccepted {
    pub vote_id: String,
    pub poll_id: String,
    /// Always `accepted`: the vote is on the stream; `GET .../votes/me`
    /// tells when it is counted.
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `poll_not_open`.
    pub code: String,
    pub message: String,
}

/// Every error's body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// With `already_voted`: the counted vote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vote: Option<CountedVote>,
}

/// A counted vote.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountedVote {
    pub vote_id: String,
    pub option: String,
    /// The record's stream position, `shard/sequence/sub-sequence`.
    pub position: String,
    pub arrived_at: String,
}

/// A rejected record of this voter.
#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedVote {
    pub vote_id: Option<String>,
    /// malformed, unknown_poll, poll_not_open, invalid_option, bad_aggregate.
    pub reason: String,
    pub detail: String,
    pub position: String,
    pub arrived_at: String,
}

/// What became of the caller's vote.
#[derive(Debug, Serialize, ToSchema)]
pub struct VoteStatus {
    pub poll_id: String,
    pub voter_id: String,
    /// counted, rejected or unknown (not counted yet, or never sent).
    pub status: String,
    pub counted: Option<CountedVote>,
    pub rejected: Vec<RejectedVote>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OptionView {
    pub id: String,
    pub label: String,
}

/// A poll.
#[derive(Debug, Serialize, ToSchema)]
pub struct PollView {
    pub poll_id: String,
    pub question: String,
    /// draft, open, closed or final.
    pub status: String,
    pub options: Vec<OptionView>,
    pub opens_at: Option<String>,
    pub closes_at: Option<String>,
    pub counter_shards: u32,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PollList {
    pub polls: Vec<PollView>,
}

/// An option of a new poll.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptionInput {
    pub id: String,
    /// Defaults to the id.
    pub label: Option<String>,
}

/// A new poll.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePoll {
    pub poll_id: String,
    pub question: String,
    /// 2 for this-or-that, up to 100.
    pub options: Vec<OptionInput>,
    /// RFC 3339; none: open as soon as opened.
    pub opens_at: Option<String>,
    /// RFC 3339; none: open until closed.
    pub closes_at: Option<String>,
    /// Counter items (1 to 256; default 16).
    pub counter_shards: Option<u32>,
    /// Open the poll at once.
    pub open: Option<bool>,
}

/// When to close a poll.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    /// RFC 3339, not in the past; default: 2 s from now, so that every
    /// worker knows the closing time before it passes.
    pub at: Option<String>,
}

/// One worker's health as its metrics endpoint tells it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerHealth {
    pub url: String,
    pub up: bool,
    pub worker_id: Option<String>,
    pub votes_counted: u64,
    /// How far the worker's reads are behind the stream's tip.
    pub millis_behind: i64,
    pub error: Option<String>,
}

/// The pipeline's health, from the workers' metrics.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineHealth {
    pub workers: Vec<WorkerHealth>,
    pub votes_counted_total: u64,
    pub votes_duplicate_total: u64,
    pub votes_per_second: f64,
    pub millis_behind_max: i64,
    pub rejected_by_reason: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}
