//! The web pages, served from the binary (no front-end toolchain): the
//! poll list, the vote page, the live dashboard and the admin page. They
//! are plain HTML, CSS and JavaScript that speak the JSON API and the
//! results stream like any other client.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::Gateway;

const INDEX: &str = include_str!("pages/index.html");
const VOTE: &str = include_str!("pages/vote.html");
const DASHBOARD: &str = include_str!("pages/dashboard.html");
const ADMIN: &str = include_str!("pages/admin.html");
const SCRIPT: &str = include_str!("pages/tally.js");
const STYLE: &str = include_str!("pages/tally.css");

/// Pages may load only this gateway's own scripts and styles.
const POLICY: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn page(body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/", get(|| async { page(INDEX) }))
        .route("/vote", get(|| async { page(VOTE) }))
        .route("/dashboard", get(|| async { page(DASHBOARD) }))
        .route("/admin", get(|| async { page(ADMIN) }))
        .route(
            "/assets/tally.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/tally.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
