//! A local create, update or destroy, as one pure step: plan it on the store, ask every
//! attached sender's queue for room, then queue it everywhere and update the store with
//! nothing in between (docs/architecture.md, "A write is queued before it is
//! acknowledged"). The node's `Shard::write` (`engine/node/src/server.rs`) does the same
//! around its async queues; the simulator (`engine/sim`) runs this.
//!
//! | item | what it does |
//! |---|---|
//! | [`next_stream_seq`] | the stream sequence number of a stream's next event: after the last, never below the clock |
//! | [`local_write`] → [`Written`] | plan, check room everywhere, append everywhere, write the store |
//! | [`WriteError`] | a store refusal or a queue refusal (nothing changed), or a queue to wait for |

use crate::region::{RegionStore, StoreError, WriteOutcome};
use bytes::Bytes;
use strait_queue::ids::{BucketId, EventId, MemberId, QueueId, RegionId, Seq, SiteId, StreamId};
use strait_queue::queue::{AppendError, SenderQueue};
use strait_queue::record::{Event, Op};

/// The sequence number of a stream's next event, given the last one this process gave
/// (`None` after a start) and the clock in microseconds: it continues after a restart
/// without being stored, as long as the clock moved past the last one.
pub fn next_stream_seq(last: Option<u64>, now_us: u64) -> u64 {
    last.map_or(now_us, |l| l.saturating_add(1).max(now_us))
}

/// The stream of a region's bucket at its origin member.
pub fn stream_of(region: RegionId, bucket: BucketId) -> StreamId {
    StreamId(u32::from(region.0) << 16 | u32::from(bucket.0))
}

/// One local write.
#[derive(Clone, Copy, Debug)]
pub struct LocalWrite<'a> {
    pub site: SiteId,
    pub member: MemberId,
    pub region: RegionId,
    pub bucket: BucketId,
    pub key: &'a [u8],
    /// `None`: destroy.
    pub value: Option<&'a [u8]>,
    pub now_us: u64,
    /// The region's recipient set for a local write (every attached sender's target).
    pub recipients: &'a [SiteId],
}

/// Why a local write was not made. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("queue {index}: {error}")]
    Queue { index: usize, error: AppendError },
    /// Queue `index` is waiting for a segment; plan the write again once it has one.
    #[error("queue {0} is waiting for a segment")]
    WouldBlock(usize),
}

/// A local write that was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub outcome: WriteOutcome,
    pub id: EventId,
    /// The sequence number each queue gave it, in the order of the queues.
    pub seqs: Vec<Seq>,
}

/// Makes `write` on `store` and queues it in every `(queue, queue id)` of `queues`, or
/// changes nothing. `last_seq` is the stream's last sequence number (see
/// [`next_stream_seq`]); on success it holds the new one. `Ok(None)`: a destroy of a key that
/// is not live, which is no event.
pub fn local_write(
    store: &mut RegionStore,
    queues: &mut [(&mut SenderQueue, QueueId)],
    last_seq: &mut Option<u64>,
    write: &LocalWrite<'_>,
) -> Result<Option<Written>, WriteError> {
    let Some(outcome) = store.plan_local(write.key, write.value, write.now_us, write.site)? else {
        return Ok(None);
    };
    let seq = next_stream_seq(*last_seq, write.now_us);
    let id = EventId {
        origin_site: write.site,
        origin_member: write.member,
        stream: stream_of(write.region, write.bucket),
        seq,
    };
    let event = Event {
        op: outcome.op,
        region: write.region,
        bucket: write.bucket,
        id,
        version: outcome.tag,
        recipients: write.recipients,
        key: write.key,
        value: if outcome.op == Op::Destroy {
            &[]
        } else {
            write.value.unwrap_or(&[])
        },
    };
    for (index, (queue, qid)) in queues.iter_mut().enumerate() {
        match queue.check_room(*qid, &event) {
            Ok(()) => {}
            Err(AppendError::WouldBlock) => return Err(WriteError::WouldBlock(index)),
            Err(error) => return Err(WriteError::Queue { index, error }),
        }
    }
    let mut seqs = Vec::with_capacity(queues.len());
    for (index, (queue, qid)) in queues.iter_mut().enumerate() {
        match queue.append(*qid, &event) {
            Ok(s) => seqs.push(s),
            Err(error) => return Err(WriteError::Queue { index, error }),
        }
    }
    *last_seq = Some(seq);
    let written = match write.value {
        Some(v) => Some(store.put_local(
            write.key,
            Bytes::copy_from_slice(v),
            write.now_us,
            write.site,
        )?),
        None => store.destroy_local(write.key, write.now_us, write.site),
    };
    debug_assert_eq!(written.map(|w| w.tag), Some(outcome.tag));
    Ok(Some(Written { outcome, id, seqs }))
}
