//! Metrics out of the process: a `tally worker` and a `tally gateway`
//! process with CloudWatch publishing on (every second) against ministack's
//! CloudWatch; votes posted to the gateway and counted by the worker show
//! up as `VotesAccepted` and `VotesCounted`, read back through the SDK.

use crate::local_stack;

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use local_stack::{eventually, Process, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_gateway_metrics_reach_cloudwatch() {
    let stack = Stack::new().await;
    let namespace = format!("TallyTest/{}", tally_testkit::emulators::unique_name("ns"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let with_cloudwatch = |command: &mut std::process::Command| {
        command
            .env("TALLY_CLOUDWATCH", "true")
            .env("TALLY_CLOUDWATCH_INTERVAL_S", "1")
            .env("TALLY_CLOUDWATCH_NAMESPACE", &namespace);
    };
    let mut worker = stack.tally();
    with_cloudwatch(&mut worker);
    let log = std::fs::File::create(stack.dir.join("worker.log")).unwrap();
    let _worker = Process(
        worker
            .args(["worker", "--worker-id", "cw-1"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let mut gateway = stack.tally();
    with_cloudwatch(&mut gateway);
    let log = std::fs::File::create(stack.dir.join("gateway.log")).unwrap();
    let _gateway = Process(
        gateway
            .arg("gateway")
            .env("TALLY_GATEWAY_ADDR", format!("127.0.0.1:{port}"))
            .env("TALLY_AUTH_SECRET", &stack.secret)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(20), "the gateway is ready", || async {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    // Tokens from the same secret, as the gateway checks them.
    let minter = stack.gateway(&[]).await;
    let response = client
        .post(format!("{base}/v1/polls"))
        .bearer_auth(minter.admin_token())
        .json(&serde_json::json!({"poll_id": "cw", "question": "?", "options": [{"id": "a"}, {"id": "b"}], "open": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    for index in 0..12 {
        let response = client
            .post(format!("{base}/v1/polls/cw/votes"))
            .bearer_auth(minter.token(&format!("voter-{index}")))
            .json(&serde_json::json!({"option": "a"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }

    let cloudwatch = aws_sdk_cloudwatch::Client::new(
        &tally_testkit::emulators::sdk_config(&local_stack::endpoint()).await,
    );
    let sum = |name: &'static str| {
        let (cloudwatch, namespace, app) =
            (cloudwatch.clone(), namespace.clone(), stack.app.clone());
        async move {
            let now = std::time::SystemTime::now();
            let answer = cloudwatch
                .get_metric_statistics()
                .namespace(namespace)
                .metric_name(name)
                .dimensions(Dimension::builder().name("Application").value(app).build())
                .start_time((now - Duration::from_secs(600)).into())
                .end_time((now + Duration::from_secs(60)).into())
                .period(60)
                .statistics(Statistic::Sum)
                .send()
                .await
                .unwrap();
            answer
                .datapoints()
                .iter()
                .filter_map(|point| point.sum())
                .sum::<f64>()
        }
    };
    eventually(
        Duration::from_secs(30),
        "12 accepted votes in CloudWatch",
        || async { sum("VotesAccepted").await == 12.0 },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "12 counted votes in CloudWatch",
        || async { sum("VotesCounted").await == 12.0 },
    )
    .await;
    let listed = cloudwatch
        .list_metrics()
        .namespace(&namespace)
        .send()
        .await
        .unwrap();
    let names: std::collections::BTreeSet<&str> = listed
        .metrics()
        .iter()
        .filter_map(|metric| metric.metric_name())
        .collect();
    for name in [
        "LeasesHeld",
        "MillisBehindLatest",
        "OpenShards",
        "CommitLatency",
        "SseClients",
    ] {
        assert!(names.contains(name), "{name} is published: {names:?}");
    }
    for name in &names {
        assert!(
            tally_service::cloudwatch::WORKER_METRICS
                .iter()
                .chain(tally_service::cloudwatch::GATEWAY_METRICS)
                .any(|def| def.name == *name),
            "{name} is declared"
        );
    }
}
