//! Segment files: a 64-byte header, then records back to back, then zeros.
//!
//! The header names the queue the segment belongs to, its place in that queue's chain and
//! the sequence number of its first record; the end of the header holds the queue's
//! acknowledged position, rewritten in place. Format version 2 keeps it in two [`AckSlot`]s,
//! written in turn, so that a write cut short (a process killed between two stores) leaves
//! the other slot's position; each slot also names the offset of the first record after that
//! position. Bytes before that offset are never read again, so a sync need not write them
//! back ([`ack_offset_of`]). [`scan`] walks the records of one segment
//! from [`scan_start`] and tells a clean end from a torn tail and from corruption in the
//! middle.

use crate::ids::{QueueId, Seq};
use crate::record::{self, DecodeError};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Bytes of the segment header; the first record starts here.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// The segment format version this build writes. Version 2 replaced the one ack slot with
/// two [`AckSlot`]s, each with an offset; version 1 segments are read as before, from their
/// first record. Version 3 changed commit journal segments only: each entry's check covers
/// the segment's `segment_seq`, so that a journal segment file can be used again
/// ([`SEGMENT_FLAG_RECYCLED`], [`crate::journal`]); a version 3 queue segment is laid out as
/// a version 2 one.
pub const SEGMENT_VERSION: u16 = 3;
/// The oldest segment format version this build reads.
pub const SEGMENT_VERSION_MIN: u16 = 1;
/// Identifies a Strait segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"STRAITSG";
/// Header flag: the segment belongs to a persistent queue and survives a restart.
pub const SEGMENT_FLAG_PERSISTENT: u16 = 1;
/// Header flag (version 3, commit journal segments): the file held an earlier journal
/// segment, whose bytes may follow this one's entries ([`crate::journal::scan`]).
pub const SEGMENT_FLAG_RECYCLED: u16 = 2;

/// The segment header.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct SegmentHeader {
    pub magic: [u8; 8],
    pub version: U16,
    pub header_bytes: U16,
    pub queue: U16,
    pub flags: U16,
    /// Position of this segment in its queue's chain, from 1.
    pub segment_seq: U64,
    /// Sequence number of the first record.
    pub first_seq: U64,
    /// The file's size when it was created.
    pub capacity: U32,
    /// CRC-32 of bytes 0..36.
    pub header_crc: U32,
    /// Version 2: two [`AckSlot`]s. Version 1: the acknowledged position (u64), the CRC-32
    /// of bytes 36..48 (the header CRC and the position), 12 reserved bytes.
    pub ack: [AckSlot; 2],
}

/// A version 2 ack slot: the queue's acknowledged position when the slot was last written,
/// and where the records after it start in this segment. Written in turn with the other
/// slot ([`write_ack`]); the valid slot with the later position counts.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct AckSlot {
    /// Records of this segment acknowledged: the position is `first_seq - 1` plus this.
    pub acked_here: U32,
    /// The offset of the first record after the position (the end of the records when all
    /// are acknowledged).
    pub offset: U32,
    /// CRC-32 of the header CRC (bytes 36..40) and this slot's first 8 bytes, tying the slot
    /// to this header.
    pub crc: U32,
}

const _: () = assert!(size_of::<SegmentHeader>() == SEGMENT_HEADER_BYTES);

/// A version 1 header's ack slot CRC: CRC-32 of bytes 36..48 (the header CRC and the
/// position).
fn v1_ack_crc(header: &[u8]) -> [u8; 4] {
    crc32fast::hash(&header[36..48]).to_le_bytes()
}

/// What a valid segment header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub queue: QueueId,
    pub persistent: bool,
    pub segment_seq: u64,
    pub first_seq: Seq,
    pub capacity: u32,
    /// `None` when the ack slot was never written or does not check out.
    pub acked: Option<Seq>,
    /// Where the first record after `acked` lies; `None` with `acked`, in a version 1
    /// segment, or when the offset lies outside the segment.
    pub ack_offset: Option<u32>,
}

/// Why a segment header is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("file is shorter than a segment header ({0} bytes)")]
    Short(usize),
    #[error("the header is all zeros: a segment that was never assigned to a queue")]
    Blank,
    #[error("not a Strait segment (magic {0:02x?})")]
    Magic([u8; 8]),
    #[error("segment format version {0} is newer than this build reads (up to {SEGMENT_VERSION})")]
    NewerVersion(u16),
    #[error("segment format version {0} does not exist (versions start at {SEGMENT_VERSION_MIN})")]
    BadVersion(u16),
    #[error("segment header CRC mismatch")]
    Crc,
    #[error("segment header is inconsistent: {0}")]
    Invalid(&'static str),
}

/// Writes a fresh header at the start of `buf`.
pub fn write_header(buf: &mut [u8], info: &SegmentInfo) {
    write_header_with_flags(buf, info, 0);
}

/// Writes a fresh header at the start of `buf` with `flags` besides
/// [`SEGMENT_FLAG_PERSISTENT`] (which `info` decides).
pub fn write_header_with_flags(buf: &mut [u8], info: &SegmentInfo, flags: u16) {
    let mut h = SegmentHeader {
        magic: SEGMENT_MAGIC,
        version: U16::new(SEGMENT_VERSION),
        header_bytes: U16::new(SEGMENT_HEADER_BYTES as u16),
        queue: U16::new(info.queue.0),
        flags: U16::new(
            flags
                | if info.persistent {
                    SEGMENT_FLAG_PERSISTENT
                } else {
                    0
                },
        ),
        segment_seq: U64::new(info.segment_seq),
        first_seq: U64::new(info.first_seq.0),
        capacity: U32::new(info.capacity),
        header_crc: U32::new(0),
        ack: [AckSlot::new_zeroed(); 2],
    };
    h.header_crc = U32::new(crc32fast::hash(&h.as_bytes()[..36]));
    buf[..SEGMENT_HEADER_BYTES].copy_from_slice(h.as_bytes());
    if let Some(acked) = info.acked {
        let offset = info.ack_offset.unwrap_or(SEGMENT_HEADER_BYTES as u32);
        write_ack(buf, acked, offset);
    }
}

impl AckSlot {
    fn crc_of(header_crc: &[u8], acked_here: u32, offset: u32) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(header_crc);
        h.update(&acked_here.to_le_bytes());
        h.update(&offset.to_le_bytes());
        h.finalize()
    }

    /// `(acked_here, offset)` when the slot checks out against `header_crc` (bytes 36..40).
    fn read(&self, header_crc: &[u8]) -> Option<(u32, u32)> {
        let (a, o) = (self.acked_here.get(), self.offset.get());
        (Self::crc_of(header_crc, a, o) == self.crc.get()).then_some((a, o))
    }
}

/// The valid slot of a version 2 header with the later position: its index, records
/// acknowledged here and offset. A slot whose offset lies outside the segment cannot be
/// right and counts as torn.
fn latest_slot(header: &SegmentHeader) -> Option<(usize, u32, u32)> {
    let hc = header.header_crc.as_bytes();
    let inside = |o: u32| o as usize >= SEGMENT_HEADER_BYTES && o <= header.capacity.get();
    header
        .ack
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.read(hc).map(|(a, o)| (i, a, o)))
        .filter(|&(_, _, o)| inside(o))
        .max_by_key(|&(i, a, o)| (a, o, std::cmp::Reverse(i)))
}

/// Records in the header at the start of `buf` that every record before `offset` is
/// acknowledged (`acked` is the last of them), and that the record at `offset`, if any, is
/// `acked + 1`. Writes only the slot not holding the latest position, so that a write cut
/// short, whichever of its bytes landed, leaves the other slot, and with it the position
/// before this one. A position
/// before the segment's first record (a new segment behind unacknowledged ones) says
/// nothing about it and writes nothing.
///
/// A version 1 header (a segment written by an older build, still being drained) gets its
/// one version 1 slot, without the offset: version 2 slots there would read as a version 1
/// position far past every record.
pub fn write_ack(buf: &mut [u8], acked: Seq, offset: u32) {
    let Ok((h, _)) = SegmentHeader::ref_from_prefix(buf) else {
        return;
    };
    if h.version.get() < 2 {
        buf[40..48].copy_from_slice(&acked.0.to_le_bytes());
        let crc = v1_ack_crc(buf);
        buf[48..52].copy_from_slice(&crc);
        return;
    }
    let Some(acked_here) = (acked.0 + 1)
        .checked_sub(h.first_seq.get())
        .and_then(|n| u32::try_from(n).ok())
    else {
        return;
    };
    let target = match latest_slot(h) {
        Some((latest, ..)) => 1 - latest,
        None => 0,
    };
    let slot = AckSlot {
        acked_here: U32::new(acked_here),
        offset: U32::new(offset),
        crc: U32::new(AckSlot::crc_of(h.header_crc.as_bytes(), acked_here, offset)),
    };
    if let Ok((h, _)) = SegmentHeader::mut_from_prefix(buf) {
        h.ack[target] = slot;
    }
}

/// The offset from which a sync of the segment starting with `header` must write its bytes
/// back (besides the header itself): the ack slot's offset when it checks out, else the
/// header's end. Bytes between the two hold only acknowledged records, which recovery never
/// reads ([`scan_start`]), so they may stay unwritten. Reading a slot that a shard is
/// rewriting at the same moment may fail its CRC, which only means writing more back.
pub fn ack_offset_of(header: &[u8]) -> usize {
    match read_header(header) {
        Ok(info) => info.ack_offset.map_or(SEGMENT_HEADER_BYTES, |o| o as usize),
        Err(_) => SEGMENT_HEADER_BYTES,
    }
}

/// Where recovery starts walking a segment of `len` bytes, and the sequence number expected
/// there: at the ack slot's offset (the records before it are acknowledged, and a sync may
/// never have written them back), or at the first record.
pub fn scan_start(info: &SegmentInfo, len: usize) -> (usize, Seq) {
    match (info.acked, info.ack_offset) {
        (Some(acked), Some(offset))
            if offset as usize > SEGMENT_HEADER_BYTES && offset as usize <= len =>
        {
            (offset as usize, acked.next())
        }
        _ => (SEGMENT_HEADER_BYTES, info.first_seq),
    }
}

/// Reads and checks the header at the start of `buf`.
pub fn read_header(buf: &[u8]) -> Result<SegmentInfo, HeaderError> {
    let Ok((h, _)) = SegmentHeader::ref_from_prefix(buf) else {
        return Err(HeaderError::Short(buf.len()));
    };
    if h.magic != SEGMENT_MAGIC {
        if h.as_bytes().iter().all(|&b| b == 0) {
            return Err(HeaderError::Blank);
        }
        return Err(HeaderError::Magic(h.magic));
    }
    if h.version.get() > SEGMENT_VERSION {
        return Err(HeaderError::NewerVersion(h.version.get()));
    }
    if h.version.get() < SEGMENT_VERSION_MIN {
        return Err(HeaderError::BadVersion(h.version.get()));
    }
    if crc32fast::hash(&h.as_bytes()[..36]) != h.header_crc.get() {
        return Err(HeaderError::Crc);
    }
    if h.first_seq.get() == 0 {
        return Err(HeaderError::Invalid("first sequence number is 0"));
    }
    if h.segment_seq.get() == 0 {
        return Err(HeaderError::Invalid("segment sequence number is 0"));
    }
    // Recovery numbers the queue's next segment after the last one, and the next record
    // after the last: a header at the very end of either range cannot be followed (found by
    // `strait-fuzz segment`; `fuzz/regressions/segment/`).
    if h.segment_seq.get() == u64::MAX {
        return Err(HeaderError::Invalid(
            "segment sequence number has no successor",
        ));
    }
    if h.first_seq.get() == u64::MAX {
        return Err(HeaderError::Invalid(
            "first sequence number has no successor",
        ));
    }
    let (acked, ack_offset) = if h.version.get() >= 2 {
        let position = latest_slot(h).and_then(|(_, here, offset)| {
            let acked = (h.first_seq.get() - 1).checked_add(u64::from(here))?;
            Some((Seq(acked), offset))
        });
        (position.map(|p| p.0), position.map(|p| p.1))
    } else {
        let bytes = h.as_bytes();
        let ok = v1_ack_crc(bytes) == bytes[48..52];
        let seq = u64::from_le_bytes(bytes[40..48].try_into().expect("8 bytes"));
        (ok.then_some(Seq(seq)), None)
    };
    Ok(SegmentInfo {
        queue: QueueId(h.queue.get()),
        persistent: h.flags.get() & SEGMENT_FLAG_PERSISTENT != 0,
        segment_seq: h.segment_seq.get(),
        first_seq: Seq(h.first_seq.get()),
        capacity: h.capacity.get(),
        acked,
        ack_offset,
    })
}

/// Why the walk over a segment's records stopped before its end.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error(transparent)]
    Decode(DecodeError),
    #[error("valid record with sequence number {found} where {expected} was expected")]
    OutOfSequence { expected: Seq, found: Seq },
    /// Records in a segment whose header is all zeros.
    #[error("the segment's header was never written back, so nothing in it was ever synced")]
    UnwrittenHeader,
    /// A commit journal entry that does not check out.
    #[error("{0}")]
    Journal(String),
}

/// How the records of a segment end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// The records end exactly at the segment's end, or only zeros follow them.
    Clean,
    /// Bytes that are not a valid record follow the last record and no valid record comes
    /// after them: a write cut short by a crash. `garbage_end` is one past the last non-zero
    /// byte.
    Torn {
        offset: usize,
        garbage_end: usize,
        error: BadRecord,
    },
    /// A bad record with valid records after it: damage in the middle. Bytes
    /// `offset..quarantine_end` are kept aside; `records_after` valid records lie in them, the
    /// last with sequence number `last_seq_after`.
    Corrupt {
        offset: usize,
        quarantine_end: usize,
        error: BadRecord,
        records_after: u64,
        last_seq_after: Option<Seq>,
    },
}

/// The outcome of walking one segment's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Valid, in-sequence records, superseded ones included.
    pub records: u64,
    /// Of those, the ones not superseded, and their bytes.
    pub live_records: u64,
    pub live_bytes: u64,
    /// Sequence number of the last valid record, if any.
    pub last_seq: Option<Seq>,
    /// Offset just past the last valid record.
    pub end: usize,
    pub tail: Tail,
}

/// Walks the records of `data` from `start`, expecting consecutive sequence numbers from
/// `first_seq`. Every record's CRC is checked.
pub fn scan(data: &[u8], start: usize, first_seq: Seq) -> Scan {
    let mut at = start;
    let mut expect = first_seq;
    let mut scan = Scan {
        records: 0,
        live_records: 0,
        live_bytes: 0,
        last_seq: None,
        end: start,
        tail: Tail::Clean,
    };
    while at < data.len() {
        let rest = &data[at..];
        let error = match record::decode(rest) {
            Ok(rec) if rec.seq() == expect => {
                scan.records += 1;
                if !rec.is_superseded() {
                    scan.live_records += 1;
                    scan.live_bytes += rec.len() as u64;
                }
                scan.last_seq = Some(expect);
                expect = expect.next();
                at += rec.len();
                scan.end = at;
                continue;
            }
            Ok(rec) => BadRecord::OutOfSequence {
                expected: expect,
                found: rec.seq(),
            },
            Err(e) => BadRecord::Decode(e),
        };
        // Not a valid next record. Zeros to the end are the clean, preallocated remainder.
        let garbage_end = match rest.iter().rposition(|&b| b != 0) {
            None => break,
            Some(i) => at + i + 1,
        };
        let found = resync(data, at + 1, garbage_end, expect);
        scan.tail = match found {
            None => Tail::Torn {
                offset: at,
                garbage_end,
                error,
            },
            Some((quarantine_end, records_after, last_seq_after)) => Tail::Corrupt {
                offset: at,
                quarantine_end,
                error,
                records_after,
                last_seq_after,
            },
        };
        break;
    }
    scan
}

/// Looks for valid records starting in `data[from..to]` (a record may run past `to`: its last
/// bytes may be zeros) whose sequence numbers are at least `min_seq`. Returns the end of the
/// last one found, how many were found and the highest sequence number.
fn resync(data: &[u8], from: usize, to: usize, min_seq: Seq) -> Option<(usize, u64, Option<Seq>)> {
    let mut found = 0u64;
    let mut last_end = 0usize;
    let mut last_seq = None;
    let mut at = from;
    while at < to && at + record::HEADER_BYTES <= data.len() {
        // Cheap filter before a full decode: version and operation bytes.
        let plausible = (record::FORMAT_VERSION_MIN..=record::FORMAT_VERSION)
            .contains(&data[at + 4])
            && (1..=4).contains(&data[at + 5]);
        if plausible
            && let Ok(rec) = record::decode(&data[at..])
            && rec.seq() >= min_seq
        {
            found += 1;
            last_end = at + rec.len();
            last_seq = Some(last_seq.map_or(rec.seq(), |s: Seq| s.max(rec.seq())));
            at += rec.len();
            continue;
        }
        at += 1;
    }
    (found > 0).then_some((last_end, found, last_seq))
}
