//! One direction of an emulated WAN link as a deterministic state machine: bytes go in with
//! the time they were read, and come out at the time the link would deliver them. No clock,
//! no socket: the proxy shell passes time in (nanoseconds since it started) and carries out
//! what [`Direction::poll_release`] says.
//!
//! - [`LinkParams`]: latency, jitter, bandwidth, stalls and resets of one direction, parsed
//!   from `key=value` words ([`LinkParams::apply`]).
//! - [`Wire`]: the bandwidth of one direction of the link, shared by every connection
//!   crossing it.
//! - [`Direction`]: one connection's chunks in flight, each with its release time.
//! - [`ResetClock`]: when a connection is to be reset, at a random (Poisson) rate.
//!
//! The model, for a chunk of `n` bytes read at time `t`:
//! 1. serialisation: the link ([`Wire`]) sends one chunk at a time at `bandwidth`, whichever
//!    connection it belongs to; the chunk starts when both it has arrived and the previous one
//!    has left, and takes `n / bandwidth`;
//! 2. propagation: it arrives `latency + U(0, jitter)` after its last byte left;
//! 3. order: a TCP stream is never reordered, so a chunk is never released before the one
//!    ahead of it (jitter can only add delay);
//! 4. stalls: the direction delivers nothing during a stall (stalls start after exponential
//!    gaps of mean `1 / stall-rate`, and last `stall`); a chunk due during one waits for its end;
//! 5. partition: nothing is released while partitioned; at the heal, what is held goes out.

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use std::collections::VecDeque;
use std::fmt;

/// Nanoseconds in a second.
const NS_PER_S: u64 = 1_000_000_000;
/// A stall or reset rate above this (per second) is refused: it would leave no time between events.
pub const EVENT_RATE_PER_S_MAX: f64 = 1_000.0;

/// What one direction of the link does to the bytes crossing it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkParams {
    /// One-way delay added to every byte.
    pub latency_ns: u64,
    /// Extra delay, uniform in `0..=jitter_ns`, per chunk.
    pub jitter_ns: u64,
    /// Bytes per second the link carries; `None`: no cap.
    pub bandwidth_bytes_per_s: Option<u64>,
    /// Mean stalls per second (0: none).
    pub stall_rate_per_s: f64,
    /// How long a stall lasts.
    pub stall_ns: u64,
    /// Mean resets per second of each connection (0: none). Read from the upstream direction.
    pub reset_rate_per_s: f64,
}

impl Default for LinkParams {
    /// A perfect link: no delay, no cap, no stalls or resets.
    fn default() -> LinkParams {
        LinkParams {
            latency_ns: 0,
            jitter_ns: 0,
            bandwidth_bytes_per_s: None,
            stall_rate_per_s: 0.0,
            stall_ns: 0,
            reset_rate_per_s: 0.0,
        }
    }
}

/// A `key=value` word [`LinkParams::apply`] could not use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{word}`: {reason}")]
pub struct ParamError {
    pub word: String,
    pub reason: String,
}

impl LinkParams {
    /// Applies whitespace-separated `key=value` words: `latency=25ms`, `jitter=2ms`,
    /// `bandwidth=1Gbit` (or `unlimited`), `stall-rate=0.5` (per second), `stall=200ms`,
    /// `reset-rate=0.01` (per second). Durations take `ns`, `us`, `ms` or `s`; bandwidths
    /// `bit`, `kbit`, `Mbit`, `Gbit` (per second, powers of 1000). Either every word applies or none.
    pub fn apply(&self, words: &str) -> Result<LinkParams, ParamError> {
        let mut p = *self;
        for word in words.split_whitespace() {
            let err = |reason: &str| ParamError {
                word: word.to_string(),
                reason: reason.to_string(),
            };
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| err("expected key=value"))?;
            match key {
                "latency" => p.latency_ns = parse_duration_ns(value).map_err(|r| err(&r))?,
                "jitter" => p.jitter_ns = parse_duration_ns(value).map_err(|r| err(&r))?,
                "stall" => p.stall_ns = parse_duration_ns(value).map_err(|r| err(&r))?,
                "bandwidth" => {
                    p.bandwidth_bytes_per_s = parse_bandwidth(value).map_err(|r| err(&r))?
                }
                "stall-rate" => p.stall_rate_per_s = parse_rate(value).map_err(|r| err(&r))?,
                "reset-rate" => p.reset_rate_per_s = parse_rate(value).map_err(|r| err(&r))?,
                _ => {
                    return Err(err(
                        "unknown key (latency, jitter, bandwidth, stall-rate, stall, reset-rate)",
                    ));
                }
            }
        }
        Ok(p)
    }
}

impl fmt::Display for LinkParams {
    /// The same words [`LinkParams::apply`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bw = match self.bandwidth_bytes_per_s {
            None => "unlimited".to_string(),
            Some(b) => format!("{}bit", b * 8),
        };
        write!(
            f,
            "latency={}us jitter={}us bandwidth={bw} stall-rate={} stall={}us reset-rate={}",
            self.latency_ns / 1000,
            self.jitter_ns / 1000,
            self.stall_rate_per_s,
            self.stall_ns / 1000,
            self.reset_rate_per_s
        )
    }
}

/// `25ms`, `1.5s`, `200us`, `0`.
pub fn parse_duration_ns(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 25ms, 1.5s, 200us)"))?;
    let scale = match unit {
        "ns" => 1.0,
        "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "" if n == 0.0 => 0.0,
        _ => return Err(format!("`{text}`: the unit must be ns, us, ms or s")),
    };
    let ns = n * scale;
    if !(0.0..=3.6e12).contains(&ns) {
        return Err(format!("`{text}` is out of range (0 to 1 hour)"));
    }
    Ok(ns as u64)
}

/// `1Gbit`, `100Mbit`, `unlimited` → bytes per second (`None`: no cap).
pub fn parse_bandwidth(text: &str) -> Result<Option<u64>, String> {
    if text == "unlimited" {
        return Ok(None);
    }
    let lower = text.to_ascii_lowercase();
    let (number, scale) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(unit, scale)| lower.strip_suffix(unit).map(|n| (n, *scale)))
        .ok_or_else(|| {
            format!("`{text}`: expected a rate in bit, kbit, Mbit or Gbit, or unlimited")
        })?;
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a bandwidth (e.g. 1Gbit)"))?;
    let bytes = n * scale / 8.0;
    if !(1.0..=1e13).contains(&bytes) {
        return Err(format!("`{text}` is out of range (8bit to 80Tbit)"));
    }
    Ok(Some(bytes as u64))
}

/// A rate of events per second, `0` to [`EVENT_RATE_PER_S_MAX`].
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let r: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a rate per second (e.g. 0.5)"))?;
    if !(0.0..=EVENT_RATE_PER_S_MAX).contains(&r) {
        return Err(format!(
            "`{text}`: a rate must be between 0 and {EVENT_RATE_PER_S_MAX} per second"
        ));
    }
    Ok(r)
}

/// An exponential gap of mean `1 / rate` seconds, in nanoseconds (`u64::MAX` for rate 0).
fn exp_gap_ns(rng: &mut SmallRng, rate_per_s: f64) -> u64 {
    if rate_per_s <= 0.0 {
        return u64::MAX;
    }
    let u: f64 = rng.random::<f64>();
    let seconds = -(1.0 - u).ln() / rate_per_s;
    (seconds * NS_PER_S as f64) as u64
}

/// One direction's bandwidth, shared by all the connections crossing the link: when it has
/// finished sending everything accepted so far.
#[derive(Debug, Default)]
pub struct Wire {
    free_ns: u64,
}

impl Wire {
    /// Sends `len` bytes that arrived at `now_ns` at `bytes_per_s` (`None`: no cap); returns
    /// when their last byte has left.
    pub fn send(&mut self, len: usize, now_ns: u64, bytes_per_s: Option<u64>) -> u64 {
        let start = now_ns.max(self.free_ns);
        let sending = match bytes_per_s {
            None => 0,
            Some(bw) => (len as u128 * NS_PER_S as u128 / bw as u128) as u64,
        };
        self.free_ns = start.saturating_add(sending);
        self.free_ns
    }

    /// A new bandwidth applies from `now_ns`: what was being sent is not charged again.
    pub fn restart(&mut self, now_ns: u64) {
        self.free_ns = self.free_ns.min(now_ns);
    }
}

/// Bytes waiting to be delivered, and when.
#[derive(Debug)]
struct Chunk {
    release_ns: u64,
    bytes: Vec<u8>,
}

/// One direction of a connection through the link.
#[derive(Debug)]
pub struct Direction {
    params: LinkParams,
    rng: SmallRng,
    chunks: VecDeque<Chunk>,
    buffered_bytes: usize,
    /// Release time of the last chunk accepted: no chunk goes out before it.
    last_release_ns: u64,
    /// The current or next stall, `[start, end)`; `None` until the first is drawn.
    stall: Option<(u64, u64)>,
    /// Since when the link has been partitioned.
    partitioned_since: Option<u64>,
}

impl Direction {
    /// A direction with `params`, its random choices (jitter, stalls) drawn from `seed`.
    pub fn new(params: LinkParams, seed: u64) -> Direction {
        Direction {
            params,
            rng: SmallRng::seed_from_u64(seed),
            chunks: VecDeque::new(),
            buffered_bytes: 0,
            last_release_ns: 0,
            stall: None,
            partitioned_since: None,
        }
    }

    pub fn params(&self) -> LinkParams {
        self.params
    }

    /// New parameters apply to bytes read from now on; stalls are drawn anew.
    pub fn set_params(&mut self, params: LinkParams) {
        self.params = params;
        self.stall = None;
    }

    /// Partitions the link (`on`) or heals it at `now_ns`.
    pub fn set_partitioned(&mut self, on: bool, now_ns: u64) {
        match (on, self.partitioned_since) {
            (true, None) => self.partitioned_since = Some(now_ns),
            (false, Some(_)) => self.partitioned_since = None,
            _ => {}
        }
    }

    pub fn is_partitioned(&self) -> bool {
        self.partitioned_since.is_some()
    }

    /// Bytes accepted and not yet released.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Accepts `bytes` read at `now_ns`, sent over `wire` (the link's, shared with other
    /// connections); returns when they will be released (unless a partition holds them longer).
    pub fn handle_bytes(&mut self, bytes: Vec<u8>, wire: &mut Wire, now_ns: u64) -> u64 {
        let left = wire.send(bytes.len(), now_ns, self.params.bandwidth_bytes_per_s);
        let jitter = if self.params.jitter_ns == 0 {
            0
        } else {
            self.rng.random_range(0..=self.params.jitter_ns)
        };
        let arrival = left
            .saturating_add(self.params.latency_ns)
            .saturating_add(jitter)
            .max(self.last_release_ns);
        let release = self.after_stalls(arrival);
        self.last_release_ns = release;
        self.buffered_bytes += bytes.len();
        self.chunks.push_back(Chunk {
            release_ns: release,
            bytes,
        });
        release
    }

    /// `t`, or the end of the stall `t` falls in. Called with non-decreasing `t`.
    fn after_stalls(&mut self, t: u64) -> u64 {
        if self.params.stall_rate_per_s <= 0.0 || self.params.stall_ns == 0 {
            return t;
        }
        loop {
            let (start, end) = match self.stall {
                Some(s) => s,
                None => {
                    let start =
                        t.saturating_add(exp_gap_ns(&mut self.rng, self.params.stall_rate_per_s));
                    let s = (start, start.saturating_add(self.params.stall_ns));
                    self.stall = Some(s);
                    s
                }
            };
            if t < start {
                return t;
            }
            if t < end {
                return end;
            }
            let next = end.saturating_add(exp_gap_ns(&mut self.rng, self.params.stall_rate_per_s));
            self.stall = Some((next, next.saturating_add(self.params.stall_ns)));
        }
    }

    /// Appends to `out` every byte due at `now_ns` (nothing while partitioned); returns how
    /// many were appended.
    pub fn poll_release(&mut self, now_ns: u64, out: &mut Vec<u8>) -> usize {
        if self.is_partitioned() {
            return 0;
        }
        let before = out.len();
        while let Some(c) = self.chunks.front() {
            if c.release_ns > now_ns {
                break;
            }
            let c = self.chunks.pop_front().expect("front checked");
            self.buffered_bytes -= c.bytes.len();
            out.extend_from_slice(&c.bytes);
        }
        out.len() - before
    }

    /// When the next bytes are due; `None` when nothing is held or the link is partitioned.
    pub fn next_release_ns(&self) -> Option<u64> {
        if self.is_partitioned() {
            return None;
        }
        self.chunks.front().map(|c| c.release_ns)
    }
}

/// When a connection is next to be reset: exponential gaps of mean `1 / reset-rate`.
#[derive(Debug)]
pub struct ResetClock {
    rng: SmallRng,
    next_ns: u64,
}

impl ResetClock {
    pub fn new(rate_per_s: f64, now_ns: u64, seed: u64) -> ResetClock {
        let mut rng = SmallRng::seed_from_u64(seed);
        let next_ns = now_ns.saturating_add(exp_gap_ns(&mut rng, rate_per_s));
        ResetClock { rng, next_ns }
    }

    /// A new rate applies from `now_ns`.
    pub fn set_rate(&mut self, rate_per_s: f64, now_ns: u64) {
        self.next_ns = now_ns.saturating_add(exp_gap_ns(&mut self.rng, rate_per_s));
    }

    /// When the next reset is due (`u64::MAX`: never).
    pub fn next_ns(&self) -> u64 {
        self.next_ns
    }

    /// True when a reset is due at `now_ns`.
    pub fn poll_reset(&self, now_ns: u64) -> bool {
        now_ns >= self.next_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn params(words: &str) -> LinkParams {
        LinkParams::default().apply(words).unwrap()
    }

    fn drain(d: &mut Direction, now: u64) -> usize {
        let mut out = Vec::new();
        d.poll_release(now, &mut out)
    }

    #[test]
    fn latency_delays_every_chunk_by_at_least_the_latency() {
        let mut d = Direction::new(params("latency=25ms"), 1);
        let mut w = Wire::default();
        assert_eq!(d.handle_bytes(vec![1; 10], &mut w, 5 * MS), 30 * MS);
        assert_eq!(drain(&mut d, 30 * MS - 1), 0);
        assert_eq!(drain(&mut d, 30 * MS), 10);
        assert_eq!(d.next_release_ns(), None);
    }

    #[test]
    fn jitter_stays_within_its_bound_and_never_reorders() {
        let mut d = Direction::new(params("latency=10ms jitter=5ms"), 7);
        let mut w = Wire::default();
        let mut last = 0;
        for i in 0..1000u64 {
            let r = d.handle_bytes(vec![0; 100], &mut w, i * 100_000);
            assert!(r >= i * 100_000 + 10 * MS, "chunk {i} early");
            assert!(r >= last, "chunk {i} reordered");
            last = r;
        }
        // In order, yet not all at the minimum: jitter did something.
        assert!(last > 999 * 100_000 + 10 * MS);
    }

    #[test]
    fn bandwidth_spaces_chunks_by_their_sending_time() {
        // 8 Mbit/s = 1 MB/s: 1000 bytes take 1 ms.
        let mut d = Direction::new(params("bandwidth=8Mbit"), 1);
        let mut w = Wire::default();
        let mut release = 0;
        for _ in 0..1000 {
            release = d.handle_bytes(vec![0; 1000], &mut w, 0);
        }
        assert_eq!(release, 1000 * MS, "1 MB at 1 MB/s takes one second");
        // A link idle since then sends at once.
        assert_eq!(d.handle_bytes(vec![0; 1000], &mut w, 5000 * MS), 5001 * MS);
    }

    #[test]
    fn connections_share_the_bandwidth_of_the_link() {
        let mut wire = Wire::default();
        let p = params("bandwidth=8Mbit");
        let (mut a, mut b) = (Direction::new(p, 1), Direction::new(p, 2));
        let mut last = 0;
        for _ in 0..500 {
            a.handle_bytes(vec![0; 1000], &mut wire, 0);
            last = b.handle_bytes(vec![0; 1000], &mut wire, 0);
        }
        assert_eq!(
            last,
            1000 * MS,
            "1 MB over two connections still takes one second at 1 MB/s"
        );
    }

    #[test]
    fn stalls_hold_what_falls_in_them() {
        let mut d = Direction::new(params("stall-rate=10 stall=50ms"), 3);
        let mut w = Wire::default();
        let releases: Vec<u64> = (0..10_000u64)
            .map(|i| d.handle_bytes(vec![0], &mut w, i * MS))
            .collect();
        let delayed = releases
            .iter()
            .enumerate()
            .filter(|&(i, &r)| r > i as u64 * MS)
            .count();
        // 10 stalls a second of 50 ms, separated by exponential gaps of mean 100 ms: about a
        // third of the time is stalled.
        assert!(
            (2000..5000).contains(&delayed),
            "{delayed} of 10000 delayed"
        );
        assert!(releases.windows(2).all(|w| w[0] <= w[1]));
        assert!(
            releases
                .iter()
                .enumerate()
                .all(|(i, &r)| r <= i as u64 * MS + 50 * MS)
        );
    }

    #[test]
    fn a_partition_holds_everything_until_the_heal() {
        let mut d = Direction::new(params("latency=1ms"), 1);
        let mut w = Wire::default();
        d.handle_bytes(vec![1; 5], &mut w, 0);
        d.set_partitioned(true, MS / 2);
        d.handle_bytes(vec![2; 5], &mut w, MS);
        assert_eq!(drain(&mut d, 100 * MS), 0);
        assert_eq!(d.next_release_ns(), None);
        assert_eq!(d.buffered_bytes(), 10);
        d.set_partitioned(false, 100 * MS);
        let mut out = Vec::new();
        assert_eq!(d.poll_release(100 * MS, &mut out), 10);
        assert_eq!(out, [[1; 5], [2; 5]].concat());
    }

    #[test]
    fn same_seed_same_choices() {
        let run = |seed| {
            let mut d = Direction::new(params("jitter=5ms stall-rate=5 stall=10ms"), seed);
            let mut w = Wire::default();
            (0..100)
                .map(|i| d.handle_bytes(vec![0], &mut w, i * MS))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }

    #[test]
    fn resets_come_at_about_their_rate() {
        let mut now = 0;
        let mut count = 0;
        let mut clock = ResetClock::new(10.0, 0, 5);
        while now < 100 * 1000 * MS {
            now = clock.next_ns();
            assert!(clock.poll_reset(now) && !clock.poll_reset(now - 1));
            count += 1;
            clock.set_rate(10.0, now);
        }
        assert!(
            (800..1200).contains(&count),
            "{count} resets in 100 s at 10/s"
        );
        assert_eq!(ResetClock::new(0.0, 0, 1).next_ns(), u64::MAX);
    }

    #[test]
    fn words_parse_and_bad_words_say_what_is_wrong() {
        let p = params(
            "latency=25ms jitter=1.5ms bandwidth=1Gbit stall-rate=0.5 stall=2s reset-rate=0.01",
        );
        assert_eq!(p.latency_ns, 25 * MS);
        assert_eq!(p.jitter_ns, 1_500_000);
        assert_eq!(p.bandwidth_bytes_per_s, Some(125_000_000));
        assert_eq!(p.stall_ns, 2000 * MS);
        assert_eq!(LinkParams::default().apply(&p.to_string()).unwrap(), p);
        for (bad, says) in [
            ("latency=25", "unit"),
            ("latency=fast", "not a duration"),
            ("bandwidth=1GB", "bit, kbit"),
            ("speed=1", "unknown key"),
            ("latency", "key=value"),
            ("reset-rate=-1", "between 0"),
        ] {
            let e = LinkParams::default().apply(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
