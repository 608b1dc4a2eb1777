//! `loadgen plot`: a hand-written SVG of latency by percentile (log-scaled "nines" x axis) for several runs.

use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

/// One curve: a label and `(quantile, latency_ms)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Deserialize)]
struct JsonInput {
    label: String,
    distribution: Vec<[f64; 2]>,
}

/// Load a `.json` report (label + distribution in µs) or a `.hgrm` file (label = file stem).
pub fn load(path: &Path) -> Result<Series, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let is_json =
        path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    if is_json {
        let j: JsonInput =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let points = j
            .distribution
            .iter()
            .map(|[q, us]| (*q, us / 1e3))
            .collect();
        Ok(Series {
            label: j.label,
            points,
        })
    } else {
        let label = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let points = parse_hgrm(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Series { label, points })
    }
}

/// Parse the rows of an HdrHistogram percentile distribution: `(quantile, value)`.
pub fn parse_hgrm(text: &str) -> Result<Vec<(f64, f64)>, String> {
    let mut points = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("Value") {
            continue;
        }
        let mut cols = line.split_whitespace();
        let (Some(v), Some(q)) = (cols.next(), cols.next()) else {
            return Err(format!("line {}: expected value and percentile", n + 1));
        };
        let v: f64 = v
            .parse()
            .map_err(|_| format!("line {}: bad value {v:?}", n + 1))?;
        let q: f64 = q
            .parse()
            .map_err(|_| format!("line {}: bad percentile {q:?}", n + 1))?;
        points.push((q, v));
    }
    if points.is_empty() {
        return Err("no percentile rows".into());
    }
    Ok(points)
}

const W: f64 = 960.0;
const H: f64 = 600.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Number of nines: log10(1 / (1 - q)); infinite at q = 1.
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        f64::INFINITY
    } else {
        (1.0 / (1.0 - q.max(0.0))).log10()
    }
}

/// Percentile label for an x tick with `k` nines: 0%, 90%, 99%, 99.9%, ...
fn nines_label(k: u32) -> String {
    match k {
        0 => "0%".into(),
        1 => "90%".into(),
        _ => format!("99.{}%", "9".repeat(k as usize - 2)),
    }
    .replace("99.%", "99%")
}

/// Trim a tick value for display.
fn tick_label(v: f64) -> String {
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A "nice" step (1, 2 or 5 times a power of ten) for about `target` intervals over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    let f = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    f * p
}

enum YScale {
    Linear { max: f64 },
    Log { lo: f64, hi: f64 },
}

impl YScale {
    fn choose(series: &[Series]) -> YScale {
        let vals = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
        let max = vals.clone().fold(0.0f64, f64::max);
        let min_pos = vals.filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
        if max > 0.0 && min_pos.is_finite() && max / min_pos > 20.0 {
            YScale::Log {
                lo: min_pos.log10().floor(),
                hi: max.log10().ceil().max(min_pos.log10().floor() + 1.0),
            }
        } else {
            let max = if max > 0.0 { max } else { 1.0 };
            let step = nice_step(max, 5.0);
            YScale::Linear {
                max: (max / step).ceil() * step,
            }
        }
    }

    /// Fraction 0 (bottom) .. 1 (top).
    fn frac(&self, v: f64) -> f64 {
        match *self {
            YScale::Linear { max } => (v / max).clamp(0.0, 1.0),
            YScale::Log { lo, hi } => {
                let l = if v > 0.0 { v.log10() } else { lo };
                ((l - lo) / (hi - lo)).clamp(0.0, 1.0)
            }
        }
    }

    /// (value, is_major) gridlines.
    fn ticks(&self) -> Vec<(f64, bool)> {
        match *self {
            YScale::Linear { max } => {
                let step = nice_step(max, 5.0);
                let n = (max / step).round() as u32;
                (0..=n).map(|i| (i as f64 * step, true)).collect()
            }
            YScale::Log { lo, hi } => {
                let mut t = Vec::new();
                let (lo, hi) = (lo as i32, hi as i32);
                for e in lo..=hi {
                    let base = 10f64.powi(e);
                    t.push((base, true));
                    if e < hi {
                        t.push((2.0 * base, false));
                        t.push((5.0 * base, false));
                    }
                }
                t
            }
        }
    }
}

/// Render the SVG document.
pub fn render(title: &str, series: &[Series]) -> String {
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    // X range: whole nines, enough to show the finest finite percentile of any series.
    let finest = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| nines(p.0)))
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max);
    let x_max = finest.ceil().clamp(2.0, 6.0);
    let xpos = |q: f64| LEFT + pw * (nines(q).min(x_max) / x_max);
    let y = YScale::choose(series);
    let ypos = |v: f64| TOP + ph * (1.0 - y.frac(v));

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text class="title" x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        LEFT + pw / 2.0,
        escape(title)
    );

    // Gridlines and tick labels.
    let _ = writeln!(s, r##"<g class="grid" stroke="#ddd" stroke-width="1">"##);
    for k in 0..=(x_max as u32) {
        let x = LEFT + pw * (f64::from(k) / x_max);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}"/>"#,
            TOP + ph
        );
    }
    for (v, major) in y.ticks() {
        let yy = ypos(v);
        let extra = if major {
            ""
        } else {
            r#" stroke-dasharray="2,3""#
        };
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}"{extra}/>"#,
            LEFT + pw
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, r#"<g class="xticks" text-anchor="middle">"#);
    for k in 0..=(x_max as u32) {
        let x = LEFT + pw * (f64::from(k) / x_max);
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}">{}</text>"#,
            TOP + ph + 18.0,
            nines_label(k)
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, r#"<g class="yticks" text-anchor="end">"#);
    for (v, major) in y.ticks() {
        if major || matches!(y, YScale::Log { hi, lo } if hi - lo <= 2.0) {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                LEFT - 6.0,
                ypos(v) + 4.0,
                tick_label(v)
            );
        }
    }
    let _ = writeln!(s, "</g>");

    // Axes and axis labels.
    let _ = writeln!(
        s,
        r##"<rect class="axes" x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text class="xlabel" x="{:.1}" y="{:.1}" text-anchor="middle">Percentile</text>"#,
        LEFT + pw / 2.0,
        H - 15.0
    );
    let scale_name = match y {
        YScale::Log { .. } => "log scale",
        YScale::Linear { .. } => "linear",
    };
    let _ = writeln!(
        s,
        r#"<text class="ylabel" x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">Latency (ms, {scale_name})</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );

    // Curves.
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts = String::new();
        for &(q, v) in &ser.points {
            let _ = write!(pts, "{:.1},{:.1} ", xpos(q), ypos(v));
        }
        let _ = writeln!(
            s,
            r#"<polyline class="series" data-label="{}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            escape(&ser.label),
            pts.trim_end()
        );
    }

    // Legend.
    let lx = LEFT + pw + 20.0;
    let _ = writeln!(s, r#"<g class="legend">"#);
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let ly = TOP + 10.0 + 22.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="3"/>"#,
            lx + 24.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            escape(&ser.label)
        );
    }
    let _ = writeln!(s, "</g>");
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(label: &str, scale: f64) -> Series {
        let points = [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &q)| (q, scale * (1.0 + i as f64)))
            .collect();
        Series {
            label: label.into(),
            points,
        }
    }

    #[test]
    fn svg_structure() {
        let svg = render(
            "a <b> & c",
            &[series("gateway", 0.1), series("direct", 0.05)],
        );
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">gateway</text>") && svg.contains(">direct</text>"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        for label in ["0%", "90%", "99%", "99.9%", "99.99%"] {
            assert!(svg.contains(&format!(">{label}</text>")), "missing {label}");
        }
        assert!(svg.contains("Percentile") && svg.contains("Latency (ms"));
        // Balanced tags: every opened <g> is closed.
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        // Each polyline has one point per input point, all inside the canvas.
        let pl = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let pts: Vec<(f64, f64)> = pl
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(pts.len(), 7);
        assert!(pts
            .iter()
            .all(|&(x, y)| (0.0..=W).contains(&x) && (0.0..=H).contains(&y)));
        assert!(
            pts.windows(2).all(|w| w[0].0 <= w[1].0),
            "x must not decrease"
        );
    }

    #[test]
    fn log_scale_for_wide_ranges() {
        let wide = Series {
            label: "w".into(),
            points: vec![(0.0, 0.05), (0.99, 1.0), (1.0, 200.0)],
        };
        let svg = render("t", &[wide]);
        assert!(svg.contains("log scale"));
        let narrow = render("t", &[series("n", 1.0)]);
        assert!(narrow.contains("linear"));
    }

    #[test]
    fn hgrm_round_trip() {
        let mut h = crate::client::new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 100).unwrap();
        }
        let mut text = String::new();
        crate::report::write_hgrm(&h, 1000.0, &mut text);
        let pts = parse_hgrm(&text).unwrap();
        let dist = crate::report::distribution(&h);
        assert_eq!(pts.len(), dist.len());
        for ((q, v), [dq, dv]) in pts.iter().zip(&dist) {
            assert!((q - dq).abs() < 1e-9);
            assert!((v - dv / 1e3).abs() < 1e-3);
        }
    }

    #[test]
    fn labels() {
        assert_eq!(nines_label(0), "0%");
        assert_eq!(nines_label(1), "90%");
        assert_eq!(nines_label(2), "99%");
        assert_eq!(nines_label(4), "99.99%");
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(10.0), "10");
        assert_eq!(tick_label(250.0), "250");
    }
}
