//! The operator endpoints: the pipeline's health, liveness, readiness,
//! metrics, and the demo token mint.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

use super::dto::{ErrorBody, Health, PipelineHealth, WorkerHealth};
use super::extract::Admin;
use super::Shared;
use crate::error::ApiError;
use tally_contract::time::{format_rfc3339, now_millis};

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
    let targets = worker_targets(&gateway.args.worker_metrics_urls, lookup).await;
    let fetches = targets.into_iter().map(|target| {
        let client = gateway.http.clone();
        async move {
            let url = match target {
                Target::Read(url) => url,
                Target::Unresolved { entry, error } => return (entry, Err(error)),
            };
            // The client's timeout bounds the whole exchange, body included.
            let answer = async {
                let response = client.get(&url).send().await.map_err(describe)?;
                if !response.status().is_success() {
                    return Err(format!("answered {}", response.status()));
                }
                response.json::<serde_json::Value>().await.map_err(describe)
            }
            .await;
            (url, answer)
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

/// The scheme of a metrics URL entry that names every address of a host.
const DNS_SCHEME: &str = "dns+";

/// Most entries in TALLY_WORKER_METRICS_URLS (a `dns+http://` entry
/// stands for any number of workers).
pub(crate) const MAX_METRICS_URLS: usize = 64;
/// Longest entry in TALLY_WORKER_METRICS_URLS, in bytes.
const MAX_METRICS_URL_BYTES: usize = 512;

/// Why a TALLY_WORKER_METRICS_URLS entry cannot be read: it must be a whole
/// `http(s)://host[:port]/path` or `dns+http://name[:port]/path` URL.
pub(crate) fn metrics_url_error(entry: &str) -> Option<String> {
    if entry.len() > MAX_METRICS_URL_BYTES {
        return Some(format!("longer than {MAX_METRICS_URL_BYTES} bytes"));
    }
    if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("contains white space".to_owned());
    }
    let (plain, schemes): (&str, &[&str]) = match entry.strip_prefix(DNS_SCHEME) {
        Some(plain) => (plain, &["http"]),
        None => (entry, &["http", "https"]),
    };
    let url = match reqwest::Url::parse(plain) {
        Ok(url) => url,
        Err(error) => return Some(format!("not a URL: {error}")),
    };
    if !schemes.contains(&url.scheme()) {
        return Some("not an http(s) or dns+http URL".to_owned());
    }
    // The parser reads `http:///name` or `http:name` as naming the host
    // `name`: the host must follow `//`.
    let after_scheme = plain.get(url.scheme().len()..).unwrap_or_default();
    let authority = after_scheme.strip_prefix("://").unwrap_or("/");
    if authority.starts_with(['/', '\\']) || url.host_str().is_none_or(str::is_empty) {
        return Some("names no host".to_owned());
    }
    if url.port_or_known_default().is_none() {
        return Some("names no port".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some("carries credentials".to_owned());
    }
    None
}

/// A name's addresses are looked up for at most this long.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// What one metrics entry gives: a URL to read, or why it gives none (then
/// read as a worker that is down).
#[derive(Debug, PartialEq)]
enum Target {
    Read(String),
    Unresolved { entry: String, error: String },
}

/// A fetch's error, saying so when it timed out.
fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        format!("timed out: {error}")
    } else {
        error.to_string()
    }
}

/// The system resolver's addresses for `host`.
async fn lookup(host: String, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((host.as_str(), port))
        .await?
        .collect())
}

/// The metrics URLs to read: an `http(s)://` entry as it is; a
/// `dns+http://name:port/path` entry as `http://address:port/path` for each
/// address `resolve` gives for `name` now (in order, each once), or as
/// unresolved when it gives none, fails, or takes over [`LOOKUP_TIMEOUT`].
/// Entries are resolved concurrently.
async fn worker_targets<R, F>(configured: &[String], resolve: R) -> Vec<Target>
where
    R: Fn(String, u16) -> F,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    let resolve = &resolve;
    let entries = configured.iter().map(|entry| async move {
        let Some(plain) = entry.strip_prefix(DNS_SCHEME) else {
            return vec![Target::Read(entry.clone())];
        };
        let unresolved = |error: String| {
            vec![Target::Unresolved {
                entry: entry.clone(),
                error,
            }]
        };
        let Ok(url) = reqwest::Url::parse(plain) else {
            return unresolved("not a URL".to_owned());
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return unresolved("names no host".to_owned());
        };
        // An IPv6 address without its brackets.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let path = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let mut found = match tokio::time::timeout(LOOKUP_TIMEOUT, resolve(host, port)).await {
            Err(_) => {
                return unresolved(format!(
                    "timed out: the name did not resolve within {} s",
                    LOOKUP_TIMEOUT.as_secs()
                ))
            }
            Ok(Err(error)) => return unresolved(format!("the name did not resolve: {error}")),
            Ok(Ok(found)) => found,
        };
        found.sort();
        found.dedup();
        if found.is_empty() {
            return unresolved("the name resolves to no address".to_owned());
        }
        found
            .into_iter()
            .map(|address| Target::Read(format!("http://{address}{path}")))
            .collect()
    });
    futures::future::join_all(entries)
        .await
        .into_iter()
        .flatten()
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_urls_are_whole_urls() {
        for good in [
            "http://10.0.0.1:9464/metrics",
            "https://worker.internal/metrics",
            "http://[::1]:9464/metrics",
            "dns+http://workers.tally.local:9464/metrics?x=1",
        ] {
            assert_eq!(metrics_url_error(good), None, "{good}");
        }
        for bad in [
            "dns+http://",
            "dns+http://:9464/metrics",
            "dns+http:///metrics",
            "http:10.0.0.1:9464/metrics",
            "http:\\\\10.0.0.1:9464/metrics",
            "dns+https://workers.tally.local/metrics",
            "http://",
            "http://:9464/metrics",
            "ftp://10.0.0.1/metrics",
            "10.0.0.1:9464/metrics",
            " http://10.0.0.1:9464/metrics",
            "http://10.0.0.1:99999/metrics",
            "http://user:secret@10.0.0.1:9464/metrics",
            &format!("http://10.0.0.1:9464/{}", "m".repeat(MAX_METRICS_URL_BYTES)),
        ] {
            assert!(metrics_url_error(bad).is_some(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_dns_entry_is_one_url_per_address() {
        let targets = worker_targets(
            &[
                "http://10.0.0.1:9464/metrics".to_owned(),
                "dns+http://localhost:9464/metrics?x=1".to_owned(),
                "dns+http://no-such-name.invalid:9464/metrics".to_owned(),
            ],
            lookup,
        )
        .await;
        assert_eq!(
            targets[0],
            Target::Read("http://10.0.0.1:9464/metrics".to_owned())
        );
        assert!(
            targets.contains(&Target::Read(
                "http://127.0.0.1:9464/metrics?x=1".to_owned()
            )),
            "{targets:?}"
        );
        // Every address of the name, each once, then the unresolved entry
        // as it is (read as a worker that is down).
        assert!(targets[1..targets.len() - 1].iter().all(|target| matches!(
            target,
            Target::Read(url) if url.starts_with("http://") && url.ends_with(":9464/metrics?x=1")
        )));
        assert!(matches!(
            targets.last(),
            Some(Target::Unresolved { entry, .. })
                if entry == "dns+http://no-such-name.invalid:9464/metrics"
        ));
    }

    /// A name whose lookup hangs is reported as timed out after
    /// [`LOOKUP_TIMEOUT`], without holding up the other entries, which are
    /// resolved at the same time.
    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_hangs_times_out_and_entries_resolve_concurrently() {
        let started = tokio::time::Instant::now();
        let targets = worker_targets(
            &[
                "dns+http://hangs.example:9464/metrics".to_owned(),
                "dns+http://hangs-too.example:9464/metrics".to_owned(),
                "dns+http://fast.example:9464/metrics".to_owned(),
                "dns+http://[::1]:9464/metrics".to_owned(),
                "http://10.0.0.1:9464/metrics".to_owned(),
            ],
            |host: String, port| async move {
                match host.as_str() {
                    "fast.example" => Ok(vec![SocketAddr::from(([10, 0, 0, 2], port))]),
                    "::1" => Ok(vec![SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port))]),
                    _ => std::future::pending().await,
                }
            },
        )
        .await;
        let timed_out = |entry: &str| Target::Unresolved {
            entry: entry.to_owned(),
            error: "timed out: the name did not resolve within 2 s".to_owned(),
        };
        assert_eq!(
            targets,
            [
                timed_out("dns+http://hangs.example:9464/metrics"),
                timed_out("dns+http://hangs-too.example:9464/metrics"),
                Target::Read("http://10.0.0.2:9464/metrics".to_owned()),
                Target::Read("http://[::1]:9464/metrics".to_owned()),
                Target::Read("http://10.0.0.1:9464/metrics".to_owned()),
            ]
        );
        assert!(started.elapsed() < LOOKUP_TIMEOUT * 3 / 2, "one at a time");
    }
}
