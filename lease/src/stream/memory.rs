//! An in-memory Kinesis stream with splits and merges, for the simulation
//! and pure tests. Routing follows Kinesis: the MD5 of the partition key as
//! a 128-bit number picks the open shard whose hash range holds it.
//!
//! It serves enhanced fan-out as AWS does: every consumer name is
//! registered at once, and a subscription sends events of up to 100
//! records (an empty one after 200 ms without records) with a
//! continuation, and at the end of a closed shard one last event without
//! a continuation and with `ChildShards`. A subscription ends after
//! [`EVENTS_PER_SUBSCRIPTION`] events, as one ends after 5 minutes on AWS.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ChildShard, Page, RawRecord, ShardEvent, StreamConsumer, StreamError, StreamSource,
    Subscription,
};

/// Events per subscription before it ends (5 minutes on AWS).
pub const EVENTS_PER_SUBSCRIPTION: u32 = 10;
/// Most records per event.
const RECORDS_PER_EVENT: usize = 100;
use crate::types::{SequenceNumber, Shard, ShardId, StartPosition};

struct MemShard {
    id: ShardId,
    parents: Vec<ShardId>,
    range: (u128, u128),
    records: Vec<RawRecord>,
    closed: bool,
    children: Vec<ShardId>,
}

#[derive(Default)]
struct State {
    shards: Vec<MemShard>,
    next_sequence: u64,
}

/// A stream in memory, shared by every clone.
#[derive(Clone, Default)]
pub struct MemoryStream {
    state: Arc<Mutex<State>>,
}

pub use tally_contract::hash::hash_key;

impl MemoryStream {
    /// A stream of `count` shards splitting the hash space evenly.
    pub fn with_shards(count: usize) -> Self {
        let stream = Self::default();
        {
            let mut state = stream.state.lock().expect("lock");
            let width = u128::MAX / count as u128;
            for index in 0..count {
                let start = width * index as u128;
                let end = if index + 1 == count {
                    u128::MAX
                } else {
                    start + width - 1
                };
                let id = ShardId::new(format!("shardId-{:012}", state.shards.len()));
                state.shards.push(MemShard {
                    id,
                    parents: Vec::new(),
                    range: (start, end),
                    records: Vec::new(),
                    closed: false,
                    children: Vec::new(),
                });
            }
        }
        stream
    }

    /// Appends a record; returns its shard and sequence number.
    pub fn put(&self, partition_key: &str, data: Bytes) -> (ShardId, SequenceNumber) {
        let mut state = self.state.lock().expect("lock");
        let hash = hash_key(partition_key);
        state.next_sequence += 1;
        let sequence =
            SequenceNumber::parse(&format!("{:020}", state.next_sequence)).expect("digits");
        let shard = state
            .shards
            .iter_mut()
            .find(|shard| !shard.closed && shard.range.0 <= hash && hash <= shard.range.1)
            .expect("open shards cover the hash space");
        shard.records.push(RawRecord {
            data,
            partition_key: partition_key.to_owned(),
            sequence: sequence.clone(),
            arrival: SystemTime::now(),
        });
        (shard.id.clone(), sequence)
    }

    /// The open shards, in hash order.
    pub fn open_shards(&self) -> Vec<ShardId> {
        let state = self.state.lock().expect("lock");
        let mut open: Vec<&MemShard> = state.shards.iter().filter(|s| !s.closed).collect();
        open.sort_by_key(|s| s.range.0);
        open.iter().map(|s| s.id.clone()).collect()
    }

    fn add_child(state: &mut State, parents: Vec<ShardId>, range: (u128, u128)) -> ShardId {
        let id = ShardId::new(format!("shardId-{:012}", state.shards.len()));
        for parent in &parents {
            let found = state
                .shards
                .iter_mut()
                .find(|s| &s.id == parent)
                .expect("parent");
            found.children.push(id.clone());
        }
        state.shards.push(MemShard {
            id: id.clone(),
            parents,
            range,
            records: Vec::new(),
            closed: false,
            children: Vec::new(),
        });
        id
    }

    /// Splits an open shard at the middle of its range.
    pub fn split(&self, shard: &ShardId) -> Result<(), StreamError> {
        let mut state = self.state.lock().expect("lock");
        let found = state
            .shards
            .iter_mut()
            .find(|s| &s.id == shard && !s.closed)
            .ok_or_else(|| StreamError::NotFound(shard.to_string()))?;
        if found.range.0 == found.range.1 {
            return Err(StreamError::Other("shard too narrow to split".into()));
        }
        found.closed = true;
        let (start, end) = found.range;
        let middle = start + (end - start) / 2;
        Self::add_child(&mut state, vec![shard.clone()], (start, middle));
        Self::add_child(&mut state, vec![shard.clone()], (middle + 1, end));
        Ok(())
    }

    /// Merges two adjacent open shards.
    pub fn merge(&self, left: &ShardId, right: &ShardId) -> Result<(), StreamError> {
        let mut state = self.state.lock().expect("lock");
        let range_of = |state: &State, id: &ShardId| {
            state
                .shards
                .iter()
                .find(|s| &s.id == id && !s.closed)
                .map(|s| s.range)
        };
        let (Some(a), Some(b)) = (range_of(&state, left), range_of(&state, right)) else {
            return Err(StreamError::NotFound(format!("{left} or {right}")));
        };
        if a.1.checked_add(1) != Some(b.0) {
            return Err(StreamError::Other("shards are not adjacent".into()));
        }
        for shard in state.shards.iter_mut() {
            if &shard.id == left || &shard.id == right {
                shard.closed = true;
            }
        }
        Self::add_child(&mut state, vec![left.clone(), right.clone()], (a.0, b.1));
        Ok(())
    }

    /// Every record ever put, per shard id.
    pub fn all_records(&self) -> Vec<(ShardId, RawRecord)> {
        let state = self.state.lock().expect("lock");
        state
            .shards
            .iter()
            .flat_map(|shard| shard.records.iter().map(|r| (shard.id.clone(), r.clone())))
            .collect()
    }
}

impl State {
    fn children_of(&self, shard: &MemShard) -> Vec<ChildShard> {
        shard
            .children
            .iter()
            .filter_map(|child| self.shards.iter().find(|s| &s.id == child))
            .map(|child| ChildShard {
                id: child.id.clone(),
                parents: child.parents.clone(),
                hash_range: (child.range.0.to_string(), child.range.1.to_string()),
            })
            .collect()
    }

    /// The latest sequence number given out (a continuation for a caught-up
    /// subscription: every later record of any shard is after it).
    fn latest_sequence(&self) -> SequenceNumber {
        SequenceNumber::parse(&format!("{:020}", self.next_sequence)).expect("digits")
    }
}

/// A subscription to one shard of a [`MemoryStream`].
struct MemorySubscription {
    stream: MemoryStream,
    index: usize,
    position: usize,
    events_left: u32,
    ended: bool,
}

impl MemorySubscription {
    /// The next event if one is ready; `None` when there is nothing new.
    fn poll(&mut self, force: bool) -> Option<ShardEvent> {
        let state = self.stream.state.lock().expect("lock");
        let shard = &state.shards[self.index];
        let end = (self.position + RECORDS_PER_EVENT).min(shard.records.len());
        let records = shard.records[self.position.min(end)..end].to_vec();
        self.position = end;
        let at_end = end == shard.records.len();
        if shard.closed && at_end {
            self.ended = true;
            return Some(ShardEvent {
                records,
                continuation: None,
                millis_behind: Some(0),
                children: state.children_of(shard),
            });
        }
        if records.is_empty() && !force {
            return None;
        }
        let continuation = match records.last() {
            Some(last) => last.sequence.clone(),
            None => state.latest_sequence(),
        };
        Some(ShardEvent {
            records,
            continuation: Some(continuation),
            millis_behind: Some(if at_end { 0 } else { 1000 }),
            children: Vec::new(),
        })
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next_event(&mut self) -> Result<Option<ShardEvent>, StreamError> {
        if self.ended || self.events_left == 0 {
            return Ok(None);
        }
        self.events_left -= 1;
        if let Some(event) = self.poll(false) {
            return Ok(Some(event));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(self.poll(true))
    }
}

fn parse_iterator(iterator: &str) -> Option<(usize, usize)> {
    let (shard, position) = iterator.split_once(':')?;
    Some((shard.parse().ok()?, position.parse().ok()?))
}

#[async_trait]
impl StreamSource for MemoryStream {
    async fn list_shards(&self) -> Result<Vec<Shard>, StreamError> {
        let state = self.state.lock().expect("lock");
        Ok(state
            .shards
            .iter()
            .map(|shard| Shard {
                id: shard.id.clone(),
                parent: shard.parents.first().cloned(),
                adjacent_parent: shard.parents.get(1).cloned(),
                hash_range: (shard.range.0.to_string(), shard.range.1.to_string()),
                ending_sequence: if shard.closed {
                    Some(SequenceNumber::parse(&format!("{:020}", u64::MAX)).expect("digits"))
                } else {
                    None
                },
            })
            .collect())
    }

    async fn shard_iterator(
        &self,
        shard: &ShardId,
        start: &StartPosition,
    ) -> Result<String, StreamError> {
        let state = self.state.lock().expect("lock");
        let index = state
            .shards
            .iter()
            .position(|s| &s.id == shard)
            .ok_or_else(|| StreamError::NotFound(shard.to_string()))?;
        let records = &state.shards[index].records;
        let position = match start {
            StartPosition::TrimHorizon => 0,
            StartPosition::Latest => records.len(),
            StartPosition::AtTimestamp(time) => records
                .iter()
                .position(|r| r.arrival >= *time)
                .unwrap_or(records.len()),
            StartPosition::AtSequence(sequence) => records
                .iter()
                .position(|r| &r.sequence >= sequence)
                .unwrap_or(records.len()),
            StartPosition::AfterSequence(sequence) => records
                .iter()
                .position(|r| &r.sequence > sequence)
                .unwrap_or(records.len()),
        };
        Ok(format!("{index}:{position}"))
    }

    async fn get_records(&self, iterator: &str, limit: u32) -> Result<Page, StreamError> {
        let state = self.state.lock().expect("lock");
        let (index, position) =
            parse_iterator(iterator).ok_or_else(|| StreamError::Other("bad iterator".into()))?;
        let shard = state
            .shards
            .get(index)
            .ok_or_else(|| StreamError::NotFound(iterator.to_owned()))?;
        let end = (position + limit as usize).min(shard.records.len());
        let records = shard.records[position.min(end)..end].to_vec();
        let at_end = end == shard.records.len();
        let (next, children) = if shard.closed && at_end {
            (None, state.children_of(shard))
        } else {
            (Some(format!("{index}:{end}")), Vec::new())
        };
        Ok(Page {
            millis_behind: Some(if at_end { 0 } else { 1000 }),
            records,
            next,
            children,
        })
    }

    async fn register_consumer(&self, name: &str) -> Result<StreamConsumer, StreamError> {
        Ok(StreamConsumer {
            name: name.to_owned(),
            arn: format!("memory:consumer/{name}"),
        })
    }

    async fn subscribe(
        &self,
        _consumer: &StreamConsumer,
        shard: &ShardId,
        start: &StartPosition,
    ) -> Result<Box<dyn Subscription>, StreamError> {
        let iterator = self.shard_iterator(shard, start).await?;
        let (index, position) = parse_iterator(&iterator).expect("our own iterator");
        Ok(Box::new(MemorySubscription {
            stream: self.clone(),
            index,
            position,
            events_left: EVENTS_PER_SUBSCRIPTION,
            ended: false,
        }))
    }
}
