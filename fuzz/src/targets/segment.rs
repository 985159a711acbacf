//! The segment header reader, the record scan recovery runs over every segment, and
//! recovery itself over an in-memory disk.
//!
//! Invariants: nothing panics; the scan's end and tail offsets lie within the data; the
//! records before `end` scan again as a clean segment with the same count; a clean tail is
//! zeros, a torn one ends at its last non-zero byte; recovery either refuses with an error or
//! yields queues whose every event reads back, in increasing sequence order, each one a
//! record that was in the file byte for byte, and acknowledging them all works.

use super::{random_record, reseal_records};
use crate::rng::Rng;
use crate::{Target, Verdict, variant};
use strait_queue::ids::{QueueId, SegmentId, Seq};
use strait_queue::mem::{MemDisk, run_actions};
use strait_queue::queue::{QueueConfig, SEGMENT_BYTES_MIN, SyncPolicy};
use strait_queue::record;
use strait_queue::segment::{self, SEGMENT_HEADER_BYTES, SegmentInfo, Tail};
use strait_queue::store::{Disk, recover};

pub const TARGET: Target = Target {
    name: "segment",
    generate,
    fixup,
    run,
};

/// Queues of the configuration recovery runs with.
const QUEUES: u16 = 8;

fn generate(rng: &mut Rng) -> Vec<u8> {
    let first_seq = 1 + rng.below(1000) as u64;
    let mut data = vec![0u8; SEGMENT_HEADER_BYTES];
    let info = SegmentInfo {
        queue: QueueId(rng.below(usize::from(QUEUES) + 1) as u16),
        persistent: !rng.one_in(4),
        segment_seq: 1 + rng.below(3) as u64,
        first_seq: Seq(first_seq),
        capacity: 4096,
        acked: None,
        ack_offset: None,
    };
    segment::write_header(&mut data, &info);
    let records = rng.small_len(12) as u64;
    let acked = (rng.one_in(2) && records > 0).then(|| rng.below(records as usize) as u64);
    for i in 0..records {
        let mut r = random_record(rng, first_seq + i);
        if rng.one_in(6) {
            record::mark_superseded(&mut r);
        }
        data.extend(r);
        // The ack slot names the record after the acknowledged one (its offset).
        if acked == Some(i) {
            let offset = data.len() as u32;
            segment::write_ack(&mut data, Seq(first_seq + i), offset);
        }
    }
    data.extend(std::iter::repeat_n(0, rng.small_len(600)));
    data
}

/// Half the time, reseals the header CRC and every record's CRC.
#[allow(clippy::ptr_arg)] // `Target::fixup` takes a Vec: config's fixup replaces the input
fn fixup(rng: &mut Rng, data: &mut Vec<u8>) {
    if rng.one_in(2) || data.len() < SEGMENT_HEADER_BYTES {
        return;
    }
    let crc = crc32fast::hash(&data[..36]);
    data[36..40].copy_from_slice(&crc.to_le_bytes());
    if rng.one_in(2) {
        // The ack slots' CRCs as the version has them: version 1 one slot over bytes 36..48,
        // version 2 two slots of 12 bytes, each over the header CRC and its first 8 bytes.
        if u16::from_le_bytes([data[8], data[9]]) >= 2 {
            for at in [40, 52] {
                let mut h = crc32fast::Hasher::new();
                h.update(&data[36..40]);
                h.update(&data[at..at + 8]);
                data[at + 8..at + 12].copy_from_slice(&h.finalize().to_le_bytes());
            }
        } else {
            let crc = crc32fast::hash(&data[36..48]);
            data[48..52].copy_from_slice(&crc.to_le_bytes());
        }
    }
    reseal_records(data, SEGMENT_HEADER_BYTES);
}

fn run(data: &[u8]) -> Verdict {
    let header = segment::read_header(data);
    // Where recovery starts: the ack slot's offset, or the first record.
    let (start, first) = header
        .as_ref()
        .map_or((SEGMENT_HEADER_BYTES.min(data.len()), Seq(1)), |i| {
            segment::scan_start(i, data.len())
        });
    let scan = segment::scan(data, start, first);
    if scan.end > data.len() || scan.end < start {
        return Err(format!(
            "scan end {} outside {start}..={}",
            scan.end,
            data.len()
        ));
    }
    let zeros = |range: &[u8]| range.iter().all(|&b| b == 0);
    match &scan.tail {
        Tail::Clean => {
            if !zeros(&data[scan.end..]) {
                return Err("a clean tail with non-zero bytes after the records".into());
            }
        }
        Tail::Torn {
            offset,
            garbage_end,
            ..
        } => {
            if *offset != scan.end
                || *garbage_end > data.len()
                || *garbage_end <= *offset
                || data[garbage_end - 1] == 0
                || !zeros(&data[*garbage_end..])
            {
                return Err(format!(
                    "torn tail {offset}..{garbage_end} is not the garbage"
                ));
            }
        }
        Tail::Corrupt {
            offset,
            quarantine_end,
            ..
        } => {
            if *offset != scan.end || *quarantine_end > data.len() || quarantine_end <= offset {
                return Err(format!("corrupt range {offset}..{quarantine_end} is wrong"));
            }
        }
    }
    let again = segment::scan(&data[..scan.end], start, first);
    if again.tail != Tail::Clean || again.records != scan.records || again.end != scan.end {
        return Err("the records before the scan's end do not scan again the same".into());
    }
    let recovered = recovery(data)?;
    Ok(format!(
        "{} {} {}",
        header.map_or_else(|e| variant(&e), |_| "header".into()),
        variant(&scan.tail),
        recovered
    ))
}

/// Recovers a sender whose only segment file holds `data`.
fn recovery(data: &[u8]) -> Verdict {
    let config = QueueConfig {
        queue_count: QUEUES,
        persistent: true,
        sync: SyncPolicy::Never,
        segment_bytes: SEGMENT_BYTES_MIN,
        spare_segments: 1,
        ..QueueConfig::default()
    };
    let disk = MemDisk::new();
    let id = SegmentId(1);
    if disk.create(id, data.len().max(1) as u32).is_err() {
        return Ok("no-create".into());
    }
    disk.with_segment(id, |bytes| *bytes = data.to_vec());
    let (mut queue, report) = match recover(config, &disk) {
        Ok(r) => r,
        Err(e) => return Ok(format!("refused-{}", variant(&e))),
    };
    let mut events = 0u64;
    for q in 0..QUEUES {
        let q = QueueId(q);
        let mut last = Seq(0);
        loop {
            let batch = match queue.peek(q, 16, 1 << 20) {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => return Err(format!("a recovered event does not read back: {e}")),
            };
            if batch.first_seq <= last || batch.last_seq < batch.first_seq {
                return Err(format!(
                    "queue {}: batch {}..={} after {last}",
                    q.0, batch.first_seq, batch.last_seq
                ));
            }
            let mut n = 0;
            for slice in queue.batch_slices(&batch) {
                let mut at = 0;
                while at < slice.len() {
                    let r = record::decode(&slice[at..])
                        .map_err(|e| format!("a recovered record does not decode: {e}"))?;
                    if events < 64 && !data.windows(r.len()).any(|w| w == r.bytes()) {
                        return Err("a recovered record was not in the file".into());
                    }
                    at += r.len();
                    n += 1;
                    events += 1;
                }
            }
            if n != batch.events {
                return Err(format!("a batch of {} events holds {n}", batch.events));
            }
            last = batch.last_seq;
            queue
                .ack(q, batch.last_seq)
                .map_err(|e| format!("acknowledging a recovered batch: {e}"))?;
            run_actions(&mut queue, &disk, 0);
        }
    }
    if events != report.events {
        return Err(format!(
            "recovery reported {} events, {events} read back",
            report.events
        ));
    }
    Ok(format!(
        "ok t{} c{} g{}",
        report.torn.len(),
        report.corrupt.len(),
        report.gaps.len().min(1)
    ))
}
