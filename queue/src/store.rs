//! The storage seam: segment buffers, the blocking [`Disk`] operations behind them, and
//! recovery, which rebuilds a [`SenderQueue`] from whatever a [`Disk`] holds.
//!
//! Two disks implement the trait: [`crate::mmap::MmapDisk`] (memory-mapped files) and
//! [`crate::mem::MemDisk`] (vectors, with injected failures and crashes, for tests).

use crate::ids::{QueueId, SegmentId, Seq};
use crate::journal::{self, JOURNAL_QUEUE};
use crate::queue::{
    Action, AppendError, QueueConfig, RecoveredQueue, RecoveredSegment, SenderQueue,
};
use crate::record;
use crate::segment::{self, BadRecord, HeaderError, Tail};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;

/// The bytes of one segment, owned by the queue that writes it. Writing is a memory copy and
/// never blocks on I/O: segments arrive created, preallocated and prefaulted.
pub trait SegmentBuf: Send + fmt::Debug {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl SegmentBuf for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// What the disk was doing when it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    Lock,
    Create,
    Open,
    List,
    Sync,
    Delete,
    Quarantine,
    Prefetch,
    /// Starting a helper thread (a queue's commit lane).
    StartThread,
}

impl fmt::Display for StoreOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreOp::Lock => "locking",
            StoreOp::Create => "creating segment",
            StoreOp::Open => "opening segment",
            StoreOp::List => "listing",
            StoreOp::Sync => "syncing segment",
            StoreOp::Delete => "deleting segment",
            StoreOp::Quarantine => "writing quarantine file",
            StoreOp::Prefetch => "reading ahead segment",
            StoreOp::StartThread => "starting thread",
        })
    }
}

/// A local I/O failure, naming the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op} {path}: {message}")]
pub struct StoreError {
    pub op: StoreOp,
    pub path: String,
    pub kind: io::ErrorKind,
    pub message: String,
}

impl StoreError {
    pub fn new(op: StoreOp, path: impl fmt::Display, err: &io::Error) -> StoreError {
        StoreError {
            op,
            path: path.to_string(),
            kind: err.kind(),
            message: err.to_string(),
        }
    }

    /// The disk (or the quota) is full.
    pub fn is_disk_full(&self) -> bool {
        self.kind == io::ErrorKind::StorageFull || self.kind == io::ErrorKind::QuotaExceeded
    }
}

/// Blocking file operations. Never called on a shard's event loop: the shell runs them on a
/// helper thread.
pub trait Disk: Send + Sync {
    /// A human-readable location of a segment (its path), for reports.
    fn location(&self, id: SegmentId) -> String;
    /// Creates a zero-filled segment of `bytes` bytes, preallocated and ready to write.
    fn create(&self, id: SegmentId, bytes: u32) -> Result<Box<dyn SegmentBuf>, StoreError>;
    /// Every segment present, in id order.
    fn list(&self) -> Result<Vec<SegmentId>, StoreError>;
    /// Opens an existing segment for reading and writing.
    fn open(&self, id: SegmentId) -> Result<Box<dyn SegmentBuf>, StoreError>;
    /// Makes a segment durable. `current` is the segment's bytes as the queue holds them, for
    /// disks that keep no file behind the buffer; file-backed disks ignore it. Durable means
    /// as recovery reads it: the header, and every byte from the ack slot's offset on
    /// ([`segment::ack_offset_of`]); acknowledged records before that offset need not be
    /// written back.
    fn sync(&self, id: SegmentId, current: Option<&[u8]>) -> Result<(), StoreError>;
    /// Makes every segment of `ids` durable (one group commit), and reports the first
    /// failure. Disks whose syncs can overlap run them at once.
    fn sync_each(&self, ids: &[SegmentId]) -> Result<(), StoreError> {
        ids.iter().try_for_each(|&id| self.sync(id, None))
    }
    /// Starts reading a segment into memory without waiting for it (a hint: errors are
    /// reported but change nothing).
    fn prefetch(&self, id: SegmentId) -> Result<(), StoreError>;
    /// Makes the creation and deletion of segment files durable.
    fn sync_directory(&self) -> Result<(), StoreError>;
    /// Unmaps and deletes a segment.
    fn delete(&self, id: SegmentId, buf: Box<dyn SegmentBuf>) -> Result<(), StoreError>;
    /// Keeps `bytes` aside under `name` and returns where they went.
    fn quarantine(&self, name: &str, bytes: &[u8]) -> Result<String, StoreError>;
}

/// A torn tail found and cut off at recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: String,
    pub offset: usize,
    /// Non-zero bytes cleared after the last valid record.
    pub bytes: usize,
    pub error: BadRecord,
}

/// Damage found at recovery and kept aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    pub segment: String,
    pub offset: usize,
    pub reason: String,
    /// Where the damaged bytes and everything after them went.
    pub quarantine: String,
    /// Valid records found among the bytes kept aside.
    pub records_kept_aside: u64,
    pub bytes_kept_aside: usize,
}

/// Events missing between two segments of a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqGap {
    pub queue: QueueId,
    pub segment: String,
    pub expected: Seq,
    pub found: Seq,
}

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: u64,
    pub queues: u64,
    /// Unacknowledged events restored, and their bytes.
    pub events: u64,
    pub bytes: u64,
    pub torn: Vec<TornTail>,
    pub corrupt: Vec<Corruption>,
    pub gaps: Vec<SeqGap>,
    /// Segments deleted as expected: unused spares, overflow of a non-persistent queue, fully
    /// acknowledged ones, journal segments once replayed. (location, reason)
    pub discarded: Vec<(String, &'static str)>,
    /// Commit journal segments found, and the events recovery took from them that the
    /// queues' own segments did not hold (written since the last checkpoint).
    pub journal_segments: u64,
    pub journal_events_replayed: u64,
}

/// Most threads recovery scans queues on.
pub const RECOVERY_THREADS_MAX: usize = 4;

impl RecoveryReport {
    fn merge(&mut self, other: RecoveryReport) {
        self.segments += other.segments;
        self.queues += other.queues;
        self.torn.extend(other.torn);
        self.corrupt.extend(other.corrupt);
        self.gaps.extend(other.gaps);
        self.discarded.extend(other.discarded);
        self.journal_segments += other.journal_segments;
        self.journal_events_replayed += other.journal_events_replayed;
    }

    /// Whether recovery found anything an operator should look at.
    pub fn is_clean(&self) -> bool {
        self.torn.is_empty() && self.corrupt.is_empty() && self.gaps.is_empty()
    }
}

/// Why a queue could not be opened. Nothing was changed on disk.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("invalid queue configuration: {0}")]
    Config(#[from] crate::queue::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{path}: segment format version {version} is newer than this build reads; upgrade Strait to open this queue"
    )]
    NewerFormat { path: String, version: u16 },
    #[error(
        "{path}: segment belongs to queue {queue}, but the sender is configured with {queue_count} queues"
    )]
    UnknownQueue {
        path: String,
        queue: QueueId,
        queue_count: u16,
    },
    /// The commit journal's events could not be put back into their queues.
    #[error("replaying the commit journal into queue {queue}: {error}")]
    Replay { queue: QueueId, error: AppendError },
}

impl RecoveryError {
    /// Whether the disk had no room: the same recovery succeeds once it has (it changes
    /// nothing it would need to redo, and keeps the commit journal until its events are
    /// safely in the queues' segments).
    pub fn is_disk_full(&self) -> bool {
        match self {
            RecoveryError::Store(e) => e.is_disk_full(),
            RecoveryError::Replay {
                error: AppendError::Disk(e) | AppendError::Full { cause: e, .. },
                ..
            } => e.is_disk_full(),
            _ => false,
        }
    }
}

struct Found {
    id: SegmentId,
    buf: Box<dyn SegmentBuf>,
    info: segment::SegmentInfo,
}

/// Rebuilds the queues of one sender from `disk`: every unacknowledged event, in order, with
/// every CRC checked. Torn tails are cleared; damage in the middle is copied aside with
/// [`Disk::quarantine`]; all of it is reported. Refuses (changing nothing) a segment of a newer
/// format or of a queue the configuration does not have.
pub fn recover(
    config: QueueConfig,
    disk: &dyn Disk,
) -> Result<(SenderQueue, RecoveryReport), RecoveryError> {
    config.validate()?;
    let mut report = RecoveryReport::default();
    let ids = disk.list()?;
    let next_segment_id = SegmentId(ids.iter().map(|i| i.0).max().unwrap_or(0) + 1);
    let mut found = Vec::new();
    let mut unusable = Vec::new();
    let mut journal_found = Vec::new();
    for id in ids {
        let buf = disk.open(id)?;
        match segment::read_header(buf.bytes()) {
            Ok(info) if info.queue == JOURNAL_QUEUE => journal_found.push(Found { id, buf, info }),
            Ok(info) if info.queue.0 >= config.queue_count => {
                return Err(RecoveryError::UnknownQueue {
                    path: disk.location(id),
                    queue: info.queue,
                    queue_count: config.queue_count,
                });
            }
            Ok(info) => found.push(Found { id, buf, info }),
            Err(HeaderError::NewerVersion(version)) => {
                return Err(RecoveryError::NewerFormat {
                    path: disk.location(id),
                    version,
                });
            }
            Err(e) => unusable.push((id, buf, e)),
        }
    }
    // From here on, recovery changes the disk.
    for (id, buf, e) in unusable {
        let path = disk.location(id);
        let blank = matches!(e, HeaderError::Blank | HeaderError::Short(_))
            && buf.bytes().iter().all(|&b| b == 0);
        if blank {
            // A spare never assigned to a queue, or one whose creation a crash cut short.
            report.discarded.push((path, "blank spare segment"));
        } else if matches!(e, HeaderError::Blank) {
            // Records without the header written when the segment was put to use: a sync
            // writes the whole file, so none of it was ever synced. A power loss kept some
            // of its pages and not the first. Kept aside all the same.
            let name = format!("{:016x}.seg", id.0);
            disk.quarantine(&name, buf.bytes())?;
            report.torn.push(TornTail {
                segment: path,
                offset: 0,
                bytes: buf.bytes().len(),
                error: BadRecord::UnwrittenHeader,
            });
        } else {
            let name = format!("{:016x}.seg", id.0);
            let quarantine = disk.quarantine(&name, buf.bytes())?;
            report.corrupt.push(Corruption {
                segment: path,
                offset: 0,
                reason: e.to_string(),
                quarantine,
                records_kept_aside: 0,
                bytes_kept_aside: buf.bytes().len(),
            });
        }
        disk.delete(id, buf)?;
    }
    let journal = read_journal(&config, journal_found, disk, &mut report)?;
    let mut by_queue: BTreeMap<QueueId, Vec<Found>> = BTreeMap::new();
    for f in found {
        if !config.persistent || !f.info.persistent {
            report.discarded.push((
                disk.location(f.id),
                "overflow segment of a non-persistent queue",
            ));
            disk.delete(f.id, f.buf)?;
            continue;
        }
        by_queue.entry(f.info.queue).or_default().push(f);
    }
    // Queues are independent: scan them on several threads, so that reading and checking
    // the segments of one queue overlaps with another's (a cold start reads every byte).
    let mut work: Vec<(QueueId, Vec<Found>)> = by_queue.into_iter().collect();
    for (_, segs) in &mut work {
        segs.sort_by_key(|f| f.info.segment_seq);
    }
    let (journal_holds, journal_firsts) = (&journal.holds, &journal.firsts);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, RECOVERY_THREADS_MAX);
    let mut lanes: Vec<Vec<(QueueId, Vec<Found>)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, w) in work.into_iter().enumerate() {
        lanes[i % threads].push(w);
    }
    let results: Vec<Result<(Vec<RecoveredQueue>, RecoveryReport), RecoveryError>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = lanes
                .into_iter()
                .map(|lane| {
                    scope.spawn(move || {
                        let mut part = RecoveryReport::default();
                        let mut out = Vec::new();
                        for (queue, segs) in lane {
                            let holds = journal_holds.get(&queue).copied();
                            let first = journal_firsts.get(&queue).copied();
                            out.push(recover_queue(queue, segs, holds, first, disk, &mut part)?);
                        }
                        Ok((out, part))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
    let mut recovered = Vec::new();
    for r in results {
        let (queues, part) = r?;
        recovered.extend(queues);
        report.merge(part);
    }
    recovered.sort_by_key(|r| r.queue);
    let mut sq = SenderQueue::from_recovered(config, recovered, next_segment_id);
    replay_journal(&mut sq, journal, disk, &mut report)?;
    if !report.discarded.is_empty() || !report.corrupt.is_empty() {
        // The deletions recovery made are durable before anything new is written: a file it
        // deleted must not come back after another crash.
        disk.sync_directory()?;
    }
    let totals = sq.stats(0);
    report.events = totals.events_queued;
    report.bytes = totals.bytes_queued;
    Ok((sq, report))
}

/// The commit journal as recovery found it: its segments, oldest first, and their valid
/// entries in the order they were written.
struct FoundJournal {
    segments: Vec<(SegmentId, Box<dyn SegmentBuf>)>,
    /// (segment index, entry)
    entries: Vec<(usize, journal::Entry)>,
    /// Per queue, the last run of consecutive sequence numbers the journal holds: where its
    /// segments have a hole inside (or just after) that run, the journal fills it.
    holds: BTreeMap<QueueId, (Seq, Seq)>,
    /// Per queue, the lowest sequence number of its entries in the live journal (from the
    /// newest header's `first_seq` on). An event before it was made durable in its queue's
    /// segment by a checkpoint that freed the journal segments holding it; an event from it
    /// on was durable only through the journal, if at all.
    firsts: BTreeMap<QueueId, Seq>,
    next_segment_seq: u64,
}

/// Reads the journal's entries.
fn read_journal(
    config: &QueueConfig,
    mut found: Vec<Found>,
    disk: &dyn Disk,
    report: &mut RecoveryReport,
) -> Result<FoundJournal, RecoveryError> {
    found.sort_by_key(|f| f.info.segment_seq);
    let mut out = FoundJournal {
        segments: Vec::new(),
        entries: Vec::new(),
        holds: BTreeMap::new(),
        firsts: BTreeMap::new(),
        next_segment_seq: found.last().map_or(1, |f| f.info.segment_seq + 1),
    };
    report.journal_segments = found.len() as u64;
    if !config.persistent {
        for f in found {
            report
                .discarded
                .push((disk.location(f.id), "journal of a queue now not persistent"));
            disk.delete(f.id, f.buf)?;
        }
        return Ok(out);
    }
    // Every segment is read, in journal order. The newest one's header names the oldest
    // segment still needed when it was put to use (`first_seq`); older ones are stale: freed
    // by a checkpoint, their deletion undone by a power loss. Their entries are behind their
    // queues and skipped, and a torn tail in them means nothing. From the oldest needed one
    // on, nothing after a torn entry was ever confirmed durable: reading stops there.
    let live_from = found.last().map_or(0, |f| f.info.first_seq.0);
    let mut torn = false;
    for f in found {
        let scan = journal::scan(f.buf.bytes());
        let live = f.info.segment_seq >= live_from;
        let entries = if torn && live {
            Vec::new()
        } else {
            scan.entries
        };
        for e in entries {
            if e.queue.0 >= config.queue_count {
                return Err(RecoveryError::UnknownQueue {
                    path: disk.location(f.id),
                    queue: e.queue,
                    queue_count: config.queue_count,
                });
            }
            let seq = record::decode(&f.buf.bytes()[e.record_at..])
                .expect("the journal scan checked it")
                .seq();
            // The last run of consecutive sequence numbers of each queue.
            out.holds
                .entry(e.queue)
                .and_modify(|(from, upto)| {
                    if seq == upto.next() {
                        *upto = seq;
                    } else {
                        (*from, *upto) = (seq, seq);
                    }
                })
                .or_insert((seq, seq));
            if live {
                out.firsts
                    .entry(e.queue)
                    .and_modify(|first| *first = (*first).min(seq))
                    .or_insert(seq);
            }
            out.entries.push((out.segments.len(), e));
        }
        if let Some((offset, why)) = scan.torn {
            torn |= live;
            report.torn.push(TornTail {
                segment: disk.location(f.id),
                offset,
                bytes: f.buf.bytes()[offset..]
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |i| i + 1),
                error: BadRecord::Journal(why),
            });
        }
        out.segments.push((f.id, f.buf));
    }
    Ok(out)
}

/// Appends to the queues every journal entry their segments stop short of, makes the result
/// durable in the queues' own segments, deletes the old journal, and starts a new one.
fn replay_journal(
    sq: &mut SenderQueue,
    journal: FoundJournal,
    disk: &dyn Disk,
    report: &mut RecoveryReport,
) -> Result<(), RecoveryError> {
    let mut broken: BTreeSet<QueueId> = BTreeSet::new();
    for &(segment, e) in &journal.entries {
        let bytes = journal.segments[segment].1.bytes();
        let rec = record::decode(&bytes[e.record_at..]).expect("the journal scan checked it");
        let next = sq
            .next_seq(e.queue)
            .expect("entries name configured queues");
        if rec.seq() < next || broken.contains(&e.queue) {
            continue;
        }
        if rec.seq() > next {
            report.gaps.push(SeqGap {
                queue: e.queue,
                segment: disk.location(journal.segments[segment].0),
                expected: next,
                found: rec.seq(),
            });
            broken.insert(e.queue);
            continue;
        }
        let recipients: Vec<_> = rec.recipients().collect();
        let event = rec.event(&recipients);
        loop {
            match sq.append(e.queue, &event) {
                Ok(_) => break,
                Err(AppendError::WouldBlock) => {
                    if crate::mem::run_actions(sq, disk, 0) == 0 {
                        return Err(RecoveryError::Replay {
                            queue: e.queue,
                            error: AppendError::WouldBlock,
                        });
                    }
                }
                Err(error) => {
                    return Err(RecoveryError::Replay {
                        queue: e.queue,
                        error,
                    });
                }
            }
        }
        report.journal_events_replayed += 1;
    }
    if report.journal_events_replayed > 0 {
        // They may have been sent, even acknowledged, before the crash.
        sq.mark_all_possible_duplicates();
    }
    if !journal.segments.is_empty() {
        // Everything replayed goes to the queues' segments and is synced before the journal
        // that held it is deleted.
        while let Some(action) = sq.poll_close(0) {
            match action {
                Action::Sync {
                    token,
                    segments,
                    directory,
                    ..
                } => {
                    crate::mem::sync_now(sq, disk, &segments, directory)?;
                    sq.handle_synced(token, Ok(()), 0);
                }
                other => crate::mem::run_action(sq, disk, other, 0),
            }
        }
        for (id, buf) in journal.segments {
            report
                .discarded
                .push((disk.location(id), "journal segment, replayed"));
            disk.delete(id, buf)?;
        }
    }
    sq.start_journal(journal.next_segment_seq);
    Ok(())
}

fn recover_queue(
    queue: QueueId,
    segs: Vec<Found>,
    journal_holds: Option<(Seq, Seq)>,
    journal_first: Option<Seq>,
    disk: &dyn Disk,
    report: &mut RecoveryReport,
) -> Result<RecoveredQueue, RecoveryError> {
    report.queues += 1;
    let mut acked = segs
        .iter()
        .filter_map(|f| f.info.acked)
        .max()
        .unwrap_or(Seq(0));
    let mut expected: Option<Seq> = None;
    let mut next_seq = Seq(1);
    let mut out: Vec<RecoveredSegment> = Vec::new();
    let next_segment_seq = segs.last().map_or(1, |f| f.info.segment_seq + 1);
    // The journal holds this queue's events `from..=upto`, every one of them since the last
    // checkpoint that was confirmed durable, so the segments are trusted only as far as they
    // run whole: from a hole in that range (or just after it), recovery takes the events from
    // the journal instead.
    let covered = |x: Seq| journal_holds.is_some_and(|(from, upto)| from <= x && x <= upto.next());
    let mut segs = segs.into_iter();
    let discard_rest = |segs: &mut std::vec::IntoIter<Found>,
                        report: &mut RecoveryReport|
     -> Result<(), RecoveryError> {
        for f in segs {
            report.discarded.push((
                disk.location(f.id),
                "segment after a hole that the commit journal fills",
            ));
            disk.delete(f.id, f.buf)?;
        }
        Ok(())
    };
    while let Some(Found { id, mut buf, info }) = segs.next() {
        let path = disk.location(id);
        // Events missing before this segment that the journal holds: the first segment may
        // start after the acknowledged position (the segments before it lost), a later one
        // after a hole.
        let hole = match expected {
            None => acked.next(),
            Some(exp) => exp,
        };
        // A hole in acknowledged events is no hole: a sync need not write them back, and
        // nothing needs them (found by review: cutting there deleted later segments holding
        // an event a segment sync, not the journal, had made durable).
        if hole < info.first_seq && hole > acked && covered(hole) {
            next_seq = next_seq.max(hole);
            report
                .discarded
                .push((path, "segment after a hole that the commit journal fills"));
            disk.delete(id, buf)?;
            discard_rest(&mut segs, report)?;
            break;
        }
        match expected {
            // The first segment: whatever came before it was acknowledged and deleted.
            None => acked = acked.max(Seq(info.first_seq.0 - 1)),
            Some(exp) if info.first_seq > exp => {
                report.gaps.push(SeqGap {
                    queue,
                    segment: path.clone(),
                    expected: exp,
                    found: info.first_seq,
                });
            }
            Some(exp) if info.first_seq < exp => {
                let quarantine = disk.quarantine(&format!("{:016x}.seg", id.0), buf.bytes())?;
                report.corrupt.push(Corruption {
                    segment: path,
                    offset: 0,
                    reason: format!("segment starts at sequence {} but {} was expected: it overlaps an earlier one", info.first_seq, exp),
                    quarantine,
                    records_kept_aside: 0,
                    bytes_kept_aside: buf.bytes().len(),
                });
                disk.delete(id, buf)?;
                continue;
            }
            Some(_) => {}
        }
        // From the ack slot's offset: the records before it are acknowledged, and a sync may
        // never have written them back.
        let (start, start_seq) = segment::scan_start(&info, buf.bytes().len());
        let scan = segment::scan(buf.bytes(), start, start_seq);
        let mut seg_next = scan.last_seq.map_or(start_seq, Seq::next);
        let mut sealed = false;
        let mut cut = false;
        match scan.tail {
            Tail::Clean => {}
            // A bad record among acknowledged ones with only acknowledged records after it:
            // pages of acknowledged records need not have been written back (a fully
            // acknowledged segment waiting to be deleted is synced no more). Nothing in it is
            // needed, and the segments after it stand.
            Tail::Corrupt { last_seq_after, .. }
                if seg_next <= acked && last_seq_after.is_none_or(|last| last <= acked) =>
            {
                sealed = true;
                seg_next = seg_next.max(last_seq_after.map_or(seg_next, Seq::next));
            }
            Tail::Corrupt {
                offset,
                quarantine_end,
                error,
                ..
            } if seg_next > acked
                && (covered(seg_next) || journal_first.is_some_and(|first| seg_next >= first)) =>
            {
                // Pages written back out of order before a power loss: the journal holds
                // the rest, so this is a torn tail, not damage. Or the hole is at an event
                // the journal would hold had its commit completed (the live journal holds
                // this queue's events from `journal_first` on, and every later one that was
                // committed): its entry was lost with the journal's torn tail, and no commit
                // covered it or anything after it in this segment. Either way, no sync of
                // this segment completed after the hole was written, so a hole here cannot
                // be in data a checkpoint made durable.
                buf.bytes_mut()[offset..].fill(0);
                report.torn.push(TornTail {
                    segment: path.clone(),
                    offset,
                    bytes: quarantine_end - offset,
                    error,
                });
                cut = true;
            }
            Tail::Torn {
                offset,
                garbage_end,
                error,
            } => {
                buf.bytes_mut()[offset..garbage_end].fill(0);
                report.torn.push(TornTail {
                    segment: path.clone(),
                    offset,
                    bytes: garbage_end - offset,
                    error,
                });
            }
            Tail::Corrupt {
                offset,
                quarantine_end,
                error,
                records_after,
                last_seq_after,
            } => {
                let name = format!("{:016x}-{offset:010}.quarantine", id.0);
                let quarantine = disk.quarantine(&name, &buf.bytes()[offset..quarantine_end])?;
                report.corrupt.push(Corruption {
                    segment: path.clone(),
                    offset,
                    reason: error.to_string(),
                    quarantine,
                    records_kept_aside: records_after,
                    bytes_kept_aside: quarantine_end - offset,
                });
                sealed = true;
                if let Some(s) = last_seq_after {
                    next_seq = next_seq.max(s.next());
                }
                // Later segments continue after the records kept aside.
                seg_next = seg_next.max(last_seq_after.map_or(seg_next, Seq::next));
            }
        }
        report.segments += 1;
        next_seq = next_seq.max(seg_next);
        expected = Some(seg_next);
        if let Some(prev) = out.last_mut() {
            prev.sealed = true;
        }
        out.push(RecoveredSegment {
            id,
            buf,
            start: start as u32,
            end: scan.end as u32,
            next_seq: scan.last_seq.map_or(start_seq, Seq::next),
            live_records: scan.live_records,
            live_bytes: scan.live_bytes,
            sealed,
        });
        if cut {
            discard_rest(&mut segs, report)?;
            break;
        }
    }
    next_seq = next_seq.max(acked.next());
    // Acknowledged past its last record (an acknowledgement made durable, the records after
    // it not): appends continue in a new segment, at the next unacknowledged number.
    if let Some(last) = out.last_mut()
        && last.next_seq < next_seq
    {
        last.sealed = true;
    }
    // Drop segments that hold only acknowledged events, keeping the last one: its header
    // carries the queue's position.
    while out.len() > 1 && out[0].next_seq.0 <= acked.0 + 1 {
        let s = out.remove(0);
        report
            .discarded
            .push((disk.location(s.id), "fully acknowledged segment"));
        disk.delete(s.id, s.buf)?;
    }
    Ok(RecoveredQueue {
        queue,
        segments: out,
        acked,
        next_seq,
        next_segment_seq,
    })
}
