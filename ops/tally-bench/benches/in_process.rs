//! The in-process path of the vote pipeline, without I/O: decode and
//! validate each record, first-wins in the batch, counter deltas and the
//! commit plan. Throughput is in votes per second on one core.

use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tally_contract::vote::{decode, encode, Vote};
use tally_core::count::{counter_for, first_wins, plan_commits, Decided, MAX_TRANSACTION_ACTIONS};
use tally_core::poll::{parse_option, Poll, PollStatus};
use tally_lease::{ExtendedSequence, SequenceNumber};

fn polls() -> HashMap<String, Poll> {
    (0..4)
        .map(|number| {
            let poll = Poll {
                id: format!("poll-{number}"),
                question: "Which one?".into(),
                options: ["a", "b", "c", "d", "e", "f"]
                    .iter()
                    .map(|o| parse_option(o).unwrap())
                    .collect(),
                opens_at: Some(0),
                closes_at: None,
                status: PollStatus::Open,
                counter_shards: 16,
                created_at: 0,
            };
            (poll.id.clone(), poll)
        })
        .collect()
}

/// A batch as a shard delivers it: encoded votes, 10% repeats.
fn batch(size: usize) -> Vec<(Vec<u8>, ExtendedSequence)> {
    (0..size)
        .map(|index| {
            let voter = index - index / 10;
            let vote = Vote {
                vote_id: format!("01JD3M6Y3T9Q2V8K4N{index:08}"),
                poll_id: format!("poll-{}", index % 4),
                option: ["a", "b", "c", "d", "e", "f"][index % 6].into(),
                voter_id: format!("u-{voter:09}"),
                cast_at: Some("2026-11-22T10:00:00.123Z".into()),
            };
            let position = ExtendedSequence {
                sequence: SequenceNumber::parse(&format!("4968044790232706801153474763{index:08}"))
                    .unwrap(),
                sub_sequence: 0,
            };
            (encode(&vote), position)
        })
        .collect()
}

fn in_process(records: &[(Vec<u8>, ExtendedSequence)], polls: &HashMap<String, Poll>) -> usize {
    let arrival_ms = 1_795_341_600_000;
    let votes: Vec<Option<Vote>> = records
        .iter()
        .map(|(data, _)| {
            let vote = decode(data).ok()?;
            polls.get(&vote.poll_id)?.check(&vote, arrival_ms).ok()?;
            Some(vote)
        })
        .collect();
    let winners = first_wins(votes.iter().map(|vote| {
        vote.as_ref()
            .map(|v| (v.poll_id.as_str(), v.voter_id.as_str()))
    }));
    let decided: Vec<Decided> = records
        .iter()
        .zip(&votes)
        .zip(&winners)
        .map(|(((_, position), vote), won)| Decided {
            position: position.clone(),
            counted: vote.as_ref().filter(|_| *won).map(|vote| {
                let poll = &polls[&vote.poll_id];
                (
                    counter_for("shardId-000000000001", &poll.id, poll.counter_shards),
                    vote.option.clone(),
                )
            }),
        })
        .collect();
    plan_commits(&decided, MAX_TRANSACTION_ACTIONS).len()
}

fn bench(c: &mut Criterion) {
    let polls = polls();
    let mut group = c.benchmark_group("in_process");
    for size in [500usize, 10_000] {
        let records = batch(size);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("votes", size), &records, |b, records| {
            b.iter(|| in_process(records, &polls))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
