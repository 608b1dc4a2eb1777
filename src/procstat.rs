//! The process's own CPU time, memory and start time, read from `/proc` for `/metrics`.
//!
//! The series carry the names the Prometheus client libraries' process collector gives
//! them, so existing dashboards and alerts (restarts, memory growth, CPU) work unchanged.

/// One reading of `/proc/self/stat` (and `/proc/stat`'s boot time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    pub threads: u64,
}

/// Reads the running process's figures; None where `/proc` is unreadable.
pub fn read() -> Option<ProcStat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf only reads configuration values.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    parse(&stat, &boot, ticks, page)
}

/// [`read`] from the texts of `/proc/self/stat` and `/proc/stat`, with the clock ticks per
/// second and the page size.
fn parse(stat: &str, boot: &str, ticks: i64, page: i64) -> Option<ProcStat> {
    let (ticks, page) = (u64::try_from(ticks).ok()?, u64::try_from(page).ok()?);
    if ticks == 0 {
        return None;
    }
    // The command name (field 2) is in parentheses and may hold spaces or ')': the fields
    // that follow start after the last ')'. `f[0]` is then field 3 (state).
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let btime: u64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let secs = |t: u64| t as f64 / ticks as f64;
    Some(ProcStat {
        cpu_seconds: secs(field(14)? + field(15)?),
        threads: field(20)?,
        start_time_seconds: btime as f64 + secs(field(22)?),
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_after_the_last_parenthesis() {
        // A command name with a space and a ')' in it, as a hostile binary name could be.
        let stat = "4242 (gate way) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 \
                    7 0 360000 987654321 2048 18446744073709551615";
        let boot = "cpu  1 2 3\nbtime 1764600000\nprocesses 9\n";
        let p = parse(stat, boot, 100, 4096).expect("parsed");
        assert_eq!(p.cpu_seconds, 4.0); // (250 + 150) ticks at 100 per second
        assert_eq!(p.threads, 7);
        assert_eq!(p.start_time_seconds, 1_764_603_600.0); // boot + 360000 / 100
        assert_eq!(p.virtual_bytes, 987_654_321);
        assert_eq!(p.resident_bytes, 2048 * 4096);
        assert_eq!(parse("garbage", boot, 100, 4096), None);
        assert_eq!(parse(stat, "no btime here", 100, 4096), None);
    }

    #[test]
    fn this_process_reads_sensibly() {
        let p = read().expect("/proc is readable here");
        assert!(
            p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes,
            "{p:?}"
        );
        assert!(p.threads >= 1, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(
            p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 86_400.0 * 365.0,
            "{p:?}"
        );
    }
}
