//! `scale [--shards S] [--workers W] [--seed N]`: the lease protocol at the
//! design point, on virtual time.
//!
//! W workers (the real `Worker` with its default settings) share an
//! in-memory lease table and an in-memory stream of S shards, on tokio's
//! paused clock: time moves only when every task waits, so minutes of
//! protocol run in seconds and the figures do not depend on the machine.
//! Each worker's calls pass a gate: a lost worker's calls hang forever (a
//! crashed task that never heartbeats again and never lets go). A trickle
//! of records keeps every shard being read.
//!
//! Events, one after another, each timed until the fleet converges (every
//! readable shard owned by a live worker, and no live worker holding more
//! than one lease above another):
//! 1. a cold start of W/2 workers;
//! 2. a scale-out to W;
//! 3. the loss of one worker (killed: its leases must expire);
//! 4. a graceful stop of one worker (its leases are released);
//! 5. a reshard: a tenth of the shards split at once.
//!
//! Also: lease-table requests per second for the whole fleet at rest.
//!
//! `SCALE_TRACE=1` prints the leases per live worker at every step;
//! `SCALE_LOG=tally_lease=info` the workers' own logs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_lease::graph::{lease_state, LeaseState};
use tally_lease::processor::ProcessorError;
use tally_lease::store::{Created, Expect, FleetView, LeaseUpdate, StoreError, WorkerBeat};
use tally_lease::stream::{Page, StreamError};
use tally_lease::{
    Batch, Checkpointer, Lease, LeaseMap, LeaseStore, MemoryStore, MemoryStream, ProcessorFactory,
    RecordProcessor, Shard, ShardId, ShardStart, StartPosition, StreamSource, Worker, WorkerConfig,
};
use tokio_util::sync::CancellationToken;

/// A worker's calls hang forever once it is dead.
#[derive(Default)]
struct Gate {
    dead: AtomicBool,
}

impl Gate {
    async fn pass(&self) {
        if self.dead.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

struct GatedStore {
    inner: MemoryStore,
    gate: Arc<Gate>,
    /// Lease-table requests of the whole fleet.
    requests: Arc<AtomicU64>,
}

impl GatedStore {
    async fn pass(&self) {
        self.gate.pass().await;
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl LeaseStore for GatedStore {
    async fn ensure_table(&self) -> Result<(), StoreError> {
        self.pass().await;
        self.inner.ensure_table().await
    }
    async fn heartbeat(&self, worker: &str, beat: WorkerBeat) -> Result<FleetView, StoreError> {
        self.pass().await;
        self.inner.heartbeat(worker, beat).await
    }
    async fn fleet(&self) -> Result<FleetView, StoreError> {
        self.pass().await;
        self.inner.fleet().await
    }
    async fn leave(&self, worker: &str, beat: Option<u64>) -> Result<(), StoreError> {
        self.pass().await;
        self.inner.leave(worker, beat).await
    }
    async fn bump_epoch(&self) -> Result<(), StoreError> {
        self.pass().await;
        self.inner.bump_epoch().await
    }
    async fn scan_leases(&self) -> Result<tally_lease::store::LeaseTable, StoreError> {
        self.pass().await;
        self.inner.scan_leases().await
    }
    async fn leases_owned_by(&self, owner: &str) -> Result<Vec<Lease>, StoreError> {
        self.pass().await;
        self.inner.leases_owned_by(owner).await
    }
    async fn get_lease(&self, key: &ShardId) -> Result<Option<Lease>, StoreError> {
        self.pass().await;
        self.inner.get_lease(key).await
    }
    async fn create_lease(&self, lease: &Lease, epoch: u64) -> Result<Created, StoreError> {
        self.pass().await;
        self.inner.create_lease(lease, epoch).await
    }
    async fn update_lease(
        &self,
        expect: &Expect,
        update: &LeaseUpdate,
    ) -> Result<Option<Lease>, StoreError> {
        self.pass().await;
        self.inner.update_lease(expect, update).await
    }
    async fn delete_lease(&self, key: &ShardId) -> Result<bool, StoreError> {
        self.pass().await;
        self.inner.delete_lease(key).await
    }
}

struct GatedStream {
    inner: MemoryStream,
    gate: Arc<Gate>,
}

#[async_trait]
impl StreamSource for GatedStream {
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
        self.inner.get_records(iterator, limit).await
    }
}

/// Checkpoints each batch's last record, and nothing else.
struct Checkpointing;

#[async_trait]
impl RecordProcessor for Checkpointing {
    async fn initialize(&mut self, _start: &ShardStart) -> Result<(), ProcessorError> {
        Ok(())
    }
    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
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

impl ProcessorFactory for Checkpointing {
    fn create(&self, _shard: &ShardId) -> Box<dyn RecordProcessor> {
        Box::new(Checkpointing)
    }
}

struct SimWorker {
    id: String,
    gate: Arc<Gate>,
    stop: CancellationToken,
}

struct World {
    table: MemoryStore,
    stream: MemoryStream,
    seed: u64,
    spawned: u64,
    requests: Arc<AtomicU64>,
}

impl World {
    fn spawn(&mut self, id: &str) -> SimWorker {
        self.spawned += 1;
        let gate = Arc::new(Gate::default());
        let mut config = WorkerConfig::new(id);
        config.seed = Some(self.seed ^ (self.spawned << 20));
        let worker = Worker::new(
            config,
            Arc::new(GatedStore {
                inner: self.table.clone(),
                gate: gate.clone(),
                requests: self.requests.clone(),
            }),
            Arc::new(GatedStream {
                inner: self.stream.clone(),
                gate: gate.clone(),
            }),
            Arc::new(Checkpointing),
        )
        .expect("default settings are valid");
        let stop = CancellationToken::new();
        tokio::spawn(worker.run(stop.clone()));
        SimWorker {
            id: id.to_owned(),
            gate,
            stop,
        }
    }
}

/// Where the fleet stands: readable shards not owned by a live worker,
/// and the least and most leases of a live worker.
async fn standing(world: &World, live: &BTreeSet<String>) -> (usize, usize, usize) {
    let leases: LeaseMap = world
        .table
        .list_leases()
        .await
        .expect("the memory table answers")
        .into_iter()
        .map(|l| (l.key.clone(), l))
        .collect();
    let mut held: BTreeMap<&str, usize> = live.iter().map(|id| (id.as_str(), 0)).collect();
    let mut unowned = 0;
    for lease in leases.values() {
        if lease_state(lease, &leases, &Default::default()) != LeaseState::Ready {
            continue;
        }
        match lease.owner.as_deref().and_then(|o| held.get_mut(o)) {
            Some(count) => *count += 1,
            None => unowned += 1,
        }
    }
    // Open shards without a lease yet are not owned either.
    let known: BTreeSet<&ShardId> = leases.keys().collect();
    unowned += world
        .stream
        .open_shards()
        .iter()
        .filter(|shard| !known.contains(shard))
        .count();
    if std::env::var_os("SCALE_TRACE").is_some() {
        let mut all: Vec<usize> = held.values().copied().collect();
        all.sort();
        let pending = leases
            .values()
            .filter(|l| l.pending_owner.is_some())
            .count();
        eprintln!("scale: held {all:?}, {pending} handoffs pending");
    }
    (
        unowned,
        held.values().min().copied().unwrap_or(0),
        held.values().max().copied().unwrap_or(0),
    )
}

/// One event's figures, in virtual seconds.
pub struct Converged {
    pub event: String,
    /// Until every readable shard was owned by a live worker.
    pub owned_s: f64,
    /// Until, also, no worker held more than one lease above another.
    pub balanced_s: f64,
    pub spread: (usize, usize),
}

const STEP: Duration = Duration::from_millis(100);
const LIMIT: Duration = Duration::from_secs(600);

/// Waits (virtual time) for convergence, with a trickle of records.
async fn converge(
    world: &World,
    live: &BTreeSet<String>,
    event: &str,
    random: &mut StdRng,
) -> Converged {
    let started = tokio::time::Instant::now();
    let mut owned_s = None;
    loop {
        for _ in 0..20 {
            world.stream.put(
                &format!("voter-{}", random.gen::<u32>()),
                Bytes::from_static(b"v"),
            );
        }
        let (unowned, min, max) = standing(world, live).await;
        let elapsed = started.elapsed().as_secs_f64();
        if unowned == 0 && owned_s.is_none() {
            owned_s = Some(elapsed);
        }
        if unowned == 0 && max - min <= 1 {
            return Converged {
                event: event.to_owned(),
                owned_s: owned_s.unwrap_or(elapsed),
                balanced_s: elapsed,
                spread: (min, max),
            };
        }
        if started.elapsed() > LIMIT {
            return Converged {
                event: format!("{event} (NOT converged: {unowned} unowned, {min}..{max})"),
                owned_s: owned_s.unwrap_or(f64::INFINITY),
                balanced_s: f64::INFINITY,
                spread: (min, max),
            };
        }
        tokio::time::sleep(STEP).await;
    }
}

/// The whole model; prints a table and returns the figures.
pub fn scale(shards: usize, workers: usize, seed: u64) -> (Vec<Converged>, f64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    if let Ok(filter) = std::env::var("SCALE_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let wall = std::time::Instant::now();
    let (events, requests_per_s) = runtime.block_on(async move {
        let mut random = StdRng::seed_from_u64(seed);
        let mut world = World {
            table: MemoryStore::new(),
            stream: MemoryStream::with_shards(shards),
            seed,
            spawned: 0,
            requests: Arc::default(),
        };
        world.table.ensure_table().await.expect("table");
        let mut fleet: Vec<SimWorker> = Vec::new();
        let mut live = BTreeSet::new();
        let mut events = Vec::new();
        let first = (workers / 2).max(1);
        for n in 0..first {
            let worker = world.spawn(&format!("w{n}"));
            live.insert(worker.id.clone());
            fleet.push(worker);
        }
        eprintln!("scale: cold start of {first} workers on {shards} shards");
        events.push(
            converge(
                &world,
                &live,
                &format!("cold start, {first} workers"),
                &mut random,
            )
            .await,
        );
        for n in first..workers {
            let worker = world.spawn(&format!("w{n}"));
            live.insert(worker.id.clone());
            fleet.push(worker);
        }
        eprintln!("scale: scale-out to {workers} workers");
        events.push(
            converge(
                &world,
                &live,
                &format!("scale-out {first} -> {workers} workers"),
                &mut random,
            )
            .await,
        );
        // At rest: the fleet's lease-table requests per second.
        let before = world.requests.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let requests_per_s = (world.requests.load(Ordering::Relaxed) - before) as f64 / 60.0;

        let lost = fleet.remove(random.gen_range(0..fleet.len()));
        lost.gate.dead.store(true, Ordering::SeqCst);
        live.remove(&lost.id);
        eprintln!("scale: {} lost", lost.id);
        events.push(
            converge(
                &world,
                &live,
                &format!("worker lost (killed), {} left", live.len()),
                &mut random,
            )
            .await,
        );
        let stopped = fleet.remove(random.gen_range(0..fleet.len()));
        stopped.stop.cancel();
        live.remove(&stopped.id);
        eprintln!("scale: {} stopped", stopped.id);
        events.push(
            converge(
                &world,
                &live,
                &format!("worker stopped (SIGTERM), {} left", live.len()),
                &mut random,
            )
            .await,
        );
        let open = world.stream.open_shards();
        let splits = (open.len() / 10).max(1);
        for shard in open.iter().take(splits) {
            world.stream.split(shard).expect("split");
        }
        eprintln!("scale: {splits} shards split");
        events.push(
            converge(
                &world,
                &live,
                &format!(
                    "reshard: {splits} splits ({} open shards)",
                    open.len() + splits
                ),
                &mut random,
            )
            .await,
        );
        for worker in &fleet {
            worker.stop.cancel();
        }
        (events, requests_per_s)
    });
    println!(
        "settings: {shards} shards, up to {workers} workers, worker defaults (lease 3 s, renew 600 ms, take 600 ms, shard sync 60 s); virtual time, seed {seed}"
    );
    println!(
        "{:<46} {:>12} {:>12} {:>14}",
        "event", "owned (s)", "balanced (s)", "leases/worker"
    );
    for event in &events {
        println!(
            "{:<46} {:>12.1} {:>12.1} {:>14}",
            event.event,
            event.owned_s,
            event.balanced_s,
            format!("{}-{}", event.spread.0, event.spread.1)
        );
    }
    println!(
        "fleet lease-table requests per second at rest ({workers} workers): {requests_per_s:.1}"
    );
    println!(
        "(times in virtual seconds from the event, 100 ms resolution; {:.1} s of wall time)",
        wall.elapsed().as_secs_f64()
    );
    (events, requests_per_s)
}
