//! Measures how long this machine takes its cores away: one spinning thread per core, each gap.
//!
//! Each thread is pinned to its core and reads the monotonic clock in a loop; a gap between
//! two reads longer than `--threshold-us` is time the thread did not run (the hypervisor
//! ran something else on the virtual CPU, or the guest kernel did: interrupts, softirqs,
//! other threads). A proxy's latency tail on the same core cannot be shorter than these.
//! Prints per core the gaps above the threshold (count, time lost, the longest, the
//! median spacing of those of 1 ms or more) and the steal time `/proc/stat` counted.
//!
//! ```text
//! stall-probe [--cores 0,1] [--seconds 10] [--threshold-us 200]
//! ```

use std::time::{Duration, Instant};

struct Args {
    cores: Vec<usize>,
    seconds: u64,
    threshold: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        cores: vec![0, 1],
        seconds: 10,
        threshold: Duration::from_micros(200),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--cores" => {
                args.cores = value()?
                    .split(',')
                    .map(|c| c.trim().parse().map_err(|_| format!("bad core {c:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|_| "bad --seconds".to_string())?;
            }
            "--threshold-us" => {
                let us: u64 = value()?
                    .parse()
                    .map_err(|_| "bad --threshold-us".to_string())?;
                args.threshold = Duration::from_micros(us);
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok(args)
}

/// Steal ticks per core from `/proc/stat` (the eighth value of each `cpuN` line).
fn steal() -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .nth(8)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// Spins for `run`, returning each gap above `threshold` as (offset from start, length).
fn spin(start: Instant, run: Duration, threshold: Duration) -> Vec<(Duration, Duration)> {
    let mut gaps = Vec::new();
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        let gap = now - last;
        if gap > threshold {
            gaps.push((last - start, gap));
        }
        if now - start >= run {
            return gaps;
        }
        last = now;
    }
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stall-probe: {e}");
            std::process::exit(2);
        }
    };
    let run = Duration::from_secs(args.seconds);
    let before = steal();
    let start = Instant::now();
    let threads: Vec<_> = args
        .cores
        .iter()
        .map(|&core| {
            std::thread::spawn(move || {
                if monoio::utils::bind_to_cpu_set([core]).is_err() {
                    eprintln!("stall-probe: cannot pin to core {core}");
                    std::process::exit(1);
                }
                spin(start, run, args.threshold)
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_default())
        .collect();
    let after = steal();
    let tick_ms = 1000 / (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64);
    println!(
        "stall-probe: {} s, gaps over {} µs, one spinning thread per core",
        args.seconds,
        args.threshold.as_micros()
    );
    for (&core, gaps) in args.cores.iter().zip(&results) {
        let lost: Duration = gaps.iter().map(|g| g.1).sum();
        let longest = gaps.iter().map(|g| g.1).max().unwrap_or_default();
        let big: Vec<_> = gaps
            .iter()
            .filter(|g| g.1 >= Duration::from_millis(1))
            .collect();
        let spacing = median(big.windows(2).map(|w| w[1].0 - w[0].0).collect());
        let stolen = after
            .get(core)
            .zip(before.get(core))
            .map_or(0, |(a, b)| a.saturating_sub(*b) * tick_ms);
        println!(
            "core {core}: {} gaps, {:.1} ms lost ({:.2}%), longest {:.2} ms; {} of 1 ms or more, median spacing {}; steal {} ms",
            gaps.len(),
            lost.as_secs_f64() * 1e3,
            lost.as_secs_f64() * 100.0 / run.as_secs_f64(),
            longest.as_secs_f64() * 1e3,
            big.len(),
            spacing.map_or("-".to_string(), |s| format!("{:.0} ms", s.as_secs_f64() * 1e3)),
            stolen
        );
        let mut worst: Vec<_> = gaps.clone();
        worst.sort_by_key(|g| std::cmp::Reverse(g.1));
        let list: Vec<String> = worst
            .iter()
            .take(8)
            .map(|(at, g)| format!("+{}ms {:.2}ms", at.as_millis(), g.as_secs_f64() * 1e3))
            .collect();
        println!("  longest: {}", list.join(", "));
    }
}
