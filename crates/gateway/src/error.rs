//! Every error the gateway answers with, and the one place that maps each
//! to its HTTP status and stable code. A body is always JSON:
//! `{"error": {"code": "...", "message": "..."}}`, plus the counted vote
//! for `already_voted`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use tally_store::VoteStoreError;

/// An error answer. `code` values are a public contract: clients branch on
/// them, so they never change meaning.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidBody(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    #[error("a bearer token is required (Authorization: Bearer <jwt>)")]
    MissingToken,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("the token has expired")]
    TokenExpired,
    #[error("{0}")]
    Forbidden(String),
    #[error("no poll {0}")]
    PollNotFound(String),
    #[error("no such route: {0}")]
    NotFound(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("you already have a counted vote in poll {poll_id}")]
    AlreadyVoted {
        poll_id: String,
        vote: serde_json::Value,
    },
    #[error("poll {0} exists with another definition")]
    PollExists(String),
    #[error("{0}")]
    PollState(String),
    #[error("idempotency key {0} was used for another vote")]
    IdempotencyKeyReused(String),
    #[error("the body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("the body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("{0}")]
    PollNotOpen(String),
    #[error("{0}")]
    InvalidOption(String),
    #[error("{0}")]
    InvalidPoll(String),
    #[error("too many requests; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The status and the stable code of each error: the only mapping.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidBody(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            ApiError::InvalidParameter(_) => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            ApiError::InvalidIdempotencyKey(_) => {
                (StatusCode::BAD_REQUEST, "invalid_idempotency_key")
            }
            ApiError::MissingToken => (StatusCode::UNAUTHORIZED, "missing_token"),
            ApiError::InvalidToken(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            ApiError::TokenExpired => (StatusCode::UNAUTHORIZED, "token_expired"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::PollNotFound(_) => (StatusCode::NOT_FOUND, "poll_not_found"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::AlreadyVoted { .. } => (StatusCode::CONFLICT, "already_voted"),
            ApiError::PollExists(_) => (StatusCode::CONFLICT, "poll_exists"),
            ApiError::PollState(_) => (StatusCode::CONFLICT, "poll_state"),
            ApiError::IdempotencyKeyReused(_) => (StatusCode::CONFLICT, "idempotency_key_reused"),
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::PollNotOpen(_) => (StatusCode::UNPROCESSABLE_ENTITY, "poll_not_open"),
            ApiError::InvalidOption(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_option"),
            ApiError::InvalidPoll(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_poll"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// Seconds a client should wait before trying again, when it should.
    fn retry_after_s(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after_s } => Some(*retry_after_s),
            ApiError::Unavailable(_) | ApiError::NotReady(_) => Some(1),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let (_, code) = self.status_and_code();
        let mut body = serde_json::json!({
            "error": {"code": code, "message": self.to_string()}
        });
        if let ApiError::AlreadyVoted { vote, .. } = self {
            body["vote"] = vote.clone();
        }
        body
    }
}

impl From<VoteStoreError> for ApiError {
    fn from(error: VoteStoreError) -> Self {
        if error.is_retryable() {
            ApiError::Unavailable(format!("the vote tables are busy: {error}"))
        } else {
            ApiError::Internal(error.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(code, error = %self, detail = ?self, "request failed");
        }
        let mut response = (status, Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_s() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(
            self,
            ApiError::MissingToken | ApiError::InvalidToken(_) | ApiError::TokenExpired
        ) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tally\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_one_status_and_a_json_body_with_its_code() {
        let errors = [
            ApiError::MissingToken,
            ApiError::RateLimited { retry_after_s: 3 },
            ApiError::AlreadyVoted {
                poll_id: "p".into(),
                vote: serde_json::json!({"option": "a"}),
            },
            ApiError::Internal("secret detail".into()),
        ];
        let statuses: Vec<u16> = errors
            .iter()
            .map(|e| e.status_and_code().0.as_u16())
            .collect();
        assert_eq!(statuses, [401, 429, 409, 500]);
        assert_eq!(errors[2].body()["vote"]["option"], "a");
        assert_eq!(errors[2].body()["error"]["code"], "already_voted");
        assert!(
            !errors[3].body().to_string().contains("secret detail"),
            "internal details stay in the logs"
        );
        let response = ApiError::RateLimited { retry_after_s: 3 }.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
