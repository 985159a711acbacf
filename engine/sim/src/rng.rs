//! SplitMix64: every choice of a simulation comes from one seed.

/// SplitMix64: the queue crate's generator (`strait_queue::mem::SplitMix`, the one its
/// model tests use), with the draws this crate needs.
#[derive(Clone, Debug)]
pub struct Rng(strait_queue::mem::SplitMix);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(strait_queue::mem::SplitMix(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }
}
