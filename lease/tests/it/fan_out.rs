//! Enhanced fan-out through the real AWS SDK on both emulators, over plain
//! HTTP (HTTP/1.1, the event stream as a chunked body): every record once
//! and in order, across a connection cut mid-stream and across the end of
//! a shard that was split while it was read.
//!
//! A small TCP proxy stands between the SDK and the emulator so that a
//! test can cut every open connection (a dropped subscription).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use tally_lease::metrics::Metrics;
use tally_lease::reader::{FanOut, FanOutReader, ShardReader};
use tally_lease::stream::{Page, StreamSource};
use tally_lease::testing::{
    create_stream, sdk_config, unique_name, wait_stream_active, Emulator, EmulatorKind,
};
use tally_lease::{KinesisStream, ShardId, StartPosition};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Forwards loopback TCP connections to `target`; [`CutProxy::cut`] drops
/// every connection open at that moment.
struct CutProxy {
    endpoint: String,
    generation: Arc<std::sync::Mutex<CancellationToken>>,
}

impl CutProxy {
    async fn start(target: &str) -> Self {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let generation = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let current = generation.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let cut = current.lock().unwrap().clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        Self {
            endpoint,
            generation,
        }
    }

    fn cut(&self) {
        let mut slot = self.generation.lock().unwrap();
        slot.cancel();
        *slot = CancellationToken::new();
    }
}

struct Setup {
    kinesis: aws_sdk_kinesis::Client,
    stream: KinesisStream,
    name: String,
}

impl Setup {
    async fn new(kind: EmulatorKind, endpoint: &str, shards: i32) -> Self {
        let direct = sdk_config(&Emulator::shared(kind).endpoint).await;
        let kinesis = aws_sdk_kinesis::Client::new(&direct);
        let name = unique_name("fanout");
        create_stream(&kinesis, &name, shards).await;
        // The reader's client goes through `endpoint` (the proxy).
        let through = aws_sdk_kinesis::Client::new(&sdk_config(endpoint).await);
        Self {
            stream: KinesisStream::new(through, &name),
            kinesis,
            name,
        }
    }

    async fn put(&self, from: usize, to: usize) {
        let entries: Vec<PutRecordsRequestEntry> = (from..to)
            .map(|index| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("key-{index}"))
                    .data(Blob::new(format!("record-{index}")))
                    .build()
                    .unwrap()
            })
            .collect();
        tally_lease::testing::put_records(&self.kinesis, &self.name, entries).await;
    }

    async fn shards(&self) -> Vec<aws_sdk_kinesis::types::Shard> {
        let listed = self
            .kinesis
            .list_shards()
            .stream_name(&self.name)
            .send()
            .await
            .unwrap();
        listed.shards().to_vec()
    }
}

fn indexes(page: &Page) -> Vec<usize> {
    page.records
        .iter()
        .map(|r| {
            std::str::from_utf8(&r.data)
                .unwrap()
                .trim_start_matches("record-")
                .parse()
                .unwrap()
        })
        .collect()
}

/// Reads pages until `want` records arrived (or the shard ended).
async fn read_until(reader: &mut FanOutReader, got: &mut Vec<usize>, want: usize) -> Option<Page> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < want {
        let page = tokio::time::timeout_at(deadline, reader.next_page())
            .await
            .unwrap_or_else(|_| panic!("{} of {want} records after 60 s", got.len()))
            .expect("shard vanished");
        got.extend(indexes(&page));
        if page.next.is_none() {
            return Some(page);
        }
    }
    None
}

async fn resumes_after_a_cut(kind: EmulatorKind) {
    let proxy = CutProxy::start(&Emulator::shared(kind).endpoint).await;
    let setup = Setup::new(kind, &proxy.endpoint, 1).await;
    let stream: Arc<dyn StreamSource> = Arc::new(setup.stream.clone());
    let metrics = Arc::new(Metrics::default());
    let fan_out = Arc::new(FanOut::new(unique_name("app")));
    // Registering twice is harmless (a second worker does the same).
    let first = stream
        .register_consumer(fan_out.consumer_name())
        .await
        .unwrap();
    let again = stream
        .register_consumer(fan_out.consumer_name())
        .await
        .unwrap();
    assert_eq!(first, again);

    setup.put(0, 50).await;
    let mut reader = FanOutReader::new(
        stream.clone(),
        fan_out.clone(),
        ShardId::new("shardId-000000000000"),
        StartPosition::TrimHorizon,
        metrics.clone(),
        7,
    );
    let mut got = Vec::new();
    assert!(read_until(&mut reader, &mut got, 50).await.is_none());
    // The subscription is cut; records put meanwhile still arrive, once.
    proxy.cut();
    setup.put(50, 120).await;
    assert!(read_until(&mut reader, &mut got, 120).await.is_none());
    proxy.cut();
    setup.put(120, 150).await;
    assert!(read_until(&mut reader, &mut got, 150).await.is_none());
    assert_eq!(
        got,
        (0..150).collect::<Vec<_>>(),
        "every record once, in order"
    );
    let subscriptions = metrics
        .subscriptions_total
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        subscriptions >= 3,
        "subscribed again after each cut ({subscriptions})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_mock_subscription_cut_mid_stream_resumes_without_loss_or_repeat() {
    resumes_after_a_cut(EmulatorKind::KinesisMock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ministack_subscription_cut_mid_stream_resumes_without_loss_or_repeat() {
    resumes_after_a_cut(EmulatorKind::Ministack).await;
}

/// ministack ends a split parent's subscription with `ChildShards`;
/// kinesis-mock never ends it: the reader finds the end by `GetRecords`
/// once the shard is known closed. Either way the page ends the shard and
/// names both children.
async fn split_parent_ends_with_its_children(kind: EmulatorKind) {
    let setup = Setup::new(kind, &Emulator::shared(kind).endpoint, 1).await;
    let stream: Arc<dyn StreamSource> = Arc::new(setup.stream.clone());
    let fan_out = Arc::new(FanOut::new(unique_name("app")));
    let parent = ShardId::new("shardId-000000000000");
    let mut reader = FanOutReader::new(
        stream.clone(),
        fan_out.clone(),
        parent.clone(),
        StartPosition::TrimHorizon,
        Arc::new(Metrics::default()),
        7,
    );
    setup.put(0, 30).await;
    let mut got = Vec::new();
    assert!(read_until(&mut reader, &mut got, 30).await.is_none());

    let shard = &setup.shards().await[0];
    let range = shard.hash_key_range().unwrap();
    let start: u128 = range.starting_hash_key().parse().unwrap();
    let end: u128 = range.ending_hash_key().parse().unwrap();
    setup
        .kinesis
        .split_shard()
        .stream_name(&setup.name)
        .shard_to_split(parent.as_str())
        .new_starting_hash_key((start + (end - start) / 2).to_string())
        .send()
        .await
        .expect("split");
    wait_stream_active(&setup.kinesis, &setup.name).await;
    // What the shard sync does: it lists the shards and marks the closed
    // (ministack deletes the parent: it is not listed at all).
    let closed = stream
        .list_shards()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.ending_sequence.is_some())
        .map(|s| s.id)
        .collect();
    fan_out.set_closed(closed);
    let end_page = read_until(&mut reader, &mut got, usize::MAX)
        .await
        .expect("the parent ends");
    assert_eq!(got, (0..30).collect::<Vec<_>>());
    let mut children: Vec<String> = end_page.children.iter().map(|c| c.id.to_string()).collect();
    children.sort();
    assert_eq!(children.len(), 2, "{children:?}");
    for child in &end_page.children {
        assert_eq!(child.parents, vec![parent.clone()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_mock_split_parent_ends_with_its_children() {
    split_parent_ends_with_its_children(EmulatorKind::KinesisMock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ministack_split_parent_ends_with_child_shards_event() {
    split_parent_ends_with_its_children(EmulatorKind::Ministack).await;
}
