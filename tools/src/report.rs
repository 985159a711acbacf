//! What a segment's header and its records say, as recovery sees them
//! ([`segment::read_header`] and [`segment::scan`]), ready to print or serialize.

use serde::Serialize;
use std::fmt;
use strait_queue::journal;
use strait_queue::segment::{self, HeaderError, SEGMENT_HEADER_BYTES, Scan, SegmentInfo, Tail};

/// A valid segment header.
#[derive(Debug, Serialize)]
pub struct HeaderReport {
    pub version: u16,
    pub queue: u16,
    pub persistent: bool,
    pub segment_seq: u64,
    pub first_seq: u64,
    pub capacity: u32,
    /// The acknowledged position in the ack slot; `None` when never written or damaged.
    pub ack: Option<u64>,
    /// Where the first record after `ack` lies (format version 2), and where the scan
    /// starts: the records before it are acknowledged and need not have been written back.
    pub ack_offset: Option<u32>,
    /// A commit journal segment whose file held an earlier one (format version 3,
    /// `SEGMENT_FLAG_RECYCLED`): that one's bytes may follow the entries.
    pub recycled: bool,
}

impl HeaderReport {
    fn new(data: &[u8], info: &SegmentInfo) -> HeaderReport {
        HeaderReport {
            // `read_header` accepted the header, so the version field is there.
            version: u16::from_le_bytes([data[8], data[9]]),
            queue: info.queue.get(),
            persistent: info.persistent,
            segment_seq: info.segment_seq,
            first_seq: info.first_seq.get(),
            capacity: info.capacity,
            ack: info.acked.map(|s| s.get()),
            ack_offset: info.ack_offset,
            recycled: u16::from_le_bytes([data[14], data[15]]) & segment::SEGMENT_FLAG_RECYCLED
                != 0,
        }
    }
}

impl fmt::Display for HeaderReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "version={} queue={} persistent={} segment_seq={} first_seq={} capacity={} ack={} ack_offset={} recycled={}",
            self.version,
            self.queue,
            self.persistent,
            self.segment_seq,
            self.first_seq,
            self.capacity,
            self.ack.map_or("none".to_string(), |a| a.to_string()),
            self.ack_offset
                .map_or("none".to_string(), |a| a.to_string()),
            self.recycled,
        )
    }
}

/// How a segment's records end.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum TailReport {
    /// Only zeros (or nothing) after the last record.
    Clean,
    /// Bytes `offset..garbage_end` are not a record and no valid record follows.
    Torn {
        offset: usize,
        garbage_end: usize,
        error: String,
    },
    /// A bad record at `offset` with valid records after it, up to `quarantine_end`.
    Corrupt {
        offset: usize,
        quarantine_end: usize,
        error: String,
        records_after: u64,
        last_seq_after: Option<u64>,
    },
}

impl TailReport {
    pub fn is_clean(&self) -> bool {
        matches!(self, TailReport::Clean)
    }
}

impl From<&Tail> for TailReport {
    fn from(tail: &Tail) -> TailReport {
        match tail {
            Tail::Clean => TailReport::Clean,
            Tail::Torn {
                offset,
                garbage_end,
                error,
            } => TailReport::Torn {
                offset: *offset,
                garbage_end: *garbage_end,
                error: error.to_string(),
            },
            Tail::Corrupt {
                offset,
                quarantine_end,
                error,
                records_after,
                last_seq_after,
            } => TailReport::Corrupt {
                offset: *offset,
                quarantine_end: *quarantine_end,
                error: error.to_string(),
                records_after: *records_after,
                last_seq_after: last_seq_after.map(|s| s.get()),
            },
        }
    }
}

impl fmt::Display for TailReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TailReport::Clean => f.write_str("clean"),
            TailReport::Torn {
                offset,
                garbage_end,
                error,
            } => write!(
                f,
                "torn at offset {offset}: bytes {offset}..{garbage_end} are not a valid record \
                 and no valid record follows ({error}); recovery clears them"
            ),
            TailReport::Corrupt {
                offset,
                quarantine_end,
                error,
                records_after,
                last_seq_after,
            } => write!(
                f,
                "corrupt at offset {offset} ({error}): {records_after} valid record(s) follow \
                 up to offset {quarantine_end} (last seq {}); recovery moves bytes \
                 {offset}..{quarantine_end} to quarantine/ and seals the segment",
                last_seq_after.map_or("none".to_string(), |s| s.to_string()),
            ),
        }
    }
}

/// The outcome of [`segment::scan`] over a segment's records.
#[derive(Debug, Serialize)]
pub struct ScanReport {
    pub records: u64,
    pub live_records: u64,
    pub live_bytes: u64,
    pub last_seq: Option<u64>,
    /// Offset just past the last valid record.
    pub end: usize,
    pub tail: TailReport,
}

impl From<&Scan> for ScanReport {
    fn from(scan: &Scan) -> ScanReport {
        ScanReport {
            records: scan.records,
            live_records: scan.live_records,
            live_bytes: scan.live_bytes,
            last_seq: scan.last_seq.map(|s| s.get()),
            end: scan.end,
            tail: TailReport::from(&scan.tail),
        }
    }
}

impl fmt::Display for ScanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "last_seq={} records={} live_records={} live_bytes={} end={}",
            self.last_seq.map_or("none".to_string(), |s| s.to_string()),
            self.records,
            self.live_records,
            self.live_bytes,
            self.end,
        )
    }
}

/// Reads the header of `data` and walks its records exactly as recovery does: a queue's
/// records, or a commit journal's entries (its header names queue 65535).
pub fn check(data: &[u8]) -> Result<(HeaderReport, ScanReport), HeaderError> {
    let info = segment::read_header(data)?;
    let scan = if info.queue == journal::JOURNAL_QUEUE {
        journal_scan(data)
    } else {
        let (start, first) = segment::scan_start(&info, data.len());
        ScanReport::from(&segment::scan(data, start, first))
    };
    Ok((HeaderReport::new(data, &info), scan))
}

/// A journal's entries as a scan: each entry's record counts (`last_seq` is not one queue's).
fn journal_scan(data: &[u8]) -> ScanReport {
    let scan = journal::scan(data);
    let end = scan
        .entries
        .last()
        .map_or(SEGMENT_HEADER_BYTES, |e| e.record_at + e.record_len);
    ScanReport {
        records: scan.entries.len() as u64,
        live_records: scan.entries.len() as u64,
        live_bytes: scan.entries.iter().map(|e| e.record_len as u64).sum(),
        last_seq: None,
        end,
        tail: match scan.torn {
            None => TailReport::Clean,
            Some((offset, error)) => TailReport::Torn {
                offset,
                garbage_end: data.iter().rposition(|&b| b != 0).map_or(offset, |i| i + 1),
                error,
            },
        },
    }
}
