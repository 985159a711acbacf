//! The simulator in CI: a range of seeds, and every seed that once found a bug.

/// Seeds that found bugs, each with what it found (docs/testing.md).
const REGRESSIONS: &[(u64, &str)] = &[
    (
        716,
        "a local write after a bumped one carried an older timestamp; the sites diverged",
    ),
    (
        1,
        "after a full disk, an in-memory queue below 3/4 of its budget kept refusing forwards: check_room never asked for a segment, so the failed creation was never retried",
    ),
];

/// Seeds every CI run goes through (issue 7: "a few hundred"); `strait-sim --seeds N` runs more.
const CI_SEEDS: u64 = 300;

fn must_pass(seed: u64) {
    if let Err(failure) = strait_sim::run(seed, false) {
        for line in failure.trace.iter().rev().take(40).rev() {
            eprintln!("{line}");
        }
        panic!("{failure}");
    }
}

#[test]
fn regression_seeds_pass() {
    for &(seed, what) in REGRESSIONS {
        eprintln!("seed {seed}: {what}");
        must_pass(seed);
    }
}

#[test]
fn ci_seeds_pass_and_do_real_work() {
    let mut acked = 0;
    let mut applied = 0;
    let mut faults = 0;
    let mut overflowed = 0;
    let mut full_disks = 0;
    let mut refusals = 0;
    for seed in 1..=CI_SEEDS {
        let report = strait_sim::run(seed, false).unwrap_or_else(|f| {
            for line in f.trace.iter().rev().take(40).rev() {
                eprintln!("{line}");
            }
            panic!("{f}")
        });
        acked += report.writes_acked;
        applied += report.applied;
        faults += report.crashes + report.partitions + report.resets;
        overflowed = overflowed.max(report.overflow_events_max);
        full_disks += report.disk_full;
        refusals += report.forward_refusals;
    }
    // The seeds are not idle: writes were made, replicated, and faults injected.
    assert!(acked > 1_000, "only {acked} writes were acknowledged");
    assert!(applied > 1_000, "only {applied} events were applied");
    assert!(faults > 20, "only {faults} faults were injected");
    // In-memory queues spilled past their memory budget into segments.
    assert!(overflowed > 0, "no in-memory queue overflowed to disk");
    // Disks filled up, and receivers pushed back on batches they could not forward.
    assert!(full_disks > 10, "only {full_disks} full disks");
    assert!(refusals > 0, "no batch was refused for a full queue");
}

#[test]
fn a_seed_replays_exactly() {
    let a = strait_sim::run(7, false).expect("seed 7 passes");
    let b = strait_sim::run(7, false).expect("seed 7 passes");
    assert_eq!(a, b);
}
