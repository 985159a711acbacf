//! The receiving end's pure steps around [`crate::apply::apply_record`]: the ack a batch's
//! outcomes come to, and the event an applied record is forwarded as. The node's
//! `apply_batch` and `forward` (`engine/node/src/wan.rs`) do the same with I/O between them;
//! the simulator (`engine/sim`) runs these.
//!
//! | item | what it does |
//! |---|---|
//! | [`ack_outcome`] | the counts and dead letters of one batch's outcomes, as its ack carries them |
//! | [`forward_event`] | the event a local sender queues for an applied record: the original identity, version, key and value, with the recipients [`crate::apply::forward_targets`] gave |

use crate::apply::ApplyOutcome;
use strait_net::wire::{AckOutcome, DeadLetter};
use strait_queue::ids::{BucketId, RegionId, SiteId};
use strait_queue::record::{Event, Record};

/// The ack of a batch whose records, in order, had `outcomes`.
pub fn ack_outcome(outcomes: &[ApplyOutcome]) -> AckOutcome {
    let mut ack = AckOutcome::default();
    for (i, outcome) in outcomes.iter().enumerate() {
        match outcome {
            ApplyOutcome::Applied { .. } => ack.applied += 1,
            ApplyOutcome::Duplicate(_) => ack.duplicates += 1,
            ApplyOutcome::Rejected { .. } => ack.conflicts += 1,
            ApplyOutcome::DeadLetter(cause) => ack.dead_letters.push(DeadLetter {
                index: i as u32,
                reason: cause.reason(),
                text: cause.to_string().into(),
            }),
        }
    }
    ack
}

/// The event a local sender queues to forward `record`, applied here to the local region
/// `region` and bucket `bucket`, with the recipient set `recipients`.
pub fn forward_event<'a>(
    record: &Record<'a>,
    region: RegionId,
    bucket: BucketId,
    recipients: &'a [SiteId],
) -> Event<'a> {
    Event {
        region,
        bucket,
        ..record.event(recipients)
    }
}
