//! Deterministic simulation of the lease protocol: N workers (the real
//! `Worker` code) over the in-memory lease table and stream, on tokio's
//! paused virtual time, with random crashes, pauses longer than the lease
//! duration, graceful stops, restarts, splits and merges.
//!
//! Throttling, 5xx and lost responses (applied, but reported as failed)
//! are injected into 3% of lease-table calls, and throttling, 5xx and
//! expired iterators into 3% of reads, until the quiet phase.
//!
//! Checked all along: checkpoints of a shard never come from a stale owner
//! (the fencing counter never goes back, one worker per counter, positions
//! never regress), and no child is processed before its parents ended.
//! Checked at rest: every shard is owned by a live worker, every record was
//! delivered, and the fleet is balanced within one lease.
//!
//! The same schedules run in fan-out mode (`SubscribeToShard` on the
//! in-memory stream, each subscription ending after a few events), with
//! `ResourceInUse`, throttled subscribes and dropped connections injected
//! too.
//!
//! `SIM_TRACE=1` logs what the workers do (with `SIM_SEED`).
//! `SIM_SCHEDULES` sets the number of seeded schedules (default 1000, and
//! 300 in fan-out mode); `SIM_SEED` replays one. A failure prints its seed.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tally_lease::LeaseMap;

use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_lease::graph::{lease_state, LeaseState};
use tally_lease::processor::{advances, ProcessorError};
use tally_lease::store::{Created, Expect, FleetView, LeaseUpdate, StoreError, WorkerBeat};
use tally_lease::stream::{Page, ShardEvent, StreamConsumer, StreamError, Subscription};
use tally_lease::{
    Batch, Checkpoint, Checkpointer, ConsumerMode, Lease, LeaseStore, MemoryStore, MemoryStream,
    ProcessorFactory, RecordProcessor, Shard, ShardId, ShardStart, StartPosition, StreamSource,
    Worker, WorkerConfig,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A process's fate: paused (every call waits) or dead (every call hangs forever).
struct Gate {
    paused: watch::Sender<bool>,
    dead: AtomicBool,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            paused: watch::channel(false).0,
            dead: AtomicBool::new(false),
        })
    }
    async fn pass(&self) {
        if self.dead.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let mut paused = self.paused.subscribe();
        while *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                break;
            }
        }
        if self.dead.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

/// Injected faults, seeded: throttling and 5xx before a call, and lost
/// responses (the call happened, the caller sees an error).
struct Faults {
    on: AtomicBool,
    /// Loses the response of the next lease update that takes a lease.
    lose_next_take: AtomicBool,
    rng: Mutex<StdRng>,
}

enum Fault {
    None,
    Before(StoreError),
    LostResponse,
}

impl Faults {
    fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            on: AtomicBool::new(false),
            lose_next_take: AtomicBool::new(false),
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0xfa17)),
        })
    }
    fn roll(&self) -> Fault {
        if !self.on.load(Ordering::SeqCst) {
            return Fault::None;
        }
        let mut rng = self.rng.lock().unwrap();
        match rng.gen_range(0..100) {
            0 => Fault::Before(StoreError::Throttled("injected".into())),
            1 => Fault::Before(StoreError::Unavailable("injected 503".into())),
            2 => Fault::LostResponse,
            _ => Fault::None,
        }
    }
    fn roll_stream(&self) -> Option<StreamError> {
        if !self.on.load(Ordering::SeqCst) {
            return None;
        }
        let mut rng = self.rng.lock().unwrap();
        match rng.gen_range(0..100) {
            0 => Some(StreamError::Throttled("injected".into())),
            1 => Some(StreamError::Unavailable("injected 500".into())),
            2 => Some(StreamError::ExpiredIterator),
            _ => None,
        }
    }
    /// A `SubscribeToShard` call: in use, throttled or failed.
    fn roll_subscribe(&self) -> Option<StreamError> {
        if !self.on.load(Ordering::SeqCst) {
            return None;
        }
        let mut rng = self.rng.lock().unwrap();
        match rng.gen_range(0..100) {
            0 => Some(StreamError::InUse("injected".into())),
            1 => Some(StreamError::Throttled("injected".into())),
            2 => Some(StreamError::Unavailable("injected 500".into())),
            _ => None,
        }
    }
    /// An open subscription's connection drops.
    fn roll_dropped(&self) -> Option<StreamError> {
        if !self.on.load(Ordering::SeqCst) {
            return None;
        }
        let mut rng = self.rng.lock().unwrap();
        (rng.gen_range(0..100) < 3).then(|| StreamError::Unavailable("injected reset".into()))
    }
}

#[derive(Default)]
struct Log {
    /// (shard, worker, counter, checkpoint) of every committed checkpoint, in order.
    checkpoints: Vec<(ShardId, String, u64, Checkpoint)>,
    delivered: HashSet<(ShardId, String)>,
    violations: Vec<String>,
}

struct SimStore {
    inner: MemoryStore,
    gate: Arc<Gate>,
    worker: String,
    log: Arc<Mutex<Log>>,
    faults: Arc<Faults>,
}

impl SimStore {
    async fn faulty<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.gate.pass().await;
        match self.faults.roll() {
            Fault::None => call.await,
            Fault::Before(error) => Err(error),
            Fault::LostResponse => {
                let _ = call.await;
                Err(StoreError::Unavailable("response lost (injected)".into()))
            }
        }
    }

    fn log_checkpoint(&self, expect: &Expect, checkpoint: &Checkpoint) {
        let mut log = self.log.lock().unwrap();
        let key = expect.fence.key.clone();
        let previous = log
            .checkpoints
            .iter()
            .rev()
            .find(|(shard, ..)| shard == &key)
            .cloned();
        if let Some((_, worker, counter, last)) = previous {
            if expect.fence.counter < counter {
                log.violations.push(format!(
                    "{key}: stale counter {} after {counter}",
                    expect.fence.counter
                ));
            }
            if expect.fence.counter == counter && worker != self.worker {
                log.violations.push(format!(
                    "{key}: counter {counter} used by {worker} and {}",
                    self.worker
                ));
            }
            if !advances(&last, checkpoint) {
                log.violations
                    .push(format!("{key}: checkpoint {checkpoint} after {last}"));
            }
        }
        log.checkpoints.push((
            key,
            self.worker.clone(),
            expect.fence.counter,
            checkpoint.clone(),
        ));
    }
}

#[async_trait]
impl LeaseStore for SimStore {
    async fn ensure_table(&self) -> Result<(), StoreError> {
        self.faulty(self.inner.ensure_table()).await
    }
    async fn heartbeat(&self, worker: &str, beat: WorkerBeat) -> Result<FleetView, StoreError> {
        self.faulty(self.inner.heartbeat(worker, beat)).await
    }
    async fn fleet(&self) -> Result<FleetView, StoreError> {
        self.faulty(self.inner.fleet()).await
    }
    async fn leave(&self, worker: &str, beat: Option<u64>) -> Result<(), StoreError> {
        self.faulty(self.inner.leave(worker, beat)).await
    }
    async fn bump_epoch(&self) -> Result<(), StoreError> {
        self.faulty(self.inner.bump_epoch()).await
    }
    async fn scan_leases(&self) -> Result<tally_lease::store::LeaseTable, StoreError> {
        self.faulty(self.inner.scan_leases()).await
    }
    async fn leases_owned_by(&self, owner: &str) -> Result<Vec<Lease>, StoreError> {
        self.faulty(self.inner.leases_owned_by(owner)).await
    }
    async fn get_lease(&self, key: &ShardId) -> Result<Option<Lease>, StoreError> {
        self.faulty(self.inner.get_lease(key)).await
    }
    async fn create_lease(&self, lease: &Lease, epoch: u64) -> Result<Created, StoreError> {
        self.faulty(self.inner.create_lease(lease, epoch)).await
    }
    async fn update_lease(
        &self,
        expect: &Expect,
        update: &LeaseUpdate,
    ) -> Result<Option<Lease>, StoreError> {
        let taking = matches!(update.owner, tally_lease::store::OwnerChange::To(_));
        if taking && self.faults.lose_next_take.swap(false, Ordering::SeqCst) {
            self.gate.pass().await;
            let _ = self.inner.update_lease(expect, update).await;
            return Err(StoreError::Unavailable("response lost (injected)".into()));
        }
        self.faulty(async {
            let result = self.inner.update_lease(expect, update).await;
            if let (Ok(Some(_)), Some(checkpoint)) = (&result, &update.checkpoint) {
                self.log_checkpoint(expect, checkpoint);
            }
            result
        })
        .await
    }
    async fn delete_lease(&self, key: &ShardId) -> Result<bool, StoreError> {
        self.faulty(self.inner.delete_lease(key)).await
    }
}

struct SimStream {
    inner: MemoryStream,
    gate: Arc<Gate>,
    faults: Arc<Faults>,
}

#[async_trait]
impl StreamSource for SimStream {
    async fn list_shards(&self) -> Result<Vec<Shard>, StreamError> {
        self.gate.pass().await;
        self.inner.list_shards().await
    }
    async fn shard_iterator(
        &self,
        shard: &ShardId,
        start: &StartPosition,
    ) -> Result<String, StreamError> {
        self.gate.pass().await;
        self.inner.shard_iterator(shard, start).await
    }
    async fn get_records(&self, iterator: &str, limit: u32) -> Result<Page, StreamError> {
        self.gate.pass().await;
        if let Some(error) = self.faults.roll_stream() {
            return Err(error);
        }
        self.inner.get_records(iterator, limit).await
    }
    async fn register_consumer(&self, name: &str) -> Result<StreamConsumer, StreamError> {
        self.gate.pass().await;
        self.inner.register_consumer(name).await
    }
    async fn subscribe(
        &self,
        consumer: &StreamConsumer,
        shard: &ShardId,
        start: &StartPosition,
    ) -> Result<Box<dyn Subscription>, StreamError> {
        self.gate.pass().await;
        if let Some(error) = self.faults.roll_subscribe() {
            return Err(error);
        }
        let inner = self.inner.subscribe(consumer, shard, start).await?;
        Ok(Box::new(SimSubscription {
            inner,
            gate: self.gate.clone(),
            faults: self.faults.clone(),
        }))
    }
}

/// A subscription of a simulated process: it pauses and dies with it, and
/// its connection may drop.
struct SimSubscription {
    inner: Box<dyn Subscription>,
    gate: Arc<Gate>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Subscription for SimSubscription {
    async fn next_event(&mut self) -> Result<Option<ShardEvent>, StreamError> {
        self.gate.pass().await;
        if let Some(error) = self.faults.roll_dropped() {
            return Err(error);
        }
        let event = self.inner.next_event().await;
        self.gate.pass().await;
        event
    }
}

struct SimProcessor {
    shard: ShardId,
    table: MemoryStore,
    log: Arc<Mutex<Log>>,
    checked_parents: bool,
}

#[async_trait]
impl RecordProcessor for SimProcessor {
    async fn initialize(&mut self, _start: &ShardStart) -> Result<(), ProcessorError> {
        Ok(())
    }
    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        if !self.checked_parents {
            self.checked_parents = true;
            let all: LeaseMap = self
                .table
                .list_leases()
                .await?
                .into_iter()
                .map(|l| (l.key.clone(), l))
                .collect();
            if let Some(me) = all.get(&self.shard) {
                for parent in &me.parents {
                    if all.get(parent).is_some_and(|p| !p.is_finished()) {
                        self.log.lock().unwrap().violations.push(format!(
                            "{} processed before parent {parent} ended",
                            self.shard
                        ));
                    }
                }
            }
        }
        {
            let mut log = self.log.lock().unwrap();
            for record in &batch.records {
                log.delivered
                    .insert((batch.shard.clone(), record.position.sequence.to_string()));
            }
        }
        if let Some(last) = batch.records.last() {
            checkpointer.checkpoint(last.position.clone()).await?;
        }
        Ok(())
    }
    async fn shard_ended(&mut self, _checkpointer: &Checkpointer) -> Result<(), ProcessorError> {
        Ok(())
    }
    async fn lease_lost(&mut self) {}
    async fn shutdown_requested(
        &mut self,
        _checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        Ok(())
    }
}

struct Factory {
    table: MemoryStore,
    log: Arc<Mutex<Log>>,
}

impl ProcessorFactory for Factory {
    fn create(&self, shard: &ShardId) -> Box<dyn RecordProcessor> {
        Box::new(SimProcessor {
            shard: shard.clone(),
            table: self.table.clone(),
            log: self.log.clone(),
            checked_parents: false,
        })
    }
}

struct SimWorker {
    id: String,
    metrics: Arc<tally_lease::metrics::Metrics>,
    gate: Arc<Gate>,
    stop: CancellationToken,
    state: State,
}

#[derive(PartialEq, Eq, Debug, Clone, Copy)]
enum State {
    Running,
    Paused,
    Crashed,
    Stopped,
}

struct World {
    table: MemoryStore,
    stream: MemoryStream,
    log: Arc<Mutex<Log>>,
    faults: Arc<Faults>,
    seed: u64,
    /// Workers read by enhanced fan-out instead of polling.
    fan_out: bool,
}

impl World {
    /// A fresh world of `shards` open shards, its lease table created.
    async fn new(shards: usize, seed: u64, fan_out: bool) -> World {
        let world = World {
            table: MemoryStore::new(),
            stream: MemoryStream::with_shards(shards),
            log: Arc::default(),
            faults: Faults::new(seed),
            seed,
            fan_out,
        };
        world.table.ensure_table().await.unwrap();
        world
    }

    fn config(&self, id: &str, incarnation: u64) -> WorkerConfig {
        let mut config = WorkerConfig::new(id);
        if self.fan_out {
            config.consumer_mode = ConsumerMode::FanOut {
                consumer_name: "sim".into(),
            };
        }
        config.shard_sync_interval = Duration::from_secs(5);
        config.full_refresh_interval = Duration::from_secs(60);
        config.handoff_timeout = Duration::from_secs(4);
        config.seed = Some(self.seed ^ (incarnation << 32) ^ id.len() as u64);
        config
    }

    fn spawn(&self, id: &str, incarnation: u64) -> SimWorker {
        let gate = Gate::new();
        let store = Arc::new(SimStore {
            inner: self.table.clone(),
            gate: gate.clone(),
            worker: id.to_owned(),
            log: self.log.clone(),
            faults: self.faults.clone(),
        });
        let stream = Arc::new(SimStream {
            inner: self.stream.clone(),
            gate: gate.clone(),
            faults: self.faults.clone(),
        });
        let factory = Arc::new(Factory {
            table: self.table.clone(),
            log: self.log.clone(),
        });
        let worker = Worker::new(self.config(id, incarnation), store, stream, factory)
            .expect("valid config");
        let stop = CancellationToken::new();
        let metrics = worker.metrics();
        tokio::spawn(worker.run(stop.clone()));
        SimWorker {
            id: id.to_owned(),
            metrics,
            gate,
            stop,
            state: State::Running,
        }
    }
}

/// Runs `test` on a one-thread runtime whose clock is virtual (it jumps
/// ahead whenever every task waits).
fn in_virtual_time<T>(test: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(test)
}

fn run_schedule(seed: u64, fan_out: bool) -> Result<(), String> {
    in_virtual_time(schedule(seed, fan_out))
}

async fn schedule(seed: u64, fan_out: bool) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let shard_count = rng.gen_range(1..=8);
    let worker_count = rng.gen_range(1..=5);
    let world = World::new(shard_count, seed, fan_out).await;
    world.faults.on.store(true, Ordering::SeqCst);
    let mut incarnation = 0;
    let mut workers: Vec<SimWorker> = (0..worker_count)
        .map(|i| world.spawn(&format!("w{i}"), 0))
        .collect();
    let chaos_steps = 300; // 100 ms each: 30 s of faults
    let mut pauses: Vec<(usize, u32)> = Vec::new();
    let mut produced = 0u64;
    for step in 0..chaos_steps {
        for _ in 0..rng.gen_range(0..3) {
            world.stream.put(
                &format!("voter-{}", rng.gen_range(0..1000)),
                Bytes::from_static(b"v"),
            );
            produced += 1;
        }
        pauses.retain(|(index, until)| {
            if step >= *until as usize {
                let worker = &mut workers[*index];
                if worker.state == State::Paused {
                    worker.gate.paused.send_replace(false);
                    worker.state = State::Running;
                }
                false
            } else {
                true
            }
        });
        if rng.gen_bool(0.04) {
            let index = rng.gen_range(0..workers.len());
            let worker = &mut workers[index];
            match (rng.gen_range(0..4), worker.state) {
                (0, State::Running) => {
                    worker.gate.dead.store(true, Ordering::SeqCst);
                    worker.gate.paused.send_replace(false);
                    worker.state = State::Crashed;
                }
                (1, State::Running) => {
                    // Longer than the lease duration (3 s).
                    worker.gate.paused.send_replace(true);
                    worker.state = State::Paused;
                    pauses.push((index, step as u32 + rng.gen_range(35..80)));
                }
                (2, State::Running) => {
                    worker.stop.cancel();
                    worker.state = State::Stopped;
                }
                (_, State::Crashed | State::Stopped) => {
                    incarnation += 1;
                    let id = worker.id.clone();
                    *worker = world.spawn(&id, incarnation);
                }
                _ => {}
            }
        }
        if rng.gen_bool(0.01) {
            let open = world.stream.open_shards();
            if rng.gen_bool(0.5) || open.len() < 2 {
                let _ = world.stream.split(&open[rng.gen_range(0..open.len())]);
            } else {
                let at = rng.gen_range(0..open.len() - 1);
                let _ = world.stream.merge(&open[at], &open[at + 1]);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(violation) = world.log.lock().unwrap().violations.first() {
            return Err(format!("step {step}: {violation}"));
        }
    }
    // Quiet: everyone back, no faults, and time to settle.
    world.faults.on.store(false, Ordering::SeqCst);
    for worker in workers.iter_mut() {
        match worker.state {
            State::Paused => {
                worker.gate.paused.send_replace(false);
                worker.state = State::Running;
            }
            State::Crashed | State::Stopped => {
                incarnation += 1;
                let id = worker.id.clone();
                *worker = world.spawn(&id, incarnation);
            }
            State::Running => {}
        }
    }
    tokio::time::sleep(Duration::from_secs(40)).await;
    let leases_debug = format!("{:?}", world.table.list_leases().await);
    {
        let log = world.log.lock().unwrap();
        if let Some(violation) = log.violations.first() {
            return Err(format!("after quiet: {violation}"));
        }
        let records = world.stream.all_records();
        let missing: Vec<_> = records
            .iter()
            .filter(|(shard, record)| {
                !log.delivered
                    .contains(&(shard.clone(), record.sequence.to_string()))
            })
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{} of {} records never delivered (first: {:?}); leases {:?}",
                missing.len(),
                produced,
                missing[0].0,
                leases_debug
            ));
        }
    }
    let leases: LeaseMap = world
        .table
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.key.clone(), l))
        .collect();
    let live: HashSet<&str> = workers.iter().map(|w| w.id.as_str()).collect();
    let mut counts: BTreeMap<&str, usize> = live.iter().map(|id| (*id, 0)).collect();
    for lease in leases.values() {
        if lease_state(lease, &leases, &Default::default()) != LeaseState::Ready {
            continue;
        }
        match lease.owner.as_deref() {
            Some(owner) if live.contains(owner) => *counts.get_mut(owner).unwrap() += 1,
            other => return Err(format!("lease {} owned by {other:?} at rest", lease.key)),
        }
    }
    for shard in world.stream.open_shards() {
        if !leases.contains_key(&shard) {
            return Err(format!("open shard {shard} has no lease"));
        }
    }
    let (min, max) = (
        counts.values().min().copied().unwrap_or(0),
        counts.values().max().copied().unwrap_or(0),
    );
    if max - min > 1 {
        return Err(format!("unbalanced at rest: {counts:?}"));
    }
    // Each mode read the way it was asked to.
    let read = |metric: fn(&tally_lease::metrics::Metrics) -> &std::sync::atomic::AtomicU64| {
        workers
            .iter()
            .map(|w| metric(&w.metrics).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let subscriptions = read(|m| &m.subscriptions_total);
    let polls = read(|m| &m.get_records_total);
    // In fan-out mode the only GetRecords are the end checks of closed
    // shards whose subscriptions never end.
    let end_checks = read(|m| &m.fan_out_end_checks_total);
    if world.fan_out != (subscriptions > 0) || (world.fan_out && polls > end_checks) {
        return Err(format!(
            "fan-out {}: {subscriptions} subscriptions and {polls} GetRecords pages",
            world.fan_out
        ));
    }
    for worker in &workers {
        worker.stop.cancel();
    }
    Ok(())
}

/// A take whose response is lost must not leave the shard idle until the
/// next full refresh (60 s): the worker re-reads the table at once.
#[test]
fn a_lost_take_response_is_recovered_at_the_next_cycle() {
    in_virtual_time(async {
        let world = World::new(1, 7, false).await;
        world.faults.lose_next_take.store(true, Ordering::SeqCst);
        let worker = world.spawn("only", 0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        world.stream.put("voter", Bytes::from_static(b"v"));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !world.faults.lose_next_take.load(Ordering::SeqCst),
            "the take happened"
        );
        assert_eq!(
            world.log.lock().unwrap().delivered.len(),
            1,
            "the record was delivered within 6 s"
        );
        worker.stop.cancel();
    });
}

/// The lag gauge is the largest over the worker's shards, not the last
/// page read.
#[test]
fn millis_behind_is_the_largest_over_the_shards() {
    in_virtual_time(async {
        let world = World::new(2, 5, false).await;
        // Reads of 1 record a call: the shard with a backlog stays behind
        // (the in-memory stream reports 1000 ms behind until a shard's end).
        let mut config = world.config("only", 0);
        config.max_records = 1;
        let store = Arc::new(SimStore {
            inner: world.table.clone(),
            gate: Gate::new(),
            worker: "only".into(),
            log: world.log.clone(),
            faults: world.faults.clone(),
        });
        let stream = Arc::new(SimStream {
            inner: world.stream.clone(),
            gate: Gate::new(),
            faults: world.faults.clone(),
        });
        let factory = Arc::new(Factory {
            table: world.table.clone(),
            log: world.log.clone(),
        });
        let worker = Worker::new(config, store, stream, factory).unwrap();
        let metrics = worker.metrics();
        let stop = CancellationToken::new();
        tokio::spawn(worker.run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(3)).await;
        // A backlog on the lower shard only (keys hashing to the lower half);
        // the other shard keeps being read at its tip (0 ms behind).
        let mut put = 0;
        let mut index = 0;
        while put < 2000 {
            index += 1;
            let key = format!("voter-{index}");
            if tally_lease::stream::memory::hash_key(&key) < u128::MAX / 2 {
                world.stream.put(&key, Bytes::from_static(b"v"));
                put += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        for _ in 0..10 {
            assert_eq!(
                metrics.millis_behind_latest.load(Ordering::SeqCst),
                1000,
                "the shard with a backlog shows"
            );
            tokio::time::sleep(Duration::from_millis(130)).await;
        }
        stop.cancel();
    });
}

/// A parent lease the table holds but cannot read (a hand edit, a
/// half-written migration) keeps its children waiting: a parent missing
/// from the table has ended (finished parents are deleted), an unreadable
/// one may not have. Once it reads again, the parent goes first.
#[test]
fn children_of_an_unreadable_parent_lease_wait_for_it() {
    children_wait_for_an_unreadable_parent(false);
}

/// The same when the child's lease is already the worker's (a restart, a
/// handoff): it is not started either.
#[test]
fn an_owned_child_of_an_unreadable_parent_lease_waits_for_it() {
    children_wait_for_an_unreadable_parent(true);
}

fn children_wait_for_an_unreadable_parent(child_owned: bool) {
    in_virtual_time(async {
        let world = World::new(1, 11, false).await;
        let parent = world.stream.open_shards().remove(0);
        world.stream.put("voter", Bytes::from_static(b"before"));
        world.stream.split(&parent).unwrap();
        let (child, _) = world.stream.put("voter", Bytes::from_static(b"after"));
        assert_ne!(child, parent);
        world
            .table
            .put_unreadable(&parent, "checkpoint is not a string");
        if child_owned {
            let mut lease = Lease::new(child.clone(), Checkpoint::TrimHorizon);
            lease.parents = vec![parent.clone()];
            lease.owner = Some("only".into());
            lease.counter = 1;
            world.table.put_raw(lease);
        }
        let worker = world.spawn("only", 0);
        tokio::time::sleep(Duration::from_secs(20)).await;
        {
            let log = world.log.lock().unwrap();
            assert!(
                log.delivered.is_empty(),
                "nothing read while the parent cannot be: {:?}",
                log.delivered
            );
        }
        assert_eq!(
            worker
                .metrics
                .lease_table_skipped_items
                .load(Ordering::SeqCst),
            1
        );
        // Repaired: the parent is read to its end, then its children.
        world
            .table
            .put_raw(Lease::new(parent.clone(), Checkpoint::TrimHorizon));
        world.table.bump_epoch().await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
        let log = world.log.lock().unwrap();
        let shards: HashSet<&ShardId> = log.delivered.iter().map(|(shard, _)| shard).collect();
        assert_eq!(
            shards,
            HashSet::from([&parent, &child]),
            "{:?}",
            log.delivered
        );
        assert!(log.violations.is_empty(), "{:?}", log.violations);
        worker.stop.cancel();
    });
}

/// A lease lost at a checkpoint is counted once (the reader's exit), not
/// also by the checkpointer.
#[test]
fn a_lease_lost_at_a_checkpoint_is_counted_once() {
    in_virtual_time(async {
        let world = World::new(1, 3, false).await;
        let worker = world.spawn("only", 0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let lease = world.table.list_leases().await.unwrap().remove(0);
        assert_eq!(lease.owner.as_deref(), Some("only"));
        // Another owner takes it behind the worker's back (no epoch change),
        // so the worker learns it only when its checkpoint is refused.
        world
            .table
            .update_lease(&lease.fence().into(), &LeaseUpdate::take("other"))
            .await
            .unwrap()
            .unwrap();
        world.stream.put("voter", Bytes::from_static(b"v"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let lost = worker.metrics.leases_lost_total.load(Ordering::SeqCst);
        assert_eq!(lost, 1, "lost once, counted once");
        worker.stop.cancel();
    });
}

#[test]
fn seeded_schedules_keep_every_invariant() {
    seeded_schedules(false, 1000);
}

#[test]
fn seeded_fan_out_schedules_keep_every_invariant() {
    seeded_schedules(true, 300);
}

fn seeded_schedules(fan_out: bool, default_schedules: u64) {
    if std::env::var("SIM_TRACE").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
    }
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed: u64 = seed.parse().expect("SIM_SEED is a number");
        run_schedule(seed, fan_out).unwrap_or_else(|failure| panic!("seed {seed}: {failure}"));
        return;
    }
    let schedules: u64 = std::env::var("SIM_SCHEDULES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_schedules);
    let started = std::time::Instant::now();
    for seed in 0..schedules {
        if let Err(failure) = run_schedule(seed, fan_out) {
            panic!("schedule failed (fan-out: {fan_out}); replay with SIM_SEED={seed}: {failure}");
        }
    }
    eprintln!(
        "simulation (fan-out: {fan_out}): {schedules} schedules passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
