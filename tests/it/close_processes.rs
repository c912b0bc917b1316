//! Closing, recount and audit with real `tally worker` processes on
//! ministack: a poll closed while votes still arrive (the late ones are
//! rejected as `poll_not_open`); `tally finalize` waits for the shards,
//! then the recount equals the tallies and the ground truth and the poll
//! becomes final; a corrupted counter item is found by `tally audit`,
//! blocks `tally finalize`, and is settled only by `tally resolve`.

use crate::local_stack;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use local_stack::{output_text, put_votes, Stack};
use tally_core::poll::PollStatus;
use tally_producer::{KinesisSink, Producer, ProducerConfig, VoteBuilder};
use tally_store::prelude::*;

/// Puts votes `(voter, poll, option)` and waits until each is in the stream.
async fn put(producer: &Producer, votes: &[(String, &str, &str)]) {
    let builders = votes
        .iter()
        .enumerate()
        .map(|(index, (voter, poll, option))| {
            VoteBuilder::new(format!("v{index}-{voter}"), *poll, *option, voter.as_str())
        });
    put_votes(producer, builders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_poll_is_recounted_and_finalized_and_a_corrupted_one_is_not() {
    let stack = Stack::new().await;
    let store = stack.store.clone();
    stack.create_open_polls(&["close-me", "corrupt"]).await;
    let sink = Arc::new(KinesisSink::new(stack.kinesis.clone(), &stack.stream));
    let producer = Producer::start(sink, ProducerConfig::default());

    // Before the close: 300 voters, then 50 of them again (duplicates).
    let mut before: Vec<(String, &str, &str)> = (0..300)
        .map(|i| {
            (
                format!("u{i}"),
                "close-me",
                if i % 3 == 0 { "a" } else { "b" },
            )
        })
        .collect();
    before.extend((0..50).map(|i| (format!("u{i}"), "close-me", "a")));
    before.extend((0..40).map(|i| {
        (
            format!("c{i}"),
            "corrupt",
            if i % 4 == 0 { "a" } else { "b" },
        )
    }));
    put(&producer, &before).await;

    let closes_at = tally_contract::time::now_millis() + 1_500;
    for id in ["close-me", "corrupt"] {
        let output = stack
            .tally()
            .args([
                "poll",
                "close",
                id,
                "--at",
                &tally_contract::time::format_rfc3339(closes_at),
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", output_text(&output));
    }
    let wait = closes_at + 400 - tally_contract::time::now_millis();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    // After the close: new voters and earlier ones; none may count.
    let mut after: Vec<(String, &str, &str)> = (0..100)
        .map(|i| (format!("late{i}"), "close-me", "a"))
        .collect();
    after.extend((100..110).map(|i| (format!("u{i}"), "close-me", "a")));
    put(&producer, &after).await;
    producer.close().await.unwrap();

    // No worker yet: finalize waits for the shards, then gives up.
    let output = stack
        .tally()
        .args([
            "finalize",
            "close-me",
            "--margin-ms",
            "200",
            "--wait-timeout-s",
            "2",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        output_text(&output).contains("not been processed past the close"),
        "{}",
        output_text(&output)
    );
    assert_eq!(
        store.get_poll("close-me").await.unwrap().unwrap().status,
        PollStatus::Closed
    );

    let _worker = stack.worker("w1");
    let bucket = tally_testkit::emulators::unique_name("snapshots");
    let output = stack
        .tally()
        .args(["init", "--shards", "2", "--snapshot-bucket", &bucket])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", output_text(&output));
    let output = stack
        .tally()
        .args(["finalize", "close-me", "--json", "--wait-timeout-s", "120"])
        .env("TALLY_SNAPSHOT_BUCKET", &bucket)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", output_text(&output));
    let audit: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let truth = BTreeMap::from([("a".to_owned(), 100u64), ("b".to_owned(), 200u64)]);
    assert_eq!(audit["equal"], true, "{audit}");
    assert_eq!(audit["status"], "final");
    assert_eq!(audit["votes"], 300);
    assert_eq!(
        serde_json::from_value::<BTreeMap<String, u64>>(audit["recount"].clone()).unwrap(),
        truth
    );
    assert_eq!(
        serde_json::from_value::<BTreeMap<String, u64>>(audit["tallies"].clone()).unwrap(),
        truth
    );
    let poll = store.get_poll("close-me").await.unwrap().unwrap();
    assert_eq!(poll.status, PollStatus::Final);
    assert_eq!(
        store.counts(&poll).await.unwrap().by_option,
        truth,
        "the ground truth"
    );
    let (record, mismatch) = store.audit_records("close-me").await.unwrap();
    assert!(record.unwrap().contains(audit["digest"].as_str().unwrap()));
    assert!(mismatch.is_none());
    for voter in ["late0", "late99", "u100"] {
        let rejects = store.rejects_of("close-me", voter).await.unwrap();
        assert!(
            rejects
                .iter()
                .any(|reject| reject.reason == tally_contract::vote::Reason::PollNotOpen),
            "{voter}'s late vote is rejected as poll_not_open: {rejects:?}"
        );
    }
    let again = stack
        .tally()
        .args(["finalize", "close-me"])
        .output()
        .unwrap();
    assert!(again.status.success(), "finalizing again is a no-op");

    // The final result in S3 holds the audit record that was stored.
    let snapshots = tally_worker::snapshot::Snapshots::new(
        &tally_testkit::emulators::sdk_config(&local_stack::endpoint()).await,
        &tally_worker::snapshot::SnapshotSettings {
            snapshot_bucket: Some(bucket.clone()),
            snapshot_prefix: "tally/".into(),
        },
    )
    .unwrap()
    .unwrap();
    let finals: Vec<String> = snapshots
        .keys("close-me")
        .await
        .unwrap()
        .into_iter()
        .filter(|key| key.contains("/final/"))
        .collect();
    assert_eq!(finals.len(), 1, "{finals:?}");
    let object: serde_json::Value =
        serde_json::from_str(&snapshots.get(&finals[0]).await.unwrap()).unwrap();
    let stored: serde_json::Value =
        serde_json::from_str(&store.audit_records("close-me").await.unwrap().0.unwrap()).unwrap();
    assert_eq!(object["audit"], stored, "the S3 object is the audit record");
    assert_eq!(object["results"]["total"], 300);

    // Replays of a correct poll, from the votes table and from the stream,
    // equal the live tallies (exit 0).
    for from in ["votes", "stream"] {
        let output = stack.replay("close-me", from).output().unwrap();
        assert!(
            output.status.success(),
            "replay from {from}: {}",
            output_text(&output)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["equal"], true, "replay from {from}: {report}");
    }

    // A corrupted counter item: audit reports it, finalize refuses.
    let corrupt = store.get_poll("corrupt").await.unwrap().unwrap();
    let poll_counts = |store: Arc<tally_store::dynamo::DynamoVoteStore>,
                       poll: tally_core::poll::Poll| async move {
        store.counts(&poll).await.unwrap().by_option
    };
    for _ in 0..100 {
        if poll_counts(store.clone(), corrupt.clone())
            .await
            .values()
            .sum::<u64>()
            == 40
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dynamodb = aws_sdk_dynamodb::Client::new(
        &tally_testkit::emulators::sdk_config(&local_stack::endpoint()).await,
    );
    dynamodb
        .update_item()
        .table_name(format!("{}tallies", stack.prefix))
        .key(
            "counter_id",
            aws_sdk_dynamodb::types::AttributeValue::S("corrupt#003".into()),
        )
        .update_expression("SET poll_id = :poll ADD opt_a :five")
        .expression_attribute_values(
            ":poll",
            aws_sdk_dynamodb::types::AttributeValue::S("corrupt".into()),
        )
        .expression_attribute_values(
            ":five",
            aws_sdk_dynamodb::types::AttributeValue::N("5".into()),
        )
        .send()
        .await
        .unwrap();
    let output = stack.tally().args(["audit", "corrupt"]).output().unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", output_text(&output));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains("DIFFER") && report.contains("a: tallies 15 vs recount 10"),
        "{report}"
    );
    let output = stack
        .tally()
        .args(["finalize", "corrupt", "--margin-ms", "0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", output_text(&output));
    assert_eq!(
        store.get_poll("corrupt").await.unwrap().unwrap().status,
        PollStatus::Closed,
        "not final"
    );
    let (record, mismatch) = store.audit_records("corrupt").await.unwrap();
    assert!(record.is_none());
    assert!(mismatch.unwrap().contains("\"equal\":false"));
    // A replay from the votes table finds the corrupted counter too.
    let output = stack.replay("corrupt", "votes").output().unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", output_text(&output));
    // The gauge of closed polls whose recount differs: 1 now, 0 after
    // `tally resolve` (each gateway reads it once per 10 s: a new one).
    let gauge = |gateway: &local_stack::TestGateway| {
        let url = gateway.url("/metrics");
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|line| line.strip_prefix("tally_recount_mismatch_polls "))
                .and_then(|value| value.parse::<f64>().ok())
                .expect("the gauge")
        }
    };
    let before = stack.gateway(&[]).await;
    assert_eq!(gauge(&before).await, 1.0);
    let output = stack
        .tally()
        .args(["resolve", "corrupt", "--use", "recount"])
        .output()
        .unwrap();
    assert!(!output.status.success(), "a reason is required");
    let output = stack
        .tally()
        .args([
            "resolve",
            "corrupt",
            "--use",
            "recount",
            "--reason",
            "counter corrupted by a test",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", output_text(&output));
    let corrupt = store.get_poll("corrupt").await.unwrap().unwrap();
    assert_eq!(corrupt.status, PollStatus::Final);
    assert_eq!(
        store.counts(&corrupt).await.unwrap().by_option,
        BTreeMap::from([("a".to_owned(), 10), ("b".to_owned(), 30)])
    );
    let (record, mismatch) = store.audit_records("corrupt").await.unwrap();
    let record: serde_json::Value = serde_json::from_str(&record.unwrap()).unwrap();
    assert_eq!(record["resolution"]["used"], "recount");
    assert_eq!(record["resolution"]["previous_tallies"]["a"], 15);
    assert!(mismatch.is_none());
    let after = stack.gateway(&[]).await;
    assert_eq!(gauge(&after).await, 0.0);
}
