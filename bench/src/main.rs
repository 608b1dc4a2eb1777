//! loadgen: an HTTP/1.1 load generator (closed or open loop) that records latency into HdrHistogram.

mod args;
mod client;
mod clock;
mod http;
mod plot;
mod report;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use args::{Command, PlotConfig, RunConfig};
use client::{Plan, Stats};

/// Time between spawning the threads and the first request, for opening connections.
const SETUP: Duration = Duration::from_millis(300);
/// Longest spread of the closed-loop connections' first requests (half the warm-up at most).
const RAMP: Duration = Duration::from_secs(1);
/// Printed on stderr when the measurement window opens (setup and warm-up are over).
const WINDOW_START: &str = "loadgen: window start";
/// Printed on stderr when the last recorded request has finished.
const WINDOW_END: &str = "loadgen: window end";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match args::parse(&argv) {
        Ok(Command::Help) => {
            print!("{}", args::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Run(cfg)) => run(&cfg),
        Ok(Command::Plot(p)) => plot_cmd(&p),
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{}", args::USAGE);
            ExitCode::from(2)
        }
    }
}

fn run(cfg: &RunConfig) -> ExitCode {
    let request = http::build_request(
        &cfg.method,
        &cfg.target.authority,
        &cfg.target.path,
        &cfg.headers,
        cfg.body_size,
    );
    let start_ns = clock::now_ns() + SETUP.as_nanos() as u64;
    let measure_ns = start_ns + cfg.warmup.as_nanos() as u64;
    let plan = Arc::new(Plan {
        addr: cfg.addr,
        request,
        head_request: cfg.method == "HEAD",
        start_ns,
        measure_ns,
        end_ns: measure_ns + cfg.duration.as_nanos() as u64,
        timeout: cfg.timeout,
        interval_ns: (cfg.rate > 0.0).then(|| 1e9 * cfg.connections as f64 / cfg.rate),
        connections: cfg.connections,
        connect_batch: client::CONNECT_BATCH,
        // Closed loop: the first requests spread over up to 1 s of the warm-up.
        ramp_ns: if cfg.rate > 0.0 {
            0
        } else {
            (cfg.warmup / 2).min(RAMP).as_nanos() as u64
        },
    });
    eprintln!(
        "loadgen: {}: {} {} with {} connections on {} thread(s), {}, warm-up {:.1}s, duration {:.1}s",
        cfg.label,
        cfg.method,
        cfg.url,
        cfg.connections,
        cfg.threads,
        if cfg.rate > 0.0 {
            format!("open loop at {} req/s", cfg.rate)
        } else {
            "closed loop".to_string()
        },
        cfg.warmup.as_secs_f64(),
        cfg.duration.as_secs_f64()
    );

    let mut handles = Vec::with_capacity(cfg.threads);
    for t in 0..cfg.threads {
        // Thread t gets connections t, t + threads, t + 2*threads, ... (an even spread).
        let conns: Vec<usize> = (t..cfg.connections).step_by(cfg.threads).collect();
        let core = (!cfg.cores.is_empty()).then(|| cfg.cores[t % cfg.cores.len()]);
        let plan = plan.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || client::run_thread(plan, conns, core));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("loadgen: cannot start thread: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Tell a harness measuring the server's CPU (scripts/bench.sh) when the recorded
    // requests start and end, so that neither the setup nor the warm-up falls inside its
    // window. After the joins, every recorded request has finished.
    let wait = plan.measure_ns.saturating_sub(clock::now_ns());
    std::thread::sleep(Duration::from_nanos(wait));
    eprintln!("{WINDOW_START}");
    let mut stats = Stats::new();
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => stats.merge(&s),
            Ok(Err(e)) => {
                eprintln!("loadgen: runtime failed to start: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => {
                eprintln!("loadgen: a worker thread panicked");
                return ExitCode::FAILURE;
            }
        }
    }

    eprintln!("{WINDOW_END}");
    let rep = report::build(cfg, &stats);
    println!("{}", report::summary_line(&rep));
    print!("{}", report::details(&rep));
    if let Some(dir) = &cfg.out_dir {
        if let Err(e) = report::write_files(dir, &rep, &stats.hist) {
            eprintln!("loadgen: cannot write results to {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    if stats.ok == 0 {
        eprintln!("loadgen: no request succeeded");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn plot_cmd(p: &PlotConfig) -> ExitCode {
    let mut series = Vec::with_capacity(p.inputs.len());
    for input in &p.inputs {
        match plot::load(input) {
            Ok(s) => series.push(s),
            Err(e) => {
                eprintln!("loadgen plot: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let svg = plot::render(&p.title, &series);
    if let Err(e) = std::fs::write(&p.out, svg) {
        eprintln!("loadgen plot: cannot write {}: {e}", p.out.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
