//! Recycled segments: a queue in steady state turns its acknowledged segment files into
//! spares instead of deleting them and creating new ones, and no stale record of a recycled
//! file is ever read back, after a clean stop or a crash part way through recycling.

mod common;
use common::*;
use strait_queue::ids::*;
use strait_queue::mem::{Crash, MemDisk, run_action};
use strait_queue::mmap::MmapDisk;
use strait_queue::queue::{Action, AppendError, QueueConfig, SenderQueue, SyncPolicy};
use strait_queue::segment::{self, SEGMENT_HEADER_BYTES};
use strait_queue::store::{Disk, recover};

fn cfg() -> QueueConfig {
    QueueConfig {
        queue_count: 2,
        memory_bytes_max: 1 << 20,
        persistent: true,
        disk_synchronous: true,
        sync: SyncPolicy::EveryBatch,
        conflation: false,
        segment_bytes: 64 << 10,
        spare_segments: 2,
    }
}

/// File work counted by kind.
#[derive(Debug, Default)]
struct Counts {
    created: u32,
    deleted: u32,
    /// (old, new) segment ids of every recycle.
    recycled: Vec<(SegmentId, SegmentId)>,
}

/// Runs every action the queue has, counting them.
fn run_all(q: &mut SenderQueue, disk: &dyn Disk, counts: &mut Counts) {
    while let Some(action) = q.poll_action(0) {
        match &action {
            Action::CreateSegment { .. } => counts.created += 1,
            Action::DeleteSegment { .. } => counts.deleted += 1,
            Action::RecycleSegment { old, id, .. } => counts.recycled.push((*old, *id)),
            _ => {}
        }
        run_action(q, disk, action, 0);
    }
}

/// Appends events `from..to` (values of `len` bytes) to queue `queue`.
fn append_range(
    q: &mut SenderQueue,
    disk: &dyn Disk,
    queue: QueueId,
    from: u64,
    to: u64,
    len: usize,
    counts: &mut Counts,
) {
    for n in from..to {
        loop {
            match append_n(q, queue, n, len) {
                Ok(_) => break,
                Err(AppendError::WouldBlock) => run_all(q, disk, counts),
                Err(e) => panic!("append {n}: {e}"),
            }
        }
    }
    run_all(q, disk, counts);
}

/// Peeks and acknowledges everything queue `queue` holds.
fn ack_all(q: &mut SenderQueue, queue: QueueId) {
    while let Some(b) = q.peek(queue, 1000, 1 << 30).unwrap() {
        q.ack(queue, b.last_seq).unwrap();
    }
}

#[test]
fn a_queue_in_steady_state_recycles_its_segments_and_creates_none() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(cfg());
    let mut warmup = Counts::default();
    let mut steady = Counts::default();
    // A sender's pace: appends, with everything sent acknowledged every 50 events. About 84
    // records of 700 bytes fill a 64 KiB segment.
    for chunk in 0..80u64 {
        let counts = if chunk < 20 { &mut warmup } else { &mut steady };
        append_range(
            &mut q,
            &disk,
            QueueId(0),
            chunk * 50,
            chunk * 50 + 50,
            700,
            counts,
        );
        ack_all(&mut q, QueueId(0));
        run_all(&mut q, &disk, counts);
    }
    assert!(warmup.created > 0, "{warmup:?}");
    assert_eq!(steady.created, 0, "{steady:?}");
    // 3000 events of about 776 record bytes: about 35 segments went through.
    assert!(steady.recycled.len() >= 30, "{steady:?}");
    // The files on the disk stay few: the spares and the queue's last segment.
    assert!(disk.ids().len() <= 10, "{:?}", disk.ids());
    // What is still queued comes back after a crash, and nothing else.
    append_range(&mut q, &disk, QueueId(1), 0, 50, 300, &mut steady);
    disk.crash(q, Crash::Process);
    let (mut q, report) = recover(cfg(), &disk).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(drain_numbers(&mut q, QueueId(0)), Vec::<u64>::new());
    assert_eq!(
        drain_numbers(&mut q, QueueId(1)),
        (0..50).collect::<Vec<_>>()
    );
}

#[test]
fn a_recycled_file_keeps_none_of_its_old_records() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = MmapDisk::open(tmp.path()).unwrap();
    let mut q = SenderQueue::new(cfg());
    let mut counts = Counts::default();
    // Queue 0 fills several segments with 700-byte values, all acknowledged.
    append_range(&mut q, &disk, QueueId(0), 0, 600, 700, &mut counts);
    ack_all(&mut q, QueueId(0));
    run_all(&mut q, &disk, &mut counts);
    assert!(!counts.recycled.is_empty(), "{counts:?}");
    // Every recycled file is all zeros under its new name; the old name is gone.
    for (old, new) in &counts.recycled {
        assert!(!std::path::Path::new(&disk.location(*old)).exists());
        let bytes = std::fs::read(disk.location(*new)).unwrap();
        assert_eq!(bytes.len(), 64 << 10);
        assert!(
            bytes.iter().all(|&b| b == 0),
            "segment {new:?} is not blank"
        );
    }
    // Queue 1 writes records of another size into the spares, recycled ones among them, and
    // the process dies without closing.
    append_range(&mut q, &disk, QueueId(1), 1000, 1250, 300, &mut counts);
    let reused = counts.recycled.iter().any(|(_, new)| {
        std::fs::read(disk.location(*new))
            .ok()
            .and_then(|b| segment::read_header(&b).ok())
            .is_some_and(|info| info.queue == QueueId(1))
    });
    assert!(reused, "queue 1 wrote into no recycled segment: {counts:?}");
    drop(q);
    drop(disk);
    let disk = MmapDisk::open(tmp.path()).unwrap();
    let (mut q, report) = recover(cfg(), &disk).unwrap();
    // No stale record after any segment's last record: no torn tail, no corruption.
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events, 250);
    assert_eq!(drain_numbers(&mut q, QueueId(0)), Vec::<u64>::new());
    assert_eq!(
        drain_numbers(&mut q, QueueId(1)),
        (1000..1250).collect::<Vec<_>>()
    );
}

#[test]
fn a_crash_while_recycling_leaves_a_file_that_recovery_discards_unread() {
    // Queue 0: an acknowledged segment full of valid records, then the tail. A crash caught
    // the first one being recycled: its header is the recycling marker, its records intact.
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(cfg());
    let mut counts = Counts::default();
    append_range(&mut q, &disk, QueueId(0), 0, 200, 700, &mut counts);
    // The first segment holds about 84 of these records: acknowledging 100 frees it whole.
    let b = q.peek(QueueId(0), 100, 1 << 30).unwrap().unwrap();
    q.ack(QueueId(0), b.last_seq).unwrap();
    // The acknowledgement is synced, but the file work after it never ran.
    while let Some(action) = q.poll_action(0) {
        match action {
            Action::Sync { .. } => run_action(&mut q, &disk, action, 0),
            Action::RecycleSegment { old, buf, .. } | Action::DeleteSegment { id: old, buf } => {
                let stale = buf.bytes().to_vec();
                drop(buf);
                disk.with_segment(old, |b| {
                    *b = stale;
                    b[..SEGMENT_HEADER_BYTES].copy_from_slice(&segment::recycling_marker());
                });
            }
            other => run_action(&mut q, &disk, other, 0),
        }
    }
    let marked: Vec<SegmentId> = disk
        .ids()
        .into_iter()
        .filter(|id| {
            disk.with_segment(*id, |b| {
                segment::read_header(b) == Err(segment::HeaderError::Recycling)
            })
            .unwrap()
        })
        .collect();
    assert!(!marked.is_empty());
    disk.crash(q, Crash::Process);
    let (mut q, report) = recover(cfg(), &disk).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(disk.quarantined().is_empty());
    for id in &marked {
        assert!(
            report
                .discarded
                .contains(&(disk.location(*id), "segment being recycled")),
            "{report:?}"
        );
        assert!(!disk.ids().contains(id));
    }
    // The marked segment's records were acknowledged; only the rest comes back.
    let got = drain_numbers(&mut q, QueueId(0));
    assert_eq!(got.first(), Some(&(b.last_seq.0)));
    assert_eq!(got.last(), Some(&199));
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
}
