//! What de-aggregating one hostile or worst-case aggregate allocates,
//! measured by counting this test binary's allocations (its own binary, so
//! no other test allocates meanwhile).

use md5::{Digest, Md5};
use peak_alloc::PeakAlloc;
use tally_contract::kpl::{self, AggregateError, UserRecord};

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

/// The bound stated in `tally_contract::kpl`'s documentation.
const BOUND: usize = 16 << 20;

/// Bytes allocated at the peak of `work`, above what was live before it.
fn peak_of<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let out = work();
    (out, ALLOCATOR.peak_usage() - before)
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut bytes = kpl::MAGIC.to_vec();
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(Md5::digest(body).as_slice());
    bytes
}

fn varint(mut value: usize, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[test]
fn the_worst_aggregates_stay_within_the_stated_memory_bound() {
    // Refused: a 0.5 MB partition key shared by 90,000 empty records, in
    // under 1 MiB. Each record would have cloned the key (45 GB).
    let key = vec![b'k'; 500_000];
    let mut body = vec![0x0a];
    varint(key.len(), &mut body);
    body.extend_from_slice(&key);
    for _ in 0..90_000 {
        // records { partition_key_index: 0, data: "" }
        body.extend_from_slice(&[0x1a, 0x04, 0x08, 0x00, 0x1a, 0x00]);
    }
    let hostile = framed(&body);
    assert!(hostile.len() <= kpl::MAX_AGGREGATE_BYTES);
    let (result, peak) = peak_of(|| kpl::deaggregate(&hostile));
    assert!(
        matches!(result, Err(AggregateError::KeyTooLong { .. })),
        "{result:?}"
    );
    assert!(peak < 1 << 20, "refusing it allocated {peak} bytes");

    // Accepted, and cheap: one record carrying 400,000 empty tags (field
    // 4, which nothing reads and the decoder skips without allocating).
    let mut record = vec![0x08, 0x00, 0x1a, 0x00];
    for _ in 0..400_000 {
        record.extend_from_slice(&[0x22, 0x00]);
    }
    let mut body = vec![0x0a, 0x01, b'k', 0x1a];
    varint(record.len(), &mut body);
    body.extend_from_slice(&record);
    let tagged = framed(&body);
    assert!(tagged.len() <= kpl::MAX_AGGREGATE_BYTES);
    let (result, peak) = peak_of(|| kpl::deaggregate(&tagged));
    assert_eq!(result.unwrap().len(), 1);
    assert!(
        peak < 1 << 20,
        "an aggregate of tags allocated {peak} bytes"
    );

    // Accepted: the most records, each carrying the longest key (256
    // four-byte characters) and the longest explicit hash key.
    let records: Vec<UserRecord> = (0..kpl::MAX_SUB_RECORDS)
        .map(|_| UserRecord {
            partition_key: "\u{1D11E}".repeat(kpl::MAX_PARTITION_KEY_CHARS),
            explicit_hash_key: Some("9".repeat(kpl::MAX_EXPLICIT_HASH_KEY_CHARS)),
            data: bytes::Bytes::from_static(b"{}"),
        })
        .collect();
    let worst = kpl::aggregate(&records);
    drop(records);
    let (result, peak) = peak_of(|| kpl::deaggregate(&worst));
    assert_eq!(result.unwrap().len(), kpl::MAX_SUB_RECORDS);
    assert!(
        peak < BOUND,
        "de-aggregating the worst accepted aggregate allocated {peak} bytes; the bound is {BOUND}"
    );
    println!(
        "worst accepted aggregate: {} bytes in, peak {peak} bytes allocated",
        worst.len()
    );
}
