//! `chaos [--seconds N] [--seed S] [--workers W] [--rate R] [--gateway-rate G]`:
//! the whole local system under fire, checked against ground truth.
//!
//! It starts ministack (DynamoDB) and kinesis-mock (Kinesis, which
//! reshards correctly), a stream of 4 shards, W `tally worker` processes and
//! a `tally gateway` process. For N seconds two loads run: a generated
//! workload (repeats, malformed records, unknown, closed and draft polls,
//! invalid options, KPL aggregates and a broken one) through the producer
//! SDK at R records per second, and voters voting through the gateway's
//! HTTP API at G voters per second (a quarter try a second vote). Both
//! record what they sent and where it landed.
//!
//! Meanwhile, at seeded random times, it kills workers with SIGKILL and
//! restarts them, pauses them with SIGSTOP past the lease duration and
//! resumes them, stops them with SIGTERM (they must exit 0), kills the
//! gateway and starts it again on its port, and splits and merges shards. Every worker start, the gateway and the producer run with
//! the fault layer on: throttling, transaction conflicts, 5xx, latency,
//! lost responses and partial `PutRecords` failures.
//!
//! It counts effects, not signals sent: before each kill or pause the
//! process must still be running, a paused worker must lose a lease to
//! another while it is stopped, and every lease a killed worker held must be
//! taken by another. A process that exits unplanned, or a panic in any log,
//! fails the run.
//!
//! At the end it waits for quiet (every shard processed to its end or its
//! tip) and checks: the counts equal the ground truth, the votes table
//! equals it, its recount equals the counts for every poll (and `tally
//! audit` finds no difference on the live poll and the two busiest), every
//! rejected record is in `rejects` at its position with its reason (and any
//! other reject is a copy of such a record put again by a retry), no shard
//! is stuck, no process exited unplanned or panicked, every graceful stop
//! and the final SIGTERM of every process exited 0, every HTTP voter had a
//! definite answer (a 500 is a failure; a request without an answer only
//! while the gateway was down), every fault kind was injected into the
//! workers themselves, and every kind of action happened. It prints what it
//! did and what it found, writes `report.json` beside the logs, and exits 1
//! on any difference.
//!
//! `--sabotage MODES` tests the checks themselves: after the checks above
//! passed, it breaks the system in each named way (see [`Sabotage`]),
//! checks again, and passes only if every mode made its own check fail.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tally_contract::vote::Reason;
use tally_faults::Faults;
use tally_gateway::auth::Verifier;
use tally_lease::{DynamoStore, KinesisStream, LeaseStore};
use tally_producer::{Aggregation, KinesisSink, Producer, ProducerConfig, Receipt, Record};
use tally_store::dynamo::{DynamoVoteStore, TableNames};
use tally_store::prelude::*;
use tally_testkit::emulators::{
    sdk_config, unique_name, wait_stream_active, Emulator, EmulatorKind,
};
use tally_testkit::workload::{self, Put, Verdict};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub seconds: u64,
    pub seed: u64,
    pub workers: usize,
    /// Producer records per second.
    pub rate: u64,
    /// Gateway voters per second.
    pub gateway_rate: u64,
    /// Longest wait for quiet after the load.
    pub quiet_timeout: Duration,
    /// Ways to break the system after the checks passed; each must make
    /// its own check fail (a test of the harness itself).
    pub sabotage: Vec<Sabotage>,
}

/// One way to break the system behind its back, and the check that must
/// see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sabotage {
    /// One vote added to a counter.
    Counter,
    /// A copy of a vote item under another voter.
    DoubledVote,
    /// A reject item deleted.
    LostReject,
    /// Every worker paused and a record put on the stream.
    StuckShard,
    /// A worker killed without the harness knowing.
    DeadWorker,
}

impl Sabotage {
    pub const ALL: [Sabotage; 5] = [
        Sabotage::Counter,
        Sabotage::DoubledVote,
        Sabotage::LostReject,
        Sabotage::StuckShard,
        Sabotage::DeadWorker,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Sabotage::Counter => "counter",
            Sabotage::DoubledVote => "doubled-vote",
            Sabotage::LostReject => "lost-reject",
            Sabotage::StuckShard => "stuck-shard",
            Sabotage::DeadWorker => "dead-worker",
        }
    }

    /// The check this sabotage must make fail.
    fn check(self) -> &'static str {
        match self {
            Sabotage::Counter => CHECK_COUNTS,
            Sabotage::DoubledVote => CHECK_VOTES,
            Sabotage::LostReject => CHECK_REJECTS,
            Sabotage::StuckShard => CHECK_STUCK,
            Sabotage::DeadWorker => CHECK_ALIVE,
        }
    }

    /// `all`, or modes separated by commas.
    pub fn parse(text: &str) -> Result<Vec<Sabotage>, String> {
        if text == "all" {
            return Ok(Self::ALL.to_vec());
        }
        let mut modes = Vec::new();
        for name in text.split(',') {
            let mode = Self::ALL
                .into_iter()
                .find(|mode| mode.name() == name)
                .ok_or_else(|| {
                    format!(
                        "unknown sabotage {name:?}: all, or some of {}",
                        Self::ALL.map(Sabotage::name).join(", ")
                    )
                })?;
            if !modes.contains(&mode) {
                modes.push(mode);
            }
        }
        Ok(modes)
    }
}

const CHECK_COUNTS: &str = "counts equal the ground truth";
const CHECK_VOTES: &str = "votes table equals the ground truth";
const CHECK_REJECTS: &str = "every rejected record in rejects";
const CHECK_STUCK: &str = "no stuck shard";
const CHECK_ALIVE: &str = "no unplanned exit or panic";
const CHECK_READS: &str = "the tables could be read";

/// The lease duration the workers run with; a pause lasts longer.
const LEASE_DURATION_MS: u64 = 3_000;

/// The fault kinds, and the rules that turn each on in a worker.
const WORKER_FAULTS: [(&str, &str); 6] = [
    (
        "throttle",
        "GetRecords:throttle:0.05,PutItem:throttle:0.02,BatchExecuteStatement:throttle:0.02,TransactWriteItems:throttle:0.03",
    ),
    (
        "partial",
        "BatchExecuteStatement:partial:0.05",
    ),
    ("conflict", "TransactWriteItems:conflict:0.1"),
    ("5xx", "*:5xx:0.02"),
    ("latency", "*:latency:0.05:150"),
    (
        "lost",
        "PutItem:lost:0.01,BatchExecuteStatement:lost:0.02,TransactWriteItems:lost:0.03",
    ),
];

/// The producer's and the gateway's faults (their only writes are `PutRecords`).
const PUT_FAULTS: &str = "PutRecords:partial:0.05,PutRecords:throttle:0.03,PutRecords:5xx:0.02,PutRecords:lost:0.02,PutRecords:latency:0.05:100";

/// Every kind the run must have injected somewhere.
const KINDS: [&str; 6] = ["throttle", "conflict", "5xx", "latency", "lost", "partial"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Kill,
    Pause,
    Stop,
    Split,
    Merge,
    KillGateway,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Pause => "pause",
            Action::Stop => "stop",
            Action::Split => "split",
            Action::Merge => "merge",
            Action::KillGateway => "gateway",
        }
    }
}

/// The least of each action a run does (the short run).
const REQUIRED: [(Action, usize); 6] = [
    (Action::Kill, 5),
    (Action::Pause, 2),
    (Action::Stop, 1),
    (Action::Split, 1),
    (Action::Merge, 1),
    (Action::KillGateway, 1),
];

/// The stack and the names of this run.
struct System {
    tally: PathBuf,
    dir: PathBuf,
    ministack: String,
    kinesis_endpoint: String,
    stream: String,
    app: String,
    prefix: String,
    kinesis: aws_sdk_kinesis::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    store: DynamoVoteStore,
    leases: DynamoStore,
}

impl System {
    fn command(&self) -> Command {
        let mut command = tally_testkit::process::tally(&self.tally);
        command
            .args(["--stream", &self.stream, "--app", &self.app])
            .args(["--table-prefix", &self.prefix])
            .env("AWS_ENDPOINT_URL", &self.ministack)
            .env("AWS_ENDPOINT_URL_KINESIS", &self.kinesis_endpoint);
        command
    }
}

/// A worker slot: the process now in it, and its past generations.
struct Slot {
    number: usize,
    generation: u32,
    child: Option<Child>,
    id: String,
    logs: Vec<PathBuf>,
}

/// The gateway process, started again on the same port after a kill.
struct GatewayProc {
    port: u16,
    secret: String,
    child: Option<Child>,
    logs: Vec<PathBuf>,
}

/// The fleet and what happened to it.
struct Fleet {
    system: Arc<System>,
    gateway: GatewayProc,
    slots: Vec<Slot>,
    random: StdRng,
    /// Fault kinds given to the next starts, so that all are used early.
    next_kinds: Vec<usize>,
    events: Vec<String>,
    started: Instant,
    done: BTreeMap<Action, usize>,
    graceful: Vec<(String, Option<i32>, f64)>,
    /// Processes found exited that nothing stopped, and planned actions
    /// whose process had already gone.
    unplanned: Vec<String>,
    /// What each kill and pause did to the leases (kills are watched in
    /// the background).
    effects: Arc<Mutex<Vec<Effect>>>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    /// When the gateway was down: from its kill to its answering again
    /// (`None`: it never did).
    gateway_down: Arc<Mutex<Vec<DownWindow>>>,
    /// The exit codes of the final SIGTERM to each process.
    final_stops: Vec<(String, Option<i32>)>,
}

/// From a gateway kill to its answering again (`None`: it never did).
type DownWindow = (Instant, Option<Instant>);

/// What a kill or a pause did: the leases the worker held, and when (after
/// the signal) another worker had taken them (a kill: all; a pause: one).
#[derive(Clone, Debug)]
struct Effect {
    action: Action,
    worker: String,
    held: usize,
    taken_after: Option<Duration>,
}

/// The leases `worker` holds on shards not ended.
async fn held_by(leases: &DynamoStore, worker: &str) -> Vec<tally_contract::stream::ShardId> {
    leases
        .list_leases()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|lease| {
            lease.owner.as_deref() == Some(worker)
                && lease.checkpoint != tally_contract::stream::Checkpoint::ShardEnd
        })
        .map(|lease| lease.key)
        .collect()
}

/// How many of `shards` another worker than `worker` holds now (or ended).
async fn taken_from(
    leases: &DynamoStore,
    worker: &str,
    shards: &[tally_contract::stream::ShardId],
) -> Option<usize> {
    let now = leases.list_leases().await.ok()?;
    Some(
        now.iter()
            .filter(|lease| shards.contains(&lease.key))
            .filter(|lease| {
                lease.checkpoint == tally_contract::stream::Checkpoint::ShardEnd
                    || lease.owner.as_deref().is_some_and(|owner| owner != worker)
            })
            .count(),
    )
}

impl Fleet {
    fn log(&mut self, text: String) {
        let line = format!("t+{:6.1}s  {text}", self.started.elapsed().as_secs_f64());
        eprintln!("chaos: {line}");
        self.events.push(line);
    }

    /// A fault specification for one start: one or two kinds, the kinds
    /// not used yet first.
    fn fault_spec(&mut self) -> (String, Vec<&'static str>) {
        let mut kinds = Vec::new();
        for _ in 0..2 {
            if self.next_kinds.is_empty() {
                let mut all: Vec<usize> = (0..WORKER_FAULTS.len()).collect();
                all.shuffle(&mut self.random);
                self.next_kinds = all;
            }
            let kind = self.next_kinds.pop().expect("a kind");
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        let spec = kinds
            .iter()
            .map(|k| WORKER_FAULTS[*k].1)
            .collect::<Vec<_>>()
            .join(",");
        (spec, kinds.iter().map(|k| WORKER_FAULTS[*k].0).collect())
    }

    fn start(&mut self, slot: usize) {
        let (spec, kinds) = self.fault_spec();
        let seed: u64 = self.random.gen();
        let entry = &mut self.slots[slot];
        entry.generation += 1;
        entry.id = format!("w{}-{}", entry.number, entry.generation);
        let log = self.system.dir.join(format!("{}.log", entry.id));
        let file = std::fs::File::create(&log).expect("worker log");
        let child = self
            .system
            .command()
            .args(["worker", "--worker-id", &entry.id])
            .env("TALLY_HEALTH_ADDR", "127.0.0.1:0")
            .env("TALLY_METRICS_INTERVAL_MS", "1000")
            .env("TALLY_LEASE_DURATION_MS", LEASE_DURATION_MS.to_string())
            .env("TALLY_SHARD_SYNC_INTERVAL_MS", "5000")
            .env("TALLY_FAULTS", &spec)
            .env("TALLY_FAULTS_SEED", seed.to_string())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start tally worker");
        entry.child = Some(child);
        entry.logs.push(log);
        let id = entry.id.clone();
        self.log(format!("start     {id} (faults: {})", kinds.join(", ")));
    }

    /// Starts the gateway, with faults on its puts and reads.
    fn start_gateway(&mut self) {
        let seed: u64 = self.random.gen();
        let log = self
            .system
            .dir
            .join(format!("gateway-{}.log", self.gateway.logs.len() + 1));
        let child = self
            .system
            .command()
            .arg("gateway")
            .env(
                "TALLY_GATEWAY_ADDR",
                format!("127.0.0.1:{}", self.gateway.port),
            )
            .env("TALLY_AUTH_SECRET", &self.gateway.secret)
            .env("TALLY_RATE_IP_PER_S", "100000")
            .env("TALLY_RATE_IP_BURST", "100000")
            .env(
                "TALLY_FAULTS",
                format!("{PUT_FAULTS},GetItem:5xx:0.02,GetItem:latency:0.05:100"),
            )
            .env("TALLY_FAULTS_SEED", seed.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("gateway log"))
            .spawn()
            .expect("start tally gateway");
        self.gateway.child = Some(child);
        self.gateway.logs.push(log);
    }

    /// Waits until the gateway answers `/readyz` with 200 (at most 60 s).
    async fn gateway_ready(&self) -> Result<Duration, String> {
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/readyz", self.gateway.port);
        let started = Instant::now();
        while !matches!(http.get(&url).send().await, Ok(r) if r.status() == 200) {
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "the gateway did not get ready in 60 s; see {}",
                    self.gateway
                        .logs
                        .last()
                        .map_or(String::new(), |l| l.display().to_string())
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(started.elapsed())
    }

    /// Records every process that exited although nothing stopped it.
    fn check_alive(&mut self) {
        let at = self.started.elapsed().as_secs_f64();
        let mut found = Vec::new();
        for slot in &mut self.slots {
            if let Some(child) = &mut slot.child {
                if let Ok(Some(status)) = child.try_wait() {
                    found.push(format!(
                        "{} exited unplanned ({status}), seen at t+{at:.1}s",
                        slot.id
                    ));
                    slot.child = None;
                }
            }
        }
        if let Some(child) = &mut self.gateway.child {
            if let Ok(Some(status)) = child.try_wait() {
                found.push(format!(
                    "the gateway exited unplanned ({status}), seen at t+{at:.1}s"
                ));
                self.gateway.child = None;
            }
        }
        for text in found {
            self.log(text.clone());
            self.unplanned.push(text);
        }
    }

    /// Panics in any process's log: (log, line).
    fn panics(&self) -> Vec<String> {
        self.slots
            .iter()
            .flat_map(|slot| &slot.logs)
            .chain(&self.gateway.logs)
            .flat_map(|log| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let name = log
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                text.lines()
                    .filter(|line| line.contains("panicked at"))
                    .map(|line| format!("{name}: {}", line.chars().take(200).collect::<String>()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// No process exited unplanned (from `since` in the list) and no log
    /// has a panic.
    fn alive_check(&mut self, since: usize) -> Check {
        self.check_alive();
        let mut problems: Vec<String> = self.unplanned[since.min(self.unplanned.len())..].to_vec();
        problems.extend(self.panics());
        let running = self.slots.iter().filter(|s| s.child.is_some()).count()
            + usize::from(self.gateway.child.is_some());
        Check {
            name: CHECK_ALIVE,
            ok: problems.is_empty(),
            detail: if problems.is_empty() {
                format!(
                    "{running} processes running, {} logs without a panic",
                    self.slots.iter().map(|s| s.logs.len()).sum::<usize>()
                        + self.gateway.logs.len()
                )
            } else {
                first_problems(&problems)
            },
        }
    }

    /// A slot for a kill or a pause: one whose worker holds leases if any
    /// does, so that the action has something to cost.
    /// A running worker that holds a lease, waited for up to 30 s (right
    /// after a restart none may hold one yet); any worker after that, and
    /// the effects check then reports that it held none.
    async fn slot_with_leases(&mut self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut holding = Vec::new();
            for (index, slot) in self.slots.iter().enumerate() {
                if slot.child.is_some() && !held_by(&self.system.leases, &slot.id).await.is_empty()
                {
                    holding.push(index);
                }
            }
            if let Some(index) = holding.choose(&mut self.random) {
                return *index;
            }
            if Instant::now() > deadline {
                return self.random.gen_range(0..self.slots.len());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn signal(&self, slot: usize, signal: &str) {
        if let Some(child) = &self.slots[slot].child {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    async fn act(&mut self, action: Action) {
        // Before any planned action every process must still be running.
        self.check_alive();
        let slot = match action {
            Action::Kill | Action::Pause => self.slot_with_leases().await,
            _ => self.random.gen_range(0..self.slots.len()),
        };
        let id = self.slots[slot].id.clone();
        match action {
            Action::Kill => {
                let held = held_by(&self.system.leases, &id).await;
                let killed = Instant::now();
                self.signal(slot, "-KILL");
                if let Some(mut child) = self.slots[slot].child.take() {
                    let _ = child.wait();
                }
                // Every lease it held must be taken by another worker.
                let (system, effects) = (self.system.clone(), self.effects.clone());
                let worker = id.clone();
                self.watchers.push(tokio::spawn(async move {
                    let deadline = killed + Duration::from_secs(30);
                    let mut taken_after = None;
                    while !held.is_empty() && Instant::now() < deadline {
                        if taken_from(&system.leases, &worker, &held).await == Some(held.len()) {
                            taken_after = Some(killed.elapsed());
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    effects.lock().expect("lock").push(Effect {
                        action: Action::Kill,
                        worker,
                        held: held.len(),
                        taken_after,
                    });
                }));
                let down = Duration::from_millis(self.random.gen_range(500..3_000));
                self.log(format!(
                    "kill      {id} (SIGKILL), restart in {:.1} s",
                    down.as_secs_f64()
                ));
                tokio::time::sleep(down).await;
                self.start(slot);
            }
            Action::Pause => {
                let pause =
                    Duration::from_millis(LEASE_DURATION_MS + self.random.gen_range(2_000..4_000));
                let held = held_by(&self.system.leases, &id).await;
                let paused = Instant::now();
                self.signal(slot, "-STOP");
                self.log(format!(
                    "pause     {id} (SIGSTOP) for {:.1} s, past the {:.1} s lease duration, holding {} leases",
                    pause.as_secs_f64(),
                    LEASE_DURATION_MS as f64 / 1000.0,
                    held.len()
                ));
                tokio::time::sleep(pause).await;
                // The pause must cost it a lease: wait for that (at most
                // 10 s more) before it resumes.
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut taken_after = None;
                while !held.is_empty() {
                    if taken_from(&self.system.leases, &id, &held)
                        .await
                        .unwrap_or(0)
                        > 0
                    {
                        taken_after = Some(paused.elapsed());
                        break;
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                self.effects.lock().expect("lock").push(Effect {
                    action: Action::Pause,
                    worker: id.clone(),
                    held: held.len(),
                    taken_after,
                });
                self.signal(slot, "-CONT");
                self.log(format!(
                    "resume    {id} (SIGCONT){}",
                    match taken_after {
                        Some(after) => format!(
                            ": a lease taken {:.1} s after the pause",
                            after.as_secs_f64()
                        ),
                        None => ": no lease taken".to_owned(),
                    }
                ));
            }
            Action::Stop => {
                let stopping = Instant::now();
                self.signal(slot, "-TERM");
                let mut code = None;
                if let Some(mut child) = self.slots[slot].child.take() {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        if let Ok(Some(status)) = child.try_wait() {
                            code = status.code();
                            break;
                        }
                        if Instant::now() > deadline {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                let seconds = stopping.elapsed().as_secs_f64();
                self.graceful.push((id.clone(), code, seconds));
                self.log(format!(
                    "stop      {id} (SIGTERM): exit {} in {seconds:.1} s",
                    code.map_or("none (killed after 30 s)".into(), |c| c.to_string())
                ));
                self.start(slot);
            }
            Action::KillGateway => {
                let down_at = Instant::now();
                self.gateway_down
                    .lock()
                    .expect("lock")
                    .push((down_at, None));
                if let Some(mut child) = self.gateway.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let down = Duration::from_millis(self.random.gen_range(500..2_000));
                self.log(format!(
                    "kill      the gateway (SIGKILL), restart in {:.1} s",
                    down.as_secs_f64()
                ));
                tokio::time::sleep(down).await;
                self.start_gateway();
                match self.gateway_ready().await {
                    Ok(took) => {
                        if let Some(window) = self.gateway_down.lock().expect("lock").last_mut() {
                            window.1 = Some(Instant::now());
                        }
                        self.log(format!(
                            "start     the gateway again: ready in {:.1} s",
                            took.as_secs_f64()
                        ))
                    }
                    Err(error) => {
                        self.log(format!("start     the gateway again: {error}"));
                        return;
                    }
                }
            }
            Action::Split | Action::Merge => {
                match reshard(&self.system, action, &mut self.random).await {
                    Ok(text) => self.log(format!("{:<9} {text}", action.name())),
                    Err(error) => {
                        self.log(format!("{:<9} not done: {error}", action.name()));
                        return;
                    }
                }
            }
        }
        *self.done.entry(action).or_default() += 1;
    }

    /// Stops every worker and the gateway (SIGTERM, then SIGKILL after
    /// 30 s), recording each exit code.
    async fn stop_all(&mut self) {
        self.check_alive();
        for slot in 0..self.slots.len() {
            self.signal(slot, "-TERM");
        }
        if let Some(gateway) = &self.gateway.child {
            let _ = Command::new("kill")
                .args(["-TERM", &gateway.id().to_string()])
                .status();
        }
        let children = self
            .slots
            .iter_mut()
            .map(|slot| (slot.id.clone(), &mut slot.child))
            .chain(std::iter::once((
                "the gateway".to_owned(),
                &mut self.gateway.child,
            )));
        let mut codes = Vec::new();
        for (id, child) in children {
            if let Some(mut child) = child.take() {
                let deadline = Instant::now() + Duration::from_secs(30);
                let code = loop {
                    match child.try_wait() {
                        Ok(Some(status)) => break status.code(),
                        _ if Instant::now() > deadline => break None,
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
                let _ = child.kill();
                let _ = child.wait();
                codes.push((id, code));
            }
        }
        self.final_stops.extend(codes);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let children = self
            .slots
            .iter_mut()
            .map(|slot| &mut slot.child)
            .chain(std::iter::once(&mut self.gateway.child));
        for child in children.flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Open shards of the stream: (starting hash key, ending hash key, id).
async fn open_shards(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Result<Vec<(u128, u128, String)>, String> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut request = kinesis.list_shards();
        request = match &token {
            Some(token) => request.next_token(token),
            None => request.stream_name(stream),
        };
        let page = request.send().await.map_err(|e| format!("{e:?}"))?;
        for shard in page.shards() {
            let open = shard
                .sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_none();
            if let (true, Some(range)) = (open, shard.hash_key_range()) {
                let start = range.starting_hash_key().parse().map_err(|_| "hash key")?;
                let end = range.ending_hash_key().parse().map_err(|_| "hash key")?;
                shards.push((start, end, shard.shard_id().to_owned()));
            }
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    shards.sort();
    Ok(shards)
}

/// Splits a random open shard in two, or merges two adjacent ones.
async fn reshard(system: &System, action: Action, random: &mut StdRng) -> Result<String, String> {
    let open = open_shards(&system.kinesis, &system.stream).await?;
    let text = if action == Action::Split {
        let (start, end, shard) = open.choose(random).ok_or("no open shard")?.clone();
        let middle = start + (end - start) / 2;
        system
            .kinesis
            .split_shard()
            .stream_name(&system.stream)
            .shard_to_split(&shard)
            .new_starting_hash_key((middle + 1).to_string())
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        format!("{shard} at hash key {}", middle + 1)
    } else {
        let pairs: Vec<(String, String)> = open
            .windows(2)
            .filter(|pair| pair[0].1 + 1 == pair[1].0)
            .map(|pair| (pair[0].2.clone(), pair[1].2.clone()))
            .collect();
        let (left, right) = pairs.choose(random).ok_or("no adjacent open shards")?;
        system
            .kinesis
            .merge_shards()
            .stream_name(&system.stream)
            .shard_to_merge(left)
            .adjacent_shard_to_merge(right)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        format!("{left} with {right}")
    };
    wait_stream_active(&system.kinesis, &system.stream).await;
    let now = open_shards(&system.kinesis, &system.stream).await?;
    Ok(format!("{text}: {} open shards now", now.len()))
}

/// The actions of a run and when they happen (seconds from the start).
fn plan(seconds: u64, random: &mut StdRng) -> Vec<(f64, Action)> {
    let mut actions: Vec<Action> = REQUIRED
        .iter()
        .flat_map(|(action, n)| std::iter::repeat_n(*action, *n))
        .collect();
    let weighted = [
        (Action::Kill, 3),
        (Action::Pause, 2),
        (Action::Stop, 1),
        (Action::Split, 1),
        (Action::Merge, 1),
        (Action::KillGateway, 1),
    ];
    let total = (seconds / 12).max(actions.len() as u64) as usize;
    while actions.len() < total {
        let pick = weighted
            .choose_weighted(random, |(_, weight)| *weight)
            .expect("weights");
        actions.push(pick.0);
    }
    actions.shuffle(random);
    // Spread over the load, the first after the workers took their leases.
    let (first, last) = (10.0, (seconds as f64 - 10.0).max(11.0));
    let step = (last - first) / actions.len() as f64;
    actions
        .into_iter()
        .enumerate()
        .map(|(index, action)| {
            (
                first + step * (index as f64 + random.gen_range(0.0..0.5)),
                action,
            )
        })
        .collect()
}

/// What the producer load sent and where each record landed.
struct ProducerLoad {
    workload: workload::Workload,
    verdicts: Vec<Vec<Verdict>>,
    receipts: Vec<Option<Receipt>>,
    resent: u64,
    faults: Arc<Faults>,
    metrics: serde_json::Value,
}

async fn producer_load(
    system: Arc<System>,
    workload: workload::Workload,
    seconds: u64,
    seed: u64,
) -> ProducerLoad {
    let faults = Arc::new(Faults::parse(PUT_FAULTS, seed).expect("producer faults"));
    let config = tally_faults::wrap_config(sdk_config(&system.kinesis_endpoint).await, &faults);
    let kinesis = aws_sdk_kinesis::Client::new(&config);
    let sink = || Arc::new(KinesisSink::new(kinesis.clone(), &system.stream));
    let settings = |aggregation| ProducerConfig {
        linger: Duration::from_millis(20),
        aggregation,
        record_ttl: Duration::from_secs(20),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        shard_map_refresh: Duration::from_secs(5),
        ..ProducerConfig::default()
    };
    // Plain votes are packed into aggregates by the producer; the
    // workload's own aggregates (good and broken) go as they are.
    let packing = Producer::start(sink(), settings(Some(Aggregation::default())));
    let raw = Producer::start(sink(), settings(None));
    let verdicts = workload.verdicts(tally_contract::time::now_millis());
    // A key's records go in order: the n-th record of every key is in round n,
    // and a round starts when the one before is on the stream.
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (index, put) in workload.puts.iter().enumerate() {
        let round = seen.entry(put.partition_key()).or_default();
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(index);
        *round += 1;
    }
    let started = Instant::now();
    let interval = Duration::from_secs_f64(seconds as f64 / workload.puts.len().max(1) as f64);
    let mut receipts: Vec<Option<Receipt>> = vec![None; workload.puts.len()];
    let mut resent = 0u64;
    let mut sent = 0u32;
    let mut last_report = Instant::now();
    for round in &rounds {
        let mut pending: Vec<usize> = round.clone();
        while !pending.is_empty() {
            let mut waiting = Vec::new();
            for &index in &pending {
                if let Some(wait) = (interval * sent).checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                sent += 1;
                let put = &workload.puts[index];
                let record = Record::new(put.partition_key(), put.data());
                let producer = if matches!(put, Put::Plain { .. }) {
                    &packing
                } else {
                    &raw
                };
                waiting.push((index, producer.send(record).await));
                if last_report.elapsed() >= Duration::from_secs(10) {
                    last_report = Instant::now();
                    eprintln!(
                        "chaos: producer load: {sent} of {} records sent",
                        workload.puts.len()
                    );
                }
            }
            let mut failed = Vec::new();
            for (index, receipt) in waiting {
                match receipt {
                    Ok(future) => match future.await {
                        Ok(receipt) => receipts[index] = Some(receipt),
                        Err(_) => failed.push(index),
                    },
                    Err(_) => failed.push(index),
                }
            }
            // A failed record may or may not be on the stream: put it again.
            resent += failed.len() as u64;
            pending = failed;
        }
    }
    let _ = packing.close().await;
    let _ = raw.close().await;
    let mut metrics = packing.metrics().snapshot();
    metrics["raw"] = raw.metrics().snapshot();
    ProducerLoad {
        workload,
        verdicts,
        receipts,
        resent,
        faults,
        metrics,
    }
}

/// What the gateway load's voters were answered.
#[derive(Default)]
struct GatewayLoad {
    /// (poll, voter) -> (option, vote id) of the first vote.
    truth: BTreeMap<(String, String), (String, String)>,
    requests: u64,
    by_status: BTreeMap<String, u64>,
    problems: Vec<String>,
    /// When a request had no answer at all (connection refused or cut).
    no_answers: Vec<Instant>,
}

/// One vote through the gateway, retried with its key until it has a
/// definite answer: `Ok(true)` accepted, `Ok(false)` already voted.
async fn vote_until_answered(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    option: &str,
    key: &str,
    load: &Mutex<GatewayLoad>,
) -> Result<bool, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = http
            .post(url)
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({ "option": option }))
            .send()
            .await;
        let status = match &answer {
            Ok(response) => response.status().as_u16().to_string(),
            Err(_) => "no answer".to_owned(),
        };
        {
            let mut load = load.lock().expect("lock");
            load.requests += 1;
            *load.by_status.entry(status).or_default() += 1;
            if answer.is_err() {
                load.no_answers.push(Instant::now());
            }
        }
        let mut wait = Duration::from_millis(300);
        if let Ok(response) = answer {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            match status {
                202 => return Ok(true),
                409 if body["error"]["code"] == "already_voted" => {
                    if body["vote"]["vote_id"] == key && body["vote"]["option"] != option {
                        return Err(format!("{key}: counted with another option: {body}"));
                    }
                    return Ok(body["vote"]["vote_id"] == key);
                }
                429 => wait = Duration::from_secs(retry_after.unwrap_or(1)),
                // A 500 is a bug; 503 (a busy dependency) is retried.
                500 => return Err(format!("{key}: answered 500 {body}")),
                501..=599 => {}
                _ => return Err(format!("{key}: answered {status} {body}")),
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{key}: no definite answer in 120 s"));
        }
        tokio::time::sleep(wait).await;
    }
}

async fn gateway_load(
    base: String,
    verifier: Arc<Verifier>,
    poll: String,
    voters: u64,
    seconds: u64,
    seed: u64,
) -> GatewayLoad {
    let load = Arc::new(Mutex::new(GatewayLoad::default()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("HTTP client");
    let mut random = StdRng::seed_from_u64(seed);
    let options = ["a", "b", "c"];
    let started = Instant::now();
    let interval = Duration::from_secs_f64(seconds as f64 / voters.max(1) as f64);
    let mut tasks = Vec::new();
    for number in 0..voters {
        if let Some(wait) = (interval * number as u32).checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let voter = format!("gw-voter-{number}");
        let first = options[random.gen_range(0..options.len())].to_owned();
        let second = random.gen_bool(0.25).then(|| {
            options
                .iter()
                .find(|o| **o != first)
                .expect("another")
                .to_string()
        });
        let token = verifier
            .mint(&voter, false, Duration::from_secs(3600))
            .expect("token");
        let url = format!("{base}/v1/polls/{poll}/votes");
        let (http, load, poll) = (http.clone(), load.clone(), poll.clone());
        tasks.push(tokio::spawn(async move {
            let key = format!("chaos-{voter}-1");
            match vote_until_answered(&http, &url, &token, &first, &key, &load).await {
                Ok(true) => {
                    load.lock()
                        .expect("lock")
                        .truth
                        .insert((poll.clone(), voter.clone()), (first, key));
                }
                Ok(false) => load
                    .lock()
                    .expect("lock")
                    .problems
                    .push(format!("{key}: a first vote was answered already_voted")),
                Err(problem) => load.lock().expect("lock").problems.push(problem),
            }
            if let Some(second) = second {
                let key = format!("chaos-{voter}-2");
                if let Err(problem) =
                    vote_until_answered(&http, &url, &token, &second, &key, &load).await
                {
                    load.lock().expect("lock").problems.push(problem);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Arc::try_unwrap(load)
        .ok()
        .expect("no other owner")
        .into_inner()
        .expect("lock")
}

/// The last metrics object of every log of a worker slot, summed for the
/// fault counts.
fn injected_by_workers(fleet: &Fleet) -> BTreeMap<String, u64> {
    let mut injected = BTreeMap::new();
    for slot in &fleet.slots {
        for log in &slot.logs {
            let metrics = crate::metrics_lines(log)
                .pop()
                .map(|(_, metrics)| metrics)
                .unwrap_or_default();
            if let Some(kinds) = metrics["tally_faults_injected_total"].as_object() {
                for (kind, count) in kinds {
                    *injected.entry(kind.clone()).or_default() += count.as_u64().unwrap_or(0);
                }
            }
        }
    }
    injected
}

/// The gateway's injected faults, from the line it logs when it stops.
fn injected_by_gateway(log: &std::path::Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == "faults injected")
        .filter_map(|line| {
            serde_json::from_str::<BTreeMap<String, u64>>(line["injected"].as_str()?).ok()
        })
        .next_back()
        .unwrap_or_default()
}

/// A failed check's detail: its first five problems.
fn first_problems(problems: &[String]) -> String {
    problems
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ")
}

/// One check's outcome.
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

/// Runs the chaos; true when every check passed.
pub async fn chaos(options: Options) -> bool {
    let Some(tally) = std::env::var_os("TALLY_BIN").map(PathBuf::from) else {
        eprintln!("chaos: set TALLY_BIN to the tally binary (ops/chaos builds it and sets it)");
        return false;
    };
    let started = Instant::now();
    let mut random = StdRng::seed_from_u64(options.seed);
    eprintln!("chaos: starting ministack (DynamoDB) and kinesis-mock (Kinesis)");
    let ministack = Emulator::start(EmulatorKind::Ministack);
    let kinesis_mock = Emulator::start(EmulatorKind::KinesisMock);
    let dir = std::env::temp_dir().join(unique_name("tally-chaos"));
    std::fs::create_dir_all(&dir).expect("log directory");
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk_config(&ministack.endpoint).await);
    let app = unique_name("chaos");
    let prefix = format!("{}-", unique_name("c"));
    let names = TableNames::with_prefix(&prefix, format!("{app}-leases"));
    let system = Arc::new(System {
        tally,
        dir: dir.clone(),
        ministack: ministack.endpoint.clone(),
        kinesis_endpoint: kinesis_mock.endpoint.clone(),
        stream: unique_name("votes"),
        app,
        prefix,
        kinesis: aws_sdk_kinesis::Client::new(&sdk_config(&kinesis_mock.endpoint).await),
        dynamodb: dynamodb.clone(),
        store: DynamoVoteStore::new(dynamodb.clone(), names.clone()),
        leases: DynamoStore::new(dynamodb, names.leases.clone()),
    });
    tally_testkit::process::succeed(
        system.command().args(["init", "--shards", "4"]),
        "tally init",
    );

    // The producer's workload, sized to the rate and the time.
    let records = options.rate * options.seconds;
    let workload = workload::generate(&workload::Shape {
        seed: options.seed,
        voters: (records / 8).max(50) as usize,
        aggregated_voters: (records / 60).max(10) as usize,
        votes_per_voter: 7,
        poll_prefix: format!("chaos{}", options.seed),
    });
    for poll in &workload.polls {
        system.store.create_poll(poll).await.expect("create poll");
    }

    // The gateway, with faults on its puts and reads.
    let secret = format!("{:032x}{:032x}", random.gen::<u128>(), random.gen::<u128>());
    let port = crate::gateway::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut fleet = Fleet {
        system: system.clone(),
        gateway: GatewayProc {
            port,
            secret: secret.clone(),
            child: None,
            logs: Vec::new(),
        },
        slots: (1..=options.workers)
            .map(|number| Slot {
                number,
                generation: 0,
                child: None,
                id: String::new(),
                logs: Vec::new(),
            })
            .collect(),
        random: StdRng::seed_from_u64(random.gen()),
        next_kinds: Vec::new(),
        events: Vec::new(),
        started: Instant::now(),
        done: BTreeMap::new(),
        graceful: Vec::new(),
        unplanned: Vec::new(),
        effects: Arc::default(),
        watchers: Vec::new(),
        gateway_down: Arc::default(),
        final_stops: Vec::new(),
    };
    fleet.start_gateway();
    if let Err(error) = fleet.gateway_ready().await {
        panic!("{error}");
    }
    let verifier = Arc::new(crate::gateway::local_verifier(&secret));
    let http = reqwest::Client::new();
    let live_poll = format!("chaos{}-live", options.seed);
    let admin = verifier
        .mint("chaos-admin", true, Duration::from_secs(7200))
        .expect("token");
    let created = http
        .post(format!("{base}/v1/polls"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"poll_id": live_poll, "question": "Which?", "options": [{"id": "a"}, {"id": "b"}, {"id": "c"}], "open": true}))
        .send()
        .await
        .expect("create the live poll");
    assert_eq!(created.status(), 201, "create the live poll");

    eprintln!(
        "chaos: seed {}, {} s of load, {} workers, logs in {}",
        options.seed,
        options.seconds,
        options.workers,
        dir.display()
    );
    for slot in 0..options.workers {
        fleet.start(slot);
    }
    let plan = plan(options.seconds, &mut random);

    let producer = tokio::spawn(producer_load(
        system.clone(),
        workload,
        options.seconds,
        random.gen(),
    ));
    let voters = options.gateway_rate * options.seconds;
    let gateway_votes = tokio::spawn(gateway_load(
        base.clone(),
        verifier.clone(),
        live_poll.clone(),
        voters,
        options.seconds,
        random.gen(),
    ));
    for (at, action) in plan {
        if let Some(wait) = Duration::from_secs_f64(at).checked_sub(fleet.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        fleet.act(action).await;
    }
    let producer = producer.await.expect("producer load");
    let gateway_votes = gateway_votes.await.expect("gateway load");
    fleet.log(format!(
        "load done: {} producer records ({} put again after a failure), {} gateway requests",
        producer.receipts.len(),
        producer.resent,
        gateway_votes.requests
    ));

    // Quiet: every shard processed to its end or its tip.
    let quiet_started = Instant::now();
    let mut stuck;
    let mut last_report = Instant::now();
    loop {
        stuck = behind_shards(&system).await;
        if stuck.is_empty() {
            break;
        }
        if quiet_started.elapsed() > options.quiet_timeout {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!("chaos: waiting for quiet; behind: {}", stuck.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let quiet = quiet_started.elapsed().as_secs_f64();
    fleet.log(if stuck.is_empty() {
        format!("quiet after {quiet:.1} s")
    } else {
        format!("not quiet after {quiet:.1} s: {}", stuck.join(", "))
    });
    // A moment more: nothing may change after quiet.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (truth, polls) = {
        let mut truth = producer
            .workload
            .truth(tally_contract::time::now_millis())
            .votes
            .clone();
        truth.extend(gateway_votes.truth.clone());
        let mut polls = producer.workload.polls.clone();
        polls.push(
            system
                .store
                .get_poll(&live_poll)
                .await
                .ok()
                .flatten()
                .expect("the live poll"),
        );
        (truth, polls)
    };
    let mut expected_counts: BTreeMap<String, BTreeMap<String, u64>> = polls
        .iter()
        .map(|poll| {
            (
                poll.id.clone(),
                poll.options.iter().map(|o| (o.id.clone(), 0)).collect(),
            )
        })
        .collect();
    for ((poll, _), (option, _)) in &truth {
        *expected_counts
            .get_mut(poll)
            .and_then(|o| o.get_mut(option))
            .expect("a known option") += 1;
    }
    let ground = Ground {
        truth,
        polls,
        expected_counts,
        live_poll: live_poll.clone(),
        quiet,
    };

    let mut checks = data_checks(&system, &ground, &producer).await;
    let unplanned_before = fleet.unplanned.len();
    checks.push(fleet.alive_check(0));
    checks.push(graceful_check(&fleet));
    for watcher in std::mem::take(&mut fleet.watchers) {
        let _ = watcher.await;
    }
    checks.push(effects_check(&fleet));
    checks.push(gateway_check(&gateway_votes, voters));
    checks.push(silence_check(&gateway_votes, &fleet));

    // Sabotage: break the system in each named way, check again, and see
    // each mode's own check fail.
    let mut sabotaged: Vec<(Sabotage, bool, String)> = Vec::new();
    let mut unplanned_seen = unplanned_before.max(fleet.unplanned.len());
    if !options.sabotage.is_empty() {
        let mut not_done = BTreeMap::new();
        for mode in &options.sabotage {
            match sabotage(*mode, &system, &mut fleet, &ground, &producer).await {
                Ok(text) => fleet.log(format!("sabotage  {}: {text}", mode.name())),
                Err(error) => {
                    fleet.log(format!("sabotage  {}: not done: {error}", mode.name()));
                    not_done.insert(mode.name(), error);
                }
            }
        }
        let mut again = data_checks(&system, &ground, &producer).await;
        again.push(fleet.alive_check(unplanned_seen));
        unplanned_seen = fleet.unplanned.len();
        // Caught: the mode was done, the tables could be read, and its own
        // check failed.
        let reads = again.iter().find(|c| c.name == CHECK_READS);
        for mode in &options.sabotage {
            let check = again.iter().find(|c| c.name == mode.check());
            let (caught, detail) = match (not_done.get(mode.name()), reads) {
                (Some(error), _) => (false, format!("not done: {error}")),
                (None, Some(reads)) if !reads.ok => {
                    (false, format!("{}: {}", reads.name, reads.detail))
                }
                (None, _) => (
                    check.is_some_and(|c| !c.ok),
                    check.map_or("no such check".to_owned(), |c| {
                        format!("{}: {}", c.name, c.detail)
                    }),
                ),
            };
            sabotaged.push((*mode, caught, detail));
        }
        if options.sabotage.contains(&Sabotage::StuckShard) {
            for slot in 0..fleet.slots.len() {
                fleet.signal(slot, "-CONT");
            }
        }
    }

    // Stop everything: every final SIGTERM exits 0; then read what the
    // workers injected.
    fleet.stop_all().await;
    let mut stop_problems: Vec<String> = fleet.unplanned[unplanned_seen..].to_vec();
    stop_problems.extend(
        fleet
            .final_stops
            .iter()
            .filter(|(_, code)| *code != Some(0))
            .map(|(id, code)| match code {
                Some(code) => format!("{id} exited {code}"),
                None => format!("{id}: no exit in 30 s (killed)"),
            }),
    );
    stop_problems.extend(fleet.panics());
    checks.push(Check {
        name: "final SIGTERMs exited 0",
        ok: stop_problems.is_empty(),
        detail: if stop_problems.is_empty() {
            format!("{} processes", fleet.final_stops.len())
        } else {
            first_problems(&stop_problems)
        },
    });
    let injected = injected_by_workers(&fleet);
    let mut elsewhere: BTreeMap<String, u64> = BTreeMap::new();
    let by_gateway = fleet
        .gateway
        .logs
        .iter()
        .flat_map(|log| injected_by_gateway(log));
    for (kind, count) in by_gateway.chain(
        producer
            .faults
            .injected()
            .into_iter()
            .map(|(k, c)| (k.to_owned(), c)),
    ) {
        *elsewhere.entry(kind).or_default() += count;
    }
    let absent: Vec<&str> = KINDS
        .iter()
        .filter(|kind| injected.get(**kind).copied().unwrap_or(0) == 0)
        .copied()
        .collect();
    checks.push(Check {
        name: "every fault kind injected into workers",
        ok: absent.is_empty(),
        detail: format!(
            "{}{}; producer and gateway: {}",
            KINDS
                .iter()
                .map(|k| format!("{k} {}", injected.get(*k).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", "),
            if absent.is_empty() {
                String::new()
            } else {
                format!("; none: {}", absent.join(", "))
            },
            elsewhere
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });
    let short: Vec<String> = REQUIRED
        .iter()
        .filter(|(action, least)| fleet.done.get(action).copied().unwrap_or(0) < *least)
        .map(|(action, least)| {
            format!(
                "{} {} of {least}",
                action.name(),
                fleet.done.get(action).copied().unwrap_or(0)
            )
        })
        .collect();
    checks.push(Check {
        name: "every kind of action happened",
        ok: short.is_empty(),
        detail: format!(
            "{}{}",
            fleet
                .done
                .iter()
                .map(|(a, n)| format!("{} {n}", a.name()))
                .collect::<Vec<_>>()
                .join(", "),
            if short.is_empty() {
                String::new()
            } else {
                format!("; short: {}", short.join(", "))
            }
        ),
    });

    // The report.
    let caught = sabotaged.iter().all(|(_, caught, _)| *caught);
    let passed = checks.iter().all(|c| c.ok) && caught;
    println!(
        "chaos report: seed {}, {} s of load, {} workers, {:.0} s in all",
        options.seed,
        options.seconds,
        options.workers,
        started.elapsed().as_secs_f64()
    );
    println!("what it did:");
    for event in &fleet.events {
        println!("  {event}");
    }
    println!("what it found:");
    for check in &checks {
        println!(
            "  {:<4} {:<42} {}",
            if check.ok { "ok" } else { "FAIL" },
            check.name,
            check.detail
        );
    }
    if !sabotaged.is_empty() {
        println!("what each sabotage did to its check (after the checks above):");
        for (mode, caught, detail) in &sabotaged {
            println!(
                "  {:<10} {:<13} {detail}",
                if *caught { "caught" } else { "NOT CAUGHT" },
                mode.name()
            );
        }
    }
    println!(
        "producer: {}",
        serde_json::to_string(&producer.metrics).unwrap_or_default()
    );
    let report = serde_json::json!({
        "seed": options.seed,
        "seconds": options.seconds,
        "workers": options.workers,
        "passed": passed,
        "events": fleet.events,
        "actions": fleet.done.iter().map(|(a, n)| (a.name(), *n)).collect::<BTreeMap<_, _>>(),
        "faults_injected": injected,
        "checks": checks.iter().map(|c| serde_json::json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
        "sabotage": sabotaged.iter().map(|(mode, caught, detail)| serde_json::json!({"mode": mode.name(), "caught": caught, "check": detail})).collect::<Vec<_>>(),
        "quiet_seconds": quiet,
    });
    let path = dir.join("report.json");
    let _ = std::fs::write(
        &path,
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    );
    println!(
        "chaos: {}; report {}, logs in {}",
        if passed && sabotaged.is_empty() {
            "passed: no difference".to_owned()
        } else if passed {
            format!(
                "passed: no difference, and each of {} sabotages failed its check",
                sabotaged.len()
            )
        } else {
            format!(
                "FAILED: {} of {} checks{}",
                checks.iter().filter(|c| !c.ok).count(),
                checks.len(),
                if caught {
                    String::new()
                } else {
                    format!(
                        ", {} sabotages not caught",
                        sabotaged.iter().filter(|s| !s.1).count()
                    )
                }
            )
        },
        path.display(),
        dir.display()
    );
    ministack.stop();
    kinesis_mock.stop();
    passed
}

/// The ground truth of both loads, for the checks.
struct Ground {
    /// (poll, voter) -> (option, vote id).
    truth: BTreeMap<(String, String), (String, String)>,
    polls: Vec<tally_core::poll::Poll>,
    expected_counts: BTreeMap<String, BTreeMap<String, u64>>,
    live_poll: String,
    /// Seconds from the end of the load to quiet.
    quiet: f64,
}

/// The checks of what the system stored, against the ground truth.
async fn data_checks(system: &System, ground: &Ground, producer: &ProducerLoad) -> Vec<Check> {
    let mut checks = Vec::new();
    // A read that fails is a failed check of its own, never a difference
    // in the data (which would make a sabotage look caught).
    let mut unread: Vec<String> = Vec::new();
    let polls = &ground.polls;
    let mut counts = BTreeMap::new();
    for poll in polls {
        match system.store.counts(poll).await {
            Ok(found) => {
                counts.insert(poll.id.clone(), found.by_option);
            }
            Err(error) => {
                counts.insert(poll.id.clone(), BTreeMap::new());
                unread.push(format!("counts of {}: {error}", poll.id));
            }
        }
    }
    let differing: Vec<String> = ground
        .expected_counts
        .iter()
        .filter(|(poll, expected)| counts.get(*poll) != Some(expected))
        .map(|(poll, expected)| format!("{poll}: {:?}, expected {expected:?}", counts.get(poll)))
        .collect();
    let total: u64 = ground
        .expected_counts
        .values()
        .flat_map(|o| o.values())
        .sum();
    checks.push(Check {
        name: CHECK_COUNTS,
        ok: differing.is_empty(),
        detail: if differing.is_empty() {
            format!("{} polls, {total} votes", polls.len())
        } else {
            differing.join("; ")
        },
    });

    let votes = system.store.scan_votes().await.unwrap_or_else(|error| {
        unread.push(format!("votes: {error}"));
        Vec::new()
    });
    let stored: BTreeMap<(String, String), (String, String)> = votes
        .iter()
        .map(|v| {
            (
                (v.poll_id.clone(), v.voter_id.clone()),
                (v.option.clone(), v.vote_id.clone()),
            )
        })
        .collect();
    let truth = &ground.truth;
    let missing = truth.keys().filter(|k| !stored.contains_key(*k)).count();
    let extra = stored.keys().filter(|k| !truth.contains_key(*k)).count();
    let other = stored
        .iter()
        .filter(|(k, v)| truth.get(*k).is_some_and(|t| t != *v))
        .count();
    checks.push(Check {
        name: CHECK_VOTES,
        ok: stored == *truth && stored.len() == votes.len(),
        detail: format!(
            "{} items, expected {}: {missing} missing, {extra} extra, {other} another vote, {} doubled",
            votes.len(),
            truth.len(),
            votes.len() - stored.len()
        ),
    });

    // The recount of the votes table, from the scan above, for every poll.
    let mut recounted: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for vote in &votes {
        *recounted
            .entry(vote.poll_id.as_str())
            .or_default()
            .entry(vote.option.as_str())
            .or_default() += 1;
    }
    let recount_differs: Vec<String> = polls
        .iter()
        .filter(|poll| {
            let stored = counts.get(&poll.id);
            poll.options.iter().any(|option| {
                let recount = recounted
                    .get(poll.id.as_str())
                    .and_then(|o| o.get(option.id.as_str()))
                    .copied()
                    .unwrap_or(0);
                stored.and_then(|s| s.get(&option.id)).copied().unwrap_or(0) != recount
            })
        })
        .map(|poll| format!("{}: recount {:?}", poll.id, recounted.get(poll.id.as_str())))
        .collect();
    checks.push(Check {
        name: "recount of the votes table equals counts",
        ok: recount_differs.is_empty(),
        detail: if recount_differs.is_empty() {
            format!("{} polls, {} vote items", polls.len(), votes.len())
        } else {
            recount_differs.join("; ")
        },
    });

    // The operator's own command agrees, on the busiest polls (each audit
    // scans the whole votes table).
    let mut busiest: Vec<(&String, u64)> = ground
        .expected_counts
        .iter()
        .map(|(poll, options)| (poll, options.values().sum::<u64>()))
        .collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let audited: BTreeSet<&String> = busiest
        .iter()
        .take(2)
        .map(|(poll, _)| *poll)
        .chain(std::iter::once(&ground.live_poll))
        .collect();
    let mut audits = Vec::new();
    for poll in polls.iter().filter(|poll| audited.contains(&poll.id)) {
        let output = system
            .command()
            .args(["audit", &poll.id])
            .output()
            .expect("run tally audit");
        if !output.status.success() {
            // The lines naming the differing options, or the error.
            let stdout = String::from_utf8_lossy(&output.stdout);
            let mut said: Vec<&str> = stdout
                .lines()
                .filter(|line| line.contains(" vs recount "))
                .collect();
            let stderr = String::from_utf8_lossy(&output.stderr);
            if said.is_empty() {
                said.extend(stderr.lines().last());
            }
            audits.push(format!(
                "{}: exit {:?}: {}",
                poll.id,
                output.status.code(),
                said.join(" / ")
            ));
        }
    }
    checks.push(Check {
        name: "tally audit finds no difference",
        ok: audits.is_empty(),
        detail: if audits.is_empty() {
            audited
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            audits.join("; ")
        },
    });

    let rejects = system.store.scan_rejects().await.unwrap_or_else(|error| {
        unread.push(format!("rejects: {error}"));
        Vec::new()
    });
    checks.push(check_rejects(producer, &rejects));

    // Every shard processed to its end or its tip, now.
    let stuck = behind_shards(system).await;
    let shards = open_shards(&system.kinesis, &system.stream)
        .await
        .map(|open| open.len())
        .unwrap_or(0);
    let leases = system
        .leases
        .list_leases()
        .await
        .map(|l| l.len())
        .unwrap_or(0);
    checks.push(Check {
        name: CHECK_STUCK,
        ok: stuck.is_empty(),
        detail: if stuck.is_empty() {
            format!(
                "{leases} leases, {shards} open shards, quiet {:.1} s after the load",
                ground.quiet
            )
        } else {
            format!("behind: {}", stuck.join(", "))
        },
    });
    checks.push(Check {
        name: CHECK_READS,
        ok: unread.is_empty(),
        detail: if unread.is_empty() {
            "counts, votes and rejects read".to_owned()
        } else {
            unread.join("; ")
        },
    });
    checks
}

fn graceful_check(fleet: &Fleet) -> Check {
    let bad_stops: Vec<String> = fleet
        .graceful
        .iter()
        .filter(|(_, code, _)| *code != Some(0))
        .map(|(id, code, _)| format!("{id}: {code:?}"))
        .collect();
    Check {
        name: "graceful stops exited 0",
        ok: bad_stops.is_empty(),
        detail: if bad_stops.is_empty() {
            let slowest = fleet.graceful.iter().map(|g| g.2).fold(0.0, f64::max);
            format!("{} stops, slowest {slowest:.1} s", fleet.graceful.len())
        } else {
            bad_stops.join(", ")
        },
    }
}

/// Every kill was followed by all its leases taken by others, and every
/// pause cost the paused worker a lease.
fn effects_check(fleet: &Fleet) -> Check {
    let effects = fleet.effects.lock().expect("lock").clone();
    let failed: Vec<String> = effects
        .iter()
        .filter(|e| e.held == 0 || e.taken_after.is_none())
        .map(|e| {
            if e.held == 0 {
                format!("{} of {}: it held no lease", e.action.name(), e.worker)
            } else {
                format!(
                    "{} of {}: {} leases, {} taken",
                    e.action.name(),
                    e.worker,
                    e.held,
                    if e.action == Action::Kill {
                        "not all"
                    } else {
                        "none"
                    }
                )
            }
        })
        .collect();
    let slowest = |action: Action| {
        effects
            .iter()
            .filter(|e| e.action == action)
            .filter_map(|e| e.taken_after)
            .map(|d| d.as_secs_f64())
            .fold(0.0, f64::max)
    };
    let count = |action: Action| effects.iter().filter(|e| e.action == action).count();
    Check {
        name: "kills and pauses cost their leases",
        ok: failed.is_empty() && !effects.is_empty(),
        detail: if failed.is_empty() {
            format!(
                "{} kills: all leases taken within {:.1} s; {} pauses: a lease taken within {:.1} s",
                count(Action::Kill),
                slowest(Action::Kill),
                count(Action::Pause),
                slowest(Action::Pause)
            )
        } else {
            first_problems(&failed)
        },
    }
}

fn gateway_check(load: &GatewayLoad, voters: u64) -> Check {
    Check {
        name: "gateway voters got definite answers",
        ok: load.problems.is_empty(),
        detail: if load.problems.is_empty() {
            format!(
                "{voters} voters, {} requests, by status {:?}",
                load.requests, load.by_status
            )
        } else {
            first_problems(&load.problems)
        },
    }
}

/// Every request without an answer came while the gateway was down (from
/// its kill to 2 s after it answered again).
fn silence_check(load: &GatewayLoad, fleet: &Fleet) -> Check {
    let windows = fleet.gateway_down.lock().expect("lock").clone();
    let slack = Duration::from_secs(2);
    let outside: Vec<f64> = load
        .no_answers
        .iter()
        .filter(|at| {
            !windows
                .iter()
                .any(|(from, to)| **at >= *from && to.is_none_or(|to| **at <= to + slack))
        })
        .map(|at| at.saturating_duration_since(fleet.started).as_secs_f64())
        .collect();
    Check {
        name: "no answer only while the gateway was down",
        ok: outside.is_empty(),
        detail: if outside.is_empty() {
            format!(
                "{} requests without an answer, all within {} gateway kills",
                load.no_answers.len(),
                windows.len()
            )
        } else {
            format!(
                "{} requests without an answer while the gateway ran, at t+{}",
                outside.len(),
                outside
                    .iter()
                    .take(5)
                    .map(|t| format!("{t:.1}s"))
                    .collect::<Vec<_>>()
                    .join(", t+")
            )
        },
    }
}

/// Breaks the system in one way, behind its back.
async fn sabotage(
    mode: Sabotage,
    system: &System,
    fleet: &mut Fleet,
    ground: &Ground,
    producer: &ProducerLoad,
) -> Result<String, String> {
    use aws_sdk_dynamodb::types::AttributeValue;
    match mode {
        Sabotage::Counter => {
            let poll = ground.polls.last().ok_or("no poll")?;
            let mut counts = system.store.counts(poll).await.map_err(|e| e.to_string())?;
            let option = poll.options[0].id.clone();
            *counts.by_option.entry(option.clone()).or_default() += 1;
            system
                .store
                .set_counts(poll, &counts)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("one vote added to {}/{option}", poll.id))
        }
        Sabotage::DoubledVote => {
            let table = &system.store.names().votes;
            let scan = system
                .dynamodb
                .scan()
                .table_name(table)
                .limit(1)
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            let mut item = scan.items().first().cloned().ok_or("no vote item")?;
            let voter = match item.get("voter_id") {
                Some(AttributeValue::S(voter)) => voter.clone(),
                _ => return Err("a vote item without voter_id".into()),
            };
            item.insert(
                "voter_id".into(),
                AttributeValue::S(format!("{voter}-doubled")),
            );
            system
                .dynamodb
                .put_item()
                .table_name(table)
                .set_item(Some(item))
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            Ok(format!(
                "the vote of {voter} stored again as {voter}-doubled"
            ))
        }
        Sabotage::LostReject => {
            let expected = expected_rejects(producer);
            let origin = expected.expected.keys().min().ok_or("no expected reject")?;
            system
                .dynamodb
                .delete_item()
                .table_name(&system.store.names().rejects)
                .key("position", AttributeValue::S(origin.clone()))
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            Ok(format!("the reject at {origin} deleted"))
        }
        Sabotage::StuckShard => {
            // Control: with every worker running, a record put now is
            // read within `took`; the paused fleet gets three times that,
            // so the check fails because of the pause, not because it
            // looked too soon.
            let took = put_and_wait_read(system).await?;
            for slot in 0..fleet.slots.len() {
                fleet.signal(slot, "-STOP");
            }
            let put = system
                .kinesis
                .put_record()
                .stream_name(&system.stream)
                .partition_key("sabotage")
                .data(aws_sdk_kinesis::primitives::Blob::new(
                    &b"a record no worker reads"[..],
                ))
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            let wait = (took * 3).max(Duration::from_secs(2));
            tokio::time::sleep(wait).await;
            Ok(format!(
                "every worker paused (SIGSTOP), a record put on {} and {:.1} s given (a running fleet read one in {:.1} s)",
                put.shard_id(),
                wait.as_secs_f64(),
                took.as_secs_f64()
            ))
        }
        Sabotage::DeadWorker => {
            let slot = fleet
                .slots
                .iter()
                .position(|slot| slot.child.is_some())
                .ok_or("no worker running")?;
            fleet.signal(slot, "-KILL");
            // Left for the alive check to find: wait until it has exited.
            let deadline = Instant::now() + Duration::from_secs(10);
            while fleet.slots[slot]
                .child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
            {
                if Instant::now() > deadline {
                    return Err("the killed worker did not exit in 10 s".into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(format!("{} killed (SIGKILL)", fleet.slots[slot].id))
        }
    }
}

/// Puts one record and waits until every shard is read to its tip again:
/// how long the running fleet took (at most 60 s).
async fn put_and_wait_read(system: &System) -> Result<Duration, String> {
    let started = Instant::now();
    system
        .kinesis
        .put_record()
        .stream_name(&system.stream)
        .partition_key("sabotage-control")
        .data(aws_sdk_kinesis::primitives::Blob::new(
            &b"a record the running fleet reads"[..],
        ))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    while !behind_shards(system).await.is_empty() {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the running fleet did not read a control record in 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(started.elapsed())
}

/// The shards not yet processed to their end or their tip (or why that
/// could not be read).
async fn behind_shards(system: &System) -> Vec<String> {
    let stream_source = KinesisStream::new(system.kinesis.clone(), &system.stream);
    match tally_worker::close::pending_shards(&stream_source, &system.leases, i64::MAX).await {
        Ok(pending) => pending.into_iter().map(|p| p.shard).collect(),
        Err(error) => vec![format!("(shard check failed: {error})")],
    }
}

/// What the producer load's receipts say `rejects` must hold.
struct ExpectedRejects {
    /// origin -> (reason, raw bytes as stored).
    expected: HashMap<String, (Reason, Vec<u8>)>,
    /// Origins of records that are valid votes.
    valid: BTreeSet<String>,
    /// Records that never had a receipt.
    unplaced: u64,
}

fn expected_rejects(producer: &ProducerLoad) -> ExpectedRejects {
    let mut expected: HashMap<String, (Reason, Vec<u8>)> = HashMap::new();
    let mut valid: BTreeSet<String> = BTreeSet::new();
    let mut unplaced = 0u64;
    for ((put, verdicts), receipt) in producer
        .workload
        .puts
        .iter()
        .zip(&producer.verdicts)
        .zip(&producer.receipts)
    {
        let Some(receipt) = receipt else {
            unplaced += 1;
            continue;
        };
        let datas: Vec<Vec<u8>> = match put {
            Put::Aggregate { .. } => {
                let data = put.data();
                tally_contract::kpl::deaggregate(&data)
                    .map(|records| records.into_iter().map(|r| r.data.to_vec()).collect())
                    .unwrap_or_default()
            }
            _ => vec![put.data().to_vec()],
        };
        for (index, verdict) in verdicts.iter().enumerate() {
            let sub = match put {
                Put::Aggregate { .. } => index as u64,
                _ => receipt.sub_sequence,
            };
            let origin = format!("{}/{}/{sub}", receipt.shard_id, receipt.sequence_number);
            let data = datas.get(index).cloned().unwrap_or_default();
            match verdict {
                Verdict::Rejected(reason) => {
                    let (raw, _) = tally_store::RejectItem::truncate_raw(&data);
                    expected.insert(origin, (*reason, raw));
                }
                _ => {
                    valid.insert(origin);
                }
            }
        }
    }
    ExpectedRejects {
        expected,
        valid,
        unplaced,
    }
}

/// Every record the workload expects rejected is in `rejects` at the
/// position its receipt names, with its reason; any other reject is a copy
/// of such a record (a retried put that had landed).
fn check_rejects(producer: &ProducerLoad, rejects: &[tally_store::RejectItem]) -> Check {
    let by_origin: HashMap<String, Reason> =
        rejects.iter().map(|r| (r.origin.key(), r.reason)).collect();
    let ExpectedRejects {
        expected,
        valid,
        unplaced,
    } = expected_rejects(producer);
    let mut problems = Vec::new();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|(origin, (reason, _))| by_origin.get(*origin) != Some(reason))
        .map(|(origin, _)| origin)
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} expected rejects missing or with another reason (first {})",
            missing.len(),
            missing[0]
        ));
    }
    let copies: HashMap<(Reason, &[u8]), ()> = expected
        .values()
        .map(|(reason, raw)| ((*reason, raw.as_slice()), ()))
        .collect();
    let mut retried = 0u64;
    for reject in rejects {
        let origin = reject.origin.key();
        if expected.contains_key(&origin) {
            continue;
        }
        if valid.contains(&origin) {
            problems.push(format!(
                "a valid vote was rejected at {origin}: {}",
                reject.reason
            ));
        } else if copies.contains_key(&(reject.reason, reject.raw.as_slice())) {
            retried += 1;
        } else {
            problems.push(format!(
                "an unexpected reject at {origin}: {} {}",
                reject.reason, reject.detail
            ));
        }
    }
    if unplaced > 0 {
        problems.push(format!("{unplaced} records never had a receipt"));
    }
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for (reason, _) in expected.values() {
        *by_reason.entry(reason.to_string()).or_default() += 1;
    }
    Check {
        name: CHECK_REJECTS,
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            format!(
                "{} at their positions with their reasons {by_reason:?}; {retried} more are copies put again by retries",
                expected.len()
            )
        } else {
            first_problems(&problems)
        },
    }
}
