//! Byte-level mutations, the same for every target; each target adds its own structure
//! (resealing CRCs, building valid inputs) around them.

use crate::rng::Rng;

/// Most bytes a mutated input may grow to.
pub const INPUT_BYTES_MAX: usize = 64 << 10;

/// Values that sit on the edges of lengths and counts.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0xffff_ffff,
    u64::MAX,
];

/// Applies one to four random mutations to `data`; `other` is another corpus input to splice
/// from.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        mutate_once(rng, data, other);
    }
    data.truncate(INPUT_BYTES_MAX);
}

fn mutate_once(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    match rng.below(11) {
        0 if len > 0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            data[at] = rng.byte();
        }
        2 => {
            let at = rng.below(len + 1);
            let n = rng.small_len(32);
            let bytes = rng.bytes(n);
            data.splice(at..at, bytes);
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let n = rng.small_len(len - at);
            data.drain(at..at + n);
        }
        4 if len > 0 => {
            // Duplicate a range in place.
            let at = rng.below(len);
            let n = rng.small_len(len - at);
            let copy = data[at..at + n].to_vec();
            let to = rng.below(len + 1);
            data.splice(to..to, copy);
        }
        5 => {
            let cut = rng.below(len + 1);
            data.truncate(cut);
        }
        6 if len > 0 => {
            // An interesting little-endian integer of 1, 2, 4 or 8 bytes.
            let width = *rng.pick(&[1usize, 2, 4, 8]);
            let at = rng.below(len);
            let v = *rng.pick(&INTERESTING);
            let v = if rng.one_in(4) {
                v.wrapping_add(rng.below(3) as u64).wrapping_sub(1)
            } else {
                v
            };
            for (i, b) in v.to_le_bytes().iter().take(width).enumerate() {
                if let Some(slot) = data.get_mut(at + i) {
                    *slot = *b;
                }
            }
        }
        7 if !other.is_empty() => {
            // Splice a piece of another input.
            let from = rng.below(other.len());
            let n = rng.small_len(other.len() - from);
            let at = rng.below(len + 1);
            let end = (at + n).min(len);
            data.splice(at..end, other[from..from + n].iter().copied());
        }
        8 if len > 0 => {
            // Zero a range, as a torn write leaves it.
            let at = rng.below(len);
            let n = rng.small_len(len - at);
            data[at..at + n].fill(0);
        }
        9 if len > 1 => {
            // Swap two ranges' first bytes (reorders fields).
            let a = rng.below(len);
            let b = rng.below(len);
            data.swap(a, b);
        }
        _ => {
            let at = rng.below(len + 1);
            let byte = *rng.pick(&[0u8, b'\r', b'\n', b'*', b'$', b'"', b'[', b']', b'=', 0xff]);
            data.insert(at, byte);
        }
    }
}
