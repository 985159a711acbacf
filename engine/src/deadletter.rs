//! The dead-letter log format: pure encode and scan (docs/formats.md, "Dead-letter log").
//!
//! A region's log (`<directory>/dead-letters/<region>.log`, written by the node's shell) is
//! entries back to back. An entry is a 32-byte header ([`DeadLetterHeader`]), the reason
//! text (UTF-8) and the record bytes exactly as they were received (record format v1). The
//! header has its own CRC and a CRC of the rest, so a torn tail (a write cut short by a
//! crash: the shell truncates the file at the tail's offset) is told apart from damage in the
//! middle (kept for the operator).
//!
//! [`scan`] reads a log up to the first bytes that are not an entry; [`DeadLetterLog::read`]
//! reads all of it, on past every damaged range. [`DeadLetterLog::replay`] applies its entries
//! through a caller's function (the shell's [`crate::apply::replay_record`] on the right
//! store) and splits them into the ones that no longer need keeping and the ones still
//! dead-lettered; [`Replay::kept_log`] gives the bytes to keep: the kept entries and every
//! damaged range, as they were.

use crate::apply::{ApplyOutcome, DeadLetterReason};
use strait_queue::ids::SiteId;
use strait_queue::record::{self, DecodeError, RECORD_BYTES_MAX, Record};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The first four bytes of every entry.
pub const ENTRY_MAGIC: [u8; 4] = *b"STDL";
/// The entry format version this build writes and reads.
pub const ENTRY_VERSION: u8 = 1;
/// Bytes of an entry's fixed header.
pub const ENTRY_HEADER_BYTES: usize = 32;
/// Longest reason text kept in an entry; a longer text is cut at a character boundary.
pub const REASON_TEXT_BYTES_MAX: usize = 1024;
/// Largest possible entry.
pub const ENTRY_BYTES_MAX: usize = ENTRY_HEADER_BYTES + REASON_TEXT_BYTES_MAX + RECORD_BYTES_MAX;

/// Bytes the header CRC covers: everything before it.
const HEADER_CRC_START: usize = 28;

/// The fixed part of a dead-letter entry.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct DeadLetterHeader {
    /// [`ENTRY_MAGIC`].
    pub magic: [u8; 4],
    /// [`ENTRY_VERSION`].
    pub version: u8,
    /// A [`DeadLetterReason`] code.
    pub reason: u8,
    /// The site whose sender delivered the record.
    pub sending_site: u8,
    /// Written 0; not looked at.
    pub reserved: u8,
    /// The whole entry's length: header, text and record.
    pub entry_len: U32,
    /// When the record was dead-lettered: milliseconds since the Unix epoch.
    pub time_ms: U64,
    /// The reason text's length in bytes.
    pub text_len: U16,
    /// Written 0; not looked at.
    pub reserved2: U16,
    /// CRC-32 of the entry's bytes after the header (text and record).
    pub body_crc: U32,
    /// CRC-32 of the header's bytes before this field.
    pub header_crc: U32,
}

const _: () = assert!(size_of::<DeadLetterHeader>() == ENTRY_HEADER_BYTES);
const _: () = assert!(HEADER_CRC_START + 4 == ENTRY_HEADER_BYTES);
const _: () = assert!(ENTRY_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(REASON_TEXT_BYTES_MAX <= u16::MAX as usize);

/// Encodes one entry: `record`, as received from `sending_site`, dead-lettered at `time_ms`
/// for `reason`, described by `text` (cut to [`REASON_TEXT_BYTES_MAX`] bytes).
pub fn encode_entry(
    time_ms: u64,
    sending_site: SiteId,
    reason: DeadLetterReason,
    text: &str,
    record: &Record<'_>,
) -> Vec<u8> {
    let text = cut_text(text);
    let len = ENTRY_HEADER_BYTES + text.len() + record.len();
    let mut entry = Vec::with_capacity(len);
    let mut header = DeadLetterHeader {
        magic: ENTRY_MAGIC,
        version: ENTRY_VERSION,
        reason: reason.code(),
        sending_site: sending_site.0,
        reserved: 0,
        // Within u32 and u16: the const assertions above and `cut_text`.
        entry_len: U32::new(len as u32),
        time_ms: U64::new(time_ms),
        text_len: U16::new(text.len() as u16),
        reserved2: U16::new(0),
        body_crc: U32::new(0),
        header_crc: U32::new(0),
    };
    let mut body = crc32fast::Hasher::new();
    body.update(text.as_bytes());
    body.update(record.bytes());
    header.body_crc = U32::new(body.finalize());
    header.header_crc = U32::new(crc32fast::hash(&header.as_bytes()[..HEADER_CRC_START]));
    entry.extend_from_slice(header.as_bytes());
    entry.extend_from_slice(text.as_bytes());
    entry.extend_from_slice(record.bytes());
    entry
}

/// `text`, cut to at most [`REASON_TEXT_BYTES_MAX`] bytes at a character boundary.
fn cut_text(text: &str) -> &str {
    let mut end = text.len().min(REASON_TEXT_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One entry, viewed in place.
#[derive(Clone, Copy, Debug)]
pub struct DeadLetter<'a> {
    /// Where the entry starts in the log.
    pub offset: usize,
    pub time_ms: u64,
    pub sending_site: SiteId,
    pub reason: DeadLetterReason,
    pub text: &'a str,
    /// The record as received, checked (CRC included).
    pub record: Record<'a>,
    /// The whole entry's bytes.
    pub bytes: &'a [u8],
}

/// Why the bytes at an offset are not an entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry header cut short: {available} of {ENTRY_HEADER_BYTES} bytes")]
    ShortHeader { available: usize },
    #[error("entry cut short: {needed} bytes announced, {available} present")]
    ShortEntry { needed: usize, available: usize },
    #[error("bad magic {0:02x?}")]
    Magic([u8; 4]),
    #[error("entry format version {0} is not readable by this build (reads {ENTRY_VERSION})")]
    UnknownVersion(u8),
    #[error("header CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderCrc { stored: u32, computed: u32 },
    #[error("entry length {entry_len} cannot hold a {text_len}-byte text and a record")]
    BadLength { entry_len: usize, text_len: usize },
    #[error("body CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BodyCrc { stored: u32, computed: u32 },
    #[error("unknown reason code {0}")]
    UnknownReason(u8),
    #[error("reason text is not UTF-8")]
    TextNotUtf8,
    #[error("record: {0}")]
    Record(#[from] DecodeError),
    #[error("record of {record_len} bytes does not fill the {room} bytes the entry leaves it")]
    RecordLength { record_len: usize, room: usize },
}

/// What follows the last whole entry of a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// Nothing: the entries end at the end of the log.
    Clean,
    /// An entry cut short, or zero bytes: a write a crash interrupted. The shell truncates the
    /// log at `offset` before it appends.
    Torn { offset: usize, error: EntryError },
    /// Bytes that are not an entry, with more bytes after them than a cut write leaves:
    /// damage. `resume` is the offset of the next whole entry after it, if any
    /// ([`scan_from`] reads on from there). The log is kept as it is for the operator.
    Corrupt {
        offset: usize,
        error: EntryError,
        resume: Option<usize>,
    },
}

/// Reads the entries of `log` from its start up to the first bytes that are not an entry.
pub fn scan(log: &[u8]) -> (Vec<DeadLetter<'_>>, Tail) {
    scan_from(log, 0)
}

/// Reads the entries of `log` from offset `start` on (offsets stay those of `log`).
pub fn scan_from(log: &[u8], start: usize) -> (Vec<DeadLetter<'_>>, Tail) {
    let mut entries = Vec::new();
    let mut at = start;
    loop {
        let Some(rest) = log.get(at..).filter(|rest| !rest.is_empty()) else {
            return (entries, Tail::Clean);
        };
        match read_entry(log, at) {
            Ok(entry) => {
                at += entry.bytes.len();
                entries.push(entry);
            }
            Err(error) => {
                let torn = matches!(
                    error,
                    EntryError::ShortHeader { .. } | EntryError::ShortEntry { .. }
                ) || rest.iter().all(|&b| b == 0);
                let tail = if torn {
                    Tail::Torn { offset: at, error }
                } else {
                    Tail::Corrupt {
                        offset: at,
                        error,
                        resume: resync(log, at + 1),
                    }
                };
                return (entries, tail);
            }
        }
    }
}

/// The first offset from `from` on where a whole entry lies.
fn resync(log: &[u8], from: usize) -> Option<usize> {
    (from..log.len()).find(|&at| log[at..].starts_with(&ENTRY_MAGIC) && read_entry(log, at).is_ok())
}

/// Reads and fully checks the entry at `at`.
fn read_entry(log: &[u8], at: usize) -> Result<DeadLetter<'_>, EntryError> {
    let rest = log.get(at..).unwrap_or_default();
    let Ok((header, _)) = DeadLetterHeader::ref_from_prefix(rest) else {
        return Err(EntryError::ShortHeader {
            available: rest.len(),
        });
    };
    if header.magic != ENTRY_MAGIC {
        return Err(EntryError::Magic(header.magic));
    }
    if header.version != ENTRY_VERSION {
        return Err(EntryError::UnknownVersion(header.version));
    }
    let stored = header.header_crc.get();
    let computed = crc32fast::hash(&rest[..HEADER_CRC_START]);
    if stored != computed {
        return Err(EntryError::HeaderCrc { stored, computed });
    }
    let entry_len = header.entry_len.get() as usize;
    let text_len = usize::from(header.text_len.get());
    let record_start = ENTRY_HEADER_BYTES + text_len;
    if entry_len < record_start + record::HEADER_BYTES || entry_len > ENTRY_BYTES_MAX {
        return Err(EntryError::BadLength {
            entry_len,
            text_len,
        });
    }
    let Some(bytes) = rest.get(..entry_len) else {
        return Err(EntryError::ShortEntry {
            needed: entry_len,
            available: rest.len(),
        });
    };
    let stored = header.body_crc.get();
    let computed = crc32fast::hash(&bytes[ENTRY_HEADER_BYTES..]);
    if stored != computed {
        return Err(EntryError::BodyCrc { stored, computed });
    }
    let reason = DeadLetterReason::from_code(header.reason)
        .ok_or(EntryError::UnknownReason(header.reason))?;
    let text = std::str::from_utf8(&bytes[ENTRY_HEADER_BYTES..record_start])
        .map_err(|_| EntryError::TextNotUtf8)?;
    let record_bytes = &bytes[record_start..];
    let record = record::decode(record_bytes)?;
    if record.len() != record_bytes.len() {
        return Err(EntryError::RecordLength {
            record_len: record.len(),
            room: record_bytes.len(),
        });
    }
    Ok(DeadLetter {
        offset: at,
        time_ms: header.time_ms.get(),
        sending_site: SiteId(header.sending_site),
        reason,
        text,
        record,
        bytes,
    })
}

/// Bytes in the middle of a log that are not an entry: damage, kept for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damaged<'a> {
    /// Where the damage starts in the log.
    pub offset: usize,
    /// Why the bytes at `offset` are not an entry.
    pub error: EntryError,
    /// The damaged bytes: up to the next whole entry, or to the end of the log.
    pub bytes: &'a [u8],
}

/// A log as read: its entries, the damaged ranges between them, and what follows the last
/// entry. The model that listing and replaying (`strait dead-letters list|replay`) work on;
/// the shell reads the file and writes back [`Replay::kept_log`].
#[derive(Clone, Debug)]
pub struct DeadLetterLog<'a> {
    /// Every whole entry, in log order, those after damage included.
    pub entries: Vec<DeadLetter<'a>>,
    /// Every range of [`Tail::Corrupt`] bytes, in log order (a corrupt tail included).
    pub damaged: Vec<Damaged<'a>>,
    /// What follows the last whole entry.
    pub tail: Tail,
}

/// The result of [`DeadLetterLog::replay`].
#[derive(Clone, Debug)]
pub struct Replay<'a> {
    /// The entries whose outcome was anything but a dead letter (applied, rejected by the
    /// conflict rule, a duplicate: nothing is left to do for them), with that outcome.
    pub replayed: Vec<(DeadLetter<'a>, ApplyOutcome)>,
    /// The entries still dead-lettered, with the new cause.
    pub kept: Vec<(DeadLetter<'a>, ApplyOutcome)>,
    /// The log's damaged ranges, kept as they were.
    pub damaged: Vec<Damaged<'a>>,
}

impl<'a> DeadLetterLog<'a> {
    /// Scans all of `log`: at damage ([`Tail::Corrupt`]) it notes the damaged range and reads
    /// on from the next whole entry ([`scan_from`]).
    pub fn read(log: &'a [u8]) -> DeadLetterLog<'a> {
        let (mut entries, mut tail) = scan(log);
        let mut damaged = Vec::new();
        while let Tail::Corrupt {
            offset,
            error,
            resume,
        } = &tail
        {
            let end = resume.unwrap_or(log.len());
            damaged.push(Damaged {
                offset: *offset,
                error: error.clone(),
                bytes: log.get(*offset..end).unwrap_or_default(),
            });
            // `resume` lies past `offset`, so every round reads further on.
            let Some(resume) = *resume else {
                break;
            };
            let (more, next) = scan_from(log, resume);
            entries.extend(more);
            tail = next;
        }
        DeadLetterLog {
            entries,
            damaged,
            tail,
        }
    }

    /// How many entries were dead-lettered for `reason`.
    pub fn count(&self, reason: DeadLetterReason) -> usize {
        self.entries.iter().filter(|e| e.reason == reason).count()
    }

    /// Applies every entry, in log order, with `apply` (the shell's
    /// [`crate::apply::replay_record`] on the entry's region) and splits them by outcome.
    pub fn replay(&self, mut apply: impl FnMut(&DeadLetter<'a>) -> ApplyOutcome) -> Replay<'a> {
        let (replayed, kept) = self
            .entries
            .iter()
            .map(|entry| (*entry, apply(entry)))
            .partition(|(_, outcome)| !matches!(outcome, ApplyOutcome::DeadLetter(_)));
        Replay {
            replayed,
            kept,
            damaged: self.damaged.clone(),
        }
    }
}

impl Replay<'_> {
    /// The log to write back: the kept entries (their first time and reason) and the damaged
    /// ranges, in log order, with their bytes as they were. Only a torn tail is left out.
    pub fn kept_log(&self) -> Vec<u8> {
        let mut pieces: Vec<(usize, &[u8])> = self
            .kept
            .iter()
            .map(|(entry, _)| (entry.offset, entry.bytes))
            .chain(self.damaged.iter().map(|d| (d.offset, d.bytes)))
            .collect();
        pieces.sort_unstable_by_key(|&(offset, _)| offset);
        pieces
            .into_iter()
            .flat_map(|(_, bytes)| bytes)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        assert_eq!(cut_text("short"), "short");
        let long = "é".repeat(REASON_TEXT_BYTES_MAX);
        let cut = cut_text(&long);
        assert_eq!(cut.len(), REASON_TEXT_BYTES_MAX);
        let odd = format!("a{long}");
        assert_eq!(cut_text(&odd).len(), REASON_TEXT_BYTES_MAX - 1);
    }

    #[test]
    fn an_empty_log_is_clean() {
        let (entries, tail) = scan(&[]);
        assert!(entries.is_empty());
        assert_eq!(tail, Tail::Clean);
        assert_eq!(scan_from(&[1, 2], 7).1, Tail::Clean);
    }
}
