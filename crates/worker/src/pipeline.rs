//! The per-shard vote pipeline: a [`RecordProcessor`] that turns each batch
//! into exactly one outcome per record (counted, duplicate, or rejected
//! with a reason) and commits the counts with the checkpoint.
//!
//! For each batch, in order:
//! 1. decode and validate every record (the poll cache re-reads a poll once
//!    before rejecting a vote as `unknown_poll` or `poll_not_open`);
//! 2. keep the rejects (idempotent puts keyed by stream position);
//! 3. first-wins inside the batch, then one conditional put per winner
//!    into `votes` ("no vote yet, or this very record's"), concurrently up
//!    to a bound;
//! 4. sum the counted votes into per-counter-item deltas and commit them
//!    with the checkpoint in `TransactWriteItems`, fenced by the lease and
//!    by the previous checkpoint, cut at 100 actions at record boundaries.
//!
//! Throttling, conflicts, 5xx and timeouts are retried with backoff. A lost
//! lease drops the rest of the batch: the next owner replays it, and the
//! origin condition of step 3 makes that safe. This module never decides
//! anything the pure [`tally_core::count`] module can decide.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use tally_lease::processor::ProcessorError;
use tally_lease::{
    Batch, Checkpoint, Checkpointer, ProcessorFactory, Record, RecordProcessor, ShardId, ShardStart,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use tally_contract::vote::{self, Reason, Rejection, Vote};
use tally_core::count::{self, Decided};
use tally_core::poll::Poll;
use tally_store::poll_cache::{PollCache, PollCacheConfig};
use tally_store::{
    Commit, CommitOutcome, Origin, PutVote, RejectItem, VoteItem, VoteStore, VoteStoreError,
    MAX_BATCH_STATEMENTS,
};

#[cfg(feature = "faults")]
use tally_faults::crash_point;

/// Without the `faults` feature, crash points compile to nothing.
#[cfg(not(feature = "faults"))]
#[inline(always)]
fn crash_point(_point: &'static str) {}

/// How a batch's winning votes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VoteWrites {
    /// `BatchExecuteStatement`, 25 `INSERT`s a request.
    Batched,
    /// One conditional `PutItem` per vote (for comparison).
    Single,
}

/// The pipeline's settings.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Votes in flight at once, per shard: that many conditional puts, or
    /// that many divided by 25 (at least one) batch requests.
    pub put_concurrency: usize,
    pub vote_writes: VoteWrites,
    /// How long cached polls are used.
    pub poll_cache: PollCacheConfig,
    /// Actions per `TransactWriteItems`.
    pub max_transaction_actions: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            put_concurrency: 64,
            vote_writes: VoteWrites::Batched,
            poll_cache: PollCacheConfig::default(),
            max_transaction_actions: count::MAX_TRANSACTION_ACTIONS,
        }
    }
}

/// What every shard's processor shares.
pub struct Pipeline {
    pub store: Arc<dyn VoteStore>,
    pub polls: PollCache,
    pub metrics: Arc<Metrics>,
    pub config: PipelineConfig,
    /// Fires when the worker must stop retrying (it is shutting down hard).
    pub abandon: CancellationToken,
}

impl Pipeline {
    pub fn new(
        store: Arc<dyn VoteStore>,
        config: PipelineConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            polls: PollCache::new(store.clone(), config.poll_cache, metrics.poll_reads.clone()),
            store,
            metrics,
            config,
            abandon: CancellationToken::new(),
        })
    }

    /// Runs `operation` with backoff while its error is retryable, counting
    /// each retry by cause.
    async fn retried<T, F, Fut>(&self, operation: F) -> Result<T, VoteStoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, VoteStoreError>>,
    {
        let metrics = &self.metrics;
        let mut operation = operation;
        let counted = || {
            let attempt = operation();
            async move {
                let result = attempt.await;
                if let Err(error) = &result {
                    if error.is_retryable() {
                        metrics.add_retry(error.cause());
                    }
                }
                result
            }
        };
        tally_lease::retry::with_backoff(counted, VoteStoreError::is_retryable, &self.abandon)
            .await
            .unwrap_or_else(|| Err(VoteStoreError::Other("abandoned at shutdown".into())))
    }
}

/// Makes one [`VoteProcessor`] per shard lease.
pub struct VoteProcessorFactory {
    pub pipeline: Arc<Pipeline>,
}

impl ProcessorFactory for VoteProcessorFactory {
    fn create(&self, shard: &ShardId) -> Box<dyn RecordProcessor> {
        Box::new(VoteProcessor {
            shard: shard.clone(),
            pipeline: self.pipeline.clone(),
        })
    }
}

/// One shard's processor.
pub struct VoteProcessor {
    shard: ShardId,
    pipeline: Arc<Pipeline>,
}

/// A record's verdict before dedupe.
enum Verdict {
    Valid {
        vote: Vote,
        poll: Arc<Poll>,
    },
    Rejected {
        rejection: Rejection,
        vote: Option<Vote>,
    },
}

/// A record's final outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Counted,
    Duplicate,
    Rejected(Reason),
}

impl VoteProcessor {
    /// Writes the winning votes (`items`, the records at `indices`) as
    /// the configuration says, and returns each record's outcome. A vote
    /// whose statement failed alone inside a batch (throttled, a 5xx code)
    /// is resent alone with backoff.
    async fn put_votes(
        &self,
        indices: &[usize],
        items: &[VoteItem],
    ) -> Result<HashMap<usize, PutVote>, VoteStoreError> {
        let pipeline = &self.pipeline;
        let mut put_outcomes: HashMap<usize, PutVote> = HashMap::with_capacity(items.len());
        let (per_request, in_flight) = match pipeline.config.vote_writes {
            VoteWrites::Single => (1, pipeline.config.put_concurrency.max(1)),
            VoteWrites::Batched => (
                MAX_BATCH_STATEMENTS,
                pipeline
                    .config
                    .put_concurrency
                    .div_ceil(MAX_BATCH_STATEMENTS)
                    .max(1),
            ),
        };
        // (Indices, not references, keep the futures' lifetimes simple.)
        let mut requests = futures::stream::iter(0..items.len().div_ceil(per_request))
            .map(|number| async move {
                let chunk =
                    &items[number * per_request..items.len().min((number + 1) * per_request)];
                let started = Instant::now();
                let results = match pipeline.config.vote_writes {
                    VoteWrites::Single => {
                        vec![Ok(pipeline
                            .retried(|| pipeline.store.put_vote(&chunk[0]))
                            .await?)]
                    }
                    VoteWrites::Batched => {
                        pipeline.retried(|| pipeline.store.put_votes(chunk)).await?
                    }
                };
                if results.len() != chunk.len() {
                    return Err(VoteStoreError::Other(format!(
                        "the store answered {} of {} votes",
                        results.len(),
                        chunk.len()
                    )));
                }
                let mut outcomes = Vec::with_capacity(chunk.len());
                for (at, result) in results.into_iter().enumerate() {
                    let outcome = match result {
                        Ok(outcome) => outcome,
                        Err(error) if error.is_retryable() => {
                            pipeline.metrics.add_retry(error.cause());
                            pipeline
                                .retried(|| pipeline.store.put_vote(&chunk[at]))
                                .await?
                        }
                        Err(error) => return Err(error),
                    };
                    outcomes.push((number * per_request + at, outcome));
                }
                pipeline
                    .metrics
                    .put_latency
                    .record_duration(started.elapsed());
                Ok::<_, VoteStoreError>(outcomes)
            })
            .buffer_unordered(in_flight);
        while let Some(done) = requests.next().await {
            if put_outcomes.is_empty() {
                crash_point("mid_puts");
            }
            for (at, outcome) in done? {
                put_outcomes.insert(indices[at], outcome);
            }
        }
        Ok(put_outcomes)
    }

    fn origin(&self, record: &Record) -> Origin {
        Origin {
            shard: self.shard.as_str().to_owned(),
            sequence: record.position.sequence.as_str().to_owned(),
            sub_sequence: record.position.sub_sequence,
        }
    }

    /// Decides one record. `seen` holds the polls this batch has looked
    /// up: a poll is looked up once per batch, and only a reject for an
    /// unknown or closed poll goes back to the cache (which confirms it
    /// with a fresh read).
    async fn validate(
        &self,
        record: &Record,
        seen: &mut HashMap<String, Arc<Poll>>,
    ) -> Result<Verdict, VoteStoreError> {
        if let Some(problem) = &record.bad_aggregate {
            return Ok(Verdict::Rejected {
                rejection: Rejection::new(Reason::BadAggregate, problem.clone()),
                vote: None,
            });
        }
        let vote = match vote::decode(&record.data) {
            Ok(vote) => vote,
            Err(rejection) => {
                return Ok(Verdict::Rejected {
                    rejection,
                    vote: None,
                })
            }
        };
        let arrival_ms = tally_contract::time::millis(record.arrival);
        if let Some(poll) = seen.get(&vote.poll_id) {
            match poll.check(&vote, arrival_ms) {
                Ok(()) => {
                    let poll = poll.clone();
                    return Ok(Verdict::Valid { vote, poll });
                }
                Err(rejection) if rejection.reason == Reason::InvalidOption => {
                    return Ok(Verdict::Rejected {
                        rejection,
                        vote: Some(vote),
                    })
                }
                Err(_) => {}
            }
        }
        Ok(match self.pipeline.polls.check(&vote, arrival_ms).await? {
            Ok(poll) => {
                seen.insert(vote.poll_id.clone(), poll.clone());
                Verdict::Valid { vote, poll }
            }
            Err(rejection) => Verdict::Rejected {
                rejection,
                vote: Some(vote),
            },
        })
    }

    /// Decides and commits one batch; the outcome of each record, or
    /// `None` when the lease was lost (nothing more of the batch is
    /// committed by this worker).
    pub async fn run_batch(
        &self,
        batch: &Batch,
        checkpointer: &Checkpointer,
    ) -> Result<Option<Vec<Outcome>>, VoteStoreError> {
        let pipeline = &self.pipeline;
        // A batch offered again after an error may hold records an earlier
        // attempt already committed: they are done, skip them.
        let done = match checkpointer.last() {
            Checkpoint::At(position) => Some(position),
            _ => None,
        };
        let records: Vec<&Record> = batch
            .records
            .iter()
            .filter(|record| done.as_ref().is_none_or(|done| record.position > *done))
            .collect();
        if records.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let mut verdicts = Vec::with_capacity(records.len());
        let mut seen = HashMap::new();
        for record in &records {
            verdicts.push(self.validate(record, &mut seen).await?);
        }
        crash_point("after_validate");

        // Keep the rejects.
        let rejects: Vec<RejectItem> = records
            .iter()
            .zip(&verdicts)
            .filter_map(|(record, verdict)| match verdict {
                Verdict::Rejected { rejection, vote } => Some(RejectItem::new(
                    self.origin(record),
                    rejection,
                    &record.data,
                    &record.partition_key,
                    tally_contract::time::millis(record.arrival),
                    vote.as_ref(),
                )),
                Verdict::Valid { .. } => None,
            })
            .collect();
        // (Indices, not references, keep the futures' lifetimes simple.)
        let kept: Vec<Result<(), VoteStoreError>> = futures::stream::iter(0..rejects.len())
            .map(|at| {
                let reject = &rejects[at];
                pipeline.retried(move || pipeline.store.put_reject(reject))
            })
            .buffer_unordered(pipeline.config.put_concurrency.max(1))
            .collect()
            .await;
        kept.into_iter().collect::<Result<Vec<()>, _>>()?;
        crash_point("after_rejects");

        // First-wins in the batch, then the conditional puts.
        let winners = count::first_wins(verdicts.iter().map(|verdict| match verdict {
            Verdict::Valid { vote, .. } => Some((vote.poll_id.as_str(), vote.voter_id.as_str())),
            Verdict::Rejected { .. } => None,
        }));
        let puts: Vec<(usize, VoteItem)> = records
            .iter()
            .zip(&verdicts)
            .enumerate()
            .filter(|(index, _)| winners[*index])
            .filter_map(|(index, (record, verdict))| match verdict {
                Verdict::Valid { vote, .. } => Some((
                    index,
                    VoteItem {
                        poll_id: vote.poll_id.clone(),
                        voter_id: vote.voter_id.clone(),
                        option: vote.option.clone(),
                        vote_id: vote.vote_id.clone(),
                        origin: self.origin(record),
                        arrival_ms: tally_contract::time::millis(record.arrival),
                    },
                )),
                Verdict::Rejected { .. } => None,
            })
            .collect();
        let (indices, items): (Vec<usize>, Vec<VoteItem>) = puts.into_iter().unzip();
        let put_outcomes = self.put_votes(&indices, &items).await?;
        crash_point("after_puts");

        // Outcomes, deltas and the commit plan.
        let mut outcomes = Vec::with_capacity(records.len());
        let mut decided = Vec::with_capacity(records.len());
        for (index, (record, verdict)) in records.iter().zip(&verdicts).enumerate() {
            let (outcome, counted) = match verdict {
                Verdict::Rejected { rejection, .. } => (Outcome::Rejected(rejection.reason), None),
                Verdict::Valid { vote, poll } => match put_outcomes.get(&index) {
                    Some(PutVote::Counted) => (
                        Outcome::Counted,
                        Some((
                            count::counter_for(self.shard.as_str(), &poll.id, poll.counter_shards),
                            vote.option.clone(),
                        )),
                    ),
                    Some(PutVote::Duplicate) | None => (Outcome::Duplicate, None),
                },
            };
            outcomes.push(outcome);
            decided.push(Decided {
                position: record.position.clone(),
                counted,
            });
        }
        let parts = count::plan_commits(&decided, pipeline.config.max_transaction_actions);
        let last_part = parts.len().saturating_sub(1);
        for (number, part) in parts.iter().enumerate() {
            let previous = checkpointer.last();
            let next = Checkpoint::At(part.checkpoint.clone());
            let commit = Commit {
                fence: checkpointer.fence().clone(),
                token: count::commit_token(
                    self.shard.as_str(),
                    checkpointer.fence().counter,
                    &format!("{}/{}", previous.attribute(), previous.sub_attribute()),
                    part,
                ),
                previous,
                next: next.clone(),
                deltas: part.deltas.clone(),
            };
            let started = Instant::now();
            let committed = pipeline.retried(|| pipeline.store.commit(&commit)).await?;
            pipeline
                .metrics
                .commit_latency
                .record_duration(started.elapsed());
            match committed {
                CommitOutcome::Committed => {
                    Metrics::add(&pipeline.metrics.commits, 1);
                    Metrics::add(&pipeline.metrics.votes_counted, part.votes);
                    checkpointer
                        .committed_externally(next)
                        .map_err(|error| VoteStoreError::Other(error.to_string()))?;
                }
                CommitOutcome::Lost => {
                    Metrics::add(&pipeline.metrics.commits_lost, 1);
                    tracing::info!(shard_id = %self.shard, lease_owner = ?checkpointer.fence().owner, "lease lost at commit; the batch is left to the next owner");
                    checkpointer.mark_lost();
                    return Ok(None);
                }
            }
            if number < last_part {
                crash_point("between_commits");
            }
        }
        let duplicates = outcomes
            .iter()
            .filter(|o| **o == Outcome::Duplicate)
            .count();
        Metrics::add(&pipeline.metrics.votes_duplicate, duplicates as u64);
        for reason in Reason::ALL {
            let rejected = outcomes
                .iter()
                .filter(|o| **o == Outcome::Rejected(reason))
                .count();
            if rejected > 0 {
                pipeline.metrics.add_rejected(reason, rejected as u64);
            }
        }
        Metrics::add(&pipeline.metrics.batches, 1);
        pipeline.metrics.batch_records.record(records.len() as u64);
        crash_point("after_commit");
        Ok(Some(outcomes))
    }
}

#[async_trait]
impl RecordProcessor for VoteProcessor {
    async fn initialize(&mut self, start: &ShardStart) -> Result<(), ProcessorError> {
        tracing::info!(shard_id = %start.shard, checkpoint = %start.checkpoint, lease_owner = ?start.fence.owner, "shard started");
        Ok(())
    }

    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &Checkpointer,
    ) -> Result<(), ProcessorError> {
        if batch.records.is_empty() || checkpointer.is_lost() {
            return Ok(());
        }
        let span = tracing::info_span!("count_batch", shard_id = %self.shard, records = batch.records.len());
        match tracing::Instrument::instrument(self.run_batch(batch, checkpointer), span).await {
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::warn!(shard_id = %self.shard, error = %error, "batch failed; it is offered again");
                Err(Box::new(error))
            }
        }
    }
}
