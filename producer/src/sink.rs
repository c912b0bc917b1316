//! Where entries go: the [`Sink`] trait (our types only), the Kinesis
//! adapter, and an in-memory stream for tests.
//!
//! Wraps <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_PutRecords.html>
//! and `ListShards`.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tally_aws::ErrorClass;

use crate::batch::Entry;
use crate::shard_map::ShardRange;

/// The outcome of one entry of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryResult {
    Put {
        shard_id: String,
        sequence_number: String,
    },
    Failed {
        code: String,
        message: String,
    },
}

/// A whole call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SinkError {
    #[error("throttled: {0}")]
    Throttled(String),
    /// 5xx, timeout, connection lost: the records may or may not be on the
    /// stream.
    #[error("unavailable (the call may have happened): {0}")]
    Unavailable(String),
    /// Not worth another try (no such stream, no permission, bad request).
    #[error("{0}")]
    Fatal(String),
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SinkError::Fatal(_))
    }
}

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// One `PutRecords` call; a result per entry, in order.
    async fn put_records(&self, entries: &[Entry]) -> Result<Vec<EntryResult>, SinkError>;
    /// The open shards.
    async fn open_shards(&self) -> Result<Vec<ShardRange>, SinkError>;
}

/// A Kinesis stream through the AWS SDK.
#[derive(Clone)]
pub struct KinesisSink {
    client: aws_sdk_kinesis::Client,
    stream: String,
}

impl KinesisSink {
    pub fn new(client: aws_sdk_kinesis::Client, stream: impl Into<String>) -> Self {
        Self {
            client,
            stream: stream.into(),
        }
    }
}

/// Maps a failed call to the sink's error, through the one classification
/// of AWS errors ([`tally_aws::error`]).
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    error: SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>,
) -> SinkError {
    let text = format!("{}", aws_sdk_kinesis::error::DisplayErrorContext(&error));
    match tally_aws::classify(&error) {
        // Kinesis has no transactions; were a conflict ever answered, it
        // would be worth another try after a backoff, like throttling.
        ErrorClass::Throttled | ErrorClass::Conflict => SinkError::Throttled(text),
        ErrorClass::Transient => SinkError::Unavailable(text),
        ErrorClass::ConditionFailed
        | ErrorClass::NotFound
        | ErrorClass::InUse
        | ErrorClass::ExpiredIterator
        | ErrorClass::TokenReused
        | ErrorClass::Other => SinkError::Fatal(text),
    }
}

#[async_trait]
impl Sink for KinesisSink {
    async fn put_records(&self, entries: &[Entry]) -> Result<Vec<EntryResult>, SinkError> {
        let records = entries
            .iter()
            .map(|entry| {
                PutRecordsRequestEntry::builder()
                    .partition_key(&entry.partition_key)
                    .set_explicit_hash_key(entry.explicit_hash_key.clone())
                    .data(Blob::new(entry.data.to_vec()))
                    .build()
                    .map_err(|error| SinkError::Fatal(error.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .client
            .put_records()
            .stream_name(&self.stream)
            .set_records(Some(records))
            .send()
            .await
            .map_err(classify)?;
        if output.records().len() != entries.len() {
            return Err(SinkError::Unavailable(format!(
                "PutRecords answered {} results for {} records",
                output.records().len(),
                entries.len()
            )));
        }
        Ok(output
            .records()
            .iter()
            .map(|result| {
                match (
                    result.error_code(),
                    result.shard_id(),
                    result.sequence_number(),
                ) {
                    (None, Some(shard), Some(sequence)) => EntryResult::Put {
                        shard_id: shard.to_owned(),
                        sequence_number: sequence.to_owned(),
                    },
                    (code, _, _) => EntryResult::Failed {
                        code: code.unwrap_or("Unknown").to_owned(),
                        message: result.error_message().unwrap_or("").to_owned(),
                    },
                }
            })
            .collect())
    }

    async fn open_shards(&self) -> Result<Vec<ShardRange>, SinkError> {
        let mut ranges = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = match &token {
                Some(next) => self.client.list_shards().next_token(next),
                None => self.client.list_shards().stream_name(&self.stream),
            };
            let page = request.send().await.map_err(classify)?;
            for shard in page.shards() {
                let closed = shard
                    .sequence_number_range()
                    .and_then(|range| range.ending_sequence_number())
                    .is_some();
                let Some(range) = shard.hash_key_range() else {
                    continue;
                };
                let (Ok(start), Ok(end)) = (
                    range.starting_hash_key().parse::<u128>(),
                    range.ending_hash_key().parse::<u128>(),
                ) else {
                    continue;
                };
                if !closed {
                    ranges.push(ShardRange {
                        shard_id: shard.shard_id().to_owned(),
                        start,
                        end,
                    });
                }
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(ranges);
            }
        }
    }
}

/// A stream in memory that fails on demand, for tests: `script` says, call
/// by call, which entries fail (by index) or whether the whole call fails.
#[derive(Clone, Default)]
pub struct MemorySink {
    inner: Arc<Mutex<MemoryState>>,
}

#[derive(Default)]
struct MemoryState {
    shards: Vec<ShardRange>,
    stored: Vec<(String, Entry)>,
    script: std::collections::VecDeque<Scripted>,
    calls: usize,
}

/// What the next call does.
#[derive(Clone, Debug)]
pub enum Scripted {
    /// These entries fail with a throttling error; the others are stored.
    FailEntries(Vec<usize>),
    /// The whole call fails, nothing stored.
    Fail(SinkError),
    /// Everything is stored, then the call reports failure (a lost response).
    Lose,
}

impl MemorySink {
    pub fn with_shards(shards: Vec<ShardRange>) -> Self {
        let sink = Self::default();
        sink.inner.lock().expect("lock").shards = shards;
        sink
    }

    pub fn script(&self, step: Scripted) {
        self.inner.lock().expect("lock").script.push_back(step);
    }

    /// Every entry stored, with its shard, in order.
    pub fn stored(&self) -> Vec<(String, Entry)> {
        self.inner.lock().expect("lock").stored.clone()
    }

    pub fn calls(&self) -> usize {
        self.inner.lock().expect("lock").calls
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn put_records(&self, entries: &[Entry]) -> Result<Vec<EntryResult>, SinkError> {
        let mut state = self.inner.lock().expect("lock");
        state.calls += 1;
        let step = state.script.pop_front();
        let failing: Vec<usize> = match &step {
            Some(Scripted::Fail(error)) => return Err(error.clone()),
            Some(Scripted::FailEntries(failing)) => failing.clone(),
            _ => Vec::new(),
        };
        let mut results = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            if failing.contains(&index) {
                results.push(EntryResult::Failed {
                    code: "ProvisionedThroughputExceededException".into(),
                    message: "scripted".into(),
                });
                continue;
            }
            let hash =
                crate::shard_map::route(&entry.partition_key, entry.explicit_hash_key.as_deref());
            let shard = state
                .shards
                .iter()
                .find(|range| range.start <= hash && hash <= range.end)
                .map(|range| range.shard_id.clone())
                .unwrap_or_else(|| "shardId-000000000000".into());
            state.stored.push((shard.clone(), entry.clone()));
            let sequence = format!("{:020}", state.stored.len());
            results.push(EntryResult::Put {
                shard_id: shard,
                sequence_number: sequence,
            });
        }
        if matches!(step, Some(Scripted::Lose)) {
            return Err(SinkError::Unavailable("scripted lost response".into()));
        }
        Ok(results)
    }

    async fn open_shards(&self) -> Result<Vec<ShardRange>, SinkError> {
        Ok(self.inner.lock().expect("lock").shards.clone())
    }
}
