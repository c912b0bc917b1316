//! `all [--quick] [--out FILE] [--compare OLD.json] [--criterion-dir DIR] [--peer-bin PATH]`:
//! every benchmark, one table.
//!
//! Runs, one after another, each on its own emulator: the pipeline end to
//! end (with the emulator's raw rate for the same calls), a worker holding
//! 100 leased shards (memory), the producer against boto3, the gateway
//! with 19,000 SSE clients, failover, polling against enhanced fan-out
//! ([`crate::modes`]), Tally against a peer consumer in the
//! same run ([`crate::peer`], when `--peer-bin` names the peer program),
//! and the scale model. The in-process
//! rate comes from criterion's last run of `benches/in_process.rs`, read
//! from `--criterion-dir` (`ops/bench` runs it first). Prints one table and
//! writes it as JSON to `--out`; with `--compare`, each figure also shows
//! the earlier report's value and the ratio. `--quick` runs smaller sizes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{figure, Figure};

pub struct Options {
    pub quick: bool,
    pub out: PathBuf,
    pub compare: Option<PathBuf>,
    pub criterion_dir: Option<PathBuf>,
    /// The peer program (`benches/peer_drain.rs`), if built.
    pub peer_bin: Option<PathBuf>,
}

/// Votes per second on one core for batches of 10,000, from criterion's
/// estimate of the mean time of one batch.
fn in_process(dir: &Path) -> Option<f64> {
    let path = dir.join("in_process/votes/10000/new/estimates.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let estimates: serde_json::Value = serde_json::from_str(&text).ok()?;
    let nanos = estimates["mean"]["point_estimate"].as_f64()?;
    Some(10_000.0 / (nanos / 1e9))
}

/// Runs every benchmark and prints and writes the report.
pub async fn all(options: Options) {
    let started = std::time::Instant::now();
    // The gateway's CPU per vote is taken over the votes alone; 50,000
    // (about 11 s) keep its run-to-run spread near ±5 %.
    let (votes, records, gateway_votes, runs) = if options.quick {
        (20_000, 50_000, 10_000, 3)
    } else {
        (50_000, 100_000, 50_000, 5)
    };
    let mut figures: Vec<Figure> = Vec::new();
    match options.criterion_dir.as_deref().and_then(in_process) {
        Some(rate) => figures.push(figure(
            "in_process_votes_per_s_core",
            "in-process votes/s on one core (batches of 10,000)",
            rate,
            "/s",
        )),
        None => eprintln!("report: no criterion estimate (run `cargo bench -p tally-bench --bench in_process` and pass --criterion-dir)"),
    }
    let step = |name: &str| eprintln!("report: [{:.0} s] {name}", started.elapsed().as_secs_f64());
    step("pipeline, end to end");
    figures.extend(crate::pipeline(votes).await);
    step("worker memory with 100 leased shards");
    figures.extend(crate::pipeline_on(votes / 2, 100, "batched").await);
    step("producer");
    figures.extend(crate::producer_bench(records).await);
    step("gateway and SSE");
    figures.extend(crate::gateway::gateway(gateway_votes, 64, crate::gateway::SSE_CLIENTS).await);
    step("failover");
    figures.extend(crate::failover(runs).await);
    step("consumer modes: polling and fan-out, same run");
    figures
        .extend(crate::modes::consumer_modes(records, if options.quick { 10 } else { 20 }).await);
    step("against a peer, same run");
    figures.extend(crate::peer::peer(options.peer_bin.as_deref(), records, runs.min(3)).await);
    step("scale model");
    let (events, requests) = std::thread::spawn(|| crate::scale::scale(334, 40, 1))
        .join()
        .expect("the scale model");
    let stuck = events
        .iter()
        .find(|event| event.event.contains("NOT converged"))
        .map(|event| event.event.clone());
    let keys = [
        "scale_cold_start_balanced_s",
        "scale_out_balanced_s",
        "scale_worker_lost_owned_s",
        "scale_worker_stopped_owned_s",
        "scale_reshard_balanced_s",
    ];
    for (key, event) in keys.iter().zip(&events) {
        let value = if key.ends_with("owned_s") {
            event.owned_s
        } else {
            event.balanced_s
        };
        figures.push(figure(
            key,
            format!("model 334 shards: {}", event.event),
            value,
            "s",
        ));
    }
    figures.push(figure(
        "scale_fleet_lease_requests_per_s",
        "model: fleet lease-table requests/s at rest, 40 workers",
        requests,
        "/s",
    ));

    let earlier: BTreeMap<String, f64> = options
        .compare
        .as_deref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|report| {
            report["figures"].as_object().map(|figures| {
                figures
                    .iter()
                    .filter_map(|(key, f)| Some((key.clone(), f["value"].as_f64()?)))
                    .collect()
            })
        })
        .unwrap_or_default();
    if options.compare.is_some() && earlier.is_empty() {
        eprintln!("report: nothing to compare in {:?}", options.compare);
    }
    let version = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "Tally benchmarks: version {version}, {cores} cores, {}, {:.0} s",
        if options.quick {
            "quick sizes"
        } else {
            "full sizes"
        },
        started.elapsed().as_secs_f64()
    );
    if earlier.is_empty() {
        println!("{:<60} {:>14} {:<5}", "figure", "value", "unit");
    } else {
        println!(
            "{:<60} {:>14} {:<5} {:>14} {:>8}",
            "figure", "value", "unit", "earlier", "ratio"
        );
    }
    for f in &figures {
        let value = if f.value.is_finite() {
            format_value(f.value)
        } else {
            "n/a".to_owned()
        };
        match earlier.get(f.key) {
            Some(old) => println!(
                "{:<60} {:>14} {:<5} {:>14} {:>8}",
                f.label,
                value,
                f.unit,
                format_value(*old),
                if *old == 0.0 {
                    "-".to_owned()
                } else {
                    format!("{:.2}", f.value / old)
                }
            ),
            None => println!("{:<60} {:>14} {:<5}", f.label, value, f.unit),
        }
        if let Some(note) = &f.note {
            println!("    n/a: {note}");
        }
    }
    let report = serde_json::json!({
        "version": version,
        "cores": cores,
        "quick": options.quick,
        "seconds": started.elapsed().as_secs_f64(),
        "figures": figures
            .iter()
            .map(|f| {
                let mut entry = serde_json::json!({"label": f.label, "value": f.value, "unit": f.unit});
                if let Some(note) = &f.note {
                    entry["note"] = serde_json::json!(note);
                }
                (f.key, entry)
            })
            .collect::<BTreeMap<_, _>>(),
    });
    std::fs::write(
        &options.out,
        serde_json::to_vec_pretty(&report).expect("JSON"),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", options.out.display()));
    println!("(written to {})", options.out.display());
    if let Some(stuck) = stuck {
        eprintln!("report: the scale model did not converge: {stuck}");
        std::process::exit(1);
    }
}

fn format_value(value: f64) -> String {
    if value.abs() >= 1000.0 {
        let whole = value.round() as i64;
        let digits = whole.abs().to_string();
        let mut grouped = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        format!("{}{grouped}", if whole < 0 { "-" } else { "" })
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}
