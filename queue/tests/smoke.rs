mod common;
use common::*;
use strait_queue::ids::*;
use strait_queue::mem::{Crash, MemDisk, run_actions};
use strait_queue::queue::{QueueConfig, SenderQueue, SyncPolicy};
use strait_queue::store::recover;

#[test]
fn memory_overflow_and_persistent_roundtrip() {
    let disk = MemDisk::new();
    let cfg = QueueConfig {
        queue_count: 4,
        memory_bytes_max: 64 << 10,
        segment_bytes: 64 << 10,
        ..QueueConfig::default()
    };
    let mut q = SenderQueue::new(cfg.clone());
    let mut n = 0;
    while n < 2000 {
        match append_n(&mut q, QueueId(1), n, 100) {
            Ok(_) => n += 1,
            Err(strait_queue::queue::AppendError::WouldBlock) => {
                run_actions(&mut q, &disk, 0);
            }
            Err(e) => panic!("{e}"),
        }
    }
    let s = q.stats(0);
    assert!(s.memory_bytes <= 64 << 10, "{s:?}");
    assert!(s.events_on_disk > 0 && s.events_in_memory > 0, "{s:?}");
    assert_eq!(
        drain_numbers(&mut q, QueueId(1)),
        (0..2000).collect::<Vec<_>>()
    );

    let pcfg = QueueConfig {
        persistent: true,
        sync: SyncPolicy::EveryBatch,
        ..cfg
    };
    let disk = MemDisk::new();
    let mut q = SenderQueue::new(pcfg.clone());
    let mut n = 0;
    while n < 1500 {
        match append_n(&mut q, QueueId(2), n, 100) {
            Ok(_) => n += 1,
            Err(strait_queue::queue::AppendError::WouldBlock) => {
                run_actions(&mut q, &disk, 0);
            }
            Err(e) => panic!("{e}"),
        }
    }
    run_actions(&mut q, &disk, 0);
    let b = q.peek(QueueId(2), 500, 1 << 30).unwrap().unwrap();
    q.ack(QueueId(2), b.last_seq).unwrap();
    run_actions(&mut q, &disk, 0);
    disk.crash(q, Crash::Process);
    let (mut q, report) = recover(pcfg, &disk).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events, 1000);
    let got = drain_numbers(&mut q, QueueId(2));
    assert_eq!(got, (500..1500).collect::<Vec<_>>());
}
