//! Every committed corpus input and every regression input, through its target: each must
//! keep its target's invariants (a crash found by fuzzing stays fixed).

use std::path::Path;
use strait_fuzz::TARGETS;

#[test]
fn every_corpus_and_regression_input_keeps_its_targets_invariants() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    for t in TARGETS {
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(t.name)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let input = std::fs::read(&path).unwrap();
                if let Err(why) = (t.run)(&input) {
                    panic!("{}: {why}", path.display());
                }
                ran += 1;
            }
        }
    }
    assert!(ran > 0, "no corpus input was found");
}

#[test]
fn a_short_seeded_run_of_every_target_finds_nothing() {
    for t in TARGETS {
        let mut f = strait_fuzz::Fuzzer::new(t, 7, Vec::new());
        for _ in 0..300 {
            let input = f.next_input();
            if let Err(e) = f.run_one(input) {
                panic!("target {}: {}", t.name, e.why);
            }
        }
        assert!(f.labels.len() > 1, "target {} saw one outcome", t.name);
    }
}
