//! The Kinesis adapter. Wraps
//! <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_ListShards.html>,
//! <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_GetShardIterator.html> and
//! <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_GetRecords.html>.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use tally_aws::{AwsError, ErrorClass};

use super::{ChildShard, Page, RawRecord, StreamError, StreamSource};
use crate::types::{SequenceNumber, Shard, ShardId, StartPosition};

/// One Kinesis stream.
#[derive(Clone)]
pub struct KinesisStream {
    client: Client,
    stream: String,
    requests: Arc<AtomicU64>,
}

impl KinesisStream {
    pub fn new(client: Client, stream: impl Into<String>) -> Self {
        Self {
            client,
            stream: stream.into(),
            requests: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// Requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// Maps a failed call to the stream's error, through the one
/// classification of AWS errors ([`tally_aws::error`]).
fn classify<E>(error: SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>) -> StreamError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let AwsError { class, message } = AwsError::from_sdk(&error);
    match class {
        ErrorClass::ExpiredIterator => StreamError::ExpiredIterator,
        // Kinesis has no transactions; were a conflict ever answered, it
        // would be worth another try after a backoff, like throttling.
        ErrorClass::Throttled | ErrorClass::Conflict => StreamError::Throttled(message),
        ErrorClass::NotFound => StreamError::NotFound(message),
        ErrorClass::Transient => StreamError::Unavailable(message),
        ErrorClass::ConditionFailed
        | ErrorClass::InUse
        | ErrorClass::TokenReused
        | ErrorClass::Other => StreamError::Other(message),
    }
}

fn to_system_time(time: &DateTime) -> SystemTime {
    let millis = time.to_millis().unwrap_or(0);
    if millis >= 0 {
        UNIX_EPOCH + Duration::from_millis(millis as u64)
    } else {
        UNIX_EPOCH
    }
}

#[async_trait]
impl StreamSource for KinesisStream {
    async fn list_shards(&self) -> Result<Vec<Shard>, StreamError> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            self.count();
            // ListShards takes either the stream name or a next token.
            let request = match &token {
                Some(next) => self.client.list_shards().next_token(next),
                None => self.client.list_shards().stream_name(&self.stream),
            };
            let page = request.send().await.map_err(classify)?;
            for shard in page.shards() {
                let range = shard.hash_key_range();
                let ending = shard
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .and_then(SequenceNumber::parse);
                shards.push(Shard {
                    id: ShardId::new(shard.shard_id()),
                    parent: shard.parent_shard_id().map(ShardId::new),
                    adjacent_parent: shard.adjacent_parent_shard_id().map(ShardId::new),
                    hash_range: range
                        .map(|r| {
                            (
                                r.starting_hash_key().to_owned(),
                                r.ending_hash_key().to_owned(),
                            )
                        })
                        .unwrap_or_default(),
                    ending_sequence: ending,
                });
            }
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        Ok(shards)
    }

    async fn shard_iterator(
        &self,
        shard: &ShardId,
        start: &StartPosition,
    ) -> Result<String, StreamError> {
        self.count();
        let request = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(shard.as_str());
        let request = match start {
            StartPosition::TrimHorizon => {
                request.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            StartPosition::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            StartPosition::AtTimestamp(time) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(*time)),
            StartPosition::AtSequence(sequence) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(sequence.as_str()),
            StartPosition::AfterSequence(sequence) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence.as_str()),
        };
        let output = request.send().await.map_err(classify)?;
        output
            .shard_iterator()
            .map(str::to_owned)
            .ok_or_else(|| StreamError::Other("GetShardIterator returned no iterator".into()))
    }

    async fn get_records(&self, iterator: &str, limit: u32) -> Result<Page, StreamError> {
        self.count();
        let output = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit.clamp(1, 10_000) as i32)
            .send()
            .await
            .map_err(classify)?;
        let mut records = Vec::with_capacity(output.records().len());
        for record in output.records() {
            let Some(sequence) = SequenceNumber::parse(record.sequence_number()) else {
                return Err(StreamError::Other(format!(
                    "record with a non-numeric sequence number {:?}",
                    record.sequence_number()
                )));
            };
            records.push(RawRecord {
                data: bytes::Bytes::copy_from_slice(record.data().as_ref()),
                partition_key: record.partition_key().unwrap_or_default().to_owned(),
                sequence,
                arrival: record
                    .approximate_arrival_timestamp()
                    .map(to_system_time)
                    .unwrap_or(UNIX_EPOCH),
            });
        }
        let children = output
            .child_shards()
            .iter()
            .map(|child| ChildShard {
                id: ShardId::new(child.shard_id()),
                parents: child.parent_shards().iter().map(ShardId::new).collect(),
                hash_range: child
                    .hash_key_range()
                    .map(|r| {
                        (
                            r.starting_hash_key().to_owned(),
                            r.ending_hash_key().to_owned(),
                        )
                    })
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Page {
            records,
            next: output.next_shard_iterator().map(str::to_owned),
            millis_behind: output.millis_behind_latest(),
            children,
        })
    }
}
