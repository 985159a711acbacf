//! Helpers shared by the queue's integration tests.
#![allow(dead_code)]

use strait_queue::ids::*;
use strait_queue::queue::{Batch, SenderQueue};
use strait_queue::record::{self, Event, Op};

/// A deterministic event whose value tells its number `n`; `len` is the value length.
pub fn event_parts(n: u64, len: usize) -> (Vec<u8>, Vec<u8>) {
    let key = format!("key-{}", n % 1000).into_bytes();
    let mut value = vec![0u8; len.max(8)];
    value[..8].copy_from_slice(&n.to_le_bytes());
    for (i, b) in value[8..].iter_mut().enumerate() {
        *b = (n as usize + i) as u8;
    }
    (key, value)
}

pub fn event<'a>(op: Op, n: u64, key: &'a [u8], value: &'a [u8]) -> Event<'a> {
    Event {
        op,
        region: RegionId(1),
        bucket: BucketId((n % 113) as u16),
        id: EventId {
            origin_site: SiteId(1),
            origin_member: MemberId(7),
            stream: StreamId(3),
            seq: n,
        },
        version: VersionTag {
            timestamp_us: 1_000_000 + n,
            site: SiteId(1),
        },
        recipients: &[SiteId(2), SiteId(3)],
        key,
        value: if op.has_value() { value } else { &[] },
    }
}

/// Appends event number `n` (an update) with a `len`-byte value.
pub fn append_n(
    q: &mut SenderQueue,
    queue: QueueId,
    n: u64,
    len: usize,
) -> Result<Seq, strait_queue::queue::AppendError> {
    let (k, v) = event_parts(n, len);
    q.append(queue, &event(Op::Create, n, &k, &v))
}

/// The event numbers carried by a batch, decoding every record (CRC checked).
pub fn batch_numbers(q: &SenderQueue, b: &Batch) -> Vec<u64> {
    let mut out = Vec::new();
    for slice in q.batch_slices(b) {
        let mut at = 0;
        while at < slice.len() {
            let r = record::decode(&slice[at..]).expect("valid record in batch");
            out.push(r.event_id().seq);
            at += r.len();
        }
    }
    out
}

/// Peeks everything left, acking nothing; returns event numbers in order.
pub fn drain_numbers(q: &mut SenderQueue, queue: QueueId) -> Vec<u64> {
    let mut out = Vec::new();
    while let Some(b) = q.peek(queue, 1000, 1 << 20).expect("peek") {
        out.extend(batch_numbers(q, &b));
    }
    out
}
