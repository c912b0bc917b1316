//! `tally gateway`: the HTTP front door. Voters cast votes (put on the
//! stream through the producer, counted later by the workers), everyone
//! reads polls and live results (JSON and Server-Sent Events), admins
//! create, open and close polls; `/healthz`, `/readyz`, `/metrics` and
//! `/openapi.json` serve operators and tools; the web pages (vote,
//! dashboard, admin) are served from the binary.
//!
//! It owns: authentication ([`auth`]), rate limits ([`limit`]), the one
//! error-to-status mapping ([`error`]), live results ([`results`]) and its
//! metrics ([`metrics`]). It never counts a vote itself and never takes a
//! voter's identity from a request body.

pub mod api;
pub mod auth;
pub mod error;
pub mod limit;
pub mod lookups;
pub mod metrics;
pub mod pages;
pub mod results;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clap::Args;
use tally_producer::{Producer, ProducerConfig};
use tokio_util::sync::CancellationToken;

use self::auth::{AuthConfig, KeySource, Verifier};
use self::error::ApiError;
use self::limit::{Rate, RateLimiter};
use self::metrics::GatewayMetrics;
use self::results::ResultsHub;
use tally_store::poll_cache::{PollCache, PollCacheConfig};
use tally_store::VoteStore;

fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

/// The gateway's settings.
#[derive(Args, Clone, Debug)]
pub struct GatewayArgs {
    /// Address to listen on (port 0: any free port; the address is logged).
    #[arg(long, env = "TALLY_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Serve `/metrics` on this address only, not on the public one
    /// (unset: `/metrics` is served on TALLY_GATEWAY_ADDR).
    #[arg(long, env = "TALLY_GATEWAY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// HS256 secret of the voters' and admins' tokens (local mode; at least
    /// 32 bytes). Set this or --auth-jwks-url, not both.
    #[arg(long, env = "TALLY_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// URL of the JSON Web Key Set whose RS256/ES256 keys sign the tokens
    /// (Cognito: https://cognito-idp.<region>.amazonaws.com/<pool>/.well-known/jwks.json).
    #[arg(long, env = "TALLY_AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,
    /// The audience (`aud`) tokens must name.
    #[arg(long, env = "TALLY_AUTH_AUDIENCE", default_value = "tally")]
    pub auth_audience: String,
    /// The issuer (`iss`) tokens must name.
    #[arg(long, env = "TALLY_AUTH_ISSUER", default_value = "tally-local")]
    pub auth_issuer: String,
    /// The claim holding the voter id. `phone_number` (Cognito's phone
    /// sign-in) or `email` count only with `<claim>_verified: true`; every
    /// `+` is removed, as API Gateway's mapping template does.
    #[arg(long, env = "TALLY_AUTH_VOTER_CLAIM", default_value = "sub")]
    pub auth_voter_claim: String,
    /// The claim listing the caller's roles (Cognito: cognito:groups).
    #[arg(long, env = "TALLY_AUTH_ROLE_CLAIM", default_value = "roles")]
    pub auth_role_claim: String,
    /// The role that may create, open and close polls.
    #[arg(long, env = "TALLY_AUTH_ADMIN_ROLE", default_value = "admin")]
    pub auth_admin_role: String,
    /// LOCAL MODE ONLY: serve `POST /v1/dev/token`, which mints demo voter
    /// and admin tokens for anyone (needs --auth-secret and a loopback
    /// --addr).
    #[arg(long, env = "TALLY_DEV_TOKENS", default_value_t = false, value_parser = boolish(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub dev_tokens: bool,
    /// Votes per second one voter may post (token bucket rate).
    #[arg(long, env = "TALLY_RATE_VOTER_PER_S", default_value_t = 5.0)]
    pub rate_voter_per_s: f64,
    /// Burst of one voter's bucket.
    #[arg(long, env = "TALLY_RATE_VOTER_BURST", default_value_t = 10.0)]
    pub rate_voter_burst: f64,
    /// API requests per second from one client address.
    #[arg(long, env = "TALLY_RATE_IP_PER_S", default_value_t = 100.0)]
    pub rate_ip_per_s: f64,
    /// Burst of one client address's bucket.
    #[arg(long, env = "TALLY_RATE_IP_BURST", default_value_t = 200.0)]
    pub rate_ip_burst: f64,
    /// Take the client address from the last X-Forwarded-For entry (only
    /// behind a load balancer that sets it).
    #[arg(long, env = "TALLY_TRUST_FORWARDED_FOR", default_value_t = false, value_parser = boolish(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub trust_forwarded_for: bool,
    /// Largest request body, in bytes.
    #[arg(long, env = "TALLY_MAX_BODY_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(256..=1_048_576))]
    pub max_body_bytes: u64,
    /// Origins allowed to call the API from a browser, comma-separated
    /// (`*`: any; empty: only the gateway's own pages).
    #[arg(long, env = "TALLY_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// A client must send a request's headers within this long of
    /// connecting or of its previous answer; otherwise the connection is
    /// closed (a client that connects and sends nothing holds nothing).
    #[arg(long, env = "TALLY_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub header_timeout_ms: u64,
    /// Results are read at most this often per poll, and served no older.
    #[arg(long, env = "TALLY_RESULTS_INTERVAL_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=250))]
    pub results_interval_ms: u64,
    /// Interval of the heartbeat comments on results streams.
    #[arg(long, env = "TALLY_SSE_HEARTBEAT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..=120_000))]
    pub sse_heartbeat_ms: u64,
    /// Most results streams open at once on this process.
    #[arg(long, env = "TALLY_MAX_SSE_CLIENTS", default_value_t = 20_000)]
    pub max_sse_clients: i64,
    /// Most results streams one client address may hold open (a 429 with
    /// Retry-After beyond it). Addresses behind a carrier's NAT share it.
    #[arg(long, env = "TALLY_MAX_SSE_PER_ADDRESS", default_value_t = 100)]
    pub max_sse_per_address: u32,
    /// Most results streams one token's voter may hold open (streams opened
    /// with a bearer token).
    #[arg(long, env = "TALLY_MAX_SSE_PER_SUBJECT", default_value_t = 8)]
    pub max_sse_per_subject: u32,
    /// From this many open streams on, a new stream gets one `poll` event
    /// telling the page to poll the results URL instead (0: every client
    /// polls; unset: never). The way to shed streams under load.
    #[arg(long, env = "TALLY_SSE_SHED_AT")]
    pub sse_shed_at: Option<i64>,
    /// How often a client told to poll reads the results (jittered by the page).
    #[arg(long, env = "TALLY_RESULTS_POLL_MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(500..=60_000))]
    pub results_poll_ms: u64,
    /// The workers' metrics URLs (`http://host:9464/metrics`), separated
    /// by commas, for the admin page's pipeline health. A
    /// `dns+http://name:port/path` entry stands for one `http://` URL per
    /// address the name resolves to when the page is read (a service
    /// discovery name that answers every worker's address; names are looked
    /// up at the same time, and one that does not resolve within 2 s shows
    /// as a worker that is down). At most 64
    /// entries of at most 512 bytes, each a whole URL with a host, checked
    /// at start.
    #[arg(long, env = "TALLY_WORKER_METRICS_URLS", value_delimiter = ',')]
    pub worker_metrics_urls: Vec<String>,
    /// How long a vote may wait for others to share its Kinesis call.
    #[arg(long, env = "TALLY_GATEWAY_LINGER_MS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=1_000))]
    pub linger_ms: u64,
    /// Pack votes into KPL aggregates (fewer Kinesis records; the workers
    /// read both).
    #[arg(long, env = "TALLY_GATEWAY_AGGREGATE", default_value_t = true, value_parser = boolish(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub aggregate: bool,
    /// A vote not on the stream by then is answered 503 (retry with the
    /// same Idempotency-Key).
    #[arg(long, env = "TALLY_VOTE_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub vote_timeout_ms: u64,
    #[command(flatten)]
    pub cloudwatch: tally_service::cloudwatch::CloudWatchArgs,
    #[command(flatten)]
    pub faults: tally_service::faults::FaultArgs,
}

impl GatewayArgs {
    /// Checks the settings, naming the one at fault.
    pub fn auth_config(&self) -> anyhow::Result<AuthConfig> {
        let keys = match (&self.auth_secret, &self.auth_jwks_url) {
            (Some(_), Some(_)) => bail!("invalid settings TALLY_AUTH_SECRET and TALLY_AUTH_JWKS_URL: set one, not both"),
            (None, None) => bail!("missing setting TALLY_AUTH_SECRET (local mode, HS256) or TALLY_AUTH_JWKS_URL (RS256/ES256 keys): the gateway must check tokens"),
            (Some(secret), None) => {
                if secret.len() < 32 {
                    bail!("invalid setting TALLY_AUTH_SECRET: at least 32 bytes, e.g. `openssl rand -hex 32`");
                }
                KeySource::Secret(secret.as_bytes().to_vec())
            }
            (None, Some(url)) => {
                if self.dev_tokens {
                    bail!("invalid setting TALLY_DEV_TOKENS: demo tokens need TALLY_AUTH_SECRET, not a key set");
                }
                if let Err(error) = auth::acceptable_key_set_url(url) {
                    bail!("invalid setting TALLY_AUTH_JWKS_URL: {error}");
                }
                KeySource::Jwks(url.clone())
            }
        };
        if self.dev_tokens && !self.addr.ip().is_loopback() {
            bail!(
                "invalid setting TALLY_DEV_TOKENS: demo tokens are served only on a loopback address, and TALLY_GATEWAY_ADDR is {}: anyone who reaches it could mint admin tokens",
                self.addr
            );
        }
        for (name, value) in [
            ("TALLY_AUTH_AUDIENCE", &self.auth_audience),
            ("TALLY_AUTH_ISSUER", &self.auth_issuer),
            ("TALLY_AUTH_VOTER_CLAIM", &self.auth_voter_claim),
            ("TALLY_AUTH_ROLE_CLAIM", &self.auth_role_claim),
            ("TALLY_AUTH_ADMIN_ROLE", &self.auth_admin_role),
        ] {
            if value.trim().is_empty() {
                bail!("invalid setting {name}: must not be empty");
            }
        }
        // A claim that is the same for every voter (or new in every token)
        // would make everyone one voter (or every token a new one).
        const NOT_A_PERSON: &[&str] = &[
            // The same for every voter.
            "iss",
            "aud",
            "azp",
            "client_id",
            "scope",
            "token_use",
            "version",
            "email_verified",
            "phone_number_verified",
            // New in every token, or every sign-in.
            "exp",
            "nbf",
            "iat",
            "auth_time",
            "jti",
            "origin_jti",
            "event_id",
            "sid",
            "nonce",
            "at_hash",
        ];
        if NOT_A_PERSON.contains(&self.auth_voter_claim.as_str())
            || self.auth_voter_claim == self.auth_role_claim
        {
            bail!(
                "invalid setting TALLY_AUTH_VOTER_CLAIM: {:?} does not name a person (use sub, or a verified phone_number or email)",
                self.auth_voter_claim
            );
        }
        for (name, value) in [
            ("TALLY_RATE_VOTER_PER_S", self.rate_voter_per_s),
            ("TALLY_RATE_VOTER_BURST", self.rate_voter_burst),
            ("TALLY_RATE_IP_PER_S", self.rate_ip_per_s),
            ("TALLY_RATE_IP_BURST", self.rate_ip_burst),
        ] {
            if !(value.is_finite() && value > 0.0) {
                bail!("invalid setting {name}: {value} must be a positive number");
            }
        }
        for (name, value) in [
            ("TALLY_RATE_VOTER_BURST", self.rate_voter_burst),
            ("TALLY_RATE_IP_BURST", self.rate_ip_burst),
        ] {
            if value < 1.0 {
                bail!("invalid setting {name}: {value} must be at least 1");
            }
        }
        if self.worker_metrics_urls.len() > api::MAX_METRICS_URLS {
            bail!(
                "invalid setting TALLY_WORKER_METRICS_URLS: {} entries, at most {} (a dns+http://name entry stands for every worker)",
                self.worker_metrics_urls.len(),
                api::MAX_METRICS_URLS
            );
        }
        for url in &self.worker_metrics_urls {
            if let Some(error) = api::metrics_url_error(url) {
                let shown: String = url.chars().take(80).collect();
                bail!("invalid setting TALLY_WORKER_METRICS_URLS: {shown:?}: {error}");
            }
        }
        for origin in &self.cors_origins {
            if origin != "*" && HeaderValue::from_str(origin).is_err() {
                bail!("invalid setting TALLY_CORS_ORIGINS: {origin:?} is not an origin");
            }
        }
        if self.max_sse_clients < 1 {
            bail!("invalid setting TALLY_MAX_SSE_CLIENTS: must be at least 1");
        }
        for (name, value) in [
            ("TALLY_MAX_SSE_PER_ADDRESS", self.max_sse_per_address),
            ("TALLY_MAX_SSE_PER_SUBJECT", self.max_sse_per_subject),
        ] {
            if value < 1 {
                bail!("invalid setting {name}: must be at least 1");
            }
        }
        if self.sse_shed_at.is_some_and(|at| at < 0) {
            bail!("invalid setting TALLY_SSE_SHED_AT: must be 0 or more");
        }
        Ok(AuthConfig {
            keys,
            audience: self.auth_audience.clone(),
            issuer: self.auth_issuer.clone(),
            voter_claim: self.auth_voter_claim.clone(),
            role_claim: self.auth_role_claim.clone(),
            admin_role: self.auth_admin_role.clone(),
            leeway: Duration::from_secs(5),
        })
    }

    /// The producer's settings for votes.
    pub fn producer_config(&self) -> ProducerConfig {
        ProducerConfig {
            linger: Duration::from_millis(self.linger_ms),
            aggregation: self.aggregate.then(tally_producer::Aggregation::default),
            record_ttl: Duration::from_millis(self.vote_timeout_ms),
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            ..ProducerConfig::default()
        }
    }
}

/// What readiness depends on beyond the vote tables: the stream.
pub struct StreamProbe {
    pub kinesis: aws_sdk_kinesis::Client,
    pub stream: String,
}

/// An accepted vote remembered under its idempotency key.
#[derive(Clone, Debug)]
struct Remembered {
    option: String,
    at: Instant,
}

/// Idempotency keys are remembered this long on one process.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);
const MAX_REMEMBERED: usize = 200_000;
/// A readiness answer is reused this long.
const READY_CACHE: Duration = Duration::from_secs(5);

/// The gateway's shared state.
pub struct Gateway {
    pub args: GatewayArgs,
    pub verifier: Verifier,
    pub store: Arc<dyn VoteStore>,
    pub polls: Arc<PollCache>,
    pub hub: Arc<ResultsHub>,
    pub producer: Producer,
    pub metrics: GatewayMetrics,
    voter_limits: RateLimiter,
    ip_limits: RateLimiter,
    remembered: Mutex<HashMap<(String, String, String), Remembered>>,
    /// Fires when the gateway stops: results streams end.
    pub closing: CancellationToken,
    probe: Option<StreamProbe>,
    ready: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    http: reqwest::Client,
    pipeline_sample: Mutex<Option<(Instant, u64)>>,
    mismatches: tokio::sync::Mutex<Option<(Instant, u64)>>,
    public_polls: tokio::sync::Mutex<Option<(Instant, Arc<Vec<tally_core::poll::Poll>>)>>,
    /// Open results streams by client address and by subject.
    pub streams: Arc<limit::StreamCounts>,
    /// The 409 pre-check's reads, batched.
    pub lookups: lookups::VoteLookups,
}

/// The client's address as the rate limit saw it, for the handlers.
#[derive(Clone, Debug)]
pub struct ClientAddress(pub String);

/// The count of polls with a recount mismatch is read again after this.
const MISMATCH_CACHE: Duration = Duration::from_secs(10);
/// The poll list anyone may read is scanned again after this.
const POLL_LIST_CACHE: Duration = Duration::from_secs(1);

impl Gateway {
    pub fn new(
        args: GatewayArgs,
        store: Arc<dyn VoteStore>,
        producer: Producer,
        probe: Option<StreamProbe>,
    ) -> anyhow::Result<Arc<Self>> {
        let verifier = Verifier::new(args.auth_config()?)
            .map_err(|error| anyhow::anyhow!("invalid auth settings: {error}"))?;
        let polls = Arc::new(PollCache::new(
            store.clone(),
            PollCacheConfig::default(),
            Arc::default(),
        ));
        let store_for_lookups = store.clone();
        let hub = ResultsHub::new(
            store.clone(),
            polls.clone(),
            Duration::from_millis(args.results_interval_ms),
        );
        Ok(Arc::new(Self {
            voter_limits: RateLimiter::new(Rate {
                per_second: args.rate_voter_per_s,
                burst: args.rate_voter_burst,
            }),
            ip_limits: RateLimiter::new(Rate {
                per_second: args.rate_ip_per_s,
                burst: args.rate_ip_burst,
            }),
            args,
            verifier,
            store,
            polls,
            hub,
            producer,
            metrics: GatewayMetrics::default(),
            remembered: Mutex::default(),
            closing: CancellationToken::new(),
            probe,
            ready: tokio::sync::Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .context("HTTP client")?,
            pipeline_sample: Mutex::default(),
            mismatches: tokio::sync::Mutex::new(None),
            public_polls: tokio::sync::Mutex::new(None),
            streams: Arc::default(),
            lookups: lookups::VoteLookups::start(store_for_lookups),
        }))
    }

    /// Every poll, scanned at most once per [`POLL_LIST_CACHE`] however
    /// many ask: callers wait for the one scan in flight.
    pub async fn public_polls(
        &self,
    ) -> Result<Arc<Vec<tally_core::poll::Poll>>, tally_store::VoteStoreError> {
        let mut cached = self.public_polls.lock().await;
        if let Some((at, polls)) = cached.as_ref() {
            if at.elapsed() < POLL_LIST_CACHE {
                return Ok(polls.clone());
            }
        }
        let polls = Arc::new(self.store.list_polls().await?);
        *cached = Some((Instant::now(), polls.clone()));
        Ok(polls)
    }

    /// How many closed polls carry a recount mismatch report (cached).
    pub async fn recount_mismatches(&self) -> Result<u64, tally_store::VoteStoreError> {
        let mut cached = self.mismatches.lock().await;
        if let Some((at, count)) = *cached {
            if at.elapsed() < MISMATCH_CACHE {
                return Ok(count);
            }
        }
        let mut count = 0;
        for poll in self.store.list_polls().await? {
            if poll.status == tally_core::poll::PollStatus::Closed
                && self.store.audit_records(&poll.id).await?.1.is_some()
            {
                count += 1;
            }
        }
        *cached = Some((Instant::now(), count));
        Ok(count)
    }

    fn remembered(&self, key: &(String, String, String)) -> Option<Remembered> {
        let remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        remembered
            .get(key)
            .filter(|entry| entry.at.elapsed() < IDEMPOTENCY_TTL)
            .cloned()
    }

    fn remember(&self, key: (String, String, String), option: String) {
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.len() >= MAX_REMEMBERED {
            remembered.retain(|_, entry| entry.at.elapsed() < IDEMPOTENCY_TTL);
            if remembered.len() >= MAX_REMEMBERED {
                // The worker's dedupe stays the authority: forgetting only
                // turns a retry's 202 into a 409 or a harmless duplicate.
                remembered.clear();
            }
        }
        remembered.insert(
            key,
            Remembered {
                option,
                at: Instant::now(),
            },
        );
    }

    /// Ready: not stopping, keys loaded, the tables and the stream answer.
    pub async fn readiness(&self) -> Result<(), String> {
        if self.closing.is_cancelled() {
            return Err("stopping".into());
        }
        let mut cached = self.ready.lock().await;
        if let Some((at, answer)) = cached.as_ref() {
            if at.elapsed() < READY_CACHE {
                return answer.clone();
            }
        }
        // The detail (table and stream names, AWS errors) goes to the log;
        // the public answer only says which part is not ready.
        let answer = async {
            if !self.verifier.ready().await {
                if let Err(error) = self.verifier.refresh().await {
                    tracing::warn!(error = %error, "not ready: the token keys");
                    return Err("the token keys are not loaded".to_owned());
                }
            }
            if let Err(error) = self.store.get_poll("tally-readiness-probe").await {
                tracing::warn!(error = %error, "not ready: the vote tables");
                return Err("the vote tables do not answer".to_owned());
            }
            if let Some(probe) = &self.probe {
                if let Err(error) = probe
                    .kinesis
                    .describe_stream_summary()
                    .stream_name(&probe.stream)
                    .send()
                    .await
                {
                    tracing::warn!(stream = %probe.stream, error = %aws_sdk_kinesis::error::DisplayErrorContext(error), "not ready: the stream");
                    return Err("the stream does not answer".to_owned());
                }
            }
            Ok(())
        }
        .await;
        *cached = Some((Instant::now(), answer.clone()));
        answer
    }
}

/// The address the load balancer in front appended: the last entry of the
/// last `X-Forwarded-For` header. Every earlier entry and header comes from
/// the client, which can write anything there.
fn forwarded_client(headers: &axum::http::HeaderMap) -> Option<String> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    let entry = last.to_str().ok()?.rsplit(',').next()?.trim();
    (!entry.is_empty()).then(|| entry.to_owned())
}

/// The client's address, for the per-address rate limit.
fn client_address(gateway: &Gateway, request: &Request) -> String {
    if gateway.args.trust_forwarded_for {
        if let Some(forwarded) = forwarded_client(request.headers()) {
            return forwarded;
        }
    }
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Per-address rate limit on the API, and request metrics by route.
async fn front(State(gateway): State<Arc<Gateway>>, mut request: Request, next: Next) -> Response {
    // Shared (the matched path is reference-counted), not copied.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let method = request.method().clone();
    let response = if request.uri().path().starts_with("/v1/") {
        let address = client_address(&gateway, &request);
        match gateway.ip_limits.check(&address, Instant::now()) {
            Ok(()) => {
                request.extensions_mut().insert(ClientAddress(address));
                next.run(request).await
            }
            Err(retry_after_s) => {
                gateway
                    .metrics
                    .rate_limited_ip
                    .fetch_add(1, Ordering::Relaxed);
                ApiError::RateLimited { retry_after_s }.into_response()
            }
        }
    } else {
        next.run(request).await
    };
    gateway.metrics.request(
        route.as_ref().map_or("unmatched", |path| path.as_str()),
        method.as_str(),
        response.status().as_u16(),
    );
    response
}

fn cors(args: &GatewayArgs) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins = if args.cors_origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            args.cors_origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([axum::http::header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

/// A handler that panics answers a JSON 500 instead of dropping the
/// connection.
fn catch_panics() -> tower_http::catch_panic::CatchPanicLayer<
    impl Fn(Box<dyn std::any::Any + Send>) -> Response + Clone,
> {
    tower_http::catch_panic::CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
        ApiError::Internal("a request handler panicked".into()).into_response()
    })
}

/// The whole HTTP surface (`/metrics` only without a metrics listener).
pub fn router(gateway: Arc<Gateway>) -> axum::Router {
    api::routes(gateway.args.dev_tokens, gateway.args.metrics_addr.is_none())
        .merge(pages::routes())
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), front))
        .layer(catch_panics())
        .layer(cors(&gateway.args))
        .layer(axum::extract::DefaultBodyLimit::max(
            gateway.args.max_body_bytes as usize,
        ))
        .with_state(gateway)
}

/// Serves `app` on `listener` until `stop` finishes, then lets the open
/// connections finish their requests. Each connection must send a
/// request's headers within `header_timeout` of connecting or of its last
/// answer (hyper's header-read timeout, which axum's `serve` leaves off),
/// so a client that connects and sends nothing, or idles on a kept-alive
/// connection, is disconnected.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    tokio::pin!(stop);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let service = tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                request
            },
        );
        let connection = builder.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// `/metrics` alone, for the separate metrics listener.
pub fn metrics_router(gateway: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(api::metrics))
        .fallback(api::not_found)
        .with_state(gateway)
}

/// Serves [`metrics_router`] on `listener` until `shutdown` fires.
pub async fn serve_metrics(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(address = %listener.local_addr()?, "metrics listening");
    axum::serve(listener, metrics_router(gateway))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("metrics server failed")
}

/// Runs the gateway on `listener` until `shutdown` fires: it then answers
/// `/readyz` with 503, stops taking connections, ends the results streams,
/// finishes in-flight requests and flushes the producer.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Err(error) = gateway.verifier.refresh().await {
        tracing::warn!(error = %error, "key set not loaded yet; /readyz stays 503 until it is");
    }
    let refresher = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            loop {
                tokio::time::sleep(auth::JWKS_REFRESH).await;
                if let Err(error) = gateway.verifier.refresh().await {
                    tracing::warn!(error = %error, "key set refresh failed");
                }
            }
        }
    });
    let address = listener.local_addr()?;
    tracing::info!(address = %address, "gateway listening");
    let app = router(gateway.clone());
    let stop = shutdown.clone();
    let flag = gateway.clone();
    serve_connections(
        listener,
        app,
        Duration::from_millis(gateway.args.header_timeout_ms),
        async move {
            stop.cancelled().await;
            flag.closing.cancel();
            tracing::info!("stopping: finishing in-flight requests");
        },
    )
    .await;
    refresher.abort();
    gateway
        .producer
        .close()
        .await
        .context("flushing the last votes to the stream")?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// `tally gateway`: builds the clients and serves until a stop signal.
pub async fn run(
    common: &tally_service::settings::Common,
    args: GatewayArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    args.auth_config()?;
    let faults = args.faults.parse()?;
    let clients = tally_service::settings::Clients::with_faults(faults.clone()).await?;
    let store = Arc::new(tally_store::dynamo::DynamoVoteStore::new(
        clients.dynamodb.clone(),
        common.table_names(),
    ));
    let sink = Arc::new(tally_producer::KinesisSink::new(
        clients.kinesis.clone(),
        &common.stream,
    ));
    let producer = Producer::start(sink, args.producer_config());
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| {
            format!(
                "invalid setting TALLY_GATEWAY_ADDR: cannot listen on {}",
                args.addr
            )
        })?;
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("invalid setting TALLY_GATEWAY_METRICS_ADDR: cannot listen on {addr}")
        })?),
        None => None,
    };
    let cloudwatch = args.cloudwatch.clone();
    if cloudwatch.cloudwatch {
        tally_service::cloudwatch::validate(&cloudwatch)?;
    }
    let gateway = Gateway::new(
        args,
        store,
        producer,
        Some(StreamProbe {
            kinesis: clients.kinesis.clone(),
            stream: common.stream.clone(),
        }),
    )?;
    let publisher_stop = CancellationToken::new();
    let publisher = cloudwatch.cloudwatch.then(|| {
        let gateway = gateway.clone();
        let process = format!("gateway-{}", std::process::id());
        tokio::spawn(tally_service::cloudwatch::publish(
            aws_sdk_cloudwatch::Client::new(&clients.config),
            cloudwatch,
            tally_service::cloudwatch::GATEWAY_METRICS,
            common.app.clone(),
            process,
            move || {
                let gateway = gateway.clone();
                async move {
                    let mut snapshot = gateway.metrics.snapshot();
                    if let Ok(count) = gateway.recount_mismatches().await {
                        snapshot["recount_mismatch_polls"] = count.into();
                    }
                    snapshot
                }
            },
            publisher_stop.clone(),
        ))
    });
    let metrics_server = metrics_listener
        .map(|listener| tokio::spawn(serve_metrics(gateway.clone(), listener, shutdown.clone())));
    let served = serve(gateway, listener, shutdown).await;
    if let Some(server) = metrics_server {
        if let Ok(Err(error)) = server.await {
            tracing::warn!(error = %error, "metrics listener");
        }
    }
    if let Some(faults) = &faults {
        tracing::warn!(
            injected = %faults.injected_json(),
            "faults injected"
        );
    }
    publisher_stop.cancel();
    if let Some(publisher) = publisher {
        let _ = publisher.await;
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_client_is_the_last_entry_of_the_last_forwarded_header() {
        let mut headers = axum::http::HeaderMap::new();
        headers.append("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        headers.append("x-forwarded-for", "3.3.3.3, 4.4.4.4".parse().unwrap());
        assert_eq!(forwarded_client(&headers).as_deref(), Some("4.4.4.4"));
        let mut spoofed = axum::http::HeaderMap::new();
        spoofed.append("x-forwarded-for", "9.9.9.9".parse().unwrap());
        spoofed.append("x-forwarded-for", "5.5.5.5".parse().unwrap());
        assert_eq!(forwarded_client(&spoofed).as_deref(), Some("5.5.5.5"));
        let mut empty = axum::http::HeaderMap::new();
        empty.append("x-forwarded-for", "1.1.1.1, ".parse().unwrap());
        assert_eq!(forwarded_client(&empty), None);
        assert_eq!(forwarded_client(&axum::http::HeaderMap::new()), None);
    }

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: GatewayArgs,
    }

    fn args(extra: &[&str]) -> GatewayArgs {
        let secret = "0".repeat(32);
        let mut argv = vec!["gateway", "--auth-secret", secret.as_str()];
        argv.extend_from_slice(extra);
        Wrapper::try_parse_from(argv).unwrap().args
    }

    /// Claims every voter shares, or that change with each token or
    /// sign-in, are refused as the voter claim.
    #[test]
    fn a_claim_that_names_no_person_is_refused() {
        for claim in [
            "iss",
            "aud",
            "azp",
            "client_id",
            "scope",
            "token_use",
            "email_verified",
            "phone_number_verified",
            "exp",
            "nbf",
            "iat",
            "auth_time",
            "jti",
            "origin_jti",
            "event_id",
            "sid",
            "roles",
        ] {
            let Err(error) = args(&["--auth-voter-claim", claim]).auth_config() else {
                panic!("{claim} was accepted as the voter claim");
            };
            assert!(
                error.to_string().contains("TALLY_AUTH_VOTER_CLAIM"),
                "{error}"
            );
        }
        for claim in ["sub", "phone_number", "email", "cognito:username"] {
            assert!(args(&["--auth-voter-claim", claim]).auth_config().is_ok());
        }
    }

    #[test]
    fn bad_metrics_urls_fail_naming_the_setting() {
        let many = vec!["http://10.0.0.1:9464/metrics"; api::MAX_METRICS_URLS + 1].join(",");
        for urls in [
            "dns+http://",
            "dns+http:///metrics",
            "http://10.0.0.1:9464/metrics,https://",
            "file:///etc/passwd",
            many.as_str(),
        ] {
            let Err(error) = args(&["--worker-metrics-urls", urls]).auth_config() else {
                panic!("{urls} was accepted");
            };
            assert!(
                error.to_string().contains("TALLY_WORKER_METRICS_URLS"),
                "{error}"
            );
        }
        assert!(args(&[
            "--worker-metrics-urls",
            "http://10.0.0.1:9464/metrics,dns+http://workers.local:9464/metrics"
        ])
        .auth_config()
        .is_ok());
    }

    #[test]
    fn demo_tokens_need_a_loopback_address() {
        let Err(error) = args(&["--addr", "0.0.0.0:8080", "--dev-tokens"]).auth_config() else {
            panic!("demo tokens on 0.0.0.0 were accepted");
        };
        assert!(error.to_string().contains("TALLY_DEV_TOKENS"), "{error}");
        assert!(args(&["--addr", "127.0.0.1:0", "--dev-tokens"])
            .auth_config()
            .is_ok());
        assert!(args(&["--addr", "0.0.0.0:8080"]).auth_config().is_ok());
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_a_json_500() {
        let app = axum::Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    if true {
                        panic!("on purpose");
                    }
                    "unreachable"
                }),
            )
            .layer(catch_panics());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let response = reqwest::get(format!("http://{address}/boom"))
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "internal");
    }
}
