//! The poll cache: polls by id, read again after a short age, and read
//! again before a vote is rejected for an unknown or closed poll. Shared
//! by every shard of a worker, and by the gateway's results.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tally_contract::vote::{Reason, Rejection, Vote};
use tally_core::poll::Poll;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{VoteStore, VoteStoreError};

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

/// Polls by id, shared by every shard of a worker (and by the gateway's
/// results).
pub struct PollCache {
    store: Arc<dyn VoteStore>,
    entries: Mutex<HashMap<String, CachedPoll>>,
    config: PollCacheConfig,
    /// Reads of the polls table, counted for the owner's metrics.
    reads: Arc<AtomicU64>,
}

impl PollCache {
    pub fn new(store: Arc<dyn VoteStore>, config: PollCacheConfig, reads: Arc<AtomicU64>) -> Self {
        Self {
            store,
            entries: Mutex::default(),
            config,
            reads,
        }
    }

    /// The poll, read again if the cached copy is older than `max_age`.
    pub async fn get(
        &self,
        id: &str,
        max_age: Duration,
    ) -> Result<Option<Arc<Poll>>, VoteStoreError> {
        let mut entries = self.entries.lock().await;
        if let Some(entry) = entries.get(id) {
            if entry.fetched.elapsed() <= max_age {
                return Ok(entry.poll.clone());
            }
        }
        if entries.len() >= MAX_CACHED_POLLS {
            // Unknown ids (from bad records or requests) must not grow the
            // cache without bound: forget what is stale.
            let max_age = self.config.max_age;
            entries.retain(|_, entry| entry.fetched.elapsed() <= max_age);
        }
        self.reads.fetch_add(1, Ordering::Relaxed);
        let poll = self.store.get_poll(id).await?.map(Arc::new);
        entries.insert(
            id.to_owned(),
            CachedPoll {
                poll: poll.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(poll)
    }

    /// Forgets a poll, so that the next read sees a change made here.
    pub async fn forget(&self, id: &str) {
        self.entries.lock().await.remove(id);
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
