//! The segment scan on hand-made bytes, and segment-header and file-name edge cases.

mod common;
use common::*;
use strait_queue::ids::*;
use strait_queue::journal;
use strait_queue::mem::{Crash, MemDisk};
use strait_queue::mmap::MmapDisk;
use strait_queue::queue::{QueueConfig, SenderQueue};
use strait_queue::record::{self, Op};
use strait_queue::segment::{self, HeaderError, SEGMENT_HEADER_BYTES, SegmentInfo, Tail};
use strait_queue::store::{Disk, recover};

/// A segment of queue 0 holding records with the given values, seqs from 1.
fn segment_with(values: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
    let mut buf = vec![0u8; 4096];
    let info = SegmentInfo {
        queue: QueueId(0),
        persistent: true,
        segment_seq: 1,
        first_seq: Seq(1),
        capacity: 4096,
        acked: None,
        ack_offset: None,
    };
    segment::write_header(&mut buf, &info);
    let mut at = SEGMENT_HEADER_BYTES;
    let mut offsets = Vec::new();
    for (i, v) in values.iter().enumerate() {
        offsets.push(at);
        at += record::encode_into(
            &mut buf[at..],
            &event(Op::Create, i as u64, b"k", v),
            Seq(i as u64 + 1),
        );
    }
    (buf, offsets)
}

#[test]
fn damage_followed_by_a_record_ending_in_zero_is_corruption_not_a_torn_tail() {
    let (mut buf, offsets) = segment_with(&[b"a", b"b", b"c\0"]);
    buf[offsets[1] + 52] ^= 0xff;
    let scan = segment::scan(&buf, SEGMENT_HEADER_BYTES, Seq(1));
    match scan.tail {
        Tail::Corrupt {
            offset,
            quarantine_end,
            records_after,
            last_seq_after,
            ..
        } => {
            assert_eq!(offset, offsets[1]);
            assert_eq!(records_after, 1);
            assert_eq!(last_seq_after, Some(Seq(3)));
            assert_eq!(
                quarantine_end,
                offsets[2] + record::decode(&buf[offsets[2]..]).unwrap().len()
            );
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_lone_damaged_last_record_is_a_torn_tail() {
    let (mut buf, offsets) = segment_with(&[b"a", b"b", b"c"]);
    buf[offsets[2] + 52] ^= 0x01; // inside its key and value
    let scan = segment::scan(&buf, SEGMENT_HEADER_BYTES, Seq(1));
    assert!(
        matches!(scan.tail, Tail::Torn { offset, .. } if offset == offsets[2]),
        "{:?}",
        scan.tail
    );
    assert_eq!(scan.records, 2);
}

#[test]
fn headers_with_impossible_values_are_refused() {
    let (mut buf, _) = segment_with(&[b"a"]);
    let reseal = |b: &mut Vec<u8>| {
        let crc = crc32fast::hash(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
    };
    let mut zero_seq = buf.clone();
    zero_seq[24..32].fill(0);
    reseal(&mut zero_seq);
    assert_eq!(
        segment::read_header(&zero_seq),
        Err(HeaderError::Invalid("first sequence number is 0"))
    );
    buf[8..10].fill(0);
    reseal(&mut buf);
    assert_eq!(segment::read_header(&buf), Err(HeaderError::BadVersion(0)));
}

#[test]
fn a_header_with_first_sequence_zero_is_kept_aside_not_trusted() {
    let disk = MemDisk::new();
    let cfg = QueueConfig {
        queue_count: 1,
        persistent: true,
        segment_bytes: 64 << 10,
        ..QueueConfig::default()
    };
    let mut q = SenderQueue::new(cfg.clone());
    loop {
        match append_n(&mut q, QueueId(0), 1, 10) {
            Ok(_) => break,
            Err(_) => {
                strait_queue::mem::run_actions(&mut q, &disk, 0);
            }
        }
    }
    disk.crash(q, Crash::Process);
    let id = disk
        .ids()
        .into_iter()
        .find(|&id| {
            disk.with_segment(id, |b| segment::read_header(b).is_ok())
                .unwrap()
        })
        .unwrap();
    disk.with_segment(id, |b| {
        b[24..32].fill(0);
        let crc = crc32fast::hash(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
    });
    let (_, report) = recover(cfg, &disk).unwrap();
    assert_eq!(report.corrupt.len(), 1, "{report:?}");
    assert!(
        report.corrupt[0]
            .reason
            .contains("first sequence number is 0")
    );
}

#[test]
fn only_lowercase_segment_names_are_listed_and_quarantine_never_overwrites() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disk = MmapDisk::open(tmp.path()).unwrap();
    std::fs::write(tmp.path().join("000000000000000A.seg"), b"").unwrap();
    std::fs::write(tmp.path().join("+00000000000000a.seg"), b"").unwrap();
    std::fs::write(tmp.path().join("000000000000000b.seg"), b"").unwrap();
    assert_eq!(disk.list().unwrap(), vec![SegmentId(11)]);
    let first = disk.quarantine("x.quarantine", b"one").unwrap();
    let second = disk.quarantine("x.quarantine", b"two").unwrap();
    assert_ne!(first, second);
    assert_eq!(std::fs::read(&first).unwrap(), b"one");
    assert_eq!(std::fs::read(&second).unwrap(), b"two");
}

/// A journal segment of 8 KiB with `header_seq` and `flags` in its header and, from byte 64,
/// `entries` entries (value sizes) of queue 3 written for journal segment `generation`.
fn journal_segment(
    buf: &mut [u8],
    header_seq: u64,
    flags: u16,
    generation: u64,
    entries: &[usize],
) {
    let info = SegmentInfo {
        queue: journal::JOURNAL_QUEUE,
        persistent: true,
        segment_seq: header_seq,
        first_seq: Seq(1),
        capacity: buf.len() as u32,
        acked: None,
        ack_offset: None,
    };
    segment::write_header_with_flags(buf, &info, flags);
    let mut at = SEGMENT_HEADER_BYTES;
    let mut rec = vec![0u8; 4096];
    for (i, &len) in entries.iter().enumerate() {
        let n = record::encode_into(
            &mut rec,
            &event(Op::Create, i as u64, b"k", &vec![b'v'; len]),
            Seq(i as u64 + 1),
        );
        journal::write_entry(&mut buf[at..], QueueId(3), &rec[..n], generation);
        at += journal::entry_len(n);
    }
}

#[test]
fn a_recycled_journal_segment_reads_only_its_own_entries() {
    // The file's earlier use: journal segment 4, seven entries.
    let mut buf = vec![0u8; 8192];
    journal_segment(&mut buf, 4, 0, 4, &[300, 900, 50, 700, 1200, 10, 400]);
    assert_eq!(journal::scan(&buf).entries.len(), 7);
    // Recycled as journal segment 9: two entries of other sizes over the old ones.
    let old = buf.clone();
    journal_segment(&mut buf, 9, segment::SEGMENT_FLAG_RECYCLED, 9, &[100, 200]);
    let scan = journal::scan(&buf);
    assert_eq!(scan.entries.len(), 2, "{scan:?}");
    assert_eq!(
        scan.torn, None,
        "the old entries after the zero prefix are not a torn tail"
    );
    // The old entries fail the new header's check even where they line up with an entry
    // boundary: without the zero prefix after the new entries (not written back before a
    // power loss), reading stops there, at the end of what any commit covered.
    let end = scan.entries[1].record_at + scan.entries[1].record_len;
    let boundary = journal::scan(&old)
        .entries
        .iter()
        .map(|e| e.record_at - journal::ENTRY_PREFIX_BYTES)
        .find(|&at| at > end)
        .expect("an old entry after the new ones");
    let mut lined_up = buf.clone();
    lined_up[end..end + 2000].copy_from_slice(&old[boundary..boundary + 2000]);
    let scan = journal::scan(&lined_up);
    assert_eq!(scan.entries.len(), 2, "{scan:?}");
    assert_eq!(scan.torn, None, "{scan:?}");
    // Readied but never used, its zero prefix torn off: no entries, and not a torn tail,
    // which would keep recovery from reading the segments after it.
    let mut readied = old.clone();
    readied[..SEGMENT_HEADER_BYTES].copy_from_slice(&buf[..SEGMENT_HEADER_BYTES]);
    let scan = journal::scan(&readied);
    assert_eq!((scan.entries.len(), scan.torn), (0, None));
    // A new entry whose record was cut short is a torn tail.
    let mut cut = buf.clone();
    cut[end - 10..end].fill(0xee);
    let scan = journal::scan(&cut);
    assert_eq!(scan.entries.len(), 1, "{scan:?}");
    assert!(scan.torn.is_some(), "{scan:?}");
    // A segment that was never recycled has only zeros after its entries: anything else
    // there is a write cut short.
    let mut fresh = buf.clone();
    segment::write_header(&mut fresh, &segment::read_header(&buf).expect("header"));
    let scan = journal::scan(&fresh);
    assert_eq!(scan.entries.len(), 2, "{scan:?}");
    assert!(scan.torn.is_some(), "{scan:?}");
}
