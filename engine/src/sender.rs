//! A gateway sender's operations (Geode's `start`, `start --clean-queues`, `stop`, `pause`,
//! `resume`; `docs/wan.md` "Sender operations") as pure steps: which state an operation leads
//! to, and what `START CLEAN` does to the sender's queues. The node applies them on every shard
//! (`engine/node/src/wan.rs`); the simulator (`engine/sim`) runs them at random moments.
//!
//! | item | what it is |
//! |---|---|
//! | [`SenderState`] | running, paused or not running, and [`SenderState::after`] an operation |
//! | [`SenderOp`] | an operation |
//! | [`discard_all`] | `START CLEAN`: acknowledge everything queued for the sender |
//! | [`QueueLayout`] | parallel (a queue per bucket) or serial (a queue per dispatcher): which queue an event of a bucket goes to |

use strait_queue::ids::{BucketId, QueueId};
use strait_queue::queue::{Batch, SenderQueue};

/// A gateway sender operation (Geode's `start`, `startWithCleanQueue`, `stop`, `pause`,
/// `resume`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderOp {
    /// Start; with `clean`, first discard everything queued.
    Start {
        clean: bool,
    },
    Stop,
    Pause,
    Resume,
}

/// A gateway sender's state on one shard, as Geode's `list gateways` names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SenderState {
    /// Queues local writes and dispatches them.
    #[default]
    Running,
    /// Queues local writes; sends no new batch (those in flight are still acknowledged).
    Paused,
    /// Disconnected; local writes are not queued for it (Geode drops them too).
    NotRunning,
}

impl SenderState {
    /// The name INFO and `STRAIT.SENDER ... STATUS` give.
    pub fn name(self) -> &'static str {
        match self {
            SenderState::Running => "running",
            SenderState::Paused => "paused",
            SenderState::NotRunning => "not-running",
        }
    }

    /// The state after `op`, or why `op` does not apply now. Starting a started sender and
    /// resuming a running one change nothing, as in Geode.
    pub fn after(self, op: SenderOp) -> Result<SenderState, &'static str> {
        use SenderState::*;
        match (self, op) {
            (NotRunning, SenderOp::Start { .. }) => Ok(Running),
            (_, SenderOp::Start { clean: true }) => Err("is running; STOP it before START CLEAN"),
            (s, SenderOp::Start { clean: false }) => Ok(s),
            (_, SenderOp::Stop) => Ok(NotRunning),
            (NotRunning, SenderOp::Pause | SenderOp::Resume) => Err("is not running"),
            (_, SenderOp::Pause) => Ok(Paused),
            (_, SenderOp::Resume) => Ok(Running),
        }
    }
}

/// How a sender spreads events over its queues on a shard (`parallel`, `dispatcher-threads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueLayout {
    /// A queue per bucket: bucket `b` goes to queue `b % queues` (`queues`: the most buckets
    /// of the sender's regions when its queues were made, at least 1).
    Parallel { queues: u16 },
    /// A queue per dispatcher (`dispatcher-threads`, at least 1).
    Serial { dispatchers: u16 },
}

impl QueueLayout {
    /// The queue of an event of `bucket`. A serial sender sends bucket `b` through dispatcher
    /// `b % dispatcher-threads` for every order policy, so each event stream (region, bucket)
    /// stays in order on every path, which the receiver's dedupe relies on (docs/wan.md
    /// "Per-stream order"); a key's order follows from its bucket's.
    pub fn queue_of(self, bucket: BucketId) -> QueueId {
        QueueId(bucket.0 % self.queue_count())
    }

    /// How many queues the sender has on a shard.
    pub fn queue_count(self) -> u16 {
        match self {
            QueueLayout::Parallel { queues } => queues.max(1),
            QueueLayout::Serial { dispatchers } => dispatchers.max(1),
        }
    }
}

/// Acknowledges every event of every queue: what `start --clean-queues` discards. Events sent
/// and not yet acknowledged go too; an ack that still arrives for them changes nothing.
/// `discarded` sees each batch before it goes (`SenderQueue::batch_slices` reads its records).
/// Returns how many events went.
pub fn discard_all(
    q: &mut SenderQueue,
    mut discarded: impl FnMut(&SenderQueue, &Batch),
) -> Result<u64, String> {
    let mut count = 0;
    for id in 0..q.config().queue_count {
        let id = QueueId(id);
        q.reset(id);
        while let Some(batch) = q.peek(id, u32::MAX, u64::MAX).map_err(|e| e.to_string())? {
            discarded(q, &batch);
            count += q.ack(id, batch.last_seq).map_err(|e| e.to_string())?;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::SenderState::*;
    use super::*;

    #[test]
    fn a_serial_sender_keeps_each_bucket_on_one_queue() {
        let serial = QueueLayout::Serial { dispatchers: 5 };
        assert_eq!(serial.queue_count(), 5);
        assert_eq!(serial.queue_of(BucketId(17)), QueueId(2));
        let parallel = QueueLayout::Parallel { queues: 113 };
        assert_eq!(parallel.queue_of(BucketId(17)), QueueId(17));
        assert_eq!(parallel.queue_count(), 113);
        // A region made later with more buckets wraps round the queues there are.
        assert_eq!(parallel.queue_of(BucketId(120)), QueueId(7));
        let none = QueueLayout::Serial { dispatchers: 0 };
        assert_eq!(
            (none.queue_count(), none.queue_of(BucketId(6))),
            (1, QueueId(0))
        );
    }

    #[test]
    fn sender_operations_follow_geode() {
        let start = SenderOp::Start { clean: false };
        let clean = SenderOp::Start { clean: true };
        assert_eq!(NotRunning.after(start), Ok(Running));
        assert_eq!(NotRunning.after(clean), Ok(Running));
        assert_eq!(Running.after(start), Ok(Running));
        assert_eq!(Paused.after(start), Ok(Paused));
        assert!(Running.after(clean).is_err());
        assert!(Paused.after(clean).is_err());
        for s in [Running, Paused, NotRunning] {
            assert_eq!(s.after(SenderOp::Stop), Ok(NotRunning));
        }
        assert_eq!(Running.after(SenderOp::Pause), Ok(Paused));
        assert_eq!(Paused.after(SenderOp::Pause), Ok(Paused));
        assert_eq!(Paused.after(SenderOp::Resume), Ok(Running));
        assert_eq!(Running.after(SenderOp::Resume), Ok(Running));
        assert_eq!(NotRunning.after(SenderOp::Pause), Err("is not running"));
        assert_eq!(NotRunning.after(SenderOp::Resume), Err("is not running"));
        assert_eq!(
            [Running, Paused, NotRunning].map(SenderState::name),
            ["running", "paused", "not-running"]
        );
    }
}
