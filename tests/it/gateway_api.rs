//! The gateway's API on port 0 against ministack through the real AWS SDK:
//! every route, every error path with its status and JSON code, the auth
//! failures, the rate limits, CORS, the HTTP producer against the real
//! endpoint, and a vote that a real `tally worker` counts and that then
//! shows in the results and on the results stream.

use crate::local_stack;

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use local_stack::{eventually, Stack};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};

async fn body(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")),
    )
}

/// GET `url` with a bearer token: the status and the JSON body.
async fn get_with(client: &Client, url: String, token: &str) -> (StatusCode, Value) {
    body(client.get(url).bearer_auth(token).send().await.unwrap()).await
}

/// Asserts an error answer's status and stable code.
async fn expect_error(response: Response, status: u16, code: &str) -> Value {
    let (actual, value) = body(response).await;
    assert_eq!(actual.as_u16(), status, "{value}");
    assert_eq!(value["error"]["code"], code, "{value}");
    assert!(value["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    value
}

fn token_with(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now_s() -> i64 {
    tally_contract::time::now_millis() / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_401_or_403_with_their_codes() {
    let stack = Stack::new().await;
    let gateway = stack.gateway(&[]).await;
    gateway.open_poll("auth", &["a", "b"]).await;
    let client = Client::new();
    let vote = |token: Option<String>| {
        let mut request = client
            .post(gateway.url("/v1/polls/auth/votes"))
            .json(&json!({"option": "a"}));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let response = vote(None).await.unwrap();
    assert!(response.headers().contains_key("www-authenticate"));
    expect_error(response, 401, "missing_token").await;
    expect_error(
        vote(Some("not-a-jwt".into())).await.unwrap(),
        401,
        "invalid_token",
    )
    .await;
    let good = |overrides: Value| {
        let mut claims =
            json!({"sub": "u-1", "aud": "tally", "iss": "tally-local", "exp": now_s() + 60});
        for (key, value) in overrides.as_object().unwrap() {
            claims[key] = value.clone();
        }
        claims
    };
    let wrong_secret = token_with(&"x".repeat(32), good(json!({})));
    let answer = expect_error(
        vote(Some(wrong_secret)).await.unwrap(),
        401,
        "invalid_token",
    )
    .await;
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("signature"));
    let expired = token_with(&stack.secret, good(json!({"exp": now_s() - 60})));
    expect_error(vote(Some(expired)).await.unwrap(), 401, "token_expired").await;
    let audience = token_with(&stack.secret, good(json!({"aud": "someone-else"})));
    let answer = expect_error(vote(Some(audience)).await.unwrap(), 401, "invalid_token").await;
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("audience"));
    let issuer = token_with(&stack.secret, good(json!({"iss": "elsewhere"})));
    expect_error(vote(Some(issuer)).await.unwrap(), 401, "invalid_token").await;
    let no_subject = token_with(
        &stack.secret,
        json!({"aud": "tally", "iss": "tally-local", "exp": now_s() + 60}),
    );
    expect_error(vote(Some(no_subject)).await.unwrap(), 401, "invalid_token").await;
    let voter = gateway.token("u-1");
    for (method, path) in [
        ("POST", "/v1/polls"),
        ("POST", "/v1/polls/auth/open"),
        ("POST", "/v1/polls/auth/close"),
        ("GET", "/v1/pipeline"),
    ] {
        let request = match method {
            "POST" => client.post(gateway.url(path)).json(&json!({})),
            _ => client.get(gateway.url(path)),
        };
        let response = request.bearer_auth(&voter).send().await.unwrap();
        expect_error(response, 403, "forbidden").await;
        // Without a token, with the route's own method (and a valid body).
        let anonymous = match method {
            "POST" => client.post(gateway.url(path)).json(&json!({
                "poll_id": "anon", "question": "?", "options": [{"id": "a"}, {"id": "b"}]
            })),
            _ => client.get(gateway.url(path)),
        };
        let response = anonymous.send().await.unwrap();
        expect_error(response, 401, "missing_token").await;
    }
    let response = client
        .get(gateway.url("/v1/polls/auth/votes/me"))
        .send()
        .await
        .unwrap();
    expect_error(response, 401, "missing_token").await;
    assert_eq!(
        client
            .post(gateway.url("/v1/dev/token"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "demo tokens are off unless asked for"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_routes_and_their_errors() {
    let stack = Stack::new().await;
    let gateway = stack.gateway(&["--max-body-bytes", "1024"]).await;
    let client = Client::new();
    let admin = gateway.admin_token();
    let create = |value: Value| {
        client
            .post(gateway.url("/v1/polls"))
            .bearer_auth(&admin)
            .json(&value)
            .send()
    };
    let poll = json!({"poll_id": "final", "question": "Who wins?",
        "options": [{"id": "red", "label": "Red"}, {"id": "blue"}]});
    let (status, created) = body(create(poll.clone()).await.unwrap()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "draft");
    assert_eq!(
        created["options"][1]["label"], "blue",
        "the label defaults to the id"
    );
    assert_eq!(
        body(create(poll.clone()).await.unwrap()).await.0,
        201,
        "same again: no-op"
    );
    let mut other = poll.clone();
    other["question"] = json!("Who loses?");
    expect_error(create(other).await.unwrap(), 409, "poll_exists").await;
    let mut one_option = poll.clone();
    one_option["poll_id"] = json!("lonely");
    one_option["options"] = json!([{"id": "a"}]);
    expect_error(create(one_option).await.unwrap(), 422, "invalid_poll").await;
    let mut bad_time = poll.clone();
    bad_time["poll_id"] = json!("late");
    bad_time["closes_at"] = json!("tomorrow");
    expect_error(create(bad_time).await.unwrap(), 422, "invalid_poll").await;
    let mut unknown_field = poll.clone();
    unknown_field["colour"] = json!("red");
    let answer = expect_error(create(unknown_field).await.unwrap(), 400, "invalid_body").await;
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("colour"));
    let response = client
        .post(gateway.url("/v1/polls"))
        .bearer_auth(&admin)
        .header("content-type", "text/plain")
        .body(poll.to_string())
        .send()
        .await
        .unwrap();
    expect_error(response, 415, "unsupported_media_type").await;
    let mut huge = poll.clone();
    huge["question"] = json!("?".repeat(2000));
    expect_error(create(huge).await.unwrap(), 413, "body_too_large").await;
    let response = client
        .post(gateway.url("/v1/polls"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"poll_id\": ")
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "invalid_body").await;

    // A draft: listed to the admin only.
    let (status, list) = get_with(&client, gateway.url("/v1/polls"), &admin).await;
    assert_eq!(status, 200);
    assert_eq!(list["polls"].as_array().unwrap().len(), 1);
    let (status, shown) = body(
        client
            .get(gateway.url("/v1/polls/final"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status.as_u16(), shown["question"].as_str()),
        (200, Some("Who wins?"))
    );
    expect_error(
        client
            .get(gateway.url("/v1/polls/nope"))
            .send()
            .await
            .unwrap(),
        404,
        "poll_not_found",
    )
    .await;
    let long_id = "x".repeat(200);
    expect_error(
        client
            .get(gateway.url(&format!("/v1/polls/{long_id}")))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_parameter",
    )
    .await;
    expect_error(
        client
            .get(gateway.url("/v1/polls/bad%20id/results"))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_parameter",
    )
    .await;
    expect_error(
        client.get(gateway.url("/v2/nothing")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(
        client
            .delete(gateway.url("/v1/polls/final"))
            .send()
            .await
            .unwrap(),
        405,
        "method_not_allowed",
    )
    .await;

    let transition = |path: &str| client.post(gateway.url(path)).bearer_auth(&admin).send();
    expect_error(
        transition("/v1/polls/nope/open").await.unwrap(),
        404,
        "poll_not_found",
    )
    .await;
    let (status, opened) = body(transition("/v1/polls/final/open").await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), opened["status"].as_str()),
        (200, Some("open"))
    );
    let (status, again) = body(transition("/v1/polls/final/open").await.unwrap()).await;
    assert_eq!(status, 200, "opening an open poll is a no-op");
    assert_eq!(
        again["opens_at"], opened["opens_at"],
        "and does not move its opening"
    );
    let response = client
        .post(gateway.url("/v1/polls/final/close"))
        .bearer_auth(&admin)
        .json(&json!({"at": "2020-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    expect_error(response, 422, "invalid_poll").await;
    let response = client
        .post(gateway.url("/v1/polls/final/close"))
        .bearer_auth(&admin)
        .json(&json!({"when": "now"}))
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "invalid_body").await;
    let before = tally_contract::time::now_millis();
    let (status, closed) = body(transition("/v1/polls/final/close").await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), closed["status"].as_str()),
        (200, Some("closed"))
    );
    let closes_at =
        tally_contract::time::parse_rfc3339(closed["closes_at"].as_str().unwrap()).unwrap();
    assert!(
        (before + 1_500..before + 4_000).contains(&closes_at),
        "closes about 2 s later"
    );
    expect_error(
        transition("/v1/polls/final/open").await.unwrap(),
        409,
        "poll_state",
    )
    .await;

    // Votes on a poll that is not open, an unknown poll, a bad option, a bad key.
    gateway.open_poll("draftless", &["a", "b"]).await;
    let voter = gateway.token("u-9");
    let vote = |path: &str, value: Value| {
        client
            .post(gateway.url(path))
            .bearer_auth(&voter)
            .json(&value)
            .send()
    };
    let response = client
        .post(gateway.url("/v1/polls"))
        .bearer_auth(&admin)
        .json(&json!({"poll_id": "draft", "question": "Later?", "options": [{"id": "a"}, {"id": "b"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    expect_error(
        vote("/v1/polls/draft/votes", json!({"option": "a"}))
            .await
            .unwrap(),
        422,
        "poll_not_open",
    )
    .await;
    expect_error(
        vote("/v1/polls/none/votes", json!({"option": "a"}))
            .await
            .unwrap(),
        404,
        "poll_not_found",
    )
    .await;
    expect_error(
        vote("/v1/polls/draftless/votes", json!({"option": "z"}))
            .await
            .unwrap(),
        422,
        "invalid_option",
    )
    .await;
    expect_error(
        vote(
            "/v1/polls/draftless/votes",
            json!({"option": "a", "voter_id": "someone-else"}),
        )
        .await
        .unwrap(),
        400,
        "invalid_body",
    )
    .await;
    let response = client
        .post(gateway.url("/v1/polls/draftless/votes"))
        .bearer_auth(&voter)
        .header("idempotency-key", "has spaces")
        .json(&json!({"option": "a"}))
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "invalid_idempotency_key").await;
    let (status, me) = get_with(&client, gateway.url("/v1/polls/draftless/votes/me"), &voter).await;
    assert_eq!(
        (status.as_u16(), me["status"].as_str()),
        (200, Some("unknown"))
    );
    let metrics = client
        .get(gateway.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tally_gateway_votes_refused_total{code=\"poll_not_open\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("route=\"/v1/polls/{poll}\",method=\"GET\",status=\"404\""),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_is_counted_and_shows_in_results_and_on_the_stream() {
    let stack = Stack::new().await;
    let gateway = stack.gateway(&["--sse-heartbeat-ms", "200"]).await;
    gateway.open_poll("live", &["red", "blue"]).await;
    let _worker = stack.worker("w1");
    let client = Client::new();

    // A results stream open before the votes.
    let mut stream = client
        .get(gateway.url("/v1/polls/live/results/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let first = String::from_utf8(stream.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(
        first.contains("event: results") && first.contains("id: 0-open"),
        "{first}"
    );

    let voter = gateway.token("u-1");
    let post = |token: &str, option: &str, key: Option<&str>| {
        let mut request = client
            .post(gateway.url("/v1/polls/live/votes"))
            .bearer_auth(token)
            .json(&json!({"option": option}));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    let (status, accepted) = body(post(&voter, "red", Some("k-1")).await.unwrap()).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(
        (accepted["vote_id"].as_str(), accepted["status"].as_str()),
        (Some("k-1"), Some("accepted"))
    );
    let (status, again) = body(post(&voter, "red", Some("k-1")).await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), again["vote_id"].as_str()),
        (202, Some("k-1")),
        "a retry answers the same"
    );
    expect_error(
        post(&voter, "blue", Some("k-1")).await.unwrap(),
        409,
        "idempotency_key_reused",
    )
    .await;

    // The worker counts it: results, the stream and votes/me show it.
    eventually(Duration::from_secs(20), "the vote is counted", || async {
        let (_, results) = body(
            client
                .get(gateway.url("/v1/polls/live/results"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        results["total"] == 1
    })
    .await;
    let mut seen = String::new();
    while !seen.contains("id: 1-open") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = seen
        .lines()
        .find(|line| line.starts_with("data: ") && line.contains("\"total\":1"))
        .expect("the event's data");
    let event: Value = serde_json::from_str(&data["data: ".len()..]).unwrap();
    assert_eq!(event["options"][0]["votes"], 1);
    let (_, results) = body(
        client
            .get(gateway.url("/v1/polls/live/results"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (
            results["options"][0]["id"].as_str(),
            results["options"][0]["votes"].as_u64()
        ),
        (Some("red"), Some(1))
    );
    let (_, me) = get_with(&client, gateway.url("/v1/polls/live/votes/me"), &voter).await;
    assert_eq!(
        (me["status"].as_str(), me["counted"]["vote_id"].as_str()),
        (Some("counted"), Some("k-1"))
    );

    // Counted: a new vote is a 409 with the counted vote; the same key still a 202.
    let answer = expect_error(
        post(&voter, "blue", None).await.unwrap(),
        409,
        "already_voted",
    )
    .await;
    assert_eq!(answer["vote"]["option"], "red");
    gateway.gateway.hub.current("live").await.unwrap();
    let (status, _) = body(post(&voter, "red", Some("k-1")).await.unwrap()).await;
    assert_eq!(status, 202);

    // Resuming with the last event id: no event until something changes.
    let mut resumed = client
        .get(gateway.url("/v1/polls/live/results/stream"))
        .header("last-event-id", "1-open")
        .send()
        .await
        .unwrap();
    let chunk = String::from_utf8(resumed.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(
        chunk.starts_with(": heartbeat") && !chunk.contains("event:"),
        "{chunk}"
    );

    // The HTTP producer against the real endpoint: accepted, retried safely.
    let producer =
        tally_producer::http::HttpProducer::new(tally_producer::http::HttpProducerConfig {
            base_url: gateway.url.clone(),
            ..Default::default()
        });
    let second = gateway.token("u-2");
    let answer = producer
        .vote(&second, "live", "blue", "sdk-1")
        .await
        .unwrap();
    assert_eq!(
        answer,
        tally_producer::http::VoteAnswer::Accepted {
            vote_id: "sdk-1".into()
        }
    );
    let answer = producer
        .vote(&second, "live", "blue", "sdk-1")
        .await
        .unwrap();
    assert_eq!(
        answer,
        tally_producer::http::VoteAnswer::Accepted {
            vote_id: "sdk-1".into()
        }
    );
    let refused = producer
        .vote(&second, "nope", "blue", "sdk-2")
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            tally_producer::http::HttpVoteError::Refused { status: 404, .. }
        ),
        "{refused}"
    );
    let mut seen = String::new();
    while !seen.contains("id: 2-open") {
        let chunk = tokio::time::timeout(Duration::from_secs(20), resumed.chunk())
            .await
            .expect("the resumed stream gets the change")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let answer = producer
        .vote(&second, "live", "red", "sdk-3")
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            tally_producer::http::VoteAnswer::AlreadyVoted { .. }
        ),
        "{answer:?}"
    );
    assert_eq!(
        gateway
            .gateway
            .hub
            .loops
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "one read loop for the poll, whatever the number of streams"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let stack = Stack::new().await;
    let gateway = stack
        .gateway(&[
            "--rate-voter-per-s",
            "0.2",
            "--rate-voter-burst",
            "2",
            "--rate-ip-per-s",
            "1",
            "--rate-ip-burst",
            "30",
        ])
        .await;
    gateway.open_poll("busy", &["a", "b"]).await;
    let client = Client::new();
    let voter = gateway.token("u-fast");
    let mut statuses = Vec::new();
    for attempt in 0..3 {
        let response = client
            .post(gateway.url("/v1/polls/busy/votes"))
            .bearer_auth(&voter)
            .header("idempotency-key", format!("try-{attempt}"))
            .json(&json!({"option": "a"}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert_eq!(
                response.headers()["retry-after"],
                "5",
                "one token back in 5 s"
            );
            expect_error(response, 429, "rate_limited").await;
        }
    }
    assert_eq!(statuses, [202, 202, 429], "a burst of 2 per voter");
    let other = gateway.token("u-slow");
    let response = client
        .post(gateway.url("/v1/polls/busy/votes"))
        .bearer_auth(&other)
        .json(&json!({"option": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        202,
        "another voter has a bucket of its own"
    );
    let mut limited = None;
    for _ in 0..40 {
        let response = client.get(gateway.url("/v1/polls")).send().await.unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("the per-address limit (burst 30) bites");
    assert!(response.headers().contains_key("retry-after"));
    expect_error(response, 429, "rate_limited").await;
    let health = client.get(gateway.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "operator endpoints are not limited");
    let metrics = client
        .get(gateway.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tally_gateway_rate_limited_total{scope=\"voter\"} 1"),
        "{metrics}"
    );
}

/// Drafts are listed to admins only; everyone else reads a list scanned at
/// most once a second, however many ask at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafts_are_listed_to_admins_only_and_the_public_list_is_shared() {
    let stack = Stack::new().await;
    let gateway = stack.gateway(&[]).await;
    let client = Client::new();
    let draft = client
        .post(gateway.url("/v1/polls"))
        .bearer_auth(gateway.admin_token())
        .json(&json!({"poll_id": "secret-final", "question": "Who wins?",
            "options": [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(draft.status(), 201);
    gateway.open_poll("public", &["x", "y"]).await;
    let listed = |token: Option<String>| {
        let client = client.clone();
        let url = gateway.url("/v1/polls");
        async move {
            let mut request = client.get(url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let (status, list) = body(request.send().await.unwrap()).await;
            assert_eq!(status, 200, "{list}");
            list["polls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|poll| poll["poll_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let admin = listed(Some(gateway.admin_token())).await;
    assert!(admin.contains(&"secret-final".to_owned()), "{admin:?}");
    for caller in [None, Some(gateway.token("v1"))] {
        let ids = listed(caller).await;
        assert!(!ids.contains(&"secret-final".to_owned()), "{ids:?}");
        assert!(ids.contains(&"public".to_owned()), "{ids:?}");
    }
    let refused = client
        .get(gateway.url("/v1/polls"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    expect_error(refused, 401, "invalid_token").await;

    let requests = || tally_store::CountStore::usage(stack.store.as_ref()).requests;
    let before = requests();
    let lists: Vec<_> = (0..50).map(|_| listed(None)).collect();
    futures::future::join_all(lists).await;
    let scans = requests() - before;
    assert!(scans <= 2, "50 anonymous lists made {scans} table requests");

    // With a metrics address, /metrics is served there and not here.
    let private = stack.gateway(&["--metrics-addr", "127.0.0.1:9"]).await;
    let response = client.get(private.url("/metrics")).send().await.unwrap();
    expect_error(response, 404, "not_found").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(tally_gateway::serve_metrics(
        private.gateway.clone(),
        listener,
        private.stop.clone(),
    ));
    let text = client
        .get(metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("# TYPE tally_gateway_requests_total counter"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_openapi_cors_and_readiness() {
    let stack = Stack::new().await;
    let gateway = stack
        .gateway(&["--cors-origins", "https://votes.example", "--dev-tokens"])
        .await;
    let client = Client::new();
    let (status, health) = body(client.get(gateway.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), health["status"].as_str()),
        (200, Some("ok"))
    );
    let (status, ready) = body(client.get(gateway.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), ready["status"].as_str()),
        (200, Some("ready")),
        "{ready}"
    );
    let missing = stack
        .gateway_with(stack.gateway_args(&[]), "no-such-stream")
        .await;
    let response = client.get(missing.url("/readyz")).send().await.unwrap();
    let answer = expect_error(response, 503, "not_ready").await;
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("stream"), "{message}");
    assert!(
        !message.contains("no-such-stream") && !message.contains(&stack.prefix),
        "internal names stay out of public answers: {message}"
    );

    let metrics = client.get(gateway.url("/metrics")).send().await.unwrap();
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("# TYPE tally_gateway_requests_total counter"));
    assert!(
        metrics.contains("route=\"/readyz\",method=\"GET\",status=\"200\""),
        "{metrics}"
    );

    let (status, spec) = body(
        client
            .get(gateway.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/v1/polls/{poll}/votes",
        "/v1/polls/{poll}/votes/me",
        "/v1/polls/{poll}/results",
        "/v1/polls/{poll}/results/stream",
        "/v1/polls",
        "/v1/polls/{poll}",
        "/v1/polls/{poll}/open",
        "/v1/polls/{poll}/close",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    // Every documented route and method is served (never the router's 404 or 405).
    for (path, operations) in paths {
        let concrete = path.replace("{poll}", "p");
        for method in operations.as_object().unwrap().keys() {
            let request = match method.as_str() {
                "get" => client.get(gateway.url(&concrete)),
                "post" => client.post(gateway.url(&concrete)),
                other => panic!("unexpected method {other}"),
            };
            let response = tokio::time::timeout(Duration::from_secs(5), request.send())
                .await
                .unwrap()
                .unwrap();
            let status = response.status().as_u16();
            assert!(status != 405, "{method} {path}: 405");
            if status == 404 {
                let (_, value) = body(response).await;
                assert_ne!(
                    value["error"]["code"], "not_found",
                    "{method} {path} is routed"
                );
            }
        }
    }

    let preflight = client
        .request(reqwest::Method::OPTIONS, gateway.url("/v1/polls/p/votes"))
        .header("origin", "https://votes.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,idempotency-key,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://votes.example"
    );
    let other = client
        .get(gateway.url("/v1/polls"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    // Demo tokens when asked for: a fresh voter each time, and an admin.
    let (status, minted) = body(
        client
            .post(gateway.url("/v1/dev/token"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (_, again) = body(
        client
            .post(gateway.url("/v1/dev/token"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_ne!(minted["voter_id"], again["voter_id"]);
    let (_, admin) = body(
        client
            .post(gateway.url("/v1/dev/token?role=admin"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let response = client
        .get(gateway.url("/v1/pipeline"))
        .bearer_auth(admin["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let (status, pipeline) = body(response).await;
    assert_eq!(
        (
            status.as_u16(),
            pipeline["workers"].as_array().map(Vec::len)
        ),
        (200, Some(0))
    );
    expect_error(
        client
            .post(gateway.url("/v1/dev/token?role=root"))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_parameter",
    )
    .await;

    // The container health check's probe.
    let probe = |url: String| {
        stack
            .tally()
            .args(["probe", &url])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(probe(gateway.url("/healthz")));
    assert!(
        !probe(gateway.url("/nothing-here")),
        "a 404 fails the probe"
    );
    assert!(
        !probe("http://127.0.0.1:1/health".into()),
        "no answer fails the probe"
    );

    // The pages are served.
    for page in [
        "/",
        "/vote?poll=p",
        "/dashboard?poll=p",
        "/admin",
        "/assets/tally.js",
        "/assets/tally.css",
    ] {
        let response = client.get(gateway.url(page)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gateway_settings_fail_naming_the_setting() {
    let stack = Stack::new().await;
    let run = |env: &[(&str, &str)]| {
        let mut command = stack.tally();
        command
            .arg("gateway")
            .env("TALLY_GATEWAY_ADDR", "127.0.0.1:0");
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(run(&[]).contains("TALLY_AUTH_SECRET"));
    assert!(run(&[("TALLY_AUTH_SECRET", "short")]).contains("TALLY_AUTH_SECRET"));
    let secret = "s".repeat(32);
    assert!(run(&[
        ("TALLY_AUTH_SECRET", &secret),
        ("TALLY_AUTH_JWKS_URL", "https://x/jwks")
    ])
    .contains("TALLY_AUTH_JWKS_URL"));
    assert!(run(&[
        ("TALLY_AUTH_SECRET", &secret),
        ("TALLY_RATE_VOTER_PER_S", "0")
    ])
    .contains("TALLY_RATE_VOTER_PER_S"));
    assert!(run(&[
        ("TALLY_AUTH_SECRET", &secret),
        ("TALLY_FAULTS", "PutRecords:explode:0.1")
    ])
    .contains("TALLY_FAULTS"));
    assert!(run(&[
        ("TALLY_AUTH_SECRET", &secret),
        ("TALLY_RESULTS_INTERVAL_MS", "1000")
    ])
    .contains("--results-interval-ms"));
    assert!(run(&[
        ("TALLY_AUTH_JWKS_URL", "https://x/jwks"),
        ("TALLY_DEV_TOKENS", "true")
    ])
    .contains("TALLY_DEV_TOKENS"));
    assert!(run(&[
        ("TALLY_AUTH_SECRET", &secret),
        ("TALLY_WORKER_METRICS_URLS", "dns+http://")
    ])
    .contains("TALLY_WORKER_METRICS_URLS"));
    // A claim every token shares (or none does twice) is no voter.
    for claim in [
        "aud",
        "iss",
        "jti",
        "roles",
        "client_id",
        "origin_jti",
        "event_id",
        "sid",
        "token_use",
        "auth_time",
        "iat",
        "nbf",
        "email_verified",
        "phone_number_verified",
        "scope",
    ] {
        assert!(run(&[
            ("TALLY_AUTH_SECRET", &secret),
            ("TALLY_AUTH_VOTER_CLAIM", claim)
        ])
        .contains("TALLY_AUTH_VOTER_CLAIM"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_loops_stop_without_clients_and_streams_end_on_shutdown() {
    let stack = Stack::new().await;
    let mut gateway = stack.gateway(&["--sse-heartbeat-ms", "200"]).await;
    gateway.open_poll("quiet", &["a", "b"]).await;
    let client = Client::new();
    let loops = |gateway: &local_stack::TestGateway| {
        gateway
            .gateway
            .hub
            .loops
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut first = client
        .get(gateway.url("/v1/polls/quiet/results/stream"))
        .send()
        .await
        .unwrap();
    first.chunk().await.unwrap().unwrap();
    assert_eq!(loops(&gateway), 1);
    drop(first);
    eventually(
        Duration::from_secs(8),
        "the read loop stops after its last client",
        || async { loops(&gateway) == 0 },
    )
    .await;

    // A stream open at shutdown ends, and the server stops.
    let mut open = client
        .get(gateway.url("/v1/polls/quiet/results/stream"))
        .send()
        .await
        .unwrap();
    open.chunk().await.unwrap().unwrap();
    let task = gateway.task.take().unwrap();
    gateway.stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = open.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the results stream ends on shutdown");
    let served = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the server stops within 5 s with a stream open");
    served.unwrap().unwrap();
}

/// Results a CDN can serve: Cache-Control by status, the event id as ETag,
/// 304 for a matching If-None-Match and 200 once the counts moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_carry_caching_headers_and_answer_304_until_they_change() {
    use tally_store::prelude::*;
    let stack = Stack::new().await;
    let gateway = stack.gateway(&["--results-interval-ms", "10"]).await;
    gateway.open_poll("cached", &["a", "b"]).await;
    let client = Client::new();
    let url = gateway.url("/v1/polls/cached/results");
    let get = |etag: Option<String>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut request = client.get(url);
            if let Some(etag) = etag {
                request = request.header("if-none-match", etag);
            }
            let response = request.send().await.unwrap();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            (
                response.status().as_u16(),
                header("etag"),
                header("cache-control"),
            )
        }
    };
    let (status, etag, cache) = get(None).await;
    assert_eq!(status, 200);
    assert_eq!(etag.as_deref(), Some("W/\"0-open\""));
    assert_eq!(
        cache.as_deref(),
        Some("public, max-age=1, stale-while-revalidate=2")
    );
    let (status, again, _) = get(etag.clone()).await;
    assert_eq!((status, again.as_deref()), (304, Some("W/\"0-open\"")));
    let (status, ..) = get(Some("\"x\", \"0-open\"".into())).await;
    assert_eq!(status, 304, "a tag in a list matches, weak or not");
    let (status, ..) = get(Some("\"0-closed\"".into())).await;
    assert_eq!(status, 200, "another tag does not");

    // A vote is counted: the old tag gets a 200 with the new one.
    let poll = stack.store.get_poll("cached").await.unwrap().unwrap();
    let counts = tally_store::Counts {
        by_option: [("a".to_owned(), 1)].into(),
    };
    stack.store.set_counts(&poll, &counts).await.unwrap();
    eventually(Duration::from_secs(5), "the count moves", || async {
        get(etag.clone()).await.0 == 200
    })
    .await;
    let (_, moved, _) = get(None).await;
    assert_eq!(moved.as_deref(), Some("W/\"1-open\""));

    // Closed: still short; final: a day.
    let closed = client
        .post(gateway.url("/v1/polls/cached/close"))
        .bearer_auth(gateway.admin_token())
        .json(&json!({"at": tally_contract::time::format_rfc3339(tally_contract::time::now_millis() + 1_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status(), 200, "{:?}", closed.text().await);
    eventually(Duration::from_secs(5), "closed", || async {
        get(None).await.1.as_deref() == Some("W/\"1-closed\"")
    })
    .await;
    assert_eq!(
        get(None).await.2.as_deref(),
        Some("public, max-age=1, stale-while-revalidate=2")
    );
    assert!(stack.store.finalize_poll("cached", "{}").await.unwrap());
    gateway.gateway.polls.forget("cached").await;
    eventually(Duration::from_secs(5), "final", || async {
        get(None).await.1.as_deref() == Some("W/\"1-final\"")
    })
    .await;
    assert_eq!(get(None).await.2.as_deref(), Some("public, max-age=86400"));
}

/// Streams per address and per voter are capped (429 with Retry-After) and
/// freed when a stream closes; a shedding gateway tells clients to poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_streams_are_capped_per_address_and_per_voter() {
    let stack = Stack::new().await;
    let gateway = stack
        .gateway(&["--max-sse-per-address", "3", "--max-sse-per-subject", "1"])
        .await;
    gateway.open_poll("capped", &["a", "b"]).await;
    let client = Client::new();
    let url = gateway.url("/v1/polls/capped/results/stream");
    let open = |token: Option<String>| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut request = client.get(url);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.unwrap()
        }
    };
    let voter = gateway.token("streamer");
    let first = open(None).await;
    assert_eq!(first.status(), 200);
    let with_token = open(Some(voter.clone())).await;
    assert_eq!(with_token.status(), 200);
    let refused = open(Some(voter.clone())).await;
    assert_eq!(refused.headers()["retry-after"], "5");
    expect_error(refused, 429, "rate_limited").await;
    let third = open(None).await;
    assert_eq!(third.status(), 200);
    expect_error(open(None).await, 429, "rate_limited").await;
    // A stream closes: its place is free again.
    drop(first);
    eventually(Duration::from_secs(5), "a freed stream", || async {
        open(None).await.status() == 200
    })
    .await;
    drop(with_token);
    eventually(
        Duration::from_secs(5),
        "the voter's stream freed",
        || async { open(Some(voter.clone())).await.status() == 200 },
    )
    .await;
    drop(third);

    // Shedding: a new stream gets one `poll` event and ends.
    let shedding = stack.gateway(&["--sse-shed-at", "0"]).await;
    let response = client
        .get(shedding.url("/v1/polls/capped/results/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(5), response.text())
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(text.contains("event: poll"), "{text}");
    assert!(text.contains("/v1/polls/capped/results"), "{text}");
    assert!(text.contains("\"interval_ms\":2000"), "{text}");
}

/// A client that connects and sends nothing, or idles on a kept-alive
/// connection, is disconnected after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::new().await;
    let gateway = stack.gateway(&["--header-timeout-ms", "300"]).await;
    let address = gateway.url.trim_start_matches("http://").to_owned();
    let closed_within = |mut socket: tokio::net::TcpStream| async move {
        let mut buffer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut buffer))
            .await
            .expect("the gateway closes the connection")
            .ok();
        buffer
    };
    let started = std::time::Instant::now();
    let silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    closed_within(silent).await;
    assert!(started.elapsed() >= Duration::from_millis(250));

    let mut idle = tokio::net::TcpStream::connect(&address).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(idle).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// A retry of a counted vote on another gateway process: the same key and
/// option answer 202 with that vote id (read from the counted vote, since
/// this process never saw the key), another option 409
/// `idempotency_key_reused`, another key 409 `already_voted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counted_votes_key_is_honoured_by_another_gateway() {
    let stack = Stack::new().await;
    let first = stack.gateway(&[]).await;
    let second = stack.gateway(&[]).await;
    first.open_poll("retry", &["a", "b"]).await;
    let _worker = stack.worker("w1");
    let client = Client::new();
    let token = first.token("retrier");
    let vote = |gateway: &local_stack::TestGateway, key: &str, option: &str| {
        client
            .post(gateway.url("/v1/polls/retry/votes"))
            .bearer_auth(&token)
            .header("idempotency-key", key)
            .json(&json!({"option": option}))
            .send()
    };
    let (status, accepted) = body(vote(&first, "key-1", "a").await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), accepted["vote_id"].as_str()),
        (202, Some("key-1"))
    );
    eventually(Duration::from_secs(30), "the vote is counted", || async {
        let (_, me) = get_with(&client, second.url("/v1/polls/retry/votes/me"), &token).await;
        me["status"] == "counted"
    })
    .await;
    let (status, again) = body(vote(&second, "key-1", "a").await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), again["vote_id"].as_str()),
        (202, Some("key-1")),
        "{again}"
    );
    expect_error(
        vote(&second, "key-1", "b").await.unwrap(),
        409,
        "idempotency_key_reused",
    )
    .await;
    expect_error(
        vote(&second, "key-2", "a").await.unwrap(),
        409,
        "already_voted",
    )
    .await;
}

/// `/v1/pipeline` reads a running worker's metrics: the worker is up,
/// named, and has counted the vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_route_reads_a_running_workers_metrics() {
    let stack = Stack::new().await;
    let _worker = stack.worker("w1");
    let log = stack.dir.join("w1.log");
    let mut address = None;
    eventually(
        Duration::from_secs(30),
        "the worker logs its health address",
        || {
            address = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find_map(|line| line["health_addr"].as_str().map(str::to_owned));
            let found = address.is_some();
            async move { found }
        },
    )
    .await;
    let metrics_url = format!("http://{}/metrics", address.unwrap());
    let gateway = stack
        .gateway(&["--worker-metrics-urls", &metrics_url])
        .await;
    gateway.open_poll("piped", &["a", "b"]).await;
    let client = Client::new();
    let voted = client
        .post(gateway.url("/v1/polls/piped/votes"))
        .bearer_auth(gateway.token("p1"))
        .json(&json!({"option": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(voted.status(), 202);
    let admin = gateway.admin_token();
    eventually(Duration::from_secs(30), "the worker's count shows", || {
        let (client, url, admin) = (client.clone(), gateway.url("/v1/pipeline"), admin.clone());
        async move {
            let (status, health) = get_with(&client, url, &admin).await;
            status == 200
                && health["workers"][0]["up"] == true
                && health["workers"][0]["worker_id"] == "w1"
                && health["votes_counted_total"].as_u64().unwrap_or(0) >= 1
        }
    })
    .await;
}
