//! Buckets and shards: which bucket a key lands in, and which shard of a node owns a bucket.
//!
//! A key's bucket is `CRC-32(key) % total_buckets`, with CRC-32 the IEEE polynomial as
//! computed by `crc32fast` (the same checksum as the record format). The function is fixed by
//! this crate, not by the process: every process, machine, version and site puts a key in the
//! same bucket, which the WAN path relies on (a parallel sender's bucket at one site is the
//! receiver's bucket at the other). Changing it is a format change; `tests::bucket_of_is_stable`
//! pins it.
//!
//! Which shard owns a bucket is read from one table built at construction ([`BucketTable`]);
//! nothing else computes it, so a later rebalance only has to change the table.

use std::fmt;
use strait_queue::ids::BucketId;

/// Geode's default `total-num-buckets`.
pub const TOTAL_BUCKETS_DEFAULT: u16 = 113;
/// Most buckets a region may have. Per-bucket state (the owner table here, a queue per bucket
/// per parallel sender) grows with it; 4096 is 36 times Geode's default, enough for a few
/// thousand cores across a site, and keeps bucket ids in 12 bits.
pub const BUCKETS_MAX: u16 = 4096;
/// Most shards (executors, one per core) a node may run; `site.toml`'s `shards` range.
pub const SHARDS_MAX: u16 = 1024;

/// A shard: one core's executor within a node, `0..shards`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The raw value.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Why a bucket table cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
    #[error("total-num-buckets {0} is out of range 1..={BUCKETS_MAX}")]
    TotalBuckets(u16),
    #[error("shards {0} is out of range 1..={SHARDS_MAX}")]
    Shards(u16),
}

/// The stable hash of a key: CRC-32 (IEEE) of its bytes.
pub fn key_hash(key: &[u8]) -> u32 {
    crc32fast::hash(key)
}

/// The bucket of a key whose [`key_hash`] is `hash`, among `total_buckets` (at least 1).
pub(crate) fn bucket_of_hash(hash: u32, total_buckets: u16) -> BucketId {
    // The remainder is below `total_buckets`, so it fits in a u16.
    BucketId((hash % u32::from(total_buckets.max(1))) as u16)
}

/// Which bucket each key lands in and which shard owns each bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketTable {
    total_buckets: u16,
    shards: u16,
    /// The owner of bucket `b` at index `b`: the single source of truth for placement.
    owners: Vec<ShardId>,
}

impl BucketTable {
    /// A table of `total_buckets` buckets over `shards` shards, bucket `b` owned by shard
    /// `b % shards`. More shards than buckets is allowed; the extra shards own nothing.
    pub fn new(total_buckets: u16, shards: u16) -> Result<BucketTable, BucketError> {
        if !(1..=BUCKETS_MAX).contains(&total_buckets) {
            return Err(BucketError::TotalBuckets(total_buckets));
        }
        if !(1..=SHARDS_MAX).contains(&shards) {
            return Err(BucketError::Shards(shards));
        }
        let owners = (0..total_buckets).map(|b| ShardId(b % shards)).collect();
        Ok(BucketTable {
            total_buckets,
            shards,
            owners,
        })
    }

    /// The number of buckets (`total-num-buckets`).
    pub fn total_buckets(&self) -> u16 {
        self.total_buckets
    }

    /// The number of shards.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// The bucket of `key`: `key_hash(key) % total_buckets`.
    pub fn bucket_of(&self, key: &[u8]) -> BucketId {
        bucket_of_hash(key_hash(key), self.total_buckets)
    }

    /// The shard that owns `bucket`; `None` if the bucket is not below `total_buckets`.
    pub fn shard_of(&self, bucket: BucketId) -> Option<ShardId> {
        self.owners.get(usize::from(bucket.0)).copied()
    }

    /// The buckets `shard` owns, in increasing order; none for a shard outside the table.
    pub fn buckets_of(&self, shard: ShardId) -> impl Iterator<Item = BucketId> + '_ {
        (0..self.total_buckets)
            .zip(&self.owners)
            .filter(move |&(_, &owner)| owner == shard)
            .map(|(b, _)| BucketId(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_crc32_ieee() {
        // The CRC-32/ISO-HDLC check value.
        assert_eq!(key_hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(key_hash(b""), 0);
    }

    #[test]
    fn bucket_of_is_stable() {
        // Computed independently (Python's zlib.crc32). A change here moves keys between
        // buckets across sites and versions: a format change.
        let t = BucketTable::new(TOTAL_BUCKETS_DEFAULT, 1).unwrap();
        let expected: [(&[u8], u16); 7] = [
            (b"", 0),
            (b"a", 21),
            (b"hello", 39),
            (b"user:1", 22),
            (b"user:2", 49),
            (b"123456789", 29),
            (b"strait", 38),
        ];
        for (key, bucket) in expected {
            assert_eq!(t.bucket_of(key), BucketId(bucket), "key {key:?}");
        }
        let t = BucketTable::new(BUCKETS_MAX, 7).unwrap();
        assert_eq!(t.bucket_of(b"hello"), BucketId(1670));
        assert_eq!(t.bucket_of(b"123456789"), BucketId(2342));
    }

    #[test]
    fn distribution_is_even_over_113_buckets() {
        let t = BucketTable::new(TOTAL_BUCKETS_DEFAULT, 2).unwrap();
        let keys = 100_000u32;
        let mut counts = vec![0u32; usize::from(TOTAL_BUCKETS_DEFAULT)];
        for i in 0..keys {
            let key = format!("key:{i}");
            counts[usize::from(t.bucket_of(key.as_bytes()).0)] += 1;
        }
        let expected = f64::from(keys) / f64::from(TOTAL_BUCKETS_DEFAULT);
        let chi2: f64 = counts
            .iter()
            .map(|&c| (f64::from(c) - expected).powi(2) / expected)
            .sum();
        // 112 degrees of freedom: mean 112, standard deviation about 15.
        assert!(chi2 < 180.0, "chi-square {chi2}");
        let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
        assert!(
            f64::from(max) / f64::from(min) < 1.25,
            "min {min} max {max}"
        );
    }

    #[test]
    fn every_bucket_has_exactly_one_shard() {
        for (buckets, shards) in [(113, 1), (113, 2), (113, 7), (1, 1), (4096, 1024), (3, 8)] {
            let t = BucketTable::new(buckets, shards).unwrap();
            let mut owned = vec![0u32; usize::from(buckets)];
            for s in 0..shards {
                for b in t.buckets_of(ShardId(s)) {
                    owned[usize::from(b.0)] += 1;
                    assert_eq!(t.shard_of(b), Some(ShardId(s)));
                }
            }
            assert!(
                owned.iter().all(|&n| n == 1),
                "{buckets} buckets, {shards} shards"
            );
        }
    }

    #[test]
    fn default_assignment_is_bucket_modulo_shards() {
        let t = BucketTable::new(113, 2).unwrap();
        assert_eq!(t.shard_of(BucketId(0)), Some(ShardId(0)));
        assert_eq!(t.shard_of(BucketId(1)), Some(ShardId(1)));
        assert_eq!(t.shard_of(BucketId(112)), Some(ShardId(0)));
        assert_eq!(t.buckets_of(ShardId(0)).count(), 57);
        assert_eq!(t.buckets_of(ShardId(1)).count(), 56);
        let t = BucketTable::new(3, 8).unwrap();
        assert_eq!(t.buckets_of(ShardId(5)).count(), 0);
    }

    #[test]
    fn out_of_range_lookups_answer_nothing() {
        let t = BucketTable::new(113, 2).unwrap();
        assert_eq!(t.shard_of(BucketId(113)), None);
        assert_eq!(t.shard_of(BucketId(u16::MAX)), None);
        assert_eq!(t.buckets_of(ShardId(2)).count(), 0);
    }

    #[test]
    fn invalid_parameters_are_refused() {
        assert_eq!(BucketTable::new(0, 1), Err(BucketError::TotalBuckets(0)));
        assert_eq!(
            BucketTable::new(BUCKETS_MAX + 1, 1),
            Err(BucketError::TotalBuckets(BUCKETS_MAX + 1))
        );
        assert_eq!(BucketTable::new(113, 0), Err(BucketError::Shards(0)));
        assert_eq!(
            BucketTable::new(113, SHARDS_MAX + 1),
            Err(BucketError::Shards(SHARDS_MAX + 1))
        );
        assert!(BucketTable::new(BUCKETS_MAX, SHARDS_MAX).is_ok());
    }
}
