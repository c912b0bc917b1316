//! A poll's live results, as JSON and as Server-Sent Events.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::dto::ErrorBody;
use super::extract::{MaybeCaller, PollId};
use super::{existing_poll, Shared};
use crate::error::ApiError;
use crate::limit::StreamSlot;
use crate::results::{Results, Snapshot};
use crate::ClientAddress;
use crate::Gateway;
use axum::Extension;

/// `Cache-Control` of a poll's results: a second (and two more served
/// stale while a cache revalidates) while the counts can change, a day
/// once they are final.
pub const LIVE_CACHE_CONTROL: &str = "public, max-age=1, stale-while-revalidate=2";
pub const FINAL_CACHE_CONTROL: &str = "public, max-age=86400";

/// True when `If-None-Match` names `etag` (or is `*`); weak tags compare
/// by their value, as RFC 9110 asks for this header.
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim())
        .any(|tag| {
            tag == "*"
                || tag.strip_prefix("W/").unwrap_or(tag) == etag.strip_prefix("W/").unwrap_or(etag)
        })
}

/// A poll's live results (no older than 250 ms), cacheable: `ETag` is the
/// event id (`"<total>-<status>"`), a matching `If-None-Match` gets a 304,
/// and `Cache-Control` lets a CDN serve them for a second (a day once
/// final).
#[utoipa::path(get, path = "/v1/polls/{poll}/results", tag = "results",
    params(("poll" = String, Path, description = "The poll's id", example = "demo"),
           ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer: 304 if the results are still those")),
    responses(
        (status = 200, description = "The sum of the poll's counters, with `ETag` and `Cache-Control`", body = Results),
        (status = 304, description = "Not modified since the ETag named in If-None-Match"),
        (status = 400, description = "invalid_parameter", body = ErrorBody),
        (status = 404, description = "poll_not_found", body = ErrorBody),
        (status = 429, description = "rate_limited", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn results(
    State(gateway): Shared,
    PollId(poll_id): PollId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let snapshot = gateway.hub.current(&poll_id).await?;
    // Weak: bodies with one tag differ in `as_of` and `votes_per_second`,
    // which a revalidation need not fetch again.
    let etag = format!("W/\"{}\"", snapshot.id);
    let cache_control = if snapshot.results.status == "final" {
        FINAL_CACHE_CONTROL
    } else {
        LIVE_CACHE_CONTROL
    };
    let mut response = if none_match(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(&snapshot.results).into_response()
    };
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static(cache_control),
    );
    if let Ok(value) = header::HeaderValue::from_str(&etag) {
        response_headers.insert(header::ETAG, value);
    }
    Ok(response)
}

/// Counts one open results stream while it lives (in all, by address, by
/// subject).
struct StreamGuard {
    gateway: Arc<Gateway>,
    _by_address: StreamSlot,
    _by_subject: Option<StreamSlot>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.gateway
            .metrics
            .sse_clients
            .fetch_sub(1, Ordering::Relaxed);
    }
}

fn results_event(snapshot: &Snapshot) -> Event {
    Event::default()
        .event("results")
        .id(snapshot.id.clone())
        .json_data(&snapshot.results)
        .unwrap_or_else(|_| Event::default().comment("unserialisable results"))
}

/// The answer to a stream request while streams are shed: one `poll`
/// event naming the results URL and how often to read it, then the end.
fn poll_instead(gateway: &Gateway, poll_id: &str) -> Response {
    let event = Event::default().event("poll").json_data(serde_json::json!({
        "url": format!("/v1/polls/{poll_id}/results"),
        "interval_ms": gateway.args.results_poll_ms,
    }));
    let events = futures::stream::iter(event.into_iter().map(Ok::<_, Infallible>));
    Sse::new(events).into_response()
}

/// A poll's results as Server-Sent Events.
#[utoipa::path(get, path = "/v1/polls/{poll}/results/stream", tag = "results",
    params(("poll" = String, Path, description = "The poll's id", example = "demo"),
           ("Last-Event-ID" = Option<String>, Header, description = "The last event's id: the current results are sent at once only if they changed since")),
    responses(
        (status = 200, description = "`text/event-stream`: a `results` event (data: Results, id: `<total>-<status>`) on every change, a heartbeat comment in between; or, while the gateway sheds streams (TALLY_SSE_SHED_AT), one `poll` event (data: `{\"url\", \"interval_ms\"}`) and the end", content_type = "text/event-stream", body = String),
        (status = 400, description = "invalid_parameter", body = ErrorBody),
        (status = 404, description = "poll_not_found", body = ErrorBody),
        (status = 429, description = "rate_limited, or too many streams from this address or voter (with Retry-After)", body = ErrorBody),
        (status = 503, description = "unavailable (too many streams on this process)", body = ErrorBody)))]
pub async fn results_stream(
    State(gateway): Shared,
    PollId(poll_id): PollId,
    MaybeCaller(caller): MaybeCaller,
    address: Option<Extension<ClientAddress>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let open = gateway.metrics.sse_clients.load(Ordering::Relaxed);
    if gateway.args.sse_shed_at.is_some_and(|at| open >= at) {
        // The poll must exist, as for a stream.
        existing_poll(&gateway, &poll_id).await?;
        return Ok(poll_instead(&gateway, &poll_id));
    }
    let retry = || ApiError::RateLimited { retry_after_s: 5 };
    let address = address.map_or_else(|| "unknown".to_owned(), |Extension(a)| a.0);
    let by_address = gateway
        .streams
        .acquire(format!("a:{address}"), gateway.args.max_sse_per_address)
        .ok_or_else(retry)?;
    let by_subject = match &caller {
        Some(caller) => Some(
            gateway
                .streams
                .acquire(
                    format!("s:{}", caller.subject),
                    gateway.args.max_sse_per_subject,
                )
                .ok_or_else(retry)?,
        ),
        None => None,
    };
    if gateway.metrics.sse_clients.fetch_add(1, Ordering::Relaxed) >= gateway.args.max_sse_clients {
        gateway.metrics.sse_clients.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::Unavailable(
            "too many results streams on this process".into(),
        ));
    }
    let guard = StreamGuard {
        gateway: gateway.clone(),
        _by_address: by_address,
        _by_subject: by_subject,
    };
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
