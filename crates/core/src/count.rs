//! The pure decisions of exactly-once counting: which record of a batch
//! wins for a (poll, voter), which counter item a shard adds to, how the
//! counted votes become deltas, and how a batch's commit is cut into
//! transactions of at most 100 actions at record boundaries. No I/O.

use std::collections::{BTreeMap, HashSet};

use tally_contract::stream::ExtendedSequence;

/// DynamoDB's limit on actions in one `TransactWriteItems`.
pub const MAX_TRANSACTION_ACTIONS: usize = 100;

/// One counter item of a poll's tallies.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    pub poll_id: String,
    /// `0..poll.counter_shards`.
    pub shard: u32,
}

impl CounterKey {
    /// The item's partition key, e.g. `f1-2026#007`.
    pub fn item_key(&self) -> String {
        format!("{}#{:03}", self.poll_id, self.shard)
    }
}

/// Per counter item, per option, how many votes to add.
pub type Deltas = BTreeMap<CounterKey, BTreeMap<String, u64>>;

/// FNV-1a, 64 bits: a hash that is the same in every process and release.
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The counter item a Kinesis shard adds its votes for `poll_id` to. Each
/// shard always uses the same item of a poll, so a counter item takes the
/// commits of about `shards / counter_shards` Kinesis shards.
pub fn counter_for(kinesis_shard: &str, poll_id: &str, counter_shards: u32) -> CounterKey {
    debug_assert!(counter_shards > 0);
    CounterKey {
        poll_id: poll_id.to_owned(),
        shard: (stable_hash(kinesis_shard) % u64::from(counter_shards.max(1))) as u32,
    }
}

/// Marks, for each record of a batch in stream order, whether it is the
/// first valid one for its (poll, voter): `None` entries (rejected
/// records) never win and never use up a voter's vote.
pub fn first_wins<'a>(keys: impl IntoIterator<Item = Option<(&'a str, &'a str)>>) -> Vec<bool> {
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    keys.into_iter()
        .map(|key| key.is_some_and(|key| seen.insert(key)))
        .collect()
}

/// One record of a batch as the commit planner sees it.
#[derive(Clone, Debug)]
pub struct Decided {
    pub position: ExtendedSequence,
    /// The counter item and option when the record was counted.
    pub counted: Option<(CounterKey, String)>,
}

/// One transaction: counter deltas and the checkpoint that covers every
/// record up to and including `checkpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitPart {
    pub deltas: Deltas,
    pub checkpoint: ExtendedSequence,
    /// Records covered by this part.
    pub records: usize,
    /// Votes counted in this part.
    pub votes: u64,
}

impl CommitPart {
    /// Actions in the transaction: one update per counter item, plus the
    /// checkpoint.
    pub fn actions(&self) -> usize {
        self.deltas.len() + 1
    }
}

/// Sums counted votes into deltas.
pub fn deltas<'a>(counted: impl IntoIterator<Item = &'a (CounterKey, String)>) -> Deltas {
    let mut deltas = Deltas::new();
    for (key, option) in counted {
        *deltas
            .entry(key.clone())
            .or_default()
            .entry(option.clone())
            .or_default() += 1;
    }
    deltas
}

/// Cuts a batch (in stream order) into commit parts of at most
/// `max_actions` actions each, at record boundaries: a part ends before the
/// record that would need one counter item too many, and its checkpoint is
/// the last record it covers. An empty batch has no parts.
pub fn plan_commits(records: &[Decided], max_actions: usize) -> Vec<CommitPart> {
    assert!(
        max_actions >= 2,
        "a part needs a counter and the checkpoint"
    );
    let max_items = max_actions - 1;
    let mut parts = Vec::new();
    let mut current = Deltas::new();
    let mut covered = 0usize;
    let mut votes = 0u64;
    let mut last: Option<&ExtendedSequence> = None;
    for record in records {
        if let Some((key, option)) = &record.counted {
            if !current.contains_key(key) && current.len() == max_items {
                parts.push(CommitPart {
                    deltas: std::mem::take(&mut current),
                    checkpoint: last.expect("a full part covers a record").clone(),
                    records: std::mem::take(&mut covered),
                    votes: std::mem::take(&mut votes),
                });
            }
            *current
                .entry(key.clone())
                .or_default()
                .entry(option.clone())
                .or_default() += 1;
            votes += 1;
        }
        covered += 1;
        last = Some(&record.position);
    }
    if let Some(last) = last {
        parts.push(CommitPart {
            deltas: current,
            checkpoint: last.clone(),
            records: covered,
            votes,
        });
    }
    parts
}

/// The `ClientRequestToken` of a commit: the same for a retry of the same
/// commit (same lease, same fence, same range, same deltas), different
/// for anything else. 32 hex characters (DynamoDB allows 36).
pub fn commit_token(lease_key: &str, counter: u64, previous: &str, part: &CommitPart) -> String {
    use md5::{Digest, Md5};
    let mut hasher = Md5::new();
    hasher.update(lease_key.as_bytes());
    hasher.update(counter.to_be_bytes());
    hasher.update(previous.as_bytes());
    hasher.update(part.checkpoint.sequence.as_str().as_bytes());
    hasher.update(part.checkpoint.sub_sequence.to_be_bytes());
    for (key, options) in &part.deltas {
        hasher.update(key.item_key().as_bytes());
        for (option, count) in options {
            hasher.update(b"\0");
            hasher.update(option.as_bytes());
            hasher.update(count.to_be_bytes());
        }
        hasher.update(b"\n");
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tally_contract::stream::SequenceNumber;

    fn position(sequence: u64, sub: u64) -> ExtendedSequence {
        ExtendedSequence {
            sequence: SequenceNumber::parse(&sequence.to_string()).unwrap(),
            sub_sequence: sub,
        }
    }

    #[test]
    fn first_valid_record_wins_and_rejects_do_not_use_the_vote() {
        let keys = vec![
            None,              // rejected vote by u1
            Some(("p", "u1")), // u1's first valid vote
            Some(("p", "u1")), // duplicate in the batch
            Some(("q", "u1")), // another poll
            Some(("p", "u2")),
            None,
        ];
        assert_eq!(
            first_wins(keys),
            vec![false, true, false, true, true, false]
        );
    }

    #[test]
    fn counter_items_are_stable_and_in_range() {
        let key = counter_for("shardId-000000000007", "p", 16);
        assert_eq!(key, counter_for("shardId-000000000007", "p", 16));
        assert!(key.shard < 16);
        assert_eq!(counter_for("any", "p", 1).shard, 0);
        // Shards spread over the items.
        let used: HashSet<u32> = (0..64)
            .map(|n| counter_for(&format!("shardId-{n:012}"), "p", 16).shard)
            .collect();
        assert!(used.len() >= 12, "{used:?}");
        assert_eq!(key.item_key(), format!("p#{:03}", key.shard));
    }

    #[test]
    fn a_batch_over_99_counter_items_is_cut_at_record_boundaries() {
        let records: Vec<Decided> = (0..250u64)
            .map(|n| Decided {
                position: position(n + 1, 0),
                counted: Some((
                    CounterKey {
                        poll_id: format!("poll-{n}"),
                        shard: 0,
                    },
                    "a".into(),
                )),
            })
            .collect();
        let parts = plan_commits(&records, MAX_TRANSACTION_ACTIONS);
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts.iter().map(CommitPart::actions).collect::<Vec<_>>(),
            vec![100, 100, 53]
        );
        assert_eq!(parts[0].checkpoint, position(99, 0));
        assert_eq!(parts[2].checkpoint, position(250, 0));
    }

    #[test]
    fn tokens_differ_for_different_commits_and_repeat_for_the_same() {
        let part = plan_commits(
            &[Decided {
                position: position(5, 0),
                counted: Some((counter_for("s", "p", 4), "a".into())),
            }],
            100,
        )
        .remove(0);
        let token = commit_token("s", 3, "TRIM_HORIZON", &part);
        assert_eq!(token.len(), 32);
        assert_eq!(token, commit_token("s", 3, "TRIM_HORIZON", &part));
        assert_ne!(token, commit_token("s", 4, "TRIM_HORIZON", &part));
        let mut other = part.clone();
        other
            .deltas
            .values_mut()
            .next()
            .unwrap()
            .insert("a".into(), 2);
        assert_ne!(token, commit_token("s", 3, "TRIM_HORIZON", &other));
    }

    fn batch() -> impl Strategy<Value = Vec<Decided>> {
        proptest::collection::vec(
            (0u32..40, 0u32..3, proptest::bool::weighted(0.8), 0u64..3),
            0..400,
        )
        .prop_map(|rows| {
            let mut sequence = 0;
            rows.into_iter()
                .map(|(poll, option, counted, subs)| {
                    sequence += 1 + subs;
                    Decided {
                        position: position(sequence, subs),
                        counted: counted.then(|| {
                            (
                                CounterKey {
                                    poll_id: format!("p{poll}"),
                                    shard: poll % 3,
                                },
                                format!("o{option}"),
                            )
                        }),
                    }
                })
                .collect()
        })
    }

    proptest! {
        /// Whatever the batch, the parts respect the action limit, cover
        /// every record once in order, end at the batch's last record, and
        /// add up to exactly the batch's deltas.
        #[test]
        fn parts_cover_the_batch_exactly(records in batch(), max_actions in 2usize..12) {
            let parts = plan_commits(&records, max_actions);
            if records.is_empty() {
                prop_assert!(parts.is_empty());
                return Ok(());
            }
            prop_assert!(parts.iter().all(|part| part.actions() <= max_actions));
            prop_assert_eq!(parts.iter().map(|part| part.records).sum::<usize>(), records.len());
            for pair in parts.windows(2) {
                prop_assert!(pair[0].checkpoint < pair[1].checkpoint);
            }
            // Each checkpoint is the position of the part's last record.
            let mut covered = 0;
            for part in &parts {
                covered += part.records;
                prop_assert_eq!(&part.checkpoint, &records[covered - 1].position);
            }
            let mut summed = Deltas::new();
            for part in &parts {
                for (key, options) in &part.deltas {
                    for (option, count) in options {
                        *summed.entry(key.clone()).or_default().entry(option.clone()).or_default() += count;
                    }
                }
            }
            let counted: Vec<(CounterKey, String)> = records.iter().filter_map(|r| r.counted.clone()).collect();
            prop_assert_eq!(summed, deltas(&counted));
            prop_assert_eq!(parts.iter().map(|p| p.votes).sum::<u64>(), counted.len() as u64);
        }

        /// First-wins keeps exactly one winner per distinct valid key, and it
        /// is the key's first occurrence.
        #[test]
        fn one_winner_per_key(keys in proptest::collection::vec(proptest::option::weighted(0.9, (0u8..5, 0u8..20)), 0..200)) {
            let owned: Vec<Option<(String, String)>> = keys.iter().map(|k| k.map(|(p, v)| (p.to_string(), v.to_string()))).collect();
            let wins = first_wins(owned.iter().map(|k| k.as_ref().map(|(p, v)| (p.as_str(), v.as_str()))));
            let mut seen = HashSet::new();
            for (key, won) in owned.iter().zip(&wins) {
                match key {
                    None => prop_assert!(!won),
                    Some(key) => prop_assert_eq!(*won, seen.insert(key.clone())),
                }
            }
        }
    }
}
