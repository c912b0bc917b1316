//! The 409 pre-check's reads, batched: concurrent votes' lookups of "has
//! this voter a counted vote in this poll" are gathered for a moment and
//! answered by one consistent `BatchGetItem` of up to 100 keys, instead of
//! one `GetItem` each. The read was most of the gateway's CPU per vote (an
//! SDK request costs far more than the rest of a vote's handling); the
//! answers are the same, a vote waits at most [`LINGER`] longer.

use std::sync::Arc;
use std::time::Duration;

use tally_store::{VoteItem, VoteReads, VoteStoreError};
use tokio::sync::{mpsc, oneshot};

/// How long the first lookup of a batch waits for others.
pub const LINGER: Duration = Duration::from_millis(2);
/// Most keys in one read (`BatchGetItem`'s limit).
pub const MAX_KEYS: usize = 100;
/// Most reads in flight: beyond, lookups wait (and the channel pushes back
/// on votes) instead of piling reads on a slow or throttled table.
pub const MAX_READS: usize = 32;

type Answer = Result<Option<VoteItem>, VoteStoreError>;
type Lookup = ((String, String), oneshot::Sender<Answer>);

/// Sends lookups to the batching task; the task ends when this is dropped.
pub struct VoteLookups {
    sender: mpsc::Sender<Lookup>,
}

impl VoteLookups {
    /// Starts the batching task on the current runtime.
    pub fn start(store: Arc<dyn VoteReads>) -> Self {
        let (sender, receiver) = mpsc::channel(4 * MAX_KEYS);
        tokio::spawn(run(store, receiver));
        Self { sender }
    }

    /// The voter's vote in the poll, read consistently.
    pub async fn get(&self, poll_id: &str, voter_id: &str) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.sender
            .send(((poll_id.to_owned(), voter_id.to_owned()), answer))
            .await
            .map_err(|_| VoteStoreError::Unavailable("the vote lookups stopped".into()))?;
        answered
            .await
            .map_err(|_| VoteStoreError::Unavailable("the vote lookup was dropped".into()))?
    }
}

async fn run(store: Arc<dyn VoteReads>, mut receiver: mpsc::Receiver<Lookup>) {
    let reads = Arc::new(tokio::sync::Semaphore::new(MAX_READS));
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_KEYS {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(lookup)) => batch.push(lookup),
                Ok(None) | Err(_) => break,
            }
        }
        let store = store.clone();
        let Ok(permit) = reads.clone().acquire_owned().await else {
            return;
        };
        // Reads run side by side; the next batch gathers meanwhile.
        tokio::spawn(async move {
            let _permit = permit;
            let (keys, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            match store.get_votes(&keys).await {
                Ok(votes) => {
                    for (vote, answer) in votes.into_iter().zip(answers) {
                        let _ = answer.send(vote);
                    }
                }
                Err(error) => {
                    for answer in answers {
                        let _ = answer.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tally_store::memory::MemoryVoteStore;
    use tally_store::prelude::*;

    /// Counts `get_votes` calls and the keys they asked for.
    struct Counting {
        inner: MemoryVoteStore,
        calls: AtomicUsize,
        keys: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl VoteReads for Counting {
        async fn get_vote(
            &self,
            poll: &str,
            voter: &str,
        ) -> Result<Option<VoteItem>, VoteStoreError> {
            self.inner.get_vote(poll, voter).await
        }
        async fn get_votes(
            &self,
            keys: &[(String, String)],
        ) -> Result<Vec<tally_store::VoteRead>, VoteStoreError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.keys.fetch_add(keys.len(), Ordering::Relaxed);
            self.inner.get_votes(keys).await
        }
        async fn rejects_of(
            &self,
            poll: &str,
            voter: &str,
        ) -> Result<Vec<tally_store::RejectItem>, VoteStoreError> {
            self.inner.rejects_of(poll, voter).await
        }
        async fn counts(
            &self,
            poll: &tally_core::poll::Poll,
        ) -> Result<tally_store::Counts, VoteStoreError> {
            self.inner.counts(poll).await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lookups_share_reads_and_get_their_own_answers() {
        let inner = MemoryVoteStore::new(Arc::new(tally_lease::MemoryStore::new()));
        let counted = VoteItem {
            poll_id: "p".into(),
            voter_id: "v7".into(),
            option: "a".into(),
            vote_id: "id7".into(),
            origin: tally_store::Origin {
                shard: "shardId-0".into(),
                sequence: "1".into(),
                sub_sequence: 0,
            },
            arrival_ms: 0,
        };
        assert_eq!(
            inner.put_vote(&counted).await.unwrap(),
            tally_store::PutVote::Counted
        );
        let store = Arc::new(Counting {
            inner,
            calls: AtomicUsize::new(0),
            keys: AtomicUsize::new(0),
        });
        let lookups = Arc::new(VoteLookups::start(store.clone()));
        let answers = futures::future::join_all((0..500).map(|i| {
            let lookups = lookups.clone();
            async move { (i, lookups.get("p", &format!("v{}", i % 250)).await.unwrap()) }
        }))
        .await;
        for (i, answer) in answers {
            if i % 250 == 7 {
                assert_eq!(answer.as_ref(), Some(&counted));
            } else {
                assert_eq!(answer, None, "lookup {i}");
            }
        }
        assert_eq!(store.keys.load(Ordering::Relaxed), 500);
        let calls = store.calls.load(Ordering::Relaxed);
        assert!(calls <= 50, "500 lookups in {calls} reads");
    }
}
