//! One task per leased shard: read (through a [`ShardReader`]: polling or
//! enhanced fan-out), de-aggregate, hand batches to the processor, and
//! finish the shard. It never writes a lease except
//! through its fenced [`Checkpointer`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::kpl;
use crate::metrics::Metrics;
use crate::processor::{Batch, CheckpointOutcome, Checkpointer, RecordProcessor, ShardStart};
use crate::reader::{FanOut, FanOutReader, PollingReader, ShardReader};
use crate::store::{LeaseStore, LeaseUpdate, OwnerChange};
use crate::stream::{ChildShard, RawRecord, StreamSource};
use crate::types::{Checkpoint, ExtendedSequence, Lease, Record, ShardId, StartPosition};

/// Why a consumer was asked to stop gracefully.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The worker is stopping: checkpoint and release.
    Shutdown,
    /// Another worker asked for the lease: checkpoint and hand it over.
    Handoff { to: String },
}

/// The switches the coordinator holds for one consumer.
#[derive(Clone, Default)]
pub struct ConsumerControl {
    /// Graceful stop after the in-flight batch.
    pub stop: CancellationToken,
    /// The lease is lost: stop at once, checkpoint nothing.
    pub lost: CancellationToken,
    /// MillisBehindLatest of this reader's last page (the worker publishes
    /// the largest over its readers).
    pub millis_behind: Arc<std::sync::atomic::AtomicI64>,
    reason: Arc<Mutex<Option<StopReason>>>,
}

impl ConsumerControl {
    pub fn request_stop(&self, reason: StopReason) {
        let mut slot = self.reason.lock().expect("lock");
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.stop.cancel();
    }
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.reason.lock().expect("lock").clone()
    }
}

/// How a consumer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerExit {
    /// Read to the end, `SHARD_END` written, lease released.
    Ended,
    /// The lease moved away.
    Lost,
    /// Stopped as asked, after a final checkpoint.
    Stopped(StopReason),
    /// The shard no longer exists.
    Vanished,
}

/// Everything a consumer needs.
pub struct ConsumerContext {
    pub lease: Lease,
    pub store: Arc<dyn LeaseStore>,
    pub stream: Arc<dyn StreamSource>,
    pub processor: Box<dyn RecordProcessor>,
    pub control: ConsumerControl,
    pub metrics: Arc<Metrics>,
    pub poll_interval: Duration,
    pub max_records: u32,
    /// Enhanced fan-out (shared by the worker's consumers); `None` polls.
    pub fan_out: Option<Arc<FanOut>>,
    /// Poked when the shard ended, so the sync runs at once.
    pub shard_ended: Arc<tokio::sync::Notify>,
    /// Seed of the backoff jitter (reproducible in tests).
    pub seed: u64,
}

/// Where to (re)open the iterator, and the position to skip through.
fn start_for(checkpoint: &Checkpoint) -> (StartPosition, Option<ExtendedSequence>) {
    match checkpoint {
        Checkpoint::TrimHorizon | Checkpoint::ShardEnd => (StartPosition::TrimHorizon, None),
        Checkpoint::Latest => (StartPosition::Latest, None),
        Checkpoint::AtTimestamp(millis) => (
            StartPosition::AtTimestamp(UNIX_EPOCH + Duration::from_millis((*millis).max(0) as u64)),
            None,
        ),
        // AT the sequence number, skipping what is checkpointed: a
        // checkpoint inside an aggregate resumes at the next sub-record.
        Checkpoint::At(position) => (
            StartPosition::AtSequence(position.sequence.clone()),
            Some(position.clone()),
        ),
    }
}

/// Turns Kinesis records into user records: aggregates are split, and an
/// aggregate that fails to split is delivered once, whole, flagged.
pub fn user_records(raw: &[RawRecord], metrics: &Metrics) -> Vec<Record> {
    let record = |source: &RawRecord,
                  sub_sequence: u64,
                  data,
                  partition_key,
                  explicit_hash_key,
                  bad_aggregate| Record {
        data,
        partition_key,
        explicit_hash_key,
        position: ExtendedSequence {
            sequence: source.sequence.clone(),
            sub_sequence,
        },
        arrival: source.arrival,
        bad_aggregate,
    };
    let mut out = Vec::with_capacity(raw.len());
    for source in raw {
        if !kpl::is_aggregate(&source.data) {
            out.push(record(
                source,
                0,
                source.data.clone(),
                source.partition_key.clone(),
                None,
                None,
            ));
            continue;
        }
        match kpl::deaggregate(&source.data) {
            Ok(subs) => {
                for (index, sub) in subs.into_iter().enumerate() {
                    out.push(record(
                        source,
                        index as u64,
                        sub.data,
                        sub.partition_key,
                        sub.explicit_hash_key,
                        None,
                    ));
                }
            }
            Err(reason) => {
                Metrics::add(&metrics.bad_aggregates_total, 1);
                warn!(sequence = %source.sequence, reason = %reason, "bad aggregate delivered as is");
                let flagged = Some(reason.to_string());
                out.push(record(
                    source,
                    0,
                    source.data.clone(),
                    source.partition_key.clone(),
                    None,
                    flagged,
                ));
            }
        }
    }
    out
}

/// The reader for this consumer's mode.
fn reader(ctx: &ConsumerContext, first_start: StartPosition) -> Box<dyn ShardReader> {
    let shard = ctx.lease.key.clone();
    match &ctx.fan_out {
        None => Box::new(PollingReader::new(
            ctx.stream.clone(),
            shard,
            first_start,
            ctx.max_records,
            ctx.poll_interval,
            ctx.metrics.clone(),
            ctx.seed,
        )),
        Some(fan_out) => Box::new(FanOutReader::new(
            ctx.stream.clone(),
            fan_out.clone(),
            shard,
            first_start,
            ctx.metrics.clone(),
            ctx.seed,
        )),
    }
}

/// Drops the sub-records already checkpointed inside the aggregate a
/// resumed lease starts at, on the first page that has records; an empty
/// page before it (an event with nothing in it) leaves the skip for later.
fn skip_checkpointed(records: &mut Vec<Record>, skip_through: &mut Option<ExtendedSequence>) {
    if records.is_empty() {
        return;
    }
    if let Some(through) = skip_through.take() {
        records.retain(|record| record.position > through);
    }
}

/// Runs one shard until it ends, is lost, or is stopped.
pub async fn run(mut ctx: ConsumerContext) -> ConsumerExit {
    let shard = ctx.lease.key.clone();
    let checkpointer = Checkpointer::new(
        ctx.store.clone(),
        ctx.lease.fence(),
        ctx.lease.checkpoint.clone(),
        ctx.control.lost.clone(),
        ctx.metrics.clone(),
    );
    let start = ShardStart {
        shard: shard.clone(),
        checkpoint: ctx.lease.checkpoint.clone(),
        fence: ctx.lease.fence(),
    };
    let mut attempt: u32 = 0;
    while let Err(error) = ctx.processor.initialize(&start).await {
        attempt += 1;
        error!(shard_id = %shard, error = %error, attempt, "processor failed to initialize; retrying");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100u64 << attempt.min(6))) => {}
            _ = ctx.control.lost.cancelled() => {
                ctx.processor.lease_lost().await;
                return ConsumerExit::Lost;
            }
            _ = ctx.control.stop.cancelled() => {
                return ConsumerExit::Stopped(ctx.control.stop_reason().unwrap_or(StopReason::Shutdown));
            }
        }
    }
    let (first_start, mut skip_through) = start_for(&ctx.lease.checkpoint);
    let mut reader = reader(&ctx, first_start);
    loop {
        if ctx.control.lost.is_cancelled() {
            ctx.processor.lease_lost().await;
            return ConsumerExit::Lost;
        }
        if ctx.control.stop.is_cancelled() {
            return stop(&mut ctx, &checkpointer).await;
        }
        // The next page is read only now, after the previous batch was
        // processed: one batch at a time per shard.
        let page = tokio::select! {
            page = reader.next_page() => page,
            _ = ctx.control.stop.cancelled() => continue,
            _ = ctx.control.lost.cancelled() => continue,
        };
        let Ok(page) = page else {
            return ConsumerExit::Vanished;
        };
        Metrics::add(&ctx.metrics.records_read_total, page.records.len() as u64);
        Metrics::add(
            &ctx.metrics.bytes_read_total,
            page.records.iter().map(|r| r.data.len() as u64).sum(),
        );
        if let Some(behind) = page.millis_behind {
            ctx.control
                .millis_behind
                .store(behind, std::sync::atomic::Ordering::Relaxed);
        }
        let mut records = user_records(&page.records, &ctx.metrics);
        skip_checkpointed(&mut records, &mut skip_through);
        if !records.is_empty() {
            Metrics::add(&ctx.metrics.user_records_total, records.len() as u64);
            let batch = Batch {
                shard: shard.clone(),
                records,
                millis_behind_latest: page.millis_behind,
            };
            if !deliver(&mut ctx, &batch, &checkpointer).await {
                continue; // lost or stopping: the loop head decides
            }
        }
        if page.next.is_none() {
            return finish(&mut ctx, &checkpointer, page.children).await;
        }
    }
}

/// Offers a batch until the processor takes it; false when the lease was
/// lost or a stop arrived while retrying.
async fn deliver(ctx: &mut ConsumerContext, batch: &Batch, checkpointer: &Checkpointer) -> bool {
    let mut attempt: u32 = 0;
    loop {
        match ctx.processor.process_records(batch, checkpointer).await {
            Ok(()) => return !checkpointer.is_lost(),
            Err(error) => {
                attempt += 1;
                let delay = Duration::from_millis(100u64 << attempt.min(7));
                error!(shard_id = %batch.shard, error = %error, attempt, "processor failed; offering the batch again");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.control.lost.cancelled() => return false,
                    _ = ctx.control.stop.cancelled() => return false,
                }
            }
        }
    }
}

async fn stop(ctx: &mut ConsumerContext, checkpointer: &Checkpointer) -> ConsumerExit {
    let reason = ctx.control.stop_reason().unwrap_or(StopReason::Shutdown);
    if let Err(error) = ctx.processor.shutdown_requested(checkpointer).await {
        warn!(shard_id = %ctx.lease.key, error = %error, "processor failed its final checkpoint");
    }
    if checkpointer.is_lost() {
        ctx.processor.lease_lost().await;
        return ConsumerExit::Lost;
    }
    ConsumerExit::Stopped(reason)
}

async fn finish(
    ctx: &mut ConsumerContext,
    checkpointer: &Checkpointer,
    children: Vec<ChildShard>,
) -> ConsumerExit {
    let shard = ctx.lease.key.clone();
    loop {
        match ctx.processor.shard_ended(checkpointer).await {
            Ok(()) => break,
            Err(error) => {
                error!(shard_id = %shard, error = %error, "processor failed at shard end; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = ctx.control.lost.cancelled() => {
                        ctx.processor.lease_lost().await;
                        return ConsumerExit::Lost;
                    }
                }
            }
        }
    }
    let child_ids: Vec<ShardId> = children.iter().map(|child| child.id.clone()).collect();
    let ids_for_update = child_ids.clone();
    let outcome = checkpointer
        .write(Checkpoint::ShardEnd, move |checkpoint| LeaseUpdate {
            owner: OwnerChange::Clear,
            checkpoint: Some(checkpoint),
            pending_owner: Some(None),
            children: if ids_for_update.is_empty() {
                None
            } else {
                Some(ids_for_update.clone())
            },
        })
        .await;
    match outcome {
        Ok(CheckpointOutcome::Committed) => {}
        Ok(CheckpointOutcome::Lost) => {
            ctx.processor.lease_lost().await;
            return ConsumerExit::Lost;
        }
        Err(error) => {
            error!(shard_id = %shard, error = %error, "could not checkpoint SHARD_END");
            ctx.processor.lease_lost().await;
            return ConsumerExit::Lost;
        }
    }
    Metrics::add(&ctx.metrics.shards_ended_total, 1);
    // Children waiting on this shard may start now: tell every worker.
    crate::store::announce(ctx.store.as_ref()).await;
    info!(shard_id = %shard, children = ?child_ids, "shard ended");
    // Child leases come from the (epoch-fenced) sync, poked now: a consumer
    // paused here must never create a lease from a stale view.
    ctx.shard_ended.notify_one();
    ConsumerExit::Ended
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SequenceNumber;
    use bytes::Bytes;
    use std::time::SystemTime;

    fn raw(sequence: &str, data: Vec<u8>) -> RawRecord {
        RawRecord {
            data: Bytes::from(data),
            partition_key: "pk".into(),
            sequence: SequenceNumber::parse(sequence).unwrap(),
            arrival: SystemTime::now(),
        }
    }

    #[test]
    fn aggregates_split_and_bad_ones_are_flagged_once() {
        let good = kpl::aggregate(&[
            kpl::UserRecord {
                partition_key: "a".into(),
                explicit_hash_key: None,
                data: Bytes::from_static(b"1"),
            },
            kpl::UserRecord {
                partition_key: "b".into(),
                explicit_hash_key: None,
                data: Bytes::from_static(b"2"),
            },
        ]);
        let mut bad = good.clone();
        bad[6] ^= 0x55;
        let metrics = Metrics::default();
        let out = user_records(
            &[
                raw("1", b"plain".to_vec()),
                raw("2", good),
                raw("3", bad.clone()),
            ],
            &metrics,
        );
        assert_eq!(out.len(), 4);
        assert_eq!(out[1].position.sub_sequence, 0);
        assert_eq!(out[2].position.sub_sequence, 1);
        assert_eq!(out[2].partition_key, "b");
        assert_eq!(out[3].data.as_ref(), bad.as_slice());
        assert!(out[3].bad_aggregate.is_some());
        assert_eq!(
            metrics
                .bad_aggregates_total
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn an_aggregate_over_the_limits_is_delivered_once_whole_and_flagged() {
        let one = kpl::UserRecord {
            partition_key: "k".into(),
            explicit_hash_key: None,
            data: Bytes::new(),
        };
        let too_many = kpl::aggregate(&vec![one; kpl::MAX_SUB_RECORDS + 1]);
        let metrics = Metrics::default();
        let out = user_records(&[raw("9", too_many.clone())], &metrics);
        assert_eq!(out.len(), 1, "one record, not one per sub-record");
        assert_eq!(out[0].data.as_ref(), too_many.as_slice(), "kept whole");
        let reason = out[0].bad_aggregate.as_deref().unwrap();
        assert!(reason.contains("more than"), "{reason}");
    }

    #[test]
    fn resumes_after_the_checkpointed_sub_record() {
        let position = ExtendedSequence {
            sequence: SequenceNumber::parse("7").unwrap(),
            sub_sequence: 2,
        };
        let (start, skip) = start_for(&Checkpoint::At(position.clone()));
        assert_eq!(start, StartPosition::AtSequence(position.sequence.clone()));
        assert_eq!(skip, Some(position));
    }

    /// An empty first page (an event with no records) does not use up the
    /// skip of checkpointed sub-records: the aggregate on the next page is
    /// still read from after the checkpoint.
    #[test]
    fn an_empty_first_page_keeps_the_sub_record_skip() {
        let one = |n: u8| kpl::UserRecord {
            partition_key: "k".into(),
            explicit_hash_key: None,
            data: Bytes::from(vec![n]),
        };
        let aggregate = kpl::aggregate(&[one(0), one(1), one(2), one(3)]);
        let metrics = Metrics::default();
        let (_, mut skip) = start_for(&Checkpoint::At(ExtendedSequence {
            sequence: SequenceNumber::parse("7").unwrap(),
            sub_sequence: 1,
        }));
        let mut empty = user_records(&[], &metrics);
        skip_checkpointed(&mut empty, &mut skip);
        assert!(skip.is_some(), "kept for the page with records");
        let mut records = user_records(&[raw("7", aggregate)], &metrics);
        skip_checkpointed(&mut records, &mut skip);
        let subs: Vec<u64> = records.iter().map(|r| r.position.sub_sequence).collect();
        assert_eq!(subs, vec![2, 3]);
        assert!(skip.is_none());
    }

    /// Fan-out end to end on the in-memory stream: a slow processor is
    /// never handed a second batch before it returned from the first (no
    /// event is read ahead), every record arrives once and in order, and
    /// the shard ends with `SHARD_END` and its children.
    #[tokio::test(start_paused = true)]
    async fn fan_out_hands_over_one_batch_at_a_time_and_ends_the_shard() {
        use crate::store::memory::MemoryStore;
        use crate::stream::memory::MemoryStream;
        use crate::stream::{ShardEvent, StreamConsumer, StreamError, Subscription};
        use crate::types::Shard;
        use async_trait::async_trait;
        use std::sync::atomic::{AtomicU32, Ordering};

        /// Counts the events read from every subscription.
        struct Counted {
            inner: MemoryStream,
            events: Arc<AtomicU32>,
        }
        struct CountedSubscription {
            inner: Box<dyn Subscription>,
            events: Arc<AtomicU32>,
        }
        #[async_trait]
        impl Subscription for CountedSubscription {
            async fn next_event(&mut self) -> Result<Option<ShardEvent>, StreamError> {
                let event = self.inner.next_event().await?;
                if event.is_some() {
                    self.events.fetch_add(1, Ordering::SeqCst);
                }
                Ok(event)
            }
        }
        #[async_trait]
        impl StreamSource for Counted {
            async fn list_shards(&self) -> Result<Vec<Shard>, StreamError> {
                self.inner.list_shards().await
            }
            async fn shard_iterator(
                &self,
                shard: &ShardId,
                start: &StartPosition,
            ) -> Result<String, StreamError> {
                self.inner.shard_iterator(shard, start).await
            }
            async fn get_records(
                &self,
                iterator: &str,
                limit: u32,
            ) -> Result<crate::stream::Page, StreamError> {
                self.inner.get_records(iterator, limit).await
            }
            async fn register_consumer(&self, name: &str) -> Result<StreamConsumer, StreamError> {
                self.inner.register_consumer(name).await
            }
            async fn subscribe(
                &self,
                consumer: &StreamConsumer,
                shard: &ShardId,
                start: &StartPosition,
            ) -> Result<Box<dyn Subscription>, StreamError> {
                Ok(Box::new(CountedSubscription {
                    inner: self.inner.subscribe(consumer, shard, start).await?,
                    events: self.events.clone(),
                }))
            }
        }

        /// Takes a virtual second per batch and checks nothing was read ahead.
        struct Slow {
            events: Arc<AtomicU32>,
            batches: u32,
            seen: Arc<Mutex<Vec<String>>>,
            read_ahead: Arc<AtomicU32>,
        }
        #[async_trait]
        impl RecordProcessor for Slow {
            async fn initialize(
                &mut self,
                _: &ShardStart,
            ) -> Result<(), crate::processor::ProcessorError> {
                Ok(())
            }
            async fn process_records(
                &mut self,
                batch: &Batch,
                checkpointer: &Checkpointer,
            ) -> Result<(), crate::processor::ProcessorError> {
                self.batches += 1;
                // Empty events come between batches; more events than
                // batches is fine, a read during this batch is not.
                let read = self.events.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                self.seen.lock().unwrap().extend(
                    batch
                        .records
                        .iter()
                        .map(|r| String::from_utf8_lossy(&r.data).into_owned()),
                );
                checkpointer
                    .checkpoint(batch.records.last().unwrap().position.clone())
                    .await?;
                if self.events.load(Ordering::SeqCst) != read {
                    self.read_ahead.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
        }

        let memory = MemoryStream::with_shards(1);
        let shard = memory.open_shards()[0].clone();
        for index in 0..250 {
            memory.put("key", Bytes::from(format!("{index:03}")));
        }
        memory.split(&shard).unwrap();
        let events = Arc::new(AtomicU32::new(0));
        let stream = Arc::new(Counted {
            inner: memory.clone(),
            events: events.clone(),
        });
        let store = MemoryStore::new();
        store.ensure_table().await.unwrap();
        let mut lease = Lease::new(shard.clone(), Checkpoint::TrimHorizon);
        lease.owner = Some("w".into());
        lease.counter = 1;
        store.create_lease(&lease, 0).await.unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let read_ahead = Arc::new(AtomicU32::new(0));
        let metrics = Arc::new(Metrics::default());
        let exit = run(ConsumerContext {
            lease,
            store: Arc::new(store.clone()),
            stream,
            processor: Box::new(Slow {
                events: events.clone(),
                batches: 0,
                seen: seen.clone(),
                read_ahead: read_ahead.clone(),
            }),
            control: ConsumerControl::default(),
            metrics: metrics.clone(),
            poll_interval: Duration::from_millis(200),
            max_records: 10_000,
            fan_out: Some(Arc::new(FanOut::new("app"))),
            shard_ended: Arc::default(),
            seed: 1,
        })
        .await;
        assert_eq!(exit, ConsumerExit::Ended);
        assert_eq!(
            read_ahead.load(Ordering::SeqCst),
            0,
            "an event was read during a batch"
        );
        let expected: Vec<String> = (0..250).map(|i| format!("{i:03}")).collect();
        assert_eq!(*seen.lock().unwrap(), expected);
        let stored = store.get_lease(&shard).await.unwrap().unwrap();
        assert_eq!(stored.checkpoint, Checkpoint::ShardEnd);
        assert_eq!(stored.children.len(), 2);
        // It read through subscriptions, not by polling.
        assert!(events.load(Ordering::SeqCst) > 0);
        let counters: std::collections::BTreeMap<&str, i64> =
            metrics.snapshot().into_iter().collect();
        assert!(
            counters["tally_lease_subscriptions_total"] > 0,
            "{counters:?}"
        );
        assert_eq!(counters["tally_lease_get_records_total"], 0, "{counters:?}");
    }
}
