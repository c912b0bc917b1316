//! Results snapshots and final results as JSON objects in S3, under
//! versioned keys that are never overwritten:
//! - `<prefix><poll>/snapshots/<as_of>-<total>.json`: the live results;
//! - `<prefix><poll>/final/<finalized_at>.json`: the final result with its
//!   audit record (also written after a `tally resolve`).
//!
//! `tally snapshot` writes each poll's results once, or every interval
//! (only when they changed); `tally finalize` and `tally resolve` write the
//! final result when a bucket is configured. Wraps
//! <https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html>.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::error::ProvideErrorMetadata;
use tokio_util::sync::CancellationToken;

use tally_core::poll::PollStatus;
use tally_store::VoteStore;

/// Where snapshots go.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SnapshotSettings {
    /// S3 bucket of results snapshots and final results (none: off).
    #[arg(long, env = "TALLY_SNAPSHOT_BUCKET", global = true)]
    pub snapshot_bucket: Option<String>,
    /// Key prefix inside the bucket.
    #[arg(
        long,
        env = "TALLY_SNAPSHOT_PREFIX",
        default_value = "tally/",
        global = true
    )]
    pub snapshot_prefix: String,
}

/// Writes results to S3.
pub struct Snapshots {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

/// A key-safe form of an RFC 3339 time (no colons).
fn key_time(rfc3339: &str) -> String {
    rfc3339.replace(':', "-")
}

impl Snapshots {
    /// `None` when no bucket is configured. Path-style addressing is used
    /// when an endpoint is overridden (local emulators).
    pub fn new(
        config: &aws_config::SdkConfig,
        settings: &SnapshotSettings,
    ) -> anyhow::Result<Option<Self>> {
        let Some(bucket) = &settings.snapshot_bucket else {
            return Ok(None);
        };
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'));
        if !bucket_ok {
            anyhow::bail!(
                "invalid setting TALLY_SNAPSHOT_BUCKET: {bucket:?} is not an S3 bucket name"
            );
        }
        if settings.snapshot_prefix.len() > 512 {
            anyhow::bail!("invalid setting TALLY_SNAPSHOT_PREFIX: longer than 512 characters");
        }
        let path_style = config.endpoint_url().is_some()
            || std::env::var_os("AWS_ENDPOINT_URL").is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .build();
        Ok(Some(Self {
            client: aws_sdk_s3::Client::from_conf(s3_config),
            bucket: bucket.clone(),
            prefix: settings.snapshot_prefix.clone(),
        }))
    }

    /// Creates the bucket (with versioning) unless it exists.
    pub async fn ensure_bucket(&self) -> anyhow::Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(error)
                if error
                    .raw_response()
                    .is_some_and(|r| r.status().as_u16() == 404) => {}
            Err(error) => {
                return Err(anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(
                    error
                )))
                .with_context(|| format!("bucket {}", self.bucket))
            }
        }
        let created = self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await;
        if let Err(error) = created {
            if !matches!(error.code(), Some("BucketAlreadyOwnedByYou")) {
                return Err(anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(
                    error
                )))
                .with_context(|| format!("creating bucket {}", self.bucket));
            }
        }
        eprintln!("bucket {} ready", self.bucket);
        Ok(())
    }

    async fn put(&self, key: String, body: String) -> anyhow::Result<String> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(body.into_bytes().into())
            .send()
            .await
            .map_err(|error| anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(error)))
            .with_context(|| format!("writing s3://{}/{key}", self.bucket))?;
        Ok(format!("s3://{}/{key}", self.bucket))
    }

    /// Writes a poll's live results; returns the object's address.
    pub async fn results(&self, results: &serde_json::Value) -> anyhow::Result<String> {
        let poll_id = results["poll_id"].as_str().unwrap_or("unknown");
        let key = format!(
            "{}{poll_id}/snapshots/{}-{}.json",
            self.prefix,
            key_time(results["as_of"].as_str().unwrap_or("")),
            results["total"].as_u64().unwrap_or(0)
        );
        self.put(key, results.to_string()).await
    }

    /// Writes a poll's final result: its results and its audit record.
    pub async fn final_result(
        &self,
        results: &serde_json::Value,
        audit: &serde_json::Value,
    ) -> anyhow::Result<String> {
        let poll_id = results["poll_id"].as_str().unwrap_or("unknown");
        let finalized_at = audit
            .get("resolution")
            .and_then(|resolution| resolution["resolved_at"].as_str())
            .or_else(|| audit["audited_at"].as_str())
            .unwrap_or("");
        let key = format!(
            "{}{poll_id}/final/{}.json",
            self.prefix,
            key_time(finalized_at)
        );
        let body = serde_json::json!({"results": results, "audit": audit});
        self.put(key, body.to_string()).await
    }

    /// Every object under a poll's prefix (for tests and operators).
    pub async fn keys(&self, poll_id: &str) -> anyhow::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(format!("{}{poll_id}/", self.prefix))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|error| anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(error)))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|object| object.key().map(str::to_owned)),
            );
            match page.next_continuation_token() {
                Some(next) => token = Some(next.to_owned()),
                None => return Ok(keys),
            }
        }
    }

    /// An object's text.
    pub async fn get(&self, key: &str) -> anyhow::Result<String> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|error| anyhow::anyhow!(aws_sdk_s3::error::DisplayErrorContext(error)))?;
        let bytes = object.body.collect().await.context("reading the object")?;
        Ok(String::from_utf8_lossy(&bytes.into_bytes()).into_owned())
    }
}

/// `tally snapshot`: the results of the given polls (default: every poll
/// not final), once or every `interval` until `stop`, written only when
/// they changed since the last snapshot written here.
pub async fn run(
    store: &dyn VoteStore,
    snapshots: &Snapshots,
    polls: &[String],
    interval: Option<Duration>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut last_totals: BTreeMap<String, (u64, String)> = BTreeMap::new();
    loop {
        let ids: Vec<String> = if polls.is_empty() {
            store
                .list_polls()
                .await?
                .into_iter()
                .filter(|poll| matches!(poll.status, PollStatus::Open | PollStatus::Closed))
                .map(|poll| poll.id)
                .collect()
        } else {
            polls.to_vec()
        };
        for id in ids {
            let results = tally_store::admin::results(store, &id).await?;
            let state = (
                results["total"].as_u64().unwrap_or(0),
                results["status"].as_str().unwrap_or("").to_owned(),
            );
            if last_totals.get(&id) == Some(&state) {
                continue;
            }
            let address = snapshots.results(&results).await?;
            eprintln!("snapshot: {address}");
            last_totals.insert(id, state);
        }
        let Some(interval) = interval else {
            return Ok(());
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
