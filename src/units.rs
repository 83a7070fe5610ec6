//! Sizes and rates: parsing what users type and printing what kvprobe reports.
//!
//! One convention everywhere:
//! - sizes are binary: `4K` = `4KiB` = 4096 bytes, `1M` = 1 MiB (what transfer
//!   sizes are in every tool of this field); a plain number is bytes;
//! - rates are decimal: GB/s means 1e9 bytes per second (as nixlbench,
//!   nvbandwidth and nccl-tests print). ucx_perftest's "MB/s" is MiB/s; see
//!   [`mib_per_s_to_gbps`].

use std::fmt;

/// A size string that could not be parsed, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size '{input}': {reason}")]
pub struct SizeError {
    /// What the user typed.
    pub input: String,
    /// Why it was refused.
    pub reason: &'static str,
}

/// Parses `4096`, `4K`, `4k`, `4KiB`, `4KB` (all 4096), `1M`, `1.5M`, `2G`, `1T`.
/// Zero is refused: no transfer has zero bytes.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    let err = |reason| SizeError { input: input.to_string(), reason };
    if s.is_empty() {
        return Err(err("empty"));
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(err("no number"));
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(err("unknown unit (use B, K, M, G or T; binary multiples)")),
    };
    let value = if num.contains('.') {
        let f: f64 = num.parse().map_err(|_| err("not a number"))?;
        let bytes = f * mult as f64;
        if bytes.fract() != 0.0 {
            return Err(err("not a whole number of bytes"));
        }
        if !(0.0..=u64::MAX as f64).contains(&bytes) {
            return Err(err("too large"));
        }
        bytes as u64
    } else {
        let n: u64 = num.parse().map_err(|_| err("not a number"))?;
        n.checked_mul(mult).ok_or_else(|| err("too large"))?
    };
    if value == 0 {
        return Err(err("must be greater than zero"));
    }
    Ok(value)
}

/// Parses a comma-separated size list (`4K,1M,64M`). Duplicates are removed and
/// the list is sorted ascending.
pub fn parse_size_list(input: &str) -> Result<Vec<u64>, SizeError> {
    let mut sizes = input.split(',').map(parse_size).collect::<Result<Vec<_>, _>>()?;
    sizes.sort_unstable();
    sizes.dedup();
    Ok(sizes)
}

/// Powers of four from `lo` to `hi` inclusive (both must be powers of two).
pub fn powers_of_four(lo: u64, hi: u64) -> Vec<u64> {
    let mut v = Vec::new();
    let mut s = lo;
    while s <= hi {
        v.push(s);
        match s.checked_mul(4) {
            Some(n) => s = n,
            None => break,
        }
    }
    v
}

/// A byte count printed the short binary way: `4 KiB`, `256 MiB`, `1.5 GiB`, `1000 B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut i = 0;
        while v >= 1024.0 && i < UNITS.len() - 1 {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 {
            write!(f, "{} B", self.0)
        } else if v.fract() == 0.0 {
            write!(f, "{v:.0} {}", UNITS[i])
        } else {
            write!(f, "{v:.1} {}", UNITS[i])
        }
    }
}

/// Compact label for a size, as typed on the command line: `4K`, `256M`, `1G`, `1000`.
pub fn size_label(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        let m = 1u64 << shift;
        if bytes >= m && bytes % m == 0 {
            return format!("{}{unit}", bytes / m);
        }
    }
    bytes.to_string()
}

/// Decimal gigabytes per second (1e9 bytes/s) from bytes and seconds.
pub fn gbps(bytes: f64, seconds: f64) -> f64 {
    if seconds <= 0.0 { 0.0 } else { bytes / seconds / 1e9 }
}

/// Converts ucx_perftest's "MB/s" (which is MiB/s) to decimal GB/s.
pub fn mib_per_s_to_gbps(mib_s: f64) -> f64 {
    mib_s * 1_048_576.0 / 1e9
}

/// A rate printed with sensible precision: `12.3`, `0.456`, `1234`.
pub fn fmt_gbps(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Microseconds printed with sensible precision.
pub fn fmt_us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Longest duration accepted anywhere (one day): longer is a typo, and keeps
/// every sum of durations far from overflow.
pub const MAX_DURATION_S: f64 = 86_400.0;

/// Parses a duration like `500ms`, `2s`, `1.5s`, `2m`; a bare number is
/// seconds. At most [`MAX_DURATION_S`].
pub fn parse_duration(input: &str) -> Result<std::time::Duration, String> {
    let s = input.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("invalid duration '{input}' (try 500ms, 2s, 1m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("invalid duration '{input}': must be a non-negative number"));
    }
    let secs = v * mult;
    if secs > MAX_DURATION_S {
        return Err(format!("duration '{input}' is longer than one day"));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration '{input}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_binary_multiples() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size(" 2G ").unwrap(), 2 << 30);
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        for bad in ["0", "", "1X", "K", "-1", "1.3", "99999999999999999999", "1.2.3K"] {
            let e = parse_size(bad).unwrap_err();
            assert_eq!(e.input, bad);
            assert!(!e.reason.is_empty());
        }
        assert!(parse_size("0").unwrap_err().reason.contains("greater than zero"));
        assert!(parse_size("1X").unwrap_err().reason.contains("unknown unit"));
        assert!(parse_size("16777216T").unwrap_err().reason.contains("too large"));
    }

    #[test]
    fn lists_are_sorted_and_deduplicated() {
        assert_eq!(parse_size_list("1M,4K,4096").unwrap(), vec![4096, 1 << 20]);
        assert!(parse_size_list("4K,,1M").is_err());
    }

    #[test]
    fn powers_of_four_cover_the_default_range() {
        let v = powers_of_four(4 << 10, 256 << 20);
        assert_eq!(v.len(), 9);
        assert_eq!(v[0], 4096);
        assert_eq!(*v.last().unwrap(), 256 << 20);
    }

    #[test]
    fn labels_and_display() {
        assert_eq!(size_label(4096), "4K");
        assert_eq!(size_label(256 << 20), "256M");
        assert_eq!(size_label(1000), "1000");
        assert_eq!(Bytes(4096).to_string(), "4 KiB");
        assert_eq!(Bytes(3 << 19).to_string(), "1.5 MiB");
        assert_eq!(Bytes(12).to_string(), "12 B");
    }

    #[test]
    fn rates_are_decimal() {
        assert!((gbps(1e9, 1.0) - 1.0).abs() < 1e-12);
        // ucx_perftest prints 1,223,163 "MB/s" (MiB/s) = 1282.6 GB/s.
        assert!((mib_per_s_to_gbps(1_223_163.0) - 1282.580).abs() < 0.01);
        assert_eq!(gbps(1.0, 0.0), 0.0);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("2s").unwrap().as_secs(), 2);
        assert_eq!(parse_duration("1.5").unwrap().as_millis(), 1500);
        assert_eq!(parse_duration("1m").unwrap().as_secs(), 60);
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1e30").unwrap_err().contains("one day"));
        assert!(parse_duration("inf").is_err());
        assert!(parse_duration("NaN").is_err());
        assert!(parse_duration("24h").is_err(), "no hour unit: a typo is refused, not guessed");
    }
}
