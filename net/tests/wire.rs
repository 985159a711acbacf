//! The WAN frame codec and the two connection state machines, wired together in memory.

use std::borrow::Cow;

use proptest::collection::vec;
use proptest::prelude::*;
use strait_net::wire::frame::{FRAME_BODY_BYTES_MAX, header_bytes};
use strait_net::wire::*;
use strait_queue::ids::*;
use strait_queue::record::{self, DecodeError, Event, Op};

const T0: u64 = 1_700_000_000_000_000;

/// `n` real records of queue sequence numbers `first..first + n`, back to back.
fn records(first: u64, n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for seq in first..first + n {
        let key = format!("user:{seq}");
        let event = Event {
            op: Op::Update,
            region: RegionId(3),
            bucket: BucketId(17),
            id: EventId {
                origin_site: SiteId(1),
                origin_member: MemberId(2),
                stream: StreamId(17),
                seq,
            },
            version: VersionTag {
                timestamp_us: T0 + seq,
                site: SiteId(1),
            },
            recipients: &[SiteId(2)],
            key: key.as_bytes(),
            value: b"hello",
        };
        let len = record::encoded_len(&event).unwrap();
        let at = out.len();
        out.resize(at + len, 0);
        record::encode_into(&mut out[at..], &event, Seq(seq));
    }
    out
}

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out).unwrap();
    out
}

const REGIONS: &[RegionEntry<'static>] = &[
    RegionEntry {
        id: RegionId(3),
        total_num_buckets: 113,
        name: "orders",
    },
    RegionEntry {
        id: RegionId(4),
        total_num_buckets: 7,
        name: "sessions",
    },
];

/// One frame of every kind (a refused and an accepted HelloReply), encoded.
fn sample_frames(batch_records: &[u8]) -> Vec<Vec<u8>> {
    let dead = [DeadLetter {
        index: 1,
        reason: DeadLetterReason::UnknownRegion,
        text: Cow::Borrowed("no region named orders"),
    }];
    vec![
        encode(&Frame::Hello(Hello {
            sender_site: SiteId(1),
            receiver_site: SiteId(2),
            member: "ny-1",
            sender_id: "to-london",
            regions: Regions::List(REGIONS),
        })),
        encode(&Frame::HelloReply(HelloReply {
            receiver_site: SiteId(2),
            member: "ln-1",
            maximum_time_between_pings_ms: 60_000,
            refusal: None,
        })),
        encode(&Frame::HelloReply(HelloReply {
            receiver_site: SiteId(2),
            member: "ln-1",
            maximum_time_between_pings_ms: 60_000,
            refusal: Some(Refusal {
                reason: RefuseReason::WrongSite,
                text: "asked for site 3",
            }),
        })),
        encode(&Frame::Batch(Batch {
            id: BatchId(9),
            possible_duplicate: true,
            events: 2,
            records: batch_records,
        })),
        encode(&Frame::Ack(Ack {
            batch: BatchId(9),
            applied: 1,
            duplicates: 0,
            conflicts: 0,
            dead_letters: DeadLetters::List(&dead),
        })),
        ping_frame(PingNonce(0x1122_3344_5566_7788)).to_vec(),
        pong_frame(PingNonce(u64::MAX)).to_vec(),
    ]
}

#[test]
fn every_frame_kind_round_trips() {
    let recs = records(1, 2);
    let dead = [
        DeadLetter {
            index: 0,
            reason: DeadLetterReason::ValueRejected,
            text: Cow::Borrowed("value of 20 MiB"),
        },
        DeadLetter {
            index: 4,
            reason: DeadLetterReason::StoreFull,
            text: Cow::Borrowed("é"),
        },
    ];
    let frames = [
        Frame::Hello(Hello {
            sender_site: SiteId(1),
            receiver_site: SiteId(2),
            member: "ny-1",
            sender_id: "to-london",
            regions: Regions::List(REGIONS),
        }),
        Frame::Hello(Hello {
            sender_site: SiteId(255),
            receiver_site: SiteId(0),
            member: "",
            sender_id: "",
            regions: Regions::List(&[]),
        }),
        Frame::HelloReply(HelloReply {
            receiver_site: SiteId(2),
            member: "ln-1",
            maximum_time_between_pings_ms: 60_000,
            refusal: None,
        }),
        Frame::HelloReply(HelloReply {
            receiver_site: SiteId(1),
            member: "ny-1",
            maximum_time_between_pings_ms: 1,
            refusal: Some(Refusal {
                reason: RefuseReason::SameSite,
                text: "own site",
            }),
        }),
        Frame::Batch(Batch {
            id: BatchId(1),
            possible_duplicate: false,
            events: 2,
            records: &recs,
        }),
        Frame::Batch(Batch {
            id: BatchId(u64::MAX),
            possible_duplicate: true,
            events: 0,
            records: &[],
        }),
        Frame::Ack(Ack {
            batch: BatchId(7),
            applied: 2,
            duplicates: 1,
            conflicts: 3,
            dead_letters: DeadLetters::List(&dead),
        }),
        Frame::Ack(Ack {
            batch: BatchId(8),
            applied: 0,
            duplicates: 0,
            conflicts: 0,
            dead_letters: DeadLetters::List(&[]),
        }),
        Frame::Ping(PingNonce(1)),
        Frame::Pong(PingNonce(2)),
    ];
    for frame in &frames {
        let mut bytes = vec![0xAA; 3]; // encoding appends
        frame.encode(&mut bytes).unwrap();
        let mut via_bytes_mut = bytes::BytesMut::new();
        frame.encode(&mut via_bytes_mut).unwrap();
        assert_eq!(&bytes[3..], &via_bytes_mut[..], "{frame:?}");
        let (decoded, consumed) = decode_frame(&bytes[3..]).unwrap().unwrap();
        assert_eq!(consumed, bytes.len() - 3);
        assert_eq!(&decoded, frame);
        assert_eq!(decoded.kind(), frame.kind());
    }
    // Decoded tables iterate to what was encoded.
    let bytes = encode(&frames[0]);
    let Some((Frame::Hello(h), _)) = decode_frame(&bytes).unwrap() else {
        panic!("not a hello")
    };
    assert_eq!(h.regions.iter().collect::<Vec<_>>(), REGIONS);
    let bytes = encode(&frames[6]);
    let Some((Frame::Ack(a), _)) = decode_frame(&bytes).unwrap() else {
        panic!("not an ack")
    };
    assert_eq!(a.dead_letters.iter().collect::<Vec<_>>(), dead);
}

#[test]
fn batch_prefix_matches_the_encoded_batch() {
    let recs = records(5, 3);
    let whole = encode(&Frame::Batch(Batch {
        id: BatchId(42),
        possible_duplicate: true,
        events: 3,
        records: &recs,
    }));
    let prefix = batch_prefix(BatchId(42), 3, recs.len(), true).unwrap();
    assert_eq!(&whole[..BATCH_PREFIX_BYTES], &prefix);
    assert_eq!(&whole[BATCH_PREFIX_BYTES..], &recs[..]);
}

#[test]
fn a_batch_of_real_records_is_decoded_in_place() {
    let recs = records(10, 2);
    let mut wire = batch_prefix(BatchId(3), 2, recs.len(), false)
        .unwrap()
        .to_vec();
    wire.extend_from_slice(&recs);
    let (frame, consumed) = decode_frame(&wire).unwrap().unwrap();
    assert_eq!(consumed, wire.len());
    let Frame::Batch(batch) = frame else {
        panic!("not a batch: {frame:?}")
    };
    assert_eq!(
        (batch.id, batch.events, batch.possible_duplicate),
        (BatchId(3), 2, false)
    );
    let got: Vec<_> = batch.records().collect::<Result<_, _>>().unwrap();
    assert_eq!(got.len(), 2);
    for (i, rec) in got.iter().enumerate() {
        assert_eq!(rec.seq(), Seq(10 + i as u64));
        assert_eq!(rec.key(), format!("user:{}", 10 + i).as_bytes());
        assert_eq!(rec.value(), b"hello");
        assert_eq!(rec.recipients().collect::<Vec<_>>(), [SiteId(2)]);
        // Zero copy: the record is a view into the read buffer.
        let range = wire.as_ptr_range();
        assert!(range.contains(&rec.bytes().as_ptr()));
    }
    assert_eq!(batch.check(), Ok(()));
}

#[test]
fn a_flipped_byte_in_a_record_names_the_record() {
    let recs = records(1, 3);
    let first_len = recs.len() / 3;
    // Every byte of the second record, flipped, fails record 1 and nothing before it.
    for at in first_len..2 * first_len {
        let mut bad = recs.clone();
        bad[at] ^= 0x40;
        let batch = Batch {
            id: BatchId(1),
            possible_duplicate: false,
            events: 3,
            records: &bad,
        };
        let mut walk = batch.records();
        assert!(walk.next().unwrap().is_ok());
        let err = walk.next().unwrap().unwrap_err();
        assert!(
            matches!(err, FrameError::Record { index: 1, .. }),
            "byte {at}: {err:?}"
        );
        assert!(walk.next().is_none(), "nothing after the first error");
        assert_eq!(batch.check(), Err(err));
    }
    // A CRC error is reported as such.
    let mut bad = recs.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let batch = Batch {
        id: BatchId(1),
        possible_duplicate: false,
        events: 3,
        records: &bad,
    };
    assert!(matches!(
        batch.check(),
        Err(FrameError::Record {
            index: 2,
            error: DecodeError::Crc { .. }
        })
    ));
}

#[test]
fn a_count_that_does_not_match_the_records_is_refused() {
    let recs = records(1, 2);
    let batch = |events| Batch {
        id: BatchId(1),
        possible_duplicate: false,
        events,
        records: &recs,
    };
    assert_eq!(
        batch(3).check(),
        Err(FrameError::RecordsMissing {
            declared: 3,
            found: 2
        })
    );
    assert_eq!(
        batch(1).check(),
        Err(FrameError::BytesAfterRecords {
            declared: 1,
            bytes: recs.len() / 2
        })
    );
    // A record cut short by the end of the batch.
    let short = Batch {
        id: BatchId(1),
        possible_duplicate: false,
        events: 2,
        records: &recs[..recs.len() - 1],
    };
    assert!(matches!(
        short.check(),
        Err(FrameError::Record {
            index: 1,
            error: DecodeError::Short { .. }
        })
    ));
}

#[test]
fn every_frame_cut_at_every_byte_needs_more_bytes() {
    let recs = records(1, 2);
    let frames = sample_frames(&recs);
    for bytes in &frames {
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_frame(&bytes[..cut]),
                Ok(None),
                "cut at {cut} of {bytes:02x?}"
            );
        }
        assert!(decode_frame(bytes).unwrap().is_some());
    }
    // Back to back, they decode one after the other.
    let stream: Vec<u8> = frames.concat();
    let mut at = 0;
    let mut n = 0;
    while let Some((_, consumed)) = decode_frame(&stream[at..]).unwrap() {
        at += consumed;
        n += 1;
    }
    assert_eq!((at, n), (stream.len(), frames.len()));
}

/// Replaces the header of `frame` by one with `body_len`, a fresh CRC, kind and flags kept.
fn with_body_len(frame: &[u8], body_len: u32) -> Vec<u8> {
    let kind = FrameKind::from_u8(frame[5]).unwrap();
    let flags = u16::from_le_bytes([frame[6], frame[7]]);
    let mut out = header_bytes(kind, flags, body_len).to_vec();
    out.extend_from_slice(&frame[FRAME_HEADER_BYTES..]);
    out
}

fn reseal(frame: &mut [u8]) {
    let crc = crc32fast::hash(&frame[..12]);
    frame[12..16].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn garbage_gets_a_specific_error() {
    let ping = ping_frame(PingNonce(5));

    assert_eq!(
        decode_frame(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        Err(FrameError::BadMagic { found: *b"GET " })
    );

    let mut v2 = ping;
    v2[4] = 2;
    reseal(&mut v2);
    assert_eq!(decode_frame(&v2), Err(FrameError::UnsupportedVersion(2)));
    assert!(
        FrameError::UnsupportedVersion(2)
            .to_string()
            .contains("unsupported protocol version 2")
    );

    let mut crc = ping;
    crc[8] ^= 1; // body_len, not resealed
    assert!(matches!(
        decode_frame(&crc),
        Err(FrameError::HeaderCrc { .. })
    ));

    let mut kind = ping;
    kind[5] = 9;
    reseal(&mut kind);
    assert_eq!(decode_frame(&kind), Err(FrameError::UnknownKind(9)));

    let huge = with_body_len(&ping, FRAME_BODY_BYTES_MAX as u32 + 1);
    assert_eq!(
        decode_frame(&huge[..FRAME_HEADER_BYTES]),
        Err(FrameError::BodyTooLong {
            kind: FrameKind::Ping,
            len: FRAME_BODY_BYTES_MAX as u32 + 1
        }),
        "refused from the header alone"
    );

    // A ping body of 7 bytes ends inside the nonce.
    let short = with_body_len(&ping[..ping.len() - 1], 7);
    assert_eq!(
        decode_frame(&short),
        Err(FrameError::Truncated {
            kind: FrameKind::Ping,
            field: "nonce"
        })
    );
    let long = with_body_len(&[&ping[..], &[0]].concat(), 9);
    assert_eq!(
        decode_frame(&long),
        Err(FrameError::TrailingBytes {
            kind: FrameKind::Ping,
            bytes: 1
        })
    );

    // A hello cut inside its member name.
    let hello = &sample_frames(&[])[0];
    let cut = with_body_len(&hello[..FRAME_HEADER_BYTES + 4], 4);
    assert_eq!(
        decode_frame(&cut),
        Err(FrameError::Truncated {
            kind: FrameKind::Hello,
            field: "member"
        })
    );
    // A name that is not UTF-8.
    let mut bad_utf8 = hello.clone();
    bad_utf8[FRAME_HEADER_BYTES + 4] = 0xff;
    assert_eq!(
        decode_frame(&bad_utf8),
        Err(FrameError::NotUtf8 {
            kind: FrameKind::Hello,
            field: "member"
        })
    );
    // A name over its limit.
    let mut long_name = hello.clone();
    long_name[FRAME_HEADER_BYTES + 2..FRAME_HEADER_BYTES + 4]
        .copy_from_slice(&u16::MAX.to_le_bytes());
    assert_eq!(
        decode_frame(&long_name),
        Err(FrameError::OverLimit {
            kind: FrameKind::Hello,
            field: "member",
            len: u16::MAX as usize,
            max: NAME_BYTES_MAX
        })
    );

    // An accepted byte that is neither 0 nor 1.
    let mut reply = sample_frames(&[])[1].clone();
    reply[FRAME_HEADER_BYTES] = 2;
    assert_eq!(
        decode_frame(&reply),
        Err(FrameError::BadValue {
            kind: FrameKind::HelloReply,
            field: "accepted",
            value: 2
        })
    );

    // A batch over the event limit.
    let mut batch = batch_prefix(BatchId(1), 0, 0, false).unwrap();
    batch[FRAME_HEADER_BYTES + 8..].copy_from_slice(&(BATCH_EVENTS_MAX + 1).to_le_bytes());
    assert!(matches!(
        decode_frame(&batch),
        Err(FrameError::OverLimit {
            field: "event_count",
            ..
        })
    ));
    // An ack listing more dead letters than its limit.
    let mut ack = sample_frames(&[])[4].clone();
    let count_at = FRAME_HEADER_BYTES + 8 + 12;
    ack[count_at..count_at + 4].copy_from_slice(&(DEAD_LETTERS_PER_ACK_MAX + 1).to_le_bytes());
    assert!(matches!(
        decode_frame(&ack),
        Err(FrameError::OverLimit {
            field: "dead_lettered",
            ..
        })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..200)) {
        check_any(&bytes);
        // Behind a valid header too, so the body parsers see the noise.
        for kind in 1..=6 {
            let mut framed = header_bytes(FrameKind::from_u8(kind).unwrap(), 0, bytes.len() as u32).to_vec();
            framed.extend_from_slice(&bytes);
            check_any(&framed);
        }
    }

    #[test]
    fn mutated_frames_never_panic(
        which in 0usize..7,
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        reseal_header in any::<bool>(),
    ) {
        let recs = records(1, 2);
        let mut bytes = sample_frames(&recs)[which].clone();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if reseal_header {
            reseal(&mut bytes);
        }
        let len = cut.index(bytes.len() + 1);
        check_any(&bytes[..len]);
        check_any(&bytes);
    }
}

/// Decodes whatever `bytes` is; a frame must lie within them and walk without panicking.
fn check_any(bytes: &[u8]) {
    if let Ok(Some((frame, consumed))) = decode_frame(bytes) {
        assert!(consumed >= FRAME_HEADER_BYTES && consumed <= bytes.len());
        match frame {
            Frame::Batch(b) => {
                let _ = b.check();
                assert!(b.records().count() <= b.events as usize + 1);
            }
            Frame::Hello(h) => assert_eq!(h.regions.iter().count(), h.regions.len()),
            Frame::Ack(a) => assert_eq!(a.dead_letters.iter().count(), a.dead_letters.len()),
            _ => {}
        }
        let mut again = Vec::new();
        if frame.encode(&mut again).is_ok() {
            assert_eq!(decode_frame(&again).unwrap().unwrap().0, frame);
        }
    }
}

// --- The two state machines, wired together in memory. ---

/// A sender and a receiver connection with the bytes in flight between them.
struct Link {
    sender: SenderConn,
    receiver: ReceiverConn,
    to_receiver: Vec<u8>,
    to_sender: Vec<u8>,
    sender_events: Vec<SenderEvent>,
    receiver_events: Vec<ReceiverEvent>,
    /// Batches the receiver handed out, not yet applied: id and events.
    unapplied: Vec<(BatchId, u32)>,
    /// Apply every batch as soon as it arrives.
    auto_apply: bool,
}

impl Link {
    fn new(sender: SenderConfig, receiver: ReceiverConfig) -> Link {
        Link {
            sender: SenderConn::new(sender, 0).unwrap(),
            receiver: ReceiverConn::new(receiver, 0),
            to_receiver: Vec::new(),
            to_sender: Vec::new(),
            sender_events: Vec::new(),
            receiver_events: Vec::new(),
            unapplied: Vec::new(),
            auto_apply: true,
        }
    }

    fn ny_to_london() -> Link {
        let regions = vec![RegionSpec {
            id: RegionId(3),
            name: "orders".into(),
            total_num_buckets: 113,
        }];
        Link::new(
            SenderConfig::new(SiteId(1), SiteId(2), "ny-1", "to-london", regions),
            ReceiverConfig::new(SiteId(2), "ln-1"),
        )
    }

    /// Moves bytes both ways until nothing moves.
    fn pump(&mut self, now: u64) {
        loop {
            let mut moved = false;
            while let Some(ev) = self.sender.poll_event() {
                moved = true;
                match ev {
                    SenderEvent::SendHello(b) => self.to_receiver.extend_from_slice(&b),
                    SenderEvent::SendPing(b) => self.to_receiver.extend_from_slice(&b),
                    other => self.sender_events.push(other),
                }
            }
            loop {
                let handled = self.receiver.handle_bytes(&self.to_receiver, now);
                let batch = handled.batch.map(|b| {
                    assert_eq!(b.records().count(), b.events as usize);
                    (b.id, b.events)
                });
                let consumed = handled.consumed;
                self.to_receiver.drain(..consumed);
                if let Some(batch) = batch {
                    self.unapplied.push(batch);
                }
                if consumed == 0 {
                    break;
                }
                moved = true;
            }
            if self.auto_apply {
                self.apply_all();
            }
            while let Some(ev) = self.receiver.poll_event() {
                moved = true;
                match ev {
                    ReceiverEvent::Transmit(b) => self.to_sender.extend_from_slice(&b),
                    other => self.receiver_events.push(other),
                }
            }
            let consumed = self.sender.handle_bytes(&self.to_sender, now);
            self.to_sender.drain(..consumed);
            moved |= consumed > 0;
            if !moved {
                return;
            }
        }
    }

    fn apply_all(&mut self) {
        for (id, events) in std::mem::take(&mut self.unapplied) {
            let outcome = AckOutcome {
                applied: events,
                ..AckOutcome::default()
            };
            self.receiver.handle_applied(id, &outcome).unwrap();
        }
    }

    /// Sends a batch of `events` records from `queue`, starting at `first`.
    fn send(&mut self, queue: u16, first: u64, events: u32, now: u64) -> BatchId {
        let recs = records(first, u64::from(events));
        let (id, prefix) = self
            .sender
            .handle_batch(
                BatchOut {
                    queue: QueueId(queue),
                    first_seq: Seq(first),
                    last_seq: Seq(first + u64::from(events) - 1),
                    events,
                    records_len: recs.len(),
                    possible_duplicate: false,
                },
                now,
            )
            .unwrap();
        self.to_receiver.extend_from_slice(&prefix);
        self.to_receiver.extend_from_slice(&recs);
        id
    }

    fn acked(&self) -> Vec<BatchId> {
        self.sender_events
            .iter()
            .filter_map(|e| match e {
                SenderEvent::Acked(a) => Some(a.batch),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn handshake_then_batches_are_acked_in_order() {
    let mut link = Link::ny_to_london();
    assert!(!link.sender.can_send());
    link.pump(0);
    assert_eq!(
        link.sender_events,
        [SenderEvent::Connected {
            receiver_site: SiteId(2),
            member: "ln-1".into(),
            maximum_time_between_pings_ms: 60_000,
            ping_interval_ms: 20_000,
        }]
    );
    let ReceiverEvent::Connected(info) = &link.receiver_events[0] else {
        panic!("{:?}", link.receiver_events)
    };
    assert_eq!(info.sender_site, SiteId(1));
    assert_eq!(
        (info.member.as_str(), info.sender_id.as_str()),
        ("ny-1", "to-london")
    );
    assert_eq!(info.regions[0].name, "orders");
    assert!(link.sender.can_send());

    let a = link.send(4, 1, 3, 10);
    let b = link.send(4, 4, 2, 11);
    assert_eq!((a, b), (BatchId(1), BatchId(2)));
    link.pump(12);
    let SenderEvent::Acked(ack) = &link.sender_events[1] else {
        panic!("{:?}", link.sender_events)
    };
    assert_eq!(
        (ack.queue, ack.first_seq, ack.upto_seq, ack.applied),
        (QueueId(4), Seq(1), Seq(3), 3)
    );
    assert_eq!(link.acked(), [BatchId(1), BatchId(2)]);
    assert_eq!(link.sender.inflight().len(), 0);
}

#[test]
fn dead_letters_travel_back_with_the_ack() {
    let mut link = Link::ny_to_london();
    link.pump(0);
    link.auto_apply = false;
    let id = link.send(0, 1, 3, 1);
    link.pump(1);
    let outcome = AckOutcome {
        applied: 1,
        duplicates: 1,
        conflicts: 0,
        dead_letters: vec![DeadLetter {
            index: 2,
            reason: DeadLetterReason::UnknownRegion,
            text: Cow::Owned("é".repeat(200)), // 400 bytes: cut to 256 on a char boundary
        }],
    };
    assert!(matches!(
        link.receiver.handle_applied(BatchId(9), &outcome),
        Err(AckError::NotPending { .. })
    ));
    link.receiver.handle_applied(id, &outcome).unwrap();
    link.unapplied.clear();
    link.pump(2);
    let SenderEvent::Acked(ack) = &link.sender_events[1] else {
        panic!("{:?}", link.sender_events)
    };
    assert_eq!(ack.dead_letters.len(), 1);
    assert_eq!(ack.dead_letters[0].index, 2);
    assert_eq!(ack.dead_letters[0].text.len(), 256);
}

#[test]
fn a_sender_cannot_connect_to_its_own_site() {
    // The sender aims at site 1, its own site; the receiver of site 1 refuses with reason 2.
    let mut link = Link::new(
        SenderConfig::new(SiteId(1), SiteId(1), "ny-1", "loop", Vec::new()),
        ReceiverConfig::new(SiteId(1), "ny-2"),
    );
    link.pump(0);
    let [SenderEvent::Refused(err)] = &link.sender_events[..] else {
        panic!("{:?}", link.sender_events)
    };
    assert_eq!(
        err,
        &SenderError::SameSite {
            site: SiteId(1),
            member: "ny-2".into()
        }
    );
    assert!(
        err.to_string()
            .contains("a gateway sender cannot connect to its own distributed system")
    );
    assert!(matches!(
        &link.receiver_events[..],
        [ReceiverEvent::Closed(ReceiverError::Refused {
            reason: RefuseReason::SameSite,
            ..
        })]
    ));
    assert!(link.sender.is_closed() && link.receiver.is_closed());
    assert_eq!(link.sender.next_deadline_ms(), None);
}

#[test]
fn a_receiver_of_another_site_refuses() {
    let mut link = Link::new(
        SenderConfig::new(SiteId(1), SiteId(3), "ny-1", "to-paris", Vec::new()),
        ReceiverConfig::new(SiteId(2), "ln-1"),
    );
    link.pump(0);
    assert!(matches!(
        &link.sender_events[..],
        [SenderEvent::Refused(SenderError::Refused {
            reason: RefuseReason::WrongSite,
            site: SiteId(2),
            ..
        })]
    ));
}

#[test]
fn a_receiver_refuses_a_first_frame_that_is_not_a_hello() {
    let mut receiver = ReceiverConn::new(ReceiverConfig::new(SiteId(2), "ln-1"), 0);
    let ping = ping_frame(PingNonce(1));
    assert_eq!(receiver.handle_bytes(&ping, 0).consumed, ping.len());
    let Some(ReceiverEvent::Transmit(reply)) = receiver.poll_event() else {
        panic!("no reply")
    };
    let Some((Frame::HelloReply(r), _)) = decode_frame(&reply).unwrap() else {
        panic!("not a hello reply")
    };
    assert_eq!(r.refusal.unwrap().reason, RefuseReason::MalformedHello);

    // A hello of protocol version 2 is refused with reason 1.
    let mut receiver = ReceiverConn::new(ReceiverConfig::new(SiteId(2), "ln-1"), 0);
    let mut v2 = sample_frames(&[])[0].clone();
    v2[4] = 2;
    reseal(&mut v2);
    receiver.handle_bytes(&v2, 0);
    let Some(ReceiverEvent::Transmit(reply)) = receiver.poll_event() else {
        panic!("no reply")
    };
    let Some((Frame::HelloReply(r), _)) = decode_frame(&reply).unwrap() else {
        panic!("not a hello reply")
    };
    assert_eq!(r.refusal.unwrap().reason, RefuseReason::WrongVersion);
    assert!(matches!(
        receiver.poll_event(),
        Some(ReceiverEvent::Closed(ReceiverError::Refused {
            reason: RefuseReason::WrongVersion,
            ..
        }))
    ));
}

/// What a receiver of site 2 answers a Hello from site 1 with `regions`: the refusal, if any.
fn hello_refusal(regions: &[RegionEntry<'_>]) -> Option<(RefuseReason, String)> {
    let hello = encode(&Frame::Hello(Hello {
        sender_site: SiteId(1),
        receiver_site: SiteId(2),
        member: "ny-1",
        sender_id: "to-london",
        regions: Regions::List(regions),
    }));
    let mut receiver = ReceiverConn::new(ReceiverConfig::new(SiteId(2), "ln-1"), 0);
    assert_eq!(receiver.handle_bytes(&hello, 0).consumed, hello.len());
    let Some(ReceiverEvent::Transmit(reply)) = receiver.poll_event() else {
        panic!("no reply")
    };
    let Some((Frame::HelloReply(r), _)) = decode_frame(&reply).unwrap() else {
        panic!("not a hello reply")
    };
    let refusal = r.refusal.map(|f| (f.reason, f.text.to_owned()));
    assert_eq!(receiver.is_closed(), refusal.is_some());
    refusal
}

#[test]
fn a_receiver_refuses_a_hello_with_a_bad_region_table() {
    let region = |id: u16, total_num_buckets: u32, name: &'static str| RegionEntry {
        id: RegionId(id),
        total_num_buckets,
        name,
    };
    assert_eq!(hello_refusal(REGIONS), None);
    assert_eq!(
        hello_refusal(&[region(1, receiver::BUCKETS_MAX, "a")]),
        None
    );
    for (regions, words) in [
        (vec![region(1, 0, "a")], "total_num_buckets 0"),
        (
            vec![region(1, receiver::BUCKETS_MAX + 1, "a")],
            "total_num_buckets 4097",
        ),
        (
            vec![region(1, 113, "a"), region(1, 113, "b")],
            "region id 1 appears twice",
        ),
        (
            vec![region(1, 113, "a"), region(2, 7, "a")],
            "region name a appears twice",
        ),
    ] {
        let (reason, text) = hello_refusal(&regions).expect("refused");
        assert_eq!(reason, RefuseReason::MalformedHello, "{text}");
        assert!(text.contains(words), "{text}");
    }
}

#[test]
fn a_full_window_stops_sends_until_acks_free_it() {
    let mut link = Link::ny_to_london();
    link.pump(0);
    link.auto_apply = false;
    for i in 0..8 {
        assert!(link.sender.can_send());
        link.send(i % 3, 1 + u64::from(i), 1, 5);
    }
    assert!(!link.sender.can_send());
    let refused = link.sender.handle_batch(
        BatchOut {
            queue: QueueId(0),
            first_seq: Seq(100),
            last_seq: Seq(100),
            events: 1,
            records_len: 68,
            possible_duplicate: false,
        },
        5,
    );
    assert_eq!(refused, Err(SendError::WindowFull(8)));
    link.pump(6);
    assert_eq!(link.unapplied.len(), 8);
    assert!(link.acked().is_empty());
    // Apply the first three: three slots free.
    let first: Vec<_> = link.unapplied.drain(..3).collect();
    for (id, events) in first {
        let outcome = AckOutcome {
            applied: events,
            ..AckOutcome::default()
        };
        link.receiver.handle_applied(id, &outcome).unwrap();
    }
    link.pump(7);
    assert_eq!(link.acked(), [BatchId(1), BatchId(2), BatchId(3)]);
    assert_eq!(link.sender.inflight().len(), 5);
    assert!(link.sender.can_send());
    link.apply_all();
    link.pump(8);
    assert_eq!(link.acked().len(), 8);
}

#[test]
fn a_window_counted_in_events_takes_many_small_batches_and_few_large_ones() {
    let regions = vec![RegionSpec {
        id: RegionId(3),
        name: "orders".into(),
        total_num_buckets: 113,
    }];
    let mut config = SenderConfig::new(SiteId(1), SiteId(2), "ny-1", "to-london", regions);
    config.inflight_batches_max = 2;
    config.inflight_events_max = Some(10);
    let mut link = Link::new(config, ReceiverConfig::new(SiteId(2), "ln-1"));
    link.pump(0);
    link.auto_apply = false;
    // Ten batches of one event each, from ten queues: far more than two batches.
    for q in 0..10u16 {
        assert!(link.sender.can_send(), "batch {q}");
        link.send(q, 1, 1, 5);
    }
    assert!(!link.sender.can_send());
    let one = BatchOut {
        queue: QueueId(11),
        first_seq: Seq(1),
        last_seq: Seq(1),
        events: 1,
        records_len: 68,
        possible_duplicate: false,
    };
    assert_eq!(
        link.sender.handle_batch(one, 5),
        Err(SendError::WindowFull(10))
    );
    // Acks of four one-event batches free room for four events: here one batch of four.
    link.pump(6);
    let first: Vec<_> = link.unapplied.drain(..4).collect();
    for (id, events) in first {
        let outcome = AckOutcome {
            applied: events,
            ..AckOutcome::default()
        };
        link.receiver.handle_applied(id, &outcome).unwrap();
    }
    link.pump(7);
    assert_eq!(link.acked().len(), 4);
    assert!(link.sender.can_send());
    link.send(20, 1, 4, 8);
    assert!(!link.sender.can_send(), "10 events in flight again");
    // Once everything is acknowledged the window is empty again.
    link.pump(8);
    link.apply_all();
    link.pump(9);
    assert_eq!(link.sender.inflight().len(), 0);
    assert!(link.sender.can_send());
}

#[test]
fn an_events_window_of_zero_is_refused() {
    let mut config = SenderConfig::new(SiteId(1), SiteId(2), "ny-1", "to-london", Vec::new());
    config.inflight_events_max = Some(0);
    assert_eq!(
        SenderConn::new(config, 0).err(),
        Some(SenderConfigError::InflightEventsMax)
    );
}

#[test]
fn an_ack_timeout_fails_with_the_inflight_batches() {
    let mut link = Link::ny_to_london();
    link.pump(0);
    link.auto_apply = false;
    link.send(7, 1, 2, 100);
    link.send(9, 1, 1, 200);
    link.pump(200);
    // Nothing sent for the ping interval: a ping, even with batches in flight, so that the
    // receiver keeps hearing from the sender while it works.
    assert_eq!(link.sender.next_deadline_ms(), Some(200 + 20_000));
    link.sender.handle_timer(20_200);
    assert!(matches!(
        link.sender.poll_event(),
        Some(SenderEvent::SendPing(_))
    ));
    assert_eq!(link.sender.next_deadline_ms(), Some(100 + 30_000));
    link.sender.handle_timer(30_099);
    assert_eq!(link.sender.poll_event(), None);
    link.sender.handle_timer(30_100);
    let Some(SenderEvent::Failed { error, inflight }) = link.sender.poll_event() else {
        panic!("no failure")
    };
    assert_eq!(
        error,
        SenderError::AckTimeout {
            batch: BatchId(1),
            waited_ms: 30_000
        }
    );
    let queues: Vec<_> = inflight
        .iter()
        .map(|b| (b.id, b.queue, b.first_seq, b.last_seq))
        .collect();
    assert_eq!(
        queues,
        [
            (BatchId(1), QueueId(7), Seq(1), Seq(2)),
            (BatchId(2), QueueId(9), Seq(1), Seq(1))
        ]
    );
    assert!(link.sender.is_closed() && !link.sender.can_send());
}

#[test]
fn an_idle_sender_pings_and_a_silent_one_is_closed() {
    let mut link = Link::ny_to_london();
    link.pump(0);
    // Idle: a ping at the interval (60 000 / 3), answered by a pong.
    assert_eq!(link.sender.next_deadline_ms(), Some(20_000));
    link.sender.handle_timer(19_999);
    link.pump(19_999);
    assert!(link.to_receiver.is_empty());
    link.sender.handle_timer(20_000);
    link.pump(20_000);
    assert_eq!(
        link.sender.next_deadline_ms(),
        Some(40_000),
        "pong received"
    );
    assert_eq!(link.receiver.next_deadline_ms(), Some(80_000), "ping heard");
    // The next ping is never answered: the sender gives up after the ack timeout.
    link.sender.handle_timer(40_000);
    let Some(SenderEvent::SendPing(ping)) = link.sender.poll_event() else {
        panic!("no ping")
    };
    assert!(matches!(
        decode_frame(&ping),
        Ok(Some((Frame::Ping(PingNonce(2)), _)))
    ));
    link.sender.handle_timer(70_000);
    assert!(matches!(
        link.sender.poll_event(),
        Some(SenderEvent::Failed {
            error: SenderError::PingTimeout { .. },
            ..
        })
    ));
    // The receiver heard nothing since 20 000: closed at 80 000.
    link.receiver.handle_timer(79_999);
    assert_eq!(link.receiver.poll_event(), None);
    link.receiver.handle_timer(80_000);
    assert_eq!(
        link.receiver.poll_event(),
        Some(ReceiverEvent::Closed(ReceiverError::TimedOut {
            silent_ms: 60_000
        }))
    );
    assert_eq!(link.receiver.next_deadline_ms(), None);
}

#[test]
fn an_ack_for_the_wrong_batch_is_a_protocol_error() {
    let mut link = Link::ny_to_london();
    link.pump(0);
    link.auto_apply = false;
    link.send(1, 1, 1, 1);
    link.send(1, 2, 1, 1);
    link.pump(1);
    // An ack for batch 2 while batch 1 is the oldest in flight.
    let ack = encode(&Frame::Ack(Ack {
        batch: BatchId(2),
        applied: 1,
        duplicates: 0,
        conflicts: 0,
        dead_letters: DeadLetters::List(&[]),
    }));
    assert_eq!(link.sender.handle_bytes(&ack, 2), ack.len());
    let Some(SenderEvent::Failed { error, inflight }) = link.sender.poll_event() else {
        panic!("no failure")
    };
    assert_eq!(
        error,
        SenderError::UnexpectedAck {
            expected: Some(BatchId(1)),
            got: BatchId(2)
        }
    );
    assert_eq!(inflight.len(), 2);
}

#[test]
fn an_ack_that_does_not_account_for_every_event_is_a_protocol_error() {
    let mut link = Link::ny_to_london();
    link.pump(0);
    link.send(1, 1, 2, 1);
    let ack = encode(&Frame::Ack(Ack {
        batch: BatchId(1),
        applied: 1,
        duplicates: 0,
        conflicts: 0,
        dead_letters: DeadLetters::List(&[]),
    }));
    link.sender.handle_bytes(&ack, 2);
    assert!(matches!(
        link.sender.poll_event(),
        Some(SenderEvent::Failed {
            error: SenderError::AckCountMismatch {
                accounted: 1,
                events: 2,
                ..
            },
            ..
        })
    ));
}

#[test]
fn a_receiver_closes_on_a_skipped_batch_id_or_a_corrupt_record() {
    let mut link = Link::ny_to_london();
    link.pump(0);
    let recs = records(1, 1);
    let mut skipped = batch_prefix(BatchId(2), 1, recs.len(), false)
        .unwrap()
        .to_vec();
    skipped.extend_from_slice(&recs);
    let handled = link.receiver.handle_bytes(&skipped, 1);
    assert_eq!(handled.batch, None);
    assert_eq!(
        link.receiver.poll_event(),
        Some(ReceiverEvent::Closed(ReceiverError::BatchOutOfOrder {
            expected: BatchId(1),
            got: BatchId(2)
        }))
    );

    let mut link = Link::ny_to_london();
    link.pump(0);
    let mut corrupt = batch_prefix(BatchId(1), 1, recs.len(), false)
        .unwrap()
        .to_vec();
    corrupt.extend_from_slice(&recs);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert_eq!(link.receiver.handle_bytes(&corrupt, 1).batch, None);
    assert!(matches!(
        link.receiver.poll_event(),
        Some(ReceiverEvent::Closed(ReceiverError::Frame(
            FrameError::Record {
                index: 0,
                error: DecodeError::Crc { .. }
            }
        )))
    ));
}

#[test]
fn a_receiver_holds_back_batches_beyond_its_pending_limit() {
    let mut config = ReceiverConfig::new(SiteId(2), "ln-1");
    config.pending_batches_max = 2;
    let mut link = Link::new(
        SenderConfig::new(SiteId(1), SiteId(2), "ny-1", "to-london", Vec::new()),
        config,
    );
    link.pump(0);
    link.auto_apply = false;
    for i in 0..3 {
        link.send(0, 1 + i, 1, 1);
    }
    link.pump(1);
    assert_eq!(link.unapplied.len(), 2);
    assert!(
        !link.to_receiver.is_empty(),
        "the third batch waits in the buffer"
    );
    link.apply_all();
    link.pump(2);
    assert_eq!(link.unapplied.len(), 1);
    assert!(link.to_receiver.is_empty());
}
