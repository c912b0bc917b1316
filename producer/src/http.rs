//! The HTTP producer (feature `http`): a client for the vote endpoint of
//! Tally's gateway, `POST /v1/polls/{poll}/votes` with `{"option": ..}`,
//! authenticated by the voter's bearer token (the voter is the token's
//! subject; the body never names one).
//!
//! Every vote carries an `Idempotency-Key`: its vote id, chosen by the
//! client before the first attempt. Retrying with the same key is safe, so
//! a timeout, a connection error, a 429 or a 5xx is retried (with backoff,
//! honouring `Retry-After`) until the vote's deadline; other 4xx are final.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How the client behaves.
#[derive(Clone, Debug)]
pub struct HttpProducerConfig {
    /// The gateway's base URL, e.g. `http://127.0.0.1:8080` (plain HTTP;
    /// TLS ends at the load balancer).
    pub base_url: String,
    /// Each attempt's time limit.
    pub attempt_timeout: Duration,
    /// A vote not accepted by then fails.
    pub deadline: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for HttpProducerConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080".into(),
            attempt_timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(30),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The gateway's answer to a vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoteAnswer {
    /// 202: accepted (counted later by the worker).
    Accepted { vote_id: String },
    /// 409: the voter already has a counted vote in the poll.
    AlreadyVoted { body: serde_json::Value },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpVoteError {
    #[error("invalid vote: {0}")]
    Invalid(String),
    /// A final 4xx, with the gateway's JSON error body.
    #[error("the gateway refused the vote ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("no answer within the deadline after {attempts} attempts; last error: {last_error}")]
    Expired { attempts: u32, last_error: String },
}

/// A client for the vote endpoint.
#[derive(Clone)]
pub struct HttpProducer {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    config: HttpProducerConfig,
}

impl HttpProducer {
    pub fn new(config: HttpProducerConfig) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            config,
        }
    }

    /// Posts a vote for `poll_id`, as the voter `token` names, keyed by
    /// `vote_id` (make one per vote, e.g. a ULID, and keep it for retries).
    pub async fn vote(
        &self,
        token: &str,
        poll_id: &str,
        option: &str,
        vote_id: &str,
    ) -> Result<VoteAnswer, HttpVoteError> {
        for (field, value, max) in [
            ("poll_id", poll_id, 128),
            ("option", option, 128),
            ("vote_id", vote_id, 64),
        ] {
            if !crate::vote::valid_id(value, max) {
                return Err(HttpVoteError::Invalid(format!(
                    "{field} must be 1 to {max} characters of [A-Za-z0-9._:@-]"
                )));
            }
        }
        let url = format!(
            "{}/v1/polls/{poll_id}/votes",
            self.config.base_url.trim_end_matches('/')
        );
        let body = Bytes::from(serde_json::json!({ "option": option }).to_string());
        let started = tokio::time::Instant::now();
        let mut backoff = crate::producer::delays(self.config.min_backoff, self.config.max_backoff);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let request = hyper::Request::post(&url)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .header("idempotency-key", vote_id)
                .body(Full::new(body.clone()))
                .map_err(|error| HttpVoteError::Invalid(error.to_string()))?;
            let attempt = tokio::time::timeout(self.config.attempt_timeout, async {
                let response = self
                    .client
                    .request(request)
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<u64>().ok())
                    .map(Duration::from_secs);
                let bytes = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok::<_, String>((status, retry_after, bytes))
            })
            .await;
            let (last_error, wait_at_least) = match attempt {
                Err(_) => (
                    format!("attempt timed out after {:?}", self.config.attempt_timeout),
                    None,
                ),
                Ok(Err(error)) => (error, None),
                Ok(Ok((status, retry_after, bytes))) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    match status {
                        200..=202 => {
                            let value: serde_json::Value =
                                serde_json::from_slice(&bytes).unwrap_or_default();
                            let vote_id = value["vote_id"].as_str().unwrap_or(vote_id).to_owned();
                            return Ok(VoteAnswer::Accepted { vote_id });
                        }
                        409 => {
                            return Ok(VoteAnswer::AlreadyVoted {
                                body: serde_json::from_slice(&bytes).unwrap_or_default(),
                            })
                        }
                        429 | 500..=599 => (format!("HTTP {status}: {text}"), retry_after),
                        _ => return Err(HttpVoteError::Refused { status, body: text }),
                    }
                }
            };
            let delay = backoff
                .next()
                .unwrap_or(self.config.max_backoff)
                .max(wait_at_least.unwrap_or_default());
            if started.elapsed() + delay >= self.config.deadline {
                return Err(HttpVoteError::Expired {
                    attempts,
                    last_error,
                });
            }
            tokio::time::sleep(delay).await;
        }
    }
}
