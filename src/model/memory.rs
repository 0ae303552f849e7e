//! How much memory this process can still use before the OS starts taking it away: the
//! system's `MemAvailable`, capped by the memory limit of the cgroup the process runs in
//! (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`), so that a 24 GB machine running
//! MoEScope in an 8 GiB container plans for 8 GiB. `MOESCOPE_MEMORY_BUDGET` (bytes, or with a
//! `K`/`M`/`G` suffix: `6G`) caps it further, to keep room for other work or to try how a run
//! behaves on a smaller machine. Also: giving a mapped range's pages back ([`release_pages`]).

use std::path::{Path, PathBuf};

/// Memory this process may still allocate, and where that figure comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBudget {
    pub available: u64,
    /// `"available memory"`, or the cgroup limit that capped it.
    pub source: String,
}

/// The current budget; `None` where the OS does not say (not Linux).
pub fn budget() -> Option<MemoryBudget> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let system = meminfo_available(&meminfo)?;
    let mut best = MemoryBudget {
        available: system,
        source: "available memory".into(),
    };
    if let Some((limit, free)) = cgroup_limit()
        && free < best.available
    {
        best = MemoryBudget {
            available: free,
            source: format!("memory cgroup limit of {}", human_bytes(limit)),
        };
    }
    if let Some(cap) = std::env::var("MOESCOPE_MEMORY_BUDGET")
        .ok()
        .and_then(|v| parse_bytes(&v))
        && cap < best.available
    {
        best = MemoryBudget {
            available: cap,
            source: "MOESCOPE_MEMORY_BUDGET".into(),
        };
    }
    Some(best)
}

/// `123`, `64K`, `512M`, `6G` (powers of 1024, as memory sizes are given) to bytes.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, unit) = match t
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit() && *c != '.')
    {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let value: f64 = digits.parse().ok()?;
    let scale = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1u64,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    Some((value * scale as f64) as u64)
}

/// `MemAvailable` from `/proc/meminfo` text, in bytes.
fn meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The process's cgroup memory limit and what is left of it (page cache counts as free, as
/// the kernel reclaims it before failing an allocation); `None` without a limit.
fn cgroup_limit() -> Option<(u64, u64)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            // cgroup v2.
            let dir = existing_dir(Path::new("/sys/fs/cgroup"), path)?;
            let limit = read_u64(&dir.join("memory.max"))?;
            let used = read_u64(&dir.join("memory.current")).unwrap_or(0);
            let cache = stat_value(&dir.join("memory.stat"), "file").unwrap_or(0);
            return Some((limit, limit.saturating_sub(used.saturating_sub(cache))));
        }
        if controllers.split(',').any(|c| c == "memory") {
            let dir = existing_dir(Path::new("/sys/fs/cgroup/memory"), path)?;
            let limit = read_u64(&dir.join("memory.limit_in_bytes"))?;
            // v1 reports "no limit" as a number near i64::MAX.
            if limit >= 1 << 60 {
                return None;
            }
            let used = read_u64(&dir.join("memory.usage_in_bytes")).unwrap_or(0);
            let stat = dir.join("memory.stat");
            let cache = stat_value(&stat, "total_cache")
                .or_else(|| stat_value(&stat, "cache"))
                .unwrap_or(0);
            return Some((limit, limit.saturating_sub(used.saturating_sub(cache))));
        }
    }
    None
}

/// `root/path` when it exists, else `root` (inside a container the cgroup is the root).
fn existing_dir(root: &Path, path: &str) -> Option<PathBuf> {
    let dir = root.join(path);
    if dir.is_dir() {
        Some(dir)
    } else {
        root.is_dir().then(|| root.to_path_buf())
    }
}

/// A file holding one number (`max` means no limit: `None`).
fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a `memory.stat` file.
fn stat_value(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Bytes for people: `27.7 GB`, `812.0 MB`, `4.0 KB` (powers of 1000, as disk sizes are given).
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} KB", n / 1e3),
        n => format!("{n} B"),
    }
}

/// Drops the whole pages inside `[start, end)` of `map` from this process's resident set.
pub(crate) fn release_pages(map: &memmap2::Mmap, start: usize, end: usize) {
    const PAGE: usize = 4096;
    let first = start.div_ceil(PAGE) * PAGE;
    let last = end / PAGE * PAGE;
    if last > first {
        // SAFETY: the map is a private read-only file mapping; MADV_DONTNEED only drops clean
        // pages, which are re-read from the file on the next access, so no reader ever sees
        // different data.
        #[cfg(unix)]
        unsafe {
            let _ =
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first);
        }
    }
    let _ = (map, first, last);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes() {
        let text =
            "MemTotal:       24000000 kB\nMemFree:         100 kB\nMemAvailable:   21900000 kB\n";
        assert_eq!(meminfo_available(text), Some(21_900_000 * 1024));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn budgets_parse_with_units() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("64K"), Some(65_536));
        assert_eq!(parse_bytes("1.5G"), Some(1_610_612_736));
        assert_eq!(parse_bytes("8GiB"), Some(8 << 30));
        assert_eq!(parse_bytes("2MB"), Some(2 << 20));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("3X"), None);
    }

    #[test]
    fn bytes_read_as_disk_sizes() {
        assert_eq!(human_bytes(27_700_000_000), "27.7 GB");
        assert_eq!(human_bytes(812_000_000), "812.0 MB");
        assert_eq!(human_bytes(512), "512 B");
    }

    #[test]
    fn this_machine_has_a_budget() {
        let b = budget().expect("Linux reports MemAvailable");
        assert!(b.available > 0);
    }
}
