//! The Kinesis boundary. [`StreamSource`] speaks our types; [`kinesis`] is
//! the AWS adapter and [`memory`] an in-memory stream with resharding for
//! the simulation.
//!
//! Two ways to read a shard go through it: polling (`GetShardIterator`,
//! `GetRecords`) and enhanced fan-out (a registered stream consumer and
//! `SubscribeToShard`, whose events arrive through a [`Subscription`]).

pub mod kinesis;
pub mod memory;

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::types::{SequenceNumber, Shard, ShardId, StartPosition};

/// Errors at the stream boundary, classified for the reader.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    /// Re-request an iterator from the last position.
    #[error("shard iterator expired")]
    ExpiredIterator,
    /// Back off and try again.
    #[error("stream throttled the request: {0}")]
    Throttled(String),
    /// The shard (or stream, or stream consumer) is gone.
    #[error("shard or stream not found: {0}")]
    NotFound(String),
    /// `ResourceInUse`: another subscription to the shard is still open,
    /// or the stream consumer is not active yet. Wait and try again.
    #[error("resource in use: {0}")]
    InUse(String),
    /// 5xx or timeout: the call may or may not have happened.
    #[error("stream unavailable: {0}")]
    Unavailable(String),
    #[error("stream request failed: {0}")]
    Other(String),
}

impl StreamError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StreamError::Throttled(_) | StreamError::Unavailable(_) | StreamError::InUse(_)
        )
    }
}

/// One Kinesis record as read, before de-aggregation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    pub data: Bytes,
    pub partition_key: String,
    pub sequence: SequenceNumber,
    pub arrival: SystemTime,
}

/// A child shard announced at the end of its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildShard {
    pub id: ShardId,
    pub parents: Vec<ShardId>,
    pub hash_range: (String, String),
}

/// One `GetRecords` answer.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub records: Vec<RawRecord>,
    /// `None` once the shard is closed and read to its end.
    pub next: Option<String>,
    pub millis_behind: Option<i64>,
    pub children: Vec<ChildShard>,
}

/// One `SubscribeToShard` event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardEvent {
    pub records: Vec<RawRecord>,
    /// Where the next subscription resumes (after it); `None` once the
    /// shard is closed and every record was sent.
    pub continuation: Option<SequenceNumber>,
    pub millis_behind: Option<i64>,
    pub children: Vec<ChildShard>,
}

/// An open subscription to one shard (at most 5 minutes on AWS).
#[async_trait]
pub trait Subscription: Send {
    /// The next event, waiting for it; `Ok(None)` once the subscription
    /// ended (its time is up, or the server closed it). An error ends the
    /// subscription too.
    async fn next_event(&mut self) -> Result<Option<ShardEvent>, StreamError>;
}

/// A registered stream consumer, ready for `SubscribeToShard`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConsumer {
    pub name: String,
    pub arn: String,
}

/// A Kinesis stream, read by shard.
#[async_trait]
pub trait StreamSource: Send + Sync + 'static {
    /// Every shard of the stream (all pages).
    async fn list_shards(&self) -> Result<Vec<Shard>, StreamError>;
    async fn shard_iterator(
        &self,
        shard: &ShardId,
        start: &StartPosition,
    ) -> Result<String, StreamError>;
    async fn get_records(&self, iterator: &str, limit: u32) -> Result<Page, StreamError>;

    /// Registers the stream consumer `name` unless it exists, and waits
    /// until it is ACTIVE (enhanced fan-out). Idempotent.
    async fn register_consumer(&self, name: &str) -> Result<StreamConsumer, StreamError> {
        Err(StreamError::Other(format!(
            "this stream cannot register the consumer {name}: enhanced fan-out is not supported"
        )))
    }
    /// Opens a subscription to `shard` for `consumer`, from `start`.
    async fn subscribe(
        &self,
        consumer: &StreamConsumer,
        shard: &ShardId,
        start: &StartPosition,
    ) -> Result<Box<dyn Subscription>, StreamError> {
        let _ = (consumer, start);
        Err(StreamError::Other(format!(
            "this stream cannot subscribe to {shard}: enhanced fan-out is not supported"
        )))
    }
}
