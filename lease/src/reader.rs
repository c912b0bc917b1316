//! The read side of a shard consumer: one [`Page`] at a time, from one of
//! two readers that the consumer cannot tell apart.
//!
//! - [`PollingReader`]: `GetShardIterator` and `GetRecords`, paced by the
//!   poll interval (Kinesis allows 5 `GetRecords` a second per shard,
//!   shared by every polling application).
//! - [`FanOutReader`]: enhanced fan-out. A stream consumer named after the
//!   application (registered once per worker, shared by its readers), and
//!   one `SubscribeToShard` subscription at a time, renewed when it ends
//!   (every 5 minutes on AWS) after the last position it delivered.
//!
//! A reader retries what can be retried (with the one backoff policy) and
//! gives up only when the shard is gone. It reads the next page only when
//! asked: the consumer asks after the processor took the previous batch,
//! so a processor is never handed more than one batch at a time, and a
//! slow one only leaves events waiting in the connection's flow-control
//! window. It never checkpoints and never touches a lease.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::metrics::Metrics;
use crate::stream::{Page, StreamConsumer, StreamError, StreamSource, Subscription};
use crate::types::{SequenceNumber, ShardId, StartPosition};

/// The shard no longer exists: the reader stops for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vanished;

/// Reads one shard, one page at a time.
#[async_trait]
pub trait ShardReader: Send {
    /// Waits for the next page (which may hold no records). A page with no
    /// `next` ends the shard. Dropping the future at any point is safe.
    async fn next_page(&mut self) -> Result<Page, Vanished>;
}

/// How long a reader waits after `SubscribeToShard` was throttled: AWS
/// allows one call a second per shard and consumer, and answers
/// `ResourceInUse` for 5 s after a successful one.
const SUBSCRIBE_THROTTLED_WAIT: Duration = Duration::from_secs(5);
/// The shortest wait after `ResourceInUse` (another subscription to the
/// shard is still open, e.g. the previous owner's, or the connection this
/// reader just lost is not yet closed on the server's side).
const SUBSCRIBE_IN_USE_WAIT: Duration = Duration::from_secs(1);
/// The least time between two SubscribeToShard calls for one shard.
const SUBSCRIBE_FLOOR: Duration = Duration::from_secs(1);
/// How long a subscription may bring no event before it is taken for dead
/// and made again from the position. Kinesis sends one at least every few
/// seconds even on an idle shard; a connection dropped without a reset (a
/// NAT or load balancer forgetting it) would otherwise stall the shard
/// while the lease stays renewed. The SDK sets no read time-out on the
/// stream, and this wait covers only the next event, never the processor's
/// work on the last one. (The KCL gives up after 35 s too.)
const EVENT_TIMEOUT: Duration = Duration::from_secs(35);
/// How often a reader asks `GetRecords` whether a closed shard it reads by
/// subscription has really ended (only where events never say so).
const END_CHECK_INTERVAL: Duration = Duration::from_secs(2);

fn backoff(policy: &ExponentialBuilder) -> ExponentialBackoff {
    policy.build()
}

/// Where a reader goes on from: after the last sequence it passed on, or
/// where the lease started when it has passed on nothing yet.
fn resume_at(last: Option<&SequenceNumber>, first_start: &StartPosition) -> StartPosition {
    match last {
        Some(sequence) => StartPosition::AfterSequence(sequence.clone()),
        None => first_start.clone(),
    }
}

/// Reads by polling `GetRecords` (the behaviour before fan-out existed).
pub struct PollingReader {
    stream: Arc<dyn StreamSource>,
    shard: ShardId,
    max_records: u32,
    poll_interval: Duration,
    metrics: Arc<Metrics>,
    first_start: StartPosition,
    last_sequence: Option<SequenceNumber>,
    iterator: Option<String>,
    next_call: Instant,
    policy: ExponentialBuilder,
    backoff: ExponentialBackoff,
}

impl PollingReader {
    pub fn new(
        stream: Arc<dyn StreamSource>,
        shard: ShardId,
        first_start: StartPosition,
        max_records: u32,
        poll_interval: Duration,
        metrics: Arc<Metrics>,
        seed: u64,
    ) -> Self {
        // One backoff policy for every call (backon, exponential with
        // jitter, seeded so that simulations replay); reset after each
        // success.
        let policy = crate::retry::policy().with_jitter_seed(seed);
        Self {
            stream,
            shard,
            max_records,
            poll_interval,
            metrics,
            first_start,
            last_sequence: None,
            iterator: None,
            next_call: Instant::now(),
            backoff: backoff(&policy),
            policy,
        }
    }

    /// One page: opens an iterator at the resume position when there is
    /// none, then reads. An expired iterator is dropped so that the next
    /// call reopens it.
    async fn fetch(&mut self) -> Result<Page, StreamError> {
        let current = match &self.iterator {
            Some(current) => current.clone(),
            None => {
                let reopen_at = resume_at(self.last_sequence.as_ref(), &self.first_start);
                let fresh = self.stream.shard_iterator(&self.shard, &reopen_at).await?;
                self.iterator = Some(fresh.clone());
                fresh
            }
        };
        let result = self.stream.get_records(&current, self.max_records).await;
        if matches!(result, Err(StreamError::ExpiredIterator)) {
            self.iterator = None;
        }
        result
    }
}

#[async_trait]
impl ShardReader for PollingReader {
    async fn next_page(&mut self) -> Result<Page, Vanished> {
        loop {
            tokio::time::sleep_until(self.next_call).await;
            let page = match self.fetch().await {
                Ok(page) => page,
                Err(StreamError::ExpiredIterator) => {
                    debug!(shard_id = %self.shard, "iterator expired; re-requesting");
                    continue;
                }
                Err(error) => {
                    let delay = self.backoff.next().unwrap_or(Duration::from_secs(5));
                    if matches!(error, StreamError::Throttled(_)) {
                        Metrics::add(&self.metrics.get_records_throttles_total, 1);
                    }
                    self.next_call = Instant::now() + retry_delay(&self.shard, &error, delay)?;
                    continue;
                }
            };
            self.backoff = backoff(&self.policy);
            self.next_call = Instant::now() + self.poll_interval;
            Metrics::add(&self.metrics.get_records_total, 1);
            if let Some(last) = page.records.last() {
                self.last_sequence = Some(last.sequence.clone());
            }
            self.iterator = page.next.clone();
            return Ok(page);
        }
    }
}

/// What to do after a failed read: wait the returned time, or stop.
fn retry_delay(
    shard: &ShardId,
    error: &StreamError,
    backoff: Duration,
) -> Result<Duration, Vanished> {
    match error {
        StreamError::NotFound(_) => {
            error!(shard_id = %shard, error = %error, "shard vanished; reader stops");
            Err(Vanished)
        }
        StreamError::Throttled(_) => {
            debug!(shard_id = %shard, retry_in_ms = backoff.as_millis() as u64, "throttled");
            Ok(backoff)
        }
        StreamError::Unavailable(_) | StreamError::ExpiredIterator | StreamError::InUse(_) => {
            warn!(shard_id = %shard, error = %error, "stream call failed; retrying");
            Ok(backoff)
        }
        StreamError::Other(_) => {
            error!(shard_id = %shard, error = %error, "unexpected stream error; retrying");
            Ok(backoff)
        }
    }
}

/// What the fan-out readers of one worker share: the stream consumer
/// (registered once, by whichever reader asks first) and the shards the
/// shard sync last saw closed.
pub struct FanOut {
    name: String,
    consumer: tokio::sync::Mutex<Option<StreamConsumer>>,
    closed: RwLock<BTreeSet<ShardId>>,
}

impl FanOut {
    /// Fan-out through the stream consumer `name` (the application's).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            consumer: tokio::sync::Mutex::new(None),
            closed: RwLock::new(BTreeSet::new()),
        }
    }

    pub fn consumer_name(&self) -> &str {
        &self.name
    }

    /// The registered consumer: registers it (and waits until it is
    /// ACTIVE) on first use or after [`FanOut::forget_consumer`].
    async fn consumer(&self, stream: &dyn StreamSource) -> Result<StreamConsumer, StreamError> {
        let mut slot = self.consumer.lock().await;
        if let Some(consumer) = slot.as_ref() {
            return Ok(consumer.clone());
        }
        let consumer = stream.register_consumer(&self.name).await?;
        info!(consumer = %consumer.name, consumer_arn = %consumer.arn, "stream consumer active");
        *slot = Some(consumer.clone());
        Ok(consumer)
    }

    /// The consumer may have been deregistered: look it up again.
    async fn forget_consumer(&self) {
        *self.consumer.lock().await = None;
    }

    /// Records the shards a listing found closed (the shard sync calls this).
    pub fn set_closed(&self, closed: BTreeSet<ShardId>) {
        *self.closed.write().expect("lock") = closed;
    }

    fn is_closed(&self, shard: &ShardId) -> bool {
        self.closed.read().expect("lock").contains(shard)
    }
}

/// Reads by enhanced fan-out (`SubscribeToShard`).
///
/// Position: the last sequence number it delivered, a record's or an
/// event's continuation, whichever is later; a new subscription starts
/// after it (the checkpoint's position before anything was delivered), so
/// nothing is skipped and nothing is delivered twice. Records at or before
/// it in an event are dropped (a server that sends them again).
///
/// Shard end: an event with `ChildShards` (AWS: the last event of a
/// closed shard, without a continuation), or without a continuation on a
/// shard the shard sync saw closed. Where a closed shard's subscription
/// never says so (kinesis-mock), once the shard sync saw the shard closed
/// and an event brought nothing, one `GetRecords` after the position tells
/// whether the shard is read to its end, and with which children.
pub struct FanOutReader {
    stream: Arc<dyn StreamSource>,
    fan_out: Arc<FanOut>,
    shard: ShardId,
    metrics: Arc<Metrics>,
    first_start: StartPosition,
    position: Option<SequenceNumber>,
    subscription: Option<Box<dyn Subscription>>,
    next_subscribe: Instant,
    last_subscribed: Option<Instant>,
    not_found: u32,
    last_end_check: Option<Instant>,
    policy: ExponentialBuilder,
    backoff: ExponentialBackoff,
}

impl FanOutReader {
    pub fn new(
        stream: Arc<dyn StreamSource>,
        fan_out: Arc<FanOut>,
        shard: ShardId,
        first_start: StartPosition,
        metrics: Arc<Metrics>,
        seed: u64,
    ) -> Self {
        let policy = crate::retry::policy().with_jitter_seed(seed);
        Self {
            stream,
            fan_out,
            shard,
            metrics,
            first_start,
            position: None,
            subscription: None,
            next_subscribe: Instant::now(),
            last_subscribed: None,
            not_found: 0,
            last_end_check: None,
            backoff: backoff(&policy),
            policy,
        }
    }

    /// Where the next subscription starts.
    pub fn resume_at(&self) -> StartPosition {
        resume_at(self.position.as_ref(), &self.first_start)
    }

    /// Opens a subscription at the resume position, or schedules the next
    /// attempt after a failure.
    async fn subscribe(&mut self) -> Result<(), Vanished> {
        // AWS allows one SubscribeToShard a second per consumer and shard,
        // and throttles the next call (then the reader waits 5 s): however
        // the last subscription ended (quietly, dropped, refused), the next
        // one is at least a second after it.
        let floor = self
            .last_subscribed
            .map_or(self.next_subscribe, |at| at + SUBSCRIBE_FLOOR);
        tokio::time::sleep_until(self.next_subscribe.max(floor)).await;
        let start = self.resume_at();
        let opened = match self.fan_out.consumer(self.stream.as_ref()).await {
            Ok(consumer) => {
                self.last_subscribed = Some(Instant::now());
                self.stream.subscribe(&consumer, &self.shard, &start).await
            }
            Err(error) => {
                // Not a subscribe throttle: the stream may have its 20
                // consumers already (LimitExceeded), the role may lack the
                // grant, or the consumer is not ACTIVE yet. Nothing is read
                // until it is fixed, so say so at warn.
                warn!(shard_id = %self.shard, consumer = %self.fan_out.consumer_name(), error = %error, "could not look up or register the stream consumer; retrying");
                Err(error)
            }
        };
        match opened {
            Ok(subscription) => {
                Metrics::add(&self.metrics.subscriptions_total, 1);
                debug!(shard_id = %self.shard, start = ?start, "subscribed");
                self.subscription = Some(subscription);
                self.not_found = 0;
                Ok(())
            }
            Err(error) => self.failed(error).await,
        }
    }

    /// A subscribe or a subscription failed: when to subscribe again.
    async fn failed(&mut self, error: StreamError) -> Result<(), Vanished> {
        self.subscription = None;
        let delay = self.backoff.next().unwrap_or(Duration::from_secs(5));
        let wait = match &error {
            StreamError::NotFound(_) if self.not_found == 0 => {
                // The stream consumer may be gone (deregistered by hand):
                // register it again before deciding that the shard is.
                warn!(shard_id = %self.shard, error = %error, "not found; looking the stream consumer up again");
                self.not_found += 1;
                self.fan_out.forget_consumer().await;
                Duration::ZERO
            }
            StreamError::NotFound(_) => return retry_delay(&self.shard, &error, delay).map(drop),
            StreamError::Throttled(_) => {
                Metrics::add(&self.metrics.subscribe_throttles_total, 1);
                debug!(shard_id = %self.shard, error = %error, "subscribe throttled");
                delay.max(SUBSCRIBE_THROTTLED_WAIT)
            }
            StreamError::InUse(_) => {
                debug!(shard_id = %self.shard, error = %error, "shard subscription in use");
                delay.max(SUBSCRIBE_IN_USE_WAIT)
            }
            // A dropped connection: subscribe again from the position.
            StreamError::Unavailable(_) | StreamError::ExpiredIterator | StreamError::Other(_) => {
                retry_delay(&self.shard, &error, delay)?
            }
        };
        self.next_subscribe = Instant::now() + wait;
        Ok(())
    }

    /// Turns an event into a page and moves the position past it.
    fn page(&mut self, event: crate::stream::ShardEvent) -> Page {
        let mut records = event.records;
        if let Some(position) = &self.position {
            let before = records.len();
            records.retain(|record| record.sequence > *position);
            if records.len() < before {
                warn!(shard_id = %self.shard, dropped = before - records.len(), "event repeated delivered records; dropped");
            }
        }
        let mut position = self.position.take();
        for sequence in records
            .last()
            .map(|r| &r.sequence)
            .into_iter()
            .chain(event.continuation.as_ref())
        {
            if position.as_ref().is_none_or(|p| sequence > p) {
                position = Some(sequence.clone());
            }
        }
        self.position = position;
        // The end of a shard: `ChildShards` (AWS sends them with no
        // continuation; ministack with one), or no continuation on a shard
        // the shard sync has seen closed. No continuation on a shard not
        // known closed is not trusted as an end (it would write SHARD_END
        // and drop the shard's later records): the subscription is dropped
        // and made again from the position (at most once a second); if
        // the shard did close, the next shard sync says so and the end is
        // found as above.
        let ended = !event.children.is_empty()
            || (event.continuation.is_none() && self.fan_out.is_closed(&self.shard));
        let next = if ended {
            None
        } else if let Some(continuation) = event.continuation {
            Some(continuation.as_str().to_owned())
        } else {
            warn!(shard_id = %self.shard, "an event without a continuation on a shard not known closed; subscribing again");
            self.subscription = None;
            self.next_subscribe = Instant::now();
            Some(
                self.position
                    .as_ref()
                    .map_or_else(String::new, |p| p.as_str().to_owned()),
            )
        };
        Page {
            records,
            next,
            millis_behind: event.millis_behind,
            children: event.children,
        }
    }

    /// For a closed shard whose events bring nothing: `Some(children)`
    /// when `GetRecords` after the position finds the shard's end.
    async fn check_end(&mut self) -> Option<Vec<crate::stream::ChildShard>> {
        if !self.fan_out.is_closed(&self.shard)
            || self
                .last_end_check
                .is_some_and(|at| at.elapsed() < END_CHECK_INTERVAL)
        {
            return None;
        }
        self.last_end_check = Some(Instant::now());
        let start = self.resume_at();
        // A read from the shard's polling capacity: counted as one.
        Metrics::add(&self.metrics.get_records_total, 1);
        Metrics::add(&self.metrics.fan_out_end_checks_total, 1);
        let looked = async {
            let iterator = self.stream.shard_iterator(&self.shard, &start).await?;
            self.stream.get_records(&iterator, 1).await
        }
        .await;
        match looked {
            Ok(page) if page.records.is_empty() && page.next.is_none() => {
                info!(shard_id = %self.shard, "closed shard read to its end (found by GetRecords)");
                Some(page.children)
            }
            Ok(_) => None,
            Err(error) => {
                debug!(shard_id = %self.shard, error = %error, "end check failed");
                None
            }
        }
    }
}

#[async_trait]
impl ShardReader for FanOutReader {
    async fn next_page(&mut self) -> Result<Page, Vanished> {
        loop {
            let Some(subscription) = self.subscription.as_mut() else {
                self.subscribe().await?;
                continue;
            };
            let next = match tokio::time::timeout(EVENT_TIMEOUT, subscription.next_event()).await {
                Ok(next) => next,
                Err(_) => {
                    warn!(shard_id = %self.shard, timeout_s = EVENT_TIMEOUT.as_secs(), "no event on the subscription; subscribing again");
                    Err(StreamError::Unavailable(format!(
                        "no event for {} s",
                        EVENT_TIMEOUT.as_secs()
                    )))
                }
            };
            match next {
                Ok(Some(event)) => {
                    self.backoff = backoff(&self.policy);
                    Metrics::add(&self.metrics.subscription_events_total, 1);
                    let page = self.page(event);
                    if page.records.is_empty() && page.next.is_some() {
                        if let Some(children) = self.check_end().await {
                            self.subscription = None;
                            return Ok(Page {
                                records: Vec::new(),
                                next: None,
                                millis_behind: page.millis_behind,
                                children,
                            });
                        }
                    }
                    return Ok(page);
                }
                Ok(None) => {
                    debug!(shard_id = %self.shard, resume_at = ?self.resume_at(), "subscription ended; subscribing again");
                    self.subscription = None;
                    self.next_subscribe = Instant::now();
                }
                Err(error) => {
                    debug!(shard_id = %self.shard, error = %error, "subscription failed");
                    self.failed(error).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The fan-out reader at the event level, against a scripted stream:
    //! what each event, end and error leads to.

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;
    use std::time::SystemTime;

    use bytes::Bytes;

    use super::*;
    use crate::stream::{ChildShard, RawRecord, ShardEvent};
    use crate::types::Shard;

    type Script = Result<Vec<Result<ShardEvent, StreamError>>, StreamError>;

    /// Each `subscribe` takes the next script: an error for the call, or
    /// the events of the subscription (then its end).
    #[derive(Default)]
    struct Scripted {
        scripts: Mutex<VecDeque<Script>>,
        starts: Mutex<Vec<(StartPosition, Instant)>>,
        registrations: AtomicU32,
        /// What `GetRecords` answers (the end check).
        tail: Mutex<Page>,
        /// The first subscription goes silent after its events instead of
        /// ending.
        stall_first: std::sync::atomic::AtomicBool,
    }

    /// A subscription's events; then its end, or (`stall`) nothing ever
    /// again, as a connection dropped without a reset.
    struct Events {
        events: VecDeque<Result<ShardEvent, StreamError>>,
        stall: bool,
    }

    #[async_trait]
    impl Subscription for Events {
        async fn next_event(&mut self) -> Result<Option<ShardEvent>, StreamError> {
            match self.events.pop_front() {
                Some(event) => event.map(Some),
                None if self.stall => std::future::pending().await,
                None => Ok(None),
            }
        }
    }

    #[async_trait]
    impl StreamSource for Scripted {
        async fn list_shards(&self) -> Result<Vec<Shard>, StreamError> {
            Ok(Vec::new())
        }
        async fn shard_iterator(
            &self,
            _: &ShardId,
            _: &StartPosition,
        ) -> Result<String, StreamError> {
            Ok("iterator".into())
        }
        async fn get_records(&self, _: &str, _: u32) -> Result<Page, StreamError> {
            Ok(self.tail.lock().unwrap().clone())
        }
        async fn register_consumer(&self, name: &str) -> Result<StreamConsumer, StreamError> {
            let n = self.registrations.fetch_add(1, Ordering::SeqCst);
            Ok(StreamConsumer {
                name: name.into(),
                arn: format!("arn:consumer/{name}:{n}"),
            })
        }
        async fn subscribe(
            &self,
            _: &StreamConsumer,
            _: &ShardId,
            start: &StartPosition,
        ) -> Result<Box<dyn Subscription>, StreamError> {
            self.starts
                .lock()
                .unwrap()
                .push((start.clone(), Instant::now()));
            let script = self
                .scripts
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Ok(Vec::new()));
            let stall = self.stall_first.swap(false, Ordering::SeqCst);
            script.map(|events| {
                Box::new(Events {
                    events: events.into(),
                    stall,
                }) as Box<dyn Subscription>
            })
        }
    }

    fn seq(n: u64) -> SequenceNumber {
        SequenceNumber::parse(&n.to_string()).unwrap()
    }

    fn event(records: &[u64], continuation: Option<u64>) -> ShardEvent {
        ShardEvent {
            records: records
                .iter()
                .map(|n| RawRecord {
                    data: Bytes::from(n.to_string()),
                    partition_key: "k".into(),
                    sequence: seq(*n),
                    arrival: SystemTime::now(),
                })
                .collect(),
            continuation: continuation.map(seq),
            millis_behind: Some(0),
            children: Vec::new(),
        }
    }

    fn child(id: &str) -> ChildShard {
        ChildShard {
            id: ShardId::new(id),
            parents: vec![ShardId::new("shardId-0")],
            hash_range: ("0".into(), "1".into()),
        }
    }

    fn reader(source: Arc<Scripted>, fan_out: Arc<FanOut>) -> FanOutReader {
        FanOutReader::new(
            source,
            fan_out,
            ShardId::new("shardId-0"),
            StartPosition::TrimHorizon,
            Arc::new(Metrics::default()),
            1,
        )
    }

    fn numbers(page: &Page) -> Vec<u64> {
        page.records
            .iter()
            .map(|r| r.sequence.as_str().parse().unwrap())
            .collect()
    }

    /// When each subscribe call was made.
    fn times(source: &Scripted) -> Vec<Instant> {
        source
            .starts
            .lock()
            .unwrap()
            .iter()
            .map(|(_, at)| *at)
            .collect()
    }

    /// A scripted stream: each subscribe call takes the next script.
    fn scripted(scripts: impl IntoIterator<Item = Script>) -> Arc<Scripted> {
        let source = Arc::new(Scripted::default());
        source.scripts.lock().unwrap().extend(scripts);
        source
    }

    fn starts(source: &Scripted) -> Vec<StartPosition> {
        source
            .starts
            .lock()
            .unwrap()
            .iter()
            .map(|(start, _)| start.clone())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn child_shards_end_the_shard_and_a_new_subscription_repeats_nothing() {
        let mut last = event(&[5], None);
        last.children = vec![child("shardId-1"), child("shardId-2")];
        let source = scripted([
            Ok(vec![Ok(event(&[1, 2], Some(2))), Ok(event(&[3], Some(3)))]),
            // The server sends 3 again after the renewal: dropped.
            Ok(vec![Ok(event(&[3, 4], Some(4))), Ok(last)]),
        ]);
        let mut reader = reader(source.clone(), Arc::new(FanOut::new("app")));
        let mut pages = Vec::new();
        loop {
            let page = reader.next_page().await.unwrap();
            let ended = page.next.is_none();
            pages.push(page);
            if ended {
                break;
            }
        }
        let delivered: Vec<Vec<u64>> = pages.iter().map(numbers).collect();
        assert_eq!(delivered, vec![vec![1, 2], vec![3], vec![4], vec![5]]);
        let end = pages.last().unwrap();
        assert_eq!(end.children, vec![child("shardId-1"), child("shardId-2")]);
        assert_eq!(
            starts(&source),
            vec![
                StartPosition::TrimHorizon,
                StartPosition::AfterSequence(seq(3))
            ]
        );
        assert_eq!(source.registrations.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_end_without_child_shards_on_a_closed_shard_is_an_end_with_no_children() {
        let source = scripted([Ok(vec![Ok(event(&[1], None))])]);
        let fan_out = Arc::new(FanOut::new("app"));
        fan_out.set_closed(BTreeSet::from([ShardId::new("shardId-0")]));
        let mut reader = reader(source, fan_out);
        let page = reader.next_page().await.unwrap();
        assert_eq!(numbers(&page), vec![1]);
        assert!(page.next.is_none() && page.children.is_empty());
    }

    /// An event without a continuation on a shard not known closed does
    /// not end it (SHARD_END would drop its later records): its records are
    /// delivered and the reader subscribes again after them.
    #[tokio::test(start_paused = true)]
    async fn no_continuation_on_an_open_shard_subscribes_again_instead_of_ending() {
        let source = scripted([
            Ok(vec![Ok(event(&[1, 2], None))]),
            Ok(vec![Ok(event(&[3], Some(3)))]),
        ]);
        let mut reader = reader(source.clone(), Arc::new(FanOut::new("app")));
        let first = reader.next_page().await.unwrap();
        assert_eq!(numbers(&first), vec![1, 2]);
        assert!(first.next.is_some(), "not an end");
        let second = reader.next_page().await.unwrap();
        assert_eq!(numbers(&second), vec![3]);
        assert_eq!(
            starts(&source),
            vec![
                StartPosition::TrimHorizon,
                StartPosition::AfterSequence(seq(2))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_connection_resubscribes_after_the_last_position() {
        let source = scripted([
            // The continuation runs ahead of the last record.
            Ok(vec![
                Ok(event(&[1, 2], Some(7))),
                Err(StreamError::Unavailable("connection reset".into())),
            ]),
            Ok(vec![Ok(event(&[8], Some(8)))]),
        ]);
        let mut reader = reader(source.clone(), Arc::new(FanOut::new("app")));
        assert_eq!(numbers(&reader.next_page().await.unwrap()), vec![1, 2]);
        assert_eq!(numbers(&reader.next_page().await.unwrap()), vec![8]);
        assert_eq!(
            starts(&source),
            vec![
                StartPosition::TrimHorizon,
                StartPosition::AfterSequence(seq(7))
            ]
        );
    }

    /// A position Kinesis refuses (trimmed past the retention, or invalid)
    /// is never skipped: the reader logs an error and subscribes again from
    /// the same position after a backoff, as polling retries its read, so
    /// the shard shows as behind instead of losing votes silently.
    #[tokio::test(start_paused = true)]
    async fn a_refused_position_is_retried_from_the_same_position() {
        let source = scripted([
            Ok(vec![
                Ok(event(&[1, 2], Some(2))),
                Err(StreamError::Unavailable("connection reset".into())),
            ]),
            Err(StreamError::Other(
                "InvalidArgumentException: the position is past the retention period".into(),
            )),
            Err(StreamError::Other(
                "InvalidArgumentException: the position is past the retention period".into(),
            )),
            Ok(vec![Ok(event(&[3], Some(3)))]),
        ]);
        let mut reader = reader(source.clone(), Arc::new(FanOut::new("app")));
        assert_eq!(numbers(&reader.next_page().await.unwrap()), vec![1, 2]);
        assert_eq!(numbers(&reader.next_page().await.unwrap()), vec![3]);
        assert_eq!(
            starts(&source),
            vec![
                StartPosition::TrimHorizon,
                StartPosition::AfterSequence(seq(2)),
                StartPosition::AfterSequence(seq(2)),
                StartPosition::AfterSequence(seq(2)),
            ]
        );
        let times = times(&source);
        assert!(times[2] > times[1] && times[3] > times[2], "backed off");
    }

    #[tokio::test(start_paused = true)]
    async fn resource_in_use_and_throttling_wait_before_subscribing_again() {
        let source = scripted([
            Err(StreamError::InUse("another subscription".into())),
            // Kinesis-mock answers ResourceInUse as the stream's first event.
            Ok(vec![Err(StreamError::InUse("another subscription".into()))]),
            Err(StreamError::Throttled("LimitExceededException".into())),
            Ok(vec![Ok(event(&[1], Some(1)))]),
        ]);
        let mut reader = reader(source.clone(), Arc::new(FanOut::new("app")));
        assert_eq!(numbers(&reader.next_page().await.unwrap()), vec![1]);
        let times = times(&source);
        assert_eq!(times.len(), 4);
        assert!(times[1] - times[0] >= SUBSCRIBE_IN_USE_WAIT);
        assert!(times[2] - times[1] >= SUBSCRIBE_IN_USE_WAIT);
        assert!(times[3] - times[2] >= SUBSCRIBE_THROTTLED_WAIT);
        assert!(starts(&source)
            .iter()
            .all(|s| *s == StartPosition::TrimHorizon));
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_registers_the_consumer_again_then_the_shard_is_gone() {
        let source = scripted([
            Err(StreamError::NotFound("consumer".into())),
            Err(StreamError::NotFound("shard".into())),
        ]);
        let mut reader = reader(source.clone(), Arc::new(FanOut::new("app")));
        assert_eq!(reader.next_page().await.unwrap_err(), Vanished);
        assert_eq!(source.registrations.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscription_ending_quietly_renews_at_most_once_a_second() {
        let source = scripted([Ok(vec![]), Ok(vec![]), Ok(vec![Ok(event(&[1], Some(1)))])]);
        let mut reader = reader(source.clone(), Arc::new(FanOut::new("app")));
        assert_eq!(numbers(&reader.next_page().await.unwrap()), vec![1]);
        let times = times(&source);
        assert!(times
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_secs(1)));
    }

    /// A connection dropped right after an event resets the backoff (the
    /// event proved the subscription worked), yet the next subscription
    /// still waits for the one-a-second floor AWS enforces per shard.
    #[tokio::test(start_paused = true)]
    async fn a_connection_dropped_after_an_event_renews_at_most_once_a_second() {
        let dropped = |n: u64| {
            Ok(vec![
                Ok(event(&[n], Some(n))),
                Err(StreamError::Unavailable("connection reset".into())),
            ])
        };
        let source = scripted([dropped(1), dropped(2), dropped(3)]);
        let mut reader = reader(source.clone(), Arc::new(FanOut::new("app")));
        for n in 1..=3 {
            assert_eq!(numbers(&reader.next_page().await.unwrap()), vec![n]);
        }
        // The third drop: the fourth subscription is made too.
        let _ = tokio::time::timeout(Duration::from_secs(3), reader.next_page()).await;
        let times = times(&source);
        assert!(times.len() >= 4, "{} subscriptions", times.len());
        assert!(times
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_secs(1)));
    }

    /// A subscription that goes silent (its connection gone without a
    /// reset) is given up after `EVENT_TIMEOUT` and made again from the
    /// position: the shard goes on instead of stalling under a renewed
    /// lease.
    #[tokio::test(start_paused = true)]
    async fn a_silent_subscription_is_made_again_after_the_event_timeout() {
        let source = scripted([
            Ok(vec![Ok(event(&[1], Some(1)))]),
            Ok(vec![Ok(event(&[2], Some(2)))]),
        ]);
        source.stall_first.store(true, Ordering::SeqCst);
        let mut reader = reader(source.clone(), Arc::new(FanOut::new("app")));
        assert_eq!(numbers(&reader.next_page().await.unwrap()), vec![1]);
        let started = Instant::now();
        let next = tokio::time::timeout(Duration::from_secs(120), reader.next_page())
            .await
            .expect("a silent subscription was waited on for 120 s");
        assert_eq!(numbers(&next.unwrap()), vec![2]);
        assert!(started.elapsed() >= EVENT_TIMEOUT);
        assert_eq!(
            starts(&source),
            vec![
                StartPosition::TrimHorizon,
                StartPosition::AfterSequence(seq(1))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_shard_whose_events_never_end_it_ends_by_get_records() {
        let source = scripted([Ok(vec![
            Ok(event(&[1], Some(1))),
            Ok(event(&[], Some(1))),
            Ok(event(&[], Some(1))),
        ])]);
        *source.tail.lock().unwrap() = Page {
            children: vec![child("shardId-1")],
            ..Page::default()
        };
        let fan_out = Arc::new(FanOut::new("app"));
        let mut reader = reader(source.clone(), fan_out.clone());
        assert_eq!(numbers(&reader.next_page().await.unwrap()), vec![1]);
        // Open as far as the last listing knows: an empty event is just that.
        let page = reader.next_page().await.unwrap();
        assert!(page.records.is_empty() && page.next.is_some());
        fan_out.set_closed([ShardId::new("shardId-0")].into());
        let page = reader.next_page().await.unwrap();
        assert!(page.next.is_none());
        assert_eq!(page.children, vec![child("shardId-1")]);
    }
}
