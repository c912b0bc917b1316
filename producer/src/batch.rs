//! Pure planning of what goes on the wire: records become `PutRecords`
//! entries (plain, or KPL aggregates that never mix predicted shards), and
//! entries are cut into calls within Kinesis's limits. No I/O.

use std::collections::BTreeMap;

use bytes::Bytes;
use tally_contract::kpl::{aggregate, UserRecord};

use crate::shard_map::{route, ShardMap};

/// Most records in one `PutRecords` call.
pub const MAX_RECORDS_PER_CALL: usize = 500;
/// Most bytes (data and partition keys) in one `PutRecords` call.
pub const MAX_BYTES_PER_CALL: usize = 5 * 1024 * 1024;
/// Most bytes (data and partition key) in one Kinesis record.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Longest partition key.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// How records are aggregated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregation {
    /// Most bytes of one aggregate (KPL's default is 51,200).
    pub max_bytes: usize,
    /// Most user records in one aggregate (capped at
    /// `tally_contract::kpl::MAX_SUB_RECORDS`, the most a reader accepts).
    pub max_records: usize,
}

impl Default for Aggregation {
    fn default() -> Self {
        Self {
            max_bytes: 51_200,
            max_records: 1_000,
        }
    }
}

/// One entry of a `PutRecords` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Bytes,
    /// The user records it carries, as indices into the planned slice, in
    /// order (one for a plain record).
    pub members: Vec<usize>,
    pub aggregated: bool,
    /// The shard it should land in, when the shard map knew.
    pub predicted_shard: Option<String>,
}

impl Entry {
    /// What Kinesis counts against its size limits.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

/// A user record's share of an aggregate, with the protobuf framing
/// (generous: key tables are counted per record).
fn aggregated_size(record: &UserRecord) -> usize {
    record.data.len() + record.partition_key.len() + 16
}

/// Aggregate header (magic) and trailer (MD5).
const AGGREGATE_OVERHEAD: usize = 4 + 16;

fn plain(record: &UserRecord, index: usize, shard: Option<String>) -> Entry {
    Entry {
        partition_key: record.partition_key.clone(),
        explicit_hash_key: record.explicit_hash_key.clone(),
        data: record.data.clone(),
        members: vec![index],
        aggregated: false,
        predicted_shard: shard,
    }
}

/// Turns records into entries. Without aggregation (or without a shard
/// map) each record is its own entry. With it, records are grouped by the
/// shard they will land in and packed, in order, into aggregates of at
/// most `max_bytes` and `max_records`; an aggregate is keyed by its first
/// record and carries that record's hash key as its explicit hash key, so
/// it lands in the predicted shard. A lone record stays plain. Entries come
/// out in the order of their first record.
pub fn build_entries(
    records: &[&UserRecord],
    map: &ShardMap,
    aggregation: Option<&Aggregation>,
) -> Vec<Entry> {
    let predicted = |record: &UserRecord| {
        map.shard_of(route(
            &record.partition_key,
            record.explicit_hash_key.as_deref(),
        ))
        .map(|range| range.shard_id.clone())
    };
    let Some(aggregation) = aggregation.filter(|_| !map.is_empty()) else {
        return records
            .iter()
            .enumerate()
            .map(|(index, record)| plain(record, index, predicted(record)))
            .collect();
    };
    // Open aggregates per shard; closed ones in order of their first record.
    let mut open: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut open_bytes: BTreeMap<String, usize> = BTreeMap::new();
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    let mut loose: Vec<usize> = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let Some(shard) = predicted(record) else {
            loose.push(index);
            continue;
        };
        let size = aggregated_size(record);
        if AGGREGATE_OVERHEAD + size > aggregation.max_bytes {
            // Too large to aggregate: it goes plain, and the shard's open
            // aggregate closes first, so that the shard's records (and so
            // each key's) stay in order.
            if let Some(members) = open.get_mut(&shard).filter(|m| !m.is_empty()) {
                groups.push((shard.clone(), std::mem::take(members)));
                open_bytes.insert(shard.clone(), AGGREGATE_OVERHEAD);
            }
            loose.push(index);
            continue;
        }
        let bytes = open_bytes
            .entry(shard.clone())
            .or_insert(AGGREGATE_OVERHEAD);
        let members = open.entry(shard.clone()).or_default();
        if !members.is_empty()
            && (*bytes + size > aggregation.max_bytes
                || members.len()
                    >= aggregation
                        .max_records
                        .min(tally_contract::kpl::MAX_SUB_RECORDS))
        {
            groups.push((shard.clone(), std::mem::take(members)));
            *bytes = AGGREGATE_OVERHEAD;
        }
        members.push(index);
        *bytes += size;
    }
    groups.extend(open.into_iter().filter(|(_, members)| !members.is_empty()));
    let mut entries: Vec<Entry> = loose
        .into_iter()
        .map(|index| plain(records[index], index, predicted(records[index])))
        .collect();
    for (shard, members) in groups {
        if members.len() == 1 {
            entries.push(plain(records[members[0]], members[0], Some(shard)));
            continue;
        }
        let first = records[members[0]];
        let users: Vec<UserRecord> = members.iter().map(|&i| records[i].clone()).collect();
        entries.push(Entry {
            partition_key: first.partition_key.clone(),
            explicit_hash_key: Some(
                route(&first.partition_key, first.explicit_hash_key.as_deref()).to_string(),
            ),
            data: Bytes::from(aggregate(&users)),
            members,
            aggregated: true,
            predicted_shard: Some(shard),
        });
    }
    entries.sort_by_key(|entry| entry.members[0]);
    entries
}

/// Cuts entries into consecutive calls of at most `max_records` entries
/// and `max_bytes` bytes (an entry is never split).
pub fn plan_calls(
    entries: &[Entry],
    max_records: usize,
    max_bytes: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut calls = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (index, entry) in entries.iter().enumerate() {
        let size = entry.size();
        if index > start && (index - start >= max_records || bytes + size > max_bytes) {
            calls.push(start..index);
            start = index;
            bytes = 0;
        }
        bytes += size;
    }
    if start < entries.len() {
        calls.push(start..entries.len());
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(count: u128) -> ShardMap {
        ShardMap::even(count)
    }

    fn record(key: &str, size: usize) -> UserRecord {
        UserRecord {
            partition_key: key.into(),
            explicit_hash_key: None,
            data: Bytes::from(vec![b'x'; size]),
        }
    }

    fn records() -> impl Strategy<Value = Vec<UserRecord>> {
        proptest::collection::vec((0u16..60, 1usize..3000), 0..300).prop_map(|rows| {
            rows.into_iter()
                .map(|(key, size)| record(&format!("key-{key}"), size))
                .collect()
        })
    }

    proptest! {
        /// Whatever the records: every record is in exactly one entry; an
        /// aggregate's records all predict its shard, and it is within its
        /// limits; records of one key keep their order.
        #[test]
        fn entries_cover_records_and_never_mix_shards(
            records in records(),
            shards in 1u128..9,
            max_bytes in 200usize..60_000,
            max_records in 2usize..50,
        ) {
            let map = map(shards);
            let refs: Vec<&UserRecord> = records.iter().collect();
            let aggregation = Aggregation { max_bytes, max_records };
            let entries = build_entries(&refs, &map, Some(&aggregation));
            let mut seen: Vec<usize> = entries.iter().flat_map(|e| e.members.clone()).collect();
            seen.sort();
            prop_assert_eq!(seen, (0..records.len()).collect::<Vec<_>>());
            for entry in &entries {
                let shard = &entry.predicted_shard;
                for &member in &entry.members {
                    let hash = route(&records[member].partition_key, None);
                    prop_assert_eq!(&map.shard_of(hash).map(|r| r.shard_id.clone()), shard);
                }
                if entry.aggregated {
                    prop_assert!(entry.members.len() <= max_records);
                    prop_assert!(entry.data.len() <= max_bytes, "{} > {}", entry.data.len(), max_bytes);
                    let hash: u128 = entry.explicit_hash_key.as_ref().unwrap().parse().unwrap();
                    prop_assert_eq!(&map.shard_of(hash).map(|r| r.shard_id.clone()), shard);
                    let inner = tally_contract::kpl::deaggregate(&entry.data).unwrap();
                    let expected: Vec<UserRecord> = entry.members.iter().map(|&i| records[i].clone()).collect();
                    prop_assert_eq!(inner, expected);
                }
            }
            // Per key, the entries (in call order) carry records in order.
            let mut last: std::collections::HashMap<&str, usize> = Default::default();
            for entry in &entries {
                for &member in &entry.members {
                    let key = records[member].partition_key.as_str();
                    if let Some(previous) = last.insert(key, member) {
                        prop_assert!(previous < member);
                    }
                }
            }
        }

        /// Calls never exceed the limits, cover every entry once, in order.
        #[test]
        fn calls_respect_the_limits(sizes in proptest::collection::vec(1usize..400_000, 0..1200)) {
            let entries: Vec<Entry> = sizes.iter().enumerate().map(|(i, size)| Entry {
                partition_key: "k".into(),
                explicit_hash_key: None,
                data: Bytes::from(vec![0u8; *size]),
                members: vec![i],
                aggregated: false,
                predicted_shard: None,
            }).collect();
            let calls = plan_calls(&entries, MAX_RECORDS_PER_CALL, MAX_BYTES_PER_CALL);
            let mut next = 0;
            for call in &calls {
                prop_assert_eq!(call.start, next);
                next = call.end;
                prop_assert!(call.len() <= MAX_RECORDS_PER_CALL);
                let bytes: usize = entries[call.clone()].iter().map(Entry::size).sum();
                prop_assert!(bytes <= MAX_BYTES_PER_CALL);
            }
            prop_assert_eq!(next, entries.len());
        }
    }

    #[test]
    fn without_a_map_or_aggregation_records_stay_plain() {
        let records = [record("a", 10), record("b", 10)];
        let refs: Vec<&UserRecord> = records.iter().collect();
        let entries = build_entries(&refs, &ShardMap::default(), Some(&Aggregation::default()));
        assert!(entries.iter().all(|e| !e.aggregated));
        let entries = build_entries(&refs, &map(1), None);
        assert!(entries.iter().all(|e| !e.aggregated));
        let entries = build_entries(&refs, &map(1), Some(&Aggregation::default()));
        assert_eq!(entries.len(), 1);
        assert!(entries[0].aggregated);
    }
}
