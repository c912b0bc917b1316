//! Traces out of the process: a `tally worker` with `TALLY_OTLP=true`
//! exports its spans over OTLP/HTTP (protobuf) to a collector stand-in on
//! port 0 while it counts votes; without it, nothing is sent.

use crate::local_stack;

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use local_stack::{eventually, Process, Stack};
use tally_producer::{KinesisSink, Producer, ProducerConfig, VoteBuilder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_exports_spans_over_otlp_when_asked() {
    let exports = Arc::new(AtomicUsize::new(0));
    // Every request the collector gets, whatever it holds.
    let requests = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post({
                let (exports, requests) = (exports.clone(), requests.clone());
                move |headers: HeaderMap, body: axum::body::Bytes| async move {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let protobuf = headers
                        .get("content-type")
                        .is_some_and(|value| value == "application/x-protobuf");
                    if protobuf && !body.is_empty() && body.windows(11).any(|w| w == b"count_batch")
                    {
                        exports.fetch_add(1, Ordering::Relaxed);
                    }
                    ""
                }
            }),
        )
        .fallback({
            // Any other path (metrics, logs) counts too.
            let requests = requests.clone();
            move || async move {
                requests.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::NOT_FOUND
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let stack = Stack::new().await;
    let poll =
        tally_store::admin::new_poll("traced", "?", &["a".into(), "b".into()], None, None, 4)
            .unwrap();
    tally_store::admin::create_poll(stack.store.as_ref(), poll, true)
        .await
        .unwrap();
    let start = |id: &str, otlp: bool| {
        let mut command = stack.tally();
        command
            .args(["worker", "--worker-id", id])
            .env("TALLY_OTLP", if otlp { "true" } else { "false" })
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stack.dir.join(format!("{id}.log"))).unwrap());
        Process(command.spawn().unwrap())
    };
    let sink = Arc::new(KinesisSink::new(stack.kinesis.clone(), &stack.stream));
    let producer = Producer::start(sink, ProducerConfig::default());
    let put = |from: usize| {
        let producer = producer.clone();
        async move {
            for index in from..from + 20 {
                let record =
                    VoteBuilder::new(format!("v{index}"), "traced", "a", format!("u{index}"))
                        .build()
                        .unwrap();
                producer.send(record).await.unwrap().await.unwrap();
            }
        }
    };

    // Off: votes are counted, nothing reaches the collector.
    let quiet = start("quiet", false);
    put(0).await;
    let store = stack.store.clone();
    let counted = |total: u64| {
        let store = store.clone();
        async move {
            let poll = tally_store::PollStore::get_poll(store.as_ref(), "traced")
                .await
                .unwrap()
                .unwrap();
            tally_store::VoteReads::counts(store.as_ref(), &poll)
                .await
                .unwrap()
                .total()
                == total
        }
    };
    eventually(Duration::from_secs(20), "20 votes counted", || counted(20)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        requests.load(Ordering::Relaxed),
        0,
        "no request at all to the collector unless TALLY_OTLP is set"
    );
    drop(quiet);

    let _traced = start("traced", true);
    put(20).await;
    eventually(Duration::from_secs(30), "40 votes counted", || counted(40)).await;
    eventually(
        Duration::from_secs(20),
        "count_batch spans at the collector",
        || async { exports.load(Ordering::Relaxed) > 0 },
    )
    .await;
}

#[test]
fn a_bad_otlp_endpoint_fails_at_start_naming_the_setting() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["probe", "http://127.0.0.1:1/"])
        .env("TALLY_OTLP", "true")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{stderr}");
}
