//! `gateway` command line: parse arguments, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;

use gateway::Config;

const USAGE: &str = "\
usage: gateway [--config PATH]           run (default ./config.yaml) until SIGTERM/SIGINT
       gateway --check [--config PATH]   validate the config, print a summary, exit 0 or 1
       (-c PATH and --config=PATH work too)
       gateway --version | --help

environment: RUST_LOG=LEVEL[,MODULE=LEVEL...], LEVEL one of off|error|warn|info|debug|trace
             (default info), e.g. RUST_LOG=warn,gateway::admin=debug";

fn main() -> ExitCode {
    let mut config: Option<PathBuf> = None;
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // `--config=PATH` as most tools take it (an operator review had it refused).
        let (a, inline) = match a.split_once('=') {
            Some(("--config", p)) => ("--config".to_string(), Some(p.to_string())),
            _ => (a, None),
        };
        match a.as_str() {
            "--config" | "-c" => match inline.or_else(|| args.next()) {
                // A second one silently won: say which was meant instead.
                Some(_) if config.is_some() => return usage_error("--config given twice"),
                Some(p) if !p.is_empty() => config = Some(PathBuf::from(p)),
                _ => return usage_error("--config needs a path"),
            },
            "--check" => check = true,
            "--version" | "-V" => {
                println!("gateway {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }
    let config = config.unwrap_or_else(|| PathBuf::from("config.yaml"));
    gateway::logging::init();
    let cfg = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            let e = e.to_string();
            eprintln!("gateway: invalid config: {}", gateway::redact::userinfo(&e));
            return ExitCode::FAILURE;
        }
    };
    if check {
        if let Err(e) = cfg.check_access_log() {
            eprintln!("gateway: invalid config: {e}");
            return ExitCode::FAILURE;
        }
        let changes = gateway::reload::diff(None, &cfg);
        print!("{}: OK\n{}{changes}\n", config.display(), cfg.summary());
        // What the descriptor limit of this shell allows (the gateway raises its soft
        // limit to the hard one at start).
        let fds = gateway::fdlimit::would_run_with();
        let (line, warning) = gateway::fdlimit::budget(&cfg, fds);
        println!("descriptors: a gateway started here would have a limit of {fds}; {line}");
        if let Some(w) = warning {
            println!("warning: {w}");
        }
        for w in gateway::server::start_warnings(&cfg) {
            println!("warning: {w}");
        }
        return ExitCode::SUCCESS;
    }
    match gateway::run(cfg, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("gateway: {msg}\n{USAGE}");
    ExitCode::from(2)
}
