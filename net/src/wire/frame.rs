//! The frame codec of the WAN link, protocol version 1 (`docs/wan.md` "Frames",
//! `docs/formats.md` "Wire frames, protocol version 1").
//!
//! Every frame is a 16-byte [`FrameHeader`] and a body of `body_len` bytes. [`decode_frame`]
//! looks at the front of a read buffer and returns a [`Frame`] borrowing from it, `None` when
//! the buffer ends inside a frame, or a [`FrameError`] naming what the peer got wrong.
//! Encoders append to any `BufMut + AsMut<[u8]>` (`Vec<u8>`, `BytesMut`); a batch's records are
//! written by the caller straight from the queue's slices after [`batch_prefix`].

use std::borrow::Cow;
use std::fmt;

use bytes::BufMut;
use strait_queue::ids::{RegionId, SiteId};
use strait_queue::record::{self, DecodeError, Record};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{BatchId, PingNonce};

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"STRW";
/// The protocol version this build speaks (and the only one it reads).
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 16;
/// Largest frame body (64 MiB); a header announcing more is refused before the body is read.
pub const FRAME_BODY_BYTES_MAX: usize = 64 << 20;
/// Longest member name, sender id or region name, in bytes.
pub const NAME_BYTES_MAX: usize = 1024;
/// Most regions one Hello's region table can name.
pub const REGIONS_PER_HELLO_MAX: usize = 4096;
/// Longest refusal text in a HelloReply, in bytes.
pub const REFUSAL_TEXT_BYTES_MAX: usize = 1024;
/// Most events one batch can carry.
pub const BATCH_EVENTS_MAX: u32 = 1 << 16;
/// Most dead-lettered events one Ack can list: every event of a batch.
pub const DEAD_LETTERS_PER_ACK_MAX: u32 = BATCH_EVENTS_MAX;
/// Longest dead-letter text in an Ack, in bytes.
pub const DEAD_LETTER_TEXT_BYTES_MAX: usize = 256;
/// Batch flag bit 0: the batch may have been sent before.
pub const FLAG_POSSIBLE_DUPLICATE: u16 = 0b1;
/// Bytes of a batch frame before its records: the header, the batch id and the event count.
pub const BATCH_PREFIX_BYTES: usize = FRAME_HEADER_BYTES + 8 + 4;
/// Bytes of a whole Ping or Pong frame: the header and the 8-byte nonce.
pub const PING_FRAME_BYTES: usize = FRAME_HEADER_BYTES + 8;

/// Length prefix of a string, plus its longest content.
const fn str_bytes_max(content_max: usize) -> usize {
    2 + content_max
}
/// The largest Hello body.
const HELLO_BODY_BYTES_MAX: usize = 2
    + 2 * str_bytes_max(NAME_BYTES_MAX)
    + 2
    + REGIONS_PER_HELLO_MAX * (2 + 4 + str_bytes_max(NAME_BYTES_MAX));
/// The largest HelloReply body.
const HELLO_REPLY_BODY_BYTES_MAX: usize =
    2 + str_bytes_max(NAME_BYTES_MAX) + 4 + 1 + str_bytes_max(REFUSAL_TEXT_BYTES_MAX);
/// The largest Ack body.
const ACK_BODY_BYTES_MAX: usize = 8
    + 4 * 4
    + DEAD_LETTERS_PER_ACK_MAX as usize * (4 + 1 + str_bytes_max(DEAD_LETTER_TEXT_BYTES_MAX));

const _: () = assert!(size_of::<FrameHeader>() == FRAME_HEADER_BYTES);
const _: () = assert!(FRAME_BODY_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(NAME_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(REFUSAL_TEXT_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(DEAD_LETTER_TEXT_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(REGIONS_PER_HELLO_MAX <= u16::MAX as usize);
const _: () = assert!(HELLO_BODY_BYTES_MAX <= FRAME_BODY_BYTES_MAX);
const _: () = assert!(HELLO_REPLY_BODY_BYTES_MAX <= FRAME_BODY_BYTES_MAX);
const _: () = assert!(ACK_BODY_BYTES_MAX <= FRAME_BODY_BYTES_MAX);
// A batch of one record of the largest size must fit in a frame.
const _: () = assert!(
    BATCH_PREFIX_BYTES - FRAME_HEADER_BYTES + record::RECORD_BYTES_MAX <= FRAME_BODY_BYTES_MAX
);

/// The fixed header of every frame, as it lies on the wire.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct FrameHeader {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// [`PROTOCOL_VERSION`].
    pub version: u8,
    /// A [`FrameKind`].
    pub kind: u8,
    /// Batch: [`FLAG_POSSIBLE_DUPLICATE`]; other kinds: 0.
    pub flags: U16,
    /// Bytes after the header, at most [`FRAME_BODY_BYTES_MAX`].
    pub body_len: U32,
    /// CRC-32 of bytes 0..12 of the header.
    pub header_crc: U32,
}

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    HelloReply = 2,
    Batch = 3,
    Ack = 4,
    Ping = 5,
    Pong = 6,
}

impl FrameKind {
    /// Decodes the kind byte.
    pub fn from_u8(b: u8) -> Option<FrameKind> {
        match b {
            1 => Some(FrameKind::Hello),
            2 => Some(FrameKind::HelloReply),
            3 => Some(FrameKind::Batch),
            4 => Some(FrameKind::Ack),
            5 => Some(FrameKind::Ping),
            6 => Some(FrameKind::Pong),
            _ => None,
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a receiver refused a Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RefuseReason {
    /// The Hello's frame was of a protocol version the receiver does not speak.
    WrongVersion = 1,
    /// The sender's site is the receiver's own site.
    SameSite = 2,
    /// The receiver is not of the site the sender asked for.
    WrongSite = 3,
    /// The first frame was not a well-formed Hello.
    MalformedHello = 4,
}

impl RefuseReason {
    /// Decodes the reason byte.
    pub fn from_u8(b: u8) -> Option<RefuseReason> {
        match b {
            1 => Some(RefuseReason::WrongVersion),
            2 => Some(RefuseReason::SameSite),
            3 => Some(RefuseReason::WrongSite),
            4 => Some(RefuseReason::MalformedHello),
            _ => None,
        }
    }
}

/// Why an event of a batch was dead-lettered at the receiver (shared with the dead-letter
/// log's format).
pub use strait_queue::record::DeadLetterReason;

/// One entry of a Hello's region table: a region index the sender's records use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RegionEntry<'a> {
    /// The index in the records' `region` field.
    pub id: RegionId,
    /// The region's `total-num-buckets` at the sending site.
    pub total_num_buckets: u32,
    /// The region's name.
    pub name: &'a str,
}

/// One dead-lettered event of an Ack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeadLetter<'a> {
    /// The event's index in its batch, from 0.
    pub index: u32,
    pub reason: DeadLetterReason,
    /// What went wrong, for the sender's log; at most [`DEAD_LETTER_TEXT_BYTES_MAX`] bytes.
    pub text: Cow<'a, str>,
}

impl DeadLetter<'_> {
    /// The same entry, owning its text.
    pub fn into_owned(self) -> DeadLetter<'static> {
        DeadLetter {
            index: self.index,
            reason: self.reason,
            text: Cow::Owned(self.text.into_owned()),
        }
    }
}

/// A Hello's region table: a slice to encode, or checked bytes of a decoded frame.
#[derive(Clone, Copy, Debug)]
pub enum Regions<'a> {
    /// Entries to encode.
    List(&'a [RegionEntry<'a>]),
    /// A decoded table: `count` entries, already checked, in `bytes`.
    Wire { count: u16, bytes: &'a [u8] },
}

impl<'a> Regions<'a> {
    /// How many entries the table has.
    pub fn len(&self) -> usize {
        match self {
            Regions::List(list) => list.len(),
            Regions::Wire { count, .. } => usize::from(*count),
        }
    }
    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The entries, in order.
    pub fn iter(&self) -> RegionIter<'a> {
        match *self {
            Regions::List(list) => RegionIter(EntriesIter::List(list.iter())),
            Regions::Wire { bytes, .. } => {
                RegionIter(EntriesIter::Wire(Reader::new(bytes, FrameKind::Hello)))
            }
        }
    }
}

impl PartialEq for Regions<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

/// An iterator over a [`Regions`] table.
#[derive(Debug)]
pub struct RegionIter<'a>(EntriesIter<'a, RegionEntry<'a>>);

/// The entries of a list to encode, or of checked bytes of a decoded frame.
#[derive(Debug)]
enum EntriesIter<'a, T> {
    List(std::slice::Iter<'a, T>),
    Wire(Reader<'a>),
}

impl<'a> Iterator for RegionIter<'a> {
    type Item = RegionEntry<'a>;
    fn next(&mut self) -> Option<RegionEntry<'a>> {
        match &mut self.0 {
            EntriesIter::List(it) => it.next().copied(),
            // The table was checked by `decode_frame`; reading it again cannot fail.
            EntriesIter::Wire(reader) => read_region(reader).ok(),
        }
    }
}

/// An Ack's dead letters: a slice to encode, or checked bytes of a decoded frame.
#[derive(Clone, Copy, Debug)]
pub enum DeadLetters<'a> {
    /// Entries to encode.
    List(&'a [DeadLetter<'a>]),
    /// A decoded list: `count` entries, already checked, in `bytes`.
    Wire { count: u32, bytes: &'a [u8] },
}

impl<'a> DeadLetters<'a> {
    /// How many events were dead-lettered.
    pub fn len(&self) -> usize {
        match self {
            DeadLetters::List(list) => list.len(),
            DeadLetters::Wire { count, .. } => *count as usize,
        }
    }
    /// Whether no event was dead-lettered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The entries, in order.
    pub fn iter(&self) -> DeadLetterIter<'a> {
        match *self {
            DeadLetters::List(list) => DeadLetterIter(EntriesIter::List(list.iter())),
            DeadLetters::Wire { bytes, .. } => {
                DeadLetterIter(EntriesIter::Wire(Reader::new(bytes, FrameKind::Ack)))
            }
        }
    }
}

impl PartialEq for DeadLetters<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

/// An iterator over [`DeadLetters`].
#[derive(Debug)]
pub struct DeadLetterIter<'a>(EntriesIter<'a, DeadLetter<'a>>);

impl<'a> Iterator for DeadLetterIter<'a> {
    type Item = DeadLetter<'a>;
    fn next(&mut self) -> Option<DeadLetter<'a>> {
        match &mut self.0 {
            EntriesIter::List(it) => it.next().cloned(),
            // The list was checked by `decode_frame`; reading it again cannot fail.
            EntriesIter::Wire(reader) => read_dead_letter(reader).ok(),
        }
    }
}

/// Hello: the sender's first frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hello<'a> {
    pub sender_site: SiteId,
    /// The site the sender means to reach.
    pub receiver_site: SiteId,
    /// The sending member's name.
    pub member: &'a str,
    /// The gateway sender's id.
    pub sender_id: &'a str,
    pub regions: Regions<'a>,
}

/// A refused HelloReply's reason and text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal<'a> {
    pub reason: RefuseReason,
    pub text: &'a str,
}

/// HelloReply: the receiver's answer to a Hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloReply<'a> {
    pub receiver_site: SiteId,
    /// The receiving member's name.
    pub member: &'a str,
    /// The receiver closes a connection silent for this long.
    pub maximum_time_between_pings_ms: u32,
    /// `None`: accepted.
    pub refusal: Option<Refusal<'a>>,
}

/// Batch: records back to back, exactly as the sender's queue holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch<'a> {
    pub id: BatchId,
    pub possible_duplicate: bool,
    /// The event count the sender declared; [`Batch::records`] checks it.
    pub events: u32,
    /// The records' bytes, not yet checked.
    pub records: &'a [u8],
}

impl<'a> Batch<'a> {
    /// The records, parsed in place; every record's CRC is checked, and the walk ends with
    /// an error when the records do not number exactly [`Batch::events`].
    pub fn records(&self) -> BatchRecords<'a> {
        BatchRecords {
            rest: self.records,
            declared: self.events,
            index: 0,
            done: false,
        }
    }

    /// Checks every record (CRC included) and the count, without keeping anything.
    pub fn check(&self) -> Result<(), FrameError> {
        self.records().try_for_each(|r| r.map(drop))
    }
}

/// The records of a [`Batch`], each checked in place; see [`Batch::records`]. After the first
/// error it yields nothing more.
#[derive(Clone, Debug)]
pub struct BatchRecords<'a> {
    rest: &'a [u8],
    declared: u32,
    index: u32,
    done: bool,
}

impl<'a> Iterator for BatchRecords<'a> {
    type Item = Result<Record<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.index == self.declared {
            self.done = true;
            return if self.rest.is_empty() {
                None
            } else {
                Some(Err(FrameError::BytesAfterRecords {
                    declared: self.declared,
                    bytes: self.rest.len(),
                }))
            };
        }
        if self.rest.is_empty() {
            self.done = true;
            return Some(Err(FrameError::RecordsMissing {
                declared: self.declared,
                found: self.index,
            }));
        }
        match record::decode(self.rest) {
            Ok(rec) => {
                self.rest = &self.rest[rec.len()..];
                self.index += 1;
                Some(Ok(rec))
            }
            Err(error) => {
                self.done = true;
                Some(Err(FrameError::Record {
                    index: self.index,
                    error,
                }))
            }
        }
    }
}

/// Ack: the receiver's outcome of one batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ack<'a> {
    pub batch: BatchId,
    /// Events applied.
    pub applied: u32,
    /// Events already applied before (dedupe), not applied again.
    pub duplicates: u32,
    /// Events rejected by the conflict rule.
    pub conflicts: u32,
    /// Events that could not be applied, kept in the receiver's dead-letter log.
    pub dead_letters: DeadLetters<'a>,
}

/// One frame, borrowing from the buffer it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Frame<'a> {
    Hello(Hello<'a>),
    HelloReply(HelloReply<'a>),
    Batch(Batch<'a>),
    Ack(Ack<'a>),
    Ping(PingNonce),
    Pong(PingNonce),
}

impl Frame<'_> {
    /// What kind of frame this is.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::HelloReply(_) => FrameKind::HelloReply,
            Frame::Batch(_) => FrameKind::Batch,
            Frame::Ack(_) => FrameKind::Ack,
            Frame::Ping(_) => FrameKind::Ping,
            Frame::Pong(_) => FrameKind::Pong,
        }
    }

    /// Appends the whole frame to `dst`. Every limit is checked first: on error nothing has
    /// been written. A Batch is written with its records; a sender writes [`batch_prefix`]
    /// and then the records from the queue instead.
    pub fn encode<B: BufMut + AsMut<[u8]>>(&self, dst: &mut B) -> Result<(), EncodeError> {
        self.check_limits()?;
        let start = dst.as_mut().len();
        dst.put_slice(&[0; FRAME_HEADER_BYTES]);
        let mut flags = 0;
        match self {
            Frame::Hello(h) => {
                dst.put_u8(h.sender_site.0);
                dst.put_u8(h.receiver_site.0);
                put_str(dst, h.member);
                put_str(dst, h.sender_id);
                dst.put_u16_le(h.regions.len() as u16);
                for r in h.regions.iter() {
                    dst.put_u16_le(r.id.0);
                    dst.put_u32_le(r.total_num_buckets);
                    put_str(dst, r.name);
                }
            }
            Frame::HelloReply(r) => {
                dst.put_u8(u8::from(r.refusal.is_none()));
                dst.put_u8(r.receiver_site.0);
                put_str(dst, r.member);
                dst.put_u32_le(r.maximum_time_between_pings_ms);
                if let Some(refusal) = r.refusal {
                    dst.put_u8(refusal.reason as u8);
                    put_str(dst, refusal.text);
                }
            }
            Frame::Batch(b) => {
                if b.possible_duplicate {
                    flags = FLAG_POSSIBLE_DUPLICATE;
                }
                dst.put_u64_le(b.id.0);
                dst.put_u32_le(b.events);
                dst.put_slice(b.records);
            }
            Frame::Ack(a) => {
                dst.put_u64_le(a.batch.0);
                dst.put_u32_le(a.applied);
                dst.put_u32_le(a.duplicates);
                dst.put_u32_le(a.conflicts);
                dst.put_u32_le(a.dead_letters.len() as u32);
                for d in a.dead_letters.iter() {
                    dst.put_u32_le(d.index);
                    dst.put_u8(d.reason as u8);
                    put_str(dst, &d.text);
                }
            }
            Frame::Ping(nonce) | Frame::Pong(nonce) => dst.put_u64_le(nonce.0),
        }
        let bytes = dst.as_mut();
        let body_len = bytes.len() - start - FRAME_HEADER_BYTES;
        let header = header_bytes(self.kind(), flags, body_len as u32);
        bytes[start..start + FRAME_HEADER_BYTES].copy_from_slice(&header);
        Ok(())
    }

    fn check_limits(&self) -> Result<(), EncodeError> {
        match self {
            Frame::Hello(h) => {
                check_str("member", h.member, NAME_BYTES_MAX)?;
                check_str("sender_id", h.sender_id, NAME_BYTES_MAX)?;
                if h.regions.len() > REGIONS_PER_HELLO_MAX {
                    return Err(EncodeError::TooMany {
                        field: "regions",
                        count: h.regions.len(),
                        max: REGIONS_PER_HELLO_MAX,
                    });
                }
                h.regions
                    .iter()
                    .try_for_each(|r| check_str("region name", r.name, NAME_BYTES_MAX))
            }
            Frame::HelloReply(r) => {
                check_str("member", r.member, NAME_BYTES_MAX)?;
                match r.refusal {
                    Some(refusal) => {
                        check_str("refusal text", refusal.text, REFUSAL_TEXT_BYTES_MAX)
                    }
                    None => Ok(()),
                }
            }
            Frame::Batch(b) => check_batch(b.events, b.records.len()),
            Frame::Ack(a) => {
                if a.dead_letters.len() > DEAD_LETTERS_PER_ACK_MAX as usize {
                    return Err(EncodeError::TooMany {
                        field: "dead letters",
                        count: a.dead_letters.len(),
                        max: DEAD_LETTERS_PER_ACK_MAX as usize,
                    });
                }
                a.dead_letters.iter().try_for_each(|d| {
                    check_str("dead letter text", &d.text, DEAD_LETTER_TEXT_BYTES_MAX)
                })
            }
            Frame::Ping(_) | Frame::Pong(_) => Ok(()),
        }
    }
}

/// Why a frame cannot be encoded: a local caller's mistake, never the peer's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{field} of {len} bytes is over the limit of {max} bytes")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{count} {field} is over the limit of {max}")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
}

/// Why bytes from the peer are not a valid frame. Every variant is the peer's fault: garbage,
/// or a size over one of this module's limits. The connection is closed after any of them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad frame magic {found:02x?}: not a Strait WAN peer (expected \"STRW\")")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    #[error("frame header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("{kind} frame with unknown flag bits {flags:#06x}")]
    UnknownFlags { kind: FrameKind, flags: u16 },
    #[error("{kind} frame body of {len} bytes is over the limit of {FRAME_BODY_BYTES_MAX} bytes")]
    BodyTooLong { kind: FrameKind, len: u32 },
    #[error("{kind} frame body ends inside field `{field}`")]
    Truncated {
        kind: FrameKind,
        field: &'static str,
    },
    #[error("{kind} frame field `{field}` of {len} is over the limit of {max}")]
    OverLimit {
        kind: FrameKind,
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} frame field `{field}` is not UTF-8")]
    NotUtf8 {
        kind: FrameKind,
        field: &'static str,
    },
    #[error("{kind} frame field `{field}` has the invalid value {value}")]
    BadValue {
        kind: FrameKind,
        field: &'static str,
        value: u64,
    },
    #[error("{kind} frame has {bytes} bytes after its last field")]
    TrailingBytes { kind: FrameKind, bytes: usize },
    #[error("record {index} of the batch is invalid: {error}")]
    Record { index: u32, error: DecodeError },
    #[error("batch declares {declared} events but holds only {found} records")]
    RecordsMissing { declared: u32, found: u32 },
    #[error("batch declares {declared} events but {bytes} bytes follow its last record")]
    BytesAfterRecords { declared: u32, bytes: usize },
}

/// The 16 header bytes of a frame of `kind` with `flags` and a body of `body_len` bytes.
pub fn header_bytes(kind: FrameKind, flags: u16, body_len: u32) -> [u8; FRAME_HEADER_BYTES] {
    let mut header = FrameHeader {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        kind: kind as u8,
        flags: U16::new(flags),
        body_len: U32::new(body_len),
        header_crc: U32::new(0),
    };
    header.header_crc = U32::new(crc32fast::hash(&header.as_bytes()[..12]));
    let mut out = [0; FRAME_HEADER_BYTES];
    out.copy_from_slice(header.as_bytes());
    out
}

/// The bytes of a Batch frame before its records: the header, `id` and `events`. The caller
/// then writes exactly `records_len` bytes of `events` records, back to back, as the queue
/// holds them.
pub fn batch_prefix(
    id: BatchId,
    events: u32,
    records_len: usize,
    possible_duplicate: bool,
) -> Result<[u8; BATCH_PREFIX_BYTES], EncodeError> {
    check_batch(events, records_len)?;
    let body_len = (BATCH_PREFIX_BYTES - FRAME_HEADER_BYTES + records_len) as u32;
    let flags = if possible_duplicate {
        FLAG_POSSIBLE_DUPLICATE
    } else {
        0
    };
    let mut out = [0; BATCH_PREFIX_BYTES];
    out[..FRAME_HEADER_BYTES].copy_from_slice(&header_bytes(FrameKind::Batch, flags, body_len));
    out[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + 8].copy_from_slice(&id.0.to_le_bytes());
    out[FRAME_HEADER_BYTES + 8..].copy_from_slice(&events.to_le_bytes());
    Ok(out)
}

/// A whole Ping frame.
pub fn ping_frame(nonce: PingNonce) -> [u8; PING_FRAME_BYTES] {
    nonce_frame(FrameKind::Ping, nonce)
}

/// A whole Pong frame.
pub fn pong_frame(nonce: PingNonce) -> [u8; PING_FRAME_BYTES] {
    nonce_frame(FrameKind::Pong, nonce)
}

fn nonce_frame(kind: FrameKind, nonce: PingNonce) -> [u8; PING_FRAME_BYTES] {
    let mut out = [0; PING_FRAME_BYTES];
    out[..FRAME_HEADER_BYTES].copy_from_slice(&header_bytes(kind, 0, 8));
    out[FRAME_HEADER_BYTES..].copy_from_slice(&nonce.0.to_le_bytes());
    out
}

fn check_batch(events: u32, records_len: usize) -> Result<(), EncodeError> {
    if events > BATCH_EVENTS_MAX {
        return Err(EncodeError::TooMany {
            field: "batch events",
            count: events as usize,
            max: BATCH_EVENTS_MAX as usize,
        });
    }
    let max = FRAME_BODY_BYTES_MAX - (BATCH_PREFIX_BYTES - FRAME_HEADER_BYTES);
    if records_len > max {
        return Err(EncodeError::TooLong {
            field: "batch records",
            len: records_len,
            max,
        });
    }
    Ok(())
}

fn check_str(field: &'static str, s: &str, max: usize) -> Result<(), EncodeError> {
    if s.len() > max {
        return Err(EncodeError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

fn put_str<B: BufMut>(dst: &mut B, s: &str) {
    dst.put_u16_le(s.len() as u16);
    dst.put_slice(s.as_bytes());
}

/// Decodes the frame at the front of `buf`. `Ok(None)`: `buf` ends inside the frame; read
/// more and call again from the same start. `Ok(Some((frame, consumed)))`: the frame took the
/// first `consumed` bytes. The header is checked as soon as its 16 bytes are there (magic,
/// version, header CRC, kind, flags, body length), so an over-long body is refused before it
/// is read. A Batch's records are checked by [`Batch::records`] or [`Batch::check`].
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Ok((header, rest)) = FrameHeader::ref_from_prefix(buf) else {
        return Ok(None);
    };
    if header.magic != MAGIC {
        return Err(FrameError::BadMagic {
            found: header.magic,
        });
    }
    if header.version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(header.version));
    }
    let computed = crc32fast::hash(&header.as_bytes()[..12]);
    let stored = header.header_crc.get();
    if computed != stored {
        return Err(FrameError::HeaderCrc { stored, computed });
    }
    let kind = FrameKind::from_u8(header.kind).ok_or(FrameError::UnknownKind(header.kind))?;
    let flags = header.flags.get();
    let flags_known = if kind == FrameKind::Batch {
        FLAG_POSSIBLE_DUPLICATE
    } else {
        0
    };
    if flags & !flags_known != 0 {
        return Err(FrameError::UnknownFlags {
            kind,
            flags: flags & !flags_known,
        });
    }
    let body_len = header.body_len.get();
    if body_len as usize > FRAME_BODY_BYTES_MAX {
        return Err(FrameError::BodyTooLong {
            kind,
            len: body_len,
        });
    }
    let Some(body) = rest.get(..body_len as usize) else {
        return Ok(None);
    };
    let mut r = Reader::new(body, kind);
    let frame = match kind {
        FrameKind::Hello => Frame::Hello(read_hello(&mut r)?),
        FrameKind::HelloReply => Frame::HelloReply(read_hello_reply(&mut r)?),
        FrameKind::Batch => {
            let id = BatchId(r.u64("batch_id")?);
            let events = r.u32("event_count")?;
            if events > BATCH_EVENTS_MAX {
                return Err(FrameError::OverLimit {
                    kind,
                    field: "event_count",
                    len: events as usize,
                    max: BATCH_EVENTS_MAX as usize,
                });
            }
            Frame::Batch(Batch {
                id,
                possible_duplicate: flags & FLAG_POSSIBLE_DUPLICATE != 0,
                events,
                records: r.rest(),
            })
        }
        FrameKind::Ack => Frame::Ack(read_ack(&mut r)?),
        FrameKind::Ping => Frame::Ping(PingNonce(r.u64("nonce")?)),
        FrameKind::Pong => Frame::Pong(PingNonce(r.u64("nonce")?)),
    };
    r.finish()?;
    Ok(Some((frame, FRAME_HEADER_BYTES + body_len as usize)))
}

fn read_hello<'a>(r: &mut Reader<'a>) -> Result<Hello<'a>, FrameError> {
    let sender_site = SiteId(r.u8("sender_site")?);
    let receiver_site = SiteId(r.u8("receiver_site")?);
    let member = r.str("member", NAME_BYTES_MAX)?;
    let sender_id = r.str("sender_id", NAME_BYTES_MAX)?;
    let count = r.u16("region_count")?;
    r.limit("region_count", usize::from(count), REGIONS_PER_HELLO_MAX)?;
    let table = r.rest();
    let mut check = Reader::new(table, FrameKind::Hello);
    for _ in 0..count {
        read_region(&mut check)?;
    }
    let used = table.len() - check.buf.len();
    r.buf = check.buf;
    Ok(Hello {
        sender_site,
        receiver_site,
        member,
        sender_id,
        regions: Regions::Wire {
            count,
            bytes: &table[..used],
        },
    })
}

fn read_region<'a>(r: &mut Reader<'a>) -> Result<RegionEntry<'a>, FrameError> {
    Ok(RegionEntry {
        id: RegionId(r.u16("region_id")?),
        total_num_buckets: r.u32("total_num_buckets")?,
        name: r.str("region_name", NAME_BYTES_MAX)?,
    })
}

fn read_hello_reply<'a>(r: &mut Reader<'a>) -> Result<HelloReply<'a>, FrameError> {
    let accepted = r.u8("accepted")?;
    let receiver_site = SiteId(r.u8("receiver_site")?);
    let member = r.str("member", NAME_BYTES_MAX)?;
    let maximum_time_between_pings_ms = r.u32("maximum_time_between_pings_ms")?;
    let refusal = match accepted {
        1 => None,
        0 => {
            let code = r.u8("reason")?;
            let reason = RefuseReason::from_u8(code).ok_or_else(|| r.bad("reason", code.into()))?;
            let text = r.str("reason_text", REFUSAL_TEXT_BYTES_MAX)?;
            Some(Refusal { reason, text })
        }
        other => return Err(r.bad("accepted", other.into())),
    };
    Ok(HelloReply {
        receiver_site,
        member,
        maximum_time_between_pings_ms,
        refusal,
    })
}

fn read_ack<'a>(r: &mut Reader<'a>) -> Result<Ack<'a>, FrameError> {
    let batch = BatchId(r.u64("batch_id")?);
    let applied = r.u32("applied")?;
    let duplicates = r.u32("duplicates")?;
    let conflicts = r.u32("conflicts")?;
    let count = r.u32("dead_lettered")?;
    r.limit(
        "dead_lettered",
        count as usize,
        DEAD_LETTERS_PER_ACK_MAX as usize,
    )?;
    let list = r.rest();
    let mut check = Reader::new(list, FrameKind::Ack);
    for _ in 0..count {
        read_dead_letter(&mut check)?;
    }
    let used = list.len() - check.buf.len();
    r.buf = check.buf;
    Ok(Ack {
        batch,
        applied,
        duplicates,
        conflicts,
        dead_letters: DeadLetters::Wire {
            count,
            bytes: &list[..used],
        },
    })
}

fn read_dead_letter<'a>(r: &mut Reader<'a>) -> Result<DeadLetter<'a>, FrameError> {
    let index = r.u32("dead_letter_index")?;
    let code = r.u8("dead_letter_reason")?;
    let reason = DeadLetterReason::from_code(code)
        .ok_or_else(|| r.bad("dead_letter_reason", code.into()))?;
    let text = r.str("dead_letter_text", DEAD_LETTER_TEXT_BYTES_MAX)?;
    Ok(DeadLetter {
        index,
        reason,
        text: Cow::Borrowed(text),
    })
}

/// A cursor over a frame body whose errors name the frame kind and the field.
#[derive(Clone, Debug)]
struct Reader<'a> {
    buf: &'a [u8],
    kind: FrameKind,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], kind: FrameKind) -> Self {
        Reader { buf, kind }
    }

    fn take<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FrameError> {
        let Some((head, rest)) = self.buf.split_first_chunk::<N>() else {
            return Err(FrameError::Truncated {
                kind: self.kind,
                field,
            });
        };
        self.buf = rest;
        Ok(*head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.take::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        self.take(field).map(u16::from_le_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        self.take(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        self.take(field).map(u64::from_le_bytes)
    }

    fn str(&mut self, field: &'static str, max: usize) -> Result<&'a str, FrameError> {
        let len = usize::from(self.u16(field)?);
        self.limit(field, len, max)?;
        let Some((bytes, rest)) = self.buf.split_at_checked(len) else {
            return Err(FrameError::Truncated {
                kind: self.kind,
                field,
            });
        };
        self.buf = rest;
        std::str::from_utf8(bytes).map_err(|_| FrameError::NotUtf8 {
            kind: self.kind,
            field,
        })
    }

    fn limit(&self, field: &'static str, len: usize, max: usize) -> Result<(), FrameError> {
        if len > max {
            return Err(FrameError::OverLimit {
                kind: self.kind,
                field,
                len,
                max,
            });
        }
        Ok(())
    }

    fn bad(&self, field: &'static str, value: u64) -> FrameError {
        FrameError::BadValue {
            kind: self.kind,
            field,
            value,
        }
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::TrailingBytes {
                kind: self.kind,
                bytes: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_the_documented_one() {
        let h = header_bytes(FrameKind::Batch, FLAG_POSSIBLE_DUPLICATE, 0x0102_0304);
        assert_eq!(&h[0..4], b"STRW");
        assert_eq!(h[4], 1);
        assert_eq!(h[5], 3);
        assert_eq!(&h[6..8], &[1, 0]);
        assert_eq!(&h[8..12], &[4, 3, 2, 1]);
        assert_eq!(&h[12..16], &crc32fast::hash(&h[..12]).to_le_bytes());
    }

    #[test]
    fn ping_round_trips_and_a_pong_is_not_a_ping() {
        let ping = ping_frame(PingNonce(7));
        assert_eq!(
            decode_frame(&ping),
            Ok(Some((Frame::Ping(PingNonce(7)), PING_FRAME_BYTES)))
        );
        let pong = pong_frame(PingNonce(7));
        assert_eq!(
            decode_frame(&pong),
            Ok(Some((Frame::Pong(PingNonce(7)), PING_FRAME_BYTES)))
        );
    }

    #[test]
    fn flags_on_a_frame_other_than_a_batch_are_refused() {
        let mut bytes = ping_frame(PingNonce(1));
        bytes[..FRAME_HEADER_BYTES].copy_from_slice(&header_bytes(FrameKind::Ping, 1, 8));
        assert_eq!(
            decode_frame(&bytes),
            Err(FrameError::UnknownFlags {
                kind: FrameKind::Ping,
                flags: 1
            })
        );
    }

    #[test]
    fn a_region_table_longer_than_its_count_leaves_trailing_bytes() {
        let regions = [RegionEntry {
            id: RegionId(1),
            total_num_buckets: 113,
            name: "orders",
        }];
        let mut out = Vec::new();
        Frame::Hello(Hello {
            sender_site: SiteId(1),
            receiver_site: SiteId(2),
            member: "m",
            sender_id: "s",
            regions: Regions::List(&regions),
        })
        .encode(&mut out)
        .unwrap();
        // Lower the count to 0: the entry's bytes are now trailing.
        let count_at = FRAME_HEADER_BYTES + 2 + 3 + 3;
        out[count_at] = 0;
        assert_eq!(
            decode_frame(&out),
            Err(FrameError::TrailingBytes {
                kind: FrameKind::Hello,
                bytes: 2 + 4 + 2 + 6
            })
        );
    }

    #[test]
    fn encode_checks_limits_before_writing() {
        let long = "x".repeat(NAME_BYTES_MAX + 1);
        let mut out = vec![9u8];
        let err = Frame::Hello(Hello {
            sender_site: SiteId(1),
            receiver_site: SiteId(2),
            member: &long,
            sender_id: "s",
            regions: Regions::List(&[]),
        })
        .encode(&mut out)
        .unwrap_err();
        assert_eq!(
            err,
            EncodeError::TooLong {
                field: "member",
                len: NAME_BYTES_MAX + 1,
                max: NAME_BYTES_MAX
            }
        );
        assert_eq!(out, [9]);
        assert!(batch_prefix(BatchId(1), BATCH_EVENTS_MAX + 1, 0, false).is_err());
        assert!(batch_prefix(BatchId(1), 1, FRAME_BODY_BYTES_MAX, false).is_err());
    }
}
