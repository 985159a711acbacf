//! The segment scan on hand-made bytes, and segment-header and file-name edge cases.

mod common;
use common::*;
use strait_queue::ids::*;
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
