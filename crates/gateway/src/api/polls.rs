//! Reading polls, and creating, opening and closing them (admin).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::dto::{CloseRequest, CreatePoll, ErrorBody, PollList, PollView};
use super::extract::{Admin, MaybeCaller, OptionalJson, PollId, StrictJson};
use super::{existing_poll, poll_view, Shared};
use crate::error::ApiError;
use tally_contract::time::{format_rfc3339, now_millis, parse_rfc3339};
use tally_core::poll::{Poll, PollOption, PollStatus};
use tally_store::admin::PollOpError;

/// Every poll: drafts only to admins (with an admin token, read fresh);
/// to everyone else, the list read at most once a second per process.
#[utoipa::path(get, path = "/v1/polls", tag = "polls",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The polls", body = PollList),
        (status = 401, description = "invalid_token (a token was sent and does not verify)", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn list_polls(
    State(gateway): Shared,
    MaybeCaller(caller): MaybeCaller,
) -> Result<Json<PollList>, ApiError> {
    let admin = caller.is_some_and(|caller| caller.admin);
    let polls = if admin {
        Arc::new(gateway.store.list_polls().await?)
    } else {
        gateway.public_polls().await?
    };
    Ok(Json(PollList {
        polls: polls
            .iter()
            .filter(|poll| admin || poll.status != PollStatus::Draft)
            .map(poll_view)
            .collect(),
    }))
}

/// One poll.
#[utoipa::path(get, path = "/v1/polls/{poll}", tag = "polls",
    params(("poll" = String, Path, description = "The poll's id", example = "demo")),
    responses(
        (status = 200, description = "The poll", body = PollView),
        (status = 400, description = "invalid_parameter", body = ErrorBody),
        (status = 404, description = "poll_not_found", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn get_poll(
    State(gateway): Shared,
    PollId(poll_id): PollId,
) -> Result<Json<PollView>, ApiError> {
    let poll = existing_poll(&gateway, &poll_id).await?;
    Ok(Json(poll_view(&poll)))
}

/// Creates a poll (admin).
#[utoipa::path(post, path = "/v1/polls", tag = "admin",
    request_body = CreatePoll,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created (or the same definition existed)", body = PollView),
        (status = 400, description = "invalid_body", body = ErrorBody),
        (status = 401, description = "missing_token, invalid_token, token_expired", body = ErrorBody),
        (status = 403, description = "forbidden: not an admin", body = ErrorBody),
        (status = 409, description = "poll_exists with another definition", body = ErrorBody),
        (status = 413, description = "body_too_large", body = ErrorBody),
        (status = 415, description = "unsupported_media_type", body = ErrorBody),
        (status = 422, description = "invalid_poll", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn create_poll(
    State(gateway): Shared,
    admin: Result<Admin, ApiError>,
    body: Result<StrictJson<CreatePoll>, ApiError>,
) -> Result<(StatusCode, Json<PollView>), ApiError> {
    let Admin(caller) = admin?;
    let StrictJson(request) = body?;
    let time = |text: &Option<String>, field: &str| -> Result<Option<i64>, ApiError> {
        text.as_deref()
            .map(|text| {
                parse_rfc3339(text).ok_or_else(|| {
                    ApiError::InvalidPoll(format!(
                        "invalid {field}: {text:?} is not an RFC 3339 time"
                    ))
                })
            })
            .transpose()
    };
    let poll = Poll {
        id: request.poll_id.clone(),
        question: request.question.clone(),
        options: request
            .options
            .iter()
            .map(|option| PollOption {
                id: option.id.clone(),
                label: option.label.clone().unwrap_or_else(|| option.id.clone()),
            })
            .collect(),
        opens_at: time(&request.opens_at, "opens_at")?,
        closes_at: time(&request.closes_at, "closes_at")?,
        status: PollStatus::Draft,
        counter_shards: request
            .counter_shards
            .unwrap_or(tally_core::poll::DEFAULT_COUNTER_SHARDS),
        created_at: now_millis(),
    };
    poll.validate()
        .map_err(|error| ApiError::InvalidPoll(error.to_string()))?;
    let created =
        tally_store::admin::create_poll(gateway.store.as_ref(), poll, request.open == Some(true))
            .await
            .map_err(|error| match error {
                PollOpError::Exists(id) => ApiError::PollExists(id),
                PollOpError::Store(error) => ApiError::Unavailable(error.to_string()),
                other => ApiError::InvalidPoll(other.to_string()),
            })?;
    gateway.polls.forget(&created.id).await;
    tracing::info!(poll_id = %created.id, admin = %caller.subject, "poll created");
    Ok((StatusCode::CREATED, Json(poll_view(&created))))
}

fn transition_error(error: PollOpError) -> ApiError {
    match error {
        PollOpError::NotFound(id) => ApiError::PollNotFound(id),
        PollOpError::Store(error) => ApiError::Unavailable(error.to_string()),
        other => ApiError::PollState(other.to_string()),
    }
}

/// Opens a poll now (admin).
#[utoipa::path(post, path = "/v1/polls/{poll}/open", tag = "admin",
    params(("poll" = String, Path, description = "The poll's id", example = "demo")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Opened", body = PollView),
        (status = 400, description = "invalid_parameter", body = ErrorBody),
        (status = 401, description = "missing_token, invalid_token, token_expired", body = ErrorBody),
        (status = 403, description = "forbidden: not an admin", body = ErrorBody),
        (status = 404, description = "poll_not_found", body = ErrorBody),
        (status = 409, description = "poll_state: it cannot be opened", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn open_poll(
    State(gateway): Shared,
    Admin(caller): Admin,
    PollId(poll_id): PollId,
) -> Result<Json<PollView>, ApiError> {
    let poll = tally_store::admin::open_poll(gateway.store.as_ref(), &poll_id)
        .await
        .map_err(transition_error)?;
    gateway.polls.forget(&poll_id).await;
    tracing::info!(poll_id = %poll_id, admin = %caller.subject, "poll opened");
    Ok(Json(poll_view(&poll)))
}

/// Closes a poll (admin): votes that arrived before the closing time count.
#[utoipa::path(post, path = "/v1/polls/{poll}/close", tag = "admin",
    params(("poll" = String, Path, description = "The poll's id", example = "demo")),
    request_body(content = Option<CloseRequest>, description = "Optional; default: 2 s from now"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Closing at the time shown", body = PollView),
        (status = 400, description = "invalid_body, invalid_parameter", body = ErrorBody),
        (status = 401, description = "missing_token, invalid_token, token_expired", body = ErrorBody),
        (status = 403, description = "forbidden: not an admin", body = ErrorBody),
        (status = 404, description = "poll_not_found", body = ErrorBody),
        (status = 409, description = "poll_state: it cannot be closed", body = ErrorBody),
        (status = 413, description = "body_too_large", body = ErrorBody),
        (status = 415, description = "unsupported_media_type", body = ErrorBody),
        (status = 422, description = "invalid_poll: a bad or past time", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn close_poll(
    State(gateway): Shared,
    admin: Result<Admin, ApiError>,
    PollId(poll_id): PollId,
    body: Result<OptionalJson<CloseRequest>, ApiError>,
) -> Result<Json<PollView>, ApiError> {
    let Admin(caller) = admin?;
    let OptionalJson(request) = body?;
    let now = now_millis();
    let at = match request.and_then(|request| request.at) {
        None => now + tally_store::admin::CLOSE_GRACE.as_millis() as i64,
        Some(text) => {
            let at = parse_rfc3339(&text).ok_or_else(|| {
                ApiError::InvalidPoll(format!("invalid at: {text:?} is not an RFC 3339 time"))
            })?;
            if at < now {
                return Err(ApiError::InvalidPoll(format!(
                    "invalid at: {text} is in the past; votes already counted stay counted"
                )));
            }
            at
        }
    };
    let poll = tally_store::admin::close_poll(gateway.store.as_ref(), &poll_id, at)
        .await
        .map_err(transition_error)?;
    gateway.polls.forget(&poll_id).await;
    tracing::info!(poll_id = %poll_id, admin = %caller.subject, closes_at = %format_rfc3339(at), "poll closing");
    Ok(Json(poll_view(&poll)))
}
