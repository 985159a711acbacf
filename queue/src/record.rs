//! The event record: one format for the segment file and the wire.
//!
//! A record is a fixed 50-byte little-endian header ([`RecordHeader`]), then the recipient
//! site ids (one byte each), the key and the value. A CRC-32 (IEEE, `crc32fast`) over every
//! byte after the CRC field closes it. `docs/formats.md` lays it out byte by byte and
//! `testdata/records-v1.bin` holds vectors that the tests decode.

use crate::ids::{BucketId, EventId, MemberId, RegionId, Seq, SiteId, StreamId, VersionTag};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The format version this build writes.
pub const FORMAT_VERSION: u8 = 1;
/// The oldest format version this build still reads.
pub const FORMAT_VERSION_MIN: u8 = 1;
/// Bytes of the fixed header.
pub const HEADER_BYTES: usize = 50;
/// Longest key: the key length is a `u16`.
pub const KEY_BYTES_MAX: usize = u16::MAX as usize;
/// Longest value (16 MiB). Larger values are refused at append.
pub const VALUE_BYTES_MAX: usize = 16 << 20;
/// Most recipient sites one record can carry (site ids run 0–255).
pub const RECIPIENTS_MAX: usize = u8::MAX as usize;
/// Largest possible record.
pub const RECORD_BYTES_MAX: usize = HEADER_BYTES + RECIPIENTS_MAX + KEY_BYTES_MAX + VALUE_BYTES_MAX;

/// Flag: a newer update to the same key replaced this one in its queue (conflation). Readers
/// skip superseded records; they are never sent.
pub const FLAG_SUPERSEDED: u8 = 0b0000_0001;
const FLAGS_KNOWN: u8 = FLAG_SUPERSEDED;

/// The fixed part of a record, as it lies in a segment or on the wire.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct RecordHeader {
    /// CRC-32 of every byte of the record after this field.
    pub crc32: U32,
    /// [`FORMAT_VERSION`] when written.
    pub version: u8,
    /// An [`Op`].
    pub op: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// How many recipient site ids follow the header.
    pub recipient_count: u8,
    pub key_len: U16,
    pub value_len: U32,
    pub region: U16,
    pub bucket: U16,
    /// The per-queue sequence number.
    pub queue_seq: U64,
    /// Event identity: the origin site (also the loop rule's originating site).
    pub origin_site: u8,
    /// Version tag: the writing site.
    pub version_site: u8,
    /// Event identity: the origin member.
    pub origin_member: U16,
    /// Event identity: the stream.
    pub stream: U32,
    /// Event identity: the position within the stream.
    pub stream_seq: U64,
    /// Version tag: microseconds since the Unix epoch.
    pub timestamp_us: U64,
}

const _: () = assert!(size_of::<RecordHeader>() == HEADER_BYTES);
const _: () = assert!(RECORD_BYTES_MAX < u32::MAX as usize / 2);

/// The operation an event carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    Create = 1,
    Update = 2,
    Destroy = 3,
    /// An update of the version tag only (Geode's version-stamp event); carries no value.
    VersionOnly = 4,
}

impl Op {
    /// Decodes the operation byte.
    pub fn from_u8(b: u8) -> Option<Op> {
        match b {
            1 => Some(Op::Create),
            2 => Some(Op::Update),
            3 => Some(Op::Destroy),
            4 => Some(Op::VersionOnly),
            _ => None,
        }
    }

    /// Whether records of this operation carry a value.
    pub fn has_value(self) -> bool {
        matches!(self, Op::Create | Op::Update)
    }
}

/// Why a receiving site could not apply an event and wrote it to its dead-letter log
/// instead. The code is the byte a WAN ack and a dead-letter log entry carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DeadLetterReason {
    /// The event's region (named in the sender's hello) does not exist at the receiving site.
    UnknownRegion = 1,
    /// The region store refused the write itself: a key or value over its limit, a value on a
    /// write that carries none, a version-only update of a key the site does not hold.
    ValueRejected = 2,
    /// The region store is full: no room for a new key or a new event stream.
    StoreFull = 3,
}

impl DeadLetterReason {
    /// The reason's code, 1–3.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The reason a code stands for; `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<DeadLetterReason> {
        match code {
            1 => Some(DeadLetterReason::UnknownRegion),
            2 => Some(DeadLetterReason::ValueRejected),
            3 => Some(DeadLetterReason::StoreFull),
            _ => None,
        }
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeadLetterReason::UnknownRegion => "unknown region",
            DeadLetterReason::ValueRejected => "value rejected",
            DeadLetterReason::StoreFull => "store full",
        })
    }
}

/// An event to be appended: everything a record holds except the queue sequence number.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub op: Op,
    pub region: RegionId,
    pub bucket: BucketId,
    pub id: EventId,
    pub version: VersionTag,
    /// The sites this event has been or is being sent to (the loop rule's recipient set).
    pub recipients: &'a [SiteId],
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Why an event cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("key of {0} bytes is longer than the limit of {KEY_BYTES_MAX} bytes")]
    KeyTooLong(usize),
    #[error("value of {0} bytes is longer than the limit of {VALUE_BYTES_MAX} bytes")]
    ValueTooLong(usize),
    #[error("{0} recipient sites is more than the limit of {RECIPIENTS_MAX}")]
    TooManyRecipients(usize),
    #[error("a {0:?} event carries no value, but {1} value bytes were given")]
    UnexpectedValue(Op, usize),
}

/// Why bytes are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is cut short: {needed} bytes needed, {available} available")]
    Short { needed: usize, available: usize },
    #[error(
        "record format version {0} is not readable by this build (reads {FORMAT_VERSION_MIN}..={FORMAT_VERSION})"
    )]
    UnknownVersion(u8),
    #[error("unknown operation {0}")]
    BadOp(u8),
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("value length {0} is over the limit of {VALUE_BYTES_MAX} bytes")]
    ValueTooLong(usize),
    #[error("a {0:?} record carries {1} value bytes; it must carry none")]
    UnexpectedValue(Op, usize),
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
}

/// The encoded length of `event`, checking the limits.
pub fn encoded_len(event: &Event<'_>) -> Result<usize, EncodeError> {
    if event.key.len() > KEY_BYTES_MAX {
        return Err(EncodeError::KeyTooLong(event.key.len()));
    }
    if event.value.len() > VALUE_BYTES_MAX {
        return Err(EncodeError::ValueTooLong(event.value.len()));
    }
    if event.recipients.len() > RECIPIENTS_MAX {
        return Err(EncodeError::TooManyRecipients(event.recipients.len()));
    }
    if !event.op.has_value() && !event.value.is_empty() {
        return Err(EncodeError::UnexpectedValue(event.op, event.value.len()));
    }
    Ok(HEADER_BYTES + event.recipients.len() + event.key.len() + event.value.len())
}

/// Encodes `event` with sequence number `seq` at the start of `dst` and returns its length.
/// `dst` must hold at least [`encoded_len`] bytes; the limits must already have been checked
/// with [`encoded_len`].
pub fn encode_into(dst: &mut [u8], event: &Event<'_>, seq: Seq) -> usize {
    let recipients = event.recipients.len();
    let len = HEADER_BYTES + recipients + event.key.len() + event.value.len();
    let dst = &mut dst[..len];
    let header = RecordHeader {
        crc32: U32::new(0),
        version: FORMAT_VERSION,
        op: event.op as u8,
        flags: 0,
        recipient_count: recipients as u8,
        key_len: U16::new(event.key.len() as u16),
        value_len: U32::new(event.value.len() as u32),
        region: U16::new(event.region.0),
        bucket: U16::new(event.bucket.0),
        queue_seq: U64::new(seq.0),
        origin_site: event.id.origin_site.0,
        version_site: event.version.site.0,
        origin_member: U16::new(event.id.origin_member.0),
        stream: U32::new(event.id.stream.0),
        stream_seq: U64::new(event.id.seq),
        timestamp_us: U64::new(event.version.timestamp_us),
    };
    dst[..HEADER_BYTES].copy_from_slice(header.as_bytes());
    let mut at = HEADER_BYTES;
    for (slot, site) in dst[at..at + recipients].iter_mut().zip(event.recipients) {
        *slot = site.0;
    }
    at += recipients;
    dst[at..at + event.key.len()].copy_from_slice(event.key);
    at += event.key.len();
    dst[at..].copy_from_slice(event.value);
    seal(dst);
    len
}

/// Recomputes and stores the CRC of a whole record.
fn seal(record: &mut [u8]) {
    let crc = crc32fast::hash(&record[4..]);
    record[..4].copy_from_slice(&crc.to_le_bytes());
}

/// Marks a whole, valid record as superseded and reseals it.
pub fn mark_superseded(record: &mut [u8]) {
    record[6] |= FLAG_SUPERSEDED;
    seal(record);
}

/// Checks the header at the start of `buf` (without the CRC) and returns the record's total
/// length. `Short` means the header itself, or the record it announces, does not fit in `buf`.
pub fn check_header(buf: &[u8]) -> Result<(&RecordHeader, usize), DecodeError> {
    let Ok((header, _)) = RecordHeader::ref_from_prefix(buf) else {
        return Err(DecodeError::Short {
            needed: HEADER_BYTES,
            available: buf.len(),
        });
    };
    if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&header.version) {
        return Err(DecodeError::UnknownVersion(header.version));
    }
    let op = Op::from_u8(header.op).ok_or(DecodeError::BadOp(header.op))?;
    if header.flags & !FLAGS_KNOWN != 0 {
        return Err(DecodeError::UnknownFlags(header.flags & !FLAGS_KNOWN));
    }
    let value_len = header.value_len.get() as usize;
    if value_len > VALUE_BYTES_MAX {
        return Err(DecodeError::ValueTooLong(value_len));
    }
    if !op.has_value() && value_len != 0 {
        return Err(DecodeError::UnexpectedValue(op, value_len));
    }
    let len =
        HEADER_BYTES + header.recipient_count as usize + header.key_len.get() as usize + value_len;
    if len > buf.len() {
        return Err(DecodeError::Short {
            needed: len,
            available: buf.len(),
        });
    }
    Ok((header, len))
}

/// Decodes and fully checks (CRC included) the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Record<'_>, DecodeError> {
    let (header, len) = check_header(buf)?;
    let bytes = &buf[..len];
    let computed = crc32fast::hash(&bytes[4..]);
    let stored = header.crc32.get();
    if computed != stored {
        return Err(DecodeError::Crc { stored, computed });
    }
    Ok(Record { header, bytes })
}

/// A checked record, viewed in place.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    header: &'a RecordHeader,
    bytes: &'a [u8],
}

impl<'a> Record<'a> {
    /// The raw header.
    pub fn header(&self) -> &'a RecordHeader {
        self.header
    }
    /// The whole record's bytes, as stored and sent.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// The total length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    /// Never true: a record has at least its header. Present for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    pub fn op(&self) -> Op {
        Op::from_u8(self.header.op).expect("checked at decode")
    }
    pub fn seq(&self) -> Seq {
        Seq(self.header.queue_seq.get())
    }
    pub fn region(&self) -> RegionId {
        RegionId(self.header.region.get())
    }
    pub fn bucket(&self) -> BucketId {
        BucketId(self.header.bucket.get())
    }
    pub fn is_superseded(&self) -> bool {
        self.header.flags & FLAG_SUPERSEDED != 0
    }
    pub fn event_id(&self) -> EventId {
        EventId {
            origin_site: SiteId(self.header.origin_site),
            origin_member: MemberId(self.header.origin_member.get()),
            stream: StreamId(self.header.stream.get()),
            seq: self.header.stream_seq.get(),
        }
    }
    pub fn version(&self) -> VersionTag {
        VersionTag {
            timestamp_us: self.header.timestamp_us.get(),
            site: SiteId(self.header.version_site),
        }
    }
    /// The recipient site ids.
    pub fn recipients(&self) -> impl Iterator<Item = SiteId> + 'a {
        let n = self.header.recipient_count as usize;
        self.bytes[HEADER_BYTES..HEADER_BYTES + n]
            .iter()
            .map(|&b| SiteId(b))
    }
    pub fn key(&self) -> &'a [u8] {
        let start = HEADER_BYTES + self.header.recipient_count as usize;
        &self.bytes[start..start + self.header.key_len.get() as usize]
    }
    pub fn value(&self) -> &'a [u8] {
        let start = HEADER_BYTES
            + self.header.recipient_count as usize
            + self.header.key_len.get() as usize;
        &self.bytes[start..]
    }
    /// The event this record carries, with `recipients` (the caller's copy of
    /// [`Record::recipients`], or another set).
    pub fn event(&self, recipients: &'a [SiteId]) -> Event<'a> {
        Event {
            op: self.op(),
            region: self.region(),
            bucket: self.bucket(),
            id: self.event_id(),
            version: self.version(),
            recipients,
            key: self.key(),
            value: self.value(),
        }
    }
}
