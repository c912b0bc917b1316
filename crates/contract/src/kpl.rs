//! The KPL aggregation format: magic `F3 89 9A C2`, a protobuf
//! `AggregatedRecord`, and the MD5 of the protobuf bytes as a 16-byte
//! trailer. This module de-aggregates (every reader gets it) and aggregates
//! (for producers and tests). It never panics on hostile input.

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

/// The four bytes every KPL aggregate starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

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
    #[prost(message, repeated, tag = "4")]
    tags: Vec<Tag>,
}

#[derive(Clone, PartialEq, Message)]
struct Tag {
    #[prost(string, required, tag = "1")]
    key: String,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
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
    let body = &data[MAGIC.len()..data.len() - DIGEST_LEN];
    let trailer = &data[data.len() - DIGEST_LEN..];
    if Md5::digest(body).as_slice() != trailer {
        return Err(AggregateError::BadChecksum);
    }
    let aggregate = AggregatedRecord::decode(body)
        .map_err(|error| AggregateError::BadProtobuf(error.to_string()))?;
    if aggregate.records.is_empty() {
        return Err(AggregateError::Empty);
    }
    let key_table = &aggregate.partition_key_table;
    let hash_table = &aggregate.explicit_hash_key_table;
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
            tags: Vec::new(),
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
                tags: vec![],
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

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = deaggregate(&bytes);
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
