//! Byte counts on the command line: `100`, `1KiB`, `512MiB`, `1GiB`.

use std::fmt;
use std::str::FromStr;

/// A byte count. Suffixes are binary: `KiB`/`K` = 1024, `MiB`/`M` = 1024², `GiB`/`G` = 1024³;
/// no suffix (or `B`) means bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a byte count such as 100, 16KiB, 512MiB or 1GiB");
        let s = s.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(digits);
        let n: u64 = number.parse().map_err(|_| bad())?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(scale).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the count exactly: `100B`, `1KiB`, `512MiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn parses_and_prints_binary_units() {
        for (text, bytes, shown) in [
            ("100", 100, "100B"),
            ("100B", 100, "100B"),
            ("1KiB", 1024, "1KiB"),
            ("16k", 16 << 10, "16KiB"),
            ("512MiB", 512 << 20, "512MiB"),
            ("1536MiB", 1536 << 20, "1536MiB"),
            ("1GiB", 1 << 30, "1GiB"),
            ("0", 0, "0B"),
        ] {
            let b: ByteSize = text.parse().unwrap();
            assert_eq!(b, ByteSize(bytes), "{text}");
            assert_eq!(b.to_string(), shown, "{text}");
        }
        for bad in ["", "KiB", "1KB", "1.5MiB", "-1", "99999999999GiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
    }
}
