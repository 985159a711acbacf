//! A small seeded generator (SplitMix64): every run of a target is reproduced by its seed.

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

    /// A number in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.below(n)
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    /// Random bytes, a [`Rng::small_len`] of them.
    pub fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.small_len(max);
        self.bytes(n)
    }

    /// A length biased toward small values, at most `max`.
    pub fn small_len(&mut self, max: usize) -> usize {
        match self.below(4) {
            0 => 0,
            1 => self.below(8.min(max + 1)),
            2 => self.below(64.min(max + 1)),
            _ => self.below(max + 1),
        }
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}
