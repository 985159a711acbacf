//! Apply of one record from another site, and where it goes next (docs/wan.md, "Receiver
//! side"; geode-wan.md §3, §4.2, §6.4).
//!
//! The receiver shell finds the record's local region by the name the hello's region table
//! gives (none: dead-letter, [`DeadLetterReason::UnknownRegion`]), then calls
//! [`apply_record`] with that region's store on the shard owning the record's bucket:
//!
//! 1. an event that originated at this site is a duplicate ([`Duplicate::OriginatedHere`]):
//!    this site already holds it, and forwarding it again would start a loop;
//! 2. dedupe: a `stream_seq` at or below the highest processed for its stream
//!    ([`crate::region::RegionStore::last_applied`]) is a duplicate ([`Duplicate::Seen`]):
//!    not applied, not forwarded;
//! 3. the conflict rule ([`crate::region::RegionStore::apply_remote`]): [`ApplyOutcome::Applied`]
//!    or [`ApplyOutcome::Rejected`]; both advance the stream's high-water mark, since the
//!    event was processed (Geode counts a rejected event as successfully processed);
//! 4. a store refusal ([`StoreError`]) is [`ApplyOutcome::DeadLetter`] ([`DeadLetterCause`]); nothing is recorded, so
//!    a resend of it is judged again (and, while the cause lasts, written to the dead-letter
//!    log again; replaying both copies is harmless).
//!
//! Only an applied event is forwarded: [`forward_targets`] names the local senders that take
//! it and the recipient set it carries (the loop rule, [`crate::loop_rule`]).
//!
//! **Duplicates and the possible-duplicate flag.** The flag of a batch says "some of these
//! may have been sent before" (a resend after a lost connection, or events recovered from
//! disk). It changes no decision: the dedupe table is exact per stream, so an event at or
//! below the mark is dropped whether or not the flag is set, and one above it is applied
//! whether or not it is set. A duplicate that arrives *without* the flag is not a resend: it
//! is the second copy that converging paths deliver (1→2, 1→3, 2→4, 3→4) or an echo of this
//! site's own event. It is dropped and counted all the same, and [`ApplyCounts`] counts it
//! apart (`duplicates_unflagged`) so the shell can say that the topology converges.

use crate::loop_rule::{SITES_MAX, recipients_after_forward, should_forward};
use crate::region::{RegionStore, RemoteApply, StoreError};
use crate::version::{ApplyRule, RejectReason, Resolution};
use bytes::Bytes;
use smallvec::SmallVec;
use strait_queue::ids::{RegionId, SiteId};
use strait_queue::record::{Op, Record};

pub use strait_queue::record::DeadLetterReason;

/// The dead-letter reason for a store refusal.
pub fn dead_letter_reason(error: &StoreError) -> DeadLetterReason {
    match error {
        StoreError::Full { .. } | StoreError::StreamsFull { .. } => DeadLetterReason::StoreFull,
        StoreError::KeyTooLong(_)
        | StoreError::ValueTooLong(_)
        | StoreError::UnexpectedValue(..)
        | StoreError::NoEntryToStamp => DeadLetterReason::ValueRejected,
    }
}

/// What stopped an event from being applied, for the dead-letter log and the ack.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeadLetterCause {
    /// The sending site's region `region` (its number in the hello's region table) has no
    /// region of the same name here. Found by the shell, before any store is involved.
    #[error("region {region} of the sending site is not a region of this site")]
    UnknownRegion { region: RegionId },
    /// The region's store refused the write.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DeadLetterCause {
    /// The reason code the ack and the log carry.
    pub fn reason(&self) -> DeadLetterReason {
        match self {
            DeadLetterCause::UnknownRegion { .. } => DeadLetterReason::UnknownRegion,
            DeadLetterCause::Store(error) => dead_letter_reason(error),
        }
    }
}

/// Why an event is a duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Duplicate {
    /// Its stream's high-water mark is at or above its `stream_seq`.
    Seen { last_applied: u64 },
    /// It originated at this site.
    OriginatedHere,
}

/// What [`apply_record`] did with one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Stored, by this rule of the conflict rule; forward it.
    Applied { rule: ApplyRule },
    /// Seen before: dropped, counted, not forwarded.
    Duplicate(Duplicate),
    /// Lost the conflict rule: dropped, counted as processed, not forwarded.
    Rejected { reason: RejectReason },
    /// Not applicable here: to the dead-letter log, reported in the ack.
    DeadLetter(DeadLetterCause),
}

impl ApplyOutcome {
    /// Whether the event goes on to this site's senders ([`forward_targets`]).
    pub fn forwards(&self) -> bool {
        matches!(self, ApplyOutcome::Applied { .. })
    }

    fn from_store(result: Result<Resolution, StoreError>) -> ApplyOutcome {
        match result {
            Ok(Resolution::Apply { rule }) => ApplyOutcome::Applied { rule },
            Ok(Resolution::Reject { reason }) => ApplyOutcome::Rejected { reason },
            Err(error) => ApplyOutcome::DeadLetter(DeadLetterCause::Store(error)),
        }
    }
}

/// Applies `record`, received from another site, to `store` (the record's region on the shard
/// that owns its bucket) at `local_site`: the dedupe check, then the conflict rule, as the
/// module's docs lay out.
pub fn apply_record(
    store: &mut RegionStore,
    record: &Record<'_>,
    local_site: SiteId,
) -> ApplyOutcome {
    apply_received(store, record, local_site, false)
}

/// Applies a dead-lettered `record` again, for a replay: as [`apply_record`] but without the
/// dedupe check, which would call it a duplicate once later events of its stream were
/// processed ([`RegionStore::replay_remote_event`]). An event that originated here is still
/// a duplicate.
pub fn replay_record(
    store: &mut RegionStore,
    record: &Record<'_>,
    local_site: SiteId,
) -> ApplyOutcome {
    apply_received(store, record, local_site, true)
}

fn apply_received(
    store: &mut RegionStore,
    record: &Record<'_>,
    local_site: SiteId,
    replay: bool,
) -> ApplyOutcome {
    let id = record.event_id();
    if id.origin_site == local_site {
        return ApplyOutcome::Duplicate(Duplicate::OriginatedHere);
    }
    let (op, key, value, tag) = (record.op(), record.key(), record.value(), record.version());
    if replay {
        return ApplyOutcome::from_store(store.replay_remote_event(&id, op, key, value, tag));
    }
    match store.apply_remote_event(&id, op, key, value, tag) {
        Ok(RemoteApply::Duplicate { last_applied }) => {
            ApplyOutcome::Duplicate(Duplicate::Seen { last_applied })
        }
        Ok(RemoteApply::Resolved(resolution)) => ApplyOutcome::from_store(Ok(resolution)),
        Err(error) => ApplyOutcome::from_store(Err(error)),
    }
}

/// Restores one record of a persistent region's log into `store` at start: a write made at
/// this site (origin and version site are `local_site`) is made again with its own timestamp,
/// which gives it the version it had (the same existing entry, the same clock reading); a
/// write received from another site goes through the dedupe check and the conflict rule again,
/// which restores its stream's high-water mark too. Records are restored in the order they
/// were logged. `Ok(false)`: the record changed nothing (a second copy, a destroy of an
/// absent key).
pub fn restore_logged(
    store: &mut RegionStore,
    record: &Record<'_>,
    local_site: SiteId,
) -> Result<bool, StoreError> {
    let id = record.event_id();
    let tag = record.version();
    if id.origin_site == local_site && tag.site == local_site {
        return match record.op() {
            Op::Create | Op::Update => store
                .put_local(
                    record.key(),
                    Bytes::copy_from_slice(record.value()),
                    tag.timestamp_us,
                    local_site,
                )
                .map(|_| true),
            Op::Destroy => Ok(store
                .destroy_local(record.key(), tag.timestamp_us, local_site)
                .is_some()),
            Op::VersionOnly => Ok(false),
        };
    }
    match store.apply_remote_event(&id, record.op(), record.key(), record.value(), tag)? {
        RemoteApply::Duplicate { .. } => Ok(false),
        RemoteApply::Resolved(r) => Ok(r.is_apply()),
    }
}

/// One gateway sender of a region at this site, as the node numbers them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SenderIndex(pub usize);

/// Which of `senders` (each with the site it targets) forward an applied `record` that
/// originated at another site, and the recipient set they queue it with: the loop rule's
/// [`should_forward`] for each sender and [`recipients_after_forward`] over
/// `region_targets`, the targets of every sender attached to the region. Both lists are
/// empty when no sender forwards, or when the record originated at `local_site` (never
/// forwarded again). Call it only for an outcome that [`ApplyOutcome::forwards`].
pub fn forward_targets(
    local_site: SiteId,
    record: &Record<'_>,
    senders: &[(SenderIndex, SiteId)],
    region_targets: &[SiteId],
) -> (Vec<SenderIndex>, Vec<SiteId>) {
    let origin = record.event_id().origin_site;
    if origin == local_site {
        return (Vec::new(), Vec::new());
    }
    let recipients: SmallVec<[SiteId; 8]> = record.recipients().take(SITES_MAX).collect();
    let chosen: Vec<SenderIndex> = senders
        .iter()
        .filter(|&&(_, target)| should_forward(local_site, Some(origin), &recipients, target))
        .map(|&(index, _)| index)
        .collect();
    if chosen.is_empty() {
        return (chosen, Vec::new());
    }
    let next = recipients_after_forward(local_site, Some(origin), &recipients, region_targets);
    (chosen, next)
}

/// The outcome counts of one batch, as its ack reports them (u32 each, saturating).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ApplyCounts {
    pub applied: u32,
    /// Every duplicate, flagged possible-duplicate or not.
    pub duplicates: u32,
    /// The duplicates that arrived in a batch not flagged possible-duplicate: copies from
    /// converging paths, or echoes of this site's own events. Also counted in `duplicates`.
    pub duplicates_unflagged: u32,
    pub rejected: u32,
    pub dead_lettered: u32,
}

impl ApplyCounts {
    /// Counts `outcome`, of a record that came in a batch flagged `possible_duplicate` or not.
    pub fn count(&mut self, outcome: &ApplyOutcome, possible_duplicate: bool) {
        let slot = match outcome {
            ApplyOutcome::Applied { .. } => &mut self.applied,
            ApplyOutcome::Rejected { .. } => &mut self.rejected,
            ApplyOutcome::DeadLetter(_) => &mut self.dead_lettered,
            ApplyOutcome::Duplicate(_) => {
                if !possible_duplicate {
                    self.duplicates_unflagged = self.duplicates_unflagged.saturating_add(1);
                }
                &mut self.duplicates
            }
        };
        *slot = slot.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_round_trip_and_read() {
        for reason in [
            DeadLetterReason::UnknownRegion,
            DeadLetterReason::ValueRejected,
            DeadLetterReason::StoreFull,
        ] {
            assert_eq!(DeadLetterReason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(DeadLetterReason::UnknownRegion.code(), 1);
        assert_eq!(DeadLetterReason::ValueRejected.code(), 2);
        assert_eq!(DeadLetterReason::StoreFull.code(), 3);
        for code in [0, 4, 255] {
            assert_eq!(DeadLetterReason::from_code(code), None);
        }
        assert_eq!(DeadLetterReason::StoreFull.to_string(), "store full");
        assert_eq!(
            DeadLetterReason::UnknownRegion.to_string(),
            "unknown region"
        );
        assert_eq!(
            DeadLetterReason::ValueRejected.to_string(),
            "value rejected"
        );
    }

    #[test]
    fn store_errors_map_to_reasons() {
        let full = StoreError::Full { entries_max: 1 };
        let streams = StoreError::StreamsFull { streams_max: 1 };
        assert_eq!(dead_letter_reason(&full), DeadLetterReason::StoreFull);
        assert_eq!(dead_letter_reason(&streams), DeadLetterReason::StoreFull);
        for e in [
            StoreError::KeyTooLong(1),
            StoreError::ValueTooLong(1),
            StoreError::UnexpectedValue(strait_queue::record::Op::Destroy, 1),
            StoreError::NoEntryToStamp,
        ] {
            assert_eq!(dead_letter_reason(&e), DeadLetterReason::ValueRejected);
        }
    }

    #[test]
    fn counts_keep_unflagged_duplicates_apart_and_saturate() {
        let mut c = ApplyCounts::default();
        let dup = ApplyOutcome::Duplicate(Duplicate::Seen { last_applied: 3 });
        c.count(&dup, true);
        c.count(&dup, false);
        c.count(
            &ApplyOutcome::Applied {
                rule: ApplyRule::NewEntry,
            },
            true,
        );
        c.count(
            &ApplyOutcome::DeadLetter(StoreError::Full { entries_max: 1 }.into()),
            false,
        );
        let unknown = DeadLetterCause::UnknownRegion {
            region: RegionId(4),
        };
        assert_eq!(unknown.reason(), DeadLetterReason::UnknownRegion);
        assert_eq!(
            unknown.to_string(),
            "region 4 of the sending site is not a region of this site"
        );
        c.count(&ApplyOutcome::DeadLetter(unknown), true);
        assert_eq!(
            c,
            ApplyCounts {
                applied: 1,
                duplicates: 2,
                duplicates_unflagged: 1,
                rejected: 0,
                dead_lettered: 2
            }
        );
        let mut full = ApplyCounts {
            applied: u32::MAX,
            ..ApplyCounts::default()
        };
        full.count(
            &ApplyOutcome::Applied {
                rule: ApplyRule::NewEntry,
            },
            false,
        );
        assert_eq!(full.applied, u32::MAX);
    }
}
