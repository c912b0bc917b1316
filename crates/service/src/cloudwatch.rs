//! Metrics out of the process: the worker's and the gateway's metrics
//! published to CloudWatch with `PutMetricData`
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricData.html>),
//! batched, once per interval, under one namespace with an `Application`
//! dimension (and `WorkerId` or `GatewayId`, `Reason`, `Code`, `Cause` or
//! `Scope` where useful). Off unless `TALLY_CLOUDWATCH=true`.
//!
//! [`WORKER_METRICS`] and [`GATEWAY_METRICS`] are the one list of what is
//! published: the dashboards and alarms in `infra/terraform/` may name only
//! these (a test checks it). Counters are sent as the change over the
//! interval, gauges as their value, latencies as the interval's average.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use clap::Args;
use tokio_util::sync::CancellationToken;

/// How a metric is derived from a process's JSON snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A running total: the change since the last publish is sent.
    Counter,
    /// A value now.
    Gauge,
    /// The interval's average of a histogram (`sum` / `count` changes).
    Average,
}

/// One published metric.
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    pub name: &'static str,
    /// JSON pointer into the snapshot.
    pub path: &'static str,
    pub kind: Kind,
    /// `Count` or `Milliseconds`.
    pub unit: &'static str,
    /// For an object at `path`: one datum per key, with this dimension.
    pub split_by: Option<&'static str>,
    /// Adds a dimension naming the process: `WorkerId` for a worker's
    /// metric, `GatewayId` for a gateway's.
    pub per_process: Option<&'static str>,
}

const fn metric(name: &'static str, path: &'static str, kind: Kind) -> MetricDef {
    MetricDef {
        name,
        path,
        kind,
        unit: "Count",
        split_by: None,
        per_process: None,
    }
}

const fn split(mut def: MetricDef, dimension: &'static str) -> MetricDef {
    def.split_by = Some(dimension);
    def
}

const fn millis(mut def: MetricDef) -> MetricDef {
    def.unit = "Milliseconds";
    def
}

/// Per worker process (`WorkerId`).
const fn per_worker(mut def: MetricDef) -> MetricDef {
    def.per_process = Some("WorkerId");
    def
}

/// Per gateway process (`GatewayId`).
const fn per_gateway(mut def: MetricDef) -> MetricDef {
    def.per_process = Some("GatewayId");
    def
}

/// What `tally worker` publishes.
pub const WORKER_METRICS: &[MetricDef] = &[
    metric("VotesCounted", "/tally_votes_counted_total", Kind::Counter),
    metric(
        "VotesDuplicate",
        "/tally_votes_duplicate_total",
        Kind::Counter,
    ),
    split(
        metric(
            "VotesRejected",
            "/tally_votes_rejected_total",
            Kind::Counter,
        ),
        "Reason",
    ),
    metric("CommitsLost", "/tally_commits_lost_total", Kind::Counter),
    millis(metric(
        "CommitLatency",
        "/tally_commit_latency_ms",
        Kind::Average,
    )),
    split(
        metric("Retries", "/tally_retries_total", Kind::Counter),
        "Cause",
    ),
    per_worker(metric(
        "LeasesHeld",
        "/tally_lease_leases_held",
        Kind::Gauge,
    )),
    metric(
        "LeasesLost",
        "/tally_lease_leases_lost_total",
        Kind::Counter,
    ),
    per_worker(millis(metric(
        "MillisBehindLatest",
        "/tally_lease_millis_behind_latest",
        Kind::Gauge,
    ))),
    metric(
        "GetRecordsThrottles",
        "/tally_lease_get_records_throttles_total",
        Kind::Counter,
    ),
    metric("OpenShards", "/open_shards", Kind::Gauge),
    metric(
        "LeaseTableSkippedItems",
        "/tally_lease_lease_table_skipped_items",
        Kind::Gauge,
    ),
];

/// What `tally gateway` publishes.
pub const GATEWAY_METRICS: &[MetricDef] = &[
    metric("VotesAccepted", "/votes_accepted", Kind::Counter),
    split(
        metric("VotesRefused", "/votes_refused", Kind::Counter),
        "Code",
    ),
    split(
        metric("RateLimited", "/rate_limited", Kind::Counter),
        "Scope",
    ),
    millis(metric("VoteLatency", "/vote_latency_ms", Kind::Average)),
    per_gateway(metric("SseClients", "/sse_clients", Kind::Gauge)),
    metric(
        "RecountMismatchPolls",
        "/recount_mismatch_polls",
        Kind::Gauge,
    ),
];

/// The settings, shared by the worker and the gateway.
#[derive(Args, Clone, Debug)]
pub struct CloudWatchArgs {
    /// Publish metrics to CloudWatch (PutMetricData).
    #[arg(long, env = "TALLY_CLOUDWATCH", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub cloudwatch: bool,
    /// Namespace of the published metrics.
    #[arg(long, env = "TALLY_CLOUDWATCH_NAMESPACE", default_value = "Tally")]
    pub cloudwatch_namespace: String,
    /// Seconds between publishes.
    #[arg(long, env = "TALLY_CLOUDWATCH_INTERVAL_S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub cloudwatch_interval_s: u64,
}

/// One value to publish, before it becomes an SDK datum.
#[derive(Clone, Debug, PartialEq)]
pub struct Datum {
    pub name: &'static str,
    pub dimensions: Vec<(String, String)>,
    pub value: f64,
    pub unit: &'static str,
}

fn number(value: &serde_json::Value) -> Option<f64> {
    value.as_f64()
}

/// The data of one publish, from the current snapshot and the previous one.
pub fn datums(
    defs: &[MetricDef],
    current: &serde_json::Value,
    previous: Option<&serde_json::Value>,
    application: &str,
    process: &str,
) -> Vec<Datum> {
    let mut out = Vec::new();
    for def in defs {
        let Some(now) = current.pointer(def.path) else {
            continue;
        };
        let before = previous.and_then(|previous| previous.pointer(def.path));
        let mut parts: Vec<(
            Option<String>,
            &serde_json::Value,
            Option<&serde_json::Value>,
        )> = Vec::new();
        match (def.split_by, now.as_object()) {
            (Some(_), Some(object)) if def.kind != Kind::Average => {
                for (key, value) in object {
                    parts.push((Some(key.clone()), value, before.and_then(|b| b.get(key))));
                }
            }
            _ => parts.push((None, now, before)),
        }
        for (key, now, before) in parts {
            let value = match def.kind {
                Kind::Gauge => number(now),
                Kind::Counter => {
                    number(now).map(|now| (now - before.and_then(number).unwrap_or(0.0)).max(0.0))
                }
                Kind::Average => {
                    let field = |value: Option<&serde_json::Value>, name: &str| {
                        value
                            .and_then(|v| v.get(name))
                            .and_then(number)
                            .unwrap_or(0.0)
                    };
                    let count = field(Some(now), "count") - field(before, "count");
                    (count > 0.0).then(|| (field(Some(now), "sum") - field(before, "sum")) / count)
                }
            };
            let Some(value) = value else { continue };
            let mut dimensions = vec![("Application".to_owned(), application.to_owned())];
            if let (Some(dimension), Some(key)) = (def.split_by, key) {
                dimensions.push((dimension.to_owned(), key));
            }
            if let Some(dimension) = def.per_process {
                dimensions.push((dimension.to_owned(), process.to_owned()));
            }
            out.push(Datum {
                name: def.name,
                dimensions,
                value,
                unit: def.unit,
            });
        }
    }
    out
}

fn sdk_datum(datum: &Datum) -> MetricDatum {
    MetricDatum::builder()
        .metric_name(datum.name)
        .value(datum.value)
        .unit(StandardUnit::from(datum.unit))
        .set_dimensions(Some(
            datum
                .dimensions
                .iter()
                .map(|(name, value)| Dimension::builder().name(name).value(value).build())
                .collect(),
        ))
        .build()
}

/// Publishes `snapshot()` every interval until `stop`, and once more then.
pub async fn publish<F, Fut>(
    client: aws_sdk_cloudwatch::Client,
    args: CloudWatchArgs,
    defs: &'static [MetricDef],
    application: String,
    process: String,
    snapshot: F,
    stop: CancellationToken,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = serde_json::Value>,
{
    let interval = Duration::from_secs(args.cloudwatch_interval_s);
    let mut previous: Option<serde_json::Value> = None;
    let mut sent: BTreeMap<&'static str, u64> = BTreeMap::new();
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(interval) => false,
        };
        let current = snapshot().await;
        let data = datums(defs, &current, previous.as_ref(), &application, &process);
        for chunk in data.chunks(500) {
            let request = client
                .put_metric_data()
                .namespace(&args.cloudwatch_namespace)
                .set_metric_data(Some(chunk.iter().map(sdk_datum).collect()));
            match request.send().await {
                Ok(_) => {
                    for datum in chunk {
                        *sent.entry(datum.name).or_default() += 1;
                    }
                }
                Err(error) => tracing::warn!(
                    error = %aws_sdk_cloudwatch::error::DisplayErrorContext(&error),
                    "publishing metrics to CloudWatch failed"
                ),
            }
        }
        previous = Some(current);
        if stopping {
            tracing::info!(
                data = sent.values().sum::<u64>(),
                "metrics published to CloudWatch"
            );
            return;
        }
    }
}

/// Checks the settings, naming the one at fault.
pub fn validate(args: &CloudWatchArgs) -> anyhow::Result<()> {
    let namespace = &args.cloudwatch_namespace;
    if namespace.is_empty()
        || namespace.len() > 255
        || namespace.starts_with("AWS/")
        || !namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_/#:".contains(&b))
    {
        anyhow::bail!("invalid setting TALLY_CLOUDWATCH_NAMESPACE: {namespace:?} is not a custom CloudWatch namespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_send_changes_gauges_values_and_latencies_averages() {
        let before = serde_json::json!({
            "tally_votes_counted_total": 100,
            "tally_votes_rejected_total": {"malformed": 2, "unknown_poll": 0},
            "tally_commit_latency_ms": {"sum": 100, "count": 10},
            "tally_lease_leases_held": 3,
        });
        let now = serde_json::json!({
            "tally_votes_counted_total": 250,
            "tally_votes_rejected_total": {"malformed": 5, "unknown_poll": 0},
            "tally_commit_latency_ms": {"sum": 400, "count": 20},
            "tally_lease_leases_held": 4,
        });
        let data = datums(WORKER_METRICS, &now, Some(&before), "tally", "w-1");
        let find = |name: &str, extra: Option<(&str, &str)>| {
            data.iter()
                .find(|d| {
                    d.name == name
                        && extra.is_none_or(|(k, v)| {
                            d.dimensions.iter().any(|(dk, dv)| dk == k && dv == v)
                        })
                })
                .map(|d| d.value)
        };
        assert_eq!(find("VotesCounted", None), Some(150.0));
        assert_eq!(
            find("VotesRejected", Some(("Reason", "malformed"))),
            Some(3.0)
        );
        assert_eq!(
            find("VotesRejected", Some(("Reason", "unknown_poll"))),
            Some(0.0)
        );
        assert_eq!(find("CommitLatency", None), Some(30.0));
        assert_eq!(find("LeasesHeld", Some(("WorkerId", "w-1"))), Some(4.0));
        assert_eq!(
            find("OpenShards", None),
            None,
            "absent from the snapshot: not sent"
        );
        let first = datums(WORKER_METRICS, &now, None, "tally", "w-1");
        assert!(first
            .iter()
            .any(|d| d.name == "VotesCounted" && d.value == 250.0));
        assert!(first
            .iter()
            .all(|d| d.dimensions[0] == ("Application".to_owned(), "tally".to_owned())));
    }

    #[test]
    fn a_gateway_metric_names_its_gateway_not_a_worker() {
        let now = serde_json::json!({"sse_clients": 7});
        let data = datums(GATEWAY_METRICS, &now, None, "tally", "gw-1");
        let sse = data.iter().find(|d| d.name == "SseClients").expect("sent");
        assert_eq!(sse.value, 7.0);
        assert!(sse
            .dimensions
            .contains(&("GatewayId".to_owned(), "gw-1".to_owned())));
        assert!(sse.dimensions.iter().all(|(name, _)| name != "WorkerId"));
    }

    #[test]
    fn names_are_unique_and_namespaces_checked() {
        let mut names: Vec<&str> = WORKER_METRICS
            .iter()
            .chain(GATEWAY_METRICS)
            .map(|def| def.name)
            .collect();
        names.sort();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count);
        let args = |namespace: &str| CloudWatchArgs {
            cloudwatch: true,
            cloudwatch_namespace: namespace.into(),
            cloudwatch_interval_s: 60,
        };
        assert!(validate(&args("Tally")).is_ok());
        assert!(validate(&args("AWS/Kinesis")).is_err());
        assert!(validate(&args("")).is_err());
    }
}
