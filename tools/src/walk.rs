//! Reading records out of arbitrary bytes: one after another while they check out, and past
//! anything that is not a record by trying every offset, as recovery's resync does.

use serde::Serialize;
use strait_queue::record::{self, FLAG_SUPERSEDED, Op, RecordHeader};

/// One record, every header field decoded, for printing.
#[derive(Debug, Serialize)]
pub struct RecordLine {
    pub offset: usize,
    pub length: usize,
    pub seq: u64,
    pub op: &'static str,
    pub flags: u8,
    pub superseded: bool,
    pub region: u16,
    pub bucket: u16,
    pub origin_site: u8,
    pub origin_member: u16,
    pub stream: u32,
    pub stream_seq: u64,
    pub version_timestamp_us: u64,
    pub version_site: u8,
    pub recipients: Vec<u8>,
    /// The key with non-printable bytes escaped (`\xNN`, `\n`, `\"`, ...).
    pub key: String,
    pub value_len: u32,
    pub crc_ok: bool,
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Create => "create",
        Op::Update => "update",
        Op::Destroy => "destroy",
        Op::VersionOnly => "version-only",
    }
}

impl RecordLine {
    /// `bytes` is the whole record whose header `record::check_header` accepted.
    fn new(offset: usize, h: &RecordHeader, bytes: &[u8], crc_ok: bool) -> RecordLine {
        let recipients = h.recipient_count as usize;
        let key_start = record::HEADER_BYTES + recipients;
        let key = &bytes[key_start..key_start + h.key_len.get() as usize];
        RecordLine {
            offset,
            length: bytes.len(),
            seq: h.queue_seq.get(),
            op: Op::from_u8(h.op).map_or("?", op_name),
            flags: h.flags,
            superseded: h.flags & FLAG_SUPERSEDED != 0,
            region: h.region.get(),
            bucket: h.bucket.get(),
            origin_site: h.origin_site,
            origin_member: h.origin_member.get(),
            stream: h.stream.get(),
            stream_seq: h.stream_seq.get(),
            version_timestamp_us: h.timestamp_us.get(),
            version_site: h.version_site,
            recipients: bytes[record::HEADER_BYTES..key_start].to_vec(),
            key: key.escape_ascii().to_string(),
            value_len: h.value_len.get(),
            crc_ok,
        }
    }
}

impl std::fmt::Display for RecordLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let recipients: Vec<String> = self.recipients.iter().map(u8::to_string).collect();
        write!(
            f,
            "@{} len={} seq={} op={} flags={:#04x}{} region={} bucket={} id={}/{}/{}/{} \
             version={}@{} recipients=[{}] key=\"{}\" value_len={} crc={}",
            self.offset,
            self.length,
            self.seq,
            self.op,
            self.flags,
            if self.superseded { "(superseded)" } else { "" },
            self.region,
            self.bucket,
            self.origin_site,
            self.origin_member,
            self.stream,
            self.stream_seq,
            self.version_timestamp_us,
            self.version_site,
            recipients.join(","),
            self.key,
            self.value_len,
            if self.crc_ok { "ok" } else { "bad" },
        )
    }
}

/// What lies at one place of a file.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Entry {
    Record(RecordLine),
    /// Bytes `offset..end` hold no valid record; `reason` is why the one expected at
    /// `offset` did not check out.
    Garbage {
        offset: usize,
        end: usize,
        reason: String,
    },
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Record(line) => line.fmt(f),
            Entry::Garbage {
                offset,
                end,
                reason,
            } => write!(
                f,
                "@{offset}..{end} garbage: {} bytes without a valid record ({reason})",
                end - offset
            ),
        }
    }
}

/// Reads the records of `data` from `start`. Records are read one after another; a record
/// whose CRC fails is listed (`crc_ok: false`) but its length is not trusted. From the first
/// bytes that are not a whole valid record, every offset is tried for one, and the bytes
/// skipped are listed as garbage. Zeros after the last non-zero byte end the walk.
pub fn walk(data: &[u8], start: usize) -> Vec<Entry> {
    let mut entries = Vec::new();
    let Some(last) = data
        .get(start..)
        .and_then(|rest| rest.iter().rposition(|&b| b != 0))
        .map(|i| start + i)
    else {
        return entries;
    };
    let mut at = start;
    // Where reading one record after another stopped, and why.
    let mut lost: Option<(usize, String)> = None;
    while at <= last {
        let rest = &data[at..];
        match lost.take() {
            None => match record::check_header(rest) {
                Ok((header, len)) => {
                    let verdict = record::decode(&rest[..len]);
                    entries.push(Entry::Record(RecordLine::new(
                        at,
                        header,
                        &rest[..len],
                        verdict.is_ok(),
                    )));
                    match verdict {
                        Ok(_) => at += len,
                        Err(e) => {
                            lost = Some((at, e.to_string()));
                            at += 1;
                        }
                    }
                }
                Err(e) => {
                    lost = Some((at, e.to_string()));
                    at += 1;
                }
            },
            Some((from, reason)) => {
                if record::decode(rest).is_ok() {
                    entries.push(Entry::Garbage {
                        offset: from,
                        end: at,
                        reason,
                    });
                } else {
                    lost = Some((from, reason));
                    at += 1;
                }
            }
        }
    }
    if let Some((from, reason)) = lost {
        entries.push(Entry::Garbage {
            offset: from,
            end: last + 1,
            reason,
        });
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_queue::ids::*;
    use strait_queue::record::Event;

    /// Records with sequence numbers 1.. and the given values, back to back from 0.
    fn records(values: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = vec![0u8; 1024];
        let mut offsets = Vec::new();
        let mut at = 0;
        for (i, value) in values.iter().enumerate() {
            let seq = i as u64 + 1;
            let ev = Event {
                op: Op::Update,
                region: RegionId(0),
                bucket: BucketId(1),
                id: EventId {
                    origin_site: SiteId(1),
                    origin_member: MemberId(1),
                    stream: StreamId(1),
                    seq,
                },
                version: VersionTag {
                    timestamp_us: 1,
                    site: SiteId(1),
                },
                recipients: &[SiteId(2)],
                key: b"k",
                value,
            };
            offsets.push(at);
            at += record::encode_into(&mut buf[at..], &ev, Seq(seq));
        }
        (buf, offsets)
    }

    fn summary(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| match e {
                Entry::Record(r) => format!("{}:seq{}:{}", r.offset, r.seq, r.crc_ok),
                Entry::Garbage { offset, end, .. } => format!("{offset}..{end}:garbage"),
            })
            .collect()
    }

    #[test]
    fn clean_records_then_zeros() {
        let (buf, o) = records(&[b"a", b"bb"]);
        assert_eq!(
            summary(&walk(&buf, 0)),
            [format!("{}:seq1:true", o[0]), format!("{}:seq2:true", o[1]),]
        );
        assert!(walk(&[0; 100], 0).is_empty());
        assert!(walk(&buf, buf.len()).is_empty());
    }

    #[test]
    fn finds_records_after_damage_even_when_they_end_in_zeros() {
        // The last record's final byte is zero, after the file's last non-zero byte.
        let (mut buf, o) = records(&[b"a", b"b", b"c\0"]);
        buf[o[1] + 52] ^= 0xff;
        assert_eq!(
            summary(&walk(&buf, 0)),
            [
                format!("{}:seq1:true", o[0]),
                format!("{}:seq2:false", o[1]),
                format!("{}..{}:garbage", o[1], o[2]),
                format!("{}:seq3:true", o[2]),
            ]
        );
    }

    #[test]
    fn garbage_without_records_after_it_ends_at_the_last_non_zero_byte() {
        let (mut buf, o) = records(&[b"a"]);
        let end = o[0] + 53;
        buf[end..end + 3].copy_from_slice(&[1, 2, 3]);
        let entries = walk(&buf, 0);
        assert_eq!(
            summary(&entries),
            [
                format!("{}:seq1:true", o[0]),
                format!("{end}..{}:garbage", end + 3),
            ]
        );
        let Entry::Garbage { reason, .. } = &entries[1] else {
            panic!("{entries:?}")
        };
        assert!(reason.contains("version"), "{reason}");
    }
}
