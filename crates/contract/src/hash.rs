//! The hash key Kinesis routes a record by: the MD5 of its partition key,
//! read as a big-endian 128-bit number
//! (<https://docs.aws.amazon.com/kinesis/latest/APIReference/API_PutRecord.html>).

use md5::{Digest, Md5};

/// The 128-bit hash key Kinesis derives from a partition key.
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_the_md5_of_the_key() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
        assert_ne!(hash_key("a"), hash_key("b"));
    }
}
