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

use strait_queue::ids::QueueId;
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
