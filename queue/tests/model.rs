//! Random sequences of append / peek / ack / reset / crash-and-reopen, applied to the real
//! queue (over the in-memory disk) and to a plain model built on `VecDeque`, compared after
//! every step.

mod common;
use common::*;
use proptest::prelude::*;
use std::collections::{HashMap, VecDeque};
use strait_queue::ids::*;
use strait_queue::mem::{Crash, MemDisk, run_actions};
use strait_queue::queue::{AppendError, QueueConfig, SenderQueue, SyncPolicy};
use strait_queue::record::Op;
use strait_queue::store::recover;

const QUEUES: u16 = 3;

#[derive(Clone, Debug)]
enum Step {
    Append {
        q: u16,
        op: Op,
        key: u8,
        len: usize,
    },
    Peek {
        q: u16,
        events: u32,
        bytes: u64,
    },
    /// Acknowledge up to the `pick`-th peeked, unacknowledged event (modulo how many there are).
    Ack {
        q: u16,
        pick: usize,
    },
    Reset {
        q: u16,
    },
    Actions,
    Crash,
}

fn step() -> impl Strategy<Value = Step> {
    let op = prop_oneof![3 => Just(Op::Update), 1 => Just(Op::Create), 1 => Just(Op::Destroy)];
    let len = prop_oneof![20 => 0usize..300, 1 => 60_000usize..70_000];
    prop_oneof![
        12 => (0..QUEUES, op, 0u8..6, len).prop_map(|(q, op, key, len)| Step::Append { q, op, key, len }),
        4 => (0..QUEUES, 1u32..8, prop_oneof![Just(1u64 << 20), 100u64..2000]).prop_map(|(q, events, bytes)| Step::Peek { q, events, bytes }),
        3 => (0..QUEUES, 0usize..16).prop_map(|(q, pick)| Step::Ack { q, pick }),
        1 => (0..QUEUES).prop_map(|q| Step::Reset { q }),
        2 => Just(Step::Actions),
        1 => Just(Step::Crash),
    ]
}

#[derive(Clone, Debug)]
struct ModelEvent {
    seq: Seq,
    n: u64,
}

#[derive(Default, Debug)]
struct ModelQueue {
    events: VecDeque<ModelEvent>,
    /// Index in `events` of the first unpeeked event.
    cursor: usize,
    next_seq: u64,
    acked: Seq,
    peeked_max: Seq,
    redeliver_upto: Seq,
    /// key → seq of the latest update for that key that may still be conflated.
    index: HashMap<u8, Seq>,
}

impl ModelQueue {
    fn fresh() -> ModelQueue {
        ModelQueue {
            next_seq: 1,
            ..ModelQueue::default()
        }
    }
}

struct World {
    cfg: QueueConfig,
    disk: MemDisk,
    real: SenderQueue,
    model: Vec<ModelQueue>,
    n: u64,
}

impl World {
    fn new(cfg: QueueConfig) -> World {
        World {
            real: SenderQueue::new(cfg.clone()),
            disk: MemDisk::new(),
            model: (0..QUEUES).map(|_| ModelQueue::fresh()).collect(),
            cfg,
            n: 0,
        }
    }

    fn apply(&mut self, s: &Step) {
        match *s {
            Step::Append { q, op, key, len } => self.append(q, op, key, len),
            Step::Peek { q, events, bytes } => self.peek(q, events, bytes),
            Step::Ack { q, pick } => self.ack(q, pick),
            Step::Reset { q } => {
                self.real.reset(QueueId(q));
                let m = &mut self.model[q as usize];
                m.redeliver_upto = m.redeliver_upto.max(m.peeked_max);
                m.cursor = 0;
            }
            Step::Actions => {
                run_actions(&mut self.real, &self.disk, 0);
            }
            Step::Crash => self.crash(),
        }
        self.check();
    }

    fn append(&mut self, q: u16, op: Op, key: u8, len: usize) {
        self.n += 1;
        let n = self.n;
        let k = vec![b'k', key];
        let (_, v) = event_parts(n, len);
        let ev = event(op, n, &k, &v);
        let seq = loop {
            match self.real.append(QueueId(q), &ev) {
                Ok(seq) => break seq,
                Err(AppendError::WouldBlock) => {
                    assert!(
                        run_actions(&mut self.real, &self.disk, 0) > 0,
                        "WouldBlock but no action to run"
                    );
                }
                Err(e) => panic!("append failed: {e}"),
            }
        };
        let m = &mut self.model[q as usize];
        assert_eq!(seq, Seq(m.next_seq), "sequence numbers are consecutive");
        m.next_seq += 1;
        if self.cfg.conflation {
            if op == Op::Update {
                if let Some(old) = m.index.insert(key, seq) {
                    let peeked_seq = m.events.get(m.cursor).map_or(Seq(m.next_seq), |e| e.seq);
                    if old >= peeked_seq && old > m.acked {
                        let i = m
                            .events
                            .iter()
                            .position(|e| e.seq == old)
                            .expect("indexed event queued");
                        assert!(i >= m.cursor);
                        m.events.remove(i);
                    }
                }
            } else {
                m.index.remove(&key);
            }
        }
        m.events.push_back(ModelEvent { seq, n });
    }

    fn peek(&mut self, q: u16, events: u32, bytes: u64) {
        let batch = self
            .real
            .peek(QueueId(q), events, bytes)
            .expect("peek reads valid records");
        let m = &mut self.model[q as usize];
        let Some(b) = batch else {
            assert_eq!(m.cursor, m.events.len(), "real queue says nothing to peek");
            return;
        };
        let got = batch_numbers(&self.real, &b);
        assert_eq!(got.len() as u32, b.events);
        let want: Vec<u64> = m
            .events
            .iter()
            .skip(m.cursor)
            .take(got.len())
            .map(|e| e.n)
            .collect();
        assert_eq!(got, want, "peeked events");
        assert!(got.len() as u32 <= events.max(1));
        if got.len() < events as usize {
            // Stopped early: only the byte limit or the end of the queue may stop a batch.
            let more = m.events.len() > m.cursor + got.len();
            assert!(!more || b.bytes > 0, "batch stopped early without reason");
        }
        let first = m.events[m.cursor].seq;
        assert_eq!(b.first_seq, first);
        assert_eq!(
            b.possible_duplicate,
            first <= m.redeliver_upto,
            "possible-duplicate mark"
        );
        m.cursor += got.len();
        m.peeked_max = m.peeked_max.max(b.last_seq);
    }

    fn ack(&mut self, q: u16, pick: usize) {
        let m = &mut self.model[q as usize];
        if m.cursor == 0 {
            // Nothing peeked: acknowledging beyond the peeked position is refused.
            let beyond = Seq(m.peeked_max.0.max(m.acked.0) + 1);
            if beyond.0 < m.next_seq {
                assert!(self.real.ack(QueueId(q), beyond).is_err());
            }
            return;
        }
        let i = pick % m.cursor;
        let upto = m.events[i].seq;
        let released = self
            .real
            .ack(QueueId(q), upto)
            .expect("ack of a peeked event");
        assert_eq!(released, (i + 1) as u64);
        m.events.drain(..=i);
        m.cursor -= i + 1;
        m.acked = upto;
        m.index.retain(|_, s| *s > upto);
    }

    fn crash(&mut self) {
        let real = std::mem::replace(&mut self.real, SenderQueue::new(self.cfg.clone()));
        self.disk.crash(real, Crash::Process);
        let (real, report) = recover(self.cfg.clone(), &self.disk).expect("recovery");
        assert!(
            report.is_clean(),
            "a process crash leaves clean segments: {report:?}"
        );
        self.real = real;
        for m in &mut self.model {
            if self.cfg.persistent {
                m.cursor = 0;
                m.redeliver_upto = Seq(m.next_seq - 1);
                m.peeked_max = m.acked;
                m.index.clear();
            } else {
                *m = ModelQueue::fresh();
            }
        }
    }

    fn check(&self) {
        let stats = self.real.stats(0);
        if !self.cfg.persistent {
            assert!(
                stats.memory_bytes <= self.cfg.memory_bytes_max,
                "memory {} over budget {}",
                stats.memory_bytes,
                self.cfg.memory_bytes_max
            );
        }
        for (i, m) in self.model.iter().enumerate() {
            let s = self.real.queue_stats(QueueId(i as u16), 0);
            assert_eq!(s.events_queued, m.events.len() as u64, "queue {i} length");
        }
        assert_eq!(
            stats.events_queued,
            self.model
                .iter()
                .map(|m| m.events.len() as u64)
                .sum::<u64>()
        );
    }
}

fn run(cfg: QueueConfig, steps: &[Step]) {
    let mut w = World::new(cfg);
    for s in steps {
        w.apply(s);
    }
    // Finally everything left drains, in order.
    for q in 0..QUEUES {
        w.apply(&Step::Reset { q });
        let got = drain_numbers(&mut w.real, QueueId(q));
        let want: Vec<u64> = w.model[q as usize].events.iter().map(|e| e.n).collect();
        assert_eq!(got, want, "final contents of queue {q}");
    }
}

fn small(persistent: bool, conflation: bool) -> QueueConfig {
    QueueConfig {
        queue_count: QUEUES,
        memory_bytes_max: 32 << 10,
        persistent,
        disk_synchronous: true,
        sync: SyncPolicy::EveryBatch,
        conflation,
        segment_bytes: 64 << 10,
        spare_segments: 1,
        journal_recycle_segments: 8,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn persistent_queue_matches_model(steps in prop::collection::vec(step(), 1..250)) {
        run(small(true, false), &steps);
    }

    #[test]
    fn persistent_conflating_queue_matches_model(steps in prop::collection::vec(step(), 1..250)) {
        run(small(true, true), &steps);
    }

    #[test]
    fn overflowing_queue_matches_model(steps in prop::collection::vec(step(), 1..250)) {
        run(small(false, false), &steps);
    }

    #[test]
    fn overflowing_conflating_queue_matches_model(steps in prop::collection::vec(step(), 1..250)) {
        run(small(false, true), &steps);
    }
}
