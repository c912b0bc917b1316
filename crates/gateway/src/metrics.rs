//! The gateway's metrics, in one place, served at `/metrics` in the
//! Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Bucket upper bounds of the vote latency, in milliseconds.
const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000];

/// One route's request counts by (method, status).
type ByMethodAndStatus = BTreeMap<(&'static str, u16), u64>;

#[derive(Default)]
pub struct GatewayMetrics {
    /// Requests by route, then (method, status): a known route's count
    /// is found without allocating.
    requests: Mutex<BTreeMap<String, ByMethodAndStatus>>,
    /// Refused votes by error code.
    refused: Mutex<BTreeMap<&'static str, u64>>,
    pub votes_accepted: AtomicU64,
    pub rate_limited_voter: AtomicU64,
    pub rate_limited_ip: AtomicU64,
    pub sse_clients: AtomicI64,
    vote_latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    vote_latency_sum_ms: AtomicU64,
}

/// The `method` label: the standard methods by name, any other as `other`,
/// so that clients sending made-up methods cannot grow the metrics without
/// bound.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

impl GatewayMetrics {
    pub fn request(&self, route: &str, method: &str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let by_route = match requests.get_mut(route) {
            Some(by_route) => by_route,
            None => requests.entry(route.to_owned()).or_default(),
        };
        *by_route.entry((method_label(method), status)).or_default() += 1;
    }

    pub fn refused(&self, code: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    pub fn vote_latency(&self, millis: u64) {
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|bound| millis <= *bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.vote_latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.vote_latency_sum_ms
            .fetch_add(millis, Ordering::Relaxed);
    }

    /// The counters as JSON, for CloudWatch.
    pub fn snapshot(&self) -> serde_json::Value {
        let refused: serde_json::Map<String, serde_json::Value> = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(code, count)| ((*code).to_owned(), (*count).into()))
            .collect();
        let count: u64 = self
            .vote_latency_buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .sum();
        serde_json::json!({
            "votes_accepted": self.votes_accepted.load(Ordering::Relaxed),
            "votes_refused": refused,
            "rate_limited": {
                "voter": self.rate_limited_voter.load(Ordering::Relaxed),
                "ip": self.rate_limited_ip.load(Ordering::Relaxed),
            },
            "sse_clients": self.sse_clients.load(Ordering::Relaxed),
            "vote_latency_ms": {
                "sum": self.vote_latency_sum_ms.load(Ordering::Relaxed),
                "count": count,
            },
        })
    }

    /// The Prometheus text exposition; `extra` adds gauges and counters
    /// owned elsewhere (name, help, type, value).
    pub fn render(&self, extra: &[(&str, &str, &str, f64)]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP tally_gateway_requests_total HTTP requests by route, method and status.\n# TYPE tally_gateway_requests_total counter");
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let rows = requests.iter().flat_map(|(route, counts)| {
            counts
                .iter()
                .map(move |((method, status), count)| (route, method, status, count))
        });
        for (route, method, status, count) in rows {
            let _ = writeln!(
                out,
                "tally_gateway_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {count}",
                route.replace('"', "")
            );
        }
        let _ = writeln!(out, "# HELP tally_gateway_votes_accepted_total Votes put on the stream (202).\n# TYPE tally_gateway_votes_accepted_total counter\ntally_gateway_votes_accepted_total {}", self.votes_accepted.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP tally_gateway_votes_refused_total Votes refused, by error code.\n# TYPE tally_gateway_votes_refused_total counter");
        for (code, count) in self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "tally_gateway_votes_refused_total{{code=\"{code}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# HELP tally_gateway_rate_limited_total Requests refused by a rate limit, by scope.\n# TYPE tally_gateway_rate_limited_total counter");
        let _ = writeln!(
            out,
            "tally_gateway_rate_limited_total{{scope=\"voter\"}} {}",
            self.rate_limited_voter.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "tally_gateway_rate_limited_total{{scope=\"ip\"}} {}",
            self.rate_limited_ip.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP tally_gateway_sse_clients Connected results streams.\n# TYPE tally_gateway_sse_clients gauge\ntally_gateway_sse_clients {}", self.sse_clients.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP tally_gateway_vote_duration_ms Time to accept a vote, in milliseconds.\n# TYPE tally_gateway_vote_duration_ms histogram");
        let mut cumulative = 0;
        for (index, bucket) in self.vote_latency_buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS_MS
                .get(index)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(
                out,
                "tally_gateway_vote_duration_ms_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "tally_gateway_vote_duration_ms_sum {}",
            self.vote_latency_sum_ms.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "tally_gateway_vote_duration_ms_count {cumulative}");
        for (name, help, kind, value) in extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = GatewayMetrics::default();
        metrics.request("/v1/polls/{poll}/votes", "POST", 202);
        metrics.request("/v1/polls/{poll}/votes", "POST", 202);
        for made_up in ["BREW", "WHEN", "X-1", "X-2"] {
            metrics.request("fallback", made_up, 405);
        }
        metrics.refused("poll_not_open");
        metrics.vote_latency(3);
        metrics.vote_latency(7_000);
        let text = metrics.render(&[("tally_x", "An extra.", "gauge", 2.0)]);
        assert!(text.contains("tally_gateway_requests_total{route=\"/v1/polls/{poll}/votes\",method=\"POST\",status=\"202\"} 2"), "{text}");
        assert!(text.contains("tally_gateway_votes_refused_total{code=\"poll_not_open\"} 1"));
        // Made-up methods share one label.
        assert!(text.contains("tally_gateway_requests_total{route=\"fallback\",method=\"other\",status=\"405\"} 4"), "{text}");
        assert!(!text.contains("BREW"), "{text}");
        assert!(text.contains("tally_gateway_vote_duration_ms_bucket{le=\"5\"} 1"));
        assert!(text.contains("tally_gateway_vote_duration_ms_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("tally_x 2"));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
