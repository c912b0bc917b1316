//! `fuzz --target vote|kpl|gateway [--seconds N] [--seed S]`: a mutational
//! fuzzer for the inputs Tally takes from outside, on the stable toolchain
//! (cargo-fuzz needs nightly, which this machine cannot fetch). It starts
//! from the corpus in `ops/fuzz-corpus/<target>/`, mutates inputs (bit
//! flips, byte changes, insertions, deletions, splices, interesting
//! values), and runs the target under `catch_unwind`. For `kpl`, half of
//! the mutants get their MD5 trailer fixed up so that the protobuf parser
//! behind the checksum is reached, and one in 32 has a short slice of its
//! body repeated up to past 1 MiB, so that the limits on records, key
//! tables and key lengths are reached; a de-aggregation that breaks one of
//! those limits counts as a crash. A panic saves the input to
//! `ops/fuzz-corpus/<target>/crash-*` and exits 1; inputs that reach a new
//! outcome are added to the in-memory corpus.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use rand::{Rng, SeedableRng};

const MAX_INPUT: usize = 8192;
const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// What one run of a target did, coarsely: new values grow the corpus.
type Outcome = String;

fn run_vote(input: &[u8]) -> Outcome {
    match tally_contract::vote::decode(input) {
        Ok(vote) => format!("ok:{}:{}", vote.cast_at.is_some(), vote.option.len().min(3)),
        Err(rejection) => format!("err:{}", rejection.reason.as_str()),
    }
}

fn run_kpl(input: &[u8]) -> Outcome {
    let aggregate = tally_contract::kpl::is_aggregate(input);
    match tally_contract::kpl::deaggregate(input) {
        Ok(records) => {
            use tally_contract::kpl::{
                MAX_AGGREGATE_BYTES, MAX_EXPLICIT_HASH_KEY_CHARS, MAX_PARTITION_KEY_CHARS,
                MAX_SUB_RECORDS,
            };
            assert!(
                input.len() <= MAX_AGGREGATE_BYTES,
                "an oversized aggregate was split"
            );
            assert!(
                records.len() <= MAX_SUB_RECORDS,
                "{} records",
                records.len()
            );
            for record in &records {
                assert!(record.partition_key.chars().count() <= MAX_PARTITION_KEY_CHARS);
                assert!(record
                    .explicit_hash_key
                    .as_ref()
                    .is_none_or(|key| key.chars().count() <= MAX_EXPLICIT_HASH_KEY_CHARS));
                let _ = tally_contract::vote::decode(&record.data);
            }
            format!("ok:{aggregate}:{}", records.len().min(4))
        }
        Err(error) => format!(
            "err:{aggregate}:{}",
            error.to_string().chars().take(24).collect::<String>()
        ),
    }
}

/// The gateway's request parsing: the Authorization header, the JSON
/// bodies (strict), poll ids, times, and the JWT header.
fn run_gateway(input: &[u8]) -> Outcome {
    let mut outcome = String::new();
    let (head, body) = match input.iter().position(|b| *b == b'\n') {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(value) = axum::http::HeaderValue::from_str(&head) {
        headers.insert(axum::http::header::AUTHORIZATION, value);
    }
    match tally_gateway::auth::bearer(&headers) {
        Ok(token) => {
            outcome.push_str("bearer ");
            outcome.push_str(if jsonwebtoken::decode_header(token).is_ok() {
                "jwt "
            } else {
                "nojwt "
            });
        }
        Err(error) => outcome.push_str(error.status_and_code().1),
    }
    let vote = serde_json::from_slice::<tally_gateway::api::VoteRequest>(body).is_ok();
    let poll = serde_json::from_slice::<tally_gateway::api::CreatePoll>(body);
    let close = serde_json::from_slice::<tally_gateway::api::CloseRequest>(body).is_ok();
    if let Ok(poll) = &poll {
        for text in [&poll.opens_at, &poll.closes_at].into_iter().flatten() {
            let _ = tally_contract::time::parse_rfc3339(text);
        }
        let _ = tally_contract::vote::valid_id(&poll.poll_id, 128);
    }
    let text = String::from_utf8_lossy(body);
    let _ = tally_contract::time::parse_rfc3339(&text);
    let _ = tally_contract::vote::valid_id(&text, 128);
    outcome.push_str(&format!(" {vote}{}{close}", poll.is_ok()));
    outcome
}

fn mutate(rng: &mut rand::rngs::StdRng, corpus: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        match rng.gen_range(0..7) {
            0 if !data.is_empty() => {
                let at = rng.gen_range(0..data.len());
                data[at] ^= 1 << rng.gen_range(0..8);
            }
            1 if !data.is_empty() => {
                let at = rng.gen_range(0..data.len());
                data[at] = rng.gen();
            }
            2 if data.len() < MAX_INPUT => {
                let at = rng.gen_range(0..=data.len());
                let byte = *[b'"', b'{', b'}', b':', b',', b'\\', 0, 0xff, 0x80, b'0']
                    .get(rng.gen_range(0..10))
                    .unwrap();
                data.insert(at, byte);
            }
            3 if !data.is_empty() => {
                let at = rng.gen_range(0..data.len());
                let end = (at + rng.gen_range(1..=8)).min(data.len());
                data.drain(at..end);
            }
            4 => {
                let other = &corpus[rng.gen_range(0..corpus.len())];
                if !other.is_empty() {
                    let from = rng.gen_range(0..other.len());
                    let take = rng.gen_range(1..=(other.len() - from).min(64));
                    let at = rng.gen_range(0..=data.len());
                    data.splice(at..at, other[from..from + take].iter().copied());
                }
            }
            5 if data.len() >= 4 => {
                let at = rng.gen_range(0..data.len() - 3);
                let value: u32 = *[0, 1, 0x7f, 0x80, 0xff, 0xffff, u32::MAX, 0x8000_0000]
                    .get(rng.gen_range(0..8))
                    .unwrap();
                data[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            _ => {
                let at = rng.gen_range(0..=data.len());
                data.truncate(at);
            }
        }
    }
    data.truncate(MAX_INPUT);
    data
}

/// Repeats a short slice of a KPL record's body many times, up to a
/// little past the largest aggregate, to reach the limits.
fn amplify(rng: &mut impl Rng, data: &mut Vec<u8>) {
    if data.len() < MAGIC.len() + 16 + 1 {
        return;
    }
    let body_end = data.len() - 16;
    let from = rng.gen_range(MAGIC.len()..body_end);
    let take = rng.gen_range(1..=(body_end - from).min(64));
    let slice = data[from..from + take].to_vec();
    let budget = tally_contract::kpl::MAX_AGGREGATE_BYTES + 64 * 1024 - data.len().min(1 << 20);
    let times = rng.gen_range(1..=(budget / take).max(1));
    let at = rng.gen_range(MAGIC.len()..=body_end);
    data.splice(at..at, slice.iter().copied().cycle().take(take * times));
}

/// Recomputes a KPL record's MD5 trailer (and puts the magic back).
fn fix_kpl(data: &mut [u8]) {
    if data.len() < MAGIC.len() + 16 {
        return;
    }
    data[..4].copy_from_slice(&MAGIC);
    let body_end = data.len() - 16;
    let digest = Md5::digest(&data[4..body_end]);
    data[body_end..].copy_from_slice(&digest);
}

fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|path| path.is_file())
        .filter_map(|path| std::fs::read(path).ok())
        .collect()
}

pub fn fuzz(target: &str, seconds: u64, seed: u64) {
    let run: fn(&[u8]) -> Outcome = match target {
        "vote" => run_vote,
        "kpl" => run_kpl,
        "gateway" => run_gateway,
        other => {
            eprintln!("unknown fuzz target {other:?}: vote, kpl or gateway");
            std::process::exit(2);
        }
    };
    let dir = tally_lease::testing::repo_root()
        .join("ops/fuzz-corpus")
        .join(target);
    let mut corpus = load_corpus(&dir);
    if corpus.is_empty() {
        eprintln!("no corpus in {}", dir.display());
        std::process::exit(2);
    }
    let seeds = corpus.len();
    // Regression: every saved input, crashes included, must pass now.
    for input in &corpus {
        if std::panic::catch_unwind(|| run(input)).is_err() {
            eprintln!("fuzz {target}: a corpus input still panics");
            std::process::exit(1);
        }
    }
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut outcomes: BTreeSet<Outcome> = BTreeSet::new();
    let started = Instant::now();
    let limit = Duration::from_secs(seconds);
    let mut runs: u64 = 0;
    let mut last_report = Instant::now();
    while started.elapsed() < limit {
        let input = corpus[rng.gen_range(0..corpus.len())].clone();
        let mut mutant = mutate(&mut rng, &corpus, &input);
        if target == "kpl" {
            let amplified = rng.gen_ratio(1, 32);
            if amplified {
                amplify(&mut rng, &mut mutant);
            }
            if amplified || rng.gen_bool(0.5) {
                fix_kpl(&mut mutant);
            }
        }
        runs += 1;
        match std::panic::catch_unwind(|| run(&mutant)) {
            Ok(outcome) => {
                if outcomes.insert(outcome) && corpus.len() < 10_000 && mutant.len() <= MAX_INPUT {
                    corpus.push(mutant);
                }
            }
            Err(_) => {
                let path = dir.join(format!("crash-{runs}-{seed}"));
                let _ = std::fs::write(&path, &mutant);
                let _ = std::panic::take_hook();
                eprintln!(
                    "fuzz {target}: PANIC after {runs} runs; input saved to {}",
                    path.display()
                );
                std::process::exit(1);
            }
        }
        if last_report.elapsed() >= Duration::from_secs(30) {
            eprintln!(
                "fuzz {target}: {runs} runs, {} outcomes, corpus {} ({} s)",
                outcomes.len(),
                corpus.len(),
                started.elapsed().as_secs()
            );
            last_report = Instant::now();
        }
    }
    println!(
        "fuzz {target}: ran {} min {} s without a crash: {runs} runs ({:.0}/s), {} distinct outcomes, corpus {seeds} seeds grown to {}, seed {seed}",
        started.elapsed().as_secs() / 60,
        started.elapsed().as_secs() % 60,
        runs as f64 / started.elapsed().as_secs_f64(),
        outcomes.len(),
        corpus.len()
    );
}
