//! Facts about this host for report headers, and UTC timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::report::schema::HostInfo;

/// The host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Host facts from procfs.
pub fn host_info() -> HostInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    HostInfo {
        hostname: hostname(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default(),
        cpu,
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        mem_bytes: meminfo_kib(&meminfo, "MemTotal:").unwrap_or(0) * 1024,
    }
}

/// Available memory in bytes (`MemAvailable`), if the kernel reports it.
pub fn mem_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_kib(&meminfo, "MemAvailable:").map(|k| k * 1024)
}

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn parts(t: SystemTime) -> (i64, u32, u32, u64, u64, u64) {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (y, mo, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `2026-11-24T13:05:09Z`.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = parts(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `20261124-130509` (UTC), for folder names.
pub fn stamp_utc(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = parts(t);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // 2000-02-29 (leap day) 12:34:56
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_827_696)), "2000-02-29T12:34:56Z");
        // 2026-11-24 00:00:00
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(1_795_478_400)), "2026-11-24T00:00:00Z");
        assert_eq!(stamp_utc(UNIX_EPOCH + Duration::from_secs(1_795_478_400)), "20261124-000000");
    }

    #[test]
    fn host_facts_are_read() {
        let h = host_info();
        assert!(h.cpus >= 1);
        assert!(h.mem_bytes > 0);
        assert!(!h.hostname.is_empty());
    }
}

/// This process's command line with the value of `--token` replaced, so
/// that results files never carry a live session token.
pub fn redacted_args() -> Vec<String> {
    redact(std::env::args())
}

fn redact(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut hide = false;
    for a in args {
        if hide {
            out.push("<token>".into());
            hide = false;
        } else if a == "--token" {
            out.push(a);
            hide = true;
        } else if a.starts_with("--token=") {
            out.push("--token=<token>".into());
        } else {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod redact_tests {
    #[test]
    fn tokens_are_hidden() {
        let args = ["kvprobe", "sweep", "--token", "abc", "--peer", "h:1", "--token=def"].map(String::from);
        assert_eq!(
            super::redact(args.into_iter()),
            ["kvprobe", "sweep", "--token", "<token>", "--peer", "h:1", "--token=<token>"]
        );
    }
}
