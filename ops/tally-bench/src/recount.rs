//! `recount [--votes N] [--segments S] [--concurrency C]`: seeds N votes
//! (default 1,000,000) into a `votes` table on the local stack, 80% of
//! them for the poll recounted and the rest for two others, then runs the
//! recount of `tally finalize` and `tally audit` (a parallel scan): items
//! per second, elapsed time, and a check that it counted exactly the
//! seeded votes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use futures::StreamExt;
use tally_store::dynamo::{DynamoVoteStore, TableNames};
use tally_store::prelude::*;
use tally_testkit::emulators::{sdk_config, unique_name};
use tally_worker::close::{recount as run_recount, ScanPlan, ScanProgress};

use crate::Stack;

fn s(text: impl Into<String>) -> AttributeValue {
    AttributeValue::S(text.into())
}

pub async fn recount(votes: usize, segments: u32, concurrency: usize) {
    let stack = Stack::new().await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk_config(&stack.endpoint).await);
    let prefix = format!("{}-", unique_name("r"));
    let names = TableNames::with_prefix(&prefix, format!("{prefix}leases"));
    let store = DynamoVoteStore::new(dynamodb.clone(), names.clone());
    store.ensure_tables().await.unwrap();

    eprintln!("bench: seeding {votes} votes into {}", names.votes);
    let seeded = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let chunks: Vec<Vec<usize>> = (0..votes)
        .collect::<Vec<_>>()
        .chunks(25)
        .map(<[usize]>::to_vec)
        .collect();
    let expected_target = (0..votes).filter(|index| index % 5 != 0).count() as u64;
    futures::stream::iter(chunks)
        .for_each_concurrent(32, |chunk| {
            let (dynamodb, table, seeded) = (dynamodb.clone(), names.votes.clone(), seeded.clone());
            async move {
                let requests: Vec<WriteRequest> = chunk
                    .iter()
                    .map(|index| {
                        let poll = match index % 10 {
                            0 => "other-1",
                            5 => "other-2",
                            _ => "target",
                        };
                        let item = HashMap::from([
                            ("voter_id".to_owned(), s(format!("voter-{index:09}"))),
                            ("poll_id".to_owned(), s(poll)),
                            ("option".to_owned(), s(["red", "blue", "green"][index % 3])),
                            (
                                "vote_id".to_owned(),
                                s(format!("{index:012x}{:016x}", index * 7919)),
                            ),
                            (
                                "origin".to_owned(),
                                s(format!(
                                    "shardId-00000000000{}/4963{index:052}/0",
                                    index % 4
                                )),
                            ),
                            (
                                "arrival_ms".to_owned(),
                                AttributeValue::N("1795341600000".into()),
                            ),
                        ]);
                        WriteRequest::builder()
                            .put_request(
                                PutRequest::builder().set_item(Some(item)).build().unwrap(),
                            )
                            .build()
                    })
                    .collect();
                let mut pending = Some(requests);
                while let Some(batch) = pending.take() {
                    let answer = dynamodb
                        .batch_write_item()
                        .request_items(&table, batch)
                        .send()
                        .await
                        .expect("batch write");
                    pending = answer
                        .unprocessed_items()
                        .and_then(|items| items.get(&table))
                        .filter(|rest| !rest.is_empty())
                        .cloned();
                }
                let done =
                    seeded.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                if done % 100_000 < 25 {
                    eprintln!("bench: {done} votes seeded");
                }
            }
        })
        .await;
    let seed_seconds = started.elapsed().as_secs_f64();

    eprintln!("bench: recounting poll target ({segments} segments, {concurrency} at once)");
    let progress = Arc::new(ScanProgress::default());
    let reporter = tally_worker::close::report_progress(progress.clone(), segments);
    let started = Instant::now();
    let counted = run_recount(
        &store,
        "target",
        ScanPlan {
            segments,
            concurrency,
        },
        &progress,
    )
    .await
    .expect("recount");
    let seconds = started.elapsed().as_secs_f64();
    reporter.abort();
    let scanned = progress.items.load(Ordering::Relaxed);
    assert_eq!(
        counted.votes, expected_target,
        "the recount counts exactly the seeded votes"
    );

    println!("recount benchmark (ministack on this machine, release build)");
    println!("  {:<48} {:>14}", "votes in the table", votes);
    println!(
        "  {:<48} {:>14.0}",
        "seeding rate (BatchWriteItem, votes/s)",
        votes as f64 / seed_seconds
    );
    println!("  {:<48} {:>14}", "items scanned", scanned);
    println!(
        "  {:<48} {:>14}",
        "votes counted for the poll (= seeded)", counted.votes
    );
    println!("  {:<48} {:>14.1}", "recount time (s)", seconds);
    println!(
        "  {:<48} {:>14.0}",
        "recount rate (items scanned per second)",
        scanned as f64 / seconds
    );
    println!(
        "  {:<48} {:>14}",
        "segments / at once",
        format!("{segments} / {concurrency}")
    );
    println!("  {:<48} {:>14}", "digest", &counted.digest[..16]);
    println!(
        "  {:<48} {:>14.1}",
        "300 million votes at this rate (hours)",
        300e6 / (scanned as f64 / seconds) / 3600.0
    );
}
