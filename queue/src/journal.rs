//! The commit journal: one sequential log for all the queues of a sender on a shard.
//!
//! A parallel sender keeps a queue, and so a tail segment, per bucket. Under `every-batch`
//! each group commit would have to write back every segment appended to since the last one,
//! one disk request per file (about 25 per commit in `strait-bench e2e`, 7.6–9.1 ms each on
//! this project's test machine; docs/benchmarks.md). With a journal, every record appended to
//! a bucket segment is also appended to the journal, and a commit makes only the journal
//! durable: one file, one contiguous write. The bucket segments are made durable later, by a
//! *checkpoint* (at most every [`crate::queue::JOURNAL_CHECKPOINT_MS`], or when sealed
//! journal segments wait to be reclaimed); a journal segment is deleted once a checkpoint
//! that started after its last entry has completed. Recovery replays the journal into the
//! queues wherever their segments stop short of it.
//!
//! A journal segment is a segment file whose header names [`JOURNAL_QUEUE`] (no queue can
//! have that id: queue ids run below `queue_count`, a `u16`). After the header come entries
//! back to back: an 8-byte prefix (the queue id, [`ENTRY_MAGIC`], and a CRC-32 tying the two
//! to the record's own CRC and, from segment version 3, to the segment's `segment_seq`), then
//! the record exactly as it lies in the queue's segment. Eight zero bytes follow the last
//! entry (version 3) and end the entries.
//!
//! A journal segment freed by a checkpoint may be *recycled*: given a new header (flag
//! [`SEGMENT_FLAG_RECYCLED`] and the next `segment_seq`), made durable before any entry goes
//! into it, and filled again over its old bytes. Those old entries fail the new header's
//! check (their CRCs cover the old `segment_seq`), and the zero prefix after the last new
//! entry tells where the new ones end; in a segment that was never recycled, zeros follow to
//! the end, and anything else after the zero prefix is a write cut short.

use crate::ids::QueueId;
use crate::record;
use crate::segment::{SEGMENT_FLAG_RECYCLED, SEGMENT_HEADER_BYTES, SegmentHeader};
use zerocopy::FromBytes;

/// The queue id a journal segment's header carries.
pub const JOURNAL_QUEUE: QueueId = QueueId(u16::MAX);
/// Bytes of an entry's prefix.
pub const ENTRY_PREFIX_BYTES: usize = 8;
/// Marks an entry prefix ("JL").
pub const ENTRY_MAGIC: u16 = 0x4a4c;

/// The bytes an entry for a record of `record_len` bytes takes.
pub fn entry_len(record_len: usize) -> usize {
    ENTRY_PREFIX_BYTES + record_len
}

/// The entry prefix's CRC. `generation` is the segment's `segment_seq` (version 3), `None`
/// in a version 1 or 2 segment.
fn prefix_crc(queue: u16, record_crc: [u8; 4], generation: Option<u64>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&queue.to_le_bytes());
    h.update(&ENTRY_MAGIC.to_le_bytes());
    h.update(&record_crc);
    if let Some(g) = generation {
        h.update(&g.to_le_bytes());
    }
    h.finalize()
}

/// Writes an entry for `record` (a whole, sealed record) at the start of `dst`, which holds
/// at least [`entry_len`] bytes, for the journal segment whose `segment_seq` is
/// `generation`; then, where `dst` has room, the zero prefix that ends the entries.
pub fn write_entry(dst: &mut [u8], queue: QueueId, record: &[u8], generation: u64) {
    let crc = prefix_crc(
        queue.0,
        record[..4].try_into().expect("a record has a CRC"),
        Some(generation),
    );
    dst[..2].copy_from_slice(&queue.0.to_le_bytes());
    dst[2..4].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
    dst[4..8].copy_from_slice(&crc.to_le_bytes());
    let end = entry_len(record.len());
    dst[ENTRY_PREFIX_BYTES..end].copy_from_slice(record);
    end_entries(&mut dst[end..]);
}

/// Writes the zero prefix that ends a journal segment's entries at the start of `dst`, as
/// much of it as fits.
pub fn end_entries(dst: &mut [u8]) {
    let n = dst.len().min(ENTRY_PREFIX_BYTES);
    dst[..n].fill(0);
}

/// One valid entry of a journal segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub queue: QueueId,
    /// Offset of the record (after the prefix) in the segment.
    pub record_at: usize,
    pub record_len: usize,
}

/// The outcome of walking one journal segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalScan {
    pub entries: Vec<Entry>,
    /// Where the entries stop before a clean end (only zeros after the last entry), and why:
    /// a write cut short. Nothing after it was ever confirmed durable, in this segment or a
    /// later one.
    pub torn: Option<(usize, String)>,
}

/// Walks the entries of a journal segment (header included in `data`; the caller has checked
/// it). Every record's CRC and every prefix's CRC is checked.
pub fn scan(data: &[u8]) -> JournalScan {
    let mut out = JournalScan {
        entries: Vec::new(),
        torn: None,
    };
    let (generation, recycled) = match SegmentHeader::ref_from_prefix(data) {
        Ok((h, _)) if h.version.get() >= 3 => (
            Some(h.segment_seq.get()),
            h.flags.get() & SEGMENT_FLAG_RECYCLED != 0,
        ),
        _ => (None, false),
    };
    let mut at = SEGMENT_HEADER_BYTES;
    while at < data.len() {
        let rest = &data[at..];
        if rest.len() < ENTRY_PREFIX_BYTES + 4 || rest[..ENTRY_PREFIX_BYTES] == [0; 8] {
            // In a recycled segment, an earlier use's bytes follow.
            if !recycled && rest.iter().any(|&b| b != 0) {
                out.torn = Some((at, "bytes after the last entry are not zeros".into()));
            }
            return out;
        }
        let queue = u16::from_le_bytes([rest[0], rest[1]]);
        let magic = u16::from_le_bytes([rest[2], rest[3]]);
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let record_crc: [u8; 4] = rest[8..12].try_into().expect("4 bytes");
        if magic != ENTRY_MAGIC || crc != prefix_crc(queue, record_crc, generation) {
            // In a recycled segment this is the end of the entries: an earlier use's bytes
            // whose zero prefix was not written back, or an entry cut short. Either way no
            // commit covered anything from here on in this segment, and no torn tail is
            // reported: that would stop recovery from reading later segments, whose entries
            // may have been committed while this one was readied but never used (its header
            // durable, its zero prefix torn off by a power loss).
            if !recycled {
                out.torn = Some((at, "entry prefix does not check out".into()));
            }
            return out;
        }
        match record::decode(&rest[ENTRY_PREFIX_BYTES..]) {
            Ok(rec) => {
                out.entries.push(Entry {
                    queue: QueueId(queue),
                    record_at: at + ENTRY_PREFIX_BYTES,
                    record_len: rec.len(),
                });
                at += entry_len(rec.len());
            }
            Err(e) => {
                out.torn = Some((at, format!("entry's record is damaged: {e}")));
                return out;
            }
        }
    }
    out
}
