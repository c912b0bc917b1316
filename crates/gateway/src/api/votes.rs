//! Casting a vote and reading what became of it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::dto::{CountedVote, ErrorBody, RejectedVote, VoteAccepted, VoteRequest, VoteStatus};
use super::extract::{PollId, StrictJson, Voter};
use super::{existing_poll, Shared};
use crate::error::ApiError;
use crate::Gateway;
use tally_contract::time::{format_rfc3339, now_millis};
use tally_contract::vote::{valid_id, MAX_ID_CHARS, MAX_VOTE_ID_CHARS};
use tally_core::poll::PollStatus;

fn counted_vote(vote: &tally_store::VoteItem) -> CountedVote {
    CountedVote {
        vote_id: vote.vote_id.clone(),
        option: vote.option.clone(),
        position: vote.origin.key(),
        arrived_at: format_rfc3339(vote.arrival_ms),
    }
}

/// A fresh vote id: the time in milliseconds and 64 random bits, in hex.
fn new_vote_id() -> String {
    format!("{:012x}{:016x}", now_millis(), rand::random::<u64>())
}

/// Casts a vote.
#[utoipa::path(post, path = "/v1/polls/{poll}/votes", tag = "votes",
    params(("poll" = String, Path, description = "The poll's id", example = "demo"),
           ("Idempotency-Key" = Option<String>, Header, description = "1 to 64 characters of [A-Za-z0-9._:@-]; retries with the same key answer the same vote, and the key becomes the vote id")),
    request_body = VoteRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "On the stream; counted within a second", body = VoteAccepted),
        (status = 400, description = "invalid_body, invalid_parameter, invalid_idempotency_key", body = ErrorBody),
        (status = 401, description = "missing_token, invalid_token, token_expired", body = ErrorBody),
        (status = 404, description = "poll_not_found", body = ErrorBody),
        (status = 409, description = "already_voted (with the counted vote), idempotency_key_reused", body = ErrorBody),
        (status = 413, description = "body_too_large", body = ErrorBody),
        (status = 415, description = "unsupported_media_type", body = ErrorBody),
        (status = 422, description = "poll_not_open, invalid_option", body = ErrorBody),
        (status = 429, description = "rate_limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "unavailable: retry with the same key", body = ErrorBody)))]
pub async fn cast_vote(
    State(gateway): Shared,
    voter: Result<Voter, ApiError>,
    PollId(poll_id): PollId,
    headers: HeaderMap,
    body: Result<StrictJson<VoteRequest>, ApiError>,
) -> Result<(StatusCode, Json<VoteAccepted>), ApiError> {
    let started = Instant::now();
    let answer = async {
        let Voter(caller) = voter?;
        if let Err(retry_after_s) = gateway.voter_limits.check(&caller.subject, Instant::now()) {
            gateway
                .metrics
                .rate_limited_voter
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::RateLimited { retry_after_s });
        }
        let StrictJson(request) = body?;
        accept_vote(
            &gateway,
            &caller.subject,
            &poll_id,
            &request.option,
            &headers,
        )
        .await
    }
    .await;
    match &answer {
        Ok(_) => {
            gateway
                .metrics
                .votes_accepted
                .fetch_add(1, Ordering::Relaxed);
            gateway
                .metrics
                .vote_latency(started.elapsed().as_millis() as u64);
        }
        Err(error) => gateway.metrics.refused(error.status_and_code().1),
    }
    answer.map(|accepted| (StatusCode::ACCEPTED, Json(accepted)))
}

async fn accept_vote(
    gateway: &Gateway,
    voter_id: &str,
    poll_id: &str,
    option: &str,
    headers: &HeaderMap,
) -> Result<VoteAccepted, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value.to_str().unwrap_or_default();
            if !valid_id(key, MAX_VOTE_ID_CHARS) {
                return Err(ApiError::InvalidIdempotencyKey(format!(
                    "Idempotency-Key must be 1 to {MAX_VOTE_ID_CHARS} characters of [A-Za-z0-9._:@-]"
                )));
            }
            Some(key.to_owned())
        }
    };
    let poll = existing_poll(gateway, poll_id).await?;
    let now = now_millis();
    if poll.status != PollStatus::Open || !poll.is_open_at(now) {
        return Err(ApiError::PollNotOpen(format!(
            "poll {poll_id} is {} and not taking votes now",
            poll.status
        )));
    }
    if !poll.options.iter().any(|candidate| candidate.id == option) {
        return Err(ApiError::InvalidOption(format!(
            "poll {poll_id} has no option {:?}",
            option.chars().take(MAX_ID_CHARS).collect::<String>()
        )));
    }
    let accepted = |vote_id: &str| VoteAccepted {
        vote_id: vote_id.to_owned(),
        poll_id: poll_id.to_owned(),
        status: "accepted".into(),
    };
    let remembered_key = key
        .as_ref()
        .map(|key| (voter_id.to_owned(), poll_id.to_owned(), key.clone()));
    if let Some(remembered_key) = &remembered_key {
        if let Some(earlier) = gateway.remembered(remembered_key) {
            if earlier.option != option {
                return Err(ApiError::IdempotencyKeyReused(remembered_key.2.clone()));
            }
            return Ok(accepted(&remembered_key.2));
        }
    }
    if let Some(vote) = gateway.lookups.get(poll_id, voter_id).await? {
        if key.as_deref() == Some(vote.vote_id.as_str()) {
            if vote.option != option {
                return Err(ApiError::IdempotencyKeyReused(vote.vote_id));
            }
            return Ok(accepted(&vote.vote_id));
        }
        return Err(ApiError::AlreadyVoted {
            poll_id: poll_id.to_owned(),
            vote: serde_json::to_value(counted_vote(&vote)).unwrap_or_default(),
        });
    }
    let vote_id = key.clone().unwrap_or_else(new_vote_id);
    let record = tally_producer::VoteBuilder::new(&vote_id, poll_id, option, voter_id)
        .cast_at(format_rfc3339(now))
        .build()
        .map_err(|error| ApiError::InvalidBody(error.to_string()))?;
    let receipt = gateway
        .producer
        .try_send(record)
        .map_err(|error| ApiError::Unavailable(format!("cannot take the vote now: {error}")))?;
    match tokio::time::timeout(Duration::from_millis(gateway.args.vote_timeout_ms), receipt).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            return Err(ApiError::Unavailable(format!(
                "the vote did not reach the stream: {error}"
            )))
        }
        Err(_) => {
            return Err(ApiError::Unavailable(
                "the vote did not reach the stream in time".into(),
            ))
        }
    }
    if let Some(remembered_key) = remembered_key {
        gateway.remember(remembered_key, option.to_owned());
    }
    Ok(accepted(&vote_id))
}

/// The caller's vote in a poll.
#[utoipa::path(get, path = "/v1/polls/{poll}/votes/me", tag = "votes",
    params(("poll" = String, Path, description = "The poll's id", example = "demo")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What became of the caller's vote", body = VoteStatus),
        (status = 400, description = "invalid_parameter", body = ErrorBody),
        (status = 401, description = "missing_token, invalid_token, token_expired", body = ErrorBody),
        (status = 404, description = "poll_not_found", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn my_vote(
    State(gateway): Shared,
    Voter(caller): Voter,
    PollId(poll_id): PollId,
) -> Result<Json<VoteStatus>, ApiError> {
    existing_poll(&gateway, &poll_id).await?;
    let counted = gateway.store.get_vote(&poll_id, &caller.subject).await?;
    let rejected: Vec<RejectedVote> = gateway
        .store
        .rejects_of(&poll_id, &caller.subject)
        .await?
        .iter()
        .map(|reject| RejectedVote {
            vote_id: reject.vote_id.clone(),
            reason: reject.reason.as_str().to_owned(),
            detail: reject.detail.clone(),
            position: reject.origin.key(),
            arrived_at: format_rfc3339(reject.arrival_ms),
        })
        .collect();
    let status = match (&counted, rejected.is_empty()) {
        (Some(_), _) => "counted",
        (None, false) => "rejected",
        (None, true) => "unknown",
    };
    Ok(Json(VoteStatus {
        poll_id,
        voter_id: caller.subject,
        status: status.into(),
        counted: counted.as_ref().map(counted_vote),
        rejected,
    }))
}
