//! What an application implements ([`RecordProcessor`]) and what it is
//! given to checkpoint with ([`Checkpointer`]).
//!
//! A checkpoint is always fenced on the lease's owner and counter: once the
//! lease has moved, the write is refused and the outcome is
//! [`CheckpointOutcome::Lost`], never an error. An application that commits
//! its own writes and the checkpoint in one DynamoDB transaction takes the
//! fence from [`Checkpointer::fence`] (see
//! [`crate::store::dynamo::checkpoint_update`]) and reports the outcome with
//! [`Checkpointer::committed_externally`] or [`Checkpointer::mark_lost`].

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{Expect, LeaseStore, LeaseUpdate, StoreError};
use crate::types::{Checkpoint, ExtendedSequence, Fence, Record, ShardId};

/// An application error; the batch is offered again after a backoff.
pub type ProcessorError = Box<dyn std::error::Error + Send + Sync>;

/// One batch of user records from one shard, in stream order.
#[derive(Debug, Clone)]
pub struct Batch {
    pub shard: ShardId,
    pub records: Vec<Record>,
    pub millis_behind_latest: Option<i64>,
}

/// What a processor learns when it starts on a shard.
#[derive(Debug, Clone)]
pub struct ShardStart {
    pub shard: ShardId,
    pub checkpoint: Checkpoint,
    pub fence: Fence,
}

/// An application's per-shard logic. One instance per lease held; calls
/// come in order from one task.
#[async_trait]
pub trait RecordProcessor: Send {
    /// Called once before the first batch.
    async fn initialize(&mut self, start: &ShardStart) -> Result<(), ProcessorError>;
    /// Processes a batch. Returning an error offers the same batch again
    /// after a backoff; nothing is skipped.
    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError>;
    /// The shard is read to its end. The library checkpoints `SHARD_END`
    /// after this returns. By default nothing is pending: a processor that
    /// checkpoints (or commits) each batch has nothing left to do.
    async fn shard_ended(&mut self, _checkpointer: &Checkpointer) -> Result<(), ProcessorError> {
        Ok(())
    }
    /// The lease moved to another worker; do not checkpoint.
    async fn lease_lost(&mut self) {}
    /// The worker stops or hands the lease over: checkpoint what is done
    /// (by default nothing is pending, as for `shard_ended`).
    async fn shutdown_requested(
        &mut self,
        _checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        Ok(())
    }
}

/// Makes one processor per shard lease.
pub trait ProcessorFactory: Send + Sync + 'static {
    fn create(&self, shard: &ShardId) -> Box<dyn RecordProcessor>;
}

/// The result of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointOutcome {
    Committed,
    /// The lease is no longer ours; stop processing this shard.
    Lost,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {next} is behind the last checkpoint {last}")]
    Backwards { last: String, next: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// True when moving from `last` to `next` keeps checkpoints monotonic.
pub fn advances(last: &Checkpoint, next: &Checkpoint) -> bool {
    match (last, next) {
        (Checkpoint::ShardEnd, Checkpoint::ShardEnd) => true,
        (Checkpoint::ShardEnd, _) => false,
        (_, Checkpoint::ShardEnd) => true,
        (Checkpoint::At(before), Checkpoint::At(after)) => after >= before,
        (Checkpoint::At(_), _) => false,
        (_, _) => true,
    }
}

struct State {
    last: Checkpoint,
}

/// Writes fenced checkpoints for one lease.
pub struct Checkpointer {
    store: Arc<dyn LeaseStore>,
    fence: Fence,
    state: Mutex<State>,
    lost: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Checkpointer {
    pub(crate) fn new(
        store: Arc<dyn LeaseStore>,
        fence: Fence,
        last: Checkpoint,
        lost: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            fence,
            state: Mutex::new(State { last }),
            lost,
            metrics,
        }
    }

    /// The owner and counter every write for this lease must present.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// The last checkpoint committed.
    pub fn last(&self) -> Checkpoint {
        self.state.lock().expect("lock").last.clone()
    }

    /// True once the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Checkpoints everything up to and including `position`.
    pub async fn checkpoint(
        &self,
        position: ExtendedSequence,
    ) -> Result<CheckpointOutcome, CheckpointError> {
        self.write(Checkpoint::At(position), LeaseUpdate::checkpoint)
            .await
    }

    pub(crate) async fn write(
        &self,
        next: Checkpoint,
        update: impl Fn(Checkpoint) -> LeaseUpdate,
    ) -> Result<CheckpointOutcome, CheckpointError> {
        if self.is_lost() {
            return Ok(CheckpointOutcome::Lost);
        }
        let last = self.last();
        if !advances(&last, &next) {
            return Err(CheckpointError::Backwards {
                last: last.to_string(),
                next: next.to_string(),
            });
        }
        let change = update(next.clone());
        let expect = Expect::from(self.fence.clone());
        let written = crate::retry::with_backoff(
            || self.store.update_lease(&expect, &change),
            StoreError::is_retryable,
            &self.lost,
        )
        .await;
        match written {
            None => Ok(CheckpointOutcome::Lost),
            Some(Ok(Some(_))) => {
                Metrics::add(&self.metrics.checkpoints_total, 1);
                self.state.lock().expect("lock").last = next;
                Ok(CheckpointOutcome::Committed)
            }
            Some(Ok(None)) => {
                self.mark_lost();
                Ok(CheckpointOutcome::Lost)
            }
            Some(Err(error)) => Err(error.into()),
        }
    }

    /// Records a checkpoint the application committed in its own
    /// transaction (with the fence's condition).
    pub fn committed_externally(&self, checkpoint: Checkpoint) -> Result<(), CheckpointError> {
        let mut state = self.state.lock().expect("lock");
        if !advances(&state.last, &checkpoint) {
            return Err(CheckpointError::Backwards {
                last: state.last.to_string(),
                next: checkpoint.to_string(),
            });
        }
        state.last = checkpoint;
        Metrics::add(&self.metrics.checkpoints_total, 1);
        Ok(())
    }

    /// Records that the application's fenced write was refused: the lease
    /// is lost and the reader stops.
    pub fn mark_lost(&self) {
        // Counted once, by the worker, when the reader exits.
        self.lost.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SequenceNumber;
    use proptest::prelude::*;

    fn at(sequence: u64, sub: u64) -> Checkpoint {
        Checkpoint::At(ExtendedSequence {
            sequence: SequenceNumber::parse(&sequence.to_string()).unwrap(),
            sub_sequence: sub,
        })
    }

    proptest! {
        /// Whatever is offered, the accepted checkpoints never go back, and
        /// SHARD_END is final.
        #[test]
        fn accepted_checkpoints_are_monotonic(steps in proptest::collection::vec((0u64..50, 0u64..4, 0u8..10), 1..60)) {
            let mut last = Checkpoint::TrimHorizon;
            let mut accepted = vec![];
            for (sequence, sub, kind) in steps {
                let next = if kind == 0 { Checkpoint::ShardEnd } else { at(sequence, sub) };
                // A strictly later position, or the end of an unended
                // shard, is always accepted.
                let later = match (&last, &next) {
                    (Checkpoint::At(a), Checkpoint::At(b)) => b > a,
                    (Checkpoint::ShardEnd, _) => false,
                    _ => true,
                };
                if later {
                    prop_assert!(advances(&last, &next), "{} -> {} refused", last, next);
                }
                if advances(&last, &next) {
                    accepted.push(next.clone());
                    last = next;
                }
            }
            for pair in accepted.windows(2) {
                match (&pair[0], &pair[1]) {
                    (Checkpoint::At(a), Checkpoint::At(b)) => prop_assert!(a <= b),
                    (Checkpoint::ShardEnd, next) => prop_assert_eq!(next, &Checkpoint::ShardEnd),
                    _ => {}
                }
            }
        }
    }

    #[tokio::test]
    async fn stale_fence_is_refused_and_reported_lost() {
        use crate::store::memory::MemoryStore;
        use crate::types::Lease;
        let store = MemoryStore::new();
        store.ensure_table().await.unwrap();
        let mut lease = Lease::new(ShardId::new("s"), Checkpoint::TrimHorizon);
        lease.owner = Some("a".into());
        lease.counter = 1;
        store.create_lease(&lease, 0).await.unwrap();
        let checkpointer = Checkpointer::new(
            Arc::new(store.clone()),
            lease.fence(),
            Checkpoint::TrimHorizon,
            CancellationToken::new(),
            Arc::default(),
        );
        let position = ExtendedSequence {
            sequence: SequenceNumber::parse("5").unwrap(),
            sub_sequence: 0,
        };
        assert_eq!(
            checkpointer.checkpoint(position.clone()).await.unwrap(),
            CheckpointOutcome::Committed
        );
        let err = checkpointer
            .checkpoint(ExtendedSequence {
                sequence: SequenceNumber::parse("4").unwrap(),
                sub_sequence: 0,
            })
            .await
            .unwrap_err();
        assert!(matches!(err, CheckpointError::Backwards { .. }));
        // Another worker takes the lease: the old owner's write is refused.
        store
            .update_lease(&lease.fence().into(), &LeaseUpdate::take("b"))
            .await
            .unwrap()
            .unwrap();
        let later = ExtendedSequence {
            sequence: SequenceNumber::parse("9").unwrap(),
            sub_sequence: 0,
        };
        assert_eq!(
            checkpointer.checkpoint(later).await.unwrap(),
            CheckpointOutcome::Lost
        );
        assert!(checkpointer.is_lost());
        let stored = store.get_lease(&ShardId::new("s")).await.unwrap().unwrap();
        assert_eq!(stored.checkpoint, Checkpoint::At(position));
        assert_eq!(stored.owner.as_deref(), Some("b"));
    }
}
