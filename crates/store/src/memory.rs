//! The vote tables in memory, for pure-logic and simulation tests. Commits
//! check and move the checkpoint through the lease store it is given, with
//! the same fence and checkpoint expectation as the DynamoDB transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tally_lease::store::{Expect, LeaseUpdate};
use tally_lease::LeaseStore;
use tokio::sync::Mutex;

use super::{
    counter_keys, AuditStore, Commit, CommitOutcome, CountStore, Counts, PollStore, PutVote,
    RejectItem, VoteItem, VotePage, VoteReads, VoteStoreError, MAX_ITEM_BYTES,
};
use tally_core::count::CounterKey;
use tally_core::poll::{Poll, PollStatus};

#[derive(Default)]
struct Tables {
    polls: BTreeMap<String, Poll>,
    /// Audit record and mismatch report per poll.
    audits: BTreeMap<String, (Option<String>, Option<String>)>,
    votes: BTreeMap<(String, String), VoteItem>,
    rejects: BTreeMap<String, RejectItem>,
    tallies: BTreeMap<CounterKey, BTreeMap<String, u64>>,
}

/// In-memory vote tables.
#[derive(Clone)]
pub struct MemoryVoteStore {
    tables: Arc<Mutex<Tables>>,
    leases: Arc<dyn LeaseStore>,
}

impl MemoryVoteStore {
    pub fn new(leases: Arc<dyn LeaseStore>) -> Self {
        Self {
            tables: Arc::default(),
            leases,
        }
    }

    /// Every stored vote, for tests.
    pub async fn all_votes(&self) -> Vec<VoteItem> {
        self.tables.lock().await.votes.values().cloned().collect()
    }

    /// Every kept reject, for tests.
    pub async fn all_rejects(&self) -> Vec<RejectItem> {
        self.tables.lock().await.rejects.values().cloned().collect()
    }
}

fn lease_error(error: tally_lease::store::StoreError) -> VoteStoreError {
    if error.is_retryable() {
        VoteStoreError::Unavailable(error.to_string())
    } else {
        VoteStoreError::Other(error.to_string())
    }
}

#[async_trait]
impl PollStore for MemoryVoteStore {
    async fn ensure_tables(&self) -> Result<(), VoteStoreError> {
        Ok(())
    }

    async fn create_poll(&self, poll: &Poll) -> Result<bool, VoteStoreError> {
        let mut tables = self.tables.lock().await;
        if tables.polls.contains_key(&poll.id) {
            return Ok(false);
        }
        tables.polls.insert(poll.id.clone(), poll.clone());
        Ok(true)
    }

    async fn update_poll(&self, poll: &Poll, expected: PollStatus) -> Result<bool, VoteStoreError> {
        let mut tables = self.tables.lock().await;
        match tables.polls.get_mut(&poll.id) {
            Some(stored) if stored.status == expected => {
                stored.status = poll.status;
                stored.opens_at = poll.opens_at;
                stored.closes_at = poll.closes_at;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn get_poll(&self, id: &str) -> Result<Option<Poll>, VoteStoreError> {
        Ok(self.tables.lock().await.polls.get(id).cloned())
    }

    async fn list_polls(&self) -> Result<Vec<Poll>, VoteStoreError> {
        Ok(self.tables.lock().await.polls.values().cloned().collect())
    }
}

#[async_trait]
impl CountStore for MemoryVoteStore {
    async fn put_vote(&self, vote: &VoteItem) -> Result<PutVote, VoteStoreError> {
        let mut tables = self.tables.lock().await;
        let key = (vote.poll_id.clone(), vote.voter_id.clone());
        match tables.votes.get(&key) {
            Some(stored) if stored.origin != vote.origin => Ok(PutVote::Duplicate),
            _ => {
                tables.votes.insert(key, vote.clone());
                Ok(PutVote::Counted)
            }
        }
    }

    async fn put_reject(&self, reject: &RejectItem) -> Result<(), VoteStoreError> {
        // As DynamoDB does (the emulators do not): an item over 400 KB is
        // refused, and no retry helps.
        if reject.item_bytes() > MAX_ITEM_BYTES {
            return Err(VoteStoreError::Other(format!(
                "ValidationException: item size {} has exceeded the maximum allowed size",
                reject.item_bytes()
            )));
        }
        self.tables
            .lock()
            .await
            .rejects
            .insert(reject.origin.key(), reject.clone());
        Ok(())
    }

    async fn commit(&self, commit: &Commit) -> Result<CommitOutcome, VoteStoreError> {
        // One commit at a time, so the counters and the checkpoint move together.
        let mut tables = self.tables.lock().await;
        let expect = Expect {
            checkpoint: Some(commit.previous.clone()),
            ..Expect::from(commit.fence.clone())
        };
        let moved = self
            .leases
            .update_lease(&expect, &LeaseUpdate::checkpoint(commit.next.clone()))
            .await
            .map_err(lease_error)?;
        if moved.is_none() {
            let lease = self
                .leases
                .get_lease(&commit.fence.key)
                .await
                .map_err(lease_error)?;
            let applied_before = lease.is_some_and(|lease| {
                lease.fence() == commit.fence && lease.checkpoint == commit.next
            });
            return Ok(if applied_before {
                CommitOutcome::Committed
            } else {
                CommitOutcome::Lost
            });
        }
        for (key, options) in &commit.deltas {
            let counter = tables.tallies.entry(key.clone()).or_default();
            for (option, count) in options {
                *counter.entry(option.clone()).or_default() += count;
            }
        }
        Ok(CommitOutcome::Committed)
    }
}

#[async_trait]
impl VoteReads for MemoryVoteStore {
    async fn get_vote(
        &self,
        poll_id: &str,
        voter_id: &str,
    ) -> Result<Option<VoteItem>, VoteStoreError> {
        Ok(self
            .tables
            .lock()
            .await
            .votes
            .get(&(poll_id.to_owned(), voter_id.to_owned()))
            .cloned())
    }

    async fn rejects_of(
        &self,
        poll_id: &str,
        voter_id: &str,
    ) -> Result<Vec<RejectItem>, VoteStoreError> {
        Ok(self
            .tables
            .lock()
            .await
            .rejects
            .values()
            .filter(|reject| {
                reject.poll_id.as_deref() == Some(poll_id)
                    && reject.voter_id.as_deref() == Some(voter_id)
            })
            .cloned()
            .collect())
    }

    async fn counts(&self, poll: &Poll) -> Result<Counts, VoteStoreError> {
        let tables = self.tables.lock().await;
        let mut counts = Counts::default();
        for option in &poll.options {
            counts.by_option.insert(option.id.clone(), 0);
        }
        for key in super::counter_keys(poll) {
            if let Some(options) = tables.tallies.get(&key) {
                for (option, count) in options {
                    *counts.by_option.entry(option.clone()).or_default() += count;
                }
            }
        }
        Ok(counts)
    }
}

#[async_trait]
impl AuditStore for MemoryVoteStore {
    async fn scan_votes_page(
        &self,
        poll_id: &str,
        segment: u32,
        segments: u32,
        start: Option<String>,
    ) -> Result<VotePage, VoteStoreError> {
        // Segments split the items by position, pages are 100 items.
        let tables = self.tables.lock().await;
        let mine: Vec<&VoteItem> = tables
            .votes
            .values()
            .enumerate()
            .filter(|(index, _)| (*index as u32) % segments.max(1) == segment)
            .map(|(_, vote)| vote)
            .collect();
        let from: usize = start
            .as_deref()
            .map(|text| {
                text.parse()
                    .map_err(|_| VoteStoreError::Other(format!("bad scan position {text:?}")))
            })
            .transpose()?
            .unwrap_or(0);
        let to = (from + 100).min(mine.len());
        let page = mine.get(from..to).unwrap_or_default();
        Ok(VotePage {
            votes: page
                .iter()
                .filter(|vote| vote.poll_id == poll_id)
                .map(|vote| (*vote).clone())
                .collect(),
            scanned: page.len() as u64,
            next: (to < mine.len()).then(|| to.to_string()),
        })
    }

    async fn finalize_poll(&self, poll_id: &str, audit: &str) -> Result<bool, VoteStoreError> {
        let mut tables = self.tables.lock().await;
        match tables.polls.get_mut(poll_id) {
            Some(poll) if poll.status == PollStatus::Closed => {
                poll.status = PollStatus::Final;
                tables
                    .audits
                    .insert(poll_id.to_owned(), (Some(audit.to_owned()), None));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn set_mismatch(
        &self,
        poll_id: &str,
        report: Option<&str>,
    ) -> Result<(), VoteStoreError> {
        let mut tables = self.tables.lock().await;
        if !tables.polls.contains_key(poll_id) {
            return Err(VoteStoreError::Other(format!("no poll {poll_id}")));
        }
        tables.audits.entry(poll_id.to_owned()).or_default().1 = report.map(str::to_owned);
        Ok(())
    }

    async fn audit_records(
        &self,
        poll_id: &str,
    ) -> Result<(Option<String>, Option<String>), VoteStoreError> {
        Ok(self
            .tables
            .lock()
            .await
            .audits
            .get(poll_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn set_counts(&self, poll: &Poll, counts: &Counts) -> Result<(), VoteStoreError> {
        let mut tables = self.tables.lock().await;
        for key in counter_keys(poll) {
            let values = counts
                .by_option
                .iter()
                .map(|(option, count)| (option.clone(), if key.shard == 0 { *count } else { 0 }))
                .collect();
            tables.tallies.insert(key, values);
        }
        Ok(())
    }
}
