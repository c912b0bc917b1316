//! The extractors: the verified caller, the poll id from the path and the
//! JSON bodies.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use crate::auth::{bearer, Caller};
use crate::error::ApiError;
use crate::Gateway;
use tally_contract::vote::{valid_id, MAX_ID_CHARS};

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

/// The verified caller when the request carries a token (a token that
/// does not verify is refused), `None` without one.
pub struct MaybeCaller(pub Option<Caller>);

impl FromRequestParts<Arc<Gateway>> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Arc<Gateway>,
    ) -> Result<Self, Self::Rejection> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(MaybeCaller(None));
        }
        let Voter(caller) = Voter::from_request_parts(parts, gateway).await?;
        Ok(MaybeCaller(Some(caller)))
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
