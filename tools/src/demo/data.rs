//! The demo's data, pure: which entries each site writes ([`Plan`]), their keys and values
//! (a function of site and index, so the demo never keeps what it wrote), and the check of
//! what a site holds ([`Check`]): an order-independent [`Digest`] of its entries plus, per
//! entry, whether it is one that was written, with the value that was written.

use std::hash::{Hash, Hasher};

/// The region the demo writes to.
pub const REGION: &str = "demo";
/// Each site but site 1 writes this fraction of site 1's entries (at least one), so that
/// every link carries events.
pub const OTHER_SITES_SHARE: u64 = 100;
/// Problem keys named in a report.
pub const PROBLEMS_NAMED_MAX: usize = 5;

/// The key of site `site`'s `i`-th entry.
pub fn key(site: u8, i: u64) -> String {
    format!("demo:{site}:{i:09}")
}

/// The site and index a demo key names.
fn parse_key(key: &[u8]) -> Option<(u8, u64)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix("demo:")?;
    let (site, i) = rest.split_once(':')?;
    Some((site.parse().ok()?, i.parse().ok()?))
}

/// The value of site `site`'s `i`-th entry, `size` bytes: its origin and index, then
/// printable filler from a generator seeded by both.
pub fn value(site: u8, i: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(format!("{site}/{i}/").as_bytes());
    let mut x = (u64::from(site) << 56) ^ i ^ 0x9e37_79b9_7f4a_7c15;
    while out.len() < size {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend(z.to_le_bytes().iter().map(|b| b'a' + b % 26));
    }
    out.truncate(size);
}

/// How many entries each site writes: site 1 `entries`, every other site
/// `entries / OTHER_SITES_SHARE`, at least one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Entries site `i + 1` writes.
    pub per_site: Vec<u64>,
    pub value_size: usize,
}

impl Plan {
    pub fn new(sites: u8, entries: u64, value_size: usize) -> Plan {
        let others = (entries / OTHER_SITES_SHARE).max(1);
        Plan {
            per_site: (1..=sites)
                .map(|s| if s == 1 { entries } else { others })
                .collect(),
            value_size,
        }
    }

    pub fn total(&self) -> u64 {
        self.per_site.iter().sum()
    }

    /// What site `i + 1` must apply from the others: everything they write.
    pub fn expected_applied(&self) -> Vec<u64> {
        self.per_site
            .iter()
            .map(|&own| self.total() - own)
            .collect()
    }

    /// How many of site `site`'s entries should be written once site 1 has written `first`:
    /// the same share of its plan, so the other sites' writes spread over the run.
    pub fn due(&self, site: u8, first: u64) -> u64 {
        let mine = u128::from(self.per_site[usize::from(site - 1)]);
        let of = u128::from(self.per_site[0].max(1));
        (mine * u128::from(first)).div_ceil(of) as u64
    }

    /// Whether `key` was written with `value`: `None` when no site writes `key`.
    fn matches(&self, key: &[u8], value: &[u8], scratch: &mut Vec<u8>) -> Option<bool> {
        let (site, i) = parse_key(key)?;
        let planned = *self.per_site.get(usize::from(site).checked_sub(1)?)?;
        if i >= planned || key != self::key(site, i).as_bytes() {
            return None;
        }
        self::value(site, i, self.value_size, scratch);
        Some(value == scratch.as_slice())
    }

    /// The digest of everything written.
    pub fn digest(&self) -> Digest {
        let mut d = Digest::default();
        let mut v = Vec::new();
        for (s, &n) in self.per_site.iter().enumerate() {
            let site = s as u8 + 1;
            for i in 0..n {
                value(site, i, self.value_size, &mut v);
                d.add(key(site, i).as_bytes(), &v);
            }
        }
        d
    }
}

/// An order-independent digest of a set of entries: their count and the sum of a 64-bit hash
/// of each (key, value). Equal sets give equal digests whatever order they are read in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    pub entries: u64,
    pub sum: u64,
}

impl Digest {
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        // SipHash with fixed keys: the same in every run of this binary.
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        value.hash(&mut h);
        self.entries += 1;
        self.sum = self.sum.wrapping_add(h.finish());
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.sum)
    }
}

/// What one site holds, entry by entry, against the [`Plan`].
#[derive(Debug)]
pub struct Check<'a> {
    plan: &'a Plan,
    pub digest: Digest,
    /// Entries written with the value written.
    pub right: u64,
    /// Written keys holding another value.
    pub wrong_value: u64,
    /// Keys nobody wrote.
    pub unexpected: u64,
    /// Keys seen twice by the scan (not counted again).
    pub repeated: u64,
    /// Up to [`PROBLEMS_NAMED_MAX`] keys with a wrong value or unexpected.
    pub examples: Vec<String>,
    seen: std::collections::HashSet<u64>,
    scratch: Vec<u8>,
}

impl<'a> Check<'a> {
    pub fn new(plan: &'a Plan) -> Check<'a> {
        Check {
            plan,
            digest: Digest::default(),
            right: 0,
            wrong_value: 0,
            unexpected: 0,
            repeated: 0,
            examples: Vec::new(),
            seen: std::collections::HashSet::new(),
            scratch: Vec::new(),
        }
    }

    /// One entry the site holds.
    pub fn entry(&mut self, key: &[u8], value: &[u8]) {
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        if !self.seen.insert(h.finish()) {
            self.repeated += 1;
            return;
        }
        self.digest.add(key, value);
        let problem = match self.plan.matches(key, value, &mut self.scratch) {
            Some(true) => {
                self.right += 1;
                return;
            }
            Some(false) => {
                self.wrong_value += 1;
                "another value"
            }
            None => {
                self.unexpected += 1;
                "not written by the demo"
            }
        };
        if self.examples.len() < PROBLEMS_NAMED_MAX {
            self.examples
                .push(format!("{} ({problem})", String::from_utf8_lossy(key)));
        }
    }

    /// Written entries the site does not hold.
    pub fn missing(&self) -> u64 {
        self.plan.total() - self.right - self.wrong_value
    }

    /// Whether the site holds exactly what was written.
    pub fn complete(&self) -> bool {
        self.right == self.plan.total() && self.wrong_value == 0 && self.unexpected == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_reproducible_sized_and_distinct() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        value(1, 7, 100, &mut a);
        value(1, 7, 100, &mut b);
        assert_eq!(a, b);
        assert_eq!(a.len(), 100);
        assert!(a.starts_with(b"1/7/"));
        value(2, 7, 100, &mut b);
        assert_ne!(a, b);
        value(1, 7, 2, &mut b);
        assert_eq!(b, b"1/");
        assert_eq!(parse_key(key(3, 42).as_bytes()), Some((3, 42)));
    }

    #[test]
    fn plan_spreads_the_other_sites_writes() {
        let p = Plan::new(3, 2000, 10);
        assert_eq!(p.per_site, [2000, 20, 20]);
        assert_eq!(p.expected_applied(), [40, 2020, 2020]);
        assert_eq!(p.due(2, 0), 0);
        assert_eq!(p.due(2, 1), 1);
        assert_eq!(p.due(2, 1000), 10);
        assert_eq!(p.due(2, 2000), 20);
        assert_eq!(Plan::new(2, 5, 10).per_site, [5, 1]);
    }

    fn holdings(plan: &Plan) -> Vec<(String, Vec<u8>)> {
        let mut all = Vec::new();
        for (s, &n) in plan.per_site.iter().enumerate() {
            for i in 0..n {
                let mut v = Vec::new();
                value(s as u8 + 1, i, plan.value_size, &mut v);
                all.push((key(s as u8 + 1, i), v));
            }
        }
        all
    }

    #[test]
    fn a_complete_site_in_any_order_matches_the_plan() {
        let plan = Plan::new(3, 300, 16);
        let mut all = holdings(&plan);
        all.reverse();
        let mut c = Check::new(&plan);
        for (k, v) in &all {
            c.entry(k.as_bytes(), v);
        }
        c.entry(all[0].0.as_bytes(), &all[0].1);
        assert!(c.complete());
        assert_eq!((c.repeated, c.missing()), (1, 0));
        assert_eq!(c.digest, plan.digest());
    }

    #[test]
    fn missing_wrong_and_unexpected_entries_are_counted_and_named() {
        let plan = Plan::new(2, 100, 16);
        let all = holdings(&plan);
        let mut c = Check::new(&plan);
        for (k, v) in &all[2..] {
            let v = if k == &key(1, 50) {
                b"changed".to_vec()
            } else {
                v.clone()
            };
            c.entry(k.as_bytes(), &v);
        }
        c.entry(b"stranger", b"x");
        c.entry(key(1, 100).as_bytes(), b"x");
        assert!(!c.complete());
        assert_eq!((c.missing(), c.wrong_value, c.unexpected), (2, 1, 2));
        assert_ne!(c.digest, plan.digest());
        assert_eq!(
            c.examples,
            [
                "demo:1:000000050 (another value)",
                "stranger (not written by the demo)",
                "demo:1:000000100 (not written by the demo)"
            ]
        );
    }
}
