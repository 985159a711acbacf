//! The receiver's apply path end to end: records as they come off the wire, the dedupe table,
//! the conflict rule, the loop rule and the dead-letter log.

use proptest::prelude::*;
use strait_engine::apply::{
    ApplyCounts, ApplyOutcome, DeadLetterCause, DeadLetterReason, Duplicate, SenderIndex,
    apply_record, forward_targets, replay_record, restore_logged,
};
use strait_engine::deadletter::{
    DeadLetterLog, ENTRY_HEADER_BYTES, EntryError, Tail, encode_entry, scan, scan_from,
};
use strait_engine::region::{RegionConfig, RegionKind, RegionStore, StoreError};
use strait_engine::version::{ApplyRule, RejectReason};
use strait_queue::ids::{BucketId, EventId, MemberId, RegionId, Seq, SiteId, StreamId, VersionTag};
use strait_queue::record::{self, Event, Op, Record};

const LDN: SiteId = SiteId(2);
const TOKYO: SiteId = SiteId(3);
const HERE: SiteId = SiteId(4);

fn store() -> RegionStore {
    RegionStore::new(&RegionConfig::new("orders", RegionKind::Partition)).unwrap()
}

/// One event of the stream (origin, member 1, stream 7).
#[derive(Clone, Debug)]
struct Ev {
    origin: SiteId,
    seq: u64,
    op: Op,
    key: Vec<u8>,
    value: Vec<u8>,
    ts: u64,
    recipients: Vec<SiteId>,
}

fn ev(origin: SiteId, seq: u64, key: &str, value: &str, ts: u64) -> Ev {
    Ev {
        origin,
        seq,
        op: Op::Update,
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ts,
        recipients: vec![HERE],
    }
}

/// The record bytes of `e`, as a queue holds them and the wire carries them.
fn encode(e: &Ev) -> Vec<u8> {
    let event = Event {
        op: e.op,
        region: RegionId(0),
        bucket: BucketId(0),
        id: EventId {
            origin_site: e.origin,
            origin_member: MemberId(1),
            stream: StreamId(7),
            seq: e.seq,
        },
        version: VersionTag {
            timestamp_us: e.ts,
            site: e.origin,
        },
        recipients: &e.recipients,
        key: &e.key,
        value: &e.value,
    };
    let mut buf = vec![0; record::encoded_len(&event).unwrap()];
    record::encode_into(&mut buf, &event, Seq(e.seq));
    buf
}

fn decode(bytes: &[u8]) -> Record<'_> {
    record::decode(bytes).unwrap()
}

fn apply(s: &mut RegionStore, e: &Ev) -> ApplyOutcome {
    apply_record(s, &decode(&encode(e)), HERE)
}

/// A stored entry: key, value (`None`: a tombstone), version tag.
type Snapshot = Vec<(Vec<u8>, Option<Vec<u8>>, Option<VersionTag>)>;

/// Every entry of the keys 0..16 (and `k`, `a`, `b`), tombstones included, with its tag.
fn snapshot(s: &RegionStore) -> Snapshot {
    let mut keys: Vec<Vec<u8>> = (0u8..16).map(|k| vec![k]).collect();
    keys.extend([b"k".to_vec(), b"a".to_vec(), b"b".to_vec()]);
    keys.into_iter()
        .filter_map(|k| {
            let e = s.entry(&k)?;
            Some((k, e.live_value().map(|v| v.to_vec()), e.version.tag()))
        })
        .collect()
}

#[test]
fn every_outcome() {
    let mut s = store();
    assert_eq!(
        apply(&mut s, &ev(LDN, 1, "k", "a", 100)),
        ApplyOutcome::Applied {
            rule: ApplyRule::NewEntry
        }
    );
    assert_eq!(
        apply(&mut s, &ev(LDN, 1, "k", "a", 100)),
        ApplyOutcome::Duplicate(Duplicate::Seen { last_applied: 1 })
    );
    assert_eq!(
        apply(&mut s, &ev(HERE, 1, "k", "mine", 900)),
        ApplyOutcome::Duplicate(Duplicate::OriginatedHere)
    );
    assert_eq!(
        apply(&mut s, &ev(TOKYO, 1, "k", "old", 50)),
        ApplyOutcome::Rejected {
            reason: RejectReason::OlderTimestamp {
                incoming_us: 50,
                stored_us: 100
            }
        }
    );
    let mut stamp = ev(TOKYO, 2, "absent", "", 500);
    stamp.op = Op::VersionOnly;
    let out = apply(&mut s, &stamp);
    assert_eq!(
        out,
        ApplyOutcome::DeadLetter(DeadLetterCause::Store(StoreError::NoEntryToStamp))
    );
    let ApplyOutcome::DeadLetter(cause) = &out else {
        unreachable!()
    };
    assert_eq!(cause.reason(), DeadLetterReason::ValueRejected);

    let mut full =
        RegionStore::with_entries_max(&RegionConfig::new("orders", RegionKind::Partition), 1)
            .unwrap();
    apply(&mut full, &ev(LDN, 1, "a", "1", 1));
    let out = apply(&mut full, &ev(LDN, 2, "b", "2", 2));
    let ApplyOutcome::DeadLetter(cause) = &out else {
        panic!("{out:?}")
    };
    assert_eq!(cause.reason(), DeadLetterReason::StoreFull);
    assert!(!out.forwards());
    // A dead letter records nothing: its resend is judged again.
    let event_b = decode(&encode(&ev(LDN, 2, "b", "2", 2))).event_id();
    assert_eq!(full.last_applied(&event_b), Some(1));
}

#[test]
fn the_same_event_twice_changes_the_store_once() {
    let mut s = store();
    let e = ev(LDN, 1, "k", "v", 100);
    assert!(apply(&mut s, &e).forwards());
    let before = snapshot(&s);
    let entry_version = s.entry(b"k").unwrap().version.entry_version;
    let mut counts = ApplyCounts::default();
    for flagged in [true, false] {
        let out = apply(&mut s, &e);
        assert!(!out.forwards());
        counts.count(&out, flagged);
    }
    assert_eq!(snapshot(&s), before);
    assert_eq!(s.entry(b"k").unwrap().version.entry_version, entry_version);
    assert_eq!((counts.duplicates, counts.duplicates_unflagged), (2, 1));
}

#[test]
fn a_conflict_loser_is_counted_and_advances_the_mark() {
    let mut s = store();
    apply(&mut s, &ev(TOKYO, 1, "k", "newer", 500));
    let loser = ev(LDN, 1, "k", "older", 100);
    let out = apply(&mut s, &loser);
    let mut counts = ApplyCounts::default();
    counts.count(&out, false);
    assert_eq!(counts.rejected, 1);
    assert!(!out.forwards());
    let id = decode(&encode(&loser)).event_id();
    assert_eq!(s.last_applied(&id), Some(1));
    assert_eq!(
        apply(&mut s, &loser),
        ApplyOutcome::Duplicate(Duplicate::Seen { last_applied: 1 })
    );
}

/// A stream of events from London on a few keys, in stream order.
fn stream(n: u64) -> Vec<Ev> {
    (1..=n)
        .map(|seq| {
            let mut e = ev(LDN, seq, "", &format!("v{seq}"), 1_000 + seq);
            e.key = vec![(seq % 3) as u8];
            if seq % 4 == 0 {
                e.op = Op::Destroy;
                e.value.clear();
            }
            e
        })
        .collect()
}

/// Every way to interleave two copies of `n` events, each copy in order: `true` takes the
/// next event of path A.
fn interleavings(n: usize) -> Vec<Vec<bool>> {
    (0u32..1 << (2 * n))
        .filter(|mask| mask.count_ones() as usize == n)
        .map(|mask| (0..2 * n).map(|i| mask & (1 << i) != 0).collect())
        .collect()
}

#[test]
fn converging_paths_apply_each_event_exactly_once() {
    let events = stream(5);
    let mut once = store();
    for e in &events {
        assert!(apply(&mut once, e).forwards());
    }
    let expected = snapshot(&once);
    let orders = interleavings(events.len());
    assert_eq!(orders.len(), 252);
    for order in orders {
        let mut s = store();
        let (mut a, mut b) = (0, 0);
        let mut counts = ApplyCounts::default();
        for take_a in order {
            let e = if take_a { &mut a } else { &mut b };
            let out = apply(&mut s, &events[*e]);
            *e += 1;
            counts.count(&out, false);
        }
        assert_eq!(counts.applied, 5);
        assert_eq!(counts.duplicates, 5);
        assert_eq!(snapshot(&s), expected);
    }
}

#[test]
fn replay_applies_a_dead_letter_the_dedupe_check_would_drop() {
    let config = RegionConfig::new("orders", RegionKind::Partition);
    let mut s = RegionStore::with_entries_max(&config, 1).unwrap();
    let first = ev(LDN, 1, "a", "1", 1);
    let refused = ev(LDN, 2, "b", "2", 2);
    let later = ev(LDN, 3, "a", "3", 3);
    apply(&mut s, &first);
    let bytes = encode(&refused);
    let record = decode(&bytes);
    let out = apply_record(&mut s, &record, HERE);
    assert!(matches!(out, ApplyOutcome::DeadLetter(_)));
    apply(&mut s, &later);

    let log = encode_entry(
        1_700_000_000_000,
        LDN,
        DeadLetterReason::StoreFull,
        &match &out {
            ApplyOutcome::DeadLetter(cause) => cause.to_string(),
            other => format!("{other:?}"),
        },
        &record,
    );
    // Still full: replay keeps it.
    let parsed = DeadLetterLog::read(&log);
    assert_eq!(parsed.tail, Tail::Clean);
    assert_eq!(parsed.count(DeadLetterReason::StoreFull), 1);
    let result = parsed.replay(|e| replay_record(&mut s, &e.record, HERE));
    assert_eq!((result.replayed.len(), result.kept.len()), (0, 1));
    assert_eq!(result.kept_log(), log);
    // Cause fixed: a bigger store holding what the full one held.
    let mut fixed = store();
    apply(&mut fixed, &first);
    apply(&mut fixed, &later);
    assert_eq!(
        apply_record(&mut fixed, &record, HERE),
        ApplyOutcome::Duplicate(Duplicate::Seen { last_applied: 3 }),
        "the normal path would drop it"
    );
    let result = parsed.replay(|e| replay_record(&mut fixed, &e.record, HERE));
    assert_eq!((result.replayed.len(), result.kept.len()), (1, 0));
    assert!(result.kept_log().is_empty());
    assert_eq!(fixed.get(b"b").map(|v| v.to_vec()), Some(b"2".to_vec()));
}

fn senders(targets: &[SiteId]) -> Vec<(SenderIndex, SiteId)> {
    targets
        .iter()
        .enumerate()
        .map(|(i, &t)| (SenderIndex(i), t))
        .collect()
}

fn forward(
    local: SiteId,
    origin: SiteId,
    recipients: &[SiteId],
    targets: &[SiteId],
) -> (Vec<SenderIndex>, Vec<SiteId>) {
    let mut e = ev(origin, 1, "k", "v", 1);
    e.recipients = recipients.to_vec();
    let bytes = encode(&e);
    forward_targets(local, &decode(&bytes), &senders(targets), targets)
}

#[test]
fn forward_targets_follow_the_loop_rule() {
    let (s1, s2, s3, s4) = (SiteId(1), SiteId(2), SiteId(3), SiteId(4));
    // Full mesh 1↔2↔3: origin 1 sent with {2, 3}; site 2 forwards to nobody.
    assert_eq!(forward(s2, s1, &[s2, s3], &[s1, s3]), (vec![], vec![]));
    // Ring 1→2→3→1: site 2 forwards to 3 with {2, 3}; site 3's sender to 1 hits rule 1.
    assert_eq!(
        forward(s2, s1, &[s2], &[s3]),
        (vec![SenderIndex(0)], vec![s2, s3])
    );
    assert_eq!(forward(s3, s1, &[s2, s3], &[s1]), (vec![], vec![]));
    // Converging 1→2, 1→3, 2→4, 3→4: both 2 and 3 forward to 4 (the receiver at 4 drops the
    // second copy by event id).
    assert_eq!(
        forward(s2, s1, &[s2, s3], &[s4]),
        (vec![SenderIndex(0)], vec![s2, s3, s4])
    );
    assert_eq!(
        forward(s3, s1, &[s2, s3], &[s4]),
        (vec![SenderIndex(0)], vec![s2, s3, s4])
    );
    // Of several senders only those passing the rule, with recipients ∪ every target of the
    // region (the origin's included, as Geode's allRemoteDSIds; site 2 itself is never added).
    assert_eq!(
        forward(s2, s1, &[s2], &[s1, s3, s4, s2]),
        (vec![SenderIndex(1), SenderIndex(2)], vec![s1, s2, s3, s4])
    );
    // An event of this site is never forwarded again.
    assert_eq!(forward(s2, s2, &[s3], &[s3, s4]), (vec![], vec![]));
}

fn dead_letter_log() -> (Vec<u8>, Vec<usize>) {
    let mut log = Vec::new();
    let mut starts = Vec::new();
    let texts = ["", "store full: 1 entries", "é — ✓"];
    for (i, text) in texts.iter().enumerate() {
        let e = ev(LDN, i as u64 + 1, "k", &"v".repeat(i * 7), 10 + i as u64);
        let bytes = encode(&e);
        starts.push(log.len());
        log.extend(encode_entry(
            1_000 + i as u64,
            SiteId(i as u8 + 1),
            DeadLetterReason::from_code(i as u8 + 1).unwrap(),
            text,
            &decode(&bytes),
        ));
    }
    (log, starts)
}

#[test]
fn dead_letter_entries_round_trip() {
    let (log, starts) = dead_letter_log();
    let (entries, tail) = scan(&log);
    assert_eq!(tail, Tail::Clean);
    assert_eq!(entries.len(), 3);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.offset, starts[i]);
        assert_eq!(e.time_ms, 1_000 + i as u64);
        assert_eq!(e.sending_site, SiteId(i as u8 + 1));
        assert_eq!(e.reason.code(), i as u8 + 1);
        assert_eq!(e.record.event_id().seq, i as u64 + 1);
        assert_eq!(e.record.value(), "v".repeat(i * 7).as_bytes());
        assert_eq!(
            e.record.bytes(),
            encode(&ev(
                LDN,
                i as u64 + 1,
                "k",
                &"v".repeat(i * 7),
                10 + i as u64
            ))
        );
    }
    assert_eq!(entries[2].text, "é — ✓");
    assert_eq!(&log[..4], b"STDL");
    assert_eq!(
        entries[0].bytes.len(),
        ENTRY_HEADER_BYTES + entries[0].record.len()
    );
}

#[test]
fn a_torn_tail_is_found_at_every_byte() {
    let (log, starts) = dead_letter_log();
    for cut in 0..log.len() {
        let (entries, tail) = scan(&log[..cut]);
        let whole = starts.iter().filter(|&&s| s < cut).count();
        let boundary = starts.contains(&cut) || cut == 0;
        if boundary {
            assert_eq!(tail, Tail::Clean, "cut at {cut}");
            assert_eq!(entries.len(), starts.iter().filter(|&&s| s < cut).count());
        } else {
            let Tail::Torn { offset, error } = &tail else {
                panic!("cut at {cut}: {tail:?}")
            };
            assert_eq!(*offset, starts[whole - 1], "cut at {cut}");
            assert!(matches!(
                error,
                EntryError::ShortHeader { .. } | EntryError::ShortEntry { .. }
            ));
            assert_eq!(entries.len(), whole - 1);
        }
    }
    // Zeros after the last entry (a file extended before its data landed) are torn too.
    let mut zeroed = log.clone();
    zeroed.extend([0; 100]);
    let (entries, tail) = scan(&zeroed);
    assert_eq!(entries.len(), 3);
    assert!(matches!(tail, Tail::Torn { offset, .. } if offset == log.len()));
}

#[test]
fn a_flipped_byte_is_corruption_at_its_entry() {
    let (log, starts) = dead_letter_log();
    for at in 0..log.len() {
        let mut bad = log.clone();
        bad[at] ^= 0x41;
        let entry = starts.iter().rposition(|&s| s <= at).unwrap();
        let (entries, tail) = scan(&bad);
        assert_eq!(entries.len(), entry, "flip at {at}");
        let Tail::Corrupt { offset, resume, .. } = tail else {
            panic!("flip at {at}: {tail:?}")
        };
        assert_eq!(offset, starts[entry], "flip at {at}");
        assert_eq!(resume, starts.get(entry + 1).copied(), "flip at {at}");
        if let Some(resume) = resume {
            let (rest, tail) = scan_from(&bad, resume);
            assert_eq!((rest.len(), tail), (starts.len() - entry - 1, Tail::Clean));
        }
    }
}

/// Keeps (as still dead-lettered) the entries at the offsets in `keep`; replays the others.
fn replay_keeping(parsed: &DeadLetterLog<'_>, keep: &[usize]) -> Vec<u8> {
    parsed
        .replay(|e| {
            if keep.contains(&e.offset) {
                ApplyOutcome::DeadLetter(DeadLetterCause::UnknownRegion {
                    region: RegionId(9),
                })
            } else {
                ApplyOutcome::Duplicate(Duplicate::Seen { last_applied: 0 })
            }
        })
        .kept_log()
}

#[test]
fn replay_keeps_a_corrupt_middle_entry_and_every_entry_after_it() {
    let (log, starts) = dead_letter_log();
    let mut bad = log.clone();
    bad[starts[1] + ENTRY_HEADER_BYTES] ^= 0x41;
    let parsed = DeadLetterLog::read(&bad);
    let offsets: Vec<usize> = parsed.entries.iter().map(|e| e.offset).collect();
    assert_eq!(
        offsets,
        [starts[0], starts[2]],
        "the entry after the damage is read"
    );
    assert_eq!(parsed.tail, Tail::Clean);
    assert_eq!(parsed.damaged.len(), 1);
    assert_eq!(parsed.damaged[0].offset, starts[1]);
    assert!(matches!(
        parsed.damaged[0].error,
        EntryError::BodyCrc { .. }
    ));
    assert_eq!(parsed.damaged[0].bytes, &bad[starts[1]..starts[2]]);
    // Nothing replays: the log is written back byte for byte.
    assert_eq!(replay_keeping(&parsed, &offsets), bad);
    // The first replays: the damage and the last entry stay.
    assert_eq!(replay_keeping(&parsed, &[starts[2]]), &bad[starts[1]..]);
    // Everything replays: only the damage stays.
    assert_eq!(replay_keeping(&parsed, &[]), &bad[starts[1]..starts[2]]);
}

#[test]
fn replay_keeps_a_corrupt_last_entry_but_not_a_torn_tail() {
    let (log, starts) = dead_letter_log();
    let mut bad = log.clone();
    let last = starts[2] + ENTRY_HEADER_BYTES;
    bad[last] ^= 0x41;
    let parsed = DeadLetterLog::read(&bad);
    assert_eq!(parsed.entries.len(), 2);
    assert!(matches!(
        parsed.tail,
        Tail::Corrupt { offset, resume: None, .. } if offset == starts[2]
    ));
    assert_eq!(replay_keeping(&parsed, &[]), &bad[starts[2]..]);
    // A torn tail is a cut write, not the operator's data: it is left out.
    let torn = &log[..log.len() - 3];
    let parsed = DeadLetterLog::read(torn);
    assert!(parsed.damaged.is_empty());
    assert!(matches!(parsed.tail, Tail::Torn { .. }));
    assert_eq!(
        replay_keeping(&parsed, &[starts[0], starts[1]]),
        &log[..starts[2]]
    );
}

#[test]
fn garbage_never_panics_the_scan() {
    let (log, _) = dead_letter_log();
    for len in 0..200 {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let _ = scan(&junk);
        let mut mixed = log.clone();
        mixed.splice(ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES, junk.iter().copied());
        let _ = scan(&mixed);
    }
}

proptest! {
    #[test]
    fn two_in_order_copies_build_the_store_one_copy_builds(
        ops in prop::collection::vec((0u8..4, any::<Option<u8>>(), 0u64..50), 1..30),
        order in prop::collection::vec(any::<bool>(), 0..60),
    ) {
        let events: Vec<Ev> = ops
            .iter()
            .enumerate()
            .map(|(i, &(key, value, ts))| {
                let mut e = ev(LDN, i as u64 + 1, "", "", ts);
                e.key = vec![key];
                match value {
                    Some(v) => e.value = vec![v],
                    None => e.op = Op::Destroy,
                }
                e
            })
            .collect();
        let mut once = store();
        for e in &events {
            apply(&mut once, e);
        }
        let mut twice = store();
        let (mut a, mut b) = (0, 0);
        let mut choices = order.into_iter();
        let mut applied_or_rejected = 0;
        while a < events.len() || b < events.len() {
            let take_a = b == events.len() || (a < events.len() && choices.next().unwrap_or(true));
            let e = if take_a { &mut a } else { &mut b };
            let out = apply(&mut twice, &events[*e]);
            *e += 1;
            if !matches!(out, ApplyOutcome::Duplicate(_)) {
                applied_or_rejected += 1;
            }
        }
        prop_assert_eq!(applied_or_rejected, events.len());
        prop_assert_eq!(snapshot(&twice), snapshot(&once));
        prop_assert_eq!((twice.len(), twice.tombstones()), (once.len(), once.tombstones()));
    }
}

/// A persistent region logs every write it applies, local or remote, and restores them at
/// start: the store, versions included, and the dedupe marks come back as they were.
#[test]
fn a_region_log_restores_entries_versions_and_dedupe_marks() {
    let mut live = store();
    let mut log: Vec<Vec<u8>> = Vec::new();
    let local =
        |s: &mut RegionStore, log: &mut Vec<Vec<u8>>, key: &str, value: Option<&str>, now: u64| {
            let outcome = match value {
                Some(v) => s
                    .put_local(key.as_bytes(), bytes::Bytes::from(v.to_string()), now, HERE)
                    .unwrap(),
                None => s.destroy_local(key.as_bytes(), now, HERE).unwrap(),
            };
            let mut e = ev(
                HERE,
                now,
                key,
                value.unwrap_or(""),
                outcome.tag.timestamp_us,
            );
            e.op = outcome.op;
            log.push(encode(&e));
        };
    local(&mut live, &mut log, "a", Some("1"), 100);
    // A remote write newer than the local one, then a local write at an older clock reading:
    // its timestamp is bumped past the remote one (§4.1), and the log must restore the bump.
    let remote = ev(LDN, 5, "a", "ldn", 500);
    assert!(matches!(
        apply(&mut live, &remote),
        ApplyOutcome::Applied { .. }
    ));
    log.push(encode(&remote));
    local(&mut live, &mut log, "a", Some("2"), 300);
    local(&mut live, &mut log, "b", Some("x"), 301);
    local(&mut live, &mut log, "b", None, 302);
    let remote2 = ev(TOKYO, 9, "k", "tokyo", 600);
    assert!(matches!(
        apply(&mut live, &remote2),
        ApplyOutcome::Applied { .. }
    ));
    log.push(encode(&remote2));

    let mut restored = store();
    for bytes in &log {
        restore_logged(&mut restored, &decode(bytes), HERE).unwrap();
    }
    assert_eq!(snapshot(&restored), snapshot(&live));
    assert_eq!(restored.get(b"a").map(|v| v.to_vec()), Some(b"2".to_vec()));
    assert_eq!(restored.len(), live.len());
    // The dedupe marks are back: a resend of an applied remote event is a duplicate.
    assert!(matches!(
        apply(&mut restored, &remote2),
        ApplyOutcome::Duplicate(_)
    ));
    assert!(matches!(
        apply(&mut restored, &remote),
        ApplyOutcome::Duplicate(_)
    ));
}
