//! The Kinesis boundary. [`StreamSource`] speaks our types; [`kinesis`] is
//! the AWS adapter and [`memory`] an in-memory stream with resharding for
//! the simulation.

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
    /// The shard (or stream) is gone: stop reading it.
    #[error("shard or stream not found: {0}")]
    NotFound(String),
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
            StreamError::Throttled(_) | StreamError::Unavailable(_)
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
}
