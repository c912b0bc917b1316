//! A seeded, generated vote workload and its ground truth, computed on its
//! own (without any of the pipeline's code): the tests put it on a stream
//! and compare what the workers stored with it; the benchmarks use it as
//! their load.
//!
//! The workload has polls that are open, closed (in the past), not yet
//! open, draft, plus votes for a poll that does not exist; about 10% repeat
//! votes, about 2% malformed records, invalid options, KPL aggregates and a
//! broken aggregate. Every record of a voter goes to one shard in order (a
//! plain record is keyed by its voter, and an aggregated voter's records
//! all travel in one aggregate), so the truth does not depend on how the
//! shards interleave.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_lease::kpl;

use tally_contract::vote::{encode, Reason, Vote};
use tally_core::poll::{parse_option, Poll, PollStatus};

/// What to generate.
#[derive(Clone, Debug)]
pub struct Shape {
    pub seed: u64,
    /// Voters whose votes are put one record each.
    pub voters: usize,
    /// Voters whose votes travel in KPL aggregates.
    pub aggregated_voters: usize,
    /// Votes cast per voter, on average, over the open polls.
    pub votes_per_voter: usize,
    /// A prefix for poll ids (so runs do not collide).
    pub poll_prefix: String,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            seed: 1,
            voters: 1_100,
            aggregated_voters: 200,
            votes_per_voter: 7,
            poll_prefix: "wl".into(),
        }
    }
}

/// One sub-record or record as generated.
#[derive(Clone, Debug)]
pub enum Item {
    Vote(Vote),
    /// Bytes that are not a vote.
    Malformed(Vec<u8>),
}

impl Item {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Item::Vote(vote) => encode(vote),
            Item::Malformed(bytes) => bytes.clone(),
        }
    }
}

/// One Kinesis record to put.
#[derive(Clone, Debug)]
pub enum Put {
    Plain {
        key: String,
        item: Item,
    },
    Aggregate {
        key: String,
        items: Vec<Item>,
    },
    /// Carries the aggregation magic but is broken.
    BadAggregate {
        key: String,
        bytes: Vec<u8>,
    },
}

impl Put {
    pub fn partition_key(&self) -> &str {
        match self {
            Put::Plain { key, .. } | Put::Aggregate { key, .. } | Put::BadAggregate { key, .. } => {
                key
            }
        }
    }

    /// The record's bytes.
    pub fn data(&self) -> Bytes {
        match self {
            Put::Plain { item, .. } => Bytes::from(item.bytes()),
            Put::Aggregate { items, .. } => {
                let records: Vec<kpl::UserRecord> = items
                    .iter()
                    .map(|item| kpl::UserRecord {
                        partition_key: match item {
                            Item::Vote(vote) => vote.voter_id.clone(),
                            Item::Malformed(_) => "malformed".into(),
                        },
                        explicit_hash_key: None,
                        data: Bytes::from(item.bytes()),
                    })
                    .collect();
                Bytes::from(kpl::aggregate(&records))
            }
            Put::BadAggregate { bytes, .. } => Bytes::from(bytes.clone()),
        }
    }

    /// User records in this record.
    pub fn user_records(&self) -> usize {
        match self {
            Put::Aggregate { items, .. } => items.len(),
            _ => 1,
        }
    }
}

/// A generated workload.
#[derive(Clone, Debug)]
pub struct Workload {
    pub polls: Vec<Poll>,
    pub puts: Vec<Put>,
}

/// What the tables must hold after the workload is counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Truth {
    /// poll -> option -> votes (every option of every poll listed).
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// (poll, voter) -> (option, vote_id) of the counted vote.
    pub votes: BTreeMap<(String, String), (String, String)>,
    /// Rejected user records by reason.
    pub rejects: BTreeMap<Reason, u64>,
    /// vote_ids of rejected votes that decoded (sorted, with repeats).
    pub rejected_vote_ids: Vec<String>,
    pub duplicates: u64,
    pub user_records: u64,
}

impl Truth {
    pub fn counted(&self) -> u64 {
        self.votes.len() as u64
    }
    pub fn rejected(&self) -> u64 {
        self.rejects.values().sum()
    }
}

fn poll(id: String, options: &[&str], counter_shards: u32) -> Poll {
    Poll {
        id,
        question: "Who should win?".into(),
        options: options
            .iter()
            .map(|o| parse_option(o).expect("option"))
            .collect(),
        opens_at: None,
        closes_at: None,
        status: PollStatus::Open,
        counter_shards,
        created_at: 0,
    }
}

const PAST: i64 = 1_577_836_800_000; // 2020-01-01
const FUTURE: i64 = 4_102_444_800_000; // 2100-01-01

/// Generates a workload.
pub fn generate(shape: &Shape) -> Workload {
    let mut random = StdRng::seed_from_u64(shape.seed);
    let prefix = &shape.poll_prefix;
    let mut open_a = poll(
        format!("{prefix}-final"),
        &["red=Red team", "blue=Blue team"],
        4,
    );
    open_a.opens_at = Some(PAST);
    let open_b = poll(
        format!("{prefix}-mvp"),
        &["ana", "ben", "cho", "dev", "eli", "fay"],
        16,
    );
    let open_c = poll(format!("{prefix}-yesno"), &["yes", "no"], 1);
    let mut closed = poll(format!("{prefix}-closed"), &["a", "b"], 2);
    closed.opens_at = Some(PAST - 86_400_000);
    closed.closes_at = Some(PAST);
    closed.status = PollStatus::Closed;
    let mut future = poll(format!("{prefix}-future"), &["a", "b"], 2);
    future.opens_at = Some(FUTURE);
    let mut draft = poll(format!("{prefix}-draft"), &["a", "b"], 2);
    draft.status = PollStatus::Draft;
    let mut polls = vec![open_a, open_b, open_c, closed, future, draft];
    for (number, shards) in [2u32, 8, 16, 32, 3].into_iter().enumerate() {
        polls.push(poll(
            format!("{prefix}-q{number}"),
            &["x", "y", "z"],
            shards,
        ));
    }
    let open: Vec<usize> = (0..polls.len())
        .filter(|index| !(3..6).contains(index))
        .collect();
    let unknown_poll = format!("{prefix}-ghost");

    let mut vote_counter = 0u64;
    let mut vote = |random: &mut StdRng, voter: &str, poll_id: &str, option: &str| {
        vote_counter += 1;
        Item::Vote(Vote {
            vote_id: format!("{:08x}{:06}", random.gen::<u32>(), vote_counter),
            poll_id: poll_id.to_owned(),
            option: option.to_owned(),
            voter_id: voter.to_owned(),
            cast_at: Some("2026-11-22T10:00:00.000Z".into()),
        })
    };
    // Each voter's records, in order: a vote in most open polls, some
    // repeated later, and the odd bad record.
    let voting_share = (shape.votes_per_voter as f64 / open.len() as f64).min(1.0);
    let mut per_voter: Vec<(String, Vec<Item>)> = Vec::new();
    for number in 0..shape.voters + shape.aggregated_voters {
        let voter = format!("u-{}-{number:05}", shape.seed);
        let mut items = Vec::new();
        let mut voted: Vec<usize> = Vec::new();
        for &index in &open {
            if random.gen_bool(voting_share) {
                let options = &polls[index].options;
                let option = options[random.gen_range(0..options.len())].id.clone();
                items.push(vote(&mut random, &voter, &polls[index].id, &option));
                voted.push(index);
            }
            if !voted.is_empty() && random.gen_bool(0.1) {
                // A repeat vote in a poll the voter voted in.
                let again = voted[random.gen_range(0..voted.len())];
                let options = &polls[again].options;
                let option = options[random.gen_range(0..options.len())].id.clone();
                items.push(vote(&mut random, &voter, &polls[again].id, &option));
            }
            let roll: f64 = random.gen();
            if roll < 0.02 {
                items.push(Item::Malformed(match random.gen_range(0..4) {
                    0 => b"not json at all".to_vec(),
                    1 => format!(r#"{{"poll_id":"{}","voter_id":"{voter}"}}"#, polls[0].id)
                        .into_bytes(),
                    2 => vec![0xff, 0xfe, 0x00, random.gen()],
                    _ => format!(
                        r#"{{"vote_id":"x y","poll_id":"{}","option":"red","voter_id":"{voter}"}}"#,
                        polls[0].id
                    )
                    .into_bytes(),
                }));
            } else if roll < 0.03 {
                items.push(vote(&mut random, &voter, &polls[0].id, "green"));
            } else if roll < 0.04 {
                items.push(vote(&mut random, &voter, &unknown_poll, "a"));
            } else if roll < 0.055 {
                let index = 3 + random.gen_range(0..3);
                items.push(vote(&mut random, &voter, &polls[index].id, "a"));
            }
        }
        per_voter.push((voter, items));
    }

    // Plain voters' records interleave at random (each voter's in order);
    // aggregated voters travel in groups of up to 8 voters per aggregate.
    let (plain, aggregated) = per_voter.split_at(shape.voters);
    let mut queues: Vec<(String, std::collections::VecDeque<Item>)> = plain
        .iter()
        .map(|(voter, items)| (voter.clone(), items.iter().cloned().collect()))
        .collect();
    let mut puts = Vec::new();
    let mut groups = aggregated.chunks(8);
    while !queues.is_empty() {
        let at = random.gen_range(0..queues.len());
        let (voter, queue) = &mut queues[at];
        let item = queue.pop_front().expect("non-empty queue");
        let key = match &item {
            Item::Vote(_) => voter.clone(),
            Item::Malformed(_) => format!("junk-{}", random.gen::<u16>()),
        };
        puts.push(Put::Plain { key, item });
        if queue.is_empty() {
            queues.swap_remove(at);
        }
        if random.gen_bool(0.03) {
            if let Some(group) = groups.next() {
                puts.push(Put::Aggregate {
                    key: group[0].0.clone(),
                    items: group
                        .iter()
                        .flat_map(|(_, items)| items.iter().cloned())
                        .collect(),
                });
            }
        }
    }
    for group in groups {
        puts.push(Put::Aggregate {
            key: group[0].0.clone(),
            items: group
                .iter()
                .flat_map(|(_, items)| items.iter().cloned())
                .collect(),
        });
    }
    // A broken aggregate: the magic, then garbage (a bad checksum).
    let mut broken = vec![0xF3, 0x89, 0x9A, 0xC2];
    broken.extend((0..40).map(|_| random.gen::<u8>()));
    let position = random.gen_range(0..puts.len());
    puts.insert(
        position,
        Put::BadAggregate {
            key: "broken".into(),
            bytes: broken,
        },
    );
    Workload { polls, puts }
}

impl Workload {
    /// The same workload with every record put twice in a row, as a
    /// producer that retries after a lost response does.
    pub fn doubled(&self) -> Workload {
        Workload {
            polls: self.polls.clone(),
            puts: self
                .puts
                .iter()
                .flat_map(|put| [put.clone(), put.clone()])
                .collect(),
        }
    }

    pub fn user_records(&self) -> usize {
        self.puts.iter().map(Put::user_records).sum()
    }

    /// What happens to each user record, in put order: one list per put
    /// (one entry for a plain or broken record, one per sub-record of an
    /// aggregate), judged from the contract's rules alone. Poll windows are
    /// judged with `now_ms` as every record's arrival (the generated
    /// windows are years away from it).
    pub fn verdicts(&self, now_ms: i64) -> Vec<Vec<Verdict>> {
        let polls: HashMap<&str, &Poll> = self.polls.iter().map(|p| (p.id.as_str(), p)).collect();
        let mut counted: std::collections::HashSet<(String, String)> = Default::default();
        let mut judge = |item: &Item| -> Verdict {
            let vote = match item {
                Item::Malformed(_) => return Verdict::Rejected(Reason::Malformed),
                Item::Vote(vote) => vote,
            };
            let Some(poll) = polls.get(vote.poll_id.as_str()) else {
                return Verdict::Rejected(Reason::UnknownPoll);
            };
            let open = poll.status != PollStatus::Draft
                && poll.opens_at.is_none_or(|t| t <= now_ms)
                && poll.closes_at.is_none_or(|t| now_ms < t);
            if !open {
                return Verdict::Rejected(Reason::PollNotOpen);
            }
            if !poll.options.iter().any(|o| o.id == vote.option) {
                return Verdict::Rejected(Reason::InvalidOption);
            }
            if counted.insert((vote.poll_id.clone(), vote.voter_id.clone())) {
                Verdict::Counted
            } else {
                Verdict::Duplicate
            }
        };
        self.puts
            .iter()
            .map(|put| match put {
                Put::Plain { item, .. } => vec![judge(item)],
                Put::Aggregate { items, .. } => items.iter().map(&mut judge).collect(),
                Put::BadAggregate { .. } => vec![Verdict::Rejected(Reason::BadAggregate)],
            })
            .collect()
    }

    /// The ground truth: [`Workload::verdicts`] summed up.
    pub fn truth(&self, now_ms: i64) -> Truth {
        let mut truth = Truth::default();
        for poll in &self.polls {
            truth.counts.insert(
                poll.id.clone(),
                poll.options.iter().map(|o| (o.id.clone(), 0)).collect(),
            );
        }
        for (put, verdicts) in self.puts.iter().zip(self.verdicts(now_ms)) {
            let items: Vec<Option<&Item>> = match put {
                Put::Plain { item, .. } => vec![Some(item)],
                Put::Aggregate { items, .. } => items.iter().map(Some).collect(),
                Put::BadAggregate { .. } => vec![None],
            };
            for (item, verdict) in items.into_iter().zip(verdicts) {
                truth.user_records += 1;
                let vote = match item {
                    Some(Item::Vote(vote)) => Some(vote),
                    _ => None,
                };
                match (verdict, vote) {
                    (Verdict::Rejected(reason), vote) => {
                        *truth.rejects.entry(reason).or_default() += 1;
                        if let Some(vote) = vote {
                            truth.rejected_vote_ids.push(vote.vote_id.clone());
                        }
                    }
                    (Verdict::Duplicate, _) => truth.duplicates += 1,
                    (Verdict::Counted, Some(vote)) => {
                        truth.votes.insert(
                            (vote.poll_id.clone(), vote.voter_id.clone()),
                            (vote.option.clone(), vote.vote_id.clone()),
                        );
                        *truth
                            .counts
                            .get_mut(&vote.poll_id)
                            .and_then(|options| options.get_mut(&vote.option))
                            .expect("the option exists") += 1;
                    }
                    (Verdict::Counted, None) => unreachable!("only votes are counted"),
                }
            }
        }
        truth.rejected_vote_ids.sort();
        truth
    }
}

/// What happens to one user record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Counted,
    /// A later vote of a voter who already has one in the poll.
    Duplicate,
    Rejected(Reason),
}

/// Compares what the tables hold with the truth; the first differences,
/// described, when they differ.
pub fn compare(
    truth: &Truth,
    counts: &BTreeMap<String, BTreeMap<String, u64>>,
    votes: &[tally_store::VoteItem],
    rejects: &[tally_store::RejectItem],
) -> Result<(), String> {
    let mut problems = Vec::new();
    if counts != &truth.counts {
        problems.push(format!("counts {counts:?}, expected {:?}", truth.counts));
    }
    let stored: BTreeMap<(String, String), (String, String)> = votes
        .iter()
        .map(|vote| {
            (
                (vote.poll_id.clone(), vote.voter_id.clone()),
                (vote.option.clone(), vote.vote_id.clone()),
            )
        })
        .collect();
    if stored.len() != votes.len() {
        problems.push("a (poll, voter) has two vote items".into());
    }
    if stored != truth.votes {
        let missing = truth
            .votes
            .keys()
            .filter(|k| !stored.contains_key(*k))
            .count();
        let extra = stored
            .keys()
            .filter(|k| !truth.votes.contains_key(*k))
            .count();
        let wrong = stored
            .iter()
            .filter(|(k, v)| truth.votes.get(*k).is_some_and(|t| t != *v))
            .count();
        problems.push(format!(
            "votes table: {} items, expected {} ({missing} missing, {extra} extra, {wrong} with another vote)",
            stored.len(),
            truth.votes.len()
        ));
    }
    let mut by_reason: BTreeMap<Reason, u64> = BTreeMap::new();
    for reject in rejects {
        *by_reason.entry(reject.reason).or_default() += 1;
    }
    if by_reason != truth.rejects {
        problems.push(format!(
            "rejects {by_reason:?}, expected {:?}",
            truth.rejects
        ));
    }
    let mut rejected_ids: Vec<String> = rejects.iter().filter_map(|r| r.vote_id.clone()).collect();
    rejected_ids.sort();
    if rejected_ids != truth.rejected_vote_ids {
        problems.push("the rejected votes are not the expected ones".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_workload_has_the_mix_the_tests_need() {
        let workload = generate(&Shape::default());
        let truth = workload.truth(tally_contract::time::now_millis());
        assert!(truth.user_records >= 10_000, "{}", truth.user_records);
        let voters: std::collections::BTreeSet<&String> =
            truth.votes.keys().map(|(_, voter)| voter).collect();
        assert!(voters.len() >= 1_000);
        let share = |n: u64| n as f64 / truth.user_records as f64;
        assert!(
            (0.05..0.15).contains(&share(truth.duplicates)),
            "{} duplicates of {}",
            truth.duplicates,
            truth.user_records
        );
        assert!(
            (0.01..0.04).contains(&share(truth.rejects[&Reason::Malformed])),
            "{:?}",
            truth.rejects
        );
        for reason in [
            Reason::UnknownPoll,
            Reason::PollNotOpen,
            Reason::InvalidOption,
            Reason::BadAggregate,
        ] {
            assert!(
                truth.rejects.get(&reason).copied().unwrap_or(0) > 0,
                "{reason}"
            );
        }
        assert!(workload
            .puts
            .iter()
            .any(|put| matches!(put, Put::Aggregate { .. })));
        assert_eq!(
            truth.counted() + truth.duplicates + truth.rejected(),
            truth.user_records
        );
        // Same seed, same workload.
        assert!(generate(&Shape::default()).truth(0) == workload.truth(0));
        // Put twice: every counted vote's copy is a duplicate, every reject doubles.
        let doubled = workload.doubled().truth(tally_contract::time::now_millis());
        assert!(doubled.votes == truth.votes);
        assert_eq!(doubled.duplicates, truth.duplicates * 2 + truth.counted());
        assert_eq!(doubled.rejected(), truth.rejected() * 2);
    }
}
