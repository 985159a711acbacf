//! # strait-queue: the gateway-sender queue
//!
//! Everything a gateway sender has accepted and the remote site has not yet acknowledged.
//!
//! | type | what it is | where it lives |
//! |---|---|---|
//! | [`record::Event`], [`record::Record`] | one event: the 50-byte header, recipients, key, value; the same bytes in a segment and on the wire | — |
//! | [`queue::SenderQueue`] | every queue of one sender on one shard (a queue per bucket or per dispatcher), the memory budget, the pure queue logic | owned by one shard, never shared |
//! | [`queue::Action`] | file work the queue asks for: create, sync, delete a segment | carried out off the shard |
//! | [`journal`] | the commit journal: every queue's records in one sequential log, so that a commit of a parallel sender under `every-batch` syncs one file | segment files beside the queues' |
//! | [`store::Disk`] | blocking segment-file operations, and [`store::recover`] over them | helper threads |
//! | [`mmap::MmapDisk`] | segments as preallocated memory-mapped files (the only `unsafe`) | a locked data directory |
//! | [`mem::MemDisk`] | segments as vectors with injected faults and crashes | tests, simulation |
//! | [`shard::ShardQueue`] | the glommio shell: runs a `SenderQueue` on a shard, file work on the blocking pool, group commits on a commit lane ([`queue::Lane`]) | one per sender per shard |
//!
//! A write goes: `ShardQueue::append` → `SenderQueue::append` encodes the record straight into
//! a memory chunk or a mapped segment → the queue's `poll_action` asks for a group-commit sync
//! → the shell runs fdatasync on the queue's commit lane → `handle_synced` → the append completes.
//! A dispatcher `peek`s a batch (contiguous runs of record bytes, ready for the socket),
//! sends it, and `ack`s it; fully acknowledged segments are deleted off the shard.
//!
//! ```
//! use strait_queue::ids::*;
//! use strait_queue::queue::{QueueConfig, SenderQueue};
//! use strait_queue::record::{Event, Op};
//!
//! let mut q = SenderQueue::new(QueueConfig { queue_count: 1, ..QueueConfig::default() });
//! let id = EventId { origin_site: SiteId(1), origin_member: MemberId(1), stream: StreamId(0), seq: 1 };
//! let ev = Event { op: Op::Create, region: RegionId(0), bucket: BucketId(0), id,
//!     version: VersionTag { timestamp_us: 1, site: SiteId(1) }, recipients: &[SiteId(2)],
//!     key: b"k", value: b"v" };
//! let seq = q.append(QueueId(0), &ev).unwrap();
//! let batch = q.peek(QueueId(0), 100, 1 << 20).unwrap().unwrap();
//! assert_eq!((batch.first_seq, batch.events), (seq, 1));
//! q.ack(QueueId(0), batch.last_seq).unwrap();
//! assert_eq!(q.stats(0).events_queued, 0);
//! ```

pub mod ids;
pub mod journal;
pub mod mem;
pub mod mmap;
pub mod queue;
pub mod record;
pub mod segment;
pub mod shard;
pub mod store;
