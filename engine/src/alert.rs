//! Geode's `alert-threshold`: how long an event may wait in a gateway sender's queue before the
//! sender says so.
//!
//! | type or function | what it is |
//! |---|---|
//! | [`batch_ages`] | how many records of a batch waited longer than the threshold, and the longest wait ([`Ages`]) |
//! | [`AlertLog`] | per dispatcher: totals, and when the next warning may be logged (at most one per [`ALERT_LOG_INTERVAL_MS`]) |
//!
//! An event's wait is measured when its batch is sent, from its version timestamp: the time of
//! the write at its origin site (a forwarded event counts the time it spent upstream too, and
//! a clock ahead at the origin shortens it). Geode measures from the event's creation in the
//! local queue and logs one warning per late event; Strait counts every late event and logs a
//! summary at most every [`ALERT_LOG_INTERVAL_MS`], so a backlog cannot flood the log.

use strait_queue::record;

/// The least time between two alert warnings of one dispatcher.
pub const ALERT_LOG_INTERVAL_MS: u64 = 10_000;

/// Late records of one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ages {
    /// Records that waited longer than the threshold.
    pub late: u64,
    /// The longest wait among the batch's records, in milliseconds.
    pub longest_ms: u64,
}

/// The ages of the records in `records` (whole records, as a queue holds them) at `now_us`,
/// against `threshold_ms`; a threshold of 0 is off and finds nothing late. Bytes that do not
/// parse as a record end the scan: the queue checked them when they were written.
pub fn batch_ages(records: &[u8], now_us: u64, threshold_ms: u32) -> Ages {
    let mut ages = Ages::default();
    if threshold_ms == 0 {
        return ages;
    }
    let mut at = 0;
    while at < records.len() {
        let Ok((header, len)) = record::check_header(&records[at..]) else {
            break;
        };
        let waited_ms = now_us.saturating_sub(header.timestamp_us.get()) / 1000;
        ages.longest_ms = ages.longest_ms.max(waited_ms);
        if waited_ms > u64::from(threshold_ms) {
            ages.late += 1;
        }
        at += len;
    }
    ages
}

/// One dispatcher's alert state.
#[derive(Debug, Default)]
pub struct AlertLog {
    /// Late events since the start.
    pub late_total: u64,
    /// Late events since the last warning.
    pending: u64,
    /// The longest wait since the last warning.
    pending_longest_ms: u64,
    next_log_ms: u64,
}

impl AlertLog {
    /// Takes one batch's ages at `now_ms`; returns the warning to log now, if one is due:
    /// (late events since the last warning, the longest wait among them).
    pub fn observe(&mut self, ages: Ages, now_ms: u64) -> Option<Ages> {
        if ages.late == 0 {
            return None;
        }
        self.late_total += ages.late;
        self.pending += ages.late;
        self.pending_longest_ms = self.pending_longest_ms.max(ages.longest_ms);
        if now_ms < self.next_log_ms {
            return None;
        }
        self.next_log_ms = now_ms + ALERT_LOG_INTERVAL_MS;
        let due = Ages {
            late: self.pending,
            longest_ms: self.pending_longest_ms,
        };
        self.pending = 0;
        self.pending_longest_ms = 0;
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_queue::ids::VersionTag;
    use strait_queue::ids::{BucketId, EventId, MemberId, RegionId, Seq, SiteId, StreamId};
    use strait_queue::record::{Event, Op};

    fn records(timestamps_us: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &t) in timestamps_us.iter().enumerate() {
            let event = Event {
                op: Op::Create,
                region: RegionId(0),
                bucket: BucketId(0),
                id: EventId {
                    origin_site: SiteId(1),
                    origin_member: MemberId(1),
                    stream: StreamId(0),
                    seq: i as u64 + 1,
                },
                version: VersionTag {
                    timestamp_us: t,
                    site: SiteId(1),
                },
                recipients: &[SiteId(2)],
                key: b"k",
                value: b"v",
            };
            let len = record::encoded_len(&event).unwrap();
            let at = out.len();
            out.resize(at + len, 0);
            record::encode_into(&mut out[at..], &event, Seq(i as u64 + 1));
        }
        out
    }

    #[test]
    fn counts_the_records_older_than_the_threshold() {
        let now = 100_000_000;
        let batch = records(&[now - 5_000_000, now - 1_500_000, now - 999_000, now]);
        assert_eq!(
            batch_ages(&batch, now, 1000),
            Ages {
                late: 2,
                longest_ms: 5000
            }
        );
        assert_eq!(batch_ages(&batch, now, 0), Ages::default(), "0 is off");
        assert_eq!(batch_ages(&batch, now, 10_000).late, 0);
    }

    #[test]
    fn a_clock_behind_the_writer_counts_as_no_wait() {
        let batch = records(&[2_000_000]);
        assert_eq!(batch_ages(&batch, 1_000_000, 1).longest_ms, 0);
    }

    #[test]
    fn warnings_are_summed_and_spaced() {
        let mut log = AlertLog::default();
        let late = |n, ms| Ages {
            late: n,
            longest_ms: ms,
        };
        assert_eq!(log.observe(late(0, 10), 0), None);
        assert_eq!(log.observe(late(3, 2000), 5), Some(late(3, 2000)));
        assert_eq!(log.observe(late(2, 4000), 6), None);
        assert_eq!(log.observe(late(1, 100), 9_000), None);
        assert_eq!(
            log.observe(late(1, 100), 5 + ALERT_LOG_INTERVAL_MS),
            Some(late(4, 4000))
        );
        assert_eq!(log.late_total, 7);
    }
}
