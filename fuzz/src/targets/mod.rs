//! The fuzz targets, one module each.

pub mod cachexml;
pub mod config;
pub mod deadletter;
pub mod frame;
pub mod resp;
pub mod segment;

use crate::rng::Rng;
use strait_queue::ids::{BucketId, EventId, MemberId, RegionId, Seq, SiteId, StreamId, VersionTag};
use strait_queue::record::{self, Event, Op};

/// A random valid record with sequence number `seq`.
pub fn random_record(rng: &mut Rng, seq: u64) -> Vec<u8> {
    let op = *rng.pick(&[Op::Create, Op::Update, Op::Destroy, Op::VersionOnly]);
    let recipients: Vec<SiteId> = (0..rng.small_len(4)).map(|_| SiteId(rng.byte())).collect();
    let key = rng.some_bytes(24);
    let value = if op.has_value() {
        rng.some_bytes(200)
    } else {
        Vec::new()
    };
    let event = Event {
        op,
        region: RegionId(rng.below(4) as u16),
        bucket: BucketId(rng.below(113) as u16),
        id: EventId {
            origin_site: SiteId(rng.byte()),
            origin_member: MemberId(rng.below(4) as u16),
            stream: StreamId(rng.below(8) as u32),
            seq: rng.next_u64() >> rng.below(64),
        },
        version: VersionTag {
            timestamp_us: rng.next_u64() >> rng.below(64),
            site: SiteId(rng.byte()),
        },
        recipients: &recipients,
        key: &key,
        value: &value,
    };
    let len = record::encoded_len(&event).expect("within every limit");
    let mut out = vec![0; len];
    record::encode_into(&mut out, &event, Seq(seq));
    out
}

/// Recomputes the CRC of every record that still parses from `at` on, so mutations of
/// fields behind the CRC are judged by the checks after it. Stops at the first record whose
/// lengths do not fit.
pub fn reseal_records(data: &mut [u8], mut at: usize) {
    while let Some(rest) = data.get(at..) {
        if rest.len() < record::HEADER_BYTES {
            return;
        }
        let r = usize::from(rest[7]);
        let k = usize::from(u16::from_le_bytes([rest[8], rest[9]]));
        let v = u32::from_le_bytes([rest[10], rest[11], rest[12], rest[13]]) as usize;
        let len = record::HEADER_BYTES + r + k + v;
        if len > rest.len() || (r == 0 && k == 0 && v == 0 && rest[4] == 0) {
            return;
        }
        let crc = crc32fast::hash(&rest[4..len]);
        data[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        at += len;
    }
}
