//! A local stack for the process tests (gateway, closing): ministack, a stream and the
//! tables (made by `tally init`), a gateway served in-process on port 0,
//! and `tally worker` processes when votes must be counted.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tally_gateway::{Gateway, GatewayArgs, StreamProbe};
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
