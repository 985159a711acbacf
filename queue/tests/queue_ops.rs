//! One test per queue operation and failure: conflation, reset, ack limits, the memory
//! budget, a full disk, failed syncs, statistics.

mod common;
use common::*;
use strait_queue::ids::*;
use strait_queue::mem::{MemDisk, run_actions};
use strait_queue::queue::{
    AckError, AppendError, Durability, QueueConfig, RETRY_MS, SenderQueue, SyncPolicy,
};
use strait_queue::record::{Op, VALUE_BYTES_MAX};

const Q: QueueId = QueueId(0);

fn cfg(persistent: bool) -> QueueConfig {
    QueueConfig {
        queue_count: 2,
        memory_bytes_max: 256 << 10,
        persistent,
        disk_synchronous: true,
        sync: SyncPolicy::EveryBatch,
        conflation: false,
        segment_bytes: 64 << 10,
        spare_segments: 2,
        journal_recycle_segments: 8,
    }
}

/// Appends, running file actions whenever the queue waits for a segment.
fn append(
    q: &mut SenderQueue,
    disk: &MemDisk,
    op: Op,
    n: u64,
    key: &[u8],
    len: usize,
) -> Result<Seq, AppendError> {
    let (_, v) = event_parts(n, len);
    loop {
        match q.append(Q, &event(op, n, key, &v)) {
            Err(AppendError::WouldBlock) => assert!(run_actions(q, disk, 0) > 0),
            r => return r,
        }
    }
}

#[test]
fn conflation_replaces_unpeeked_updates_only() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(QueueConfig {
        conflation: true,
        ..cfg(false)
    });
    append(&mut q, &disk, Op::Create, 1, b"a", 10).unwrap();
    append(&mut q, &disk, Op::Update, 2, b"a", 10).unwrap();
    append(&mut q, &disk, Op::Update, 3, b"a", 10).unwrap(); // replaces 2
    append(&mut q, &disk, Op::Update, 4, b"b", 10).unwrap();
    append(&mut q, &disk, Op::Destroy, 5, b"b", 0).unwrap();
    append(&mut q, &disk, Op::Update, 6, b"b", 10).unwrap(); // a destroy came between: no conflation
    append(&mut q, &disk, Op::Create, 7, b"c", 10).unwrap();
    append(&mut q, &disk, Op::Create, 8, b"c", 10).unwrap(); // creates are never conflated
    assert_eq!(q.stats(0).conflated, 1);
    assert_eq!(q.stats(0).events_queued, 7);
    let b = q.peek(Q, 3, 1 << 20).unwrap().unwrap();
    assert_eq!(batch_numbers(&q, &b), vec![1, 3, 4]);
    // 3 is peeked (in flight): a new update of "a" does not replace it.
    append(&mut q, &disk, Op::Update, 9, b"a", 10).unwrap();
    assert_eq!(q.stats(0).conflated, 1);
    assert_eq!(drain_numbers(&mut q, Q), vec![5, 6, 7, 8, 9]);
}

#[test]
fn the_conflation_index_stays_within_the_memory_budget() {
    // A persistent queue keeps no records in memory: its budget is the conflation index's.
    let disk = MemDisk::new();
    let budget = 4 * strait_queue::queue::CONFLATION_ENTRY_BYTES;
    let mut q = SenderQueue::new(QueueConfig {
        conflation: true,
        memory_bytes_max: budget,
        ..cfg(true)
    });
    let keys: Vec<Vec<u8>> = (0..10).map(|k| format!("k{k}").into_bytes()).collect();
    for (n, key) in keys.iter().enumerate() {
        append(&mut q, &disk, Op::Update, n as u64 + 1, key, 10).unwrap();
        assert!(q.stats(0).memory_bytes <= budget, "{:?}", q.stats(0));
    }
    // Keys the index holds still conflate; the others are simply queued.
    append(&mut q, &disk, Op::Update, 11, &keys[0], 10).unwrap();
    append(&mut q, &disk, Op::Update, 12, &keys[9], 10).unwrap();
    assert_eq!(q.stats(0).conflated, 1);
    assert_eq!(q.stats(0).memory_bytes, budget);
    let all: Vec<u64> = (2..=10).chain([11, 12]).collect();
    assert_eq!(drain_numbers(&mut q, Q), all);
}

#[test]
fn reset_resends_unacked_events_marked_possible_duplicate() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(cfg(false));
    for n in 1..=10 {
        append(&mut q, &disk, Op::Create, n, b"k", 50).unwrap();
    }
    let b1 = q.peek(Q, 4, 1 << 20).unwrap().unwrap();
    let b2 = q.peek(Q, 4, 1 << 20).unwrap().unwrap();
    assert!(!b1.possible_duplicate && !b2.possible_duplicate);
    q.ack(Q, b1.last_seq).unwrap();
    q.reset(Q);
    let again = q.peek(Q, 6, 1 << 20).unwrap().unwrap();
    assert_eq!(batch_numbers(&q, &again), vec![5, 6, 7, 8, 9, 10]);
    assert!(
        again.possible_duplicate,
        "events 5..8 were sent before the reset"
    );
    assert_eq!(q.stats(0).possible_duplicates, 4);
}

#[test]
fn ack_cannot_pass_what_was_peeked() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(cfg(false));
    for n in 1..=5 {
        append(&mut q, &disk, Op::Create, n, b"k", 5).unwrap();
    }
    let b = q.peek(Q, 2, 1 << 20).unwrap().unwrap();
    assert_eq!(
        q.ack(Q, Seq(4)),
        Err(AckError::NotPeeked {
            upto: Seq(4),
            peeked: b.last_seq
        })
    );
    assert_eq!(q.ack(Q, b.last_seq), Ok(2));
    assert_eq!(q.ack(Q, b.last_seq), Ok(0), "acks are idempotent");
    assert_eq!(
        q.ack(QueueId(9), Seq(1)),
        Err(AckError::UnknownQueue(QueueId(9)))
    );
}

#[test]
fn batch_limits_events_and_bytes_but_always_carries_one() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(cfg(false));
    for n in 1..=20 {
        append(&mut q, &disk, Op::Create, n, b"k", 100).unwrap();
    }
    let b = q.peek(Q, 100, 500).unwrap().unwrap();
    assert!(b.bytes <= 500 && b.events >= 1, "{b:?}");
    let b = q.peek(Q, 3, 1 << 20).unwrap().unwrap();
    assert_eq!(b.events, 3);
    let b = q.peek(Q, 100, 1).unwrap().unwrap();
    assert_eq!(
        b.events, 1,
        "a record larger than bytes_max still goes alone"
    );
}

#[test]
fn memory_stays_within_budget_whatever_the_backlog() {
    let disk = MemDisk::new();
    let budget = 128 << 10;
    let mut q = SenderQueue::new(QueueConfig {
        memory_bytes_max: budget,
        ..cfg(false)
    });
    for n in 0..20_000 {
        append(&mut q, &disk, Op::Create, n, b"k", 1000).unwrap();
        assert!(q.stats(0).memory_bytes <= budget);
    }
    let s = q.stats(0);
    assert!(s.bytes_on_disk > 15 << 20, "backlog went to disk: {s:?}");
    assert_eq!(drain_numbers(&mut q, Q), (0..20_000).collect::<Vec<_>>());
}

#[test]
fn full_disk_refuses_new_events_and_keeps_accepted_ones() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(QueueConfig {
        memory_bytes_max: 32 << 10,
        spare_segments: 1,
        journal_recycle_segments: 8,
        ..cfg(false)
    });
    disk.set_full(true);
    let mut accepted = Vec::new();
    let err = loop {
        let n = accepted.len() as u64;
        match append(&mut q, &disk, Op::Create, n, b"k", 500) {
            Ok(_) => accepted.push(n),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&err, AppendError::Full { cause, .. } if cause.is_disk_full()),
        "{err}"
    );
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(!accepted.is_empty());
    // The disk frees up: after the retry interval the queue takes events again.
    disk.set_full(false);
    run_actions(&mut q, &disk, RETRY_MS);
    let n = accepted.len() as u64;
    append(&mut q, &disk, Op::Create, n, b"k", 500).unwrap();
    accepted.push(n);
    assert_eq!(drain_numbers(&mut q, Q), accepted);
}

/// Found by `tools/tests/faults.rs`: a queue that filled its disk, then drained, went on
/// refusing appends with the old "No space left on device" until the retry time, although
/// deleting its acknowledged segments had made room. A delete now brings the retry forward.
#[test]
fn a_drained_queue_retries_a_failed_creation_as_soon_as_its_segments_are_deleted() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(QueueConfig {
        spare_segments: 1,
        journal_recycle_segments: 8,
        ..cfg(true)
    });
    let mut accepted = Vec::new();
    for n in 0..400 {
        append(&mut q, &disk, Op::Create, n, b"k", 500).unwrap();
        accepted.push(n);
    }
    disk.set_full(true);
    let err = loop {
        let n = accepted.len() as u64;
        match append(&mut q, &disk, Op::Create, n, b"k", 500) {
            Ok(_) => accepted.push(n),
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("No space left on device"), "{err}");
    // Everything is sent and acknowledged; deleting the segments gives the room back (the
    // in-memory disk is told so). No time passes: the retry is not due yet.
    disk.set_full(false);
    while let Some(b) = q.peek(Q, 1000, 1 << 20).unwrap() {
        q.ack(Q, b.last_seq).unwrap();
    }
    run_actions(&mut q, &disk, 0);
    assert!(q.stats(0).segments < 4, "{:?}", q.stats(0));
    let n = accepted.len() as u64;
    append(&mut q, &disk, Op::Create, n, b"k", 500).unwrap();
}

#[test]
fn persistent_queue_reports_an_unwritable_directory() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(cfg(true));
    disk.fail_creates(100);
    let err = append(&mut q, &disk, Op::Create, 1, b"k", 10).unwrap_err();
    assert!(matches!(err, AppendError::Disk(_)), "{err}");
    assert!(err.to_string().contains("Permission denied"), "{err}");
    assert_eq!(q.stats(0).events_queued, 0);
}

#[test]
fn failed_sync_is_reported_and_retried() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(cfg(true));
    let seq = append(&mut q, &disk, Op::Create, 1, b"k", 10).unwrap();
    assert_eq!(q.durability(Q, seq), Durability::Pending);
    disk.fail_syncs(1);
    run_actions(&mut q, &disk, 0);
    assert!(
        matches!(q.durability(Q, seq), Durability::Failed(why) if why.contains("Input/output error"))
    );
    // The data is still queued and the next sync, after the retry interval, covers it.
    run_actions(&mut q, &disk, 1);
    assert!(
        matches!(q.durability(Q, seq), Durability::Failed(_)),
        "no retry before the interval"
    );
    run_actions(&mut q, &disk, RETRY_MS);
    assert_eq!(q.durability(Q, seq), Durability::Done);
    assert_eq!(drain_numbers(&mut q, Q), vec![1]);
}

#[test]
fn interval_policy_syncs_only_when_due() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(QueueConfig {
        sync: SyncPolicy::IntervalMs(100),
        ..cfg(true)
    });
    append(&mut q, &disk, Op::Create, 1, b"k", 10).unwrap();
    assert_eq!(q.next_deadline_ms(), Some(100));
    run_actions(&mut q, &disk, 50);
    assert!(q.has_unsynced(), "not due before 100 ms");
    run_actions(&mut q, &disk, 100);
    assert!(!q.has_unsynced());
    append(&mut q, &disk, Op::Create, 2, b"k", 10).unwrap();
    assert_eq!(q.next_deadline_ms(), Some(200));
}

#[test]
fn acknowledged_segments_are_deleted_after_the_ack_is_synced() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(cfg(true));
    for n in 0..300 {
        append(&mut q, &disk, Op::Create, n, b"k", 1000).unwrap();
    }
    run_actions(&mut q, &disk, 0);
    let before = q.queue_stats(Q, 0).segments;
    assert!(before >= 4, "{before}");
    while let Some(b) = q.peek(Q, 1000, 1 << 30).unwrap() {
        q.ack(Q, b.last_seq).unwrap();
    }
    run_actions(&mut q, &disk, 0);
    assert_eq!(
        q.queue_stats(Q, 0).segments,
        1,
        "the last segment stays: it carries the position"
    );
    // Spares and the one live segment are all that is left on the disk.
    assert_eq!(disk.ids().len() as u64, q.stats(0).segments);
    assert!(
        disk.ids().len() <= 4,
        "acknowledged segment files stay on the disk until something is written: {:?}",
        disk.ids()
    );
}

#[test]
fn acknowledged_segments_leave_the_disk_under_the_interval_policy_with_nothing_written() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(QueueConfig {
        sync: SyncPolicy::IntervalMs(100),
        ..cfg(true)
    });
    for n in 0..300 {
        append(&mut q, &disk, Op::Create, n, b"k", 1000).unwrap();
    }
    run_actions(&mut q, &disk, 100);
    assert!(!q.has_unsynced());
    let full = disk.ids().len();
    while let Some(b) = q.peek(Q, 1000, 1 << 30).unwrap() {
        q.ack(Q, b.last_seq).unwrap();
    }
    // The ack waits for the next interval sync, which runs although nothing new was written.
    assert_eq!(q.next_deadline_ms(), Some(200));
    run_actions(&mut q, &disk, 150);
    assert_eq!(disk.ids().len(), full, "deleted before the ack was synced");
    run_actions(&mut q, &disk, 200);
    assert!(disk.ids().len() <= 4, "{:?}", disk.ids());
}

#[test]
fn bad_events_are_refused_with_a_reason() {
    let mut q = SenderQueue::new(cfg(false));
    let big = vec![0u8; VALUE_BYTES_MAX + 1];
    let err = q.append(Q, &event(Op::Create, 1, b"k", &big)).unwrap_err();
    assert!(err.to_string().contains("longer than the limit"), "{err}");
    let err = q
        .append(QueueId(7), &event(Op::Create, 1, b"k", b"v"))
        .unwrap_err();
    assert!(
        matches!(err, AppendError::UnknownQueue(QueueId(7), 2)),
        "{err}"
    );
}

#[test]
fn statistics_follow_the_queue() {
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(QueueConfig {
        memory_bytes_max: 16 << 10,
        ..cfg(false)
    });
    for n in 0..100 {
        append(&mut q, &disk, Op::Create, n, b"k", 400).unwrap();
    }
    let s = q.stats(2_000_000);
    assert_eq!(s.events_queued, 100);
    assert_eq!(s.events_in_memory + s.events_on_disk, 100);
    assert!(s.events_in_memory > 0 && s.events_on_disk > 0);
    assert_eq!(s.bytes_queued, s.bytes_in_memory + s.bytes_on_disk);
    assert!(s.segments >= 1);
    // Event 0 carries timestamp 1_000_000 µs.
    assert_eq!(s.oldest_event_age_us, Some(1_000_000));
}

#[test]
fn invalid_configuration_is_refused_with_the_reason() {
    use strait_queue::queue::ConfigError;
    use strait_queue::store::recover;
    let disk = MemDisk::new();
    let bad = [
        (
            QueueConfig {
                queue_count: 0,
                ..cfg(true)
            },
            ConfigError::NoQueues,
        ),
        (
            QueueConfig {
                segment_bytes: 1000,
                ..cfg(true)
            },
            ConfigError::SegmentTooSmall(1000),
        ),
        (
            QueueConfig {
                spare_segments: 0,
                journal_recycle_segments: 8,
                ..cfg(true)
            },
            ConfigError::NoSpares,
        ),
        (
            QueueConfig {
                sync: SyncPolicy::IntervalMs(0),
                ..cfg(true)
            },
            ConfigError::ZeroInterval,
        ),
    ];
    for (c, want) in bad {
        assert_eq!(c.validate(), Err(want.clone()));
        let err = recover(c, &disk).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid queue configuration: {want}")
        );
    }
    assert_eq!(QueueConfig::default().validate(), Ok(()));
}

#[test]
fn check_room_asks_for_the_segment_it_needs_and_recovers_after_a_full_disk() {
    // A writer that checks every queue before appending to any (a local write, a forward)
    // never calls `append` while refused: `check_room` itself must ask for a segment, or the
    // queue would keep answering with the old disk error after the disk has room again.
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(QueueConfig {
        memory_bytes_max: 32 << 10,
        spare_segments: 1,
        journal_recycle_segments: 8,
        ..cfg(false)
    });
    disk.set_full(true);
    let mut n = 0;
    let (_, v) = event_parts(0, 500);
    let refused = loop {
        let e = event(Op::Create, n, b"k", &v);
        match q.check_room(Q, &e) {
            Ok(()) => {
                q.append(Q, &e).unwrap();
                n += 1;
            }
            Err(AppendError::WouldBlock) => {
                run_actions(&mut q, &disk, 0);
            }
            Err(e) => break e,
        }
        assert!(n < 10_000, "the budget never ran out");
    };
    assert!(matches!(refused, AppendError::Full { .. }), "{refused}");
    disk.set_full(false);
    let e = event(Op::Create, n, b"k", &v);
    // After the retry interval the queue makes a segment and takes the event.
    let mut now = RETRY_MS;
    let taken = loop {
        run_actions(&mut q, &disk, now);
        match q.check_room(Q, &e) {
            Ok(()) => break true,
            Err(_) if now < 10 * RETRY_MS => now += RETRY_MS,
            Err(_) => break false,
        }
    };
    assert!(
        taken,
        "the queue kept refusing after the disk had room again"
    );
    q.append(Q, &e).unwrap();
}

#[test]
fn segment_size_rule_keeps_every_queues_tail_within_the_target() {
    use strait_queue::queue::{
        JOURNAL_SEALED_MAX, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MIN, SEGMENT_TAILS_BYTES_TARGET,
        segment_bytes_for,
    };
    for n in 1..=u16::MAX {
        let b = segment_bytes_for(n);
        let valid = QueueConfig {
            queue_count: n,
            segment_bytes: b,
            ..cfg(true)
        };
        assert_eq!(valid.validate(), Ok(()), "{n} queues");
        assert!(b.is_power_of_two(), "{n} queues: {b}");
        let tails = u64::from(n) * u64::from(b);
        // Within the target unless already at the smallest size, and the largest such size.
        assert!(
            b == SEGMENT_BYTES_MIN || tails <= SEGMENT_TAILS_BYTES_TARGET,
            "{n}: {b}"
        );
        assert!(
            b == SEGMENT_BYTES_DEFAULT || 2 * tails > SEGMENT_TAILS_BYTES_TARGET,
            "{n}: {b}"
        );
    }
    assert_eq!(segment_bytes_for(1), SEGMENT_BYTES_DEFAULT);
    assert_eq!(segment_bytes_for(5), SEGMENT_BYTES_DEFAULT);
    assert_eq!(segment_bytes_for(113), 512 << 10);

    // A parallel sender's 113 bucket queues, each written and then drained: what stays on the
    // disk is one tail per queue and the spares, within the target.
    let queues = 113u16;
    let config = QueueConfig {
        queue_count: queues,
        memory_bytes_max: 1 << 20,
        segment_bytes: segment_bytes_for(queues),
        ..cfg(true)
    };
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(config.clone());
    for (n, queue) in (0..queues).map(QueueId).enumerate() {
        let (k, v) = event_parts(n as u64, 1024);
        loop {
            match q.append(queue, &event(Op::Create, n as u64, &k, &v)) {
                Err(AppendError::WouldBlock) => assert!(run_actions(&mut q, &disk, 0) > 0),
                r => {
                    r.expect("append");
                    break;
                }
            }
        }
    }
    run_actions(&mut q, &disk, 0);
    for queue in (0..queues).map(QueueId) {
        let b = q
            .peek(queue, 100, 1 << 20)
            .expect("peek")
            .expect("one event");
        q.ack(queue, b.last_seq).expect("ack");
    }
    run_actions(&mut q, &disk, 0);
    let stats = q.stats(0);
    assert_eq!(stats.events_queued, 0);
    let spares = u64::from(config.spare_segments) * u64::from(config.segment_bytes);
    // Its commit journal: the segment in use, sealed ones waiting for a checkpoint, a spare.
    let journal = u64::from(config.journal_segment_bytes()) * (JOURNAL_SEALED_MAX as u64 + 2);
    assert!(config.commit_journal());
    assert!(
        stats.segment_bytes <= SEGMENT_TAILS_BYTES_TARGET + spares + journal,
        "{} bytes of segments held for {queues} drained queues",
        stats.segment_bytes
    );
    assert!(stats.segment_bytes >= u64::from(queues) * u64::from(config.segment_bytes));
}
