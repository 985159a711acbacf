//! Wire frame test vectors: `testdata/frames-v1.bin`, committed bytes that every future build
//! must keep decoding. It holds, back to back, a Hello, a Batch of the first two records of
//! `testdata/records-v1.bin`, an Ack of that batch and a Ping; `docs/formats.md` ("Wire
//! frames, protocol version 1") walks through it byte by byte.
//!
//! The tests read the committed file and compare every field with the constants here. The
//! file is written by the ignored test `regenerate_vectors`:
//!
//! ```text
//! cargo test -p strait-net --test frame_vectors -- --ignored regenerate_vectors
//! ```

use std::borrow::Cow;
use std::path::PathBuf;

use strait_net::wire::*;
use strait_queue::ids::*;
use strait_queue::record::Op;

const REGIONS: &[RegionEntry<'static>] = &[RegionEntry {
    id: RegionId(3),
    total_num_buckets: 113,
    name: "orders",
}];
/// Length of the first two records of `testdata/records-v1.bin`.
const RECORDS_LEN: usize = 63 + 72;
const NONCE: PingNonce = PingNonce(0x0102_0304_0506_0708);

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    let path = testdata(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What `testdata/frames-v1.bin` holds, encoded by this build.
fn frames_bin() -> Vec<u8> {
    let records = read("records-v1.bin");
    let dead = [DeadLetter {
        index: 1,
        reason: DeadLetterReason::UnknownRegion,
        text: Cow::Borrowed("no region orders"),
    }];
    let mut out = Vec::new();
    Frame::Hello(Hello {
        sender_site: SiteId(1),
        receiver_site: SiteId(2),
        member: "ny-1",
        sender_id: "to-london",
        regions: Regions::List(REGIONS),
    })
    .encode(&mut out)
    .unwrap();
    out.extend_from_slice(&batch_prefix(BatchId(1), 2, RECORDS_LEN, false).unwrap());
    out.extend_from_slice(&records[..RECORDS_LEN]);
    Frame::Ack(Ack {
        batch: BatchId(1),
        applied: 1,
        duplicates: 0,
        conflicts: 0,
        dead_letters: DeadLetters::List(&dead),
    })
    .encode(&mut out)
    .unwrap();
    out.extend_from_slice(&ping_frame(NONCE));
    out
}

#[test]
#[ignore = "writes testdata/frames-v1.bin"]
fn regenerate_vectors() {
    std::fs::write(testdata("frames-v1.bin"), frames_bin()).unwrap();
}

#[test]
fn the_committed_frames_decode_to_their_fields() {
    let bin = read("frames-v1.bin");
    let mut at = 0;
    let mut next = || {
        let (frame, consumed) = decode_frame(&bin[at..]).unwrap().expect("a whole frame");
        let start = at;
        at += consumed;
        (frame, start, consumed)
    };

    let (Frame::Hello(hello), 0, 51) = next() else {
        panic!("frame 0 is not the 51-byte hello")
    };
    assert_eq!(
        (hello.sender_site, hello.receiver_site),
        (SiteId(1), SiteId(2))
    );
    assert_eq!((hello.member, hello.sender_id), ("ny-1", "to-london"));
    assert_eq!(hello.regions.iter().collect::<Vec<_>>(), REGIONS);

    let (Frame::Batch(batch), 51, len) = next() else {
        panic!("frame 1 is not a batch")
    };
    assert_eq!(len, BATCH_PREFIX_BYTES + RECORDS_LEN);
    assert_eq!(
        (batch.id, batch.events, batch.possible_duplicate),
        (BatchId(1), 2, false)
    );
    let records: Vec<_> = batch.records().collect::<Result<_, _>>().unwrap();
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.seq(), r.op(), r.key(), r.value(), r.region(), r.bucket()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                Seq(1),
                Op::Create,
                &b"user:42"[..],
                &b"hello"[..],
                RegionId(3),
                BucketId(17)
            ),
            (
                Seq(2),
                Op::Update,
                &b"user:42"[..],
                &b"hello, world"[..],
                RegionId(3),
                BucketId(17)
            ),
        ]
    );
    assert_eq!(batch.records, &read("records-v1.bin")[..RECORDS_LEN]);

    let (Frame::Ack(ack), 214, 63) = next() else {
        panic!("frame 2 is not the 63-byte ack")
    };
    assert_eq!(
        (ack.batch, ack.applied, ack.duplicates, ack.conflicts),
        (BatchId(1), 1, 0, 0)
    );
    let dead: Vec<_> = ack.dead_letters.iter().collect();
    assert_eq!(
        dead,
        [DeadLetter {
            index: 1,
            reason: DeadLetterReason::UnknownRegion,
            text: Cow::Borrowed("no region orders"),
        }]
    );

    let (Frame::Ping(nonce), 277, PING_FRAME_BYTES) = next() else {
        panic!("frame 3 is not a ping")
    };
    assert_eq!(nonce, NONCE);
    assert_eq!(at, bin.len());
}

#[test]
fn the_header_bytes_are_the_documented_ones() {
    let bin = read("frames-v1.bin");
    // The hello's header: magic, version 1, kind 1, no flags, body 35 bytes, CRC.
    assert_eq!(
        &bin[..16],
        &[
            0x53, 0x54, 0x52, 0x57, 0x01, 0x01, 0x00, 0x00, 0x23, 0x00, 0x00, 0x00, 0x05, 0x91,
            0xdf, 0x8b
        ]
    );
    assert_eq!(bin.len(), 301);
}

#[test]
fn the_encoder_writes_the_committed_bytes() {
    assert_eq!(frames_bin(), read("frames-v1.bin"));
}

#[test]
fn a_version_2_frame_is_refused() {
    let mut bin = read("frames-v1.bin");
    bin[4] = 2;
    let crc = crc32fast::hash(&bin[..12]);
    bin[12..16].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(decode_frame(&bin), Err(FrameError::UnsupportedVersion(2)));
}
