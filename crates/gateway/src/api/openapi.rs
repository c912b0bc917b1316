//! The OpenAPI 3.1 document: its handler, the bearer security scheme and
//! the list of paths and schemas.

use std::sync::OnceLock;

use axum::response::IntoResponse;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;

use super::{dto, ops, polls, results, votes};
use crate::results::{OptionCount, Results};

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn openapi() -> impl IntoResponse {
    Json(spec().clone())
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
    paths(votes::cast_vote, votes::my_vote, results::results, results::results_stream,
          polls::list_polls, polls::get_poll, polls::create_poll, polls::open_poll,
          polls::close_poll, ops::pipeline, ops::healthz, ops::readyz, ops::metrics, openapi),
    components(schemas(dto::VoteRequest, dto::VoteAccepted, dto::ErrorBody, dto::ErrorDetail,
                       dto::CountedVote, dto::RejectedVote, dto::VoteStatus, dto::OptionView,
                       dto::PollView, dto::PollList, dto::OptionInput, dto::CreatePoll,
                       dto::CloseRequest, dto::WorkerHealth, dto::PipelineHealth, dto::Health,
                       Results, OptionCount)),
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
