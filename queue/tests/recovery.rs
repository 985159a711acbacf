//! Reopening persistent queues: clean restarts, torn tails, corruption in the middle, a missing
//! segment, a segment from a newer format, power loss under each sync policy.

mod common;
use common::*;
use strait_queue::ids::*;
use strait_queue::mem::{Crash, MemDisk, SplitMix, run_actions};
use strait_queue::queue::{AppendError, QueueConfig, SenderQueue, SyncPolicy};
use strait_queue::record::Op;
use strait_queue::segment::{self, SEGMENT_HEADER_BYTES};
use strait_queue::store::{RecoveryError, recover};

const Q: QueueId = QueueId(1);

fn cfg(sync: SyncPolicy) -> QueueConfig {
    QueueConfig {
        queue_count: 3,
        memory_bytes_max: 1 << 20,
        persistent: true,
        disk_synchronous: true,
        sync,
        conflation: false,
        segment_bytes: 64 << 10,
        spare_segments: 1,
        journal_recycle_segments: 8,
    }
}

/// Appends event `i` (value `len` bytes) to queue `Q`, running file actions while the queue
/// waits for a segment.
fn append_waiting(q: &mut SenderQueue, disk: &MemDisk, i: u64, len: usize) {
    loop {
        match append_n(q, Q, i, len) {
            Ok(_) => return,
            Err(AppendError::WouldBlock) => {
                run_actions(q, disk, 0);
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A persistent queue holding events 0..n (value `len` bytes), crashed as a process would.
fn crashed_queue(n: u64, len: usize) -> (MemDisk, QueueConfig) {
    let c = cfg(SyncPolicy::EveryBatch);
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(c.clone());
    for i in 0..n {
        append_waiting(&mut q, &disk, i, len);
    }
    run_actions(&mut q, &disk, 0);
    disk.crash(q, Crash::Process);
    (disk, c)
}

/// The segments of queue `Q` in chain order, with their info.
fn chain(disk: &MemDisk) -> Vec<(SegmentId, segment::SegmentInfo)> {
    let mut v: Vec<_> = disk
        .ids()
        .into_iter()
        .filter_map(|id| {
            let info = disk
                .with_segment(id, |b| segment::read_header(b).ok())
                .flatten()?;
            (info.queue == Q).then_some((id, info))
        })
        .collect();
    v.sort_by_key(|(_, i)| i.segment_seq);
    v
}

/// Offset just past the records of a segment.
fn end_of_records(disk: &MemDisk, id: SegmentId) -> usize {
    disk.with_segment(id, |b| {
        let info = segment::read_header(b).unwrap();
        segment::scan(b, SEGMENT_HEADER_BYTES, info.first_seq).end
    })
    .unwrap()
}

#[test]
fn clean_reopen_restores_every_unacked_event_in_order() {
    let (disk, c) = crashed_queue(500, 300);
    let (mut q, report) = recover(c.clone(), &disk).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events, 500);
    let b = q.peek(Q, 200, 1 << 30).unwrap().unwrap();
    assert!(
        b.possible_duplicate,
        "events recovered after a restart may have been sent"
    );
    q.ack(Q, b.last_seq).unwrap();
    run_actions(&mut q, &disk, 0);
    disk.crash(q, Crash::Process);
    let (mut q, _) = recover(c, &disk).unwrap();
    assert_eq!(drain_numbers(&mut q, Q), (200..500).collect::<Vec<_>>());
    // Sequence numbers continue after a restart.
    assert_eq!(append_n(&mut q, Q, 999, 10).unwrap(), Seq(501));
}

#[test]
fn torn_tail_is_cut_off_and_reported() {
    let (disk, c) = crashed_queue(100, 300);
    let (last, _) = *chain(&disk).last().unwrap();
    let end = end_of_records(&disk, last);
    // Half a record written, as a crash in the middle of a write leaves it.
    let (k, v) = event_parts(100, 300);
    let mut rec = vec![0u8; 400];
    let len =
        strait_queue::record::encode_into(&mut rec, &event(Op::Create, 100, &k, &v), Seq(101));
    disk.with_segment(last, |b| {
        b[end..end + len / 2].copy_from_slice(&rec[..len / 2])
    });
    let (mut q, report) = recover(c.clone(), &disk).unwrap();
    assert_eq!(report.torn.len(), 1, "{report:?}");
    assert_eq!(report.torn[0].offset, end);
    assert!(report.corrupt.is_empty() && report.gaps.is_empty());
    assert_eq!(drain_numbers(&mut q, Q), (0..100).collect::<Vec<_>>());
    // New appends go where the torn record was, and the next reopen is clean.
    append_n(&mut q, Q, 100, 300).unwrap();
    run_actions(&mut q, &disk, 0);
    disk.crash(q, Crash::Process);
    let (mut q, report) = recover(c, &disk).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(drain_numbers(&mut q, Q), (0..101).collect::<Vec<_>>());
}

#[test]
fn zero_filled_tail_is_a_clean_end() {
    let (disk, c) = crashed_queue(10, 100);
    let (_, report) = recover(c, &disk).unwrap();
    assert!(report.is_clean() && report.torn.is_empty(), "{report:?}");
}

#[test]
fn corruption_in_the_middle_is_reported_and_kept_aside() {
    let (disk, c) = crashed_queue(600, 300);
    let segs = chain(&disk);
    assert!(segs.len() >= 3);
    let (victim, info) = segs[1];
    // Flip a byte inside the 10th record of the second segment.
    let record_len = 50 + 2 + 7 + 300; // header, recipients, "key-NNN", value
    let offset = SEGMENT_HEADER_BYTES + 9 * record_len;
    disk.with_segment(victim, |b| b[offset + 70] ^= 0x40);
    let (mut q, report) = recover(c, &disk).unwrap();
    assert_eq!(report.corrupt.len(), 1, "{report:?}");
    let bad = &report.corrupt[0];
    assert!(
        bad.segment.contains(&format!("{:016x}", victim.0)),
        "names the file: {bad:?}"
    );
    assert_eq!(bad.offset, offset, "names the offset");
    assert!(bad.reason.contains("CRC"), "{bad:?}");
    assert!(bad.records_kept_aside > 0);
    // Everything from the damaged record to the end of that segment is in the quarantine file.
    let quarantined = disk.quarantined();
    let kept = quarantined.values().next().unwrap();
    assert_eq!(kept.len(), bad.bytes_kept_aside);
    let mut found = 0;
    let mut at = 0;
    while at < kept.len() {
        match strait_queue::record::decode(&kept[at..]) {
            Ok(r) => {
                found += 1;
                at += r.len();
            }
            Err(_) => at += 1,
        }
    }
    assert_eq!(found, bad.records_kept_aside);
    // The queue holds the records before the damage and every later segment, in order.
    let first_lost = info.first_seq.0 - 1 + 9; // event numbers are seq - 1
    let got = drain_numbers(&mut q, Q);
    let lost = first_lost..first_lost + 1 + bad.records_kept_aside;
    let want: Vec<u64> = (0..600).filter(|n| !lost.contains(n)).collect();
    assert_eq!(got, want);
    assert!(
        report.gaps.is_empty(),
        "the damaged records are accounted for: {report:?}"
    );
}

#[test]
fn truncated_segment_loses_only_its_tail() {
    let (disk, c) = crashed_queue(300, 300);
    let (id, info) = chain(&disk)[0];
    let end = end_of_records(&disk, id);
    disk.with_segment(id, |b| b.truncate(end - 100));
    let (mut q, report) = recover(c, &disk).unwrap();
    assert_eq!(report.torn.len(), 1, "{report:?}");
    assert_eq!(
        report.gaps.len(),
        1,
        "the next segment starts after the lost record: {report:?}"
    );
    // The records left whole in the truncated segment, then the lost one.
    let kept = disk
        .with_segment(id, |b| {
            segment::scan(b, SEGMENT_HEADER_BYTES, info.first_seq).records
        })
        .unwrap();
    let lost = info.first_seq.0 - 1 + kept;
    let got = drain_numbers(&mut q, Q);
    assert_eq!(got, (0..300).filter(|&n| n != lost).collect::<Vec<_>>());
}

#[test]
fn missing_segment_is_reported_as_a_gap() {
    let (disk, c) = crashed_queue(600, 300);
    let segs = chain(&disk);
    let (gone, info) = segs[1];
    let next = segs[2].1.first_seq;
    disk.remove(gone);
    let (mut q, report) = recover(c, &disk).unwrap();
    assert_eq!(report.gaps.len(), 1, "{report:?}");
    assert_eq!(report.gaps[0].expected, info.first_seq);
    assert_eq!(report.gaps[0].found, next);
    let missing = (info.first_seq.0 - 1)..(next.0 - 1);
    assert_eq!(
        drain_numbers(&mut q, Q),
        (0..600)
            .filter(|n| !missing.contains(n))
            .collect::<Vec<_>>()
    );
}

#[test]
fn segment_from_a_newer_format_is_refused_untouched() {
    let (disk, c) = crashed_queue(50, 100);
    let (id, _) = chain(&disk)[0];
    let before = disk.with_segment(id, |b| {
        b[8] = 4; // version 4
        let crc = crc32fast::hash(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b.clone()
    });
    let err = recover(c, &disk).unwrap_err();
    assert!(
        matches!(err, RecoveryError::NewerFormat { version: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade"), "{err}");
    assert_eq!(
        disk.with_segment(id, |b| b.clone()),
        before,
        "nothing changed"
    );
}

#[test]
fn damaged_segment_header_is_kept_aside_whole() {
    let (disk, c) = crashed_queue(600, 300);
    let (id, _) = chain(&disk)[2];
    disk.with_segment(id, |b| b[20] ^= 1);
    let (_, report) = recover(c, &disk).unwrap();
    assert_eq!(report.corrupt.len(), 1);
    assert!(
        report.corrupt[0].reason.contains("header CRC"),
        "{report:?}"
    );
    assert!(!disk.ids().contains(&id));
    assert_eq!(disk.quarantined().len(), 1);
}

#[test]
fn segment_of_an_unknown_queue_is_refused() {
    let (disk, c) = crashed_queue(10, 100);
    let err = recover(
        QueueConfig {
            queue_count: 1,
            ..c
        },
        &disk,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            RecoveryError::UnknownQueue {
                queue: Q,
                queue_count: 1,
                ..
            }
        ),
        "{err}"
    );
}

/// Power loss at random moments under each sync policy: everything synced survives, what
/// survives comes in order with nothing else and no duplicate, and any unsynced event lost
/// before a surviving one is reported.
#[test]
fn power_loss_keeps_every_synced_event() {
    for policy in [
        SyncPolicy::EveryBatch,
        SyncPolicy::IntervalMs(5),
        SyncPolicy::Never,
    ] {
        for seed in 0..40u64 {
            let c = cfg(policy);
            let disk = MemDisk::new();
            let mut q = SenderQueue::new(c.clone());
            let mut rng = SplitMix(seed);
            let mut appended: Vec<(Seq, u64)> = Vec::new();
            let steps = 50 + rng.next_u64() % 400;
            for t in 0..steps {
                let n = appended.len() as u64;
                match append_n(&mut q, Q, n, (rng.next_u64() % 900) as usize) {
                    Ok(seq) => appended.push((seq, n)),
                    Err(AppendError::WouldBlock) => {}
                    Err(e) => panic!("{e}"),
                }
                if rng.next_u64().is_multiple_of(4) {
                    run_actions(&mut q, &disk, t);
                }
            }
            let durable: Vec<u64> = appended
                .iter()
                .filter(|(s, _)| q.durability(Q, *s) == strait_queue::queue::Durability::Done)
                .map(|(_, n)| *n)
                .collect();
            let synced_upto = if policy == SyncPolicy::EveryBatch {
                durable.len()
            } else {
                0
            };
            disk.crash(q, Crash::PowerLoss { seed });
            let (mut q, report) =
                recover(c.clone(), &disk).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let got = drain_numbers(&mut q, Q);
            let all: Vec<u64> = appended.iter().map(|(_, n)| *n).collect();
            assert!(
                got.len() >= synced_upto,
                "{policy:?} seed {seed}: lost synced events ({} < {synced_upto}) {report:?}",
                got.len()
            );
            assert_eq!(
                got[..synced_upto],
                all[..synced_upto],
                "{policy:?} seed {seed}: synced prefix"
            );
            let mut rest = all.iter();
            assert!(
                got.iter().all(|g| rest.any(|a| a == g)),
                "{policy:?} seed {seed}: in order, nothing else: {got:?}"
            );
            if got != all[..got.len()] {
                assert!(
                    !report.is_clean(),
                    "{policy:?} seed {seed}: lost events must be reported"
                );
            }
        }
    }
}

/// Power loss at random moments while the remote site acknowledges events. A sync writes
/// back a segment's header and its bytes from the ack slot's offset on, never the
/// acknowledged records before it, so after the power loss those pages hold whatever the
/// disk had: recovery starts at the offset. Every synced unacknowledged event comes back, in
/// order, after at most some acknowledged ones.
#[test]
fn power_loss_after_acknowledgements_keeps_every_synced_unacknowledged_event() {
    use std::collections::VecDeque;
    use strait_queue::queue::Durability;
    // Pages of acknowledged records that a sync left unwritten, and that the power loss then
    // left stale: without them, this test would not be testing anything.
    let mut stale_pages = 0u64;
    for policy in [SyncPolicy::EveryBatch, SyncPolicy::IntervalMs(5)] {
        for seed in 0..40u64 {
            let c = cfg(policy);
            let disk = MemDisk::new();
            let mut q = SenderQueue::new(c.clone());
            let mut rng = SplitMix(seed);
            let mut pending: VecDeque<(Seq, u64)> = VecDeque::new();
            let mut acked: Vec<u64> = Vec::new();
            let mut n = 0u64;
            let steps = 200 + rng.below(800) as u64;
            for t in 0..steps {
                match rng.below(8) {
                    0..=4 => match append_n(&mut q, Q, n, rng.below(900)) {
                        Ok(seq) => {
                            pending.push_back((seq, n));
                            n += 1;
                        }
                        Err(AppendError::WouldBlock) => {}
                        Err(e) => panic!("{e}"),
                    },
                    5 => {
                        let events = 1 + rng.below(40) as u32;
                        if let Some(b) = q.peek(Q, events, 1 << 20).expect("peek") {
                            q.ack(Q, b.last_seq).expect("ack");
                            while pending.front().is_some_and(|(s, _)| *s <= b.last_seq) {
                                acked.push(pending.pop_front().expect("front").1);
                            }
                        }
                    }
                    _ => {
                        run_actions(&mut q, &disk, t * 2);
                    }
                }
            }
            // Under `interval` every append is reported done at once: only `every-batch`
            // says which events a sync covered.
            let durable = if policy == SyncPolicy::EveryBatch {
                pending
                    .iter()
                    .take_while(|(s, _)| q.durability(Q, *s) == Durability::Done)
                    .count()
            } else {
                0
            };
            // Each segment's bytes as the process last saw them.
            let before: Vec<(SegmentId, Vec<u8>)> = disk
                .ids()
                .into_iter()
                .filter_map(|id| q.segment_bytes(id).map(|b| (id, b.to_vec())))
                .collect();
            disk.crash(q, Crash::PowerLoss { seed });
            for (id, now) in &before {
                let Some(after) = disk.with_segment(*id, |b| b.clone()) else {
                    continue;
                };
                let offset = segment::read_header(now)
                    .ok()
                    .and_then(|i| i.ack_offset)
                    .unwrap_or(0) as usize;
                stale_pages += (4096..offset.min(after.len()))
                    .step_by(4096)
                    .filter(|&p| after[p..(p + 4096).min(offset)] != now[p..(p + 4096).min(offset)])
                    .count() as u64;
            }
            // (Unsynced pages written back out of order can still look like damage past the
            // synced records, as in `power_loss_keeps_every_synced_event`.)
            let (mut back, report) =
                recover(c.clone(), &disk).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            let got = drain_numbers(&mut back, Q);
            let start = got
                .iter()
                .position(|e| !acked.contains(e))
                .unwrap_or(got.len());
            let unacked: Vec<u64> = pending.iter().map(|(_, e)| *e).collect();
            assert!(
                got[start..].len() >= durable,
                "{policy:?} seed {seed}: lost synced events ({} < {durable}) {report:?}",
                got.len() - start
            );
            assert_eq!(
                got[start..start + durable],
                unacked[..durable],
                "{policy:?} seed {seed}: every synced unacknowledged event, in order"
            );
            // After them, unsynced events in order, nothing else; a lost one before a
            // surviving one is reported (as in `power_loss_keeps_every_synced_event`).
            let mut rest = unacked.iter();
            assert!(
                got[start..].iter().all(|g| rest.any(|a| a == g)),
                "{policy:?} seed {seed}: in order, nothing else: {got:?}"
            );
            if got[start..] != unacked[..got.len() - start] {
                assert!(
                    !report.is_clean(),
                    "{policy:?} seed {seed}: lost events must be reported"
                );
            }
        }
    }
    assert!(
        stale_pages >= 50,
        "{stale_pages} stale pages of acknowledged records"
    );
}

#[test]
fn reading_a_recovered_backlog_prefetches_its_segments_off_the_shard() {
    use strait_queue::queue::Action;
    let (disk, c) = crashed_queue(600, 300);
    let (mut q, _) = recover(c, &disk).unwrap();
    let chain: Vec<SegmentId> = chain(&disk).into_iter().map(|(id, _)| id).collect();
    q.peek(Q, 10, 1 << 20).unwrap().unwrap();
    let mut asked = Vec::new();
    while let Some(action) = q.poll_action(0) {
        if let Action::PrefetchSegment { id } = action {
            asked.push(id);
        }
    }
    asked.sort();
    assert_eq!(
        asked,
        chain[..2].to_vec(),
        "the segment being read and the next one"
    );
}

#[test]
fn segments_of_another_size_reopen_and_the_queue_continues_at_the_new_size() {
    // Written with 256 KiB segments (as a build before `segment_bytes_for` wrote 4 MiB ones
    // for a parallel sender), reopened with 64 KiB: every event comes back in order, appends
    // go on after them, and only new segments take the new size.
    let big = QueueConfig {
        segment_bytes: 256 << 10,
        ..cfg(SyncPolicy::EveryBatch)
    };
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(big.clone());
    for i in 0..600 {
        append_waiting(&mut q, &disk, i, 1000);
    }
    run_actions(&mut q, &disk, 0);
    disk.crash(q, Crash::Process);
    let old: Vec<SegmentId> = chain(&disk).into_iter().map(|(id, _)| id).collect();
    assert!(old.len() >= 2, "{old:?}");

    let small = cfg(SyncPolicy::EveryBatch);
    let (mut q, report) = recover(small.clone(), &disk).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events, 600);
    for i in 600..800 {
        append_waiting(&mut q, &disk, i, 1000);
    }
    run_actions(&mut q, &disk, 0);
    let sizes: Vec<(bool, usize)> = chain(&disk)
        .into_iter()
        .map(|(id, _)| {
            let len = disk.with_segment(id, |b| b.len()).unwrap();
            (old.contains(&id), len)
        })
        .collect();
    assert!(
        sizes
            .iter()
            .all(|&(was_old, len)| len == if was_old { 256 << 10 } else { 64 << 10 }),
        "{sizes:?}"
    );
    assert!(sizes.iter().any(|&(was_old, _)| !was_old), "{sizes:?}");
    assert_eq!(drain_numbers(&mut q, Q), (0..800).collect::<Vec<_>>());
}
