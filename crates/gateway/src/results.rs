//! Live results: the sum of a poll's counter items, read at most once per
//! interval (250 ms by default) per poll per gateway process, whatever the
//! number of readers. `GET .../results` is served from that cache; the SSE
//! stream of a poll is fed by one read loop, started by its first client
//! and stopped a little after its last one leaves.
//!
//! A poll's counts only grow, so its total (with its status) names its
//! state: that is the SSE event id, the same on every gateway process, and
//! a client resuming with `Last-Event-ID` gets the current results only if
//! they changed since.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;
use utoipa::ToSchema;

use super::error::ApiError;
use tally_contract::time::{format_rfc3339, now_millis};
use tally_store::poll_cache::PollCache;
use tally_store::VoteStore;

/// One option's count.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct OptionCount {
    pub id: String,
    pub label: String,
    pub votes: u64,
}

/// A poll's live results.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Results {
    pub poll_id: String,
    pub question: String,
    /// draft, open, closed or final.
    pub status: String,
    pub options: Vec<OptionCount>,
    pub total: u64,
    /// When the counters were read (RFC 3339).
    pub as_of: String,
    /// Counted votes per second over the last few seconds.
    pub votes_per_second: f64,
}

/// Results as read at one moment.
#[derive(Debug)]
pub struct Snapshot {
    pub results: Results,
    /// The SSE event id: `<total>-<status>`.
    pub id: String,
    read_at: Instant,
}

/// How far back the votes-per-second figure looks.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// A read loop with no client stops after this long.
const IDLE_STOP: Duration = Duration::from_secs(2);
/// Above this many polls cached, idle entries are forgotten.
const MAX_ENTRIES: usize = 10_000;

struct Entry {
    latest: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
    history: Mutex<VecDeque<(Instant, u64)>>,
    sender: broadcast::Sender<Arc<Snapshot>>,
    looping: AtomicBool,
}

/// The results of every poll this process serves.
pub struct ResultsHub {
    store: Arc<dyn VoteStore>,
    polls: Arc<PollCache>,
    interval: Duration,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Counter reads, for metrics and tests.
    pub reads: std::sync::atomic::AtomicU64,
    pub loops: std::sync::atomic::AtomicI64,
}

impl ResultsHub {
    pub fn new(store: Arc<dyn VoteStore>, polls: Arc<PollCache>, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            store,
            polls,
            interval,
            entries: Mutex::default(),
            reads: Default::default(),
            loops: Default::default(),
        })
    }

    fn entry(&self, poll_id: &str) -> Arc<Entry> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > MAX_ENTRIES {
            entries.retain(|_, entry| {
                entry.looping.load(Ordering::Relaxed) || entry.sender.receiver_count() > 0
            });
        }
        entries
            .entry(poll_id.to_owned())
            .or_insert_with(|| {
                Arc::new(Entry {
                    latest: tokio::sync::Mutex::new(None),
                    history: Mutex::default(),
                    sender: broadcast::channel(16).0,
                    looping: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// The poll's results, no older than the interval.
    pub async fn current(&self, poll_id: &str) -> Result<Arc<Snapshot>, ApiError> {
        let poll = self
            .polls
            .get(poll_id, Duration::from_millis(500))
            .await?
            .ok_or_else(|| ApiError::PollNotFound(poll_id.to_owned()))?;
        let entry = self.entry(poll_id);
        let mut latest = entry.latest.lock().await;
        if let Some(snapshot) = latest.as_ref() {
            if snapshot.read_at.elapsed() <= self.interval
                && snapshot.results.status == poll.status.as_str()
            {
                return Ok(snapshot.clone());
            }
        }
        let counts = self.store.counts(&poll).await?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let total = counts.total();
        let votes_per_second = {
            let mut history = entry.history.lock().unwrap_or_else(|e| e.into_inner());
            history.push_back((now, total));
            while history.len() > 2
                && history
                    .get(1)
                    .is_some_and(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
            {
                history.pop_front();
            }
            match history.front() {
                Some((at, then)) if now.duration_since(*at) >= Duration::from_millis(200) => {
                    total.saturating_sub(*then) as f64 / now.duration_since(*at).as_secs_f64()
                }
                _ => 0.0,
            }
        };
        let results = Results {
            poll_id: poll.id.clone(),
            question: poll.question.clone(),
            status: poll.status.as_str().to_owned(),
            options: poll
                .options
                .iter()
                .map(|option| OptionCount {
                    id: option.id.clone(),
                    label: option.label.clone(),
                    votes: counts.by_option.get(&option.id).copied().unwrap_or(0),
                })
                .collect(),
            total,
            as_of: format_rfc3339(now_millis()),
            votes_per_second: (votes_per_second * 10.0).round() / 10.0,
        };
        let snapshot = Arc::new(Snapshot {
            id: format!("{}-{}", total, results.status),
            results,
            read_at: now,
        });
        *latest = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// The current results and a receiver of every later change; starts
    /// the poll's read loop unless it runs.
    pub async fn subscribe(
        self: &Arc<Self>,
        poll_id: &str,
    ) -> Result<(Arc<Snapshot>, broadcast::Receiver<Arc<Snapshot>>), ApiError> {
        let current = self.current(poll_id).await?;
        let entry = self.entry(poll_id);
        let receiver = entry.sender.subscribe();
        if !entry.looping.swap(true, Ordering::AcqRel) {
            let hub = self.clone();
            let poll_id = poll_id.to_owned();
            let first = current.id.clone();
            tokio::spawn(async move { hub.read_loop(poll_id, entry, first).await });
        }
        Ok((current, receiver))
    }

    async fn read_loop(self: Arc<Self>, poll_id: String, entry: Arc<Entry>, first: String) {
        self.loops.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(poll_id = %poll_id, "results read loop started");
        let mut last_sent = first;
        let mut idle_since: Option<Instant> = None;
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if entry.sender.receiver_count() == 0 {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= IDLE_STOP {
                    entry.looping.store(false, Ordering::Release);
                    // A client that subscribed just now found the flag set
                    // and started no loop: keep this one.
                    if entry.sender.receiver_count() == 0
                        || entry.looping.swap(true, Ordering::AcqRel)
                    {
                        break;
                    }
                }
                continue;
            }
            idle_since = None;
            match self.current(&poll_id).await {
                Ok(snapshot) => {
                    if snapshot.id != last_sent {
                        last_sent = snapshot.id.clone();
                        let _ = entry.sender.send(snapshot);
                    }
                }
                Err(error) => {
                    tracing::warn!(poll_id = %poll_id, error = %error, "results read failed");
                }
            }
        }
        self.loops.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(poll_id = %poll_id, "results read loop stopped");
    }
}
