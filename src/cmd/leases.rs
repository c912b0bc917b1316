//! `tally leases`: the lease table as a person wants to read it.

use std::collections::BTreeSet;

use anyhow::Context;
use serde::Serialize;
use tally_lease::graph::{lease_state, LeaseState};
use tally_lease::store::LeaseTable;
use tally_lease::{DynamoStore, Lease, LeaseMap, LeaseStore, ShardId};

use tally_service::settings::{Clients, Common};

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct Row {
    pub shard: String,
    pub owner: Option<String>,
    pub counter: u64,
    pub checkpoint: String,
    pub parents: Vec<String>,
    pub state: &'static str,
    pub pending_owner: Option<String>,
}

/// One row per lease, in shard order; `unreadable`: the keys of items that
/// do not read as leases (their children wait, as the workers make them).
pub fn rows(leases: &[Lease], unreadable: &BTreeSet<ShardId>) -> Vec<Row> {
    let all: LeaseMap = leases.iter().map(|l| (l.key.clone(), l.clone())).collect();
    let mut rows: Vec<Row> = leases
        .iter()
        .map(|lease| Row {
            shard: lease.key.to_string(),
            owner: lease.owner.clone(),
            counter: lease.counter,
            checkpoint: lease.checkpoint.to_string(),
            parents: lease.parents.iter().map(ToString::to_string).collect(),
            state: match lease_state(lease, &all, unreadable) {
                LeaseState::Ended => "ended",
                LeaseState::WaitingOnParents => "waiting on parents",
                LeaseState::Ready if lease.owner.is_some() => "processing",
                LeaseState::Ready => "free",
            },
            pending_owner: lease.pending_owner.clone(),
        })
        .collect();
    rows.sort_by(|a, b| a.shard.cmp(&b.shard));
    rows
}

/// Renders rows as an aligned text table.
pub fn render(rows: &[Row]) -> String {
    let headers = [
        "SHARD",
        "OWNER",
        "COUNTER",
        "CHECKPOINT",
        "PARENTS",
        "STATE",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|row| {
            let owner = match (&row.owner, &row.pending_owner) {
                (Some(owner), Some(next)) => format!("{owner} -> {next}"),
                (Some(owner), None) => owner.clone(),
                (None, _) => "-".into(),
            };
            [
                row.shard.clone(),
                owner,
                row.counter.to_string(),
                row.checkpoint.clone(),
                if row.parents.is_empty() {
                    "-".into()
                } else {
                    row.parents.join(",")
                },
                row.state.to_owned(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, values: Vec<&str>| {
        let text: Vec<String> = values
            .iter()
            .zip(widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&mut out, headers.to_vec());
    for row in &cells {
        line(&mut out, row.iter().map(String::as_str).collect());
    }
    out
}

pub async fn show(
    common: &Common,
    clients: &Clients,
    json: bool,
    owner: Option<&str>,
) -> anyhow::Result<()> {
    let store = DynamoStore::new(clients.dynamodb.clone(), common.lease_table());
    let read = match owner {
        Some(owner) => store.leases_owned_by(owner).await.map(|leases| LeaseTable {
            leases,
            skipped: Vec::new(),
        }),
        None => store.scan_leases().await,
    };
    let LeaseTable { leases, skipped } =
        read.with_context(|| format!("reading lease table {}", common.lease_table()))?;
    let fleet = store.fleet().await?;
    let unreadable = skipped
        .iter()
        .map(|item| ShardId::new(item.key.as_str()))
        .collect();
    let rows = rows(&leases, &unreadable);
    if json {
        let workers: Vec<serde_json::Value> = fleet
            .workers
            .iter()
            .map(|(id, beat)| serde_json::json!({"worker": id, "heartbeat": beat.beat, "leases": beat.leases}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"leases": rows, "skipped": skipped, "workers": workers, "epoch": fleet.epoch})
        );
    } else {
        print!("{}", render(&rows));
        if !skipped.is_empty() {
            println!();
            println!("items that are not leases (every worker skips them; fix or delete them):");
            for item in &skipped {
                println!("  {}: {}", item.key, item.reason);
            }
        }
        println!();
        println!("workers (heartbeat counter, leases reported):");
        for (id, beat) in &fleet.workers {
            println!("  {id}  beat={} leases={}", beat.beat, beat.leases);
        }
        if fleet.workers.is_empty() {
            println!("  none");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_lease::Checkpoint;

    #[test]
    fn states_read_as_people_expect() {
        let mut parent = Lease::new(ShardId::new("shardId-1"), Checkpoint::TrimHorizon);
        parent.owner = Some("w1".into());
        let mut child = Lease::new(ShardId::new("shardId-2"), Checkpoint::TrimHorizon);
        child.parents = vec![parent.key.clone()];
        let ended = Lease::new(ShardId::new("shardId-0"), Checkpoint::ShardEnd);
        let mut orphan = Lease::new(ShardId::new("shardId-4"), Checkpoint::TrimHorizon);
        orphan.parents = vec![ShardId::new("shardId-3")];
        let rows = rows(&[parent, child, ended, orphan.clone()], &BTreeSet::new());
        let states: Vec<&str> = rows.iter().map(|r| r.state).collect();
        assert_eq!(
            states,
            vec!["ended", "processing", "waiting on parents", "free"]
        );
        // A parent whose item does not read as a lease: its child waits.
        let unreadable = BTreeSet::from([ShardId::new("shardId-3")]);
        assert_eq!(
            rows_states(&[orphan], &unreadable),
            vec!["waiting on parents"]
        );
        let text = render(&rows);
        assert!(text.starts_with("SHARD"));
        assert!(text.contains("shardId-2") && text.contains("waiting on parents"));
    }

    fn rows_states(leases: &[Lease], unreadable: &BTreeSet<ShardId>) -> Vec<&'static str> {
        rows(leases, unreadable).iter().map(|r| r.state).collect()
    }
}

/// `tally leases`.
#[derive(clap::Args, Debug)]
pub struct LeasesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only this worker's leases (read through the leaseOwner index, no scan).
    #[arg(long)]
    pub owner: Option<String>,
}

/// Prints the lease table.
pub async fn run(common: &Common, args: LeasesArgs) -> anyhow::Result<std::process::ExitCode> {
    if let Some(owner) = &args.owner {
        if !tally_lease::config::valid_id(owner) {
            anyhow::bail!(
                "invalid --owner {owner:?}: worker ids are 1 to 128 characters of [A-Za-z0-9._:@-]"
            );
        }
    }
    let clients = Clients::from_env().await?;
    show(common, &clients, args.json, args.owner.as_deref()).await?;
    Ok(std::process::ExitCode::SUCCESS)
}
