//! # strait-fuzz: fuzzing on stable Rust
//!
//! `cargo fuzz` needs a nightly compiler; this crate needs none. Each [`Target`] can build a
//! valid input from a seed ([`Target::generate`], structure-aware: real frames, commands,
//! segments, configuration files, dead-letter logs), mutate an input byte by byte
//! ([`mutate::mutate`]) and then repair what the format's checksums would otherwise refuse
//! at once ([`Target::fixup`], e.g. resealing CRCs so mutations reach the fields behind
//! them), and run it ([`Target::run`]): no panic, and the target's own invariants (round
//! trips, prefixes, chunked and whole input agree). There is no coverage feedback; instead an
//! input that produces an outcome label not seen before (an error variant, a frame kind, a
//! tail classification) joins the corpus.
//!
//! | item | what it is |
//! |---|---|
//! | [`Target`], [`TARGETS`] | the targets: `frame`, `resp`, `segment`, `config`, `cachexml`, `deadletter` |
//! | [`Fuzzer`] | the loop: corpus, seeded choice of generate or mutate, outcome feedback |
//! | [`rng::Rng`] | SplitMix64; one seed reproduces a run |
//! | [`mutate`] | byte-level mutations |
//!
//! `cargo run --profile fuzz -p strait-fuzz -- frame --seconds 300` runs a target;
//! `tests/corpus.rs` runs every committed corpus and regression input through every target.

pub mod mutate;
pub mod rng;
pub mod targets;

use rng::Rng;
use std::collections::BTreeSet;

/// The verdict of one run: the outcome label, or which invariant broke.
pub type Verdict = Result<String, String>;

/// One fuzz target.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub name: &'static str,
    /// A valid input built from the generator.
    pub generate: fn(&mut Rng) -> Vec<u8>,
    /// Repairs a mutated input's checksums (or not, at random).
    pub fixup: fn(&mut Rng, &mut Vec<u8>),
    /// Runs one input: an outcome label, or the invariant that broke. Must not panic.
    pub run: fn(&[u8]) -> Verdict,
}

/// Every target.
pub const TARGETS: &[Target] = &[
    targets::frame::TARGET,
    targets::resp::TARGET,
    targets::segment::TARGET,
    targets::config::TARGET,
    targets::cachexml::TARGET,
    targets::deadletter::TARGET,
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Most inputs a fuzzer keeps in its corpus.
pub const CORPUS_INPUTS_MAX: usize = 4096;

/// The fuzzing loop of one target.
#[derive(Debug)]
pub struct Fuzzer {
    pub target: &'static Target,
    rng: Rng,
    pub corpus: Vec<Vec<u8>>,
    /// Outcome labels seen so far.
    pub labels: BTreeSet<String>,
    /// Inputs run.
    pub executions: u64,
}

/// An input that broke an invariant or panicked.
#[derive(Debug)]
pub struct Failure {
    pub input: Vec<u8>,
    pub why: String,
}

impl Fuzzer {
    pub fn new(target: &'static Target, seed: u64, corpus: Vec<Vec<u8>>) -> Fuzzer {
        let mut f = Fuzzer {
            target,
            rng: Rng::new(seed),
            corpus: Vec::new(),
            labels: BTreeSet::new(),
            executions: 0,
        };
        for input in corpus {
            if let Ok(label) = (target.run)(&input) {
                f.labels.insert(label);
            }
            f.corpus.push(input);
        }
        f
    }

    /// The next input: a fresh valid one a quarter of the time, else a mutated corpus input.
    pub fn next_input(&mut self) -> Vec<u8> {
        if self.corpus.is_empty() || self.rng.one_in(4) {
            let mut input = (self.target.generate)(&mut self.rng);
            if self.rng.one_in(2) {
                let other = self.pick_other();
                mutate::mutate(&mut self.rng, &mut input, &other);
                (self.target.fixup)(&mut self.rng, &mut input);
            }
            return input;
        }
        let mut input = self.corpus[self.rng.below(self.corpus.len())].clone();
        let other = self.pick_other();
        mutate::mutate(&mut self.rng, &mut input, &other);
        (self.target.fixup)(&mut self.rng, &mut input);
        input
    }

    fn pick_other(&mut self) -> Vec<u8> {
        if self.corpus.is_empty() {
            Vec::new()
        } else {
            self.corpus[self.rng.below(self.corpus.len())].clone()
        }
    }

    /// Runs one input. `Ok(true)`: its outcome was new and it joined the corpus.
    pub fn run_one(&mut self, input: Vec<u8>) -> Result<bool, Failure> {
        self.executions += 1;
        let target = self.target;
        let verdict = std::panic::catch_unwind(|| (target.run)(&input));
        match verdict {
            Ok(Ok(label)) => {
                if self.labels.insert(label) && self.corpus.len() < CORPUS_INPUTS_MAX {
                    self.corpus.push(input);
                    return Ok(true);
                }
                Ok(false)
            }
            Ok(Err(why)) => Err(Failure { input, why }),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                Err(Failure {
                    input,
                    why: format!("panicked: {why}"),
                })
            }
        }
    }
}

/// The label of an error: its variant name, from its `Debug` form.
pub fn variant<T: std::fmt::Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    text[..end].to_string()
}
