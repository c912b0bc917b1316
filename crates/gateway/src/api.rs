//! The JSON API under `/v1`, the operator endpoints, and the OpenAPI 3.1
//! document generated from these handlers' annotations.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{OpenApi, ToSchema};

use super::auth::{bearer, Caller};
use super::error::ApiError;
use super::results::{OptionCount, Results, Snapshot};
use super::Gateway;
use tally_contract::time::{format_rfc3339, now_millis, parse_rfc3339};
use tally_contract::vote::{valid_id, MAX_ID_CHARS, MAX_VOTE_ID_CHARS};
use tally_core::poll::{Poll, PollOption, PollStatus};
use tally_store::admin::PollOpError;

type Shared = State<Arc<Gateway>>;

// ---------------------------------------------------------------- types

/// A vote: the option only. The voter is the token's subject.
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

// ---------------------------------------------------------------- extractors

/// A verified voter.
pub struct Voter(pub Caller);

impl FromRequestParts<Arc<Gateway>> for Voter {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)?;
        Ok(Voter(gateway.verifier.verify(token).await?))
    }
}

/// A verified caller with the admin role.
pub struct Admin(pub Caller);

impl FromRequestParts<Arc<Gateway>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Self, Self::Rejection> {
        let Voter(caller) = Voter::from_request_parts(parts, gateway).await?;
        if !caller.admin {
            return Err(ApiError::Forbidden(format!(
                "this route needs the {} role",
                gateway.args.auth_admin_role
            )));
        }
        Ok(Admin(caller))
    }
}

/// A valid poll id from the path.
pub struct PollId(pub String);

impl FromRequestParts<Arc<Gateway>> for PollId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, gateway)
            .await
            .map_err(|e| ApiError::InvalidParameter(format!("poll id: {e}")))?;
        if !valid_id(&id, MAX_ID_CHARS) {
            return Err(ApiError::InvalidParameter(format!(
                "poll id must be 1 to {MAX_ID_CHARS} characters of [A-Za-z0-9._:@-]"
            )));
        }
        Ok(PollId(id))
    }
}

/// A JSON body: `application/json`, within the size limit, no unknown
/// fields.
pub struct StrictJson<T>(pub T);

async fn read_body(request: Request, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::BodyTooLarge(limit))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

impl<T: DeserializeOwned> FromRequest<Arc<Gateway>> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, gateway: &Arc<Gateway>) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = read_body(request, gateway.args.max_body_bytes as usize).await?;
        serde_json::from_slice(&bytes)
            .map(StrictJson)
            .map_err(|e| ApiError::InvalidBody(format!("invalid JSON body: {e}")))
    }
}

/// An optional JSON body: empty, or as [`StrictJson`].
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<Arc<Gateway>> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, gateway: &Arc<Gateway>) -> Result<Self, ApiError> {
        let json = is_json(request.headers());
        let bytes = read_body(request, gateway.args.max_body_bytes as usize).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        serde_json::from_slice(&bytes)
            .map(|value| OptionalJson(Some(value)))
            .map_err(|e| ApiError::InvalidBody(format!("invalid JSON body: {e}")))
    }
}

// ---------------------------------------------------------------- routes

/// The API and operator routes (`dev_tokens`: also the demo token mint).
pub fn routes(dev_tokens: bool) -> Router<Arc<Gateway>> {
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
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi));
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
    if let Some(vote) = gateway.store.get_vote(poll_id, voter_id).await? {
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

/// A poll's live results (no older than 250 ms).
#[utoipa::path(get, path = "/v1/polls/{poll}/results", tag = "results",
    params(("poll" = String, Path, description = "The poll's id", example = "demo")),
    responses(
        (status = 200, description = "The sum of the poll's counters", body = Results),
        (status = 400, description = "invalid_parameter", body = ErrorBody),
        (status = 404, description = "poll_not_found", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn results(
    State(gateway): Shared,
    PollId(poll_id): PollId,
) -> Result<Json<Results>, ApiError> {
    Ok(Json(gateway.hub.current(&poll_id).await?.results.clone()))
}

/// Counts one open results stream while it lives.
struct StreamGuard(Arc<Gateway>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.metrics.sse_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

fn results_event(snapshot: &Snapshot) -> Event {
    Event::default()
        .event("results")
        .id(snapshot.id.clone())
        .json_data(&snapshot.results)
        .unwrap_or_else(|_| Event::default().comment("unserialisable results"))
}

/// A poll's results as Server-Sent Events.
#[utoipa::path(get, path = "/v1/polls/{poll}/results/stream", tag = "results",
    params(("poll" = String, Path, description = "The poll's id", example = "demo"),
           ("Last-Event-ID" = Option<String>, Header, description = "The last event's id: the current results are sent at once only if they changed since")),
    responses(
        (status = 200, description = "`text/event-stream`: a `results` event (data: Results, id: `<total>-<status>`) on every change, a heartbeat comment in between", content_type = "text/event-stream", body = String),
        (status = 400, description = "invalid_parameter", body = ErrorBody),
        (status = 404, description = "poll_not_found", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
        (status = 503, description = "unavailable (too many streams on this process)", body = ErrorBody)))]
pub async fn results_stream(
    State(gateway): Shared,
    PollId(poll_id): PollId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if gateway.metrics.sse_clients.fetch_add(1, Ordering::Relaxed) >= gateway.args.max_sse_clients {
        gateway.metrics.sse_clients.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::Unavailable(
            "too many results streams on this process".into(),
        ));
    }
    let guard = StreamGuard(gateway.clone());
    let (current, receiver) = gateway.hub.subscribe(&poll_id).await?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let first = (last_event_id.as_deref() != Some(current.id.as_str())).then(|| current.clone());
    struct State {
        first: Option<Arc<Snapshot>>,
        last: String,
        receiver: tokio::sync::broadcast::Receiver<Arc<Snapshot>>,
        gateway: Arc<Gateway>,
        poll_id: String,
        _guard: StreamGuard,
    }
    let state = State {
        first,
        last: current.id.clone(),
        receiver,
        gateway: gateway.clone(),
        poll_id,
        _guard: guard,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        if let Some(first) = state.first.take() {
            return Some((Ok::<_, Infallible>(results_event(&first)), state));
        }
        loop {
            let next = tokio::select! {
                _ = state.gateway.closing.cancelled() => return None,
                next = state.receiver.recv() => next,
            };
            let snapshot = match next {
                Ok(snapshot) => snapshot,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    match state.gateway.hub.current(&state.poll_id).await {
                        Ok(snapshot) => snapshot,
                        Err(_) => continue,
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            if snapshot.id != state.last {
                state.last = snapshot.id.clone();
                return Some((Ok(results_event(&snapshot)), state));
            }
        }
    });
    let mut response = Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_millis(gateway.args.sse_heartbeat_ms))
                .text("heartbeat"),
        )
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    Ok(response)
}

/// Every poll.
#[utoipa::path(get, path = "/v1/polls", tag = "polls",
    responses(
        (status = 200, description = "The polls", body = PollList),
        (status = 429, description = "rate_limited", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn list_polls(State(gateway): Shared) -> Result<Json<PollList>, ApiError> {
    let polls = gateway.store.list_polls().await?;
    Ok(Json(PollList {
        polls: polls.iter().map(poll_view).collect(),
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

/// The pipeline's health, from the workers' metrics (admin).
#[utoipa::path(get, path = "/v1/pipeline", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Votes per second, lag and rejects by reason", body = PipelineHealth),
        (status = 401, description = "missing_token, invalid_token, token_expired", body = ErrorBody),
        (status = 403, description = "forbidden: not an admin", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody)))]
pub async fn pipeline(
    State(gateway): Shared,
    Admin(_admin): Admin,
) -> Result<Json<PipelineHealth>, ApiError> {
    let fetches = gateway.args.worker_metrics_urls.iter().map(|url| {
        let client = gateway.http.clone();
        async move {
            let answer = async {
                let response = client.get(url).send().await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("answered {}", response.status()));
                }
                response
                    .json::<serde_json::Value>()
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            (url.clone(), answer)
        }
    });
    let mut health = PipelineHealth {
        workers: Vec::new(),
        votes_counted_total: 0,
        votes_duplicate_total: 0,
        votes_per_second: 0.0,
        millis_behind_max: 0,
        rejected_by_reason: BTreeMap::new(),
    };
    for (url, answer) in futures::future::join_all(fetches).await {
        match answer {
            Ok(metrics) => {
                let counted = metrics["tally_votes_counted_total"].as_u64().unwrap_or(0);
                let behind = metrics["tally_lease_millis_behind_latest"]
                    .as_i64()
                    .unwrap_or(0);
                health.votes_counted_total += counted;
                health.votes_duplicate_total +=
                    metrics["tally_votes_duplicate_total"].as_u64().unwrap_or(0);
                health.millis_behind_max = health.millis_behind_max.max(behind);
                if let Some(rejected) = metrics["tally_votes_rejected_total"].as_object() {
                    for (reason, count) in rejected {
                        *health.rejected_by_reason.entry(reason.clone()).or_default() +=
                            count.as_u64().unwrap_or(0);
                    }
                }
                health.workers.push(WorkerHealth {
                    url,
                    up: true,
                    worker_id: metrics["worker_id"].as_str().map(str::to_owned),
                    votes_counted: counted,
                    millis_behind: behind,
                    error: None,
                });
            }
            Err(error) => health.workers.push(WorkerHealth {
                url,
                up: false,
                worker_id: None,
                votes_counted: 0,
                millis_behind: 0,
                error: Some(error),
            }),
        }
    }
    let now = Instant::now();
    let mut sample = gateway
        .pipeline_sample
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((at, counted)) = *sample {
        let seconds = now.duration_since(at).as_secs_f64();
        if seconds > 0.0 {
            health.votes_per_second =
                ((health.votes_counted_total.saturating_sub(counted)) as f64 / seconds * 10.0)
                    .round()
                    / 10.0;
        }
    }
    *sample = Some((now, health.votes_counted_total));
    Ok(Json(health))
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the token keys, the vote tables and the stream answer, and
/// the gateway is not stopping.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Health),
              (status = 503, description = "not_ready, with the reason", body = ErrorBody)))]
pub async fn readyz(State(gateway): Shared) -> Result<Json<Health>, ApiError> {
    gateway.readiness().await.map_err(ApiError::NotReady)?;
    Ok(Json(Health {
        status: "ready".into(),
    }))
}

/// Metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub async fn metrics(State(gateway): Shared) -> impl IntoResponse {
    let producer = gateway.producer.metrics();
    // -1: the tables could not be read.
    let mismatches = gateway
        .recount_mismatches()
        .await
        .map(|count| count as f64)
        .unwrap_or(-1.0);
    let text = gateway.metrics.render(&[
        (
            "tally_recount_mismatch_polls",
            "Closed polls whose recount differs from their tallies (see tally audit).",
            "gauge",
            mismatches,
        ),
        (
            "tally_gateway_results_reads_total",
            "Reads of counter items for live results.",
            "counter",
            gateway.hub.reads.load(Ordering::Relaxed) as f64,
        ),
        (
            "tally_gateway_results_loops",
            "Polls with a running results read loop.",
            "gauge",
            gateway.hub.loops.load(Ordering::Relaxed) as f64,
        ),
        (
            "tally_producer_user_records_put_total",
            "Votes put on the stream.",
            "counter",
            producer.user_records_put.load(Ordering::Relaxed) as f64,
        ),
        (
            "tally_producer_kinesis_records_put_total",
            "Kinesis records put (aggregates count once).",
            "counter",
            producer.kinesis_records_put.load(Ordering::Relaxed) as f64,
        ),
        (
            "tally_producer_buffered_records",
            "Votes waiting to be put.",
            "gauge",
            producer.buffered_records() as f64,
        ),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn openapi() -> impl IntoResponse {
    Json(spec().clone())
}

/// A demo token (local mode only; off unless TALLY_DEV_TOKENS is set).
/// `?role=admin` mints an admin token; otherwise a token for a new random
/// voter.
pub async fn dev_token(
    State(gateway): Shared,
    axum::extract::Query(query): axum::extract::Query<BTreeMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let admin = match query.get("role").map(String::as_str) {
        None | Some("voter") => false,
        Some("admin") => true,
        Some(other) => {
            return Err(ApiError::InvalidParameter(format!(
                "role {other:?}: voter or admin"
            )))
        }
    };
    let subject = if admin {
        "demo-admin".to_owned()
    } else {
        format!("demo-{:016x}", rand::random::<u64>())
    };
    let lifetime = Duration::from_secs(12 * 3600);
    let token = gateway
        .verifier
        .mint(&subject, admin, lifetime)
        .map_err(ApiError::Internal)?;
    Ok(Json(serde_json::json!({
        "token": token,
        "voter_id": subject,
        "role": if admin { "admin" } else { "voter" },
        "expires_at": format_rfc3339(now_millis() + lifetime.as_millis() as i64),
    })))
}

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT whose subject is the voter; admin routes need the admin role",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tally gateway", description = "Votes, polls and live results. Every error is `{\"error\": {\"code\", \"message\"}}` with a stable code."),
    paths(cast_vote, my_vote, results, results_stream, list_polls, get_poll, create_poll,
          open_poll, close_poll, pipeline, healthz, readyz, metrics, openapi),
    components(schemas(VoteRequest, VoteAccepted, ErrorBody, ErrorDetail, CountedVote, RejectedVote,
                       VoteStatus, OptionView, PollView, PollList, OptionInput, CreatePoll,
                       CloseRequest, WorkerHealth, PipelineHealth, Health, Results, OptionCount)),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// The OpenAPI document, built once.
pub fn spec() -> &'static utoipa::openapi::OpenApi {
    static SPEC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut spec = ApiDoc::openapi();
        spec.info.version = env!("CARGO_PKG_VERSION").into();
        spec
    })
}
