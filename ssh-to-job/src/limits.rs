//! `stj submit --cpus N --memory SIZE`: what a job may use, as the node's
//! cgroup for the job enforces it, and how `stj q` shows it.

use anyhow::{bail, Result};

/// `--cpus`: a decimal number of CPUs, to thousandths (`0.5`, `2`, `1.25`).
pub fn parse_cpus(s: &str) -> Result<u32> {
    let bad = || {
        anyhow::anyhow!(
            "--cpus {s:?}: give a number of CPUs above 0, like 2 or 0.5 (at most three decimals)"
        )
    };
    let (whole, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if whole.is_empty() && frac.is_empty()
        || frac.len() > 3
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u32 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let frac: u32 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    let milli = whole
        .checked_mul(1000)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(bad)?;
    if milli < 10 {
        bail!("--cpus is at least 0.01 (leave it out for no CPU limit)");
    }
    Ok(milli)
}

/// `--memory`: a size with a binary unit, as Slurm's `--mem` takes it:
/// `64M`, `1.5G`, `512K`; a bare number is MiB.
pub fn parse_memory(s: &str) -> Result<u64> {
    let cfg = parse_size::Config::new()
        .with_binary()
        .with_default_factor(1 << 20);
    match cfg.parse_size(s.trim()) {
        Ok(0) => bail!("--memory must be above 0 (leave it out for no memory limit)"),
        Ok(n) => Ok(n),
        Err(e) => bail!("--memory {s:?}: {e}; give a size like 64M, 2G or 512K"),
    }
}

/// `1.5` for 1500 millicpus.
pub fn cpus(milli: u32) -> String {
    let s = format!("{}.{:03}", milli / 1000, milli % 1000);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `64M`, `1.5G`: the largest binary unit that leaves at most one decimal.
pub fn memory(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (size, unit) in UNITS {
        if bytes >= size {
            // u128: a schedd of another make may say anything.
            let tenths = u128::from(bytes) * 10 / u128::from(size);
            return if tenths % 10 == 0 {
                format!("{}{unit}", tenths / 10)
            } else {
                format!("{}.{}{unit}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{bytes}B")
}

/// The LIMITS column of `stj q`: `2cpu,64M`, or `-`.
pub fn column(millicpus: u32, memory_bytes: u64) -> String {
    let mut parts = Vec::new();
    if millicpus > 0 {
        parts.push(format!("{}cpu", cpus(millicpus)));
    }
    if memory_bytes > 0 {
        parts.push(memory(memory_bytes));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_to_thousandths() {
        assert_eq!(parse_cpus("2").unwrap(), 2000);
        assert_eq!(parse_cpus("0.5").unwrap(), 500);
        assert_eq!(parse_cpus(".25").unwrap(), 250);
        assert_eq!(parse_cpus("1.125").unwrap(), 1125);
        for bad in [
            "0", "0.000", "0.005", "-1", "1.2345", "abc", "", ".", "1e3", "99999999",
        ] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
        assert_eq!(cpus(1500), "1.5");
        assert_eq!(cpus(2000), "2");
        assert_eq!(cpus(125), "0.125");
    }

    #[test]
    fn memory_sizes_are_binary() {
        assert_eq!(parse_memory("64M").unwrap(), 64 << 20);
        assert_eq!(parse_memory("64").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_memory("512K").unwrap(), 512 << 10);
        for bad in ["0", "-5M", "lots", "64Q"] {
            assert!(parse_memory(bad).is_err(), "{bad:?}");
        }
        assert_eq!(memory(64 << 20), "64M");
        assert_eq!(memory(3 << 29), "1.5G");
        assert_eq!(column(0, 0), "-");
        assert_eq!(column(1500, 64 << 20), "1.5cpu,64M");
        assert!(memory(u64::MAX).ends_with('T'));
    }
}
