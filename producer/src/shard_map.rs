//! Which shard a record will land in: the open shards' hash key ranges
//! (from `ListShards`) and the 128-bit hash key Kinesis derives from a
//! partition key (MD5, big-endian) or takes from an explicit hash key.
//! Pure: no I/O.

pub use tally_contract::hash::hash_key;

/// One open shard's range of hash keys, inclusive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRange {
    pub shard_id: String,
    pub start: u128,
    pub end: u128,
}

/// The open shards of a stream, by hash key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardMap {
    ranges: Vec<ShardRange>,
}

impl ShardMap {
    /// A map of open shards; ranges are sorted by their start.
    pub fn new(mut ranges: Vec<ShardRange>) -> Self {
        ranges.sort_by_key(|range| range.start);
        Self { ranges }
    }

    /// `count` shards splitting the hash space evenly, named
    /// `shardId-000000000000` and on (as a new stream's are; for tests).
    pub fn even(count: u128) -> Self {
        let count = count.max(1);
        let width = u128::MAX / count;
        Self::new(
            (0..count)
                .map(|index| ShardRange {
                    shard_id: format!("shardId-{index:012}"),
                    start: width * index,
                    end: if index + 1 == count {
                        u128::MAX
                    } else {
                        width * (index + 1) - 1
                    },
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn ranges(&self) -> &[ShardRange] {
        &self.ranges
    }

    /// The shard whose range holds `hash`, if the map covers it.
    pub fn shard_of(&self, hash: u128) -> Option<&ShardRange> {
        let at = self.ranges.partition_point(|range| range.start <= hash);
        at.checked_sub(1)
            .map(|at| &self.ranges[at])
            .filter(|range| hash <= range.end)
    }
}

/// The hash key a record routes by: its explicit hash key (decimal) when
/// it has one, else the MD5 of its partition key.
pub fn route(partition_key: &str, explicit_hash_key: Option<&str>) -> u128 {
    explicit_hash_key
        .and_then(|text| text.parse::<u128>().ok())
        .unwrap_or_else(|| hash_key(partition_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hash_has_exactly_its_shard() {
        let map = ShardMap::even(4);
        assert_eq!(map.shard_of(0).unwrap().shard_id, "shardId-000000000000");
        assert_eq!(
            map.shard_of(u128::MAX).unwrap().shard_id,
            "shardId-000000000003"
        );
        let width = u128::MAX / 4;
        assert_eq!(
            map.shard_of(width).unwrap().shard_id,
            "shardId-000000000001"
        );
        assert_eq!(
            map.shard_of(width - 1).unwrap().shard_id,
            "shardId-000000000000"
        );
        assert!(ShardMap::default().shard_of(5).is_none());
        // MD5 of the partition key, as Kinesis computes it.
        assert_eq!(hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
        assert_eq!(route("x", Some("7")), 7);
        assert_eq!(route("", Some("not a number")), hash_key(""));
    }
}
