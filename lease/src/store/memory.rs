//! An in-memory [`LeaseStore`] for pure-logic tests and the simulation. It
//! passes the same conformance suite as the DynamoDB adapter. A gate lets a
//! test freeze every call of one worker (a paused process).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    apply_update, meets, Created, Expect, FleetView, LeaseStore, LeaseUpdate, StoreError,
    WorkerBeat,
};
use crate::types::{Lease, ShardId};

#[derive(Default)]
struct Table {
    exists: bool,
    leases: BTreeMap<ShardId, Lease>,
    /// Items under a lease's key that do not read as a lease, and why.
    unreadable: BTreeMap<ShardId, String>,
    fleet: FleetView,
    requests: u64,
}

/// A lease table in memory, shared by every clone.
#[derive(Clone, Default)]
pub struct MemoryStore {
    table: Arc<Mutex<Table>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(
        &self,
        body: impl FnOnce(&mut Table) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut table = self.table.lock().expect("lock");
        table.requests += 1;
        if !table.exists {
            return Err(StoreError::TableMissing("memory".into()));
        }
        body(&mut table)
    }

    /// Overwrites a lease as is (tests that corrupt or prepare state).
    pub fn put_raw(&self, lease: Lease) {
        let mut table = self.table.lock().expect("lock");
        table.unreadable.remove(&lease.key);
        table.leases.insert(lease.key.clone(), lease);
    }

    /// Puts an item under `key` that does not read as a lease (a hand
    /// edit, a half-written migration), as the DynamoDB adapter finds one:
    /// scans skip and report it, a read of it fails, a creation finds it
    /// there, and no conditional update matches it.
    pub fn put_unreadable(&self, key: &ShardId, reason: &str) {
        let mut table = self.table.lock().expect("lock");
        table.leases.remove(key);
        table.unreadable.insert(key.clone(), reason.to_owned());
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn ensure_table(&self) -> Result<(), StoreError> {
        let mut table = self.table.lock().expect("lock");
        table.requests += 1;
        table.exists = true;
        Ok(())
    }

    async fn heartbeat(&self, worker: &str, beat: WorkerBeat) -> Result<FleetView, StoreError> {
        self.with(|table| {
            table.fleet.workers.insert(worker.to_owned(), beat);
            Ok(table.fleet.clone())
        })
    }

    async fn fleet(&self) -> Result<FleetView, StoreError> {
        self.with(|table| Ok(table.fleet.clone()))
    }

    async fn leave(&self, worker: &str, beat: Option<u64>) -> Result<(), StoreError> {
        self.with(|table| {
            let matches = match (table.fleet.workers.get(worker), beat) {
                (None, _) => true,
                (Some(_), None) => true,
                (Some(entry), Some(beat)) => entry.beat == beat,
            };
            if matches {
                table.fleet.workers.remove(worker);
                table.fleet.epoch += 1;
            }
            Ok(())
        })
    }

    async fn bump_epoch(&self) -> Result<(), StoreError> {
        self.with(|table| {
            table.fleet.epoch += 1;
            Ok(())
        })
    }

    async fn scan_leases(&self) -> Result<super::LeaseTable, StoreError> {
        self.with(|table| {
            Ok(super::LeaseTable {
                leases: table.leases.values().cloned().collect(),
                skipped: table
                    .unreadable
                    .iter()
                    .map(|(key, reason)| super::SkippedItem {
                        key: key.to_string(),
                        reason: reason.clone(),
                    })
                    .collect(),
            })
        })
    }

    async fn leases_owned_by(&self, owner: &str) -> Result<Vec<Lease>, StoreError> {
        self.with(|table| {
            Ok(table
                .leases
                .values()
                .filter(|lease| lease.owner.as_deref() == Some(owner))
                .cloned()
                .collect())
        })
    }

    async fn get_lease(&self, key: &ShardId) -> Result<Option<Lease>, StoreError> {
        self.with(|table| match table.unreadable.get(key) {
            Some(reason) => Err(StoreError::Malformed {
                key: key.to_string(),
                reason: reason.clone(),
            }),
            None => Ok(table.leases.get(key).cloned()),
        })
    }

    async fn create_lease(&self, lease: &Lease, epoch: u64) -> Result<Created, StoreError> {
        self.with(|table| {
            if table.leases.contains_key(&lease.key) || table.unreadable.contains_key(&lease.key) {
                return Ok(Created::Exists);
            }
            if table.fleet.epoch != epoch {
                return Ok(Created::EpochMoved);
            }
            table.leases.insert(lease.key.clone(), lease.clone());
            table.fleet.epoch += 1;
            Ok(Created::Yes)
        })
    }

    async fn update_lease(
        &self,
        expect: &Expect,
        update: &LeaseUpdate,
    ) -> Result<Option<Lease>, StoreError> {
        self.with(|table| {
            let Some(lease) = table.leases.get_mut(&expect.fence.key) else {
                return Ok(None);
            };
            if !meets(lease, expect) {
                return Ok(None);
            }
            apply_update(lease, update);
            Ok(Some(lease.clone()))
        })
    }

    fn requests(&self) -> u64 {
        self.table.lock().expect("lock").requests
    }

    async fn delete_lease(&self, key: &ShardId) -> Result<bool, StoreError> {
        self.with(|table| {
            let ended = table
                .leases
                .get(key)
                .is_some_and(|lease| lease.is_finished());
            if ended {
                table.leases.remove(key);
            }
            Ok(ended)
        })
    }
}
