//! The dead-letter log reader.
//!
//! Invariants: nothing panics; entries lie within the log, back to back from its start, each
//! holding a record that decodes; a clean tail ends exactly at the log's end; reading on from
//! a corrupt tail's resume point stays within the log.

use super::{random_record, reseal_records};
use crate::rng::Rng;
use crate::{Target, Verdict, variant};
use strait_engine::deadletter::{Tail, encode_entry, scan, scan_from};
use strait_queue::ids::SiteId;
use strait_queue::record::{self, DeadLetterReason};

pub const TARGET: Target = Target {
    name: "deadletter",
    generate,
    fixup,
    run,
};

fn generate(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..rng.small_len(6) {
        let bytes = random_record(rng, i as u64 + 1);
        let Ok(r) = record::decode(&bytes) else {
            continue;
        };
        let reason = *rng.pick(&[
            DeadLetterReason::UnknownRegion,
            DeadLetterReason::ValueRejected,
            DeadLetterReason::StoreFull,
        ]);
        let text = "x".repeat(rng.small_len(40));
        out.extend(encode_entry(
            rng.next_u64(),
            SiteId(rng.byte()),
            reason,
            &text,
            &r,
        ));
    }
    out
}

#[allow(clippy::ptr_arg)] // `Target::fixup` takes a Vec: config's fixup replaces the input
fn fixup(rng: &mut Rng, data: &mut Vec<u8>) {
    if rng.one_in(2) {
        // Records inside entries: reseal whatever parses from a random offset.
        let at = rng.below(data.len() + 1);
        reseal_records(data, at);
    }
}

fn run(data: &[u8]) -> Verdict {
    let (entries, tail) = scan(data);
    let mut at = 0;
    for e in &entries {
        let start = e.offset;
        if start != at || start + e.bytes.len() > data.len() {
            return Err(format!("an entry at {start}, expected at {at}"));
        }
        at += e.bytes.len();
    }
    match &tail {
        Tail::Clean if at != data.len() => {
            return Err(format!("a clean tail at {at} of {} bytes", data.len()));
        }
        Tail::Torn { offset, .. } if *offset != at => {
            return Err(format!("a torn tail at {offset}, entries end at {at}"));
        }
        Tail::Corrupt { offset, resume, .. } => {
            if *offset != at {
                return Err(format!("a corrupt tail at {offset}, entries end at {at}"));
            }
            if let Some(resume) = resume {
                if *resume <= *offset || *resume > data.len() {
                    return Err(format!("resume at {resume} after damage at {offset}"));
                }
                let (more, _) = scan_from(data, *resume);
                if more.is_empty() {
                    return Err("the resume point holds no entry".into());
                }
            }
        }
        _ => {}
    }
    Ok(format!("{} {}", entries.len().min(3), variant(&tail)))
}
