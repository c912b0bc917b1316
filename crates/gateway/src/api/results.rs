//! A poll's live results, as JSON and as Server-Sent Events.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::dto::ErrorBody;
use super::extract::PollId;
use super::Shared;
use crate::error::ApiError;
use crate::results::{Results, Snapshot};
use crate::Gateway;

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
