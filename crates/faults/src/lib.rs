//! # tally-faults
//!
//! Faults the emulators never produce, injected on purpose for tests, and
//! crash points in the worker. Both are off unless configured; a worker
//! that runs with either says so loudly at start-up. This crate is only
//! compiled into builds with the `faults` feature (the tests, the chaos
//! run and the benchmarks); the release binary and the image never have it.
//!
//! **Request faults** wrap the AWS SDK's HTTP client, so every request of
//! the real SDK to the real emulator passes through them. A rule is
//! `OPERATION:KIND:PROBABILITY[:MILLIS]`, rules separated by commas, e.g.
//! `GetRecords:throttle:0.05,TransactWriteItems:conflict:0.1,*:latency:0.2:50`.
//! The operation is the API name (`GetRecords`, `PutItem`,
//! `TransactWriteItems`, ...) or `*`. Kinds:
//! - `throttle`: the service's throttling error; the request is not sent.
//! - `conflict`: a `TransactionCanceledException` with a
//!   `TransactionConflict` reason (for other operations,
//!   `TransactionConflictException`); not sent.
//! - `5xx`: HTTP 500 `InternalServerError`; not sent.
//! - `latency`: waits MILLIS before sending.
//! - `lost`: the request is sent and applied, then its response is lost
//!   (the caller sees a timeout).
//! - `partial` (`PutRecords` and `BatchExecuteStatement` only): about a
//!   third of the records (statements) are left out of the request and
//!   reported failed in its 200 answer, the rest are sent: a record with
//!   `ProvisionedThroughputExceededException`, a statement with
//!   `ThrottlingError` or `InternalServerError` in turn. The request's body
//!   changes after signing, which the emulators do not check.
//!
//! **Crash points** (`name[:N]`) abort the process the N-th time (default
//! the first) the worker reaches the named step of the counting protocol;
//! see [`CRASH_POINTS`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use rand::{Rng, SeedableRng};

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Throttle,
    Conflict,
    ServerError,
    Latency,
    Lost,
    Partial,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Throttle => "throttle",
            FaultKind::Conflict => "conflict",
            FaultKind::ServerError => "5xx",
            FaultKind::Latency => "latency",
            FaultKind::Lost => "lost",
            FaultKind::Partial => "partial",
        }
    }
    const ALL: [FaultKind; 6] = [
        FaultKind::Throttle,
        FaultKind::Conflict,
        FaultKind::ServerError,
        FaultKind::Latency,
        FaultKind::Lost,
        FaultKind::Partial,
    ];
}

/// One rule of the fault specification.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// `None`: every operation.
    pub operation: Option<String>,
    pub kind: FaultKind,
    pub probability: f64,
    pub latency: Duration,
}

/// A parsed fault specification, with seeded random sources and counts
/// of what it injected.
///
/// Each operation draws from a source of its own, seeded from the seed and
/// the operation's name: the n-th call of an operation meets the same
/// faults whatever the other operations did before it, so a seed gives the
/// same faults per operation from run to run (concurrent calls of one
/// operation may still take its draws in another order).
#[derive(Debug)]
pub struct Faults {
    rules: Vec<FaultRule>,
    seed: u64,
    random: Mutex<HashMap<String, rand::rngs::StdRng>>,
    injected: [AtomicU64; 6],
}

impl Faults {
    /// Parses `OPERATION:KIND:PROBABILITY[:MILLIS],...`.
    pub fn parse(spec: &str, seed: u64) -> Result<Self, String> {
        let mut rules = Vec::new();
        for rule in spec
            .split(',')
            .map(str::trim)
            .filter(|rule| !rule.is_empty())
        {
            let parts: Vec<&str> = rule.split(':').collect();
            if parts.len() < 3 || parts.len() > 4 {
                return Err(format!(
                    "{rule:?} is not OPERATION:KIND:PROBABILITY[:MILLIS]"
                ));
            }
            let kind = FaultKind::ALL
                .into_iter()
                .find(|kind| kind.as_str() == parts[1])
                .ok_or_else(|| {
                    format!(
                        "{rule:?}: unknown fault {:?} (throttle, conflict, 5xx, latency, lost, partial)",
                        parts[1]
                    )
                })?;
            let probability: f64 = parts[2]
                .parse()
                .ok()
                .filter(|p: &f64| (0.0..=1.0).contains(p))
                .ok_or_else(|| format!("{rule:?}: probability must be 0 to 1"))?;
            let latency = match (kind, parts.get(3)) {
                (FaultKind::Latency, Some(millis)) => Duration::from_millis(
                    millis
                        .parse()
                        .map_err(|_| format!("{rule:?}: latency must be milliseconds"))?,
                ),
                (FaultKind::Latency, None) => {
                    return Err(format!("{rule:?}: latency needs :MILLIS"))
                }
                (_, Some(_)) => return Err(format!("{rule:?}: only latency takes :MILLIS")),
                (_, None) => Duration::ZERO,
            };
            let operation = match parts[0] {
                "*" => None,
                name if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                    Some(name.to_owned())
                }
                name => return Err(format!("{rule:?}: bad operation {name:?}")),
            };
            rules.push(FaultRule {
                operation,
                kind,
                probability,
                latency,
            });
        }
        Ok(Self {
            rules,
            seed,
            random: Mutex::new(HashMap::new()),
            injected: Default::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How many faults of each kind were injected so far.
    pub fn injected(&self) -> Vec<(&'static str, u64)> {
        FaultKind::ALL
            .iter()
            .zip(&self.injected)
            .map(|(kind, count)| (kind.as_str(), count.load(Ordering::Relaxed)))
            .collect()
    }

    /// The injected counts by kind, as JSON (for metrics and logs).
    pub fn injected_json(&self) -> serde_json::Value {
        self.injected()
            .into_iter()
            .map(|(kind, count)| (kind.to_owned(), serde_json::Value::from(count)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// The faults to apply to one request of `operation`, in rule order.
    fn draw(&self, operation: &str) -> Vec<&FaultRule> {
        let mut sources = self.random.lock().expect("lock");
        // The name is copied once per operation, not per request.
        if !sources.contains_key(operation) {
            sources.insert(
                operation.to_owned(),
                rand::rngs::StdRng::seed_from_u64(operation_seed(self.seed, operation)),
            );
        }
        let random = sources.get_mut(operation).expect("inserted above");
        self.rules
            .iter()
            .filter(|rule| {
                rule.operation
                    .as_deref()
                    .is_none_or(|name| name == operation)
            })
            .filter(|rule| random.gen_bool(rule.probability))
            .collect()
    }

    fn count(&self, kind: FaultKind) {
        let index = FaultKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("kind");
        self.injected[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Wraps an SDK HTTP client so that its requests go through the faults.
    pub fn wrap(self: &Arc<Self>, inner: SharedHttpClient) -> SharedHttpClient {
        SharedHttpClient::new(FaultClient {
            inner,
            faults: self.clone(),
        })
    }
}

/// The seed of one operation's random source: the run's seed mixed with
/// the name (FNV-1a, stable across builds and platforms).
fn operation_seed(seed: u64, operation: &str) -> u64 {
    operation
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64 ^ seed, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// `config` with every request going through `faults`. The inner client
/// is the configuration's own, or the SDK's default HTTPS client (hyper 1
/// with rustls), which the configuration only names lazily.
pub fn wrap_config(config: aws_config::SdkConfig, faults: &Arc<Faults>) -> aws_config::SdkConfig {
    let inner = config.http_client().unwrap_or_else(|| {
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
            .build_https()
    });
    config
        .into_builder()
        .http_client(faults.wrap(inner))
        .build()
}

#[derive(Debug)]
struct FaultClient {
    inner: SharedHttpClient,
    faults: Arc<Faults>,
}

impl HttpClient for FaultClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(FaultConnector {
            inner: self.inner.http_connector(settings, components),
            faults: self.faults.clone(),
        })
    }
}

#[derive(Debug)]
struct FaultConnector {
    inner: SharedHttpConnector,
    faults: Arc<Faults>,
}

/// `Kinesis_20131202.GetRecords` -> `GetRecords`.
fn operation_of(request: &HttpRequest) -> (String, bool) {
    let target = request.headers().get("x-amz-target").unwrap_or("");
    let dynamodb = target.starts_with("DynamoDB");
    let operation = target.rsplit('.').next().unwrap_or("").to_owned();
    (operation, dynamodb)
}

fn error_response(status: u16, dynamodb: bool, body: String) -> HttpResponse {
    let mut response = HttpResponse::new(
        StatusCode::try_from(status).expect("valid status"),
        SdkBody::from(body),
    );
    response.headers_mut().insert(
        "content-type",
        if dynamodb {
            "application/x-amz-json-1.0"
        } else {
            "application/x-amz-json-1.1"
        },
    );
    response
}

fn injected_error(kind: FaultKind, operation: &str, dynamodb: bool) -> HttpResponse {
    let namespace = if dynamodb {
        "com.amazonaws.dynamodb.v20120810#"
    } else {
        ""
    };
    let (status, code, extra) = match kind {
        FaultKind::Throttle if dynamodb && operation == "TransactWriteItems" => {
            (400, "ThrottlingException", String::new())
        }
        // Kinesis throttles a second SubscribeToShard of a shard within a
        // second (or over the account's rate) with LimitExceeded.
        FaultKind::Throttle if operation == "SubscribeToShard" => {
            (400, "LimitExceededException", String::new())
        }
        FaultKind::Throttle => (400, "ProvisionedThroughputExceededException", String::new()),
        FaultKind::Conflict if operation == "TransactWriteItems" => (
            400,
            "TransactionCanceledException",
            r#","CancellationReasons":[{"Code":"TransactionConflict","Message":"injected"}]"#
                .to_owned(),
        ),
        FaultKind::Conflict => (400, "TransactionConflictException", String::new()),
        _ => (500, "InternalServerError", String::new()),
    };
    error_response(
        status,
        dynamodb,
        format!(r#"{{"__type":"{namespace}{code}","message":"injected fault: {code}"{extra}}}"#),
    )
}

impl HttpConnector for FaultConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let (operation, dynamodb) = operation_of(&request);
        let drawn: Vec<FaultRule> = self.faults.draw(&operation).into_iter().cloned().collect();
        if drawn.is_empty() {
            return self.inner.call(request);
        }
        let inner = self.inner.clone();
        let faults = self.faults.clone();
        HttpConnectorFuture::new(async move {
            let mut lose_response = false;
            let mut partial = false;
            for rule in &drawn {
                match rule.kind {
                    FaultKind::Partial
                        if operation != "PutRecords" && operation != "BatchExecuteStatement" =>
                    {
                        continue
                    }
                    _ => faults.count(rule.kind),
                }
                match rule.kind {
                    FaultKind::Latency => tokio::time::sleep(rule.latency).await,
                    FaultKind::Lost => lose_response = true,
                    FaultKind::Partial => partial = true,
                    kind => return Ok(injected_error(kind, &operation, dynamodb)),
                }
            }
            let response = if partial {
                partial_batch(&inner, request, &operation).await?
            } else {
                inner.call(request).await?
            };
            if lose_response {
                drop(response);
                return Err(ConnectorError::timeout(
                    format!("injected fault: the response of {operation} was lost").into(),
                ));
            }
            Ok(response)
        })
    }
}

/// Sends about a third of a `PutRecords` request's records, or of a
/// `BatchExecuteStatement` request's statements (every third, starting at a
/// random offset), and reports the others failed in the answer.
async fn partial_batch(
    inner: &SharedHttpConnector,
    mut request: HttpRequest,
    operation: &str,
) -> Result<HttpResponse, ConnectorError> {
    let statements = operation == "BatchExecuteStatement";
    let (items_key, results_key) = if statements {
        ("Statements", "Responses")
    } else {
        ("Records", "Records")
    };
    let failure = |number: usize| {
        if statements {
            let code = if number % 2 == 0 {
                "ThrottlingError"
            } else {
                "InternalServerError"
            };
            serde_json::json!({"Error": {"Code": code, "Message": "injected fault: partial failure"}})
        } else {
            serde_json::json!({
                "ErrorCode": "ProvisionedThroughputExceededException",
                "ErrorMessage": "injected fault: partial failure"
            })
        }
    };
    let missing = || {
        if statements {
            serde_json::json!({"Error": {"Code": "InternalServerError", "Message": "injected fault: no result"}})
        } else {
            serde_json::json!({"ErrorCode": "InternalFailure", "ErrorMessage": "injected fault: no result"})
        }
    };
    let malformed =
        |what: &str| ConnectorError::other(format!("partial fault: {what}").into(), None);
    let body: serde_json::Value = request
        .body()
        .bytes()
        .and_then(|bytes| serde_json::from_slice(bytes).ok())
        .ok_or_else(|| malformed("request body is not JSON"))?;
    let records = body[items_key]
        .as_array()
        .cloned()
        .ok_or_else(|| malformed(items_key))?;
    let offset = rand::random::<usize>() % 3;
    let failing: Vec<bool> = (0..records.len()).map(|i| i % 3 == offset).collect();
    let kept: Vec<serde_json::Value> = records
        .iter()
        .zip(&failing)
        .filter(|(_, fail)| !**fail)
        .map(|(record, _)| record.clone())
        .collect();
    let mut put_results = std::collections::VecDeque::new();
    if !kept.is_empty() {
        let mut smaller = body.clone();
        smaller[items_key] = serde_json::Value::Array(kept);
        let bytes = smaller.to_string().into_bytes();
        request
            .headers_mut()
            .insert("content-length", bytes.len().to_string());
        *request.body_mut() = SdkBody::from(bytes);
        let mut response = inner.call(request).await?;
        if !response.status().is_success() {
            return Ok(response);
        }
        let answer = aws_smithy_types::byte_stream::ByteStream::new(response.take_body())
            .collect()
            .await
            .map_err(|error| ConnectorError::io(error.into()))?
            .into_bytes();
        let answer: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|_| malformed("response is not JSON"))?;
        put_results.extend(answer[results_key].as_array().cloned().unwrap_or_default());
    }
    let mut failed = 0;
    let results: Vec<serde_json::Value> = failing
        .iter()
        .map(|fail| {
            if *fail {
                failed += 1;
                failure(failed)
            } else {
                put_results.pop_front().unwrap_or_else(missing)
            }
        })
        .collect();
    let failed_total = failed
        + results
            .iter()
            .filter(|r| r.get("ErrorCode").is_some())
            .count()
            .saturating_sub(failed);
    let body = if statements {
        serde_json::json!({"Responses": results})
    } else {
        serde_json::json!({"FailedRecordCount": failed_total, "Records": results})
    };
    let mut response = HttpResponse::new(
        StatusCode::try_from(200).expect("valid status"),
        SdkBody::from(body.to_string()),
    );
    response.headers_mut().insert(
        "content-type",
        if statements {
            "application/x-amz-json-1.0"
        } else {
            "application/x-amz-json-1.1"
        },
    );
    Ok(response)
}

/// The steps of the counting protocol a worker can be told to crash at.
pub const CRASH_POINTS: [&str; 6] = [
    // The batch is decoded and validated; nothing written.
    "after_validate",
    // Rejects are kept; no vote put yet.
    "after_rejects",
    // One conditional put is done, the others may not be.
    "mid_puts",
    // Every put is done; nothing committed.
    "after_puts",
    // The first of several commit parts is committed.
    "between_commits",
    // The whole batch is committed; the next read not started.
    "after_commit",
];

struct CrashPlan {
    point: &'static str,
    at: u64,
    seen: AtomicU64,
}

static CRASH: OnceLock<Option<CrashPlan>> = OnceLock::new();

/// Parses `name[:N]` and arms the crash point for this process.
pub fn arm_crash_point(spec: &str) -> Result<(), String> {
    let (name, at) = match spec.split_once(':') {
        Some((name, count)) => (
            name,
            count
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{spec:?}: the count must be a positive integer"))?,
        ),
        None => (spec, 1),
    };
    let point = CRASH_POINTS
        .iter()
        .find(|point| **point == name)
        .ok_or_else(|| format!("unknown crash point {name:?}; one of {CRASH_POINTS:?}"))?;
    let _ = CRASH.set(Some(CrashPlan {
        point,
        at,
        seen: AtomicU64::new(0),
    }));
    Ok(())
}

/// Aborts the process if the armed crash point is `point` and this is the
/// N-th time it is reached.
pub fn crash_point(point: &'static str) {
    debug_assert!(CRASH_POINTS.contains(&point));
    if let Some(Some(plan)) = CRASH.get() {
        if plan.point == point && plan.seen.fetch_add(1, Ordering::SeqCst) + 1 == plan.at {
            eprintln!("crash point {point} reached: aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let faults = Faults::parse(
            "GetRecords:throttle:0.05, TransactWriteItems:conflict:1,*:latency:0.5:20,PutItem:lost:0",
            1,
        )
        .unwrap();
        assert_eq!(faults.rules.len(), 4);
        assert_eq!(faults.rules[2].operation, None);
        assert_eq!(faults.rules[2].latency, Duration::from_millis(20));
        for (spec, needle) in [
            ("GetRecords:throttle", "OPERATION:KIND"),
            ("GetRecords:explode:0.1", "unknown fault"),
            ("GetRecords:throttle:2", "probability"),
            ("*:latency:0.1", "MILLIS"),
            ("Get Records:5xx:0.1", "bad operation"),
        ] {
            let error = Faults::parse(spec, 1).unwrap_err();
            assert!(error.contains(needle), "{spec}: {error}");
        }
        assert!(Faults::parse("", 1).unwrap().is_empty());
    }

    #[test]
    fn an_operation_meets_the_same_faults_whatever_other_operations_draw() {
        let spec = "*:5xx:0.3,SubscribeToShard:throttle:0.3";
        let alone = Faults::parse(spec, 42).unwrap();
        let mixed = Faults::parse(spec, 42).unwrap();
        let kinds = |faults: &Faults| -> Vec<FaultKind> {
            faults
                .draw("SubscribeToShard")
                .iter()
                .map(|rule| rule.kind)
                .collect()
        };
        let mut by_alone = Vec::new();
        let mut by_mixed = Vec::new();
        for call in 0..200 {
            by_alone.push(kinds(&alone));
            // Other operations' calls in between, a different number each time.
            for _ in 0..call % 7 {
                mixed.draw("GetRecords");
                mixed.draw("PutItem");
            }
            by_mixed.push(kinds(&mixed));
        }
        assert_eq!(by_alone, by_mixed);
        // Another seed, other faults.
        let other = Faults::parse(spec, 43).unwrap();
        let by_other: Vec<Vec<FaultKind>> = (0..200).map(|_| kinds(&other)).collect();
        assert_ne!(by_alone, by_other);
    }

    #[test]
    fn draws_follow_operation_and_probability() {
        let faults = Faults::parse("PutItem:throttle:1,GetRecords:5xx:0", 7).unwrap();
        assert_eq!(faults.draw("PutItem").len(), 1);
        assert!(faults.draw("GetRecords").is_empty());
        assert!(faults.draw("Query").is_empty());
        let half = Faults::parse("*:5xx:0.5", 7).unwrap();
        let hits = (0..1000)
            .filter(|_| !half.draw("PutItem").is_empty())
            .count();
        assert!((400..600).contains(&hits), "{hits}");
    }

    #[test]
    fn crash_points_are_named() {
        assert!(arm_crash_point("nowhere")
            .unwrap_err()
            .contains("unknown crash point"));
        assert!(arm_crash_point("after_puts:0")
            .unwrap_err()
            .contains("positive"));
    }
}
