//! Results: the summary line and percentile table on stdout, the `.hgrm` percentile file and the `.json` report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::args::RunConfig;
use crate::client::{ErrorCounts, Stats};

/// Percentile iteration density of the `.hgrm` output (HdrHistogram's usual 5 ticks per half).
const TICKS_PER_HALF: u32 = 5;

/// Latency summary in microseconds (2xx responses only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub min: u64,
    pub mean: f64,
    pub stddev: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
}

/// Open-loop send lag (actual send time minus scheduled time) in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Lag {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// How evenly the connections were served: quantiles, over the connections, of the 2xx
/// responses each got in the measurement window. In closed loop a connection's mean
/// latency is the window divided by its count, so a low p1 beside a high p50 is a tail
/// made by a few connections served less often, not by slow requests spread evenly.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PerConnection {
    pub min: u32,
    pub p1: u32,
    pub p10: u32,
    pub p50: u32,
    pub p90: u32,
    pub max: u32,
}

impl PerConnection {
    /// `None` when there is nothing to summarise.
    pub fn from_counts(counts: &[u32]) -> Option<PerConnection> {
        if counts.is_empty() {
            return None;
        }
        let mut v = counts.to_vec();
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some(PerConnection {
            min: v[0],
            p1: at(0.01),
            p10: at(0.1),
            p50: at(0.5),
            p90: at(0.9),
            max: v[v.len() - 1],
        })
    }
}

/// Error counts by kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Errors {
    pub total: u64,
    /// Responses with a status outside 2xx, keyed by status code.
    pub status: BTreeMap<String, u64>,
    pub connect: u64,
    pub reset: u64,
    pub closed: u64,
    pub timeout: u64,
    pub parse: u64,
}

impl From<&ErrorCounts> for Errors {
    fn from(e: &ErrorCounts) -> Errors {
        Errors {
            total: e.total(),
            status: e.statuses().map(|(s, n)| (s.to_string(), n)).collect(),
            connect: e.connect,
            reset: e.reset,
            closed: e.closed,
            timeout: e.timeout,
            parse: e.parse,
        }
    }
}

impl Errors {
    /// `none`, or e.g. `12 (status 503=10, timeout=2)`.
    pub fn describe(&self) -> String {
        if self.total == 0 {
            return "none".to_string();
        }
        let mut parts: Vec<String> = self
            .status
            .iter()
            .map(|(s, n)| format!("status {s}={n}"))
            .collect();
        for (name, n) in [
            ("connect", self.connect),
            ("reset", self.reset),
            ("closed", self.closed),
            ("timeout", self.timeout),
            ("parse", self.parse),
        ] {
            if n > 0 {
                parts.push(format!("{name}={n}"));
            }
        }
        format!("{} ({})", self.total, parts.join(", "))
    }
}

/// The `.json` report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub label: String,
    pub url: String,
    pub method: String,
    pub body_size: usize,
    pub connections: usize,
    pub threads: usize,
    pub cores: Vec<usize>,
    /// `closed` (as fast as possible) or `open` (fixed schedule at `rate`).
    pub mode: String,
    /// Requested total rate in req/s; 0 in closed loop.
    pub rate: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub timeout_s: f64,
    /// Complete responses (any status) started in the measurement window.
    pub requests: u64,
    /// 2xx responses among them.
    pub ok: u64,
    /// `requests / duration_s`.
    pub rps: f64,
    /// `ok / duration_s`.
    pub ok_rps: f64,
    /// Latency of 2xx responses, microseconds. Open loop: measured from the intended send
    /// time, and unsent slots are in it too (at what they had waited when the run ended).
    pub latency_us: Latency,
    /// Samples behind `latency_us`: `ok`, plus `unsent` in open loop.
    #[serde(default)]
    pub latency_samples: u64,
    /// Complete responses outside 2xx (not in `latency_us`).
    #[serde(default)]
    pub non_2xx: u64,
    /// Requests with no complete response within `timeout_s` (not in `latency_us`).
    #[serde(default)]
    pub timeouts: u64,
    pub errors: Errors,
    /// Errors during connection setup and warm-up (not part of the measurement).
    pub warmup_errors: Errors,
    pub reconnects: u64,
    /// Open loop: scheduled sends in the window that were never issued (still behind at the end).
    pub unsent: u64,
    /// Open loop: sends paced by timerfd (true) or monoio's 1 ms timer wheel (false).
    pub precise_pacing: bool,
    /// Open loop: how late requests went out versus their schedule (generator lateness plus
    /// waiting behind a slow previous response on the same connection). Zero in closed loop.
    pub send_lag_us: Lag,
    /// First few distinct error messages.
    pub error_samples: Vec<String>,
    /// `[quantile (0..=1), latency_us]` at the `.hgrm` iteration points.
    pub distribution: Vec<[f64; 2]>,
    /// Closed loop: how evenly the connections were served (see [`PerConnection`]).
    #[serde(default)]
    pub per_connection: Option<PerConnection>,
    /// When the slow requests started (see [`Timeline`]).
    #[serde(default)]
    pub timeline: Option<Timeline>,
}

/// The slowest 2xx latency of the requests that started in each `bin_ms` of the window,
/// in order (`max_us[i]` covers `i * bin_ms` to `(i + 1) * bin_ms` after the window
/// opened; 0 = no 2xx started there). Whether the tail comes in spells at a period (a
/// housekeeping tick), after stalls, or spread evenly.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Timeline {
    pub bin_ms: u64,
    pub max_us: Vec<u32>,
}

/// How many of a timeline's worst bins the text report names.
const WORST_BINS: usize = 6;

impl Timeline {
    /// The `n` bins with the slowest requests, as `(start ms, µs)`, in time order.
    pub fn worst(&self, n: usize) -> Vec<(u64, u32)> {
        let mut v: Vec<(u64, u32)> = (0u64..)
            .zip(self.max_us.iter().copied())
            .filter(|&(_, us)| us > 0)
            .map(|(i, us)| (i * self.bin_ms, us))
            .collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v.sort_unstable();
        v
    }
}

/// Build the report from the merged stats.
pub fn build(cfg: &RunConfig, stats: &Stats) -> Report {
    let h = &stats.hist;
    let dur = cfg.duration.as_secs_f64();
    let q = |q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    Report {
        label: cfg.label.clone(),
        url: cfg.url.clone(),
        method: cfg.method.clone(),
        body_size: cfg.body_size,
        connections: cfg.connections,
        threads: cfg.threads,
        cores: cfg.cores.clone(),
        mode: if cfg.rate > 0.0 { "open" } else { "closed" }.to_string(),
        rate: cfg.rate,
        warmup_s: cfg.warmup.as_secs_f64(),
        duration_s: dur,
        timeout_s: cfg.timeout.as_secs_f64(),
        requests: stats.requests,
        ok: stats.ok,
        rps: stats.requests as f64 / dur,
        ok_rps: stats.ok as f64 / dur,
        latency_us: Latency {
            min: if h.is_empty() { 0 } else { h.min() },
            mean: h.mean(),
            stddev: h.stdev(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p99_9: q(0.999),
            p99_99: q(0.9999),
            max: if h.is_empty() { 0 } else { h.max() },
        },
        latency_samples: h.len(),
        non_2xx: stats.errors.statuses().map(|(_, n)| n).sum(),
        timeouts: stats.errors.timeout,
        errors: Errors::from(&stats.errors),
        warmup_errors: Errors::from(&stats.warmup_errors),
        reconnects: stats.reconnects,
        unsent: stats.unsent,
        precise_pacing: cfg.rate > 0.0 && stats.precise_pacing,
        send_lag_us: if stats.lag.is_empty() {
            Lag::default()
        } else {
            Lag {
                p50: stats.lag.value_at_quantile(0.5),
                p99: stats.lag.value_at_quantile(0.99),
                max: stats.lag.max(),
            }
        },
        error_samples: stats.samples.clone(),
        distribution: distribution(h),
        per_connection: if cfg.rate > 0.0 {
            None
        } else {
            PerConnection::from_counts(&stats.per_conn)
        },
        timeline: (!stats.timeline.is_empty()).then(|| Timeline {
            bin_ms: crate::client::TIMELINE_BIN_NS / 1_000_000,
            max_us: stats.timeline.clone(),
        }),
    }
}

/// `[quantile, value]` pairs at the percentile-iteration points used by `.hgrm`.
pub fn distribution(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(TICKS_PER_HALF)
        .map(|v| [v.quantile_iterated_to(), v.value_iterated_to() as f64])
        .collect()
}

/// Format microseconds for humans: `850µs`, `1.25ms`, `2.50s`.
pub fn human_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// The one-line summary.
pub fn summary_line(r: &Report) -> String {
    let l = &r.latency_us;
    let mut s = format!(
        "{}: {} requests in {:.2}s, {:.1} req/s",
        r.label, r.requests, r.duration_s, r.rps
    );
    if r.mode == "open" {
        let _ = write!(s, " (target {:.1})", r.rate);
    }
    if r.latency_samples == 0 {
        let _ = write!(s, ", latency n/a (no 2xx responses)");
    } else {
        let _ = write!(
            s,
            ", p50 {} p99 {} p99.9 {} max {}",
            human_us(l.p50),
            human_us(l.p99),
            human_us(l.p99_9),
            human_us(l.max)
        );
    }
    let _ = write!(s, " {}", beside_percentiles(r));
    let _ = write!(s, ", errors: {}", r.errors.describe());
    s
}

/// What the percentiles cover and what they leave out, to print next to them:
/// `(2xx: 980; unsent 20 in them; not in them: non-2xx 3, timeouts 1)`.
pub fn beside_percentiles(r: &Report) -> String {
    let mut s = format!("(2xx: {}", r.ok);
    if r.mode == "open" {
        let _ = write!(s, "; unsent {} in them", r.unsent);
    }
    let other = r.errors.total.saturating_sub(r.non_2xx + r.timeouts);
    let _ = write!(
        s,
        "; not in them: non-2xx {}, timeouts {}",
        r.non_2xx, r.timeouts
    );
    if other > 0 {
        let _ = write!(s, ", other errors {other}");
    }
    s.push(')');
    s
}

/// The percentile table and any notes (warm-up errors, unsent requests, error samples).
pub fn details(r: &Report) -> String {
    let l = &r.latency_us;
    let mut s = String::new();
    let covered = if r.mode == "open" {
        format!(
            "latency of 2xx responses and unsent slots ({} + {} samples; an unsent slot at what it had waited when the run ended)",
            r.ok, r.unsent
        )
    } else {
        format!("latency of 2xx responses ({} samples)", r.ok)
    };
    let _ = writeln!(
        s,
        "  {} loop, {} connections, {} thread(s), {covered}:",
        r.mode, r.connections, r.threads
    );
    let _ = writeln!(s, "  {:>10}  {:>12}", "percentile", "latency ms");
    for (name, v) in [
        ("50%", l.p50),
        ("90%", l.p90),
        ("99%", l.p99),
        ("99.9%", l.p99_9),
        ("99.99%", l.p99_99),
        ("max", l.max),
    ] {
        let _ = writeln!(s, "  {name:>10}  {:>12.3}", v as f64 / 1e3);
    }
    let _ = writeln!(s, "  next to them: {}", beside_percentiles(r));
    if r.warmup_errors.total > 0 {
        let _ = writeln!(
            s,
            "  warm-up/setup errors (not measured): {}",
            r.warmup_errors.describe()
        );
    }
    if r.unsent > 0 {
        let _ = writeln!(
            s,
            "  open loop fell behind: {} scheduled requests were never sent (counted in the percentiles)",
            r.unsent
        );
    }
    if r.mode == "open" {
        let g = &r.send_lag_us;
        let _ = writeln!(
            s,
            "  send lag behind schedule (included in latency): p50 {} p99 {} max {}",
            human_us(g.p50),
            human_us(g.p99),
            human_us(g.max)
        );
    }
    if r.mode == "open" && !r.precise_pacing {
        let _ = writeln!(
            s,
            "  note: pacing used the 1 ms timer wheel (no io_uring); latencies include up to ~1 ms of send lateness"
        );
    }
    if let Some(c) = &r.per_connection {
        let _ = writeln!(
            s,
            "  2xx per connection in the window: min {} p1 {} p10 {} p50 {} p90 {} max {}",
            c.min, c.p1, c.p10, c.p50, c.p90, c.max
        );
    }
    if let Some(t) = &r.timeline {
        let worst: Vec<String> = t
            .worst(WORST_BINS)
            .iter()
            .map(|&(ms, us)| format!("+{ms}ms {}", human_us(u64::from(us))))
            .collect();
        let _ = writeln!(
            s,
            "  slowest {}-ms spells (start in the window, worst latency): {}",
            t.bin_ms,
            worst.join(", ")
        );
    }
    if r.reconnects > 0 {
        let _ = writeln!(s, "  reconnects: {}", r.reconnects);
    }
    for m in &r.error_samples {
        let _ = writeln!(s, "  error: {m}");
    }
    s
}

/// Write the HdrHistogram percentile distribution text (values in milliseconds when
/// `unit_per_output` is 1000 and the histogram is in microseconds).
pub fn write_hgrm(h: &Histogram<u64>, unit_per_output: f64, out: &mut String) {
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / unit_per_output;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / unit_per_output,
        h.stdev() / unit_per_output
    );
    let max = if h.is_empty() { 0 } else { h.max() };
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        max as f64 / unit_per_output,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    );
}

/// Sub-buckets per bucket for a given precision: the smallest power of two >= 2 * 10^sigfig.
fn sub_bucket_count(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

/// Write `<label>.hgrm` and `<label>.json` into `dir` (created if needed).
pub fn write_files(dir: &Path, r: &Report, h: &Histogram<u64>) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut hgrm = String::new();
    write_hgrm(h, 1000.0, &mut hgrm);
    std::fs::write(dir.join(format!("{}.hgrm", r.label)), hgrm)?;
    let json = serde_json::to_string_pretty(r).map_err(io::Error::other)?;
    std::fs::write(dir.join(format!("{}.json", r.label)), json + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::new_histogram;

    fn sample() -> Histogram<u64> {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 10).unwrap();
        }
        h
    }

    #[test]
    fn hgrm_structure() {
        let h = sample();
        let mut s = String::new();
        write_hgrm(&h, 1000.0, &mut s);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines[1], "");
        let rows: Vec<Vec<&str>> = lines[2..]
            .iter()
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(rows.len() > 50);
        let mut prev_q = -1.0;
        let mut prev_count = 0;
        for row in &rows[..rows.len() - 1] {
            assert_eq!(row.len(), 4, "{row:?}");
            let q: f64 = row[1].parse().unwrap();
            let c: u64 = row[2].parse().unwrap();
            assert!(q >= prev_q && c >= prev_count);
            prev_q = q;
            prev_count = c;
        }
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3);
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "10000");
        // Max is 100 ms (100_000 µs) within 3 significant digits.
        let max: f64 = last[0].parse().unwrap();
        assert!((max - 100.0).abs() < 0.1, "{max}");
        let footer: Vec<&str> = lines
            .iter()
            .filter(|l| l.starts_with("#["))
            .copied()
            .collect();
        assert_eq!(footer.len(), 3);
        assert!(footer[0].starts_with("#[Mean    ="));
        assert!(footer[1].contains("Total count    =        10000]"));
        assert!(footer[2].contains("SubBuckets     =         2048]"));
    }

    #[test]
    fn empty_hgrm_has_header_and_footer() {
        let mut s = String::new();
        write_hgrm(&new_histogram(), 1000.0, &mut s);
        assert_eq!(s.lines().count(), 5);
        assert!(s.contains("Total count    =            0]"));
        assert!(distribution(&new_histogram()).is_empty());
    }

    #[test]
    fn distribution_matches_hgrm_points() {
        let h = sample();
        let d = distribution(&h);
        assert_eq!(d.first().unwrap()[0], 0.0);
        assert_eq!(d.last().unwrap()[0], 1.0);
        assert!((d.last().unwrap()[1] - 100_000.0).abs() < 100.0);
        let mut s = String::new();
        write_hgrm(&h, 1000.0, &mut s);
        let rows = s.lines().skip(2).filter(|l| !l.starts_with('#')).count();
        assert_eq!(rows, d.len());
    }

    #[test]
    fn errors_description() {
        let mut e = ErrorCounts::default();
        assert_eq!(Errors::from(&e).describe(), "none");
        e.status[503] = 10;
        e.timeout = 2;
        assert_eq!(Errors::from(&e).describe(), "12 (status 503=10, timeout=2)");
    }

    #[test]
    fn what_the_percentiles_leave_out_is_said_next_to_them() {
        let mut stats = Stats::new();
        stats.ok = 980;
        stats.requests = 983;
        stats.unsent = 20;
        stats.errors.status[503] = 3;
        stats.errors.timeout = 1;
        stats.errors.reset = 2;
        let mut cfg = crate::args::parse(&[
            "--url".into(),
            "http://127.0.0.1:1/".into(),
            "--rate".into(),
            "100".into(),
        ])
        .map(|c| match c {
            crate::args::Command::Run(c) => c,
            _ => unreachable!(),
        })
        .unwrap();
        let open = build(&cfg, &stats);
        assert_eq!((open.non_2xx, open.timeouts), (3, 1));
        assert_eq!(
            beside_percentiles(&open),
            "(2xx: 980; unsent 20 in them; not in them: non-2xx 3, timeouts 1, other errors 2)"
        );
        assert!(summary_line(&open).contains("unsent 20 in them"));
        assert!(details(&open).contains("2xx responses and unsent slots (980 + 20 samples"));
        cfg.rate = 0.0;
        stats.errors.reset = 0;
        let closed = build(&cfg, &stats);
        assert_eq!(
            beside_percentiles(&closed),
            "(2xx: 980; not in them: non-2xx 3, timeouts 1)"
        );
    }

    #[test]
    fn timeline_names_the_slowest_bins_in_time_order() {
        let t = Timeline {
            bin_ms: 10,
            max_us: vec![300, 0, 9000, 250, 0, 7000, 9000, 100],
        };
        assert_eq!(t.worst(3), vec![(20, 9000), (50, 7000), (60, 9000)]);
        assert_eq!(t.worst(100).len(), 6, "empty bins are never named");
        let mut stats = Stats::new();
        stats.timeline = t.max_us.clone();
        let mut other = Stats::new();
        other.timeline = vec![400, 0, 10, 0, 0, 0, 0, 0, 0, 5000];
        stats.merge(&other);
        assert_eq!(
            stats.timeline,
            vec![400, 0, 9000, 250, 0, 7000, 9000, 100, 0, 5000],
            "merged bin by bin, the slower of the two"
        );
        let cfg = match crate::args::parse(&["--url".into(), "http://127.0.0.1:1/".into()]) {
            Ok(crate::args::Command::Run(c)) => c,
            _ => unreachable!(),
        };
        let text = details(&build(&cfg, &stats));
        assert!(
            text.contains(
                "slowest 10-ms spells (start in the window, worst latency): +0ms 400µs, \
                 +20ms 9.00ms, +30ms 250µs, +50ms 7.00ms, +60ms 9.00ms, +90ms 5.00ms\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn per_connection_quantiles() {
        assert_eq!(PerConnection::from_counts(&[]), None);
        // 200 connections: one starved (1), one favoured (500), the rest 10..=207.
        let mut counts: Vec<u32> = (10..208).collect();
        counts.push(500);
        counts.push(1);
        let c = PerConnection::from_counts(&counts).unwrap();
        assert_eq!((c.min, c.max), (1, 500));
        assert_eq!(c.p1, 11, "the 3rd lowest of 200");
        assert_eq!(c.p50, 109);
        assert!(c.p10 < c.p50 && c.p50 < c.p90 && c.p90 < c.max);
        let mut stats = Stats::new();
        stats.per_conn = counts;
        let cfg = match crate::args::parse(&["--url".into(), "http://127.0.0.1:1/".into()]) {
            Ok(crate::args::Command::Run(c)) => c,
            _ => unreachable!(),
        };
        let r = build(&cfg, &stats);
        assert_eq!(r.per_connection, Some(c));
        assert!(details(&r).contains("2xx per connection in the window: min 1 p1 11"));
    }

    #[test]
    fn human_units() {
        assert_eq!(human_us(850), "850µs");
        assert_eq!(human_us(1250), "1.25ms");
        assert_eq!(human_us(2_500_000), "2.50s");
    }
}
