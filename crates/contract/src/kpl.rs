//! The KPL aggregation format: magic `F3 89 9A C2`, a protobuf
//! `AggregatedRecord`, and the MD5 of the protobuf bytes as a 16-byte
//! trailer. This module de-aggregates (every reader gets it) and aggregates
//! (for producers and tests). It never panics on hostile input, and what
//! one aggregate can make it allocate is bounded: an aggregate is at most
//! [`MAX_AGGREGATE_BYTES`], holds at most [`MAX_SUB_RECORDS`] records and
//! key-table entries, and its keys are no longer than Kinesis allows. The
//! counts and key lengths are checked by walking the protobuf's top-level
//! fields before anything is decoded, so an aggregate that breaks a limit
//! costs one pass over its bytes and is refused (`bad_aggregate`).
//!
//! With those limits, de-aggregating one aggregate allocates at most about
//! `MAX_SUB_RECORDS` × (a partition key of up to 1 KiB, a hash key of 39
//! bytes, a record struct) plus a copy of the data: under 16 MiB (the
//! bound the memory test holds it to), against the 45 GB a 1 MiB aggregate
//! of 90,000 empty records sharing a 0.5 MB key used to ask for.

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

/// The four bytes every KPL aggregate starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// Largest aggregate: one Kinesis record's data blob is at most 1 MiB.
pub const MAX_AGGREGATE_BYTES: usize = 1024 * 1024;
/// Most user records, and most entries in each key table, of one
/// aggregate. The KPL packs 50 KiB by default, and Tally's producer 1,000
/// records; 10,000 votes of 100 bytes fill a whole 1 MiB record.
pub const MAX_SUB_RECORDS: usize = 10_000;
/// Longest partition key, in characters: Kinesis's own limit for a
/// record's key, which the KPL applies to each user record.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Longest explicit hash key: a decimal number below 2^128 has at most 39
/// digits.
pub const MAX_EXPLICIT_HASH_KEY_CHARS: usize = 39;

#[derive(Clone, PartialEq, Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<SubRecord>,
}

#[derive(Clone, PartialEq, Message)]
struct SubRecord {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", required, tag = "3")]
    data: Bytes,
    // Field 4 (`tags`) is not declared: nothing reads it, and prost skips
    // an undeclared field without allocating, so an aggregate full of tags
    // costs nothing to decode.
}

/// One user record inside an aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Bytes,
}

/// Why a record that carries the magic could not be de-aggregated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    #[error("aggregate shorter than magic and checksum ({0} bytes)")]
    TooShort(usize),
    #[error("aggregate checksum mismatch")]
    BadChecksum,
    #[error("aggregate protobuf is invalid: {0}")]
    BadProtobuf(String),
    #[error("sub-record {index} names partition key {key_index} of {table_len}")]
    BadKeyIndex {
        index: usize,
        key_index: u64,
        table_len: usize,
    },
    #[error("aggregate holds no records")]
    Empty,
    #[error("aggregate is {0} bytes; at most {MAX_AGGREGATE_BYTES}")]
    TooLarge(usize),
    #[error("aggregate has more than {MAX_SUB_RECORDS} {0}")]
    TooMany(&'static str),
    #[error("aggregate has a {table} key of {length} bytes; at most {max} characters")]
    KeyTooLong {
        table: &'static str,
        length: usize,
        max: usize,
    },
}

/// Reads a protobuf varint at `at`, moving past it.
fn varint(body: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *body.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Walks the top-level fields of an `AggregatedRecord` without decoding
/// them, and refuses one whose tables or records are too many or whose
/// keys are too long. Malformed framing is left for the decoder to name.
fn check_limits(body: &[u8]) -> Result<(), AggregateError> {
    let (mut keys, mut hashes, mut records) = (0usize, 0usize, 0usize);
    let mut at = 0;
    while at < body.len() {
        let Some(tag) = varint(body, &mut at) else {
            return Ok(());
        };
        let length = match tag & 7 {
            0 => {
                if varint(body, &mut at).is_none() {
                    return Ok(());
                }
                continue;
            }
            1 => 8,
            5 => 4,
            2 => match varint(body, &mut at).and_then(|n| usize::try_from(n).ok()) {
                Some(length) => length,
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        let (count, limit) = match tag >> 3 {
            1 => (&mut keys, Some(("partition", MAX_PARTITION_KEY_CHARS))),
            2 => (
                &mut hashes,
                Some(("explicit hash", MAX_EXPLICIT_HASH_KEY_CHARS)),
            ),
            3 => (&mut records, None),
            _ => {
                at = at.saturating_add(length);
                continue;
            }
        };
        *count += 1;
        if *count > MAX_SUB_RECORDS {
            return Err(AggregateError::TooMany(match tag >> 3 {
                1 => "partition keys",
                2 => "explicit hash keys",
                _ => "records",
            }));
        }
        // A character is at most 4 bytes of UTF-8; the exact count in
        // characters is checked after decoding.
        if let Some((table, max)) = limit {
            if length > max * 4 {
                return Err(AggregateError::KeyTooLong { table, length, max });
            }
        }
        at = at.saturating_add(length);
    }
    Ok(())
}

/// True when `data` starts with the aggregation magic.
pub fn is_aggregate(data: &[u8]) -> bool {
    data.len() >= MAGIC.len() && data[..MAGIC.len()] == MAGIC
}

/// Splits an aggregate into its user records. Only call it when
/// [`is_aggregate`] is true; plain records are not aggregates.
pub fn deaggregate(data: &[u8]) -> Result<Vec<UserRecord>, AggregateError> {
    if data.len() < MAGIC.len() + DIGEST_LEN {
        return Err(AggregateError::TooShort(data.len()));
    }
    if data.len() > MAX_AGGREGATE_BYTES {
        return Err(AggregateError::TooLarge(data.len()));
    }
    let body = &data[MAGIC.len()..data.len() - DIGEST_LEN];
    let trailer = &data[data.len() - DIGEST_LEN..];
    if Md5::digest(body).as_slice() != trailer {
        return Err(AggregateError::BadChecksum);
    }
    check_limits(body)?;
    let aggregate = AggregatedRecord::decode(body)
        .map_err(|error| AggregateError::BadProtobuf(error.to_string()))?;
    if aggregate.records.is_empty() {
        return Err(AggregateError::Empty);
    }
    let key_table = &aggregate.partition_key_table;
    let hash_table = &aggregate.explicit_hash_key_table;
    for (table, keys, max) in [
        ("partition", key_table, MAX_PARTITION_KEY_CHARS),
        ("explicit hash", hash_table, MAX_EXPLICIT_HASH_KEY_CHARS),
    ] {
        if let Some(key) = keys.iter().find(|key| key.chars().count() > max) {
            return Err(AggregateError::KeyTooLong {
                table,
                length: key.len(),
                max,
            });
        }
    }
    aggregate
        .records
        .into_iter()
        .enumerate()
        .map(|(index, sub)| {
            let partition_key = usize::try_from(sub.partition_key_index)
                .ok()
                .and_then(|at| key_table.get(at))
                .ok_or(AggregateError::BadKeyIndex {
                    index,
                    key_index: sub.partition_key_index,
                    table_len: key_table.len(),
                })?
                .clone();
            let explicit_hash_key = match sub.explicit_hash_key_index {
                None => None,
                Some(at) => Some(
                    usize::try_from(at)
                        .ok()
                        .and_then(|at| hash_table.get(at))
                        .ok_or(AggregateError::BadKeyIndex {
                            index,
                            key_index: at,
                            table_len: hash_table.len(),
                        })?
                        .clone(),
                ),
            };
            Ok(UserRecord {
                partition_key,
                explicit_hash_key,
                data: sub.data,
            })
        })
        .collect()
}

/// Builds one aggregate from user records (partition keys and explicit hash
/// keys are stored once each in the tables).
pub fn aggregate(records: &[UserRecord]) -> Vec<u8> {
    let mut message = AggregatedRecord::default();
    for record in records {
        let key_index = table_index(&mut message.partition_key_table, &record.partition_key);
        let hash_index = record
            .explicit_hash_key
            .as_ref()
            .map(|hash| table_index(&mut message.explicit_hash_key_table, hash));
        message.records.push(SubRecord {
            partition_key_index: key_index,
            explicit_hash_key_index: hash_index,
            data: record.data.clone(),
        });
    }
    let body = message.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(Md5::digest(&body).as_slice());
    out
}

fn table_index(table: &mut Vec<String>, value: &str) -> u64 {
    let at = match table.iter().position(|existing| existing == value) {
        Some(at) => at,
        None => {
            table.push(value.to_owned());
            table.len() - 1
        }
    };
    at as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user(key: &str, data: &[u8]) -> UserRecord {
        UserRecord {
            partition_key: key.into(),
            explicit_hash_key: None,
            data: Bytes::copy_from_slice(data),
        }
    }

    #[test]
    fn round_trips_and_shares_key_table() {
        let records = vec![user("a", b"1"), user("b", b"2"), user("a", b"3")];
        let bytes = aggregate(&records);
        assert!(is_aggregate(&bytes));
        assert_eq!(deaggregate(&bytes).unwrap(), records);
    }

    #[test]
    fn rejects_bad_checksum_and_short_input() {
        let mut bytes = aggregate(&[user("a", b"x")]);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert_eq!(deaggregate(&bytes), Err(AggregateError::BadChecksum));
        assert_eq!(deaggregate(&MAGIC), Err(AggregateError::TooShort(4)));
    }

    #[test]
    fn rejects_bad_protobuf_with_valid_checksum() {
        let body = [0xff_u8, 0xff, 0xff];
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(Md5::digest(body).as_slice());
        assert!(matches!(
            deaggregate(&bytes),
            Err(AggregateError::BadProtobuf(_))
        ));
    }

    #[test]
    fn rejects_out_of_range_key_index() {
        let message = AggregatedRecord {
            partition_key_table: vec!["k".into()],
            explicit_hash_key_table: vec![],
            records: vec![SubRecord {
                partition_key_index: 7,
                explicit_hash_key_index: None,
                data: Bytes::from_static(b"d"),
            }],
        };
        let body = message.encode_to_vec();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(Md5::digest(&body).as_slice());
        assert!(matches!(
            deaggregate(&bytes),
            Err(AggregateError::BadKeyIndex { key_index: 7, .. })
        ));
    }

    /// An aggregate around `message`, with a correct checksum.
    fn framed(message: &AggregatedRecord) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(Md5::digest(&body).as_slice());
        bytes
    }

    fn empty_records(count: usize) -> Vec<SubRecord> {
        vec![
            SubRecord {
                partition_key_index: 0,
                explicit_hash_key_index: None,
                data: Bytes::new(),
            };
            count
        ]
    }

    #[test]
    fn refuses_too_many_records_and_too_long_keys() {
        // A 0.5 MB key shared by 90,000 empty records, within 1 MiB.
        let hostile = framed(&AggregatedRecord {
            partition_key_table: vec!["k".repeat(500_000)],
            explicit_hash_key_table: vec![],
            records: empty_records(90_000),
        });
        assert!(hostile.len() <= MAX_AGGREGATE_BYTES, "{}", hostile.len());
        assert!(matches!(
            deaggregate(&hostile),
            Err(AggregateError::KeyTooLong {
                table: "partition",
                ..
            })
        ));
        let many = framed(&AggregatedRecord {
            partition_key_table: vec!["k".into()],
            explicit_hash_key_table: vec![],
            records: empty_records(MAX_SUB_RECORDS + 1),
        });
        assert_eq!(deaggregate(&many), Err(AggregateError::TooMany("records")));
        let at_the_limit = framed(&AggregatedRecord {
            partition_key_table: vec!["é".repeat(MAX_PARTITION_KEY_CHARS)],
            explicit_hash_key_table: vec![],
            records: empty_records(MAX_SUB_RECORDS),
        });
        assert_eq!(deaggregate(&at_the_limit).unwrap().len(), MAX_SUB_RECORDS);
        let long_in_characters = framed(&AggregatedRecord {
            partition_key_table: vec!["k".repeat(MAX_PARTITION_KEY_CHARS + 1)],
            explicit_hash_key_table: vec![],
            records: empty_records(1),
        });
        assert!(matches!(
            deaggregate(&long_in_characters),
            Err(AggregateError::KeyTooLong { .. })
        ));
        let long_hash = framed(&AggregatedRecord {
            partition_key_table: vec!["k".into()],
            explicit_hash_key_table: vec!["9".repeat(40)],
            records: empty_records(1),
        });
        assert!(matches!(
            deaggregate(&long_hash),
            Err(AggregateError::KeyTooLong {
                table: "explicit hash",
                ..
            })
        ));
        let keys = framed(&AggregatedRecord {
            partition_key_table: vec![String::new(); MAX_SUB_RECORDS + 1],
            explicit_hash_key_table: vec![],
            records: empty_records(1),
        });
        assert_eq!(
            deaggregate(&keys),
            Err(AggregateError::TooMany("partition keys"))
        );
        let mut huge = MAGIC.to_vec();
        huge.resize(MAX_AGGREGATE_BYTES + 1, 0);
        assert_eq!(
            deaggregate(&huge),
            Err(AggregateError::TooLarge(MAX_AGGREGATE_BYTES + 1))
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = deaggregate(&bytes);
        }

        /// Arbitrary bodies with a correct checksum, so that the protobuf
        /// parser and the limits behind it are reached; whatever comes out
        /// keeps within the limits.
        #[test]
        fn never_panics_behind_a_correct_checksum(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&body);
            bytes.extend_from_slice(Md5::digest(&body).as_slice());
            match deaggregate(&bytes) {
                Err(AggregateError::BadChecksum | AggregateError::TooShort(_)) => {
                    prop_assert!(false, "the checksum is right and the input long enough");
                }
                Ok(records) => {
                    prop_assert!(records.len() <= MAX_SUB_RECORDS);
                    for record in records {
                        prop_assert!(record.partition_key.chars().count() <= MAX_PARTITION_KEY_CHARS);
                    }
                }
                Err(_) => {}
            }
        }

        #[test]
        fn aggregate_round_trip(items in proptest::collection::vec(("[a-z]{1,8}", proptest::option::of("[0-9]{1,38}"), proptest::collection::vec(any::<u8>(), 0..64)), 1..40)) {
            let records: Vec<UserRecord> = items.into_iter().map(|(key, hash, data)| UserRecord {
                partition_key: key, explicit_hash_key: hash, data: Bytes::from(data),
            }).collect();
            prop_assert_eq!(deaggregate(&aggregate(&records)).unwrap(), records);
        }
    }
}
