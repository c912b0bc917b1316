//! The producer SDK against Kinesis on ministack, through the fault layer:
//! partial PutRecords failures, throttling, 5xx and lost responses. Every
//! record sent is on the stream; the only duplicates are records of calls
//! whose response was lost (which no producer can avoid).

use std::collections::BTreeMap;
use std::sync::Arc;

use tally_faults::Faults;
use tally_producer::{Aggregation, KinesisSink, Producer, ProducerConfig, Record};
use tally_testkit::emulators::{create_stream, sdk_config, unique_name, Emulator, EmulatorKind};

/// Every user record on the stream (de-aggregated), as text.
async fn read_all(client: &aws_sdk_kinesis::Client, stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    for shard in shards.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .map(str::to_owned);
        while let Some(current) = iterator {
            let page = client
                .get_records()
                .shard_iterator(current)
                .send()
                .await
                .unwrap();
            for record in page.records() {
                let data = record.data().as_ref();
                if tally_contract::kpl::is_aggregate(data) {
                    for user in tally_contract::kpl::deaggregate(data).unwrap() {
                        out.push(String::from_utf8(user.data.to_vec()).unwrap());
                    }
                } else {
                    out.push(String::from_utf8(data.to_vec()).unwrap());
                }
            }
            if page.records().is_empty() && page.millis_behind_latest() == Some(0) {
                break;
            }
            iterator = page.next_shard_iterator().map(str::to_owned);
        }
    }
    out
}

async fn run(aggregate: bool, seed: u64) {
    let endpoint = Emulator::shared(EmulatorKind::Ministack).endpoint.clone();
    let config = sdk_config(&endpoint).await;
    let plain = aws_sdk_kinesis::Client::new(&config);
    let stream = unique_name("producer");
    create_stream(&plain, &stream, 4).await;
    let faults = Arc::new(
        Faults::parse(
            "PutRecords:partial:0.3,PutRecords:throttle:0.1,PutRecords:5xx:0.05,PutRecords:lost:0.05,ListShards:5xx:0.2",
            seed,
        )
        .unwrap(),
    );
    let faulty = tally_faults::wrap_config(config, &faults);
    let client = aws_sdk_kinesis::Client::new(&faulty);
    let producer = Producer::start(
        Arc::new(KinesisSink::new(client, &stream)),
        ProducerConfig {
            aggregation: aggregate.then(|| Aggregation {
                max_bytes: 1024,
                ..Aggregation::default()
            }),
            // Small calls: many calls, so every fault is drawn.
            max_records_per_call: if aggregate { 5 } else { 50 },
            min_backoff: std::time::Duration::from_millis(10),
            max_backoff: std::time::Duration::from_millis(200),
            ..ProducerConfig::default()
        },
    );
    let sent: Vec<String> = (0..3000).map(|n| format!("record-{n:05}")).collect();
    let mut receipts = Vec::new();
    for (n, data) in sent.iter().enumerate() {
        let record = Record::new(format!("key-{}", n % 101), data.clone().into_bytes());
        receipts.push(producer.send(record).await.unwrap());
    }
    producer.close().await.unwrap();
    for receipt in receipts {
        if let Err(error) = receipt.await {
            panic!(
                "a record was not put: {error}; producer {}; faults {:?}",
                producer.metrics().snapshot(),
                faults.injected()
            );
        }
    }
    let injected: BTreeMap<&str, u64> = faults.injected().into_iter().collect();
    // The plain run makes enough calls for every kind to be drawn; the
    // aggregated one makes a dozen, too few for the rarer kinds.
    let kinds: &[&str] = if aggregate {
        &["partial", "throttle"]
    } else {
        &["partial", "throttle", "5xx", "lost"]
    };
    for kind in kinds {
        assert!(injected[*kind] > 0, "{kind} injected: {injected:?}");
    }
    let read = read_all(&plain, &stream).await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for data in &read {
        *counts.entry(data.as_str()).or_default() += 1;
    }
    for data in &sent {
        assert!(
            counts.contains_key(data.as_str()),
            "{data} is not on the stream"
        );
    }
    assert_eq!(counts.len(), sent.len(), "nothing else is on the stream");
    let duplicates = read.len() - sent.len();
    if injected["lost"] == 0 {
        assert_eq!(duplicates, 0);
    }
    // A lost response duplicates at most the records of that one call:
    // its Kinesis records, times the user records an aggregate of at most
    // 1,024 bytes can hold (each at least 12 bytes of data).
    let per_call: u64 = if aggregate { 5 * 1024 / 12 } else { 50 };
    assert!(
        duplicates as u64 <= injected["lost"] * per_call,
        "{duplicates} duplicates from {} lost responses of at most {per_call} records",
        injected["lost"]
    );
    let metrics = producer.metrics();
    assert!(
        metrics
            .retried_records
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    if aggregate {
        assert!(
            metrics.aggregation_ratio() > 5.0,
            "{}",
            metrics.aggregation_ratio()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_the_stream_through_faults() {
    run(false, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aggregated_record_reaches_the_stream_through_faults() {
    run(true, 11).await;
}
