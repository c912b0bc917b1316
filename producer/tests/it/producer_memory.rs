//! The producer against an in-memory stream that fails on demand: receipts,
//! retries of failed records only, lost responses, time to live,
//! backpressure, flush and close, aggregation.

use std::sync::Arc;
use std::time::Duration;

use tally_producer::shard_map::{ShardMap, ShardRange};
use tally_producer::sink::{Scripted, SinkError};
use tally_producer::{Aggregation, MemorySink, Producer, ProducerConfig, ProducerError, Record};

fn shards(count: u128) -> Vec<ShardRange> {
    ShardMap::even(count).ranges().to_vec()
}

fn record(n: usize) -> Record {
    Record::new(
        format!("key-{}", n % 37),
        format!("record-{n}").into_bytes(),
    )
}

fn data_of(entry: &tally_producer::batch::Entry) -> Vec<Vec<u8>> {
    if entry.aggregated {
        tally_contract::kpl::deaggregate(&entry.data)
            .unwrap()
            .into_iter()
            .map(|r| r.data.to_vec())
            .collect()
    } else {
        vec![entry.data.to_vec()]
    }
}

/// Every user record on the stream, in stream order.
fn stored(sink: &MemorySink) -> Vec<Vec<u8>> {
    sink.stored()
        .iter()
        .flat_map(|(_, entry)| data_of(entry))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn failed_records_and_only_they_are_put_again() {
    let sink = MemorySink::with_shards(shards(4));
    sink.script(Scripted::FailEntries(vec![1, 3, 4]));
    sink.script(Scripted::Fail(SinkError::Throttled("slow down".into())));
    let producer = Producer::start(Arc::new(sink.clone()), ProducerConfig::default());
    let mut receipts = Vec::new();
    for n in 0..10 {
        receipts.push(producer.send(record(n)).await.unwrap());
    }
    producer.flush().await.unwrap();
    let mut attempts = Vec::new();
    for receipt in receipts {
        let receipt = receipt.await.unwrap();
        assert!(receipt.shard_id.starts_with("shardId-"));
        attempts.push(receipt.attempts);
    }
    // Records 1, 3, 4 failed once, then the whole next call was throttled.
    assert_eq!(attempts, vec![1, 3, 1, 3, 3, 1, 1, 1, 1, 1]);
    let mut on_stream = stored(&sink);
    on_stream.sort();
    let mut sent: Vec<Vec<u8>> = (0..10)
        .map(|n| format!("record-{n}").into_bytes())
        .collect();
    sent.sort();
    assert_eq!(on_stream, sent, "every record once, no duplicate");
    let metrics = producer.metrics();
    assert_eq!(
        metrics
            .retried_records
            .load(std::sync::atomic::Ordering::Relaxed),
        6
    );
    assert!(metrics.throttles.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    assert_eq!(metrics.buffered_records(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_lost_response_is_the_only_source_of_duplicates() {
    let sink = MemorySink::with_shards(shards(2));
    sink.script(Scripted::Lose);
    let producer = Producer::start(Arc::new(sink.clone()), ProducerConfig::default());
    let receipts: Vec<_> = futures_join((0..5).map(record), &producer).await;
    producer.flush().await.unwrap();
    for receipt in receipts {
        assert_eq!(receipt.await.unwrap().attempts, 2);
    }
    assert_eq!(
        stored(&sink).len(),
        10,
        "the lost call's records are on the stream twice"
    );
}

async fn futures_join(
    records: impl Iterator<Item = Record>,
    producer: &Producer,
) -> Vec<tally_producer::ReceiptFuture> {
    let mut receipts = Vec::new();
    for record in records {
        receipts.push(producer.send(record).await.unwrap());
    }
    receipts
}

#[tokio::test(start_paused = true)]
async fn records_past_their_time_to_live_fail_with_the_last_error() {
    let sink = MemorySink::with_shards(shards(1));
    for _ in 0..1000 {
        sink.script(Scripted::Fail(SinkError::Unavailable("503".into())));
    }
    let config = ProducerConfig {
        record_ttl: Duration::from_secs(2),
        ..ProducerConfig::default()
    };
    let producer = Producer::start(Arc::new(sink.clone()), config);
    let receipt = producer.send(record(1)).await.unwrap();
    match receipt.await {
        Err(ProducerError::Expired {
            attempts,
            last_error,
        }) => {
            assert!(attempts >= 2, "{attempts}");
            assert!(last_error.contains("503"), "{last_error}");
        }
        other => panic!("expected expiry, got {other:?}"),
    }
    // A refusal for good fails at once.
    let sink = MemorySink::with_shards(shards(1));
    sink.script(Scripted::Fail(SinkError::Fatal("no such stream".into())));
    let producer = Producer::start(Arc::new(sink), ProducerConfig::default());
    let refused = producer.send(record(1)).await.unwrap().await.unwrap_err();
    assert!(matches!(refused, ProducerError::Refused(ref text) if text.contains("no such stream")));
}

#[tokio::test(start_paused = true)]
async fn the_buffer_is_bounded_and_close_loses_nothing() {
    let sink = MemorySink::with_shards(shards(2));
    let config = ProducerConfig {
        max_buffered_records: 3,
        linger: Duration::from_secs(3600),
        ..ProducerConfig::default()
    };
    let producer = Producer::start(Arc::new(sink.clone()), config);
    let mut receipts = Vec::new();
    for n in 0..3 {
        receipts.push(producer.try_send(record(n)).unwrap());
    }
    assert_eq!(
        producer.try_send(record(3)).err(),
        Some(ProducerError::BufferFull("records"))
    );
    // `send` waits for room: it completes once the buffer is flushed.
    let waiting = tokio::spawn({
        let producer = producer.clone();
        async move {
            match producer.send(record(3)).await {
                Ok(receipt) => receipt.await,
                Err(error) => Err(error),
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        !waiting.is_finished(),
        "send waits while the buffer is full"
    );
    producer.close().await.unwrap();
    for receipt in receipts {
        receipt.await.unwrap();
    }
    // The waiting send got room when the first three were put, or the
    // producer closed under it: either way it has an outcome.
    let outcome = waiting.await.unwrap();
    assert!(
        matches!(outcome, Ok(_) | Err(ProducerError::Closed)),
        "{outcome:?}"
    );
    assert_eq!(
        producer.send(record(9)).await.err(),
        Some(ProducerError::Closed)
    );
    assert!(producer.try_send(Record::new("", "x")).is_err());
    for hash in ["-1", "abc", "", "340282366920938463463374607431768211456"] {
        let mut hostile = Record::new("k", "x");
        hostile.explicit_hash_key = Some(hash.into());
        assert!(
            matches!(
                producer.try_send(hostile),
                Err(ProducerError::InvalidKey(_))
            ),
            "explicit hash key {hash:?} accepted"
        );
    }
    let too_big = Record::new("k", vec![0u8; 1024 * 1024]);
    assert!(matches!(
        producer.try_send(too_big),
        Err(ProducerError::TooLarge(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn aggregation_packs_records_per_shard_and_receipts_name_sub_records() {
    let sink = MemorySink::with_shards(shards(4));
    let config = ProducerConfig {
        aggregation: Some(Aggregation::default()),
        ..ProducerConfig::default()
    };
    let producer = Producer::start(Arc::new(sink.clone()), config);
    let receipts = futures_join((0..400).map(record), &producer).await;
    producer.flush().await.unwrap();
    let mut subs = std::collections::BTreeSet::new();
    for receipt in receipts {
        let receipt = receipt.await.unwrap();
        subs.insert((receipt.sequence_number, receipt.sub_sequence));
    }
    assert_eq!(subs.len(), 400, "each record has its own place");
    let entries = sink.stored();
    assert!(
        entries.len() <= 8,
        "{} Kinesis records for 400",
        entries.len()
    );
    assert!(producer.metrics().aggregation_ratio() > 40.0);
    // Every aggregate landed in the shard its records predict.
    for (shard, entry) in &entries {
        for user in tally_contract::kpl::deaggregate(&entry.data).unwrap() {
            let hash = tally_producer::shard_map::hash_key(&user.partition_key);
            let range = shards(4)
                .into_iter()
                .find(|r| r.start <= hash && hash <= r.end)
                .unwrap();
            assert_eq!(&range.shard_id, shard);
        }
    }
    // Per key, stream order is send order.
    let on_stream = stored(&sink);
    for key in 0..37 {
        let order: Vec<usize> = on_stream
            .iter()
            .map(|data| {
                String::from_utf8(data.clone()).unwrap()[7..]
                    .parse::<usize>()
                    .unwrap()
            })
            .filter(|n| n % 37 == key)
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "key {key}: {order:?}"
        );
    }
}
