//! Memory limits: every size a file or config claims (a dataset's header, a model's widths, a
//! sweep's grid) is checked against what the machine can hold before anything is allocated,
//! so an absurd size is one clear error instead of an out-of-memory kill, an allocation abort
//! or a wrapped count.
//!
//! The limit is the memory the operating system reports as available (`MemAvailable` in
//! `/proc/meminfo`), or, where that cannot be read, 16 GiB. The environment variable
//! `SUPERMASK_MEMORY_LIMIT` (bytes, or with a `K`/`M`/`G` suffix) sets it instead: for tests,
//! and for a shared machine where a run should stay below its share.

use crate::Result;

/// Environment variable that overrides the memory limit.
pub const MEMORY_LIMIT_ENV: &str = "SUPERMASK_MEMORY_LIMIT";

/// The limit where the machine's available memory cannot be read.
const FALLBACK: u64 = 16 << 30;

/// Parses `123`, `64K`, `512M`, `2G` (binary multiples) into bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn available_from_proc() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The memory one allocation (or one run's model) may use, in bytes: `SUPERMASK_MEMORY_LIMIT`
/// when set and valid, else the machine's available memory, else 16 GiB.
pub fn memory_limit() -> Result<u64> {
    if let Ok(v) = std::env::var(MEMORY_LIMIT_ENV) {
        return parse_size(&v).ok_or_else(|| {
            anyhow::anyhow!(
                "{MEMORY_LIMIT_ENV}={v}: expected a size in bytes, optionally with K, M or G"
            )
        });
    }
    Ok(available_from_proc().unwrap_or(FALLBACK))
}

/// Human-readable bytes (`1.5 GiB`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Fails with an error naming `what` when `bytes` exceed [`memory_limit`].
pub fn check_alloc(bytes: u64, what: &str) -> Result<()> {
    let limit = memory_limit()?;
    anyhow::ensure!(
        bytes <= limit,
        "{what} would need {} of memory, more than the {} available (set {MEMORY_LIMIT_ENV} to \
         change the limit)",
        format_bytes(bytes),
        format_bytes(limit)
    );
    Ok(())
}

/// `count * size` in bytes, or an error naming `what` when it overflows 64 bits.
pub fn bytes_of(count: u64, size: u64, what: &str) -> Result<u64> {
    count
        .checked_mul(size)
        .ok_or_else(|| anyhow::anyhow!("{what}: {count} elements overflow the addressable size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("512m"), Some(512 << 20));
        assert_eq!(parse_size(" 2G "), Some(2 << 30));
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }

    #[test]
    fn bytes_format_in_binary_units() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn the_machine_reports_some_available_memory() {
        // On Linux (CI) the limit comes from /proc/meminfo and is positive.
        let limit = memory_limit().unwrap();
        assert!(limit > 0);
        assert!(bytes_of(u64::MAX, 4, "x").is_err());
    }
}
