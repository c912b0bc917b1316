//! The lease worker: one coordinator loop (heartbeat, refresh, reconcile,
//! plan), one consumer task per leased shard, and a shard-sync task.
//!
//! Shutdown order: stop taking leases, stop the consumers (each finishes
//! its batch and checkpoints), release the leases, leave the fleet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::config::{ConfigError, ConsumerMode, WorkerConfig};
use crate::consumer::{self, ConsumerContext, ConsumerControl, ConsumerExit, StopReason};
use crate::decide::{plan, Action, Liveness, PlanInput, PlanLimits};
use crate::graph::{lease_state, leases_to_create, parents_to_clean_up, LeaseState};
use crate::metrics::Metrics;
use crate::processor::ProcessorFactory;
use crate::reader::FanOut;
use crate::retry;
use crate::store::{announce, Created, Expect, LeaseStore, LeaseUpdate, StoreError, WorkerBeat};
use crate::stream::StreamSource;
use crate::types::{Fence, Lease, LeaseMap, ShardId};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("could not prepare the lease table: {0}")]
    Table(StoreError),
}

struct Running {
    fence: Fence,
    control: ConsumerControl,
    handle: JoinHandle<ConsumerExit>,
}

/// One lease worker.
pub struct Worker {
    config: WorkerConfig,
    store: Arc<dyn LeaseStore>,
    stream: Arc<dyn StreamSource>,
    factory: Arc<dyn ProcessorFactory>,
    metrics: Arc<Metrics>,
    liveness: Liveness,
    leases: LeaseMap,
    last_epoch: Option<u64>,
    last_full_refresh: Option<Instant>,
    last_plan: Option<Instant>,
    last_heartbeat_ok: Option<Instant>,
    consumers: BTreeMap<ShardId, Running>,
    /// Handoffs I asked for: the fence I asked with, and when.
    requested: BTreeMap<ShardId, (Fence, Instant)>,
    beat: u64,
    rng: StdRng,
    shard_ended: Arc<Notify>,
    dead_seen: BTreeSet<String>,
    /// Keys of lease-table items that did not read as leases (last scan).
    unreadable: BTreeSet<ShardId>,
    /// Shared by the consumers in fan-out mode.
    fan_out: Option<Arc<FanOut>>,
}

impl Worker {
    pub fn new(
        config: WorkerConfig,
        store: Arc<dyn LeaseStore>,
        stream: Arc<dyn StreamSource>,
        factory: Arc<dyn ProcessorFactory>,
    ) -> Result<Self, WorkerError> {
        config.validate()?;
        let seed = config.seed.unwrap_or_else(rand::random);
        let mut rng = StdRng::seed_from_u64(seed);
        let fan_out = match &config.consumer_mode {
            ConsumerMode::Polling => None,
            ConsumerMode::FanOut { consumer_name } => Some(Arc::new(FanOut::new(consumer_name))),
        };
        Ok(Self {
            fan_out,
            liveness: Liveness::new(config.lease_duration),
            beat: rng.gen(),
            rng,
            config,
            store,
            stream,
            factory,
            metrics: Arc::default(),
            leases: LeaseMap::new(),
            last_epoch: None,
            last_full_refresh: None,
            last_plan: None,
            last_heartbeat_ok: None,
            consumers: BTreeMap::new(),
            requested: BTreeMap::new(),
            shard_ended: Arc::new(Notify::new()),
            dead_seen: BTreeSet::new(),
            unreadable: BTreeSet::new(),
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn worker_id(&self) -> &str {
        &self.config.worker_id
    }

    /// Runs until `shutdown` fires, then stops gracefully.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let span = tracing::info_span!("worker", worker_id = %self.config.worker_id);
        async move {
            self.prepare(&shutdown).await?;
            let sync_stop = CancellationToken::new();
            let sync = tokio::spawn(sync_loop(
                self.config.clone(),
                self.store.clone(),
                self.stream.clone(),
                self.shard_ended.clone(),
                self.fan_out.clone(),
                sync_stop.clone(),
            ));
            info!("worker started");
            loop {
                self.poll_once(false).await;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(self.config.renew_interval) => {}
                }
            }
            info!("worker stopping");
            self.shutdown().await;
            sync_stop.cancel();
            let _ = sync.await;
            info!("worker stopped");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Creates the table if needed (retrying transient errors).
    pub async fn prepare(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        match retry::with_backoff(
            || self.store.ensure_table(),
            StoreError::is_retryable,
            shutdown,
        )
        .await
        {
            Some(Ok(())) | None => Ok(()),
            Some(Err(error)) => Err(WorkerError::Table(error)),
        }
    }

    /// One coordinator step: reap consumers, heartbeat, refresh if anything
    /// changed, reconcile, and (unless `stopping`) plan and act.
    pub async fn poll_once(&mut self, stopping: bool) {
        self.reap().await;
        let started = Instant::now();
        self.beat = self.beat.wrapping_add(1);
        let beat = WorkerBeat {
            beat: self.beat,
            leases: self.consumers.len() as u32,
        };
        let view = match self.store.heartbeat(&self.config.worker_id, beat).await {
            Ok(view) => view,
            Err(error) => {
                Metrics::add(&self.metrics.heartbeat_failures_total, 1);
                warn!(error = %error, "heartbeat failed");
                return;
            }
        };
        let now = Instant::now();
        Metrics::add(&self.metrics.heartbeats_total, 1);
        Metrics::set(
            &self.metrics.renew_latency_ms,
            now.duration_since(started).as_millis() as i64,
        );
        let suspect = self
            .last_heartbeat_ok
            .is_some_and(|last| now.duration_since(last) >= self.config.lease_duration);
        if suspect {
            warn!("heartbeats were late by more than the lease duration; re-reading leases");
        }
        self.last_heartbeat_ok = Some(now);
        self.liveness.observe(&view, now);

        let dead: Vec<(String, u64)> = self.liveness.dead(now);
        let newly_dead = dead
            .iter()
            .any(|(worker, _)| !self.dead_seen.contains(worker));
        self.dead_seen = dead.iter().map(|(worker, _)| worker.clone()).collect();
        let periodic = self
            .last_full_refresh
            .is_none_or(|last| now.duration_since(last) >= self.config.full_refresh_interval);
        if suspect || newly_dead || periodic || self.last_epoch != Some(view.epoch) {
            match self.store.scan_leases().await {
                Ok(table) => {
                    let skipped = table.skipped.len() as i64;
                    if skipped
                        != self
                            .metrics
                            .lease_table_skipped_items
                            .load(Ordering::Relaxed)
                    {
                        for item in &table.skipped {
                            warn!(key = %item.key, reason = %item.reason, "skipping an item of the lease table that is not a lease");
                        }
                    }
                    Metrics::set(&self.metrics.lease_table_skipped_items, skipped);
                    self.unreadable = table
                        .skipped
                        .iter()
                        .map(|item| ShardId::new(item.key.as_str()))
                        .collect();
                    self.leases = table
                        .leases
                        .into_iter()
                        .map(|l| (l.key.clone(), l))
                        .collect();
                    self.last_epoch = Some(view.epoch);
                    self.last_full_refresh = Some(now);
                }
                Err(error) => warn!(error = %error, "could not read the lease table"),
            }
        }
        self.forget_dead(&dead).await;
        self.reconcile(now).await;
        if !stopping
            && self
                .last_plan
                .is_none_or(|last| now.duration_since(last) >= self.config.take_interval)
        {
            self.last_plan = Some(now);
            self.act(now).await;
        }
        Metrics::set(&self.metrics.leases_held, self.consumers.len() as i64);
        let behind = self
            .consumers
            .values()
            .map(|running| running.control.millis_behind.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        Metrics::set(&self.metrics.millis_behind_latest, behind);
        self.metrics
            .lease_table_requests_total
            .store(self.store.requests(), Ordering::Relaxed);
    }

    /// Removes dead workers that own nothing from the fleet item.
    async fn forget_dead(&mut self, dead: &[(String, u64)]) {
        for (worker, beat) in dead {
            let owns = self
                .leases
                .values()
                .any(|l| l.owner.as_deref() == Some(worker.as_str()));
            if !owns {
                if let Err(error) = self.store.leave(worker, Some(*beat)).await {
                    debug!(error = %error, dead_worker = %worker, "could not remove dead worker");
                }
            }
        }
    }

    async fn reap(&mut self) {
        let finished: Vec<ShardId> = self
            .consumers
            .iter()
            .filter(|(_, running)| running.handle.is_finished())
            .map(|(key, _)| key.clone())
            .collect();
        for key in finished {
            let Some(running) = self.consumers.remove(&key) else {
                continue;
            };
            let exit = running.handle.await.unwrap_or_else(|join| {
                error!(shard_id = %key, error = %join, "consumer task failed");
                ConsumerExit::Lost
            });
            self.after_exit(&key, running.fence, exit).await;
        }
    }

    async fn after_exit(&mut self, key: &ShardId, fence: Fence, exit: ConsumerExit) {
        match exit {
            ConsumerExit::Ended => {
                self.leases.remove(key);
                self.last_epoch = None;
            }
            ConsumerExit::Lost => {
                info!(shard_id = %key, "lease lost");
                Metrics::add(&self.metrics.leases_lost_total, 1);
                self.last_epoch = None;
            }
            ConsumerExit::Vanished => {
                self.release(&fence).await;
            }
            ConsumerExit::Stopped(StopReason::Shutdown) => self.release(&fence).await,
            ConsumerExit::Stopped(StopReason::Handoff { to }) => {
                let expect = Expect {
                    fence: fence.clone(),
                    pending_owner: Some(Some(to.clone())),
                    checkpoint: None,
                };
                match self
                    .store
                    .update_lease(&expect, &LeaseUpdate::take(&to))
                    .await
                {
                    Ok(Some(lease)) => {
                        info!(shard_id = %key, to = %to, "lease handed over");
                        Metrics::add(&self.metrics.leases_handed_off_total, 1);
                        self.leases.insert(key.clone(), lease);
                        announce(self.store.as_ref()).await;
                    }
                    Ok(None) => self.last_epoch = None,
                    Err(error) => {
                        // The transfer may have happened (lost response):
                        // re-read, and tell the requester to look.
                        warn!(shard_id = %key, error = %error, "handoff failed; releasing");
                        self.release(&fence).await;
                        self.last_epoch = None;
                        announce(self.store.as_ref()).await;
                    }
                }
            }
        }
    }

    async fn release(&mut self, fence: &Fence) {
        match self
            .store
            .update_lease(&Expect::from(fence.clone()), &LeaseUpdate::release())
            .await
        {
            Ok(Some(lease)) => {
                info!(shard_id = %lease.key, "lease released");
                self.leases.insert(lease.key.clone(), lease);
            }
            Ok(None) => self.last_epoch = None,
            Err(error) => {
                warn!(shard_id = %fence.key, error = %error, "could not release lease");
                self.last_epoch = None;
            }
        }
    }

    /// Makes the running consumers agree with the lease table.
    async fn reconcile(&mut self, now: Instant) {
        let me = self.config.worker_id.clone();
        // Consumers whose lease moved: stop at once.
        for (key, running) in &self.consumers {
            let current = self.leases.get(key);
            let still_mine = current.is_some_and(|lease| {
                lease.owner.as_deref() == Some(me.as_str())
                    && lease.counter == running.fence.counter
            });
            if !still_mine && !running.control.lost.is_cancelled() && current.is_some() {
                info!(shard_id = %key, "lease table shows another owner; stopping consumer");
                running.control.lost.cancel();
            }
        }
        // Handoffs asked of me.
        let mut clear_pending = Vec::new();
        for (key, running) in &self.consumers {
            let Some(lease) = self.leases.get(key) else {
                continue;
            };
            if let Some(thief) = &lease.pending_owner {
                if lease.counter != running.fence.counter || thief == &me {
                    continue;
                }
                if self.liveness.is_live(thief, now) {
                    if running.control.stop_reason().is_none() {
                        info!(shard_id = %key, to = %thief, "handing lease over after the batch");
                        running
                            .control
                            .request_stop(StopReason::Handoff { to: thief.clone() });
                    }
                } else if running.control.stop_reason().is_none() {
                    clear_pending.push((lease.fence(), thief.clone()));
                }
            }
        }
        for (fence, thief) in clear_pending {
            let expect = Expect {
                fence,
                pending_owner: Some(Some(thief)),
                checkpoint: None,
            };
            let change = LeaseUpdate {
                pending_owner: Some(None),
                ..LeaseUpdate::checkpoint(self.leases[&expect.fence.key].checkpoint.clone())
            };
            let change = LeaseUpdate {
                checkpoint: None,
                ..change
            };
            if let Ok(Some(lease)) = self.store.update_lease(&expect, &change).await {
                self.leases.insert(lease.key.clone(), lease);
            }
        }
        // Leases the table says are mine but nothing runs (handoffs to me, restarts).
        let to_start: Vec<Lease> = self
            .leases
            .values()
            .filter(|lease| lease.owner.as_deref() == Some(me.as_str()))
            .filter(|lease| !self.consumers.contains_key(&lease.key))
            .filter(|lease| lease_state(lease, &self.leases, &self.unreadable) == LeaseState::Ready)
            .cloned()
            .collect();
        for lease in to_start {
            if self.requested.remove(&lease.key).is_some() {
                Metrics::add(&self.metrics.leases_stolen_total, 1);
            }
            self.start(lease);
        }
        // My handoff requests: done, abandoned, or overdue.
        let mut overdue = Vec::new();
        self.requested.retain(|key, (fence, since)| {
            let Some(lease) = self.leases.get(key) else {
                return false;
            };
            if lease.pending_owner.as_deref() != Some(me.as_str()) || lease.counter != fence.counter
            {
                return false;
            }
            if now.duration_since(*since) >= self.config.handoff_timeout {
                overdue.push(fence.clone());
                return false;
            }
            true
        });
        for fence in overdue {
            let expect = Expect {
                fence: fence.clone(),
                pending_owner: Some(Some(me.clone())),
                checkpoint: None,
            };
            match self
                .store
                .update_lease(&expect, &LeaseUpdate::take(&me))
                .await
            {
                Ok(Some(lease)) => {
                    warn!(shard_id = %fence.key, "handoff timed out; lease taken");
                    Metrics::add(&self.metrics.leases_stolen_total, 1);
                    self.start(lease);
                }
                Ok(None) => self.last_epoch = None,
                Err(error) => {
                    warn!(shard_id = %fence.key, error = %error, "forced take failed");
                    self.last_epoch = None;
                }
            }
        }
    }

    async fn act(&mut self, now: Instant) {
        let live = self.liveness.live(now);
        let input = PlanInput {
            me: &self.config.worker_id,
            leases: &self.leases,
            unreadable: &self.unreadable,
            live: &live,
            mine: self.consumers.len(),
            pending_handoffs: self.requested.len(),
            limits: PlanLimits {
                max_leases: self.config.max_leases_per_worker,
                max_steals: self.config.max_steals_per_cycle,
            },
        };
        let actions = plan(&input, &mut self.rng);
        let me = self.config.worker_id.clone();
        let mut requested_any = false;
        for action in actions {
            match action {
                Action::Take(fence) => {
                    match self
                        .store
                        .update_lease(&Expect::from(fence.clone()), &LeaseUpdate::take(&me))
                        .await
                    {
                        Ok(Some(lease)) => {
                            info!(shard_id = %lease.key, previous_owner = ?fence.owner, "lease taken");
                            Metrics::add(&self.metrics.leases_taken_total, 1);
                            self.start(lease);
                        }
                        Ok(None) => self.last_epoch = None,
                        Err(error) => {
                            warn!(shard_id = %fence.key, error = %error, "take failed");
                            self.last_epoch = None;
                        }
                    }
                }
                Action::RequestHandoff(fence) => {
                    let expect = Expect {
                        fence: fence.clone(),
                        pending_owner: Some(None),
                        checkpoint: None,
                    };
                    match self
                        .store
                        .update_lease(&expect, &LeaseUpdate::request_handoff(&me))
                        .await
                    {
                        Ok(Some(lease)) => {
                            info!(shard_id = %lease.key, owner = ?fence.owner, "handoff requested");
                            self.requested
                                .insert(lease.key.clone(), (lease.fence(), now));
                            self.leases.insert(lease.key.clone(), lease);
                            requested_any = true;
                        }
                        Ok(None) => self.last_epoch = None,
                        Err(error) => {
                            warn!(shard_id = %fence.key, error = %error, "handoff request failed");
                            self.last_epoch = None;
                        }
                    }
                }
            }
        }
        if requested_any {
            announce(self.store.as_ref()).await;
        }
    }

    fn start(&mut self, lease: Lease) {
        let key = lease.key.clone();
        self.leases.insert(key.clone(), lease.clone());
        if self.consumers.contains_key(&key) {
            return;
        }
        let control = ConsumerControl::default();
        let context = ConsumerContext {
            processor: self.factory.create(&key),
            store: self.store.clone(),
            stream: self.stream.clone(),
            control: control.clone(),
            metrics: self.metrics.clone(),
            poll_interval: self.config.poll_interval,
            max_records: self.config.max_records,
            fan_out: self.fan_out.clone(),
            shard_ended: self.shard_ended.clone(),
            seed: self.rng.gen(),
            lease: lease.clone(),
        };
        let span =
            tracing::info_span!("shard", shard_id = %key, lease_owner = %self.config.worker_id);
        let handle = tokio::spawn(consumer::run(context).instrument(span));
        self.consumers.insert(
            key,
            Running {
                fence: lease.fence(),
                control,
                handle,
            },
        );
    }

    /// Graceful stop: consumers finish their batch and checkpoint, leases
    /// are released, the worker leaves the fleet.
    pub async fn shutdown(&mut self) {
        for running in self.consumers.values() {
            running.control.request_stop(StopReason::Shutdown);
        }
        let deadline = Instant::now() + self.config.shutdown_timeout;
        let keys: Vec<ShardId> = self.consumers.keys().cloned().collect();
        for key in keys {
            let Some(mut running) = self.consumers.remove(&key) else {
                continue;
            };
            let exit = match tokio::time::timeout_at(deadline, &mut running.handle).await {
                Ok(Ok(exit)) => exit,
                Ok(Err(join)) => {
                    error!(shard_id = %key, error = %join, "consumer task failed");
                    ConsumerExit::Stopped(StopReason::Shutdown)
                }
                Err(_) => {
                    warn!(shard_id = %key, "consumer did not stop in time; releasing anyway");
                    running.control.lost.cancel();
                    running.handle.abort();
                    ConsumerExit::Stopped(StopReason::Shutdown)
                }
            };
            // A consumer asked to hand over before the stop carries its
            // target in its exit: the handoff completes, the rest release.
            self.after_exit(&key, running.fence, exit).await;
        }
        if let Err(error) = self.store.leave(&self.config.worker_id, None).await {
            warn!(error = %error, "could not leave the fleet");
        }
        Metrics::set(&self.metrics.leases_held, 0);
    }
}

const EPOCH_MOVED: &str = "lease table changed during sync";

/// Creates leases for new shards and deletes finished parents.
async fn sync_once(
    config: &WorkerConfig,
    store: &dyn LeaseStore,
    stream: &dyn StreamSource,
    fan_out: Option<&FanOut>,
) -> Result<usize, String> {
    // The epoch is read before the scan: creations are fenced on it, so a
    // sync that was paused after its scan creates nothing stale.
    let mut epoch = store.fleet().await.map_err(|e| e.to_string())?.epoch;
    let shards = stream.list_shards().await.map_err(|e| e.to_string())?;
    if let Some(fan_out) = fan_out {
        fan_out.set_closed(
            shards
                .iter()
                .filter(|shard| shard.ending_sequence.is_some())
                .map(|shard| shard.id.clone())
                .collect(),
        );
    }
    let table = store.scan_leases().await.map_err(|e| e.to_string())?;
    // An item that does not read as a lease still holds its key: creating
    // one there would only be refused, a conditional write each sync.
    let existing = table
        .leases
        .iter()
        .map(|l| l.key.clone())
        .chain(
            table
                .skipped
                .iter()
                .map(|item| ShardId::new(item.key.as_str())),
        )
        .collect();
    let leases = table.leases;
    let mut created = 0;
    for lease in leases_to_create(&shards, &existing, config.initial_position) {
        match store
            .create_lease(&lease, epoch)
            .await
            .map_err(|e| e.to_string())?
        {
            Created::Yes => {
                debug!(shard_id = %lease.key, "lease created");
                epoch += 1;
                created += 1;
            }
            Created::Exists => {}
            Created::EpochMoved => return Err(EPOCH_MOVED.into()),
        }
    }
    let all: LeaseMap = leases.into_iter().map(|l| (l.key.clone(), l)).collect();
    let mut deleted = 0;
    for parent in parents_to_clean_up(&all) {
        if store
            .delete_lease(&parent)
            .await
            .map_err(|e| e.to_string())?
        {
            debug!(shard_id = %parent, "finished parent lease deleted");
            deleted += 1;
        }
    }
    if deleted > 0 {
        announce(store).await;
    }
    Ok(created + deleted)
}

async fn sync_loop(
    config: WorkerConfig,
    store: Arc<dyn LeaseStore>,
    stream: Arc<dyn StreamSource>,
    shard_ended: Arc<Notify>,
    fan_out: Option<Arc<FanOut>>,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(config.seed.unwrap_or_else(rand::random) ^ 0x5eed);
    loop {
        for attempt in 0..5 {
            match sync_once(&config, store.as_ref(), stream.as_ref(), fan_out.as_deref()).await {
                Ok(_) => break,
                Err(error) if error == EPOCH_MOVED && attempt < 4 => {
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(20..200))).await;
                }
                Err(error) => {
                    warn!(error = %error, "shard sync failed");
                    break;
                }
            }
        }
        let jitter = rng.gen_range(0.9..1.1);
        let wait = config.shard_sync_interval.mul_f64(jitter);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = shard_ended.notified() => {
                // Let the child leases of a finished shard settle first.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
