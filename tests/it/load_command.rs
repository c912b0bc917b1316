//! `tally load` on ministack: realistic traffic through the producer SDK,
//! a JSON summary that adds up, and exactly the records it reports on the
//! stream.

use std::process::Command;

use tally_testkit::emulators::{sdk_config, unique_name, Emulator, EmulatorKind};

fn tally(endpoint: &str, stream: &str, prefix: &str, app: &str) -> Command {
    let mut command = tally_testkit::process::tally(env!("CARGO_BIN_EXE_tally"));
    command
        .args(["--stream", stream, "--table-prefix", prefix, "--app", app])
        .env("AWS_ENDPOINT_URL", endpoint);
    command
}

#[tokio::test]
async fn load_sends_what_it_reports() {
    let endpoint = Emulator::shared(EmulatorKind::Ministack).endpoint.clone();
    let stream = unique_name("load");
    let prefix = format!("{}-", unique_name("t"));
    let app = unique_name("app");
    let run = |args: &[&str]| {
        let output = tally(&endpoint, &stream, &prefix, &app)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tally {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    };
    run(&["init", "--shards", "2"]);
    run(&[
        "poll",
        "create",
        "--id",
        "p1",
        "--question",
        "Q?",
        "--option",
        "a",
        "--option",
        "b",
        "--open",
    ]);
    run(&[
        "poll",
        "create",
        "--id",
        "p2",
        "--question",
        "Q?",
        "--option",
        "x",
        "--option",
        "y",
        "--open",
    ]);
    let output = run(&[
        "load",
        "--votes",
        "800",
        "--voters",
        "300",
        "--malformed-share",
        "0.05",
        "--aggregate",
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["sent"], 800);
    assert_eq!(summary["put"], 800);
    assert_eq!(summary["failed"], 0);
    assert!(summary["malformed_sent"].as_u64().unwrap() > 10);
    assert!(
        summary["producer"]["tally_producer_aggregation_ratio"]
            .as_f64()
            .unwrap()
            > 2.0
    );

    // Exactly 800 user records on the stream, votes in both polls.
    let client = aws_sdk_kinesis::Client::new(&sdk_config(&endpoint).await);
    let mut polls = std::collections::BTreeSet::new();
    let mut records = 0;
    for shard in client
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .unwrap()
        .shards()
    {
        let iterator = client
            .get_shard_iterator()
            .stream_name(&stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap();
        let page = client
            .get_records()
            .shard_iterator(iterator.shard_iterator().unwrap())
            .send()
            .await
            .unwrap();
        for record in page.records() {
            let data = record.data().as_ref();
            let users: Vec<Vec<u8>> = if tally_contract::kpl::is_aggregate(data) {
                tally_contract::kpl::deaggregate(data)
                    .unwrap()
                    .into_iter()
                    .map(|user| user.data.to_vec())
                    .collect()
            } else {
                vec![data.to_vec()]
            };
            for user in users {
                records += 1;
                if let Ok(vote) = tally_contract::vote::decode(&user) {
                    polls.insert(vote.poll_id);
                }
            }
        }
    }
    assert_eq!(records, 800);
    assert_eq!(polls.into_iter().collect::<Vec<_>>(), vec!["p1", "p2"]);

    // Closing: never in the past; by default 2 s from now.
    let output = tally(&endpoint, &stream, &prefix, &app)
        .args(["poll", "close", "p1", "--at", "2020-01-01T00:00:00Z"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("in the past"));
    let before = tally_contract::time::now_millis();
    let closed: serde_json::Value =
        serde_json::from_slice(&run(&["poll", "close", "p2", "--json"]).stdout).unwrap();
    assert_eq!(closed["status"], "closed");
    let closes_at =
        tally_contract::time::parse_rfc3339(closed["closes_at"].as_str().unwrap()).unwrap();
    assert!(
        (before + 1_500..before + 5_000).contains(&closes_at),
        "{closed}"
    );

    // Bad input fails with the setting's name.
    let output = tally(&endpoint, &stream, &prefix, &app)
        .args(["load", "--votes", "5", "--repeat-share", "2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--repeat-share"));
}
