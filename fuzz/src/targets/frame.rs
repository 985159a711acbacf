//! The WAN frame decoder, and both connection state machines fed from it.
//!
//! Invariants: [`decode_frame`] never panics; a decoded frame is at most the buffer, encodes
//! back to exactly the bytes it came from, and every proper prefix of it is "incomplete"; a
//! batch's records walk without panicking; a [`ReceiverConn`] and a [`SenderConn`] fed the
//! input whole and fed it in random pieces produce the same events.

use std::borrow::Cow;

use super::{random_record, reseal_records};
use crate::rng::Rng;
use crate::{Target, Verdict, variant};
use strait_net::wire::{
    Ack, AckOutcome, BatchId, BatchOut, DeadLetter, DeadLetterReason, Frame, Hello, HelloReply,
    PingNonce, ReceiverConfig, ReceiverConn, Refusal, RefuseReason, RegionEntry, Regions,
    SenderConfig, SenderConn, SenderEvent, batch_prefix, decode_frame,
};
use strait_queue::ids::{QueueId, RegionId, Seq, SiteId};

pub const TARGET: Target = Target {
    name: "frame",
    generate,
    fixup,
    run,
};

const FRAME_HEADER: usize = 16;

fn random_name(rng: &mut Rng) -> String {
    let n = rng.small_len(20);
    (0..n)
        .map(|_| *rng.pick(&['a', 'z', '-', '1', 'é', '€', '\u{0}']))
        .collect()
}

fn push_frame(rng: &mut Rng, out: &mut Vec<u8>) {
    match rng.below(6) {
        0 => {
            let names: Vec<String> = (0..rng.small_len(4)).map(|_| random_name(rng)).collect();
            let entries: Vec<RegionEntry<'_>> = names
                .iter()
                .enumerate()
                .map(|(i, name)| RegionEntry {
                    id: RegionId(i as u16),
                    total_num_buckets: *[1u32, 113, 4096, 0, 4097]
                        .get(rng.below(5))
                        .expect("in range"),
                    name,
                })
                .collect();
            let (member, sender) = (random_name(rng), random_name(rng));
            let _ = Frame::Hello(Hello {
                sender_site: SiteId(1),
                receiver_site: SiteId(2),
                member: &member,
                sender_id: &sender,
                regions: Regions::List(&entries),
            })
            .encode(out);
        }
        1 => {
            let member = random_name(rng);
            let text = random_name(rng);
            let refusal = rng.one_in(3).then(|| Refusal {
                reason: *rng.pick(&[
                    RefuseReason::SameSite,
                    RefuseReason::WrongSite,
                    RefuseReason::WrongVersion,
                    RefuseReason::MalformedHello,
                ]),
                text: &text,
            });
            let _ = Frame::HelloReply(HelloReply {
                receiver_site: SiteId(*rng.pick(&[2u8, 1, 3])),
                member: &member,
                maximum_time_between_pings_ms: rng.next_u64() as u32,
                refusal,
            })
            .encode(out);
        }
        2 => {
            let events = rng.small_len(5) as u32;
            let mut records = Vec::new();
            for i in 0..events {
                records.extend(random_record(rng, u64::from(i) + 1));
            }
            let id = BatchId(1 + rng.below(3) as u64);
            if let Ok(prefix) = batch_prefix(id, events, records.len(), rng.one_in(2)) {
                out.extend_from_slice(&prefix);
                out.extend(records);
            }
        }
        3 => {
            let letters: Vec<DeadLetter<'_>> = (0..rng.small_len(3))
                .map(|i| DeadLetter {
                    index: i as u32,
                    reason: *rng.pick(&[
                        DeadLetterReason::UnknownRegion,
                        DeadLetterReason::ValueRejected,
                        DeadLetterReason::StoreFull,
                    ]),
                    text: Cow::Owned(random_name(rng)),
                })
                .collect();
            let applied = rng.below(3) as u32;
            let _ = Frame::Ack(Ack {
                batch: BatchId(1 + rng.below(3) as u64),
                applied,
                duplicates: 0,
                conflicts: 0,
                dead_letters: strait_net::wire::DeadLetters::List(&letters),
            })
            .encode(out);
        }
        4 => {
            let _ = Frame::Ping(PingNonce(rng.below(3) as u64 + 1)).encode(out);
        }
        _ => {
            let _ = Frame::Pong(PingNonce(rng.below(3) as u64 + 1)).encode(out);
        }
    }
}

fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(5) {
        push_frame(rng, &mut out);
    }
    out
}

/// Half the time, reseals every frame header's CRC and every record CRC of a batch body,
/// walking frames by their declared lengths.
#[allow(clippy::ptr_arg)] // `Target::fixup` takes a Vec: config's fixup replaces the input
fn fixup(rng: &mut Rng, data: &mut Vec<u8>) {
    if rng.one_in(2) {
        return;
    }
    let mut at = 0;
    while at + FRAME_HEADER <= data.len() {
        let crc = crc32fast::hash(&data[at..at + 12]);
        data[at + 12..at + 16].copy_from_slice(&crc.to_le_bytes());
        let body =
            u32::from_le_bytes([data[at + 8], data[at + 9], data[at + 10], data[at + 11]]) as usize;
        let end = at + FRAME_HEADER + body;
        if end > data.len() {
            return;
        }
        if data[at + 5] == 3 && body >= 12 {
            let (_, tail) = data.split_at_mut(at + FRAME_HEADER + 12);
            reseal_records(&mut tail[..body - 12], 0);
        }
        at = end;
    }
}

fn run(data: &[u8]) -> Verdict {
    let mut labels = Vec::new();
    let mut at = 0;
    // Decode frames off the front, as a connection does.
    for _ in 0..64 {
        let rest = &data[at..];
        match decode_frame(rest) {
            Ok(None) => {
                labels.push("incomplete".to_string());
                break;
            }
            Err(e) => {
                if e.to_string().is_empty() {
                    return Err("an error with no text".into());
                }
                labels.push(variant(&e));
                break;
            }
            Ok(Some((frame, n))) => {
                if n > rest.len() || n < FRAME_HEADER {
                    return Err(format!("consumed {n} of {} bytes", rest.len()));
                }
                let mut again = Vec::new();
                if let Err(e) = frame.encode(&mut again) {
                    return Err(format!("a decoded frame does not encode: {e}"));
                }
                if again != rest[..n] {
                    return Err(format!(
                        "a decoded {:?} frame encodes to other bytes",
                        frame.kind()
                    ));
                }
                if !matches!(decode_frame(&rest[..n - 1]), Ok(None)) {
                    return Err("a proper prefix of a whole frame is not incomplete".into());
                }
                if let Frame::Batch(b) = frame {
                    let walked: Vec<_> = b.records().collect();
                    let ok = walked.iter().filter(|r| r.is_ok()).count();
                    if b.check().is_ok()
                        != (ok == b.events as usize && walked.iter().all(Result::is_ok))
                    {
                        return Err("Batch::check disagrees with its records' walk".into());
                    }
                }
                if let Frame::Ack(a) = frame {
                    let _ = a.dead_letters.iter().count();
                }
                labels.push(format!("{:?}", frame.kind()));
                at += n;
            }
        }
    }
    // The reference feeds whole frames one read at a time (a sender's shell acts between
    // reads); the other adds cuts inside frames.
    let bounds = frame_bounds(data);
    let mut cuts = cut_points(data);
    cuts.extend_from_slice(&bounds);
    cuts.sort_unstable();
    cuts.dedup();
    let whole = drive_receiver(data, &bounds);
    if drive_receiver(data, &cuts) != whole {
        return Err("a receiver fed the input in pieces acts differently than fed it whole".into());
    }
    let sent = drive_sender(data, &bounds);
    if drive_sender(data, &cuts) != sent {
        return Err("a sender fed the input in pieces acts differently than fed it whole".into());
    }
    let first = labels.first().cloned().unwrap_or_default();
    let last = labels.last().cloned().unwrap_or_default();
    Ok(format!("{first}/{last}"))
}

/// The offsets where each whole frame at the front of `data` ends.
fn frame_bounds(data: &[u8]) -> Vec<usize> {
    let mut bounds = Vec::new();
    let mut at = 0;
    while let Ok(Some((_, n))) = decode_frame(&data[at..]) {
        at += n;
        bounds.push(at);
    }
    bounds
}

/// Deterministic cut points from the input itself, so a verdict depends on the input alone.
fn cut_points(data: &[u8]) -> Vec<usize> {
    let mut rng = Rng::new(crc32fast::hash(data).into());
    let mut cuts: Vec<usize> = (0..1 + rng.below(6))
        .map(|_| rng.below(data.len() + 1))
        .collect();
    cuts.push(1.min(data.len()));
    cuts
}

/// Feeds `data` to a receiver in the pieces `cuts` marks; answers every batch as applied.
fn drive_receiver(data: &[u8], cuts: &[usize]) -> Vec<String> {
    let mut conn = ReceiverConn::new(ReceiverConfig::new(SiteId(2), "r"), 0);
    let mut log = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut from = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        if end < from {
            continue;
        }
        buf.extend_from_slice(&data[from..end]);
        from = end;
        loop {
            let handled = conn.handle_bytes(&buf, 0);
            let consumed = handled.consumed;
            if let Some(b) = handled.batch {
                let records: Vec<_> = b.records().map(|r| r.len()).collect();
                log.push(format!("batch {} {:?}", b.id, records));
                let outcome = AckOutcome {
                    applied: b.events,
                    ..AckOutcome::default()
                };
                if let Err(e) = conn.handle_applied(b.id, &outcome) {
                    log.push(format!("ack refused: {e}"));
                }
            }
            let had_batch = handled.batch.is_some();
            buf.drain(..consumed);
            while let Some(e) = conn.poll_event() {
                log.push(format!("{e:?}"));
            }
            if consumed == 0 && !had_batch {
                break;
            }
        }
    }
    log
}

/// Feeds `data` to a sender that sends three one-event batches once connected.
fn drive_sender(data: &[u8], cuts: &[usize]) -> Vec<String> {
    let config = SenderConfig::new(SiteId(1), SiteId(2), "s", "to-2", Vec::new());
    let Ok(mut conn) = SenderConn::new(config, 0) else {
        return vec!["refused config".into()];
    };
    let mut log = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut from = 0;
    for &end in cuts.iter().chain(std::iter::once(&data.len())) {
        if end < from {
            continue;
        }
        buf.extend_from_slice(&data[from..end]);
        from = end;
        let used = conn.handle_bytes(&buf, 0);
        if used > buf.len() {
            log.push("consumed more than given".into());
            return log;
        }
        buf.drain(..used);
        while let Some(e) = conn.poll_event() {
            if matches!(e, SenderEvent::Connected { .. }) {
                for i in 1..=3u64 {
                    let batch = BatchOut {
                        queue: QueueId(0),
                        first_seq: Seq(i),
                        last_seq: Seq(i),
                        events: 1,
                        records_len: 60,
                        possible_duplicate: false,
                    };
                    if let Err(e) = conn.handle_batch(batch, 0) {
                        log.push(format!("batch refused: {e}"));
                    }
                }
            }
            log.push(format!("{e:?}"));
        }
    }
    log
}
