//! The `Date` header line (RFC 9110 §6.6.1, IMF-fixdate), formatted once a second per worker.
//!
//! A proxy with a clock must add `Date` to the responses it makes and to forwarded responses
//! that lack one. Formatting it per response would cost a clock read and the formatting on
//! every request; instead each worker keeps the whole line in a [`DateCache`] that its
//! once-a-second housekeeping refreshes just after each second turns, and responses copy
//! its 37 bytes.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const IMF_FIXDATE_LEN: usize = 29;
/// Length of the header line `date: <IMF-fixdate>\r\n`.
pub const LINE_LEN: usize = 6 + IMF_FIXDATE_LEN + 2;

/// One worker's current `date: ...\r\n` line.
pub struct DateCache {
    /// The Unix second `line` was formatted for.
    secs: Cell<u64>,
    line: Cell<[u8; LINE_LEN]>,
}

impl Default for DateCache {
    fn default() -> Self {
        Self::new()
    }
}

impl DateCache {
    /// A cache already holding the current second.
    pub fn new() -> DateCache {
        let secs = unix_secs(SystemTime::now());
        DateCache {
            secs: Cell::new(secs),
            line: Cell::new(line(secs)),
        }
    }

    /// Reads the clock and reformats the line if the second changed.
    pub fn refresh(&self) {
        self.set(unix_secs(SystemTime::now()));
    }

    /// Sets the line to second `secs` (reformatting only when it changed).
    pub fn set(&self, secs: u64) {
        if secs != self.secs.get() {
            self.secs.set(secs);
            self.line.set(line(secs));
        }
    }

    /// The `date: <IMF-fixdate>\r\n` line, to copy into a response head.
    pub fn line(&self) -> [u8; LINE_LEN] {
        self.line.get()
    }
}

/// How long until just after the wall clock's next whole second, so a refresh made then
/// lands in the new second (the 1 ms margin absorbs a timer that fires a little early).
pub fn until_next_second() -> Duration {
    let sub = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    Duration::from_nanos(u64::from(1_000_000_000 - sub.min(999_999_999))) + Duration::from_millis(1)
}

fn unix_secs(t: SystemTime) -> u64 {
    // A clock before 1970 is broken; 1970 is the best available approximation.
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn line(secs: u64) -> [u8; LINE_LEN] {
    let mut out = [0u8; LINE_LEN];
    out[..6].copy_from_slice(b"date: ");
    out[6..6 + IMF_FIXDATE_LEN].copy_from_slice(&imf_fixdate(secs));
    out[LINE_LEN - 2..].copy_from_slice(b"\r\n");
    out
}

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, exact over the whole proleptic Gregorian calendar).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Formats Unix second `secs` as an IMF-fixdate (RFC 9110 §5.6.7), e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`. Years past 9999 are written as 9999.
pub fn imf_fixdate(secs: u64) -> [u8; IMF_FIXDATE_LEN] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let year = year.clamp(0, 9999) as u32;
    let two = |n: u32| [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8];
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    // 1970-01-01 was a Thursday.
    out[0..3].copy_from_slice(DAYS[(days % 7) as usize]);
    out[5..7].copy_from_slice(&two(day));
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize % 12]);
    out[12..14].copy_from_slice(&two(year / 100));
    out[14..16].copy_from_slice(&two(year % 100));
    out[17..19].copy_from_slice(&two((rem / 3600) as u32));
    out[20..22].copy_from_slice(&two((rem / 60 % 60) as u32));
    out[23..25].copy_from_slice(&two((rem % 60) as u32));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(secs: u64) -> String {
        String::from_utf8(imf_fixdate(secs).to_vec()).unwrap()
    }

    #[test]
    fn formats_imf_fixdate() {
        assert_eq!(fmt(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        // RFC 9110's own example.
        assert_eq!(fmt(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(fmt(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(fmt(1_795_932_062), "Sun, 29 Nov 2026 06:01:02 GMT");
        // 2100 is not a leap year.
        assert_eq!(fmt(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 GMT");
        assert_eq!(fmt(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT");
        assert_eq!(fmt(4_133_980_799), "Fri, 31 Dec 2100 23:59:59 GMT");
        assert_eq!(fmt(253_402_300_799), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(fmt(u64::MAX).len(), IMF_FIXDATE_LEN);
    }

    #[test]
    fn every_day_of_four_centuries_matches_a_day_by_day_count() {
        // Walks the calendar one day at a time (no shared arithmetic with civil_from_days).
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in 0..146_097i64 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let len = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn the_cache_changes_only_with_the_second() {
        let c = DateCache::new();
        c.set(784_111_777);
        assert_eq!(&c.line()[..], b"date: Sun, 06 Nov 1994 08:49:37 GMT\r\n");
        c.set(784_111_778);
        assert_eq!(&c.line()[..], b"date: Sun, 06 Nov 1994 08:49:38 GMT\r\n");
        c.refresh();
        assert_eq!(c.line().len(), LINE_LEN);
        assert!(until_next_second() <= Duration::from_millis(1001));
    }
}
