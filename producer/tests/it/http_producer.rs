//! The HTTP producer against a stand-in for the gateway's vote endpoint on
//! port 0: the bearer token and the idempotency key travel on every
//! attempt, 5xx, 429 and timeouts are retried with the same key (so the
//! endpoint accepts the vote once), 409 and other 4xx are answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use tally_producer::http::{HttpProducer, HttpProducerConfig, HttpVoteError, VoteAnswer};

#[derive(Default)]
struct Seen {
    /// Attempts per idempotency key.
    attempts: HashMap<String, u32>,
    accepted: Vec<(String, String, String)>,
}

async fn vote(
    State(seen): State<Arc<Mutex<Seen>>>,
    Path(poll): Path<String>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> (StatusCode, HeaderMap, Json<serde_json::Value>) {
    let mut out = HeaderMap::new();
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if token != "Bearer voter-token" {
        return (
            StatusCode::UNAUTHORIZED,
            out,
            Json(serde_json::json!({"error": {"code": "unauthorized"}})),
        );
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut seen = seen.lock().unwrap();
    let attempt = {
        let count = seen.attempts.entry(key.clone()).or_default();
        *count += 1;
        *count
    };
    match poll.as_str() {
        "flaky" if attempt == 1 => (
            StatusCode::SERVICE_UNAVAILABLE,
            out,
            Json(serde_json::json!({"error": {"code": "unavailable"}})),
        ),
        "busy" if attempt == 1 => {
            out.insert("retry-after", "1".parse().unwrap());
            (
                StatusCode::TOO_MANY_REQUESTS,
                out,
                Json(serde_json::json!({"error": {"code": "rate_limited"}})),
            )
        }
        "closed" => (
            StatusCode::UNPROCESSABLE_ENTITY,
            out,
            Json(serde_json::json!({"error": {"code": "poll_not_open"}})),
        ),
        "again" => (
            StatusCode::CONFLICT,
            out,
            Json(serde_json::json!({"vote": {"option": "a"}})),
        ),
        "down" => (
            StatusCode::BAD_GATEWAY,
            out,
            Json(serde_json::json!({"error": {"code": "down"}})),
        ),
        _ => {
            if !seen.accepted.iter().any(|(k, _, _)| *k == key) {
                let option = body["option"].as_str().unwrap_or("").to_owned();
                assert_eq!(
                    body.as_object().unwrap().len(),
                    1,
                    "the body holds only the option"
                );
                seen.accepted.push((key.clone(), poll.clone(), option));
            }
            (
                StatusCode::ACCEPTED,
                out,
                Json(serde_json::json!({"vote_id": key, "status": "accepted"})),
            )
        }
    }
}

async fn serve() -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = Router::new()
        .route("/v1/polls/{poll}/votes", post(vote))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), seen)
}

fn client(base_url: String, deadline: Duration) -> HttpProducer {
    HttpProducer::new(HttpProducerConfig {
        base_url,
        deadline,
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..HttpProducerConfig::default()
    })
}

#[tokio::test]
async fn retries_carry_the_same_key_and_the_vote_is_accepted_once() {
    let (url, seen) = serve().await;
    let producer = client(url, Duration::from_secs(10));
    let answer = producer
        .vote("voter-token", "flaky", "a", "vote-1")
        .await
        .unwrap();
    assert_eq!(
        answer,
        VoteAnswer::Accepted {
            vote_id: "vote-1".into()
        }
    );
    // 429 with Retry-After: 1 waits that second, though the backoff is 50 ms at most.
    let started = std::time::Instant::now();
    let answer = producer
        .vote("voter-token", "busy", "b", "vote-2")
        .await
        .unwrap();
    assert_eq!(
        answer,
        VoteAnswer::Accepted {
            vote_id: "vote-2".into()
        }
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    // The same vote sent again (an app retry) is still one vote.
    producer
        .vote("voter-token", "flaky", "a", "vote-1")
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.attempts["vote-1"], 3);
    assert_eq!(seen.attempts["vote-2"], 2);
    assert_eq!(seen.accepted.len(), 2);
}

#[tokio::test]
async fn answers_and_final_refusals_are_not_retried() {
    let (url, seen) = serve().await;
    let producer = client(url.clone(), Duration::from_secs(10));
    match producer
        .vote("voter-token", "again", "a", "vote-3")
        .await
        .unwrap()
    {
        VoteAnswer::AlreadyVoted { body } => assert_eq!(body["vote"]["option"], "a"),
        other => panic!("{other:?}"),
    }
    match producer.vote("voter-token", "closed", "a", "vote-4").await {
        Err(HttpVoteError::Refused { status: 422, body }) => {
            assert!(body.contains("poll_not_open"))
        }
        other => panic!("{other:?}"),
    }
    match producer.vote("wrong", "p", "a", "vote-5").await {
        Err(HttpVoteError::Refused { status: 401, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        producer.vote("voter-token", "p q", "a", "vote-6").await,
        Err(HttpVoteError::Invalid(_))
    ));
    assert_eq!(seen.lock().unwrap().attempts["vote-4"], 1);
    // A gateway that stays down: the vote fails at its deadline, saying why.
    let short = client(url, Duration::from_millis(300));
    match short.vote("voter-token", "down", "a", "vote-7").await {
        Err(HttpVoteError::Expired {
            attempts,
            last_error,
        }) => {
            assert!(attempts >= 2);
            assert!(last_error.contains("502"), "{last_error}");
        }
        other => panic!("{other:?}"),
    }
    // Nobody listening: connection errors are retried until the deadline.
    let nowhere = client("http://127.0.0.1:9".into(), Duration::from_millis(200));
    assert!(matches!(
        nowhere.vote("voter-token", "p", "a", "vote-8").await,
        Err(HttpVoteError::Expired { .. })
    ));
}
