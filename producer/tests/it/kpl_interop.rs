//! KPL-format interop with `aws-kinesis-agg` (PyPI, pinned by
//! `ops/emulators`): it de-aggregates our aggregates to exactly the records
//! we packed, and the de-aggregation the worker runs
//! (`tally_contract::kpl::deaggregate`, which the lease reader calls on every
//! record with the magic) reads its aggregates back exactly.

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use bytes::Bytes;
use tally_contract::kpl::{deaggregate, UserRecord};
use tally_producer::batch::{build_entries, Aggregation};
use tally_producer::shard_map::{ShardMap, ShardRange};

/// This package's directory, read when the test runs (`cargo test` sets
/// it): a target directory shared by two checkouts keeps the build-time
/// path of the other one.
fn package_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

fn python() -> String {
    let script = package_dir().join("../ops/emulators");
    let output = Command::new("bash")
        .arg(script)
        .arg("tools-python")
        .output()
        .expect("run ops/emulators");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn run(mode: &str, input: serde_json::Value) -> Vec<serde_json::Value> {
    let mut child = Command::new(python())
        .arg(package_dir().join("tests/kpl_interop.py"))
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(text: &serde_json::Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text.as_str().unwrap())
        .unwrap()
}

fn users(count: usize) -> Vec<UserRecord> {
    (0..count)
        .map(|n| UserRecord {
            partition_key: format!("voter-{}", n % 41),
            explicit_hash_key: None,
            data: Bytes::from(if n % 7 == 0 {
                vec![0u8, 0xff, n as u8, 0x89]
            } else {
                format!(
                    r#"{{"vote_id":"v{n}","poll_id":"p","option":"a","voter_id":"voter-{}"}}"#,
                    n % 41
                )
                .into_bytes()
            }),
        })
        .collect()
}

#[test]
fn aws_kinesis_agg_reads_our_aggregates_exactly() {
    let records = users(600);
    let refs: Vec<&UserRecord> = records.iter().collect();
    let map = ShardMap::new(vec![
        ShardRange {
            shard_id: "a".into(),
            start: 0,
            end: u128::MAX / 2,
        },
        ShardRange {
            shard_id: "b".into(),
            start: u128::MAX / 2 + 1,
            end: u128::MAX,
        },
    ]);
    let aggregation = Aggregation {
        max_bytes: 4096,
        max_records: 100,
    };
    let entries = build_entries(&refs, &map, Some(&aggregation));
    assert!(entries.iter().filter(|e| e.aggregated).count() >= 4);
    let input: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| serde_json::json!({"data": b64(&e.data), "partition_key": e.partition_key}))
        .collect();
    let output = run("deaggregate", serde_json::Value::Array(input));
    let expected: Vec<(String, Vec<u8>)> = entries
        .iter()
        .flat_map(|e| {
            e.members
                .iter()
                .map(|&m| (records[m].partition_key.clone(), records[m].data.to_vec()))
        })
        .collect();
    let got: Vec<(String, Vec<u8>)> = output
        .iter()
        .map(|u| {
            (
                u["partition_key"].as_str().unwrap().to_owned(),
                unb64(&u["data"]),
            )
        })
        .collect();
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "aws-kinesis-agg read other records than we packed"
    );
}

#[test]
fn the_worker_reads_aws_kinesis_agg_aggregates_exactly() {
    let mut records = users(500);
    records[3].explicit_hash_key = Some("12345678901234567890".into());
    let input: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::json!({
                "data": b64(&r.data),
                "partition_key": r.partition_key,
                "explicit_hash_key": r.explicit_hash_key,
            })
        })
        .collect();
    let aggregates = run("aggregate", serde_json::Value::Array(input));
    assert!(!aggregates.is_empty());
    let mut read: Vec<UserRecord> = Vec::new();
    for aggregate in &aggregates {
        let data = unb64(&aggregate["data"]);
        assert!(tally_contract::kpl::is_aggregate(&data));
        read.extend(deaggregate(&data).expect("a valid aggregate"));
    }
    assert_eq!(read.len(), records.len());
    for (ours, theirs) in records.iter().zip(&read) {
        assert_eq!(ours.partition_key, theirs.partition_key);
        assert_eq!(ours.data, theirs.data);
    }
    assert_eq!(
        read[3].explicit_hash_key.as_deref(),
        Some("12345678901234567890")
    );
}
