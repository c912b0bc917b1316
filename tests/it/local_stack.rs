//! A local stack for the process tests (gateway, closing): ministack, a stream and the
//! tables (made by `tally init`), a gateway served in-process on port 0,
//! and `tally worker` processes when votes must be counted; votes put
//! through the producer, and the `tally` commands' output.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tally_gateway::{Gateway, GatewayArgs, StreamProbe};
use tally_producer::{Producer, VoteBuilder};
use tally_store::dynamo::{DynamoVoteStore, TableNames};
use tally_testkit::emulators::{sdk_config, unique_name, Emulator, EmulatorKind};
use tally_testkit::process::tally;
pub use tally_testkit::process::Process;
use tokio_util::sync::CancellationToken;

pub fn endpoint() -> String {
    Emulator::shared(EmulatorKind::Ministack).endpoint.clone()
}

/// A stream, a lease table and vote tables of their own.
pub struct Stack {
    pub stream: String,
    pub app: String,
    pub prefix: String,
    pub secret: String,
    pub dir: PathBuf,
    pub store: Arc<DynamoVoteStore>,
    pub kinesis: aws_sdk_kinesis::Client,
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    args: GatewayArgs,
}

impl Stack {
    pub async fn new() -> Stack {
        let config = sdk_config(&endpoint()).await;
        let app = unique_name("app");
        let prefix = format!("{}-", unique_name("g"));
        let names = TableNames::with_prefix(&prefix, format!("{app}-leases"));
        let dir = std::env::temp_dir().join(unique_name("tally-gateway-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let stack = Stack {
            stream: unique_name("votes"),
            app,
            prefix,
            secret: format!("{:032x}", rand::random::<u128>()),
            dir,
            store: Arc::new(DynamoVoteStore::new(
                aws_sdk_dynamodb::Client::new(&config),
                names,
            )),
            kinesis: aws_sdk_kinesis::Client::new(&config),
        };
        tally_testkit::process::succeed(
            stack.tally().args(["init", "--shards", "2"]),
            "tally init",
        );
        stack
    }

    /// The `tally` binary pointed at this stack.
    pub fn tally(&self) -> Command {
        let mut command = tally(env!("CARGO_BIN_EXE_tally"));
        command
            .args(["--stream", &self.stream, "--app", &self.app])
            .args(["--table-prefix", &self.prefix])
            .env("AWS_ENDPOINT_URL", endpoint());
        command
    }

    /// Creates the polls `ids` in the store, open, each asking "Which?"
    /// between `a` and `b` on 8 counter shards.
    pub async fn create_open_polls(&self, ids: &[&str]) {
        for id in ids {
            let poll = tally_store::admin::new_poll(
                id,
                "Which?",
                &["a".into(), "b".into()],
                None,
                None,
                8,
            )
            .unwrap();
            tally_store::admin::create_poll(self.store.as_ref(), poll, true)
                .await
                .unwrap();
        }
    }

    /// `tally replay <poll> --from <from> --json` into shadow tables of its
    /// own; from the stream it reads as [`Stack::replay_app`] for at most 120 s.
    pub fn replay(&self, poll: &str, from: &str) -> Command {
        let mut command = self.tally();
        command.args([
            "replay",
            poll,
            "--from",
            from,
            "--shadow-prefix",
            &format!("{}-", unique_name("shadow")),
            "--json",
        ]);
        if from == "stream" {
            command.args(["--replay-app", &self.replay_app(), "--timeout-s", "120"]);
        }
        command
    }

    /// The application a replay from the stream reads as (its lease table
    /// and stream consumer are named after it).
    pub fn replay_app(&self) -> String {
        format!("{}-replay", self.app)
    }

    /// Starts a `tally worker`, logging into the stack's directory.
    pub fn worker(&self, id: &str) -> Process {
        let log = std::fs::File::create(self.dir.join(format!("{id}.log"))).unwrap();
        let child = self
            .tally()
            .args(["worker", "--worker-id", id])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tally worker");
        Process(child)
    }

    /// Gateway settings for this stack plus `extra` flags.
    pub fn gateway_args(&self, extra: &[&str]) -> GatewayArgs {
        let mut argv = vec![
            "gateway".to_owned(),
            "--addr".into(),
            "127.0.0.1:0".into(),
            "--auth-secret".into(),
            self.secret.clone(),
        ];
        argv.extend(extra.iter().map(|arg| arg.to_string()));
        Wrapper::try_parse_from(argv).expect("gateway flags").args
    }

    /// A gateway on port 0, served until the returned value is dropped.
    pub async fn gateway(&self, extra: &[&str]) -> TestGateway {
        self.gateway_with(self.gateway_args(extra), &self.stream)
            .await
    }

    pub async fn gateway_with(&self, args: GatewayArgs, stream: &str) -> TestGateway {
        let sink = Arc::new(tally_producer::KinesisSink::new(
            self.kinesis.clone(),
            stream,
        ));
        let producer = tally_producer::Producer::start(sink, args.producer_config());
        let gateway = Gateway::new(
            args,
            self.store.clone(),
            producer,
            Some(StreamProbe {
                kinesis: self.kinesis.clone(),
                stream: stream.to_owned(),
            }),
        )
        .expect("gateway settings");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(tally_gateway::serve(
            gateway.clone(),
            listener,
            stop.clone(),
        ));
        TestGateway {
            url,
            gateway,
            stop,
            task: Some(task),
        }
    }
}

pub struct TestGateway {
    pub url: String,
    pub gateway: Arc<Gateway>,
    pub stop: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestGateway {
    pub fn token(&self, voter: &str) -> String {
        self.gateway
            .verifier
            .mint(voter, false, Duration::from_secs(600))
            .unwrap()
    }

    pub fn admin_token(&self) -> String {
        self.gateway
            .verifier
            .mint("ops", true, Duration::from_secs(600))
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Creates and opens a poll through the admin API.
    pub async fn open_poll(&self, id: &str, options: &[&str]) {
        let options: Vec<serde_json::Value> = options
            .iter()
            .map(|option| serde_json::json!({"id": option, "label": option.to_uppercase()}))
            .collect();
        let response = reqwest::Client::new()
            .post(self.url("/v1/polls"))
            .bearer_auth(self.admin_token())
            .json(&serde_json::json!({
                "poll_id": id, "question": format!("{id}?"), "options": options, "open": true
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
    }
}

/// Sends each vote through `producer`, then waits until every one is in
/// the stream.
pub async fn put_votes(producer: &Producer, votes: impl IntoIterator<Item = VoteBuilder>) {
    let mut receipts = Vec::new();
    for vote in votes {
        receipts.push(producer.send(vote.build().unwrap()).await.unwrap());
    }
    for receipt in receipts {
        receipt.await.unwrap();
    }
}

/// The stdout and then the stderr of a finished command, as one text.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Waits until `check` holds, at most `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
