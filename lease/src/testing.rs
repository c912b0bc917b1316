//! Test support: a running emulator per test binary (started through
//! `ops/emulators`, stopped when the binary exits), SDK clients pointed at
//! it, and random resource names. Only with the `testing` feature.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Which emulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmulatorKind {
    /// DynamoDB, Kinesis (no resharding), CloudWatch, S3.
    Ministack,
    /// Kinesis with correct resharding.
    KinesisMock,
}

impl EmulatorKind {
    fn arg(self) -> &'static str {
        match self {
            EmulatorKind::Ministack => "ministack",
            EmulatorKind::KinesisMock => "kinesis-mock",
        }
    }
}

/// A running emulator.
#[derive(Debug)]
pub struct Emulator {
    pub endpoint: String,
    pub pid: u32,
}

/// This repository's root directory, found when the program runs: from the
/// package directory `cargo test` names in `CARGO_MANIFEST_DIR`, or else
/// the working directory, upwards to the directory holding `ops/emulators`.
/// The path baked in at build time is only the last resort: Cargo does not
/// rebuild a crate when its checkout moves, so a target directory shared by
/// two checkouts would otherwise point one checkout's tests at the other's
/// files.
pub fn repo_root() -> PathBuf {
    let starts = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::current_dir().ok());
    for start in starts {
        if let Some(root) = start
            .ancestors()
            .find(|dir| dir.join("ops/emulators").is_file())
        {
            return root.to_path_buf();
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// The `ops/emulators` script of this repository.
pub fn emulators_script() -> PathBuf {
    repo_root().join("ops/emulators")
}

impl Emulator {
    /// Starts an emulator on a free loopback port; it stops when this
    /// process exits (or when [`Emulator::stop`] is called).
    pub fn start(kind: EmulatorKind) -> Emulator {
        let output = Command::new("bash")
            .arg(emulators_script())
            .args(["start", kind.arg(), "--watch-pid"])
            .arg(std::process::id().to_string())
            .output()
            .expect("run ops/emulators");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "ops/emulators start {} failed:\n{}{}",
            kind.arg(),
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        let field = |name: &str| {
            stdout
                .split_whitespace()
                .find_map(|part| part.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {stdout}"))
                .to_owned()
        };
        Emulator {
            endpoint: field("endpoint="),
            pid: field("pid=").parse().expect("pid"),
        }
    }

    /// One emulator of each kind per test binary.
    pub fn shared(kind: EmulatorKind) -> &'static Emulator {
        static MINISTACK: OnceLock<Emulator> = OnceLock::new();
        static KINESIS_MOCK: OnceLock<Emulator> = OnceLock::new();
        let cell = match kind {
            EmulatorKind::Ministack => &MINISTACK,
            EmulatorKind::KinesisMock => &KINESIS_MOCK,
        };
        cell.get_or_init(|| Emulator::start(kind))
    }

    pub fn stop(&self) {
        let _ = Command::new("bash")
            .arg(emulators_script())
            .args(["stop", &self.pid.to_string()])
            .status();
    }
}

/// SDK settings for an emulator: fixed region and dummy credentials.
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await
}

/// A name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// Creates a stream and waits until it is ACTIVE.
pub async fn create_stream(client: &aws_sdk_kinesis::Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .expect("create stream");
    wait_stream_active(client, name).await;
}

/// Puts `entries` on `stream`, 500 to a `PutRecords` call (the API's
/// limit), and fails the test when a call or any record is refused. The
/// answers, in the entries' order.
pub async fn put_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    entries: Vec<aws_sdk_kinesis::types::PutRecordsRequestEntry>,
) -> Vec<aws_sdk_kinesis::types::PutRecordsResultEntry> {
    let mut answers = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(500) {
        let output = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(chunk.to_vec()))
            .send()
            .await
            .expect("PutRecords");
        assert_eq!(
            output.failed_record_count(),
            Some(0),
            "records refused: {:?}",
            output.records().iter().find(|r| r.error_code().is_some())
        );
        answers.extend_from_slice(output.records());
    }
    answers
}

/// Waits until a stream is ACTIVE (after a create, split or merge).
pub async fn wait_stream_active(client: &aws_sdk_kinesis::Client, name: &str) {
    for _ in 0..200 {
        let described = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await;
        if let Ok(summary) = described {
            if summary
                .stream_description_summary()
                .map(|d| d.stream_status() == &aws_sdk_kinesis::types::StreamStatus::Active)
                .unwrap_or(false)
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream {name} not ACTIVE after 20 s");
}
