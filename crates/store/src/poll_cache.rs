//! The poll cache: polls by id, read again after a short age, and read
//! again before a vote is rejected for an unknown or closed poll. Shared
//! by every shard of a worker, and by the gateway's results.
//!
//! No lock is held across a read of the table except the one of the id
//! being read: a lookup finds (or adds) the id's slot under a short map
//! lock, then waits on that slot alone. Concurrent lookups of one id make
//! one read (single flight); a slow read of one id (say, an unknown id from
//! a flood of bad records) never delays lookups of other ids. "No such
//! poll" is remembered like a poll, so each unknown id costs one read per
//! interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tally_contract::vote::{Reason, Rejection, Vote};
use tally_core::poll::Poll;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{PollStore, VoteStoreError};

struct CachedPoll {
    poll: Option<Arc<Poll>>,
    fetched: Instant,
}

/// Above this many cached polls, stale entries are dropped.
const MAX_CACHED_POLLS: usize = 10_000;

/// How long a cached poll is used.
#[derive(Clone, Copy, Debug)]
pub struct PollCacheConfig {
    /// A cached poll older than this is read again before use.
    pub max_age: Duration,
    /// A poll is read again to confirm a reject only if its cached copy is
    /// older than this (so a flood of late votes costs few reads).
    pub reread_min_age: Duration,
}

impl Default for PollCacheConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_millis(500),
            reread_min_age: Duration::from_millis(50),
        }
    }
}

/// One id's cached copy, behind a lock held only for that id's read.
type Slot = Arc<Mutex<Option<CachedPoll>>>;

/// The slots, and the size at which they are swept next: a sweep costs
/// the map's size, so it runs again only once the map has grown by half
/// (amortized O(1) a lookup, even when every slot is fresh).
#[derive(Default)]
struct Slots {
    map: HashMap<String, Slot>,
    sweep_at: usize,
}

/// Polls by id, shared by every shard of a worker (and by the gateway's
/// results).
pub struct PollCache {
    store: Arc<dyn PollStore>,
    /// Held only to find or add a slot, never across a read.
    slots: std::sync::Mutex<Slots>,
    config: PollCacheConfig,
    /// Reads of the polls table, counted for the owner's metrics.
    reads: Arc<AtomicU64>,
    /// Lookups, cached or not (for tests and benchmarks).
    lookups: AtomicU64,
}

impl PollCache {
    pub fn new(store: Arc<dyn PollStore>, config: PollCacheConfig, reads: Arc<AtomicU64>) -> Self {
        Self {
            store,
            slots: std::sync::Mutex::default(),
            config,
            reads,
            lookups: AtomicU64::new(0),
        }
    }

    /// The poll, read again if the cached copy is older than `max_age`.
    pub async fn get(
        &self,
        id: &str,
        max_age: Duration,
    ) -> Result<Option<Arc<Poll>>, VoteStoreError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let slot = self.slot(id);
        let mut cached = slot.lock().await;
        if let Some(entry) = cached.as_ref() {
            if entry.fetched.elapsed() <= max_age {
                return Ok(entry.poll.clone());
            }
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        let poll = self.store.get_poll(id).await?.map(Arc::new);
        *cached = Some(CachedPoll {
            poll: poll.clone(),
            fetched: Instant::now(),
        });
        Ok(poll)
    }

    /// The slot of `id`, added if there is none.
    fn slot(&self, id: &str) -> Slot {
        let mut guard = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let Slots { map, sweep_at } = &mut *guard;
        if let Some(slot) = map.get(id) {
            return slot.clone();
        }
        if map.len() >= (*sweep_at).max(MAX_CACHED_POLLS) {
            // Unknown ids (from bad records or requests) must not grow the
            // map without bound: forget the slots nobody is using whose
            // copy is stale or missing; if that is not enough (a flood of
            // distinct ids within the cache age), every slot nobody is
            // using (a forgotten copy costs one read more).
            let max_age = self.config.max_age;
            map.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot.try_lock().is_ok_and(|cached| {
                        cached
                            .as_ref()
                            .is_some_and(|entry| entry.fetched.elapsed() <= max_age)
                    })
            });
            if map.len() >= 2 * MAX_CACHED_POLLS {
                map.retain(|_, slot| Arc::strong_count(slot) > 1);
            }
            *sweep_at = map.len() + map.len() / 2;
        }
        map.entry(id.to_owned()).or_default().clone()
    }

    /// Lookups so far, cached or not.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Forgets a poll, so that the next read sees a change made here.
    pub async fn forget(&self, id: &str) {
        let slot = self.slot(id);
        *slot.lock().await = None;
    }

    /// Decides a vote that arrived at `arrival_ms`. A reject for an unknown
    /// poll or a poll not open is confirmed by a fresh read first.
    pub async fn check(
        &self,
        vote: &Vote,
        arrival_ms: i64,
    ) -> Result<Result<Arc<Poll>, Rejection>, VoteStoreError> {
        let decide = |poll: Option<Arc<Poll>>| match poll {
            None => Err(Rejection::new(
                Reason::UnknownPoll,
                format!("no poll {}", vote.poll_id),
            )),
            Some(poll) => poll.check(vote, arrival_ms).map(|()| poll),
        };
        let cached = self.get(&vote.poll_id, self.config.max_age).await?;
        match decide(cached) {
            Err(rejection)
                if matches!(rejection.reason, Reason::UnknownPoll | Reason::PollNotOpen) =>
            {
                let fresh = self.get(&vote.poll_id, self.config.reread_min_age).await?;
                Ok(decide(fresh))
            }
            decided => Ok(decided),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryVoteStore;
    use crate::PollStore;

    fn vote(poll: &str, option: &str) -> Vote {
        Vote {
            vote_id: "v".into(),
            poll_id: poll.into(),
            option: option.into(),
            voter_id: "u".into(),
            cast_at: None,
        }
    }

    /// A store whose reads of ids starting with `unknown-` wait until the
    /// gate opens, counting reads by id.
    struct GatedStore {
        inner: MemoryVoteStore,
        gate: tokio::sync::watch::Receiver<bool>,
        reads: std::sync::Mutex<HashMap<String, u32>>,
    }

    #[async_trait::async_trait]
    impl PollStore for GatedStore {
        async fn ensure_tables(&self) -> Result<(), VoteStoreError> {
            self.inner.ensure_tables().await
        }
        async fn create_poll(&self, poll: &Poll) -> Result<bool, VoteStoreError> {
            self.inner.create_poll(poll).await
        }
        async fn update_poll(
            &self,
            poll: &Poll,
            expected: tally_core::poll::PollStatus,
        ) -> Result<bool, VoteStoreError> {
            self.inner.update_poll(poll, expected).await
        }
        async fn get_poll(&self, id: &str) -> Result<Option<Poll>, VoteStoreError> {
            *self.reads.lock().unwrap().entry(id.to_owned()).or_default() += 1;
            if id.starts_with("unknown-") {
                let mut gate = self.gate.clone();
                let _ = gate.wait_for(|open| *open).await;
            }
            self.inner.get_poll(id).await
        }
        async fn list_polls(&self) -> Result<Vec<Poll>, VoteStoreError> {
            self.inner.list_polls().await
        }
    }

    /// A flood of distinct unknown ids within the cache age (every slot
    /// fresh): the map stays bounded.
    #[tokio::test]
    async fn a_flood_of_fresh_unknown_ids_stays_bounded() {
        let store = MemoryVoteStore::new(Arc::new(tally_lease::MemoryStore::new()));
        store.ensure_tables().await.unwrap();
        let cache = PollCache::new(
            Arc::new(store),
            PollCacheConfig {
                max_age: Duration::from_secs(3600),
                ..PollCacheConfig::default()
            },
            Arc::default(),
        );
        let mut largest = 0;
        for id in 0..(5 * MAX_CACHED_POLLS) {
            assert!(cache
                .get(&format!("unknown-{id}"), Duration::from_secs(3600))
                .await
                .unwrap()
                .is_none());
            largest = largest.max(cache.slots.lock().unwrap().map.len());
        }
        assert!(largest <= 3 * MAX_CACHED_POLLS, "{largest} slots");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_ids_read_slowly_never_delay_known_ones_and_are_read_once() {
        let (open, gate) = tokio::sync::watch::channel(false);
        let inner = MemoryVoteStore::new(Arc::new(tally_lease::MemoryStore::new()));
        inner
            .create_poll(&tally_core::testing::sample_poll("known"))
            .await
            .unwrap();
        let store = Arc::new(GatedStore {
            inner,
            gate,
            reads: Default::default(),
        });
        let config = PollCacheConfig {
            max_age: Duration::from_secs(60),
            ..PollCacheConfig::default()
        };
        let cache = Arc::new(PollCache::new(store.clone(), config, Arc::default()));
        assert!(cache.get("known", config.max_age).await.unwrap().is_some());
        // 1,000 unknown ids, each asked for twice at once, all stuck in
        // their reads.
        let unknown: Vec<_> = (0..2_000)
            .map(|i| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    cache
                        .get(&format!("unknown-{}", i % 1_000), Duration::from_secs(60))
                        .await
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.reads.lock().unwrap().len() < 1_001 {
            assert!(
                std::time::Instant::now() < deadline,
                "the unknown ids' reads are not all in flight at once"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Known lookups go on meanwhile.
        for _ in 0..100 {
            let known =
                tokio::time::timeout(Duration::from_secs(5), cache.get("known", config.max_age))
                    .await
                    .expect("a known poll is not held up by unknown ones");
            assert!(known.unwrap().is_some());
        }
        open.send(true).unwrap();
        for lookup in unknown {
            assert!(lookup.await.unwrap().unwrap().is_none());
        }
        // Each unknown id was read once, and "no such poll" is remembered.
        for i in 0..1_000 {
            assert!(cache
                .get(&format!("unknown-{i}"), config.max_age)
                .await
                .unwrap()
                .is_none());
        }
        let reads = store.reads.lock().unwrap();
        assert_eq!(reads.len(), 1_001);
        assert!(reads.values().all(|count| *count == 1), "one read per id");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reject_is_confirmed_by_a_fresh_read_and_the_cache_refreshes() {
        let store = Arc::new(MemoryVoteStore::new(Arc::new(
            tally_lease::MemoryStore::new(),
        )));
        let cache = PollCache::new(store.clone(), PollCacheConfig::default(), Arc::default());
        let unknown = cache.check(&vote("p", "a"), 10).await.unwrap().unwrap_err();
        assert_eq!(unknown.reason, Reason::UnknownPoll);
        // The poll is created: a fresh read finds it before the next reject,
        // even though the cached "no such poll" is younger than its max age.
        let mut poll = tally_core::testing::sample_poll("p");
        poll.status = tally_core::poll::PollStatus::Draft;
        store.create_poll(&poll).await.unwrap();
        tokio::time::advance(Duration::from_millis(60)).await;
        let draft = cache.check(&vote("p", "a"), 10).await.unwrap().unwrap_err();
        assert_eq!(draft.reason, Reason::PollNotOpen);
        // Opened: the not-open verdict is confirmed by a fresh read, and flips.
        let mut opened = poll.clone();
        opened.open(5).unwrap();
        assert!(store.update_poll(&opened, poll.status).await.unwrap());
        tokio::time::advance(Duration::from_millis(60)).await;
        assert!(cache.check(&vote("p", "a"), 10).await.unwrap().is_ok());
        // Closed: the cached open poll is used until it is older than the
        // cache's max age, then read again.
        let mut closed = opened.clone();
        closed.close(8).unwrap();
        assert!(store.update_poll(&closed, opened.status).await.unwrap());
        assert!(cache.check(&vote("p", "a"), 10).await.unwrap().is_ok());
        tokio::time::advance(Duration::from_millis(600)).await;
        let late = cache.check(&vote("p", "a"), 10).await.unwrap().unwrap_err();
        assert_eq!(late.reason, Reason::PollNotOpen);
        let invalid = cache.check(&vote("p", "zz"), 7).await.unwrap().unwrap_err();
        assert_eq!(invalid.reason, Reason::InvalidOption);
    }
}
