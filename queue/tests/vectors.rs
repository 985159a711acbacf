//! Format test vectors: committed bytes that every future build must keep decoding.
//!
//! `testdata/records-v1.bin` holds the records of [`RECORDS`] back to back,
//! `testdata/records-v1.txt` their expected decode, and `testdata/segment-v1.seg`,
//! `testdata/segment-v2.seg` and `testdata/segment-v3.seg` a small segment of
//! [`SEGMENT_RECORDS`] in segment format versions 1, 2 and 3 (version 2 has two ack slots,
//! each with an offset; version 3 changed only commit journal segments). `docs/formats.md`
//! describes the formats byte by byte.
//!
//! The tests below read the committed files and compare every field with the event
//! definitions in this file, not with a fresh encoding, so a change to the encoder or the
//! decoder that breaks v1 shows up here. The files are written by the ignored test
//! `regenerate_vectors`:
//!
//! ```text
//! cargo test -p strait-queue --test vectors -- --ignored regenerate_vectors
//! ```
//!
//! Regenerate only when adding vectors. When a format v2 comes, the v1 files and these tests
//! stay as they are (except `encoder_writes_the_committed_bytes`, which pins what this build
//! writes) and v2 gets files of its own: `segment-v1.seg` is frozen since segment format 2,
//! and only read here.

use std::fmt::Write as _;
use std::path::PathBuf;
use strait_queue::ids::*;
use strait_queue::mmap::MmapDisk;
use strait_queue::queue::QueueConfig;
use strait_queue::record::{self, DecodeError, Event, Op, Record};
use strait_queue::segment::{self, HeaderError, SEGMENT_HEADER_BYTES, Scan, SegmentInfo, Tail};
use strait_queue::store::{RecoveryError, recover};

/// One test vector: an event, the queue sequence number it was written with, whether it was
/// then marked superseded, and the CRC its committed bytes carry.
#[derive(Debug)]
struct Vector {
    seq: u64,
    op: Op,
    superseded: bool,
    region: u16,
    bucket: u16,
    id: EventId,
    version: VersionTag,
    recipients: &'static [SiteId],
    key: &'static [u8],
    value: &'static [u8],
    crc32: u32,
}

const fn id(origin_site: u8, origin_member: u16, stream: u32, seq: u64) -> EventId {
    EventId {
        origin_site: SiteId(origin_site),
        origin_member: MemberId(origin_member),
        stream: StreamId(stream),
        seq,
    }
}

const fn tag(timestamp_us: u64, site: u8) -> VersionTag {
    VersionTag {
        timestamp_us,
        site: SiteId(site),
    }
}

const T0: u64 = 1_700_000_000_000_000;

/// The records of `testdata/records-v1.bin`, in file order.
static RECORDS: &[Vector] = &[
    // The worked example of docs/formats.md: one recipient.
    Vector {
        seq: 1,
        op: Op::Create,
        superseded: false,
        region: 3,
        bucket: 17,
        id: id(1, 2, 17, 1),
        version: tag(T0, 1),
        recipients: &[SiteId(2)],
        key: b"user:42",
        value: b"hello",
        crc32: 0x9722_2991,
    },
    // Several recipients.
    Vector {
        seq: 2,
        op: Op::Update,
        superseded: false,
        region: 3,
        bucket: 17,
        id: id(1, 2, 17, 2),
        version: tag(T0 + 250, 1),
        recipients: &[SiteId(2), SiteId(3), SiteId(4)],
        key: b"user:42",
        value: b"hello, world",
        crc32: 0x3a4b_0643,
    },
    // No recipients; a destroy carries no value.
    Vector {
        seq: 3,
        op: Op::Destroy,
        superseded: false,
        region: 3,
        bucket: 5,
        id: id(1, 2, 5, 1),
        version: tag(T0 + 1_000, 1),
        recipients: &[],
        key: b"user:7",
        value: b"",
        crc32: 0xda95_3bc1,
    },
    // Version-only, written by another site than the origin; carries no value.
    Vector {
        seq: 4,
        op: Op::VersionOnly,
        superseded: false,
        region: 3,
        bucket: 17,
        id: id(1, 2, 17, 3),
        version: tag(T0 + 2_000, 2),
        recipients: &[SiteId(2), SiteId(3)],
        key: b"user:42",
        value: b"",
        crc32: 0x0d62_8f93,
    },
    // Empty key, binary value.
    Vector {
        seq: 5,
        op: Op::Update,
        superseded: false,
        region: 0,
        bucket: 0,
        id: id(2, 1, 0, 1),
        version: tag(T0 + 3_000, 2),
        recipients: &[SiteId(1)],
        key: b"",
        value: &[0x00, 0x01, 0x02, 0xff],
        crc32: 0x4f57_572f,
    },
    // A create with an empty value.
    Vector {
        seq: 6,
        op: Op::Create,
        superseded: false,
        region: 4,
        bucket: 9,
        id: id(1, 3, 9, 1),
        version: tag(T0 + 4_000, 1),
        recipients: &[SiteId(3), SiteId(1)],
        key: b"flag:on",
        value: b"",
        crc32: 0x120a_d713,
    },
    // Superseded by the next record (conflation).
    Vector {
        seq: 7,
        op: Op::Update,
        superseded: true,
        region: 3,
        bucket: 17,
        id: id(1, 2, 17, 4),
        version: tag(T0 + 5_000, 1),
        recipients: &[SiteId(2), SiteId(3)],
        key: b"user:42",
        value: b"v1",
        crc32: 0x6aff_5352,
    },
    Vector {
        seq: 8,
        op: Op::Update,
        superseded: false,
        region: 3,
        bucket: 17,
        id: id(1, 2, 17, 5),
        version: tag(T0 + 6_000, 1),
        recipients: &[SiteId(2), SiteId(3)],
        key: b"user:42",
        value: b"v2",
        crc32: 0x04a9_62e7,
    },
    // Every multi-byte field with distinct bytes (byte order), the extreme site ids, a binary
    // key.
    Vector {
        seq: 9,
        op: Op::Create,
        superseded: false,
        region: 0xfffe,
        bucket: 0x1234,
        id: id(255, 0xabcd, 0xfedc_ba98, 0x0123_4567_89ab_cdef),
        version: tag(0x0011_2233_4455_6677, 0),
        recipients: &[SiteId(0), SiteId(255), SiteId(128)],
        key: b"\x00\xff\"\\\n",
        value: b"0123456789abcdefghijklmnopqrstuv",
        crc32: 0x7a1c_85f1,
    },
];

/// The records of `testdata/segment-v1.seg`, from offset 64.
static SEGMENT_RECORDS: &[Vector] = &[
    Vector {
        seq: 1,
        op: Op::Create,
        superseded: false,
        region: 1,
        bucket: 5,
        id: id(1, 1, 5, 1),
        version: tag(T0, 1),
        recipients: &[SiteId(2)],
        key: b"a",
        value: b"1",
        crc32: 0x1a20_cc3e,
    },
    Vector {
        seq: 2,
        op: Op::Create,
        superseded: false,
        region: 1,
        bucket: 5,
        id: id(1, 1, 5, 2),
        version: tag(T0 + 10, 1),
        recipients: &[SiteId(2)],
        key: b"b",
        value: b"2",
        crc32: 0x622e_2e73,
    },
    Vector {
        seq: 3,
        op: Op::Update,
        superseded: true,
        region: 1,
        bucket: 5,
        id: id(1, 1, 5, 3),
        version: tag(T0 + 20, 1),
        recipients: &[SiteId(2)],
        key: b"a",
        value: b"3",
        crc32: 0xf553_0b7a,
    },
    Vector {
        seq: 4,
        op: Op::Update,
        superseded: false,
        region: 1,
        bucket: 5,
        id: id(1, 1, 5, 4),
        version: tag(T0 + 30, 1),
        recipients: &[SiteId(2)],
        key: b"a",
        value: b"4",
        crc32: 0xa996_2bc8,
    },
    Vector {
        seq: 5,
        op: Op::Destroy,
        superseded: false,
        region: 1,
        bucket: 5,
        id: id(1, 1, 5, 5),
        version: tag(T0 + 40, 1),
        recipients: &[SiteId(2)],
        key: b"b",
        value: b"",
        crc32: 0xda9b_2067,
    },
];

/// What `testdata/segment-v1.seg`'s header says.
const SEGMENT_INFO: SegmentInfo = SegmentInfo {
    queue: QueueId(5),
    persistent: true,
    segment_seq: 1,
    first_seq: Seq(1),
    capacity: SEGMENT_FILE_BYTES as u32,
    acked: Some(Seq(2)),
    ack_offset: None,
};
/// Where seq 3, the first record after the acknowledged 2, lies in the segment files: after
/// the header and two records of 53 bytes.
const SEGMENT_ACK_OFFSET: u32 = 64 + 2 * 53;
/// Where seq 2 lies: `segment-v2.seg`'s first ack slot says 1 is acknowledged, its second 2.
const SEGMENT_ACK_OFFSET_BEFORE: u32 = 64 + 53;
/// What `testdata/segment-v2.seg`'s header says.
const SEGMENT_INFO_V2: SegmentInfo = SegmentInfo {
    ack_offset: Some(SEGMENT_ACK_OFFSET),
    ..SEGMENT_INFO
};
const SEGMENT_FILE_BYTES: usize = 4096;

/// The first record of `records-v1.bin`, as printed in docs/formats.md.
#[rustfmt::skip]
const WORKED_EXAMPLE: [u8; 63] = [
    0x91, 0x29, 0x22, 0x97,                         //  0 crc32 0x97222991
    0x01,                                           //  4 version 1
    0x01,                                           //  5 op Create
    0x00,                                           //  6 flags
    0x01,                                           //  7 recipient_count 1
    0x07, 0x00,                                     //  8 key_len 7
    0x05, 0x00, 0x00, 0x00,                         // 10 value_len 5
    0x03, 0x00,                                     // 14 region 3
    0x11, 0x00,                                     // 16 bucket 17
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 18 queue_seq 1
    0x01,                                           // 26 origin_site 1
    0x01,                                           // 27 version_site 1
    0x02, 0x00,                                     // 28 origin_member 2
    0x11, 0x00, 0x00, 0x00,                         // 30 stream 17
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 34 stream_seq 1
    0x00, 0x40, 0x1e, 0x18, 0x24, 0x0a, 0x06, 0x00, // 42 timestamp_us 1700000000000000
    0x02,                                           // 50 recipients [2]
    b'u', b's', b'e', b'r', b':', b'4', b'2',       // 51 key "user:42"
    b'h', b'e', b'l', b'l', b'o',                   // 58 value "hello"
];

/// The header of `segment-v1.seg`, as printed in docs/formats.md.
#[rustfmt::skip]
const SEGMENT_HEADER: [u8; SEGMENT_HEADER_BYTES] = [
    b'S', b'T', b'R', b'A', b'I', b'T', b'S', b'G', //  0 magic
    0x01, 0x00,                                     //  8 version 1
    0x40, 0x00,                                     // 10 header_bytes 64
    0x05, 0x00,                                     // 12 queue 5
    0x01, 0x00,                                     // 14 flags: persistent
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 16 segment_seq 1
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 24 first_seq 1
    0x00, 0x10, 0x00, 0x00,                         // 32 capacity 4096
    0xd1, 0xf4, 0xd7, 0x2f,                         // 36 header_crc 0x2fd7f4d1
    0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 40 ack_seq 2
    0x3d, 0x75, 0x76, 0x27,                         // 48 ack_crc 0x2776753d
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 52 reserved
    0x00, 0x00, 0x00, 0x00,
];

/// The header of `segment-v2.seg`, as printed in docs/formats.md.
#[rustfmt::skip]
const SEGMENT_HEADER_V2: [u8; SEGMENT_HEADER_BYTES] = [
    b'S', b'T', b'R', b'A', b'I', b'T', b'S', b'G', //  0 magic
    0x02, 0x00,                                     //  8 version 2
    0x40, 0x00,                                     // 10 header_bytes 64
    0x05, 0x00,                                     // 12 queue 5
    0x01, 0x00,                                     // 14 flags: persistent
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 16 segment_seq 1
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 24 first_seq 1
    0x00, 0x10, 0x00, 0x00,                         // 32 capacity 4096
    0xf6, 0xf3, 0x09, 0x2d,                         // 36 header_crc 0x2d09f3f6
    0x01, 0x00, 0x00, 0x00,                         // 40 slot 0: acked_here 1 (seq 1)
    0x75, 0x00, 0x00, 0x00,                         // 44 slot 0: offset 117
    0xf8, 0x92, 0xa4, 0xdf,                         // 48 slot 0: crc 0xdfa492f8
    0x02, 0x00, 0x00, 0x00,                         // 52 slot 1: acked_here 2 (seq 2)
    0xaa, 0x00, 0x00, 0x00,                         // 56 slot 1: offset 170
    0xd4, 0x3c, 0x1c, 0x2f,                         // 60 slot 1: crc 0x2f1c3cd4
];

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    let path = testdata(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Vector {
    fn event(&self) -> Event<'static> {
        Event {
            op: self.op,
            region: RegionId(self.region),
            bucket: BucketId(self.bucket),
            id: self.id,
            version: self.version,
            recipients: self.recipients,
            key: self.key,
            value: self.value,
        }
    }

    /// The length docs/formats.md gives: 50 + recipients + key + value.
    fn len(&self) -> usize {
        50 + self.recipients.len() + self.key.len() + self.value.len()
    }

    /// Asserts that `rec` decodes to exactly this vector.
    fn assert_decodes_to(&self, rec: &Record<'_>, what: &str) {
        let h = rec.header();
        assert_eq!(rec.len(), self.len(), "{what}: length");
        assert_eq!(h.crc32.get(), self.crc32, "{what}: crc32");
        assert_eq!(h.version, 1, "{what}: version");
        assert_eq!(h.op, self.op as u8, "{what}: op byte");
        assert_eq!(rec.op(), self.op, "{what}: op");
        assert_eq!(h.flags, u8::from(self.superseded), "{what}: flags");
        assert_eq!(rec.is_superseded(), self.superseded, "{what}: superseded");
        assert_eq!(
            h.recipient_count as usize,
            self.recipients.len(),
            "{what}: recipient count"
        );
        assert_eq!(h.key_len.get() as usize, self.key.len(), "{what}: key_len");
        assert_eq!(
            h.value_len.get() as usize,
            self.value.len(),
            "{what}: value_len"
        );
        assert_eq!(rec.seq(), Seq(self.seq), "{what}: seq");
        assert_eq!(rec.region(), RegionId(self.region), "{what}: region");
        assert_eq!(rec.bucket(), BucketId(self.bucket), "{what}: bucket");
        assert_eq!(rec.event_id(), self.id, "{what}: event id");
        assert_eq!(rec.version(), self.version, "{what}: version tag");
        assert_eq!(
            rec.recipients().collect::<Vec<_>>(),
            self.recipients,
            "{what}: recipients"
        );
        assert_eq!(rec.key(), self.key, "{what}: key");
        assert_eq!(rec.value(), self.value, "{what}: value");
    }
}

/// Encodes `vectors` back to back from `at` in `dst`, marking the superseded ones; returns
/// the end.
fn encode_all(dst: &mut [u8], mut at: usize, vectors: &[Vector]) -> usize {
    for v in vectors {
        let ev = v.event();
        let len = record::encoded_len(&ev).expect("vector within limits");
        record::encode_into(&mut dst[at..], &ev, Seq(v.seq));
        if v.superseded {
            record::mark_superseded(&mut dst[at..at + len]);
        }
        at += len;
    }
    at
}

fn records_bin() -> Vec<u8> {
    let len = RECORDS.iter().map(Vector::len).sum();
    let mut out = vec![0; len];
    assert_eq!(encode_all(&mut out, 0, RECORDS), len);
    out
}

/// `segment-v3.seg`: the records, header fields and acknowledgements of `segment-v2.seg`, as
/// this build writes them.
fn segment_file() -> Vec<u8> {
    let mut out = vec![0; SEGMENT_FILE_BYTES];
    segment::write_header(
        &mut out,
        &SegmentInfo {
            acked: None,
            ..SEGMENT_INFO_V2
        },
    );
    encode_all(&mut out, SEGMENT_HEADER_BYTES, SEGMENT_RECORDS);
    // Two acknowledgements, one in each slot.
    segment::write_ack(&mut out, Seq(1), SEGMENT_ACK_OFFSET_BEFORE);
    segment::write_ack(&mut out, Seq(2), SEGMENT_ACK_OFFSET);
    out
}

/// Offsets of the records of [`RECORDS`] in `records-v1.bin`, from the documented lengths.
fn record_offsets() -> Vec<usize> {
    RECORDS
        .iter()
        .scan(0, |at, v| {
            let start = *at;
            *at += v.len();
            Some(start)
        })
        .collect()
}

fn hex_lines(out: &mut String, bytes: &[u8]) {
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(out, "    {:04x}  {}", i * 16, hex.join(" ")).unwrap();
    }
}

/// The human-readable listing of `records-v1.txt`: every record of `bin`, decoded.
fn listing(bin: &[u8]) -> String {
    let mut out = String::new();
    out.push_str(
        "# Expected decode of testdata/records-v1.bin (Strait record format v1).\n\
         # Written by: cargo test -p strait-queue --test vectors -- --ignored regenerate_vectors\n\
         # Layout: docs/formats.md. All integers are little-endian in the file.\n",
    );
    let mut at = 0;
    let mut n = 0;
    while at < bin.len() {
        let rec = record::decode(&bin[at..]).unwrap_or_else(|e| panic!("record at {at}: {e}"));
        let h = rec.header();
        let ev = rec.event_id();
        let tag = rec.version();
        let recipients: Vec<String> = rec.recipients().map(|s| s.to_string()).collect();
        let w = &mut out;
        writeln!(w, "\nrecord {n}").unwrap();
        writeln!(w, "  offset           {at}").unwrap();
        writeln!(w, "  length           {}", rec.len()).unwrap();
        writeln!(
            w,
            "  crc32            {:#010x} (CRC-32/IEEE of file bytes {}..{})",
            h.crc32.get(),
            at + 4,
            at + rec.len()
        )
        .unwrap();
        writeln!(w, "  version          {}", h.version).unwrap();
        writeln!(w, "  op               {} ({:?})", h.op, rec.op()).unwrap();
        let superseded = if rec.is_superseded() {
            " (superseded)"
        } else {
            ""
        };
        writeln!(w, "  flags            {:#04x}{superseded}", h.flags).unwrap();
        writeln!(w, "  recipient_count  {}", h.recipient_count).unwrap();
        writeln!(w, "  key_len          {}", h.key_len.get()).unwrap();
        writeln!(w, "  value_len        {}", h.value_len.get()).unwrap();
        writeln!(w, "  region           {}", rec.region()).unwrap();
        writeln!(w, "  bucket           {}", rec.bucket()).unwrap();
        writeln!(w, "  queue_seq        {}", rec.seq()).unwrap();
        writeln!(w, "  origin_site      {}", ev.origin_site).unwrap();
        writeln!(w, "  version_site     {}", tag.site).unwrap();
        writeln!(w, "  origin_member    {}", ev.origin_member).unwrap();
        writeln!(w, "  stream           {}", ev.stream).unwrap();
        writeln!(w, "  stream_seq       {}", ev.seq).unwrap();
        writeln!(w, "  timestamp_us     {}", tag.timestamp_us).unwrap();
        writeln!(w, "  recipients       [{}]", recipients.join(", ")).unwrap();
        writeln!(w, "  key              \"{}\"", rec.key().escape_ascii()).unwrap();
        writeln!(w, "  value            \"{}\"", rec.value().escape_ascii()).unwrap();
        writeln!(w, "  bytes").unwrap();
        hex_lines(w, rec.bytes());
        at += rec.len();
        n += 1;
    }
    out
}

/// Writes the committed files. Run only to add vectors; see the module documentation.
#[test]
#[ignore = "writes testdata/; run with --ignored to regenerate the vectors"]
fn regenerate_vectors() {
    // A format's files are frozen once a build writes another version: the next version
    // gets files of its own (`segment-v1.seg` is no longer written).
    assert_eq!(
        (record::FORMAT_VERSION, segment::SEGMENT_VERSION),
        (1, 3),
        "this build writes other versions: leave these vectors as they are"
    );
    let bin = records_bin();
    std::fs::write(testdata("records-v1.bin"), &bin).unwrap();
    std::fs::write(testdata("records-v1.txt"), listing(&bin)).unwrap();
    std::fs::write(testdata("segment-v3.seg"), segment_file()).unwrap();
}

#[test]
fn committed_records_decode_to_the_vectors() {
    let bin = read("records-v1.bin");
    let offsets = record_offsets();
    let total: usize = RECORDS.iter().map(Vector::len).sum();
    assert_eq!(bin.len(), total, "records-v1.bin length");
    for (v, &at) in RECORDS.iter().zip(&offsets) {
        let what = format!("records-v1.bin record seq {} at {at}", v.seq);
        // In the stream, and cut to exactly its own bytes.
        let rec = record::decode(&bin[at..]).unwrap_or_else(|e| panic!("{what}: {e}"));
        v.assert_decodes_to(&rec, &what);
        let alone = record::decode(&bin[at..at + v.len()]).unwrap();
        v.assert_decodes_to(&alone, &what);
        // The CRC covers every byte after the CRC field.
        assert_eq!(
            crc32fast::hash(&bin[at + 4..at + v.len()]),
            v.crc32,
            "{what}"
        );
    }
}

#[test]
fn committed_listing_matches_the_records() {
    let bin = read("records-v1.bin");
    let txt = String::from_utf8(read("records-v1.txt")).unwrap();
    assert_eq!(txt, listing(&bin));
    assert_eq!(txt.matches("\nrecord ").count(), RECORDS.len());
}

#[test]
fn worked_example_is_the_first_record() {
    let bin = read("records-v1.bin");
    assert_eq!(bin[..WORKED_EXAMPLE.len()], WORKED_EXAMPLE);
    let rec = record::decode(&WORKED_EXAMPLE).unwrap();
    RECORDS[0].assert_decodes_to(&rec, "worked example");
}

#[test]
fn encoder_writes_the_committed_bytes() {
    // Pins what this build writes. When the format moves to v2 this test moves to the v2
    // vectors; the decode tests of the v1 files stay.
    assert_eq!(records_bin(), read("records-v1.bin"));
    assert_eq!(segment_file(), read("segment-v3.seg"));
}

#[test]
fn any_single_byte_flip_fails_its_record() {
    let bin = read("records-v1.bin");
    let offsets = record_offsets();
    for (r, (v, &start)) in RECORDS.iter().zip(&offsets).enumerate() {
        for i in start..start + v.len() {
            // Bytes 7..14 of the header: recipient_count, key_len, value_len.
            let length_field = (7..14).contains(&(i - start));
            for mask in [0x01u8, 0x80, 0xff] {
                let mut damaged = bin.clone();
                damaged[i] ^= mask;
                let what = format!("record {r} byte {} ^ {mask:#04x}", i - start);
                for result in [
                    record::decode(&damaged[start..]),
                    record::decode(&damaged[start..start + v.len()]),
                ] {
                    match result {
                        Ok(rec) => panic!("{what}: still decodes: {rec:?}"),
                        Err(DecodeError::Short { .. }) if !length_field => {
                            panic!("{what}: Short from a byte that is not a length")
                        }
                        Err(_) => {}
                    }
                }
                // The damage stays within its record.
                for (o, (ov, &ostart)) in RECORDS.iter().zip(&offsets).enumerate() {
                    if o != r {
                        let rec = record::decode(&damaged[ostart..]).unwrap();
                        ov.assert_decodes_to(&rec, &what);
                    }
                }
            }
        }
    }
}

#[test]
fn newer_record_version_is_refused() {
    for version in [0u8, 2, 255] {
        let mut rec = WORKED_EXAMPLE;
        rec[4] = version;
        // A correct CRC, so that only the version is wrong.
        let crc = crc32fast::hash(&rec[4..]);
        rec[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            record::decode(&rec).unwrap_err(),
            DecodeError::UnknownVersion(version)
        );
    }
}

/// Reads a committed segment file: its header, its five records, and the scan from where
/// recovery starts.
fn committed_segment_reads_back(name: &str, header: &[u8], info: SegmentInfo) {
    let seg = read(name);
    assert_eq!(seg.len(), SEGMENT_FILE_BYTES);
    assert_eq!(seg[..SEGMENT_HEADER_BYTES], *header, "{name}");
    assert_eq!(segment::read_header(&seg), Ok(info), "{name}");

    let mut at = SEGMENT_HEADER_BYTES;
    for v in SEGMENT_RECORDS {
        let what = format!("{name} record seq {} at {at}", v.seq);
        let rec = record::decode(&seg[at..]).unwrap_or_else(|e| panic!("{what}: {e}"));
        v.assert_decodes_to(&rec, &what);
        at += v.len();
    }
    // 5 records of 50 + 1 recipient + 1 key byte + 0 or 1 value byte.
    assert_eq!(at, 64 + 4 * 53 + 52);
    assert!(seg[at..].iter().all(|&b| b == 0), "zero-filled remainder");
    assert_eq!(
        SEGMENT_ACK_OFFSET as usize,
        64 + SEGMENT_RECORDS[0].len() + SEGMENT_RECORDS[1].len()
    );

    let scan = segment::scan(&seg, SEGMENT_HEADER_BYTES, info.first_seq);
    assert_eq!(
        scan,
        Scan {
            records: 5,
            live_records: 4,
            // Every record but the superseded seq 3 (53 bytes).
            live_bytes: 3 * 53 + 52,
            last_seq: Some(Seq(5)),
            end: at,
            tail: Tail::Clean,
        },
        "{name}"
    );
    // Recovery starts a version 2 segment at the ack slot's offset, a version 1 one at its
    // first record.
    let (start, first) = segment::scan_start(&info, seg.len());
    match info.ack_offset {
        Some(offset) => assert_eq!((start, first), (offset as usize, Seq(3)), "{name}"),
        None => assert_eq!((start, first), (SEGMENT_HEADER_BYTES, Seq(1)), "{name}"),
    }
}

#[test]
fn committed_v1_segment_reads_back() {
    committed_segment_reads_back("segment-v1.seg", &SEGMENT_HEADER, SEGMENT_INFO);
}

#[test]
fn committed_v2_segment_reads_back() {
    committed_segment_reads_back("segment-v2.seg", &SEGMENT_HEADER_V2, SEGMENT_INFO_V2);
}

/// Version 3 changed commit journal segments only: a version 3 queue segment is a version 2
/// one with another version number, and so another header CRC and slot CRCs.
#[test]
fn committed_v3_segment_reads_back() {
    let (v3, v2) = (read("segment-v3.seg"), read("segment-v2.seg"));
    assert_eq!(v3.len(), v2.len());
    assert_eq!(v3[8..10], 3u16.to_le_bytes());
    assert_eq!(v3[..8], v2[..8]);
    assert_eq!(v3[10..36], v2[10..36]);
    assert_eq!(v3[64..], v2[64..], "the records");
    assert_eq!(segment::read_header(&v3), Ok(SEGMENT_INFO_V2));
    recovers_to_4_and_5(v3, "segment-v3.seg");
}

#[test]
fn segment_header_flips_are_caught() {
    // In version 1, bytes 52..64 are reserved: a flip there changes nothing.
    header_flips_are_caught("segment-v1.seg", SEGMENT_INFO, |i| {
        (i < 52).then_some(SegmentInfo {
            acked: None,
            ..SEGMENT_INFO
        })
    });
    // In version 2, the first slot (40..52) holds the older position, 1: with it damaged the
    // second still counts. With the second (52..64) damaged, the first one's position
    // counts: an acknowledgement torn while being written undoes only itself.
    header_flips_are_caught("segment-v2.seg", SEGMENT_INFO_V2, |i| {
        (i >= 52).then_some(SegmentInfo {
            acked: Some(Seq(1)),
            ack_offset: Some(SEGMENT_ACK_OFFSET_BEFORE),
            ..SEGMENT_INFO_V2
        })
    });
}

/// Flips each byte of `name`'s header; `slot_flip(i)` is what a flip of byte `i` of the ack
/// slots leaves (`None`: nothing changes).
fn header_flips_are_caught(
    name: &str,
    info: SegmentInfo,
    slot_flip: impl Fn(usize) -> Option<SegmentInfo>,
) {
    let seg = read(name);
    for i in 0..SEGMENT_HEADER_BYTES {
        let mut damaged = seg.clone();
        damaged[i] ^= 0xff;
        let got = segment::read_header(&damaged);
        match i {
            0..8 => assert!(
                matches!(got, Err(HeaderError::Magic(_))),
                "byte {i}: {got:?}"
            ),
            8..10 => assert!(
                matches!(got, Err(HeaderError::NewerVersion(_))),
                "{name} byte {i}: {got:?}"
            ),
            // Covered by the header CRC, or the CRC itself.
            10..40 => assert_eq!(got, Err(HeaderError::Crc), "{name} byte {i}"),
            // An ack slot no longer checks out: the header stands.
            _ => assert_eq!(got, Ok(slot_flip(i).unwrap_or(info)), "{name} byte {i}"),
        }
    }
}

/// The committed version 2 segment with format version `version` and CRCs that check out.
fn segment_with_version(version: u16) -> Vec<u8> {
    let mut seg = read("segment-v2.seg");
    seg[8..10].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&seg[..36]);
    seg[36..40].copy_from_slice(&crc.to_le_bytes());
    segment::write_ack(&mut seg, Seq(2), SEGMENT_ACK_OFFSET);
    seg
}

#[test]
fn newer_segment_version_is_refused() {
    assert_eq!(
        segment::read_header(&segment_with_version(4)),
        Err(HeaderError::NewerVersion(4))
    );
    assert_eq!(
        segment::read_header(&segment_with_version(2)),
        Ok(SEGMENT_INFO_V2)
    );
}

/// A persistent sender with a queue 5. Its segment size applies to new segments only: the
/// 4 KiB segment of the vectors is read as it is.
fn recovery_config() -> QueueConfig {
    QueueConfig {
        queue_count: 6,
        persistent: true,
        ..QueueConfig::default()
    }
}

/// Recovers a data directory whose only segment file holds `bytes`, a copy of the committed
/// segment (queue 5, acknowledged up to 2).
fn recovers_to_4_and_5(bytes: Vec<u8>, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("0000000000000001.seg"), bytes).unwrap();
    let disk = MmapDisk::open(dir.path()).unwrap();
    let (mut q, report) = recover(recovery_config(), &disk).unwrap();
    assert!(report.is_clean(), "{what}: {report:?}");
    assert_eq!((report.segments, report.queues), (1, 1), "{what}");
    // Acknowledged up to 2; seq 3 is superseded: 4 and 5 remain.
    assert_eq!(report.events, 2, "{what}");
    let batch = q.peek(QueueId(5), 100, 1 << 20).unwrap().unwrap();
    assert_eq!(
        (batch.first_seq, batch.last_seq),
        (Seq(4), Seq(5)),
        "{what}"
    );
    assert_eq!((batch.events, batch.bytes), (2, 53 + 52), "{what}");
}

#[test]
fn committed_segment_recovers() {
    recovers_to_4_and_5(read("segment-v1.seg"), "segment-v1.seg");
    recovers_to_4_and_5(read("segment-v2.seg"), "segment-v2.seg");
}

/// A segment an older build wrote is drained by this one: its acknowledgements go into its
/// version 1 slot, which the next recovery reads back (found by review: version 2 slots
/// written into a version 1 header read as a position past every record, and the segment's
/// unacknowledged events were dropped).
#[test]
fn acknowledging_in_a_version_1_segment_keeps_its_unacknowledged_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0000000000000001.seg");
    std::fs::write(&path, read("segment-v1.seg")).unwrap();
    {
        let disk = MmapDisk::open(dir.path()).unwrap();
        let (mut q, _) = recover(recovery_config(), &disk).unwrap();
        let b = q.peek(QueueId(5), 1, 1 << 20).unwrap().unwrap();
        assert_eq!(b.last_seq, Seq(4));
        q.ack(QueueId(5), b.last_seq).unwrap();
        // The process ends here: the mapped bytes stay in the file.
    }
    let info = segment::read_header(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!((info.acked, info.ack_offset), (Some(Seq(4)), None));
    let disk = MmapDisk::open(dir.path()).unwrap();
    let (mut q, report) = recover(recovery_config(), &disk).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let batch = q.peek(QueueId(5), 100, 1 << 20).unwrap().unwrap();
    assert_eq!((batch.first_seq, batch.last_seq), (Seq(5), Seq(5)));
}

/// A sync writes back a segment's header and its bytes from the ack slot's offset on, so
/// after a power loss the acknowledged records before that offset may be anything: stale
/// zeros, or a page torn mid-write. Recovery never reads them.
#[test]
fn acknowledged_bytes_a_sync_left_unwritten_are_not_read() {
    for fill in [0x00, 0xa5] {
        let mut seg = read("segment-v2.seg");
        seg[SEGMENT_HEADER_BYTES..SEGMENT_ACK_OFFSET as usize].fill(fill);
        recovers_to_4_and_5(
            seg,
            &format!("acknowledged records overwritten with {fill:#x}"),
        );
    }
    // A version 1 segment has no offset: recovery reads it from its first record, and the
    // same damage is found (and kept aside).
    let mut seg = read("segment-v1.seg");
    seg[SEGMENT_HEADER_BYTES..SEGMENT_ACK_OFFSET as usize].fill(0xa5);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("0000000000000001.seg"), seg).unwrap();
    let disk = MmapDisk::open(dir.path()).unwrap();
    let (_, report) = recover(recovery_config(), &disk).unwrap();
    assert_eq!(report.corrupt.len(), 1, "{report:?}");
}

#[test]
fn newer_segment_version_refuses_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0000000000000001.seg");
    let newer = segment_with_version(4);
    std::fs::write(&path, &newer).unwrap();
    let disk = MmapDisk::open(dir.path()).unwrap();
    match recover(recovery_config(), &disk) {
        Err(RecoveryError::NewerFormat { path: p, version }) => {
            assert_eq!(version, 4);
            assert_eq!(p, path.display().to_string());
        }
        other => panic!("expected NewerFormat, got {:?}", other.map(|(_, r)| r)),
    }
    assert_eq!(std::fs::read(&path).unwrap(), newer, "file left untouched");
}
