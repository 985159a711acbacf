//! SplitMix64: every choice of a simulation comes from one seed. The queue crate's generator
//! (`strait_queue::mem::SplitMix`, the one its model tests and the fuzzers use) carries the
//! draws the simulator needs (`below`, `range`, `chance`).

pub use strait_queue::mem::SplitMix as Rng;
