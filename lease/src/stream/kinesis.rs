//! The Kinesis adapter. Wraps
//! <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_ListShards.html>,
//! <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_GetShardIterator.html> and
//! <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_GetRecords.html>,
//! and for enhanced fan-out
//! <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_DescribeStreamSummary.html> (the stream's ARN),
//! <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_RegisterStreamConsumer.html>,
//! <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_DescribeStreamConsumer.html> and
//! <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_SubscribeToShard.html>;
//! for an operator only,
//! <https://docs.aws.amazon.com/kinesis/latest/APIReference/API_DeregisterStreamConsumer.html>.
//!
//! `SubscribeToShard` needs HTTP/2 on AWS: the SDK's default HTTPS client
//! offers `h2` by ALPN and AWS picks it. Over plain `http://` (the
//! emulators) the same client speaks HTTP/1.1 and the event stream
//! arrives as a chunked body; see docs/DESIGN.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::event_stream::EventReceiver;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use aws_sdk_kinesis::Client;
use tally_aws::{classify_code, AwsError, ErrorClass};
use tokio::sync::OnceCell;

use super::{
    ChildShard, Page, RawRecord, ShardEvent, StreamConsumer, StreamError, StreamSource,
    Subscription,
};
use crate::types::{SequenceNumber, Shard, ShardId, StartPosition};

/// One Kinesis stream.
#[derive(Clone)]
pub struct KinesisStream {
    client: Client,
    stream: String,
    requests: Arc<AtomicU64>,
    /// The stream's ARN, read once (fan-out only).
    arn: Arc<OnceCell<String>>,
}

/// How long [`StreamSource::register_consumer`] waits for a consumer to
/// become ACTIVE before it answers `InUse` (the caller retries).
const CONSUMER_ACTIVE_WAIT: Duration = Duration::from_secs(60);

impl KinesisStream {
    pub fn new(client: Client, stream: impl Into<String>) -> Self {
        Self {
            client,
            stream: stream.into(),
            requests: Arc::new(AtomicU64::new(0)),
            arn: Arc::new(OnceCell::new()),
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

    /// The stream's ARN (`DescribeStreamSummary`, once).
    async fn stream_arn(&self) -> Result<String, StreamError> {
        let arn = self
            .arn
            .get_or_try_init(|| async {
                self.count();
                let summary = self
                    .client
                    .describe_stream_summary()
                    .stream_name(&self.stream)
                    .send()
                    .await
                    .map_err(classify)?;
                summary
                    .stream_description_summary()
                    .map(|d| d.stream_arn().to_owned())
                    .ok_or_else(|| {
                        StreamError::Other("DescribeStreamSummary returned no summary".into())
                    })
            })
            .await?;
        Ok(arn.clone())
    }

    /// The stream consumer `name`: its status (`ACTIVE`, `CREATING`,
    /// `DELETING`) and ARN, `None` when it is not registered.
    pub async fn consumer_status(
        &self,
        name: &str,
    ) -> Result<Option<(String, String)>, StreamError> {
        let stream_arn = self.stream_arn().await?;
        Ok(self
            .describe_consumer(&stream_arn, name)
            .await?
            .map(|(status, arn)| (status.as_str().to_owned(), arn)))
    }

    /// Deregisters the stream consumer `name` (an operator's decision:
    /// workers never do it); false when it was not registered.
    pub async fn deregister_consumer(&self, name: &str) -> Result<bool, StreamError> {
        let stream_arn = self.stream_arn().await?;
        self.count();
        let deregistered = self
            .client
            .deregister_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(name)
            .send()
            .await
            .map_err(classify);
        match deregistered {
            Ok(_) => Ok(true),
            Err(StreamError::NotFound(_)) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The consumer's status and ARN, `None` when it is not registered.
    async fn describe_consumer(
        &self,
        stream_arn: &str,
        name: &str,
    ) -> Result<Option<(ConsumerStatus, String)>, StreamError> {
        self.count();
        let described = self
            .client
            .describe_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(name)
            .send()
            .await
            .map_err(classify);
        match described {
            Ok(output) => Ok(output
                .consumer_description()
                .map(|d| (d.consumer_status().clone(), d.consumer_arn().to_owned()))),
            Err(StreamError::NotFound(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// Maps a failed call to the stream's error, through the one
/// classification of AWS errors ([`tally_aws::error`]).
fn classify<E>(error: SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>) -> StreamError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let AwsError { class, message } = AwsError::from_sdk(&error);
    from_class(class, message)
}

/// Maps a failure of an open event stream (an exception event, or the
/// connection dropped) through the same classification.
fn classify_event<R: std::fmt::Debug>(
    error: SdkError<SubscribeToShardEventStreamError, R>,
) -> StreamError {
    let class = match &error {
        SdkError::ServiceError(service) => service
            .err()
            .code()
            .map(classify_code)
            .unwrap_or(ErrorClass::Other),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Other,
    };
    from_class(class, DisplayErrorContext(&error).to_string())
}

fn from_class(class: ErrorClass, message: String) -> StreamError {
    match class {
        ErrorClass::ExpiredIterator => StreamError::ExpiredIterator,
        // Kinesis has no transactions; were a conflict ever answered, it
        // would be worth another try after a backoff, like throttling.
        ErrorClass::Throttled | ErrorClass::Conflict => StreamError::Throttled(message),
        ErrorClass::NotFound => StreamError::NotFound(message),
        ErrorClass::Transient => StreamError::Unavailable(message),
        ErrorClass::InUse => StreamError::InUse(message),
        ErrorClass::ConditionFailed | ErrorClass::TokenReused | ErrorClass::Other => {
            StreamError::Other(message)
        }
    }
}

fn raw_records(records: &[aws_sdk_kinesis::types::Record]) -> Result<Vec<RawRecord>, StreamError> {
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let Some(sequence) = SequenceNumber::parse(record.sequence_number()) else {
            return Err(StreamError::Other(format!(
                "record with a non-numeric sequence number {:?}",
                record.sequence_number()
            )));
        };
        out.push(RawRecord {
            data: bytes::Bytes::copy_from_slice(record.data().as_ref()),
            partition_key: record.partition_key().unwrap_or_default().to_owned(),
            sequence,
            arrival: record
                .approximate_arrival_timestamp()
                .map(to_system_time)
                .unwrap_or(UNIX_EPOCH),
        });
    }
    Ok(out)
}

fn child_shards(children: &[aws_sdk_kinesis::types::ChildShard]) -> Vec<ChildShard> {
    children
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
        .collect()
}

/// The SDK's starting position for ours.
fn starting_position(start: &StartPosition) -> Result<StartingPosition, StreamError> {
    let builder = StartingPosition::builder();
    let builder = match start {
        StartPosition::TrimHorizon => builder.r#type(ShardIteratorType::TrimHorizon),
        StartPosition::Latest => builder.r#type(ShardIteratorType::Latest),
        StartPosition::AtTimestamp(time) => builder
            .r#type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from(*time)),
        StartPosition::AtSequence(sequence) => builder
            .r#type(ShardIteratorType::AtSequenceNumber)
            .sequence_number(sequence.as_str()),
        StartPosition::AfterSequence(sequence) => builder
            .r#type(ShardIteratorType::AfterSequenceNumber)
            .sequence_number(sequence.as_str()),
    };
    builder
        .build()
        .map_err(|error| StreamError::Other(format!("starting position: {error}")))
}

/// One open `SubscribeToShard` event stream.
struct KinesisSubscription {
    events: EventReceiver<SubscribeToShardEventStream, SubscribeToShardEventStreamError>,
}

#[async_trait]
impl Subscription for KinesisSubscription {
    async fn next_event(&mut self) -> Result<Option<ShardEvent>, StreamError> {
        loop {
            let event = match self.events.recv().await.map_err(classify_event)? {
                None => return Ok(None),
                Some(SubscribeToShardEventStream::SubscribeToShardEvent(event)) => event,
                // An event type this SDK does not know: nothing to read.
                Some(_) => continue,
            };
            let continuation = match event.continuation_sequence_number() {
                "" => None,
                text => Some(SequenceNumber::parse(text).ok_or_else(|| {
                    StreamError::Other(format!(
                        "event with a non-numeric continuation sequence number {text:?}"
                    ))
                })?),
            };
            return Ok(Some(ShardEvent {
                records: raw_records(event.records())?,
                continuation,
                millis_behind: Some(event.millis_behind_latest()),
                children: child_shards(event.child_shards()),
            }));
        }
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
        // One mapping of our positions to the SDK's, shared with
        // SubscribeToShard.
        let position = starting_position(start)?;
        let request = request
            .shard_iterator_type(position.r#type().clone())
            .set_timestamp(position.timestamp().copied())
            .set_starting_sequence_number(position.sequence_number().map(str::to_owned));
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
        let records = raw_records(output.records())?;
        let children = child_shards(output.child_shards());
        Ok(Page {
            records,
            next: output.next_shard_iterator().map(str::to_owned),
            millis_behind: output.millis_behind_latest(),
            children,
        })
    }

    async fn register_consumer(&self, name: &str) -> Result<StreamConsumer, StreamError> {
        let stream_arn = self.stream_arn().await?;
        let deadline = tokio::time::Instant::now() + CONSUMER_ACTIVE_WAIT;
        loop {
            match self.describe_consumer(&stream_arn, name).await? {
                Some((ConsumerStatus::Active, arn)) => {
                    return Ok(StreamConsumer {
                        name: name.to_owned(),
                        arn,
                    })
                }
                // CREATING, or DELETING (then gone, then registered again).
                Some(_) => {}
                None => {
                    self.count();
                    let registered = self
                        .client
                        .register_stream_consumer()
                        .stream_arn(&stream_arn)
                        .consumer_name(name)
                        .send()
                        .await
                        .map_err(classify);
                    match registered {
                        // Registered by another worker at the same time.
                        Ok(_) | Err(StreamError::InUse(_)) => {}
                        Err(error) => return Err(error),
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StreamError::InUse(format!(
                    "stream consumer {name} not ACTIVE after {CONSUMER_ACTIVE_WAIT:?}"
                )));
            }
            // DescribeStreamConsumer allows 20 calls a second per stream.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn subscribe(
        &self,
        consumer: &StreamConsumer,
        shard: &ShardId,
        start: &StartPosition,
    ) -> Result<Box<dyn Subscription>, StreamError> {
        self.count();
        // No SDK retries here: AWS allows one call a second per consumer
        // and shard, and the SDK's backoff would call again sooner (and be
        // throttled again). The reader decides when to call again.
        let output = self
            .client
            .subscribe_to_shard()
            .consumer_arn(&consumer.arn)
            .shard_id(shard.as_str())
            .starting_position(starting_position(start)?)
            .customize()
            .config_override(
                aws_sdk_kinesis::config::Config::builder()
                    .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(classify)?;
        Ok(Box::new(KinesisSubscription {
            events: output.event_stream,
        }))
    }
}
