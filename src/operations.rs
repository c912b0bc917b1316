//! Which AWS operations each command calls, and on what: one table, read
//! from each command's code path (`src/cmd/*.rs` and the crates it calls).
//!
//! The actions are IAM action names, as a role must grant them: a
//! `TransactWriteItems` is checked action by action (a `Put` needs
//! `dynamodb:PutItem` on its table, an `Update` `dynamodb:UpdateItem`), a
//! `BatchExecuteStatement` of `INSERT`s needs `dynamodb:PartiQLInsert`, S3's
//! `HeadBucket` needs `s3:ListBucket`. KMS use (the stream and the tables
//! are encrypted) is implied by any read or write and not listed.
//!
//! `tests/it/infra.rs` reads this file and checks that the task role that
//! runs each command on AWS allows every operation here on the right
//! resources, and no action on a resource where none of its commands
//! calls it. It must not depend on anything else in the crate. When a
//! command starts calling something new, add it here: that test then says
//! which role lacks it.

// The commands do not read the table; the tests do.
#![cfg_attr(not(test), allow(dead_code))]

/// The vote stream.
pub const STREAM: &str = "stream";
/// The application's stream consumer, named after `--app` (`TALLY_APP`).
/// IAM checks `DescribeStreamConsumer`, which the code calls with the
/// stream's ARN and the consumer's name, on `<stream ARN>/consumer/<app>`,
/// and `SubscribeToShard`, called with the consumer's ARN, on
/// `<stream ARN>/consumer/<app>:<creation time>`; no replay's consumer
/// matches either.
pub const CONSUMER: &str = "application stream consumer";
/// The stream consumers `tally replay` registers: named after its
/// `--replay-app`, which begins `<app>-replay` or `<app>-restored` as its
/// lease table's name must (`<stream ARN>/consumer/<app>-replay*`, `...-restored*`,
/// which match a consumer's name alone and with its creation time).
pub const REPLAY_CONSUMERS: &str = "replay stream consumers";
/// The lease table `<app>-leases`.
pub const LEASES: &str = "leases table";
/// The lease table's owner index.
pub const LEASES_INDEX: &str = "leases owner index";
/// `<prefix>polls`.
pub const POLLS: &str = "polls table";
/// `<prefix>votes`.
pub const VOTES: &str = "votes table";
/// `<prefix>tallies`.
pub const TALLIES: &str = "tallies table";
/// `<prefix>rejects`.
pub const REJECTS: &str = "rejects table";
/// The `rejects` table's voter index.
pub const REJECTS_INDEX: &str = "rejects voter index";
/// The tables `tally replay` makes apart from the live ones: its
/// `--shadow-prefix` tables and its own lease table (`<--replay-app>-leases`).
pub const SHADOW: &str = "shadow tables";
/// The shadow tables' indexes.
pub const SHADOW_INDEX: &str = "shadow table indexes";
/// The snapshot bucket itself (`TALLY_SNAPSHOT_BUCKET`).
pub const BUCKET: &str = "snapshot bucket";
/// The objects in the snapshot bucket.
pub const OBJECTS: &str = "snapshot objects";
/// CloudWatch metrics in Tally's namespace.
pub const METRICS: &str = "metrics namespace";

/// Every resource kind the table names.
pub const RESOURCES: &[&str] = &[
    STREAM,
    CONSUMER,
    REPLAY_CONSUMERS,
    LEASES,
    LEASES_INDEX,
    POLLS,
    VOTES,
    TALLIES,
    REJECTS,
    REJECTS_INDEX,
    SHADOW,
    SHADOW_INDEX,
    BUCKET,
    OBJECTS,
    METRICS,
];

/// A lease worker's calls on the stream and its lease table
/// (`lease/src/worker.rs`, `lease/src/store/dynamo.rs`,
/// `lease/src/stream/kinesis.rs`): `ensure_table` (DescribeTable; and
/// CreateTable only when the table is missing, never on AWS, where
/// Terraform makes it, so no role is granted it and a missing table fails
/// the start with AccessDenied; the fleet item's conditional Put), heartbeats and lease updates (UpdateItem), the fleet
/// item and one lease (GetItem), the lease table (Scan), a worker's leases
/// (Query on the owner index), a new lease (a transaction of a Put and the
/// fleet item's Update), finished parents' leases (DeleteItem).
macro_rules! lease_worker {
    ($table:expr, $index:expr) => {
        [
            ("kinesis:ListShards", STREAM),
            ("kinesis:GetShardIterator", STREAM),
            ("kinesis:GetRecords", STREAM),
            ("dynamodb:DescribeTable", $table),
            ("dynamodb:GetItem", $table),
            ("dynamodb:PutItem", $table),
            ("dynamodb:UpdateItem", $table),
            ("dynamodb:DeleteItem", $table),
            ("dynamodb:Scan", $table),
            ("dynamodb:Query", $index),
        ]
    };
}

const LEASE_WORKER: [(&str, &str); 10] = lease_worker!(LEASES, LEASES_INDEX);
const SHADOW_LEASE_WORKER: [(&str, &str); 10] = lease_worker!(SHADOW, SHADOW_INDEX);
/// `tally tail` makes its lease table when it is missing (it runs on no
/// AWS role; locally its application is often new).
const LEASE_TABLE_MADE: [(&str, &str); 1] = [("dynamodb:CreateTable", LEASES)];
const METRICS_PUT: [(&str, &str); 1] = [("cloudwatch:PutMetricData", METRICS)];
const TALLIES_REPLACED: [(&str, &str); 1] = [("dynamodb:PutItem", TALLIES)];

/// A lease worker in fan-out mode (`TALLY_CONSUMER_MODE=fan-out`,
/// `lease/src/stream/kinesis.rs`): the stream's ARN, the consumer named
/// after the application registered unless it exists and described until
/// ACTIVE, and a subscription per shard. IAM checks `RegisterStreamConsumer`
/// on the stream and `DescribeStreamConsumer` and `SubscribeToShard` on the
/// consumer (by name and by ARN, see `CONSUMER`). A worker never
/// deregisters it.
const FAN_OUT: [(&str, &str); 4] = [
    ("kinesis:DescribeStreamSummary", STREAM),
    ("kinesis:RegisterStreamConsumer", STREAM),
    ("kinesis:DescribeStreamConsumer", CONSUMER),
    ("kinesis:SubscribeToShard", CONSUMER),
];

/// A stream replay in fan-out mode (its default, `--consumer-mode`): the
/// lease worker's fan-out calls on the replay's own consumer, which the
/// replay deregisters when it ends.
const REPLAY_FAN_OUT: [(&str, &str); 5] = [
    ("kinesis:DescribeStreamSummary", STREAM),
    ("kinesis:RegisterStreamConsumer", STREAM),
    ("kinesis:DescribeStreamConsumer", REPLAY_CONSUMERS),
    ("kinesis:SubscribeToShard", REPLAY_CONSUMERS),
    ("kinesis:DeregisterStreamConsumer", REPLAY_CONSUMERS),
];

/// The worker pipeline's calls on the vote tables (`crates/worker`,
/// `crates/store/src/dynamo.rs`): the poll cache's GetItem, the batched
/// dedupe (PartiQL INSERTs, a consistent BatchGetItem of the refused ones)
/// and the single path's conditional PutItem, rejects' PutItem, and the
/// commit transaction (counter Updates and the lease's checkpoint Update;
/// a refused commit reads the lease back).
const PIPELINE: [(&str, &str); 6] = [
    ("dynamodb:GetItem", POLLS),
    ("dynamodb:PartiQLInsert", VOTES),
    ("dynamodb:BatchGetItem", VOTES),
    ("dynamodb:PutItem", VOTES),
    ("dynamodb:PutItem", REJECTS),
    ("dynamodb:UpdateItem", TALLIES),
];

/// Reading a poll's live result: the poll (GetItem) and its counter items
/// (BatchGetItem).
const RESULTS: [(&str, &str); 2] = [
    ("dynamodb:GetItem", POLLS),
    ("dynamodb:BatchGetItem", TALLIES),
];

/// A recount (`crates/worker/src/close.rs`): the poll, a parallel Scan of
/// `votes`, the live counters.
const RECOUNT: [(&str, &str); 3] = [
    ("dynamodb:GetItem", POLLS),
    ("dynamodb:Scan", VOTES),
    ("dynamodb:BatchGetItem", TALLIES),
];

/// Whether the shards are processed past a time (`close::pending_shards`):
/// the shards, the lease table, the first record after each checkpoint.
const SHARD_PROGRESS: [(&str, &str); 4] = [
    ("kinesis:ListShards", STREAM),
    ("kinesis:GetShardIterator", STREAM),
    ("kinesis:GetRecords", STREAM),
    ("dynamodb:Scan", LEASES),
];

/// Making a poll final (`finalize_poll`, `set_mismatch`) and writing the
/// final result to the snapshot bucket.
const FINALIZE: [(&str, &str); 2] = [("dynamodb:UpdateItem", POLLS), ("s3:PutObject", OBJECTS)];

/// The shadow tables of a replay (`crates/worker/src/replay.rs`): created
/// unless they exist (with the unused lease table `ensure_tables` makes,
/// and its fleet item), the poll copied in (PutItem, or GetItem of the one
/// there), the rebuilt counters written (PutItem) and read (BatchGetItem).
const SHADOW_TABLES: [(&str, &str); 5] = [
    ("dynamodb:CreateTable", SHADOW),
    ("dynamodb:DescribeTable", SHADOW),
    ("dynamodb:PutItem", SHADOW),
    ("dynamodb:GetItem", SHADOW),
    ("dynamodb:BatchGetItem", SHADOW),
];

/// A stream replay's pipeline into the shadow tables: the live pipeline's
/// calls (votes, rejects, counters, the commit) on the shadow tables.
const SHADOW_PIPELINE: [(&str, &str); 2] = [
    ("dynamodb:PartiQLInsert", SHADOW),
    ("dynamodb:UpdateItem", SHADOW),
];

/// What each command calls. `probe` calls nothing on AWS.
pub const OPERATIONS: &[(&str, &[(&str, &str)])] =
    &[
        (
            // Creates what does not exist; never run on AWS, where Terraform
            // makes the stream, the tables and the bucket.
            "init",
            &[
                ("kinesis:CreateStream", STREAM),
                ("kinesis:DescribeStreamSummary", STREAM),
                ("dynamodb:CreateTable", POLLS),
                ("dynamodb:DescribeTable", POLLS),
                ("dynamodb:CreateTable", VOTES),
                ("dynamodb:DescribeTable", VOTES),
                ("dynamodb:CreateTable", TALLIES),
                ("dynamodb:DescribeTable", TALLIES),
                ("dynamodb:CreateTable", REJECTS),
                ("dynamodb:DescribeTable", REJECTS),
                ("dynamodb:CreateTable", LEASES),
                ("dynamodb:DescribeTable", LEASES),
                ("dynamodb:PutItem", LEASES),
                ("s3:ListBucket", BUCKET),
                ("s3:CreateBucket", BUCKET),
            ],
        ),
        (
            "leases",
            &[
                ("dynamodb:Scan", LEASES),
                ("dynamodb:Query", LEASES_INDEX),
                ("dynamodb:GetItem", LEASES),
            ],
        ),
        (
            "tail",
            &concat_operations::<{ LEASE_WORKER.len() + FAN_OUT.len() + LEASE_TABLE_MADE.len() }>(
                &[&LEASE_WORKER, &FAN_OUT, &LEASE_TABLE_MADE],
            ),
        ),
        (
            // An operator's command, never run by a task.
            "consumer",
            &[
                ("kinesis:DescribeStreamSummary", STREAM),
                ("kinesis:DescribeStreamConsumer", CONSUMER),
                ("kinesis:DeregisterStreamConsumer", CONSUMER),
            ],
        ),
        (
            "poll",
            &[
                ("dynamodb:PutItem", POLLS),
                ("dynamodb:GetItem", POLLS),
                ("dynamodb:UpdateItem", POLLS),
                ("dynamodb:Scan", POLLS),
            ],
        ),
        (
            "worker",
            &concat_operations::<
                { LEASE_WORKER.len() + FAN_OUT.len() + PIPELINE.len() + METRICS_PUT.len() },
            >(&[&LEASE_WORKER, &FAN_OUT, &PIPELINE, &METRICS_PUT]),
        ),
        (
            // The producer (PutRecords, ListShards for the shard map), the
            // readiness probe (DescribeStreamSummary, a poll's GetItem), the
            // admin API on polls, ballots by key, counters, a voter's rejects.
            "gateway",
            &[
                ("kinesis:PutRecords", STREAM),
                ("kinesis:ListShards", STREAM),
                ("kinesis:DescribeStreamSummary", STREAM),
                ("dynamodb:GetItem", POLLS),
                ("dynamodb:Scan", POLLS),
                ("dynamodb:PutItem", POLLS),
                ("dynamodb:UpdateItem", POLLS),
                ("dynamodb:GetItem", VOTES),
                ("dynamodb:BatchGetItem", VOTES),
                ("dynamodb:BatchGetItem", TALLIES),
                ("dynamodb:Query", REJECTS_INDEX),
                ("cloudwatch:PutMetricData", METRICS),
            ],
        ),
        ("audit", &RECOUNT),
        (
            "finalize",
            &concat_operations::<{ RECOUNT.len() + SHARD_PROGRESS.len() + FINALIZE.len() }>(&[
                &RECOUNT,
                &SHARD_PROGRESS,
                &FINALIZE,
            ]),
        ),
        (
            // The recount, the counters replaced by it (`set_counts`: PutItem)
            // with --use recount, the poll made final.
            "resolve",
            &concat_operations::<{ RECOUNT.len() + TALLIES_REPLACED.len() + FINALIZE.len() }>(&[
                &RECOUNT,
                &TALLIES_REPLACED,
                &FINALIZE,
            ]),
        ),
        (
            // --from votes: the live poll, votes and counters read, the shadow
            // tables made and written. --from stream: a lease worker of its own
            // (its lease table is a shadow table) and the pipeline into the
            // shadow tables, and in fan-out mode (the default) its own stream
            // consumer.
            "replay",
            &concat_operations::<
                {
                    RECOUNT.len()
                        + SHADOW_TABLES.len()
                        + SHADOW_LEASE_WORKER.len()
                        + SHADOW_PIPELINE.len()
                        + REPLAY_FAN_OUT.len()
                },
            >(&[
                &RECOUNT,
                &SHADOW_TABLES,
                &SHADOW_LEASE_WORKER,
                &SHADOW_PIPELINE,
                &REPLAY_FAN_OUT,
            ]),
        ),
        (
            // Every open or closed poll (Scan), or the ones named, their
            // results, an object each.
            "snapshot",
            &[
                ("dynamodb:Scan", POLLS),
                ("dynamodb:GetItem", POLLS),
                ("dynamodb:BatchGetItem", TALLIES),
                ("s3:PutObject", OBJECTS),
            ],
        ),
        ("probe", &[]),
        ("results", &RESULTS),
        (
            "vote-status",
            &[
                ("dynamodb:GetItem", VOTES),
                ("dynamodb:Query", REJECTS_INDEX),
            ],
        ),
        (
            "load",
            &[
                ("dynamodb:Scan", POLLS),
                ("dynamodb:GetItem", POLLS),
                ("kinesis:PutRecords", STREAM),
                ("kinesis:ListShards", STREAM),
            ],
        ),
    ];

/// The operations of `command`, or `None` for a command the table does
/// not name.
pub fn of(command: &str) -> Option<&'static [(&'static str, &'static str)]> {
    OPERATIONS
        .iter()
        .find(|(name, _)| *name == command)
        .map(|(_, operations)| *operations)
}

/// The parts one after another, `N` operations in all (checked when the
/// table is built).
const fn concat_operations<const N: usize>(
    parts: &[&[(&'static str, &'static str)]],
) -> [(&'static str, &'static str); N] {
    let mut out = [("", ""); N];
    let mut at = 0;
    let mut part = 0;
    while part < parts.len() {
        let mut index = 0;
        while index < parts[part].len() {
            out[at] = parts[part][index];
            at += 1;
            index += 1;
        }
        part += 1;
    }
    assert!(at == N, "the parts hold another number of operations");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_names_a_known_action_and_resource() {
        let mut commands: Vec<&str> = OPERATIONS.iter().map(|(command, _)| *command).collect();
        commands.sort_unstable();
        let count = commands.len();
        commands.dedup();
        assert_eq!(commands.len(), count, "one entry per command");
        for (command, operations) in OPERATIONS {
            for (action, resource) in *operations {
                let (service, name) = action.split_once(':').expect("service:Action");
                assert!(
                    ["kinesis", "dynamodb", "s3", "cloudwatch"].contains(&service),
                    "{command}: {action}"
                );
                assert!(
                    name.starts_with(|c: char| c.is_ascii_uppercase()),
                    "{command}: {action}"
                );
                assert!(RESOURCES.contains(resource), "{command}: {resource}");
            }
        }
        assert_eq!(of("probe"), Some(&[][..]));
        assert!(of("worker").is_some_and(|ops| ops.contains(&("dynamodb:PartiQLInsert", VOTES))));
        assert_eq!(of("nothing"), None);
    }
}
