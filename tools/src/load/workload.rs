//! What `strait-load` sends, decided without I/O: which operation, which key, how large a
//! value, and when (the open-loop schedule). Every choice comes from a seeded generator, so a
//! seed reproduces the same sequence of operations.
//!
//! - [`KeyDist`], [`ValueSize`]: parsed from the command line (`uniform`, `zipf:0.99`;
//!   `1024`, `100-2000`).
//! - [`OpGen`]: one connection's stream of [`Op`]s.
//! - [`Schedule`]: when each operation of a connection is meant to be sent.

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::time::Duration;

/// Largest value `strait-load` writes, in bytes (Strait's and redis's limits are higher).
pub const VALUE_BYTES_MAX: usize = 64 << 20;

/// How keys are chosen from `0..keys`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyDist {
    Uniform,
    /// Zipfian with this exponent: key `k` (from 0) is chosen with weight `1 / (k + 1)^s`.
    Zipf(f64),
}

impl std::str::FromStr for KeyDist {
    type Err = String;

    fn from_str(text: &str) -> Result<KeyDist, String> {
        match text.split_once(':') {
            None if text == "uniform" => Ok(KeyDist::Uniform),
            None if text == "zipf" => Ok(KeyDist::Zipf(0.99)),
            Some(("zipf", s)) => match s.parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => Ok(KeyDist::Zipf(s)),
                _ => Err(format!(
                    "`{text}`: the zipf exponent must be a number above 0 (e.g. zipf:0.99)"
                )),
            },
            _ => Err(format!("`{text}`: expected uniform, zipf or zipf:EXPONENT")),
        }
    }
}

/// Bytes of each written value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueSize {
    Fixed(usize),
    /// Uniform in `min..=max`.
    Uniform(usize, usize),
}

impl ValueSize {
    pub fn max(&self) -> usize {
        match *self {
            ValueSize::Fixed(n) | ValueSize::Uniform(_, n) => n,
        }
    }
}

impl std::str::FromStr for ValueSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ValueSize, String> {
        let n = |t: &str| {
            t.parse::<usize>()
                .ok()
                .filter(|&n| n <= VALUE_BYTES_MAX)
                .ok_or_else(|| {
                    format!("`{text}`: a size is a number of bytes up to {VALUE_BYTES_MAX}")
                })
        };
        match text.split_once('-') {
            None => Ok(ValueSize::Fixed(n(text)?)),
            Some((a, b)) => {
                let (a, b) = (n(a)?, n(b)?);
                if a > b {
                    return Err(format!("`{text}`: MIN-MAX with MIN <= MAX"));
                }
                Ok(ValueSize::Uniform(a, b))
            }
        }
    }
}

/// An operation to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get { key: u64 },
    Set { key: u64, value_bytes: usize },
}

/// One connection's operations.
#[derive(Debug)]
pub struct OpGen {
    rng: SmallRng,
    keys: u64,
    zipf: Option<Zipf<f64>>,
    values: ValueSize,
    reads: f64,
}

impl OpGen {
    /// `keys` at least 1, `reads` (the share of GETs) in `0..=1`; checked by the caller.
    pub fn new(keys: u64, dist: KeyDist, values: ValueSize, reads: f64, seed: u64) -> OpGen {
        let zipf = match dist {
            KeyDist::Uniform => None,
            KeyDist::Zipf(s) => Zipf::new(keys as f64, s).ok(),
        };
        OpGen {
            rng: SmallRng::seed_from_u64(seed),
            keys,
            zipf,
            values,
            reads,
        }
    }

    pub fn values(&self) -> ValueSize {
        self.values
    }

    pub fn next_op(&mut self) -> Op {
        let key = match &self.zipf {
            // Zipf yields 1..=n, most often 1.
            Some(z) => (z.sample(&mut self.rng) as u64).clamp(1, self.keys) - 1,
            None => self.rng.random_range(0..self.keys),
        };
        if self.reads > 0.0 && self.rng.random::<f64>() < self.reads {
            return Op::Get { key };
        }
        let value_bytes = match self.values {
            ValueSize::Fixed(n) => n,
            ValueSize::Uniform(a, b) => self.rng.random_range(a..=b),
        };
        Op::Set { key, value_bytes }
    }
}

/// When a connection's operations are meant to go out, from the start of the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// Open loop: operation `i` at `offset + i × interval`, whether or not earlier replies came.
    Rate {
        interval: Duration,
        offset: Duration,
    },
    /// As fast as the pipeline allows: each operation is meant to go when it is sent.
    Max,
}

impl Schedule {
    /// Connection `conn` of `connections` sharing `rate` operations per second (`None`: max).
    pub fn for_connection(rate: Option<f64>, conn: u32, connections: u32) -> Schedule {
        match rate {
            None => Schedule::Max,
            Some(rate) => {
                let interval = Duration::from_secs_f64(connections as f64 / rate);
                Schedule::Rate {
                    interval,
                    offset: interval * conn / connections,
                }
            }
        }
    }

    /// When operation `i` is meant to be sent; `None` for [`Schedule::Max`].
    pub fn intended(&self, i: u64) -> Option<Duration> {
        match *self {
            Schedule::Rate { interval, offset } => {
                Some(offset + Duration::from_nanos((interval.as_nanos() as u64).saturating_mul(i)))
            }
            Schedule::Max => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_shared_by_the_connections_and_staggered() {
        let s0 = Schedule::for_connection(Some(1000.0), 0, 4);
        let s1 = Schedule::for_connection(Some(1000.0), 1, 4);
        assert_eq!(s0.intended(0), Some(Duration::ZERO));
        assert_eq!(s0.intended(10), Some(Duration::from_millis(40)));
        assert_eq!(s1.intended(0), Some(Duration::from_millis(1)));
        assert_eq!(Schedule::for_connection(None, 0, 4).intended(5), None);
    }

    #[test]
    fn zipf_keys_favour_the_first_and_uniform_keys_do_not() {
        let count_zero = |dist| {
            let mut g = OpGen::new(1000, dist, ValueSize::Fixed(1), 0.0, 1);
            (0..10_000)
                .filter(|_| matches!(g.next_op(), Op::Set { key: 0, .. }))
                .count()
        };
        // Zipf(0.99) over 1000 keys gives key 0 about 13% of the draws; uniform 0.1%.
        assert!(count_zero(KeyDist::Zipf(0.99)) > 1000);
        assert!(count_zero(KeyDist::Uniform) < 50);
    }

    #[test]
    fn reads_and_sizes_follow_the_settings() {
        let mut g = OpGen::new(10, KeyDist::Uniform, ValueSize::Uniform(5, 9), 0.25, 3);
        let ops: Vec<Op> = (0..10_000).map(|_| g.next_op()).collect();
        let gets = ops.iter().filter(|o| matches!(o, Op::Get { .. })).count();
        assert!((2200..2800).contains(&gets), "{gets} GETs of 10000 at 25%");
        assert!(ops.iter().all(|o| match *o {
            Op::Get { key } => key < 10,
            Op::Set { key, value_bytes } => key < 10 && (5..=9).contains(&value_bytes),
        }));
    }

    #[test]
    fn arguments_parse_and_bad_ones_say_why() {
        assert_eq!("zipf:1.2".parse(), Ok(KeyDist::Zipf(1.2)));
        assert_eq!("uniform".parse(), Ok(KeyDist::Uniform));
        assert_eq!("100-200".parse(), Ok(ValueSize::Uniform(100, 200)));
        assert_eq!("1024".parse(), Ok(ValueSize::Fixed(1024)));
        assert!(
            "zipf:-1"
                .parse::<KeyDist>()
                .unwrap_err()
                .contains("above 0")
        );
        assert!(
            "normal"
                .parse::<KeyDist>()
                .unwrap_err()
                .contains("expected uniform")
        );
        assert!(
            "200-100"
                .parse::<ValueSize>()
                .unwrap_err()
                .contains("MIN <= MAX")
        );
        assert!(
            "1GiB"
                .parse::<ValueSize>()
                .unwrap_err()
                .contains("number of bytes")
        );
    }
}
