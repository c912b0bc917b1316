//! The lease table boundary. [`LeaseStore`] speaks our types only; the
//! DynamoDB adapter ([`dynamo`]) and the in-memory one ([`memory`]) both pass
//! the conformance suite in [`crate::conformance`].
//!
//! Besides one item per shard lease, the table holds one *fleet item*
//! (`leaseKey` = [`FLEET_KEY`]): a map from worker id to that worker's
//! heartbeat counter and lease count, and the table's `leaseEpoch`, which
//! every change of the lease set bumps. One heartbeat write, returning the
//! whole fleet item, is therefore a worker's whole idle cost, whatever the
//! number of leases it holds.

pub mod dynamo;
pub mod memory;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use tracing::warn;

use crate::types::{Checkpoint, Fence, Lease, ShardId};

/// The `leaseKey` of the fleet item. Shard ids never start with `__`.
pub const FLEET_KEY: &str = "__tally_fleet__";

/// Errors at the lease table boundary.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("lease table throttled the request: {0}")]
    Throttled(String),
    #[error("lease table unavailable (the request may or may not have happened): {0}")]
    Unavailable(String),
    #[error("lease table {0} does not exist (run the worker once, or create it)")]
    TableMissing(String),
    #[error("lease item {key} is malformed: {reason}")]
    Malformed { key: String, reason: String },
    #[error("lease table request failed: {0}")]
    Other(String),
}

impl StoreError {
    /// Throttling, 5xx and timeouts are worth another try.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Throttled(_) | StoreError::Unavailable(_))
    }
}

/// The outcome of a fenced lease creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// Created; the epoch is now one more than expected.
    Yes,
    /// A lease with that key exists; nothing changed.
    Exists,
    /// The epoch moved since it was read; nothing changed. Re-read first.
    EpochMoved,
}

/// One worker's entry in the fleet item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerBeat {
    /// Changes on every heartbeat; starts at a random value on each boot.
    pub beat: u64,
    /// How many ready leases the worker held at that heartbeat.
    pub leases: u32,
}

/// The fleet item as read back from a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetView {
    pub workers: BTreeMap<String, WorkerBeat>,
    pub epoch: u64,
}

/// How an update changes the owner. Any change of owner increments
/// `leaseCounter` (the fencing token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerChange {
    Keep,
    To(String),
    Clear,
}

/// A conditional change of one lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseUpdate {
    pub owner: OwnerChange,
    /// A new checkpoint; resets `ownerSwitchesSinceCheckpoint`.
    pub checkpoint: Option<Checkpoint>,
    /// `Some(Some(id))` sets `pendingOwner`, `Some(None)` removes it.
    pub pending_owner: Option<Option<String>>,
    /// Sets `childShardIds` (when a shard ends).
    pub children: Option<Vec<ShardId>>,
}

impl LeaseUpdate {
    pub fn checkpoint(checkpoint: Checkpoint) -> Self {
        Self {
            owner: OwnerChange::Keep,
            checkpoint: Some(checkpoint),
            pending_owner: None,
            children: None,
        }
    }
    pub fn take(new_owner: &str) -> Self {
        Self {
            owner: OwnerChange::To(new_owner.to_owned()),
            checkpoint: None,
            pending_owner: Some(None),
            children: None,
        }
    }
    pub fn release() -> Self {
        Self {
            owner: OwnerChange::Clear,
            checkpoint: None,
            pending_owner: Some(None),
            children: None,
        }
    }
    pub fn request_handoff(thief: &str) -> Self {
        Self {
            owner: OwnerChange::Keep,
            checkpoint: None,
            pending_owner: Some(Some(thief.to_owned())),
            children: None,
        }
    }
}

/// What a conditional update expects: the fence (owner and counter, owner
/// `None` meaning "unowned"), and optionally the `pendingOwner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub fence: Fence,
    /// `None`: don't care; `Some(None)`: must be absent; `Some(Some(id))`: must be `id`.
    pub pending_owner: Option<Option<String>>,
    /// `None`: don't care; `Some(c)`: the checkpoint must currently be `c`
    /// (an application's commit names the checkpoint it continues from, so
    /// a retried commit that was already applied can never apply twice).
    pub checkpoint: Option<Checkpoint>,
}

impl From<Fence> for Expect {
    fn from(fence: Fence) -> Self {
        Self {
            fence,
            pending_owner: None,
            checkpoint: None,
        }
    }
}

/// Applies `update` to `lease` exactly as every store must: the one
/// definition of the counter and owner-switch rules.
pub fn apply_update(lease: &mut Lease, update: &LeaseUpdate) {
    match &update.owner {
        OwnerChange::Keep => {}
        OwnerChange::To(owner) => {
            lease.owner = Some(owner.clone());
            lease.counter += 1;
            lease.owner_switches += 1;
        }
        OwnerChange::Clear => {
            lease.owner = None;
            lease.counter += 1;
        }
    }
    if let Some(checkpoint) = &update.checkpoint {
        lease.checkpoint = checkpoint.clone();
        lease.owner_switches = 0;
    }
    if let Some(pending) = &update.pending_owner {
        lease.pending_owner = pending.clone();
    }
    if let Some(children) = &update.children {
        lease.children = children.clone();
    }
}

/// True when `lease` meets `expect`.
pub fn meets(lease: &Lease, expect: &Expect) -> bool {
    lease.owner == expect.fence.owner
        && lease.counter == expect.fence.counter
        && expect
            .pending_owner
            .as_ref()
            .is_none_or(|pending| &lease.pending_owner == pending)
        && expect
            .checkpoint
            .as_ref()
            .is_none_or(|checkpoint| &lease.checkpoint == checkpoint)
}

/// An item of the lease table that is not a lease (an operator's broken
/// script, a half-written migration): skipped by every reader, reported.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SkippedItem {
    /// Its `leaseKey`, or `?` when it has none.
    pub key: String,
    pub reason: String,
}

/// A full read of the lease table.
#[derive(Clone, Debug, Default)]
pub struct LeaseTable {
    /// Every lease, in key order.
    pub leases: Vec<Lease>,
    /// Items that did not read as leases, skipped.
    pub skipped: Vec<SkippedItem>,
}

/// The lease table.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Creates the table (and the fleet item) unless they exist.
    async fn ensure_table(&self) -> Result<(), StoreError>;
    /// Writes this worker's heartbeat and returns the fleet item after it.
    async fn heartbeat(&self, worker: &str, beat: WorkerBeat) -> Result<FleetView, StoreError>;
    /// Reads the fleet item.
    async fn fleet(&self) -> Result<FleetView, StoreError>;
    /// Removes a worker from the fleet item (graceful stop, or a dead
    /// worker whose beat is still `beat`), and bumps the epoch.
    async fn leave(&self, worker: &str, beat: Option<u64>) -> Result<(), StoreError>;
    /// Tells every worker that the lease set changed.
    async fn bump_epoch(&self) -> Result<(), StoreError>;
    /// Every lease, and the items that are not leases (a full read; only
    /// on changes, never per cycle). One malformed item never makes the
    /// read fail: every worker would stop taking and balancing leases.
    async fn scan_leases(&self) -> Result<LeaseTable, StoreError>;
    /// Every lease, skipping items that are not leases.
    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self.scan_leases().await?.leases)
    }
    /// The leases one worker owns (through the `leaseOwner` index),
    /// skipping items that are not leases.
    async fn leases_owned_by(&self, owner: &str) -> Result<Vec<Lease>, StoreError>;
    async fn get_lease(&self, key: &ShardId) -> Result<Option<Lease>, StoreError>;
    /// Creates a lease unless one exists, and bumps the epoch, in one
    /// atomic write conditioned on the epoch still being `epoch`: a writer
    /// whose view of the table is stale (a paused process) can never bring
    /// back a lease that finished and was cleaned up meanwhile.
    async fn create_lease(&self, lease: &Lease, epoch: u64) -> Result<Created, StoreError>;
    /// Applies `update` if the lease meets `expect`; the lease after the
    /// update, or `None` when the condition failed (or the lease is gone).
    async fn update_lease(
        &self,
        expect: &Expect,
        update: &LeaseUpdate,
    ) -> Result<Option<Lease>, StoreError>;
    /// Deletes an ended lease (only if its checkpoint is `SHARD_END`).
    async fn delete_lease(&self, key: &ShardId) -> Result<bool, StoreError>;
    /// Requests sent to the table so far, for metrics and benchmarks.
    fn requests(&self) -> u64 {
        0
    }
}

/// Bumps the epoch so every worker re-reads the table, retrying briefly
/// (the periodic refresh is the safety net if it still fails).
pub(crate) async fn announce(store: &dyn LeaseStore) {
    for attempt in 0..4u32 {
        match store.bump_epoch().await {
            Ok(()) => return,
            Err(error) if error.is_retryable() && attempt < 3 => {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            Err(error) => {
                warn!(error = %error, "could not announce a lease change; the periodic refresh will");
                return;
            }
        }
    }
}
