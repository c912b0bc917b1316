//! The producer: a bounded buffer, one background task that batches,
//! aggregates, puts and retries, and a receipt (or an error) per record.
//!
//! Guarantees:
//! - **Nothing is lost silently.** Every record's future resolves to its
//!   receipt (shard, sequence number, sub-sequence in its aggregate) or to
//!   an error: its time to live ran out while retrying, the stream refused
//!   it for good, or it was too large.
//! - **Duplicates only from lost responses.** Only failed records are put
//!   again, except when a whole call's outcome is unknown (a timeout, a
//!   5xx, a lost response): then the call's records are put again, and
//!   those that were in fact written are on the stream twice. Consumers
//!   must be idempotent (Tally's worker dedupes per voter and poll).
//! - **Order per partition key** is the order of `send` as long as no record
//!   of that key is retried: records are planned, aggregated and put in
//!   sending order, one call at a time; a retried record goes out after
//!   the records sent with it that succeeded.
//! - **Bounded memory.** At most `max_buffered_records` records and
//!   `max_buffered_bytes` bytes are held; `send` waits for room, `try_send`
//!   fails at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use bytes::Bytes;
use tally_contract::kpl::UserRecord;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::batch::{
    build_entries, plan_calls, Aggregation, MAX_BYTES_PER_CALL, MAX_PARTITION_KEY_CHARS,
    MAX_RECORDS_PER_CALL, MAX_RECORD_BYTES,
};
use crate::shard_map::ShardMap;
use crate::sink::{EntryResult, Sink, SinkError};

/// The producer's settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// How long a record may wait for others to fill a call.
    pub linger: Duration,
    pub max_buffered_records: usize,
    pub max_buffered_bytes: usize,
    /// KPL aggregation per predicted shard; `None`: plain records.
    pub aggregation: Option<Aggregation>,
    /// A record not put within this time fails.
    pub record_ttl: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How often the shard map is read again (also after a misprediction).
    pub shard_map_refresh: Duration,
    pub max_records_per_call: usize,
    pub max_bytes_per_call: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(50),
            max_buffered_records: 100_000,
            max_buffered_bytes: 64 * 1024 * 1024,
            aggregation: None,
            record_ttl: Duration::from_secs(30),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            shard_map_refresh: Duration::from_secs(60),
            max_records_per_call: MAX_RECORDS_PER_CALL,
            max_bytes_per_call: MAX_BYTES_PER_CALL,
        }
    }
}

impl ProducerConfig {
    /// How many user records, and how many bytes of them, one call can
    /// carry: a call is due when that much is pending.
    fn call_budget(&self) -> (usize, usize) {
        match &self.aggregation {
            None => (self.max_records_per_call, self.max_bytes_per_call),
            Some(aggregation) => (
                self.max_records_per_call
                    .saturating_mul(aggregation.max_records),
                self.max_bytes_per_call.min(
                    self.max_records_per_call
                        .saturating_mul(aggregation.max_bytes),
                ),
            ),
        }
    }
}

/// Where a record landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub shard_id: String,
    pub sequence_number: String,
    /// The record's index in its aggregate (0 for a plain record).
    pub sub_sequence: u64,
    /// How many times it was put (more than 1: it was retried).
    pub attempts: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    #[error("the buffer is full ({0})")]
    BufferFull(&'static str),
    #[error("the producer is closed")]
    Closed,
    #[error("record too large: {0}")]
    TooLarge(String),
    #[error("invalid partition key: {0}")]
    InvalidKey(String),
    #[error("record not put within its time to live after {attempts} attempts; last error: {last_error}")]
    Expired { attempts: u32, last_error: String },
    #[error("the stream refused the record: {0}")]
    Refused(String),
}

/// Counters, read with [`Producer::metrics`].
#[derive(Debug, Default)]
pub struct Metrics {
    pub mispredictions: AtomicU64,
    pub user_records_put: AtomicU64,
    pub kinesis_records_put: AtomicU64,
    pub bytes_put: AtomicU64,
    pub calls: AtomicU64,
    pub retried_records: AtomicU64,
    pub throttles: AtomicU64,
    pub failed_records: AtomicU64,
    pub shard_map_refreshes: AtomicU64,
    buffered: AtomicU64,
}

impl Metrics {
    pub fn buffered_records(&self) -> u64 {
        self.buffered.load(Ordering::Relaxed)
    }

    /// User records per Kinesis record (1.0 without aggregation).
    pub fn aggregation_ratio(&self) -> f64 {
        let kinesis = self.kinesis_records_put.load(Ordering::Relaxed);
        if kinesis == 0 {
            return 1.0;
        }
        self.user_records_put.load(Ordering::Relaxed) as f64 / kinesis as f64
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        serde_json::json!({
            "tally_producer_user_records_total": load(&self.user_records_put),
            "tally_producer_kinesis_records_total": load(&self.kinesis_records_put),
            "tally_producer_bytes_total": load(&self.bytes_put),
            "tally_producer_calls_total": load(&self.calls),
            "tally_producer_retried_records_total": load(&self.retried_records),
            "tally_producer_throttles_total": load(&self.throttles),
            "tally_producer_failed_records_total": load(&self.failed_records),
            "tally_producer_buffered_records": self.buffered_records(),
            "tally_producer_aggregation_ratio": self.aggregation_ratio(),
            "tally_producer_mispredictions_total": load(&self.mispredictions),
        })
    }
}

/// A record to send.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Bytes,
}

impl Record {
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            data: data.into(),
        }
    }
}

struct Pending {
    record: UserRecord,
    reply: oneshot::Sender<Result<Receipt, ProducerError>>,
    expires: Instant,
    attempts: u32,
    last_error: String,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

enum Message {
    Record(Pending),
    Flush(oneshot::Sender<()>),
}

/// A record's receipt, when it comes.
pub struct ReceiptFuture(oneshot::Receiver<Result<Receipt, ProducerError>>);

impl std::future::Future for ReceiptFuture {
    type Output = Result<Receipt, ProducerError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|result| result.unwrap_or(Err(ProducerError::Closed)))
    }
}

/// The producer. Cheap to clone; every clone feeds the same task.
#[derive(Clone)]
pub struct Producer {
    sender: mpsc::UnboundedSender<Message>,
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    config: Arc<ProducerConfig>,
    metrics: Arc<Metrics>,
    task: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// Byte budget in KiB units (a semaphore counts permits in u32).
fn byte_permits(bytes: usize) -> u32 {
    (bytes / 1024 + 1).min(u32::MAX as usize) as u32
}

impl Producer {
    /// Starts a producer's task on the current runtime.
    pub fn start(sink: Arc<dyn Sink>, config: ProducerConfig) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::default());
        let config = Arc::new(config);
        let task = tokio::spawn(run(sink, config.clone(), metrics.clone(), receiver));
        Self {
            sender,
            records: Arc::new(Semaphore::new(config.max_buffered_records.max(1))),
            bytes: Arc::new(Semaphore::new(
                byte_permits(config.max_buffered_bytes) as usize
            )),
            config,
            metrics,
            task: Arc::new(tokio::sync::Mutex::new(Some(task))),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn check(&self, record: &Record) -> Result<(), ProducerError> {
        let chars = record.partition_key.chars().count();
        if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
            return Err(ProducerError::InvalidKey(format!(
                "a partition key has 1 to {MAX_PARTITION_KEY_CHARS} characters, not {chars}"
            )));
        }
        // A bad explicit hash key would make Kinesis refuse the whole call,
        // and with it every record batched with this one.
        if let Some(hash) = &record.explicit_hash_key {
            let decimal =
                !hash.is_empty() && hash.len() <= 39 && hash.bytes().all(|b| b.is_ascii_digit());
            if !decimal || hash.parse::<u128>().is_err() {
                return Err(ProducerError::InvalidKey(format!(
                    "explicit hash key {hash:?} is not a decimal number from 0 to 2^128 - 1"
                )));
            }
        }
        let size = record.data.len() + record.partition_key.len();
        if size > MAX_RECORD_BYTES {
            return Err(ProducerError::TooLarge(format!(
                "{size} bytes; a Kinesis record holds at most {MAX_RECORD_BYTES}"
            )));
        }
        Ok(())
    }

    fn enqueue(
        &self,
        record: Record,
        permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) -> Result<ReceiptFuture, ProducerError> {
        let (reply, receiver) = oneshot::channel();
        let pending = Pending {
            record: UserRecord {
                partition_key: record.partition_key,
                explicit_hash_key: record.explicit_hash_key,
                data: record.data,
            },
            reply,
            expires: Instant::now() + self.config.record_ttl,
            attempts: 0,
            last_error: String::new(),
            _permits: permits,
        };
        self.metrics.buffered.fetch_add(1, Ordering::Relaxed);
        self.sender
            .send(Message::Record(pending))
            .map_err(|_| ProducerError::Closed)?;
        Ok(ReceiptFuture(receiver))
    }

    /// Buffers a record, waiting for room when the buffer is full.
    pub async fn send(&self, record: Record) -> Result<ReceiptFuture, ProducerError> {
        self.check(&record)?;
        let size = byte_permits(record.data.len() + record.partition_key.len());
        let records = self
            .records
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ProducerError::Closed)?;
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(size)
            .await
            .map_err(|_| ProducerError::Closed)?;
        self.enqueue(record, (records, bytes))
    }

    /// Buffers a record, or fails at once when the buffer is full.
    pub fn try_send(&self, record: Record) -> Result<ReceiptFuture, ProducerError> {
        self.check(&record)?;
        let size = byte_permits(record.data.len() + record.partition_key.len());
        let records = self
            .records
            .clone()
            .try_acquire_owned()
            .map_err(|error| match error {
                tokio::sync::TryAcquireError::Closed => ProducerError::Closed,
                tokio::sync::TryAcquireError::NoPermits => ProducerError::BufferFull("records"),
            })?;
        let bytes =
            self.bytes
                .clone()
                .try_acquire_many_owned(size)
                .map_err(|error| match error {
                    tokio::sync::TryAcquireError::Closed => ProducerError::Closed,
                    tokio::sync::TryAcquireError::NoPermits => ProducerError::BufferFull("bytes"),
                })?;
        self.enqueue(record, (records, bytes))
    }

    /// Waits until every record sent before it has its outcome.
    pub async fn flush(&self) -> Result<(), ProducerError> {
        let (done, wait) = oneshot::channel();
        self.sender
            .send(Message::Flush(done))
            .map_err(|_| ProducerError::Closed)?;
        wait.await.map_err(|_| ProducerError::Closed)
    }

    /// Flushes, then stops the task: every record sent before has its
    /// outcome; later sends fail with `Closed`.
    pub async fn close(&self) -> Result<(), ProducerError> {
        self.records.close();
        self.bytes.close();
        let flushed = self.flush().await;
        if let Some(task) = self.task.lock().await.take() {
            task.abort();
            let _ = task.await;
        }
        flushed
    }
}

struct Task {
    sink: Arc<dyn Sink>,
    config: Arc<ProducerConfig>,
    metrics: Arc<Metrics>,
    map: ShardMap,
    map_read: Option<Instant>,
}

async fn run(
    sink: Arc<dyn Sink>,
    config: Arc<ProducerConfig>,
    metrics: Arc<Metrics>,
    mut receiver: mpsc::UnboundedReceiver<Message>,
) {
    let mut task = Task {
        sink,
        config,
        metrics,
        map: ShardMap::default(),
        map_read: None,
    };
    let mut pending: Vec<Pending> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut deadline: Option<Instant> = None;
    let (record_budget, byte_budget) = task.config.call_budget();
    let mut pending_bytes = 0usize;
    loop {
        let full = pending.len() >= record_budget || pending_bytes >= byte_budget;
        let due = deadline.is_some_and(|at| at <= Instant::now());
        if !pending.is_empty() && (full || due || !waiters.is_empty()) {
            task.drain(&mut pending).await;
            pending_bytes = pending
                .iter()
                .map(|p| p.record.data.len() + p.record.partition_key.len())
                .sum();
            deadline = None;
        }
        if pending.is_empty() {
            for waiter in waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
        let message = match deadline {
            Some(at) => tokio::select! {
                message = receiver.recv() => message,
                _ = tokio::time::sleep_until(at) => continue,
            },
            None => receiver.recv().await,
        };
        match message {
            Some(Message::Record(record)) => {
                if pending.is_empty() {
                    deadline = Some(Instant::now() + task.config.linger);
                }
                pending_bytes += record.record.data.len() + record.record.partition_key.len();
                pending.push(record);
            }
            Some(Message::Flush(done)) => {
                if pending.is_empty() {
                    let _ = done.send(());
                } else {
                    waiters.push(done);
                }
            }
            None => {
                task.drain(&mut pending).await;
                return;
            }
        }
    }
}

impl Task {
    fn resolve(&self, pending: Pending, outcome: Result<Receipt, ProducerError>) {
        self.metrics.buffered.fetch_sub(1, Ordering::Relaxed);
        if outcome.is_err() {
            self.metrics.failed_records.fetch_add(1, Ordering::Relaxed);
        }
        let _ = pending.reply.send(outcome);
    }

    async fn refresh_map(&mut self, force: bool) {
        if self.config.aggregation.is_none() {
            return;
        }
        // An empty map (never read, or the read failed) is read again
        // after a second, a good one after the refresh interval.
        let interval = if self.map.is_empty() {
            self.config.shard_map_refresh.min(Duration::from_secs(1))
        } else {
            self.config.shard_map_refresh
        };
        let stale = self.map_read.is_none_or(|read| read.elapsed() >= interval);
        if !force && !stale {
            return;
        }
        self.map_read = Some(Instant::now());
        match self.sink.open_shards().await {
            Ok(ranges) => {
                self.metrics
                    .shard_map_refreshes
                    .fetch_add(1, Ordering::Relaxed);
                self.map = ShardMap::new(ranges);
            }
            Err(error) => {
                // The last map stays; without one, records go out plain.
                tracing::warn!(error = %error, "shard map not read");
            }
        }
    }

    /// Puts every pending record (retrying failures with backoff) until
    /// each has its outcome.
    async fn drain(&mut self, pending: &mut Vec<Pending>) {
        let mut backoff = delays(self.config.min_backoff, self.config.max_backoff);
        while !pending.is_empty() {
            // Records past their time to live fail now.
            let now = Instant::now();
            let (expired, live): (Vec<Pending>, Vec<Pending>) = std::mem::take(pending)
                .into_iter()
                .partition(|p| p.expires <= now);
            *pending = live;
            for record in expired {
                let outcome = Err(ProducerError::Expired {
                    attempts: record.attempts,
                    last_error: if record.last_error.is_empty() {
                        "none".into()
                    } else {
                        record.last_error.clone()
                    },
                });
                self.resolve(record, outcome);
            }
            if pending.is_empty() {
                return;
            }
            self.refresh_map(false).await;
            // Plan only as many records as one call can carry, so that a
            // long queue is not re-planned whole for every call.
            let (record_budget, byte_budget) = self.config.call_budget();
            let mut bytes = 0usize;
            let prefix = pending
                .iter()
                .take_while(|p| {
                    let fits = bytes < byte_budget;
                    bytes += p.record.data.len() + p.record.partition_key.len();
                    fits
                })
                .count()
                .min(record_budget)
                .max(1);
            let users: Vec<&UserRecord> = pending[..prefix].iter().map(|p| &p.record).collect();
            let entries = build_entries(&users, &self.map, self.config.aggregation.as_ref());
            let calls = plan_calls(
                &entries,
                self.config.max_records_per_call,
                self.config.max_bytes_per_call,
            );
            // One call: the first; the rest go round the loop again, so
            // that retries keep their place.
            let Some(call) = calls.into_iter().next() else {
                return;
            };
            let batch = &entries[call];
            let mut done: Vec<(usize, Result<Receipt, ProducerError>)> = Vec::new();
            let mut retry: Vec<(usize, String)> = Vec::new();
            let mut mispredicted = false;
            self.metrics.calls.fetch_add(1, Ordering::Relaxed);
            match self.sink.put_records(batch).await {
                Ok(results) => {
                    for (entry, result) in batch.iter().zip(results) {
                        match result {
                            EntryResult::Put {
                                shard_id,
                                sequence_number,
                            } => {
                                if entry
                                    .predicted_shard
                                    .as_ref()
                                    .is_some_and(|p| *p != shard_id)
                                {
                                    mispredicted = true;
                                }
                                self.metrics
                                    .kinesis_records_put
                                    .fetch_add(1, Ordering::Relaxed);
                                self.metrics
                                    .bytes_put
                                    .fetch_add(entry.size() as u64, Ordering::Relaxed);
                                for (sub, &member) in entry.members.iter().enumerate() {
                                    done.push((
                                        member,
                                        Ok(Receipt {
                                            shard_id: shard_id.clone(),
                                            sequence_number: sequence_number.clone(),
                                            sub_sequence: if entry.aggregated {
                                                sub as u64
                                            } else {
                                                0
                                            },
                                            attempts: pending[member].attempts + 1,
                                        }),
                                    ));
                                }
                            }
                            EntryResult::Failed { code, message } => {
                                if result_is_throttle(&code) {
                                    self.metrics.throttles.fetch_add(1, Ordering::Relaxed);
                                }
                                let text = format!("{code}: {message}");
                                // Per-record failures are throttling or internal
                                // errors; a KMS refusal does not pass by waiting.
                                if !code.starts_with("KMS") {
                                    retry.extend(entry.members.iter().map(|&m| (m, text.clone())));
                                } else {
                                    done.extend(
                                        entry.members.iter().map(|&m| {
                                            (m, Err(ProducerError::Refused(text.clone())))
                                        }),
                                    );
                                }
                            }
                        }
                    }
                }
                Err(error) => {
                    if matches!(error, SinkError::Throttled(_)) {
                        self.metrics.throttles.fetch_add(1, Ordering::Relaxed);
                    }
                    let members = batch.iter().flat_map(|entry| entry.members.iter().copied());
                    if error.is_retryable() {
                        retry.extend(members.map(|m| (m, error.to_string())));
                    } else {
                        let text = error.to_string();
                        done.extend(
                            members.map(|m| (m, Err(ProducerError::Refused(text.clone())))),
                        );
                    }
                }
            }
            if mispredicted {
                self.refresh_map(true).await;
            }
            // Take the finished records out (highest index first keeps the
            // others' indices valid), then mark the retried ones.
            let retried = !retry.is_empty();
            for (member, text) in retry {
                let record = &mut pending[member];
                record.attempts += 1;
                record.last_error = text;
                self.metrics.retried_records.fetch_add(1, Ordering::Relaxed);
            }
            done.sort_by_key(|(member, _)| std::cmp::Reverse(*member));
            for (member, outcome) in done {
                let record = pending.remove(member);
                if let Ok(receipt) = &outcome {
                    debug_assert!(receipt.attempts >= 1);
                    self.metrics
                        .user_records_put
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.resolve(record, outcome);
            }
            if retried {
                let delay = backoff.next().unwrap_or(self.config.max_backoff);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Exponential delays with jitter between `min` and `max`, without end.
pub(crate) fn delays(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_max_times(usize::MAX)
        .with_jitter()
        .build()
}

fn result_is_throttle(code: &str) -> bool {
    code.contains("ThroughputExceeded") || code.contains("Throttl")
}
