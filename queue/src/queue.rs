//! The queue logic: a plain state machine over memory chunks and segment buffers.
//!
//! [`SenderQueue`] holds every queue of one gateway sender on one shard (one per bucket for a
//! parallel sender, one per dispatcher for a serial one) and their shared memory budget. It
//! never touches a file or a clock: record bytes are copied into memory chunks or into
//! segment buffers (memory-mapped files in production, plain vectors in tests), and all file
//! work comes out of [`SenderQueue::poll_action`] as an [`Action`] for the shell to carry out
//! and report back through `handle_*`. Time is passed in as milliseconds.
//!
//! A queue is a chain of *extents* in sequence order: memory chunks and segments, each a run
//! of whole records. Its on-disk part costs a few dozen bytes of bookkeeping per segment, not
//! per event, so the memory budget holds however long the backlog grows.

use crate::ids::{QueueId, RegionId, SegmentId, Seq};
use crate::journal::{self, JOURNAL_QUEUE};
use crate::record::{self, DecodeError, EncodeError, Event, Op};
use crate::segment::{self, SEGMENT_HEADER_BYTES, SegmentInfo};
use crate::store::{SegmentBuf, StoreError};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

/// Default `maximum-queue-memory`: 100 MiB (Geode's default).
pub const MEMORY_BYTES_MAX_DEFAULT: u64 = 100 << 20;
/// Default segment file size: 4 MiB.
pub const SEGMENT_BYTES_DEFAULT: u32 = 4 << 20;
/// Smallest segment size accepted.
pub const SEGMENT_BYTES_MIN: u32 = 64 << 10;
/// What the tail segments of one sender's queues on one shard may take together, at the size
/// [`segment_bytes_for`] picks: 64 MiB. Every queue that has been written keeps a tail segment,
/// created whole (its blocks written, its pages in the page cache), however little is in it.
pub const SEGMENT_TAILS_BYTES_TARGET: u64 = 64 << 20;

/// The segment size for a sender with `queue_count` queues on a shard:
/// [`SEGMENT_BYTES_DEFAULT`] when `queue_count` tails of that size fit in
/// [`SEGMENT_TAILS_BYTES_TARGET`], otherwise the largest power of two that fits, and never
/// less than [`SEGMENT_BYTES_MIN`]. A serial sender (a few dispatcher queues) gets 4 MiB
/// segments; a parallel one with 113 bucket queues gets 512 KiB, which holds its files and
/// page cache at 56.5 MiB instead of 452 MiB per shard, and replicated 1 KiB events faster
/// (docs/benchmarks.md, "Fourth round").
pub fn segment_bytes_for(queue_count: u16) -> u32 {
    // At least 1024 (64 MiB over 65 535 queues), so `share` has a highest bit.
    let share = SEGMENT_TAILS_BYTES_TARGET / u64::from(queue_count.max(1));
    let pow2 = 1u64 << (63 - share.leading_zeros());
    pow2.clamp(
        u64::from(SEGMENT_BYTES_MIN),
        u64::from(SEGMENT_BYTES_DEFAULT),
    ) as u32
}
/// A persistent sender under `every-batch` with at least this many queues on a shard commits
/// through a journal ([`crate::journal`]): a parallel sender (113 buckets by default) does; a
/// serial one (1–5 dispatcher queues) does not, since its commits touch only a few files.
pub const JOURNAL_QUEUE_COUNT_MIN: u16 = 6;
/// Largest journal segment file: 8 MiB. A journal segment is 16 queue segments' worth
/// ([`QueueConfig::journal_segment_bytes`]); a record too large for one commits by syncing the
/// segments of its queue instead.
pub const JOURNAL_SEGMENT_BYTES: u32 = 8 << 20;
/// Longest time between checkpoints of a journalled sender while anything is dirty: 1 s. A
/// checkpoint writes back the bucket segments, makes acknowledgements durable, and frees the
/// acknowledged segments and the journal segments it covers.
pub const JOURNAL_CHECKPOINT_MS: u64 = 1000;
/// Default number of freed journal segments kept to be used again instead of creating new
/// ones ([`QueueConfig::journal_recycle_segments`]): 8, 64 MiB of 8 MiB segments per sender
/// and shard. A checkpoint frees about a second's worth of journal at once (7 segments at 55
/// MB/s of 1 KiB events); reusing a file costs a header page and a flush, where creating one
/// writes and syncs all of its bytes as zeros. Kept files hold disk space and clean,
/// reclaimable page cache.
pub const JOURNAL_RECYCLE_SEGMENTS_DEFAULT: u8 = 8;
/// Sealed journal segments that start a checkpoint at once, before the interval is up: 2.
pub const JOURNAL_SEALED_MAX: usize = 2;
/// Segments a checkpoint syncs per step: 8. File work runs one action at a time, so a commit
/// due during a checkpoint waits for one step, not for the whole checkpoint (113 bucket
/// segments of a parallel sender took about 20 ms here).
pub const CHECKPOINT_STEP_SEGMENTS: usize = 8;
/// Default number of segments kept created and mapped ahead of need.
pub const SPARE_SEGMENTS_DEFAULT: u8 = 2;
/// How long to wait before trying again to create a segment, or to sync, after a failure.
pub const RETRY_MS: u64 = 1000;
/// First memory chunk of a queue; later chunks double up to [`MEMORY_CHUNK_BYTES_MAX`].
pub const MEMORY_CHUNK_BYTES_MIN: usize = 4 << 10;
/// Largest memory chunk (a larger record gets a chunk of its own size).
pub const MEMORY_CHUNK_BYTES_MAX: usize = 256 << 10;
/// Full-size memory chunks kept for reuse after they drain (still counted as memory held).
pub const FREE_CHUNKS_MAX: usize = 4;
/// Memory charged to the budget for each conflation index entry.
pub const CONFLATION_ENTRY_BYTES: u64 = 64;

/// When segment data is made durable with fdatasync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Never: data reaches the disk when the kernel writes it back. Survives a process crash,
    /// not a power loss.
    Never,
    /// Every N milliseconds while there is unsynced data: a power loss loses at most about
    /// N ms of appends.
    IntervalMs(u32),
    /// After every group of appends (group commit: one fdatasync covers every append made
    /// while the previous one ran). Survives a power loss.
    EveryBatch,
}

/// The configuration of one sender's queues on one shard.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Number of queues: `total-num-buckets` for a parallel sender, `dispatcher-threads` for
    /// a serial one. Queue ids run from 0 to `queue_count - 1`.
    pub queue_count: u16,
    /// `maximum-queue-memory` for this shard's share, in bytes.
    pub memory_bytes_max: u64,
    /// `enable-persistence`: every event is written to a segment and survives a restart.
    pub persistent: bool,
    /// `disk-synchronous`: with [`SyncPolicy::EveryBatch`], an append completes only once the
    /// group commit that covers it has synced. Records are always in the file when `append`
    /// returns, so under the other policies this changes nothing.
    pub disk_synchronous: bool,
    pub sync: SyncPolicy,
    /// `enable-batch-conflation`.
    pub conflation: bool,
    /// Size of each segment file.
    pub segment_bytes: u32,
    /// Segments kept created, mapped and prefaulted ahead of need.
    pub spare_segments: u8,
    /// With a commit journal: freed journal segments kept to be used again
    /// ([`JOURNAL_RECYCLE_SEGMENTS_DEFAULT`]); 0 deletes every freed one.
    pub journal_recycle_segments: u8,
}

/// A configuration value out of range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("queue_count is 0: a sender needs at least one queue")]
    NoQueues,
    #[error("segment size of {0} bytes is below the minimum of {SEGMENT_BYTES_MIN} bytes")]
    SegmentTooSmall(u32),
    #[error("spare_segments is 0: at least one segment must be kept ready")]
    NoSpares,
    #[error("sync interval is 0 ms: use the every-batch policy instead")]
    ZeroInterval,
}

impl QueueConfig {
    /// Whether these queues commit through a journal (see [`JOURNAL_QUEUE_COUNT_MIN`]).
    pub fn commit_journal(&self) -> bool {
        self.persistent
            && self.sync == SyncPolicy::EveryBatch
            && self.queue_count >= JOURNAL_QUEUE_COUNT_MIN
    }

    /// The size of a journal segment: 16 × `segment_bytes`, at most [`JOURNAL_SEGMENT_BYTES`]
    /// (8 MiB for a parallel sender's 512 KiB segments).
    pub fn journal_segment_bytes(&self) -> u32 {
        self.segment_bytes
            .saturating_mul(16)
            .min(JOURNAL_SEGMENT_BYTES)
    }

    /// Checks every value; [`crate::store::recover`] and the shell refuse an invalid configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.queue_count == 0 {
            return Err(ConfigError::NoQueues);
        }
        if self.segment_bytes < SEGMENT_BYTES_MIN {
            return Err(ConfigError::SegmentTooSmall(self.segment_bytes));
        }
        if self.spare_segments == 0 {
            return Err(ConfigError::NoSpares);
        }
        if self.sync == SyncPolicy::IntervalMs(0) {
            return Err(ConfigError::ZeroInterval);
        }
        Ok(())
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            queue_count: 113,
            memory_bytes_max: MEMORY_BYTES_MAX_DEFAULT,
            persistent: false,
            disk_synchronous: true,
            sync: SyncPolicy::EveryBatch,
            conflation: false,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            spare_segments: SPARE_SEGMENTS_DEFAULT,
            journal_recycle_segments: JOURNAL_RECYCLE_SEGMENTS_DEFAULT,
        }
    }
}

/// Why an append was not accepted. Nothing was queued.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("queue {0} does not exist in this sender (it has {1} queues)")]
    UnknownQueue(QueueId, u16),
    #[error(transparent)]
    Invalid(#[from] EncodeError),
    /// No segment is ready yet; one is being created. Retry after the next `handle_created`.
    #[error("no segment is ready yet; retry once the segment being created is ready")]
    WouldBlock,
    /// The memory budget is spent and segment files cannot be created.
    #[error(
        "queue memory budget of {budget} bytes is full and no segment file can be created: {cause}"
    )]
    Full { budget: u64, cause: StoreError },
    /// A persistent queue cannot create segment files.
    #[error("persistent queue cannot create a segment file: {0}")]
    Disk(StoreError),
}

/// Why an ack was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("queue {0} does not exist in this sender")]
    UnknownQueue(QueueId),
    #[error("cannot acknowledge up to {upto}: only events up to {peeked} have been peeked")]
    NotPeeked { upto: Seq, peeked: Seq },
}

/// A record that failed its check when read back.
#[derive(Debug, thiserror::Error)]
#[error("queue {queue}: record at offset {offset} of segment {segment} is damaged: {error}")]
pub struct ReadError {
    pub queue: QueueId,
    pub segment: SegmentId,
    pub offset: u32,
    pub error: DecodeError,
}

/// Whether an append has reached the durability its configuration promises.
#[derive(Debug, PartialEq, Eq)]
pub enum Durability {
    Pending,
    Done,
    /// The fdatasync that covers it failed; the event stays queued but is not known durable.
    Failed(String),
}

/// File work for the shell to carry out; each has a matching `handle_*`.
#[derive(Debug)]
pub enum Action {
    /// Create, preallocate, map and prefault a segment of `bytes` bytes, then call
    /// [`SenderQueue::handle_created`].
    CreateSegment { id: SegmentId, bytes: u32 },
    /// fdatasync these segments (and first the directory, when `directory` is set: segments
    /// were put to use since the last sync) on `lane`, then call
    /// [`SenderQueue::handle_synced`].
    Sync {
        token: u64,
        segments: Vec<SegmentId>,
        directory: bool,
        lane: Lane,
    },
    /// Start reading this segment into the page cache: a dispatcher is about to read it, and
    /// a page fault on the shard would stall it.
    PrefetchSegment { id: SegmentId },
    /// Unmap and delete this segment; nothing needs it any more.
    DeleteSegment {
        id: SegmentId,
        buf: Box<dyn SegmentBuf>,
    },
    /// fdatasync this segment, a freed journal segment whose new header is already written
    /// into `buf`, so that the header is durable before any entry goes in; then call
    /// [`SenderQueue::handle_recycled`] with `buf`.
    RecycleSegment {
        id: SegmentId,
        buf: Box<dyn SegmentBuf>,
    },
}

/// Where a shell runs an [`Action::Sync`]. Every other action is [`Lane::Background`] work.
///
/// The queue never depends on one lane's work finishing before the other's: a commit and a
/// checkpoint step or a creation may complete in either order. Within a lane, actions run in
/// the order asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// A group commit under `every-batch`: writers wait for it. A shell runs it apart from
    /// background work, so that it never queues behind a segment's creation (megabytes of
    /// zeros and an fdatasync) or a checkpoint step.
    Commit,
    /// Work nobody waits for yet: creations, deletes, prefetches, interval syncs and
    /// checkpoint steps. These run in order, one at a time, so that on a nearly full disk a
    /// needed segment is not raced by a spare.
    Background,
}

/// A peeked batch: which events, and where their bytes lie.
#[derive(Clone, Debug)]
pub struct Batch {
    pub queue: QueueId,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub events: u32,
    pub bytes: u64,
    /// Some of these events were handed out before (a reset, or a restart): the receiver must
    /// expect to have seen them.
    pub possible_duplicate: bool,
    slices: Vec<SliceRef>,
}

#[derive(Clone, Copy, Debug)]
struct SliceRef {
    extent: u64,
    start: u32,
    end: u32,
}

/// Figures for one queue, or summed over all queues of a sender.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub events_queued: u64,
    pub bytes_queued: u64,
    pub events_in_memory: u64,
    pub bytes_in_memory: u64,
    pub events_on_disk: u64,
    pub bytes_on_disk: u64,
    /// Memory held: chunk capacity plus the conflation index.
    pub memory_bytes: u64,
    pub segments: u64,
    pub segment_bytes: u64,
    pub conflated: u64,
    pub possible_duplicates: u64,
    /// Age of the oldest queued event by its version-tag timestamp, in microseconds.
    pub oldest_event_age_us: Option<u64>,
}

enum Store {
    Memory(Box<[u8]>),
    Segment {
        id: SegmentId,
        buf: Box<dyn SegmentBuf>,
    },
}

struct Extent {
    serial: u64,
    store: Store,
    /// Offset of the first record.
    start: u32,
    /// Offset just past the last record.
    end: u32,
    /// Sequence number of the record after the last one.
    next_seq: Seq,
    /// No more records go into this extent.
    sealed: bool,
    /// A prefetch of this segment was asked for.
    prefetched: bool,
}

impl Extent {
    fn bytes(&self) -> &[u8] {
        match &self.store {
            Store::Memory(b) => b,
            Store::Segment { buf, .. } => buf.bytes(),
        }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.store {
            Store::Memory(b) => b,
            Store::Segment { buf, .. } => buf.bytes_mut(),
        }
    }
    fn capacity(&self) -> usize {
        self.bytes().len()
    }
    fn segment(&self) -> Option<SegmentId> {
        match &self.store {
            Store::Memory(_) => None,
            Store::Segment { id, .. } => Some(*id),
        }
    }
}

/// A position in a queue's chain of extents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    extent: u64,
    offset: u32,
    /// Sequence number of the next record at or after this position.
    seq: Seq,
}

#[derive(Clone, Copy, Debug)]
struct ConflationEntry {
    seq: Seq,
    extent: u64,
    offset: u32,
}

type KeyHasher = BuildHasherDefault<DefaultHasher>;

#[derive(Default)]
struct Counters {
    events_mem: u64,
    bytes_mem: u64,
    events_disk: u64,
    bytes_disk: u64,
    conflated: u64,
    possible_duplicates: u64,
}

struct Queue {
    extents: VecDeque<Extent>,
    /// Serial number of the next extent; a queue's extents have consecutive serials.
    next_serial: u64,
    next_seq: Seq,
    acked: Seq,
    ack: Cursor,
    peek: Cursor,
    peeked_max: Seq,
    /// Batches that include events up to here are possible duplicates.
    redeliver_upto: Seq,
    /// Non-persistent queue that overflowed: appends go to segments until the disk part drains.
    overflowing: bool,
    /// The next segment's place in the chain.
    segment_seq: u64,
    /// Size of the next memory chunk.
    chunk_bytes: usize,
    /// The tail segment is already in the sender's dirty set.
    tail_dirty: bool,
    /// The tail segment is past half full: a spare is being made ready for its successor.
    tail_half: bool,
    /// Highest sequence number written to a segment, and synced.
    written: Seq,
    synced: Seq,
    sync_failed: Option<(Seq, String)>,
    conflation: HashMap<(RegionId, u64), ConflationEntry, KeyHasher>,
    counters: Counters,
}

impl Queue {
    fn new(first_serial: u64) -> Queue {
        let start = Cursor {
            extent: first_serial,
            offset: 0,
            seq: Seq(1),
        };
        Queue {
            extents: VecDeque::new(),
            next_serial: first_serial,
            next_seq: Seq(1),
            acked: Seq(0),
            ack: start,
            peek: start,
            peeked_max: Seq(0),
            redeliver_upto: Seq(0),
            overflowing: false,
            segment_seq: 1,
            chunk_bytes: MEMORY_CHUNK_BYTES_MIN,
            tail_dirty: false,
            tail_half: false,
            written: Seq(0),
            synced: Seq(0),
            sync_failed: None,
            conflation: HashMap::default(),
            counters: Counters::default(),
        }
    }

    fn index_of(&self, serial: u64) -> Option<usize> {
        let front = self.extents.front()?.serial;
        let i = serial.checked_sub(front)? as usize;
        (i < self.extents.len()).then_some(i)
    }

    /// Moves a cursor that points past the end of a sealed extent to the start of the next.
    fn normalize(&self, mut c: Cursor) -> Cursor {
        if let Some(front) = self.extents.front()
            && c.extent < front.serial
        {
            c = Cursor {
                extent: front.serial,
                offset: front.start,
                seq: c.seq,
            };
        }
        while let Some(i) = self.index_of(c.extent) {
            let e = &self.extents[i];
            if c.offset < e.start {
                c.offset = e.start;
            }
            if c.offset < e.end || i + 1 == self.extents.len() {
                break;
            }
            let next = &self.extents[i + 1];
            c = Cursor {
                extent: next.serial,
                offset: next.start,
                seq: c.seq,
            };
        }
        c
    }

    fn segments(&self) -> impl Iterator<Item = &Extent> {
        self.extents.iter().filter(|e| e.segment().is_some())
    }
}

/// A running sync: its token, the position each queue will have synced, its segments.
type SyncInFlight = (u64, Vec<(QueueId, Seq)>, Vec<SegmentId>);

/// A segment created ahead of need.
struct Spare {
    id: SegmentId,
    buf: Box<dyn SegmentBuf>,
}

/// A journal segment in use.
struct JournalSegment {
    id: SegmentId,
    /// Its place in the journal (its header's `segment_seq`).
    seq: u64,
    buf: Box<dyn SegmentBuf>,
    /// Offset just past the last entry.
    end: u32,
}

impl JournalSegment {
    /// A journal segment whose header is written, with no entries yet.
    fn empty(id: SegmentId, seq: u64, buf: Box<dyn SegmentBuf>) -> JournalSegment {
        JournalSegment {
            id,
            seq,
            buf,
            end: SEGMENT_HEADER_BYTES as u32,
        }
    }

    /// The file, for deletion or reuse.
    fn into_spare(self) -> Spare {
        Spare {
            id: self.id,
            buf: self.buf,
        }
    }
}

/// The commit journal's state ([`crate::journal`]).
#[derive(Default)]
struct Journal {
    /// The segment entries go to.
    tail: Option<JournalSegment>,
    /// Full segments not yet freed by a checkpoint, oldest first.
    sealed: VecDeque<JournalSegment>,
    /// A blank segment, created ahead of need; its header is written when it is put to use.
    spare: Option<Spare>,
    /// Freed segments given a new header (and so their place in the journal) and made durable,
    /// ready to be put to use in that order, before any blank spare.
    recycled: VecDeque<JournalSegment>,
    /// Freed segments given a new header, for [`Action::RecycleSegment`].
    to_recycle: VecDeque<JournalSegment>,
    /// Segments in an [`Action::RecycleSegment`], with their place in the journal.
    recycling: Vec<(SegmentId, u64)>,
    /// Recycled segments numbered before the tail, which therefore cannot follow it: deleted.
    discard: Vec<Spare>,
    /// The spare being created.
    creating: Option<SegmentId>,
    create_retry_at: Option<u64>,
    /// The next journal segment's place in the journal (its header's `segment_seq`).
    next_segment_seq: u64,
    /// Journal segments appended to since the last commit started.
    touched: Vec<SegmentId>,
    /// A journal segment was put to use since the last commit started: the directory is
    /// synced too.
    new_file: bool,
    /// Queue segments the next commit syncs: ones just put to use (their headers become
    /// durable at once, as without a journal, so that a power loss cannot leave records
    /// behind a lost or torn header for long), and ones holding records the journal could not
    /// take (too large for a journal segment, or no journal segment was ready).
    sync_at_commit: BTreeSet<SegmentId>,
    /// Entries were appended since the last checkpoint started.
    since_checkpoint: bool,
    /// Sealed segments when the running checkpoint started: freed when it completes.
    checkpoint_frees: usize,
    /// Segments of the running checkpoint not yet handed out, and whether a step is running.
    checkpoint_rest: Vec<SegmentId>,
    checkpoint_step_inflight: bool,
    commit_inflight: Option<SyncInFlight>,
    commit_retry_at: Option<u64>,
}

impl Journal {
    /// Appends an entry for `record` of queue `q`. False when no journal segment has room:
    /// the caller commits the record by syncing its queue's segments instead.
    fn append(&mut self, q: QueueId, record: &[u8]) -> bool {
        let need = journal::entry_len(record.len());
        let fits = |s: &JournalSegment| s.end as usize + need <= s.buf.bytes().len();
        if !self.tail.as_ref().is_some_and(fits) {
            // A recycled segment was numbered when it was readied: once a blank spare with a
            // later number has been put to use, it can no longer follow the tail.
            let after = self.tail.as_ref().map_or(0, |t| t.seq);
            while self.recycled.front().is_some_and(|r| r.seq <= after) {
                let r = self.recycled.pop_front().expect("a front");
                self.discard.push(r.into_spare());
            }
            if self.recycled.front().is_some_and(fits) {
                let next = self.recycled.pop_front().expect("a front");
                if let Some(full) = self.tail.replace(next) {
                    self.sealed.push_back(full);
                }
                return self.append(q, record);
            }
            let Some(spare) = self
                .spare
                .take_if(|s| s.buf.bytes().len() >= SEGMENT_HEADER_BYTES + need)
            else {
                return false;
            };
            let mut buf = spare.buf;
            let seq = self.number(buf.bytes_mut(), 0);
            let fresh = JournalSegment::empty(spare.id, seq, buf);
            if let Some(full) = self.tail.replace(fresh) {
                self.sealed.push_back(full);
            }
            self.new_file = true;
        }
        let tail = self.tail.as_mut().expect("a tail with room");
        journal::write_entry(
            &mut tail.buf.bytes_mut()[tail.end as usize..],
            q,
            record,
            tail.seq,
        );
        tail.end += need as u32;
        if !self.touched.contains(&tail.id) {
            self.touched.push(tail.id);
        }
        self.since_checkpoint = true;
        true
    }

    fn segments(&self) -> impl Iterator<Item = (SegmentId, &[u8])> {
        self.sealed
            .iter()
            .chain(self.tail.as_ref())
            .chain(&self.recycled)
            .chain(&self.to_recycle)
            .map(|s| (s.id, s.buf.bytes()))
            .chain(self.spare.as_ref().map(|s| (s.id, s.buf.bytes())))
    }

    /// Gives the journal segment in `bytes` the next place in the journal: writes its header,
    /// with `flags`, and returns its `segment_seq`.
    fn number(&mut self, bytes: &mut [u8], flags: u16) -> u64 {
        let seq = self.next_segment_seq;
        self.next_segment_seq += 1;
        // The oldest journal segment still needed: recovery reads the journal from there.
        let live_from = self
            .sealed
            .front()
            .or(self.tail.as_ref())
            .map_or(seq, |s| s.seq);
        let info = SegmentInfo {
            queue: JOURNAL_QUEUE,
            persistent: true,
            segment_seq: seq,
            first_seq: Seq(live_from),
            capacity: bytes.len() as u32,
            acked: None,
            ack_offset: None,
        };
        segment::write_header_with_flags(bytes, &info, flags);
        seq
    }

    /// Whether another freed segment may be kept for reuse, `most` at a time.
    fn recycle_room(&self, most: u8) -> bool {
        self.recycled.len() + self.to_recycle.len() + self.recycling.len() < usize::from(most)
    }

    /// Gives freed segment `s` its new header: the next place in the journal, flag
    /// [`segment::SEGMENT_FLAG_RECYCLED`], and no entries (a zero prefix right after the
    /// header; the old entries after it fail the new header's check). It is put to use only
    /// once [`Action::RecycleSegment`] has made that header durable, so that no entry can lie
    /// under the old header, whose place in the journal may still be read as live.
    fn recycle(&mut self, s: JournalSegment) {
        let mut buf = s.buf;
        let seq = self.number(buf.bytes_mut(), segment::SEGMENT_FLAG_RECYCLED);
        journal::end_entries(&mut buf.bytes_mut()[SEGMENT_HEADER_BYTES..]);
        self.to_recycle
            .push_back(JournalSegment::empty(s.id, seq, buf));
    }
}

/// A queue rebuilt from its segments by recovery.
pub(crate) struct RecoveredQueue {
    pub queue: QueueId,
    /// Segments in chain order with the extent of valid records in each; `sealed` segments
    /// take no more appends.
    pub segments: Vec<RecoveredSegment>,
    pub acked: Seq,
    pub next_seq: Seq,
    pub next_segment_seq: u64,
}

pub(crate) struct RecoveredSegment {
    pub id: SegmentId,
    pub buf: Box<dyn SegmentBuf>,
    /// Where recovery started reading records ([`segment::scan_start`]).
    pub start: u32,
    pub end: u32,
    pub next_seq: Seq,
    pub live_records: u64,
    pub live_bytes: u64,
    pub sealed: bool,
}

/// Every queue of one gateway sender on one shard. See the module documentation.
pub struct SenderQueue {
    config: QueueConfig,
    queues: Vec<Queue>,
    /// Bytes of memory chunks held (free ones included), plus the conflation index.
    memory_bytes: u64,
    /// Drained full-size chunks, kept to spare the allocator and the page faults.
    free_chunks: Vec<Box<[u8]>>,
    spares: Vec<Spare>,
    creating: u32,
    /// A record larger than the default segment needs a segment of at least this size.
    oversize_demand: Option<u32>,
    disk_error: Option<(StoreError, u64)>,
    /// `check_room` found no segment for an event that needs one: make a segment even if
    /// nothing else asks for one.
    segment_demand: bool,
    next_segment_id: u64,
    dirty: BTreeSet<SegmentId>,
    /// A segment was put to use since the last sync: its directory entry must be synced too.
    dirty_directory: bool,
    /// Segments to read ahead.
    prefetch: Vec<SegmentId>,
    /// Fully acknowledged segments to delete, each with the sync token that must complete
    /// first (so that the new head's ack slot is durable before the old head disappears).
    pending_deletes: Vec<(SegmentId, Box<dyn SegmentBuf>, u64)>,
    sync_inflight: Option<SyncInFlight>,
    next_sync_token: u64,
    last_synced_token: u64,
    last_sync_ms: u64,
    /// After a failed sync, the next is not tried before this time.
    sync_retry_at: Option<u64>,
    overflowing_queues: u32,
    /// Queues whose tail segment is past half full. Queues filled round-robin fill their
    /// segments together, so the spare pool grows by one for each to keep appends from
    /// waiting on segment creation.
    tails_past_half: u32,
    /// The commit journal, when [`QueueConfig::commit_journal`] says so.
    journal: Option<Journal>,
}

impl std::fmt::Debug for SenderQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderQueue")
            .field("config", &self.config)
            .field("stats", &self.stats(0))
            .finish()
    }
}

impl SenderQueue {
    /// An empty set of queues.
    pub fn new(config: QueueConfig) -> SenderQueue {
        let mut sq = Self::with_next_segment(config, SegmentId(1));
        sq.start_journal(1);
        sq
    }

    /// Starts the commit journal if the configuration asks for one, numbering its segments
    /// from `next_segment_seq`.
    pub(crate) fn start_journal(&mut self, next_segment_seq: u64) {
        if self.config.commit_journal() {
            self.journal = Some(Journal {
                next_segment_seq,
                ..Journal::default()
            });
        }
    }

    /// The sequence number the next append to `q` gets.
    pub(crate) fn next_seq(&self, q: QueueId) -> Option<Seq> {
        self.queue(q).map(|queue| queue.next_seq)
    }

    /// Marks every queued event as possibly sent before: what recovery does once it has put
    /// back the events of the commit journal.
    pub(crate) fn mark_all_possible_duplicates(&mut self) {
        for q in &mut self.queues {
            q.redeliver_upto = q.redeliver_upto.max(Seq(q.next_seq.0 - 1));
        }
    }

    fn with_next_segment(config: QueueConfig, next_segment_id: SegmentId) -> SenderQueue {
        let queues = (0..config.queue_count).map(|_| Queue::new(0)).collect();
        SenderQueue {
            config,
            queues,
            memory_bytes: 0,
            free_chunks: Vec::new(),
            spares: Vec::new(),
            creating: 0,
            oversize_demand: None,
            disk_error: None,
            segment_demand: false,
            next_segment_id: next_segment_id.0,
            dirty: BTreeSet::new(),
            dirty_directory: false,
            prefetch: Vec::new(),
            pending_deletes: Vec::new(),
            sync_inflight: None,
            next_sync_token: 1,
            last_synced_token: 0,
            last_sync_ms: 0,
            sync_retry_at: None,
            overflowing_queues: 0,
            tails_past_half: 0,
            journal: None,
        }
    }

    /// Rebuilds the queues from recovered segments.
    pub(crate) fn from_recovered(
        config: QueueConfig,
        recovered: Vec<RecoveredQueue>,
        next_segment_id: SegmentId,
    ) -> SenderQueue {
        let mut sq = Self::with_next_segment(config, next_segment_id);
        for r in recovered {
            let q = &mut sq.queues[r.queue.0 as usize];
            let serial_base = q.next_serial;
            q.next_seq = r.next_seq;
            q.acked = r.acked;
            q.segment_seq = r.next_segment_seq;
            for s in r.segments {
                let serial = q.next_serial;
                q.next_serial += 1;
                q.counters.events_disk += s.live_records;
                q.counters.bytes_disk += s.live_bytes;
                q.extents.push_back(Extent {
                    serial,
                    store: Store::Segment {
                        id: s.id,
                        buf: s.buf,
                    },
                    start: s.start,
                    end: s.end,
                    next_seq: s.next_seq,
                    sealed: s.sealed,
                    prefetched: false,
                });
            }
            // Every queued event may have been sent before the restart.
            let last = Seq(r.next_seq.0 - 1);
            q.written = last;
            q.synced = last;
            q.peeked_max = r.acked;
            q.redeliver_upto = last;
            let start = match q.extents.front() {
                Some(e) => Cursor {
                    extent: e.serial,
                    offset: e.start,
                    seq: Seq(0),
                },
                None => Cursor {
                    extent: serial_base,
                    offset: 0,
                    seq: r.next_seq,
                },
            };
            // Skip the records already acknowledged in the head segment.
            let mut c = q.normalize(start);
            while let Some(i) = q.index_of(c.extent) {
                let e = &q.extents[i];
                if c.offset >= e.end {
                    break;
                }
                let (h, len) = record::check_header(&e.bytes()[c.offset as usize..e.end as usize])
                    .expect("recovery checked every record");
                if h.queue_seq.get() > r.acked.0 {
                    break;
                }
                if h.flags & record::FLAG_SUPERSEDED == 0 {
                    q.counters.events_disk -= 1;
                    q.counters.bytes_disk -= len as u64;
                }
                c.offset += len as u32;
                c = q.normalize(c);
            }
            c.seq = r.acked.next();
            q.ack = c;
            q.peek = c;
        }
        sq
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    fn queue(&self, q: QueueId) -> Option<&Queue> {
        self.queues.get(q.0 as usize)
    }

    /// Appends an event to queue `q` and returns its sequence number. On success the record is
    /// in memory or in its segment file; see [`SenderQueue::durability`] for when it is synced.
    pub fn append(&mut self, q: QueueId, event: &Event<'_>) -> Result<Seq, AppendError> {
        let count = self.config.queue_count;
        if q.0 >= count {
            return Err(AppendError::UnknownQueue(q, count));
        }
        let len = record::encoded_len(event)?;
        let to_disk = self.config.persistent
            || self.queues[q.0 as usize].overflowing
            || !self.fits_in_memory(q, len);
        let (serial, offset, seq) = if to_disk {
            if !self.config.persistent && !self.queues[q.0 as usize].overflowing {
                self.queues[q.0 as usize].overflowing = true;
                self.overflowing_queues += 1;
            }
            let result = self.append_to_segment(q, event, len);
            // A refusal (not a wait for a segment being created) ends the overflow.
            if matches!(result, Err(AppendError::Full { .. })) {
                self.stop_overflowing_if_drained(q);
            }
            result?
        } else {
            self.append_to_memory(q, event, len)
        };
        if self.config.conflation {
            self.conflate(q, event, seq, serial, offset);
        }
        Ok(seq)
    }

    /// Whether [`SenderQueue::append`] of `event` to `q` would be accepted right now, without
    /// queueing anything: `Ok` if it would, else the error it would return (`WouldBlock` while a
    /// segment it needs is being created). A writer that must not change anything unless every
    /// sender takes the event checks each sender first, then appends to each with no wait in
    /// between.
    pub fn check_room(&mut self, q: QueueId, event: &Event<'_>) -> Result<(), AppendError> {
        let count = self.config.queue_count;
        if q.0 >= count {
            return Err(AppendError::UnknownQueue(q, count));
        }
        let len = record::encoded_len(event)?;
        let queue = &self.queues[q.0 as usize];
        let to_disk = self.config.persistent || queue.overflowing || !self.fits_in_memory(q, len);
        if !to_disk {
            return Ok(());
        }
        let room_in_tail = queue.extents.back().is_some_and(|e| {
            e.segment().is_some() && !e.sealed && e.end as usize + len <= e.capacity()
        });
        let need = SEGMENT_HEADER_BYTES + len;
        if room_in_tail || self.spares.iter().any(|s| s.buf.bytes().len() >= need) {
            return Ok(());
        }
        if need > self.config.segment_bytes as usize {
            self.oversize_demand = Some(self.oversize_demand.unwrap_or(0).max(need as u32));
        }
        // Nothing else may be asking for a segment (an in-memory queue below three quarters of
        // its budget that is not overflowing yet, since only `append` marks that): ask for
        // one, or a caller waiting for progress would wait for ever, and a failed creation
        // would never be retried once the disk has room again.
        self.segment_demand = true;
        Err(match &self.disk_error {
            Some((e, _)) if self.config.persistent => AppendError::Disk(e.clone()),
            Some((e, _)) => AppendError::Full {
                budget: self.config.memory_bytes_max,
                cause: e.clone(),
            },
            None => AppendError::WouldBlock,
        })
    }

    fn fits_in_memory(&self, q: QueueId, len: usize) -> bool {
        let queue = &self.queues[q.0 as usize];
        let room_in_tail = queue.extents.back().is_some_and(|e| {
            matches!(e.store, Store::Memory(_)) && !e.sealed && e.end as usize + len <= e.capacity()
        });
        if room_in_tail {
            return true;
        }
        let chunk = queue.chunk_bytes.max(len);
        if chunk == MEMORY_CHUNK_BYTES_MAX && !self.free_chunks.is_empty() {
            return true;
        }
        self.memory_bytes + chunk as u64 <= self.config.memory_bytes_max
    }

    fn append_to_memory(&mut self, q: QueueId, event: &Event<'_>, len: usize) -> (u64, u32, Seq) {
        let queue = &mut self.queues[q.0 as usize];
        let room = queue.extents.back().is_some_and(|e| {
            matches!(e.store, Store::Memory(_)) && !e.sealed && e.end as usize + len <= e.capacity()
        });
        if !room {
            if let Some(tail) = queue.extents.back_mut() {
                tail.sealed = true;
            }
            let cap = queue.chunk_bytes.max(len);
            queue.chunk_bytes = (queue.chunk_bytes * 2).min(MEMORY_CHUNK_BYTES_MAX);
            let chunk = match self.free_chunks.pop() {
                Some(c) if cap == MEMORY_CHUNK_BYTES_MAX => c,
                other => {
                    if let Some(c) = other {
                        self.free_chunks.push(c);
                    }
                    self.memory_bytes += cap as u64;
                    vec![0u8; cap].into_boxed_slice()
                }
            };
            let serial = queue.next_serial;
            queue.next_serial += 1;
            queue.extents.push_back(Extent {
                serial,
                store: Store::Memory(chunk),
                start: 0,
                end: 0,
                next_seq: queue.next_seq,
                sealed: false,
                prefetched: true,
            });
        }
        let seq = queue.next_seq;
        let tail = queue.extents.back_mut().expect("a tail extent with room");
        let offset = tail.end;
        record::encode_into(&mut tail.bytes_mut()[offset as usize..], event, seq);
        tail.end += len as u32;
        tail.next_seq = seq.next();
        queue.next_seq = seq.next();
        queue.counters.events_mem += 1;
        queue.counters.bytes_mem += len as u64;
        (tail.serial, offset, seq)
    }

    fn append_to_segment(
        &mut self,
        q: QueueId,
        event: &Event<'_>,
        len: usize,
    ) -> Result<(u64, u32, Seq), AppendError> {
        let room = self.queues[q.0 as usize].extents.back().is_some_and(|e| {
            e.segment().is_some() && !e.sealed && e.end as usize + len <= e.capacity()
        });
        if !room {
            self.start_segment(q, len)?;
        }
        let queue = &mut self.queues[q.0 as usize];
        let seq = queue.next_seq;
        let tail = queue.extents.back_mut().expect("a tail segment with room");
        let offset = tail.end;
        record::encode_into(&mut tail.bytes_mut()[offset as usize..], event, seq);
        debug_assert!(
            record::decode(&tail.bytes()[offset as usize..offset as usize + len]).is_ok()
        );
        tail.end += len as u32;
        tail.next_seq = seq.next();
        let id = tail.segment().expect("segment extent");
        let serial = tail.serial;
        queue.next_seq = seq.next();
        queue.written = seq;
        queue.counters.events_disk += 1;
        queue.counters.bytes_disk += len as u64;
        if !queue.tail_half {
            let tail = queue.extents.back().expect("tail segment");
            if tail.end as usize * 2 >= tail.capacity() {
                queue.tail_half = true;
                self.tails_past_half += 1;
            }
        }
        if self.config.persistent && !queue.tail_dirty {
            queue.tail_dirty = true;
            self.dirty.insert(id);
        }
        if let Some(j) = &mut self.journal {
            let tail = self.queues[q.0 as usize]
                .extents
                .back()
                .expect("tail segment");
            let record = &tail.bytes()[offset as usize..offset as usize + len];
            if !j.append(q, record) {
                // The journal holds a run of this queue's records that stops here: the
                // commit syncs every segment of the queue, so that none of its records
                // depends on the journal any more.
                let segments = self.queues[q.0 as usize].segments();
                j.sync_at_commit
                    .extend(segments.map(|e| e.segment().expect("a segment extent")));
            }
        }
        Ok((serial, offset, seq))
    }

    /// Seals the queue's tail and starts a new segment from a spare.
    fn start_segment(&mut self, q: QueueId, len: usize) -> Result<(), AppendError> {
        let need = SEGMENT_HEADER_BYTES + len;
        let Some(i) = self.spares.iter().position(|s| s.buf.bytes().len() >= need) else {
            if need > self.config.segment_bytes as usize {
                self.oversize_demand = Some(self.oversize_demand.unwrap_or(0).max(need as u32));
            }
            return Err(match &self.disk_error {
                Some((e, _)) if self.config.persistent => AppendError::Disk(e.clone()),
                Some((e, _)) => AppendError::Full {
                    budget: self.config.memory_bytes_max,
                    cause: e.clone(),
                },
                None => AppendError::WouldBlock,
            });
        };
        let mut spare = self.spares.swap_remove(i);
        let queue = &mut self.queues[q.0 as usize];
        let serial = queue.next_serial;
        queue.next_serial += 1;
        let info = SegmentInfo {
            queue: q,
            persistent: self.config.persistent,
            segment_seq: queue.segment_seq,
            first_seq: queue.next_seq,
            capacity: spare.buf.bytes().len() as u32,
            acked: Some(queue.acked),
            // Every record of a new segment comes after the acknowledged position.
            ack_offset: Some(SEGMENT_HEADER_BYTES as u32),
        };
        segment::write_header(spare.buf.bytes_mut(), &info);
        queue.segment_seq += 1;
        if let Some(tail) = queue.extents.back_mut() {
            tail.sealed = true;
        }
        if queue.tail_half {
            queue.tail_half = false;
            self.tails_past_half -= 1;
        }
        queue.extents.push_back(Extent {
            serial,
            store: Store::Segment {
                id: spare.id,
                buf: spare.buf,
            },
            start: SEGMENT_HEADER_BYTES as u32,
            end: SEGMENT_HEADER_BYTES as u32,
            next_seq: queue.next_seq,
            sealed: false,
            // Freshly written: its pages are in the page cache.
            prefetched: true,
        });
        if self.config.persistent {
            queue.tail_dirty = true;
            self.dirty.insert(spare.id);
            self.dirty_directory = true;
        }
        if let Some(j) = &mut self.journal {
            j.sync_at_commit.insert(spare.id);
        }
        Ok(())
    }

    fn key_hash(region: RegionId, key: &[u8]) -> (RegionId, u64) {
        (region, KeyHasher::default().hash_one(key))
    }

    fn conflate(&mut self, q: QueueId, event: &Event<'_>, seq: Seq, serial: u64, offset: u32) {
        let queue = &mut self.queues[q.0 as usize];
        let slot = Self::key_hash(event.region, event.key);
        if event.op != Op::Update {
            if queue.conflation.remove(&slot).is_some() {
                self.memory_bytes -= CONFLATION_ENTRY_BYTES;
            }
            return;
        }
        let entry = ConflationEntry {
            seq,
            extent: serial,
            offset,
        };
        // The index counts against the memory budget: a key it has no room for is not indexed,
        // so this update stays (it is only not a candidate for conflation).
        if !queue.conflation.contains_key(&slot)
            && self.memory_bytes + CONFLATION_ENTRY_BYTES > self.config.memory_bytes_max
        {
            return;
        }
        let Some(old) = queue.conflation.insert(slot, entry) else {
            self.memory_bytes += CONFLATION_ENTRY_BYTES;
            return;
        };
        if old.seq < queue.peek.seq || old.seq <= queue.acked {
            return; // already handed out: not eligible
        }
        let Some(i) = queue.index_of(old.extent) else {
            return;
        };
        let e = &mut queue.extents[i];
        let on_disk = e.segment().is_some();
        let bytes = &mut e.bytes_mut()[old.offset as usize..];
        let Ok(rec) = record::decode(bytes) else {
            return;
        };
        if rec.op() != Op::Update
            || rec.is_superseded()
            || rec.key() != event.key
            || rec.region() != event.region
        {
            return;
        }
        let len = rec.len();
        record::mark_superseded(&mut bytes[..len]);
        let c = &mut queue.counters;
        c.conflated += 1;
        if on_disk {
            c.events_disk -= 1;
            c.bytes_disk -= len as u64;
            if self.config.persistent {
                self.dirty.insert(e.segment().expect("segment"));
            }
        } else {
            c.events_mem -= 1;
            c.bytes_mem -= len as u64;
        }
    }

    /// Hands out up to `events_max` events or `bytes_max` bytes (at least one event) from the
    /// first event not yet peeked, without removing anything. `None` when nothing is waiting.
    pub fn peek(
        &mut self,
        q: QueueId,
        events_max: u32,
        bytes_max: u64,
    ) -> Result<Option<Batch>, ReadError> {
        let Some(queue) = self.queues.get_mut(q.0 as usize) else {
            return Ok(None);
        };
        // Nothing appended past the cursor: the common answer for most of a parallel sender's
        // bucket queues each time its dispatcher looks through them, without touching extents.
        if queue.peek.seq >= queue.next_seq {
            return Ok(None);
        }
        let mut c = queue.normalize(queue.peek);
        let mut batch = Batch {
            queue: q,
            first_seq: Seq(0),
            last_seq: Seq(0),
            events: 0,
            bytes: 0,
            possible_duplicate: false,
            slices: Vec::new(),
        };
        'extents: while let Some(i) = queue.index_of(c.extent) {
            let e = &queue.extents[i];
            let data = &e.bytes()[..e.end as usize];
            let mut run: Option<SliceRef> = None;
            while c.offset < e.end {
                let at = c.offset as usize;
                let parsed = match e.store {
                    Store::Segment { .. } => {
                        record::decode(&data[at..]).map(|r| (*r.header(), r.len()))
                    }
                    Store::Memory(_) => record::check_header(&data[at..]).map(|(h, len)| (*h, len)),
                };
                let (h, len) = parsed.map_err(|error| ReadError {
                    queue: q,
                    segment: e.segment().unwrap_or(SegmentId(0)),
                    offset: c.offset,
                    error,
                })?;
                let seq = Seq(h.queue_seq.get());
                if h.flags & record::FLAG_SUPERSEDED != 0 {
                    if let Some(r) = run.take() {
                        batch.slices.push(r);
                    }
                    c.offset += len as u32;
                    c.seq = seq.next();
                    continue;
                }
                if batch.events >= events_max.max(1)
                    || (batch.events > 0 && batch.bytes + len as u64 > bytes_max)
                {
                    if let Some(r) = run.take() {
                        batch.slices.push(r);
                    }
                    break 'extents;
                }
                if batch.events == 0 {
                    batch.first_seq = seq;
                }
                batch.last_seq = seq;
                batch.events += 1;
                batch.bytes += len as u64;
                match &mut run {
                    Some(r) => r.end += len as u32,
                    None => {
                        run = Some(SliceRef {
                            extent: e.serial,
                            start: c.offset,
                            end: c.offset + len as u32,
                        })
                    }
                }
                c.offset += len as u32;
                c.seq = seq.next();
            }
            if let Some(r) = run.take() {
                batch.slices.push(r);
            }
            let next = queue.normalize(c);
            if next == c {
                break;
            }
            c = next;
        }
        queue.peek = c;
        // Ask for the segment being read, and the next one, to be read ahead off the shard.
        if let Some(i) = queue.index_of(c.extent) {
            for e in queue.extents.range_mut(i..).take(2) {
                if let (Some(id), false) = (e.segment(), e.prefetched) {
                    e.prefetched = true;
                    self.prefetch.push(id);
                }
            }
        }
        if batch.events == 0 {
            return Ok(None);
        }
        queue.peeked_max = queue.peeked_max.max(batch.last_seq);
        if batch.first_seq <= queue.redeliver_upto {
            batch.possible_duplicate = true;
            let upto = batch.last_seq.min(queue.redeliver_upto);
            queue.counters.possible_duplicates += upto.0 - batch.first_seq.0 + 1;
        }
        Ok(Some(batch))
    }

    /// The bytes of a batch, as contiguous runs of whole records in memory or in the mapped
    /// segment. Valid until the batch is acknowledged.
    pub fn batch_slices<'a>(&'a self, batch: &'a Batch) -> impl Iterator<Item = &'a [u8]> + 'a {
        let queue = self.queue(batch.queue);
        batch.slices.iter().filter_map(move |s| {
            let queue = queue?;
            let e = &queue.extents[queue.index_of(s.extent)?];
            Some(&e.bytes()[s.start as usize..s.end as usize])
        })
    }

    /// Releases every event of queue `q` up to and including `upto`. Returns how many events
    /// were released.
    pub fn ack(&mut self, q: QueueId, upto: Seq) -> Result<u64, AckError> {
        let persistent = self.config.persistent;
        let conflation = self.config.conflation;
        let Some(queue) = self.queues.get_mut(q.0 as usize) else {
            return Err(AckError::UnknownQueue(q));
        };
        if upto <= queue.acked {
            return Ok(0);
        }
        if upto > queue.peeked_max {
            return Err(AckError::NotPeeked {
                upto,
                peeked: queue.peeked_max,
            });
        }
        let mut released = 0u64;
        let mut c = queue.normalize(queue.ack);
        while let Some(i) = queue.index_of(c.extent) {
            let e = &queue.extents[i];
            if c.offset >= e.end {
                break;
            }
            let (h, len) = record::check_header(&e.bytes()[c.offset as usize..e.end as usize])
                .expect("records were checked when written and when peeked");
            let seq = Seq(h.queue_seq.get());
            if seq > upto {
                break;
            }
            if h.flags & record::FLAG_SUPERSEDED == 0 {
                released += 1;
                let counters = &mut queue.counters;
                if e.segment().is_some() {
                    counters.events_disk -= 1;
                    counters.bytes_disk -= len as u64;
                } else {
                    counters.events_mem -= 1;
                    counters.bytes_mem -= len as u64;
                }
                if conflation && h.op == Op::Update as u8 {
                    let start =
                        c.offset as usize + record::HEADER_BYTES + h.recipient_count as usize;
                    let key = &e.bytes()[start..start + h.key_len.get() as usize];
                    let slot = Self::key_hash(RegionId(h.region.get()), key);
                    if queue.conflation.get(&slot).is_some_and(|x| x.seq == seq) {
                        queue.conflation.remove(&slot);
                        self.memory_bytes -= CONFLATION_ENTRY_BYTES;
                    }
                }
            }
            c.offset += len as u32;
            c.seq = seq.next();
            c = queue.normalize(c);
        }
        queue.acked = upto;
        queue.ack = c;
        // Drop extents that hold nothing unacknowledged. A persistent queue keeps its last
        // segment: its header carries the queue's position across a restart.
        while let Some(front) = queue.extents.front() {
            let done = c.extent > front.serial
                || (c.extent == front.serial && c.offset >= front.end && front.sealed);
            let last = queue.extents.len() == 1;
            if !done || (persistent && last && front.segment().is_some()) {
                break;
            }
            let front = queue.extents.pop_front().expect("front exists");
            match front.store {
                Store::Memory(b)
                    if b.len() == MEMORY_CHUNK_BYTES_MAX
                        && self.free_chunks.len() < FREE_CHUNKS_MAX =>
                {
                    self.free_chunks.push(b);
                }
                Store::Memory(b) => self.memory_bytes -= b.len() as u64,
                Store::Segment { id, buf } => {
                    self.dirty.remove(&id);
                    let after = if persistent && self.config.sync != SyncPolicy::Never {
                        self.next_sync_token
                    } else {
                        0
                    };
                    self.pending_deletes.push((id, buf, after));
                }
            }
        }
        queue.ack = queue.normalize(queue.ack);
        queue.peek = queue.normalize(queue.peek);
        if persistent {
            let ack = queue.ack;
            if let Some(Extent {
                store: Store::Segment { id, buf },
                serial,
                end,
                ..
            }) = queue.extents.front_mut()
            {
                // The first unacknowledged record of the head segment, or its end when the
                // cursor has moved past it: a sync writes back only from there.
                let offset = if ack.extent == *serial {
                    ack.offset
                } else {
                    *end
                };
                segment::write_ack(buf.bytes_mut(), upto, offset);
                self.dirty.insert(*id);
            }
        }
        if !persistent {
            self.stop_overflowing_if_drained(q);
        }
        Ok(released)
    }

    fn stop_overflowing_if_drained(&mut self, q: QueueId) {
        let queue = &mut self.queues[q.0 as usize];
        if queue.overflowing && queue.segments().next().is_none() {
            queue.overflowing = false;
            self.overflowing_queues -= 1;
        }
    }

    /// Makes every peeked but unacknowledged event of `q` unpeeked again, for resending after a
    /// lost connection. The batches that carry them again are marked possible-duplicate.
    pub fn reset(&mut self, q: QueueId) {
        if let Some(queue) = self.queues.get_mut(q.0 as usize) {
            queue.redeliver_upto = queue.redeliver_upto.max(queue.peeked_max);
            queue.peek = queue.normalize(queue.ack);
        }
    }

    /// Whether the append of `seq` to `q` has the durability its configuration promises.
    pub fn durability(&self, q: QueueId, seq: Seq) -> Durability {
        let Some(queue) = self.queue(q) else {
            return Durability::Done;
        };
        if !(self.config.persistent
            && self.config.disk_synchronous
            && self.config.sync == SyncPolicy::EveryBatch)
        {
            return Durability::Done;
        }
        if queue.synced >= seq {
            return Durability::Done;
        }
        match &queue.sync_failed {
            Some((upto, why)) if seq <= *upto => Durability::Failed(why.clone()),
            _ => Durability::Pending,
        }
    }

    /// The next piece of file work, if any. `now_ms` drives interval syncs and retries.
    pub fn poll_action(&mut self, now_ms: u64) -> Option<Action> {
        if let Some(id) = self.prefetch.pop() {
            return Some(Action::PrefetchSegment { id });
        }
        let synced = self.last_synced_token;
        if let Some(i) = self.pending_deletes.iter().position(|d| d.2 <= synced) {
            let (id, buf, _) = self.pending_deletes.swap_remove(i);
            return Some(Action::DeleteSegment { id, buf });
        }
        if let Some(a) = self.poll_journal_recycle() {
            return Some(a);
        }
        if let Some(a) = self.poll_journal_create(now_ms) {
            return Some(a);
        }
        if let Some(a) = self.poll_create(now_ms) {
            return Some(a);
        }
        if let Some(a) = self.poll_commit(now_ms) {
            return Some(a);
        }
        if let Some(a) = self.poll_checkpoint_step() {
            return Some(a);
        }
        self.poll_sync(now_ms)
    }

    /// Deletes recycled journal segments that can no longer be used, and makes the headers of
    /// freed ones durable for reuse.
    fn poll_journal_recycle(&mut self) -> Option<Action> {
        let j = self.journal.as_mut()?;
        if let Some(d) = j.discard.pop() {
            return Some(Action::DeleteSegment {
                id: d.id,
                buf: d.buf,
            });
        }
        let s = j.to_recycle.pop_front()?;
        j.recycling.push((s.id, s.seq));
        Some(Action::RecycleSegment {
            id: s.id,
            buf: s.buf,
        })
    }

    /// Keeps a journal segment created ahead of need, unless freed ones are being reused.
    fn poll_journal_create(&mut self, now_ms: u64) -> Option<Action> {
        let j = self.journal.as_mut()?;
        if self.disk_error.is_some()
            || j.spare.is_some()
            || !j.recycled.is_empty()
            || !j.to_recycle.is_empty()
            || !j.recycling.is_empty()
            || j.creating.is_some()
            || j.create_retry_at.is_some_and(|at| now_ms < at)
        {
            return None;
        }
        let id = SegmentId(self.next_segment_id);
        self.next_segment_id += 1;
        j.creating = Some(id);
        Some(Action::CreateSegment {
            id,
            bytes: self.config.journal_segment_bytes(),
        })
    }

    /// The queues whose appends are not yet known durable, and how far each has written.
    fn unsynced_positions(&self) -> Vec<(QueueId, Seq)> {
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.written > q.synced)
            .map(|(i, q)| (QueueId(i as u16), q.written))
            .collect()
    }

    /// A journal commit: sync the journal segments appended to (and any queue segment holding
    /// records the journal could not take), which makes every append so far durable.
    fn poll_commit(&mut self, now_ms: u64) -> Option<Action> {
        let j = self.journal.as_ref()?;
        if j.commit_inflight.is_some()
            || (j.touched.is_empty() && j.sync_at_commit.is_empty())
            || j.commit_retry_at.is_some_and(|at| now_ms < at)
        {
            return None;
        }
        // Only once a commit is due: this walks every queue.
        let covers = self.unsynced_positions();
        let j = self.journal.as_mut()?;
        let token = self.next_sync_token;
        self.next_sync_token += 1;
        let mut segments = std::mem::take(&mut j.touched);
        // A queue segment synced here may be new: its directory entry must be durable too.
        let directory = std::mem::take(&mut j.new_file) || !j.sync_at_commit.is_empty();
        segments.extend(std::mem::take(&mut j.sync_at_commit));
        j.commit_inflight = Some((token, covers, segments.clone()));
        Some(Action::Sync {
            token,
            segments,
            directory,
            lane: Lane::Commit,
        })
    }

    fn poll_create(&mut self, now_ms: u64) -> Option<Action> {
        if let Some((_, retry_at)) = &self.disk_error
            && now_ms < *retry_at
        {
            return None;
        }
        let bytes = if let Some(need) = self.oversize_demand.take() {
            need.max(self.config.segment_bytes)
        } else {
            let near_budget = self.memory_bytes.saturating_mul(4)
                >= self.config.memory_bytes_max.saturating_mul(3);
            let wanted = self.config.persistent
                || self.overflowing_queues > 0
                || near_budget
                || self.segment_demand;
            let target = self.config.spare_segments as usize + self.tails_past_half as usize;
            if !wanted || self.spares.len() + self.creating as usize >= target.max(1) {
                return None;
            }
            self.segment_demand = false;
            self.config.segment_bytes
        };
        if self.disk_error.is_some() && self.creating > 0 {
            return None;
        }
        let id = SegmentId(self.next_segment_id);
        self.next_segment_id += 1;
        self.creating += 1;
        Some(Action::CreateSegment { id, bytes })
    }

    /// Whether an acknowledged segment waits for a sync that nothing written would start: its
    /// file stays on the disk until one runs, so the sync is started for it.
    fn deletes_wait_for_sync(&self) -> bool {
        let synced = self.last_synced_token;
        self.pending_deletes.iter().any(|d| d.2 > synced)
    }

    /// Whether sealed journal segments wait for a checkpoint to free them.
    fn journal_waits_for_checkpoint(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| !j.sealed.is_empty())
    }

    /// Whether a sync (a checkpoint, for a journalled sender) has anything to do.
    fn sync_wanted(&self) -> bool {
        !self.dirty.is_empty()
            || self.deletes_wait_for_sync()
            || self.journal_waits_for_checkpoint()
    }

    fn poll_sync(&mut self, now_ms: u64) -> Option<Action> {
        if self.sync_inflight.is_some() || !self.sync_wanted() || !self.config.persistent {
            return None;
        }
        if self.sync_retry_at.is_some_and(|at| now_ms < at) {
            return None;
        }
        match self.config.sync {
            SyncPolicy::Never => return None,
            SyncPolicy::IntervalMs(ms) if now_ms < self.last_sync_ms + ms as u64 => return None,
            // A journalled sender's commits are the journal's; its checkpoints come at most
            // every JOURNAL_CHECKPOINT_MS, or when journal segments wait to be freed.
            SyncPolicy::EveryBatch
                if self.journal.as_ref().is_some_and(|j| {
                    j.sealed.len() < JOURNAL_SEALED_MAX
                        && now_ms < self.last_sync_ms + JOURNAL_CHECKPOINT_MS
                }) =>
            {
                return None;
            }
            _ => {}
        }
        Some(self.start_sync(now_ms))
    }

    fn start_sync(&mut self, now_ms: u64) -> Action {
        let token = self.next_sync_token;
        self.next_sync_token += 1;
        self.last_sync_ms = now_ms;
        let segments: Vec<SegmentId> = std::mem::take(&mut self.dirty).into_iter().collect();
        for q in &mut self.queues {
            q.tail_dirty = false;
        }
        let covers = self.unsynced_positions();
        let mut step = segments.clone();
        if let Some(j) = &mut self.journal {
            // Every entry of the journal so far is in a segment this checkpoint syncs.
            j.checkpoint_frees = j.sealed.len();
            j.since_checkpoint = false;
            j.checkpoint_rest = step.split_off(step.len().min(CHECKPOINT_STEP_SEGMENTS));
            j.checkpoint_step_inflight = true;
        }
        self.sync_inflight = Some((token, covers, segments));
        let directory = std::mem::take(&mut self.dirty_directory);
        // Without a journal, a sync under `every-batch` is the group commit writers wait for;
        // with one, it is a checkpoint.
        let lane = if self.config.sync == SyncPolicy::EveryBatch && self.journal.is_none() {
            Lane::Commit
        } else {
            Lane::Background
        };
        Action::Sync {
            token,
            segments: step,
            directory,
            lane,
        }
    }

    /// The next step of a running checkpoint, once the last one is done.
    fn poll_checkpoint_step(&mut self) -> Option<Action> {
        let token = self.sync_inflight.as_ref()?.0;
        let j = self.journal.as_mut()?;
        if j.checkpoint_step_inflight || j.checkpoint_rest.is_empty() {
            return None;
        }
        let rest = j.checkpoint_rest.len();
        let segments: Vec<SegmentId> = j
            .checkpoint_rest
            .drain(rest.saturating_sub(CHECKPOINT_STEP_SEGMENTS)..)
            .collect();
        j.checkpoint_step_inflight = true;
        Some(Action::Sync {
            token,
            segments,
            directory: false,
            lane: Lane::Background,
        })
    }

    /// The file work of a clean close, whatever the policy: sync everything written, then
    /// delete what that sync made deletable and the unused spares. Creates nothing. `None`
    /// when nothing is left to do now (a sync may still be running).
    pub fn poll_close(&mut self, now_ms: u64) -> Option<Action> {
        let synced = self.last_synced_token;
        if let Some(i) = self.pending_deletes.iter().position(|d| d.2 <= synced) {
            let (id, buf, _) = self.pending_deletes.swap_remove(i);
            return Some(Action::DeleteSegment { id, buf });
        }
        if let Some(spare) = self.spares.pop().or_else(|| {
            let j = self.journal.as_mut()?;
            j.spare.take().or_else(|| j.discard.pop()).or_else(|| {
                j.recycled
                    .pop_front()
                    .or_else(|| j.to_recycle.pop_front())
                    .map(JournalSegment::into_spare)
            })
        }) {
            return Some(Action::DeleteSegment {
                id: spare.id,
                buf: spare.buf,
            });
        }
        if let Some(a) = self.poll_checkpoint_step() {
            return Some(a);
        }
        let commit_inflight = self
            .journal
            .as_ref()
            .is_some_and(|j| j.commit_inflight.is_some());
        if self.sync_inflight.is_some() || commit_inflight {
            return None;
        }
        let journal_uncovered = self.journal.as_ref().is_some_and(|j| j.since_checkpoint);
        if !self.dirty.is_empty() || !self.pending_deletes.is_empty() || journal_uncovered {
            return Some(self.start_sync(now_ms));
        }
        // The last checkpoint covers every journal entry: the journal is no longer needed.
        let j = self.journal.as_mut()?;
        let s = j.sealed.pop_front().or_else(|| j.tail.take())?;
        Some(Action::DeleteSegment {
            id: s.id,
            buf: s.buf,
        })
    }

    /// When [`SenderQueue::poll_action`] will next have something to do without any other
    /// input: an interval sync or a creation retry.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let retry = match (
            self.disk_error.as_ref().map(|(_, at)| *at),
            self.sync_retry_at,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let interval = match self.config.sync {
            SyncPolicy::IntervalMs(ms) => Some(ms as u64),
            SyncPolicy::EveryBatch if self.journal.is_some() => Some(JOURNAL_CHECKPOINT_MS),
            _ => None,
        };
        let sync = interval
            .filter(|_| {
                self.config.persistent && self.sync_wanted() && self.sync_inflight.is_none()
            })
            .map(|ms| self.last_sync_ms + ms);
        let journal = self.journal.as_ref().and_then(|j| {
            [j.commit_retry_at, j.create_retry_at]
                .into_iter()
                .flatten()
                .min()
        });
        [retry, sync, journal].into_iter().flatten().min()
    }

    /// Whether a sync (or a journal commit) is running.
    pub fn sync_in_flight(&self) -> bool {
        self.sync_inflight.is_some()
            || self
                .journal
                .as_ref()
                .is_some_and(|j| j.commit_inflight.is_some())
    }

    /// Whether anything written is not yet synced.
    pub fn has_unsynced(&self) -> bool {
        !self.dirty.is_empty()
            || self.sync_in_flight()
            || self
                .journal
                .as_ref()
                .is_some_and(|j| !j.touched.is_empty() || !j.sync_at_commit.is_empty())
    }

    /// The outcome of a [`Action::CreateSegment`].
    pub fn handle_created(
        &mut self,
        id: SegmentId,
        result: Result<Box<dyn SegmentBuf>, StoreError>,
        now_ms: u64,
    ) {
        if let Some(j) = &mut self.journal
            && j.creating == Some(id)
        {
            j.creating = None;
            match result {
                Ok(buf) => {
                    j.spare = Some(Spare { id, buf });
                    j.create_retry_at = None;
                }
                // Meanwhile records commit by syncing their queues' segments.
                Err(_) => j.create_retry_at = Some(now_ms + RETRY_MS),
            }
            return;
        }
        self.creating = self.creating.saturating_sub(1);
        match result {
            Ok(buf) => {
                self.disk_error = None;
                self.spares.push(Spare { id, buf });
            }
            Err(e) => {
                // A queue's segment comes before the journal's spares: on a full disk, give
                // their room back, the blank one's and the recycled ones' (records then commit
                // through their queues' segments), and make no other while creations fail.
                if e.is_disk_full()
                    && let Some(j) = self.journal.as_mut()
                {
                    let recycled = j.recycled.drain(..).chain(j.to_recycle.drain(..));
                    let spares = recycled.map(JournalSegment::into_spare);
                    for spare in j.spare.take().into_iter().chain(spares) {
                        self.pending_deletes.push((spare.id, spare.buf, 0));
                    }
                }
                self.disk_error = Some((e, now_ms + RETRY_MS));
            }
        }
    }

    /// A [`Action::DeleteSegment`] removed its file: that room is free again, so a segment
    /// creation that failed (a full disk) is retried at once rather than at its retry time.
    /// Without this, a queue that had filled its disk went on refusing appends with the old
    /// "No space left on device" for up to [`RETRY_MS`] after draining and deleting its
    /// segments.
    pub fn handle_deleted(&mut self, now_ms: u64) {
        if let Some((_, retry_at)) = &mut self.disk_error {
            *retry_at = (*retry_at).min(now_ms);
        }
    }

    /// The outcome of an [`Action::RecycleSegment`]: the segment is ready for reuse, or, if
    /// its header could not be made durable, a later-numbered segment has been put to use
    /// meanwhile, or segment creation is failing on a full disk, deleted.
    pub fn handle_recycled(
        &mut self,
        id: SegmentId,
        buf: Box<dyn SegmentBuf>,
        result: Result<(), StoreError>,
    ) {
        let Some(j) = self.journal.as_mut() else {
            self.pending_deletes.push((id, buf, 0));
            return;
        };
        let Some(i) = j.recycling.iter().position(|r| r.0 == id) else {
            self.pending_deletes.push((id, buf, 0));
            return;
        };
        let (_, seq) = j.recycling.swap_remove(i);
        let after = j.tail.as_ref().map_or(0, |t| t.seq);
        // On a full disk, spares give their room back (`handle_created`).
        let disk_full = self
            .disk_error
            .as_ref()
            .is_some_and(|(e, _)| e.is_disk_full());
        if result.is_err() || seq <= after || disk_full {
            j.discard.push(Spare { id, buf });
            return;
        }
        // Recycles may complete out of order; they are used in the order they were numbered.
        let at = j.recycled.partition_point(|r| r.seq < seq);
        j.recycled.insert(at, JournalSegment::empty(id, seq, buf));
    }

    /// The outcome of an [`Action::Sync`].
    pub fn handle_synced(&mut self, token: u64, result: Result<(), StoreError>, now_ms: u64) {
        if self
            .journal
            .as_ref()
            .and_then(|j| j.commit_inflight.as_ref())
            .is_some_and(|c| c.0 == token)
        {
            self.handle_committed(result, now_ms);
            return;
        }
        let Some((t, covers, segments)) = self.sync_inflight.take() else {
            return;
        };
        if t != token {
            self.sync_inflight = Some((t, covers, segments));
            return;
        }
        if let Some(j) = &mut self.journal {
            j.checkpoint_step_inflight = false;
            if result.is_ok() && !j.checkpoint_rest.is_empty() {
                // More steps to go.
                self.sync_inflight = Some((t, covers, segments));
                return;
            }
            j.checkpoint_rest.clear();
        }
        match result {
            Ok(()) => {
                self.last_synced_token = token;
                self.sync_retry_at = None;
                self.mark_synced(covers);
                if let Some(j) = &mut self.journal {
                    let frees = std::mem::take(&mut j.checkpoint_frees).min(j.sealed.len());
                    let freed: Vec<JournalSegment> = j.sealed.drain(..frees).collect();
                    for s in freed {
                        if j.recycle_room(self.config.journal_recycle_segments) {
                            j.recycle(s);
                        } else {
                            self.pending_deletes.push((s.id, s.buf, token));
                        }
                    }
                }
            }
            Err(e) => {
                self.mark_sync_failed(covers, &e);
                if let Some(j) = &mut self.journal {
                    j.checkpoint_frees = 0;
                    j.since_checkpoint = true;
                }
                // Try again later: the data is still in the mapped files.
                self.dirty_directory = true;
                self.sync_retry_at = Some(now_ms + RETRY_MS);
                let alive: Vec<SegmentId> = segments
                    .into_iter()
                    .filter(|id| self.segment_alive(*id))
                    .collect();
                self.dirty.extend(alive);
            }
        }
    }

    fn mark_synced(&mut self, covers: Vec<(QueueId, Seq)>) {
        for (q, upto) in covers {
            let queue = &mut self.queues[q.0 as usize];
            queue.synced = queue.synced.max(upto);
            if queue.sync_failed.as_ref().is_some_and(|(s, _)| *s <= upto) {
                queue.sync_failed = None;
            }
        }
    }

    fn mark_sync_failed(&mut self, covers: Vec<(QueueId, Seq)>, e: &StoreError) {
        let why = e.to_string();
        for (q, upto) in covers {
            self.queues[q.0 as usize].sync_failed = Some((upto, why.clone()));
        }
    }

    /// The outcome of a journal commit.
    fn handle_committed(&mut self, result: Result<(), StoreError>, now_ms: u64) {
        let Some((_, covers, segments)) =
            self.journal.as_mut().and_then(|j| j.commit_inflight.take())
        else {
            return;
        };
        if let Err(e) = result {
            // Try again later: the entries are still in the mapped files.
            let queue_segments: Vec<SegmentId> = segments
                .iter()
                .copied()
                .filter(|id| self.segment_alive(*id))
                .collect();
            let j = self.journal.as_mut().expect("a commit is the journal's");
            j.commit_retry_at = Some(now_ms + RETRY_MS);
            j.new_file = true;
            for id in segments {
                let in_journal = j.sealed.iter().chain(j.tail.as_ref()).any(|s| s.id == id);
                if in_journal && !j.touched.contains(&id) {
                    j.touched.push(id);
                }
            }
            j.sync_at_commit.extend(queue_segments);
            self.mark_sync_failed(covers, &e);
            return;
        }
        if let Some(j) = self.journal.as_mut() {
            j.commit_retry_at = None;
        }
        self.mark_synced(covers);
    }

    fn segment_alive(&self, id: SegmentId) -> bool {
        self.queues
            .iter()
            .any(|q| q.segments().any(|e| e.segment() == Some(id)))
    }

    /// The current bytes of a segment this queue holds (for test backends that emulate sync).
    pub fn segment_bytes(&self, id: SegmentId) -> Option<&[u8]> {
        self.queues
            .iter()
            .flat_map(|q| q.segments())
            .find(|e| e.segment() == Some(id))
            .map(|e| e.bytes())
            .or_else(|| {
                self.spares
                    .iter()
                    .find(|s| s.id == id)
                    .map(|s| s.buf.bytes())
            })
            .or_else(|| {
                let j = self.journal.as_ref()?;
                j.segments().find(|(sid, _)| *sid == id).map(|(_, b)| b)
            })
    }

    /// Gives up every segment buffer, as a process that stops would (spares included).
    pub fn into_segments(self) -> Vec<(SegmentId, Box<dyn SegmentBuf>)> {
        let mut out: Vec<(SegmentId, Box<dyn SegmentBuf>)> =
            self.spares.into_iter().map(|s| (s.id, s.buf)).collect();
        out.extend(
            self.pending_deletes
                .into_iter()
                .map(|(id, buf, _)| (id, buf)),
        );
        for q in self.queues {
            for e in q.extents {
                if let Store::Segment { id, buf } = e.store {
                    out.push((id, buf));
                }
            }
        }
        if let Some(j) = self.journal {
            let segments = j.sealed.into_iter().chain(j.tail);
            let segments = segments.chain(j.recycled).chain(j.to_recycle);
            out.extend(segments.map(|s| (s.id, s.buf)));
            out.extend(j.spare.into_iter().chain(j.discard).map(|s| (s.id, s.buf)));
        }
        out
    }

    /// Figures for queue `q`; `now_us` (microseconds since the Unix epoch) dates the oldest event.
    pub fn queue_stats(&self, q: QueueId, now_us: u64) -> QueueStats {
        let Some(queue) = self.queue(q) else {
            return QueueStats::default();
        };
        let c = &queue.counters;
        let mut s = QueueStats {
            events_queued: c.events_mem + c.events_disk,
            bytes_queued: c.bytes_mem + c.bytes_disk,
            events_in_memory: c.events_mem,
            bytes_in_memory: c.bytes_mem,
            events_on_disk: c.events_disk,
            bytes_on_disk: c.bytes_disk,
            memory_bytes: queue
                .extents
                .iter()
                .filter(|e| e.segment().is_none())
                .map(|e| e.capacity() as u64)
                .sum::<u64>()
                + queue.conflation.len() as u64 * CONFLATION_ENTRY_BYTES,
            segments: queue.segments().count() as u64,
            segment_bytes: queue.segments().map(|e| e.capacity() as u64).sum(),
            conflated: c.conflated,
            possible_duplicates: c.possible_duplicates,
            oldest_event_age_us: None,
        };
        s.oldest_event_age_us = self
            .oldest_timestamp(queue)
            .map(|ts| now_us.saturating_sub(ts));
        s
    }

    fn oldest_timestamp(&self, queue: &Queue) -> Option<u64> {
        let mut c = queue.normalize(queue.ack);
        while let Some(i) = queue.index_of(c.extent) {
            let e = &queue.extents[i];
            if c.offset >= e.end {
                return None;
            }
            let (h, len) =
                record::check_header(&e.bytes()[c.offset as usize..e.end as usize]).ok()?;
            if h.flags & record::FLAG_SUPERSEDED == 0 {
                return Some(h.timestamp_us.get());
            }
            c.offset += len as u32;
            c = queue.normalize(c);
        }
        None
    }

    /// Figures summed over every queue of this sender.
    pub fn stats(&self, now_us: u64) -> QueueStats {
        let mut t = QueueStats::default();
        for i in 0..self.queues.len() {
            let s = self.queue_stats(QueueId(i as u16), now_us);
            t.events_queued += s.events_queued;
            t.bytes_queued += s.bytes_queued;
            t.events_in_memory += s.events_in_memory;
            t.bytes_in_memory += s.bytes_in_memory;
            t.events_on_disk += s.events_on_disk;
            t.bytes_on_disk += s.bytes_on_disk;
            t.segments += s.segments;
            t.segment_bytes += s.segment_bytes;
            t.conflated += s.conflated;
            t.possible_duplicates += s.possible_duplicates;
            t.oldest_event_age_us = t.oldest_event_age_us.max(s.oldest_event_age_us);
        }
        t.memory_bytes = self.memory_bytes;
        t.segments += self.spares.len() as u64;
        t.segment_bytes += self
            .spares
            .iter()
            .map(|s| s.buf.bytes().len() as u64)
            .sum::<u64>();
        if let Some(j) = &self.journal {
            for (_, bytes) in j.segments() {
                t.segments += 1;
                t.segment_bytes += bytes.len() as u64;
            }
        }
        t
    }
}
