//! The JSON API under `/v1`, the operator endpoints, and the OpenAPI 3.1
//! document generated from these handlers' annotations.
//!
//! This module owns the route table ([`routes`]), the fallbacks for unknown
//! paths and methods, and the helpers the route files share. The request and
//! response types live in `dto`, the extractors in `extract`, the handlers in
//! one file per resource (`votes`, `results`, `polls`, `ops`) and the
//! document in `openapi`; every public item is re-exported here.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::routing::{get, post};
use axum::Router;

use super::error::ApiError;
use super::Gateway;
use tally_contract::time::format_rfc3339;
use tally_core::poll::Poll;

mod dto;
mod extract;
mod openapi;
mod ops;
mod polls;
mod results;
mod votes;

pub use self::dto::{
    CloseRequest, CountedVote, CreatePoll, ErrorBody, ErrorDetail, Health, OptionInput, OptionView,
    PipelineHealth, PollList, PollView, RejectedVote, VoteAccepted, VoteRequest, VoteStatus,
    WorkerHealth,
};
pub use self::extract::{Admin, MaybeCaller, OptionalJson, PollId, StrictJson, Voter};
pub use self::openapi::{openapi, spec};
pub use self::ops::{dev_token, healthz, metrics, pipeline, readyz};
pub(crate) use self::ops::{metrics_url_error, MAX_METRICS_URLS};
pub use self::polls::{close_poll, create_poll, get_poll, list_polls, open_poll};
pub use self::results::{results, results_stream};
pub use self::votes::{cast_vote, my_vote};

type Shared = State<Arc<Gateway>>;

/// The API and operator routes (`dev_tokens`: also the demo token mint;
/// `metrics`: also `/metrics`, when no separate metrics listener serves it).
pub fn routes(dev_tokens: bool, metrics: bool) -> Router<Arc<Gateway>> {
    let router = Router::new()
        .route("/v1/polls", get(list_polls).post(create_poll))
        .route("/v1/polls/{poll}", get(get_poll))
        .route("/v1/polls/{poll}/open", post(open_poll))
        .route("/v1/polls/{poll}/close", post(close_poll))
        .route("/v1/polls/{poll}/votes", post(cast_vote))
        .route("/v1/polls/{poll}/votes/me", get(my_vote))
        .route("/v1/polls/{poll}/results", get(results))
        .route("/v1/polls/{poll}/results/stream", get(results_stream))
        .route("/v1/pipeline", get(pipeline))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi));
    let router = if metrics {
        router.route("/metrics", get(self::ops::metrics))
    } else {
        router
    };
    if dev_tokens {
        router.route("/v1/dev/token", post(dev_token))
    } else {
        router
    }
}

pub async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(request.uri().path().chars().take(200).collect())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn poll_view(poll: &Poll) -> PollView {
    PollView {
        poll_id: poll.id.clone(),
        question: poll.question.clone(),
        status: poll.status.as_str().to_owned(),
        options: poll
            .options
            .iter()
            .map(|option| OptionView {
                id: option.id.clone(),
                label: option.label.clone(),
            })
            .collect(),
        opens_at: poll.opens_at.map(format_rfc3339),
        closes_at: poll.closes_at.map(format_rfc3339),
        counter_shards: poll.counter_shards,
        created_at: format_rfc3339(poll.created_at),
    }
}

async fn existing_poll(gateway: &Gateway, id: &str) -> Result<Arc<Poll>, ApiError> {
    gateway
        .polls
        .get(id, Duration::from_millis(500))
        .await?
        .ok_or_else(|| ApiError::PollNotFound(id.to_owned()))
}
