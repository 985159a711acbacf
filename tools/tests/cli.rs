//! Runs `strait-segment` on the committed `testdata/segment-v1.seg` and on damaged copies.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Offsets in `segment-v1.seg`: five records (seqs 1..=5) from 64; the second at 117;
/// the records end at 328.
const SECOND_RECORD: usize = 117;
const RECORDS_END: usize = 328;

fn committed_segment() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/segment-v1.seg")
}

fn segment_bytes() -> Vec<u8> {
    std::fs::read(committed_segment()).unwrap()
}

fn run(args: &[&str], paths: &[&Path]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_strait-segment"))
        .args(args)
        .args(paths)
        .output()
        .unwrap();
    (
        status.code().expect("exited"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A copy of the committed segment in a temporary directory, changed by `damage`.
fn damaged(name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let mut bytes = segment_bytes();
    damage(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn verify_committed_segment_is_clean() {
    let (code, out, err) = run(&["verify"], &[&committed_segment()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    for expected in [
        "segment-v1.seg: clean ",
        " queue=5 ",
        " segment_seq=1 ",
        " first_seq=1 ",
        " last_seq=5 ",
        " records=5 ",
        " live_records=4 ",
        " ack=2 ",
        " end=328 ",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from {out}");
    }
}

/// A version 2 segment is read from its ack slot's offset, as recovery reads it: the
/// acknowledged records 1 and 2 before it are neither counted nor checked.
#[test]
fn verify_reads_a_version_2_segment_from_its_ack_offset() {
    let v2 = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/segment-v2.seg");
    let (code, out, err) = run(&["verify"], &[&v2]);
    assert_eq!(code, 0, "{out}{err}");
    for expected in [
        "segment-v2.seg: clean ",
        " version=2 ",
        " ack=2 ",
        " ack_offset=170 ",
        " last_seq=5 ",
        " records=3 ",
        " live_records=2 ",
        " end=328 ",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from {out}");
    }
}

#[test]
fn verify_json_committed_segment() {
    let (code, out, _) = run(&["verify", "--json"], &[&committed_segment()]);
    assert_eq!(code, 0);
    let reports = json_lines(&out);
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r["status"], "clean");
    assert_eq!(r["size"], 4096);
    assert_eq!(r["header"]["queue"], 5);
    assert_eq!(r["header"]["segment_seq"], 1);
    assert_eq!(r["header"]["first_seq"], 1);
    assert_eq!(r["header"]["ack"], 2);
    assert_eq!(r["header"]["persistent"], true);
    assert_eq!(r["last_seq"], 5);
    assert_eq!(r["records"], 5);
    assert_eq!(r["live_records"], 4);
    assert_eq!(r["end"], RECORDS_END);
    assert_eq!(r["tail"]["state"], "clean");
}

#[test]
fn dump_committed_segment_lists_every_record() {
    let (code, out, err) = run(&["dump"], &[&committed_segment()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("segment version=1 queue=5 persistent=true segment_seq=1 first_seq=1"));
    let records: Vec<&str> = out.lines().filter(|l| l.starts_with('@')).collect();
    assert_eq!(records.len(), 5, "{out}");
    let expected = [
        (
            "@64 len=53 seq=1 op=create flags=0x00 ",
            "key=\"a\" value_len=1",
        ),
        ("@117 len=53 seq=2 op=create ", "key=\"b\" value_len=1"),
        (
            "@170 len=53 seq=3 op=update flags=0x01(superseded) ",
            "key=\"a\"",
        ),
        ("@223 len=53 seq=4 op=update ", "key=\"a\""),
        ("@276 len=52 seq=5 op=destroy ", "key=\"b\" value_len=0"),
    ];
    for (line, (start, fields)) in records.iter().zip(expected) {
        assert!(line.starts_with(start), "{line}");
        assert!(line.contains(fields), "{line}");
        assert!(line.contains(" region=1 bucket=5 "), "{line}");
        assert!(line.ends_with(" crc=ok"), "{line}");
    }
    assert!(records[0].contains(" id=1/1/5/1 version=1700000000000000@1 recipients=[2] "));
    assert!(out.contains("\ntail: clean\n"), "{out}");
}

#[test]
fn torn_tail_is_reported() {
    let (_dir, path) = damaged("0000000000000001.seg", |b| {
        b[RECORDS_END..RECORDS_END + 20].fill(0xab);
    });
    let (code, out, _) = run(&["verify"], &[&path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(": torn "), "{out}");
    assert!(out.contains("torn at offset 328: bytes 328..348"), "{out}");

    let (code, out, _) = run(&["verify", "--json"], &[&path]);
    assert_eq!(code, 1);
    let r = &json_lines(&out)[0];
    assert_eq!(r["status"], "torn");
    assert_eq!(r["last_seq"], 5);
    assert_eq!(r["tail"]["state"], "torn");
    assert_eq!(r["tail"]["offset"], RECORDS_END);
    assert_eq!(r["tail"]["garbage_end"], RECORDS_END + 20);
}

#[test]
fn corruption_in_the_middle_is_reported() {
    // A value byte of the second record.
    let (_dir, path) = damaged("0000000000000001.seg", |b| b[SECOND_RECORD + 52] ^= 0xff);
    let (code, out, _) = run(&["verify", "--json"], &[&path]);
    assert_eq!(code, 1);
    let r = &json_lines(&out)[0];
    assert_eq!(r["status"], "corrupt");
    assert_eq!((&r["records"], &r["last_seq"]), (&1.into(), &1.into()));
    let tail = &r["tail"];
    assert_eq!(tail["state"], "corrupt");
    assert_eq!(tail["offset"], SECOND_RECORD);
    assert_eq!(tail["quarantine_end"], RECORDS_END);
    assert_eq!(tail["records_after"], 3);
    assert_eq!(tail["last_seq_after"], 5);
    assert!(tail["error"].as_str().unwrap().contains("CRC mismatch"));

    let (code, out, _) = run(&["dump"], &[&path]);
    assert_eq!(code, 0);
    assert!(out.contains("@117 len=53 seq=2 op=create "), "{out}");
    assert!(out.contains("crc=bad"), "{out}");
    assert!(out.contains("@117..170 garbage: 53 bytes"), "{out}");
    for seq in 3..=5 {
        assert!(out.contains(&format!(" seq={seq} ")), "{out}");
    }
    assert!(out.contains("tail: corrupt at offset 117"), "{out}");
}

#[test]
fn quarantine_file_is_searched_for_records() {
    // What recovery keeps aside for the damage above: the bytes from the bad record on.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0000000000000001-0000000117.quarantine");
    let mut bytes = segment_bytes();
    bytes[SECOND_RECORD + 52] ^= 0xff;
    std::fs::write(&path, &bytes[SECOND_RECORD..RECORDS_END]).unwrap();

    let (code, out, _) = run(&["dump"], &[&path]);
    assert_eq!(code, 0);
    assert!(out.contains("not a segment"), "{out}");
    assert!(out.contains("@0..53 garbage"), "{out}");
    for (offset, seq) in [(53, 3), (106, 4), (159, 5)] {
        assert!(out.contains(&format!("@{offset} len=")), "{out}");
        assert!(out.contains(&format!(" seq={seq} ")), "{out}");
    }
    assert!(out.contains("found 4 record(s), 1 with a bad CRC"), "{out}");

    let (_, out, _) = run(&["dump", "--json"], &[&path]);
    let d = &json_lines(&out)[0];
    let entries = d["entries"].as_array().unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["record", "garbage", "record", "record", "record"]);
    assert_eq!(entries[0]["crc_ok"], false);
    assert_eq!(entries[2]["seq"], 3);
    assert_eq!(entries[2]["superseded"], true);
    assert!(d["not-segment"]["reason"].is_string());
}

#[test]
fn directory_is_verified_file_by_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("0000000000000001.seg"), segment_bytes()).unwrap();
    std::fs::write(dir.path().join("0000000000000002.seg"), vec![0u8; 4096]).unwrap();
    std::fs::write(dir.path().join("0000000000000003.seg"), b"").unwrap();
    std::fs::write(dir.path().join("LOCK"), b"").unwrap();
    std::fs::create_dir(dir.path().join("quarantine")).unwrap();

    let (code, out, _) = run(&["verify"], &[dir.path()]);
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("0000000000000001.seg: clean "), "{out}");
    assert!(lines[1].contains("0000000000000002.seg: blank "), "{out}");
    assert!(lines[2].contains("0000000000000003.seg: blank "), "{out}");

    // One damaged segment makes the whole run fail.
    let mut torn = segment_bytes();
    torn[RECORDS_END] = 1;
    std::fs::write(dir.path().join("0000000000000004.seg"), torn).unwrap();
    let (code, out, _) = run(&["verify"], &[dir.path()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("0000000000000004.seg: torn "), "{out}");
}

#[test]
fn newer_segment_version_is_not_verified() {
    let (_dir, path) = damaged("0000000000000001.seg", |b| {
        b[8..10].copy_from_slice(&4u16.to_le_bytes());
        let crc = crc32fast::hash(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
    });
    let (code, out, _) = run(&["verify"], &[&path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(": newer-version "), "{out}");
    assert!(out.contains("segment format version 4 is newer"), "{out}");
}

#[test]
fn bad_header_is_reported() {
    let (_dir, path) = damaged("0000000000000001.seg", |b| b[20] ^= 1);
    let (code, out, _) = run(&["verify"], &[&path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(": bad-header "), "{out}");
    assert!(out.contains("segment header CRC mismatch"), "{out}");
}

#[test]
fn io_errors_name_the_file() {
    let missing = Path::new("/nonexistent/strait/0000000000000001.seg");
    let (code, out, _) = run(&["verify"], &[missing]);
    assert_eq!(code, 2);
    assert!(
        out.starts_with("/nonexistent/strait/0000000000000001.seg: io-error"),
        "{out}"
    );

    // An I/O error outranks damage in another file.
    let (_dir, torn) = damaged("0000000000000001.seg", |b| b[RECORDS_END] = 1);
    let (code, _, _) = run(&["verify"], &[torn.as_path(), missing]);
    assert_eq!(code, 2);

    let (code, out, err) = run(&["dump"], &[missing]);
    assert_eq!(code, 2);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("/nonexistent/strait/0000000000000001.seg: "),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(run(&["verify"], &[]).0, 2);
    assert_eq!(run(&["dump"], &[]).0, 2);
    assert_eq!(run(&["frobnicate"], &[]).0, 2);
}

/// A commit journal segment holding the committed segment's five records, for queue 3.
fn journal_bytes() -> Vec<u8> {
    use strait_queue::{ids::Seq, journal, record, segment};
    let records = segment_bytes();
    let mut out = vec![0u8; 4096];
    let info = segment::SegmentInfo {
        queue: journal::JOURNAL_QUEUE,
        persistent: true,
        segment_seq: 1,
        first_seq: Seq(1),
        capacity: out.len() as u32,
        acked: None,
        ack_offset: None,
    };
    segment::write_header(&mut out, &info);
    let (mut from, mut to) = (segment::SEGMENT_HEADER_BYTES, segment::SEGMENT_HEADER_BYTES);
    while from < RECORDS_END {
        let rec = record::decode(&records[from..RECORDS_END]).unwrap();
        journal::write_entry(
            &mut out[to..],
            strait_queue::ids::QueueId(3),
            rec.bytes(),
            info.segment_seq,
        );
        from += rec.len();
        to += journal::entry_len(rec.len());
    }
    out
}

#[test]
fn verify_reads_a_commit_journal_segment_by_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0000000000000009.seg");
    std::fs::write(&path, journal_bytes()).unwrap();
    let (code, out, err) = run(&["verify"], &[&path]);
    assert_eq!(code, 0, "{out}{err}");
    for expected in [": clean ", " queue=65535 ", " records=5 ", " end=368 "] {
        assert!(out.contains(expected), "{expected:?} missing from {out}");
    }
    // The last entry's record cut short, as a power loss may leave it.
    let mut torn = journal_bytes();
    torn[360] ^= 0xff;
    std::fs::write(&path, torn).unwrap();
    let (code, out, _) = run(&["verify"], &[&path]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("records=4 "), "{out}");
    assert!(out.contains("torn at offset"), "{out}");
}

#[test]
fn verify_reads_a_recycled_commit_journal_segment_up_to_its_zero_prefix() {
    use strait_queue::segment;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0000000000000009.seg");
    // Five entries, their zero prefix at 368..376, then an earlier use's bytes.
    let mut bytes = journal_bytes();
    bytes[376..].fill(0xab);
    let info = segment::read_header(&bytes).unwrap();
    segment::write_header_with_flags(&mut bytes, &info, segment::SEGMENT_FLAG_RECYCLED);
    std::fs::write(&path, &bytes).unwrap();
    let (code, out, err) = run(&["verify"], &[&path]);
    assert_eq!(code, 0, "{out}{err}");
    for expected in [": clean ", " recycled=true ", " records=5 ", " end=368 "] {
        assert!(out.contains(expected), "{expected:?} missing from {out}");
    }
    // Not flagged recycled, the same bytes after the entries are a write cut short.
    segment::write_header(&mut bytes, &info);
    std::fs::write(&path, &bytes).unwrap();
    let (code, out, _) = run(&["verify"], &[&path]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains(" recycled=false "), "{out}");
    assert!(out.contains("torn at offset 368"), "{out}");
}
