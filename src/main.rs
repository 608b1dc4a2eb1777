//! `gateway` command line: parse arguments, load the config, run.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use gateway::Config;

const USAGE: &str = "\
usage: gateway [--config PATH] [--pid-file PATH]
                                         run (default ./config.yaml) until SIGTERM/SIGINT/
                                         SIGQUIT (graceful drain; a second one exits now);
                                         SIGHUP reloads the config, SIGUSR1 reopens the
                                         access log, SIGUSR2 upgrades in place (starts the
                                         program again on the same sockets);
                                         --pid-file: write the process ID there once serving
       gateway --check [--config PATH]   validate the config, print a summary, exit 0 or 1
                                         (-t, as for NGINX and HAProxy)
       (-c PATH, --config=PATH and --pid-file=PATH work too)
       gateway --version | --help

environment: RUST_LOG=LEVEL[,MODULE=LEVEL...], LEVEL one of off|error|warn|info|debug|trace
             (default info), e.g. RUST_LOG=warn,gateway::admin=debug";

fn main() -> ExitCode {
    let mut config: Option<PathBuf> = None;
    let mut pid_file: Option<PathBuf> = None;
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // `--config=PATH` as most tools take it (an operator review had it refused).
        let (a, inline) = match a.split_once('=') {
            Some((flag @ ("--config" | "--pid-file"), p)) => {
                (flag.to_string(), Some(p.to_string()))
            }
            _ => (a, None),
        };
        match a.as_str() {
            "--config" | "-c" => match inline.or_else(|| args.next()) {
                // A second one silently won: say which was meant instead.
                Some(_) if config.is_some() => return usage_error("--config given twice"),
                Some(p) if !p.is_empty() => config = Some(PathBuf::from(p)),
                _ => return usage_error("--config needs a path"),
            },
            "--pid-file" => match inline.or_else(|| args.next()) {
                Some(_) if pid_file.is_some() => return usage_error("--pid-file given twice"),
                Some(p) if !p.is_empty() => pid_file = Some(PathBuf::from(p)),
                _ => return usage_error("--pid-file needs a path"),
            },
            // `-t`, as NGINX and HAProxy spell it (an operator review had it refused).
            "--check" | "-t" => check = true,
            "--version" | "-V" => {
                say(&format!("gateway {}\n", gateway::VERSION));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                say(&format!("{USAGE}\n"));
                return ExitCode::SUCCESS;
            }
            // `gateway config.yaml`, as a new user types it: say how it is written.
            other if !other.starts_with('-') => {
                return usage_error(&format!(
                    "unknown argument {other:?}: a config file is given as --config {other}"
                ))
            }
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }
    let defaulted = config.is_none();
    let config = config.unwrap_or_else(|| PathBuf::from("config.yaml"));
    gateway::logging::init();
    // What stops a start is a log line like any other (time, level), for whatever collects
    // the log (an operator review); `--check` and usage errors talk to a person.
    let fatal = |msg: &str| {
        if check {
            complain(msg)
        } else {
            gateway::logging::fatal(msg)
        }
    };
    let cfg = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            // The default file missing is said with the way to name another (an operator
            // review: `gateway --check` with no file here did not mention `--config`); a
            // file named with it, or one a reload cannot read, is not.
            let hint = match &e {
                gateway::config::ConfigError::Read { source, .. }
                    if defaulted && source.kind() == std::io::ErrorKind::NotFound =>
                {
                    " (no --config given: name the file with --config PATH)"
                }
                _ => "",
            };
            // Several services' errors: one per line for a person, one line in the log.
            let e = match &e {
                gateway::config::ConfigError::Several(all) if check => {
                    use gateway::config::ConfigError::{InFile, Syntax};
                    let lines: Vec<String> = all
                        .iter()
                        .map(|e| match e {
                            InFile { key, message, .. } => format!("  {key}: {message}"),
                            Syntax { message, .. } => format!("  {message}"),
                            other => format!("  {other}"),
                        })
                        .collect();
                    format!(
                        "{}: {} errors:\n{}",
                        config.display(),
                        e.count(),
                        lines.join("\n")
                    )
                }
                _ => e.to_string(),
            };
            let msg = format!("invalid config: {}{hint}", gateway::redact::userinfo(&e));
            fatal(&msg);
            if !check {
                // An upgrade's old process says why too (`SIGUSR2`).
                gateway::upgrade::Inherited::from_env().cannot_serve(&msg);
            }
            return ExitCode::FAILURE;
        }
    };
    if check {
        if let Err(e) = cfg.check_access_log() {
            complain(&format!("invalid config: {}: {e}", config.display()));
            return ExitCode::FAILURE;
        }
        let in_use = match gateway::server::check_binds(&cfg) {
            Ok(notes) => notes,
            Err(e) => {
                // The file is valid; the machine cannot run it as written.
                complain(&format!("{}: valid, but {e}", config.display()));
                return ExitCode::FAILURE;
            }
        };
        // Totals, not a reload's diff from nothing (`services +2 [...] -0 =0`, which a new
        // user's review read as a diff of something).
        let plural = gateway::logging::plural;
        let services = cfg.services.len() as u64;
        let backends: u64 = cfg.services.iter().map(|s| s.backends.len() as u64).sum();
        let mut text = format!(
            "{}: OK\n{}{services} {}, {backends} {}\n",
            config.display(),
            cfg.summary(),
            plural(services, "service", "services"),
            plural(backends, "backend", "backends"),
        );
        // What the descriptor limit of this shell allows (the gateway raises its soft
        // limit to the hard one at start).
        let fds = gateway::fdlimit::would_run_with();
        let (line, warning) = gateway::fdlimit::budget(&cfg, fds);
        text +=
            &format!("descriptors: a gateway started here would have a limit of {fds}; {line}\n");
        let metrics = gateway::metrics::beyond_tables(services as usize, backends as usize);
        for w in warning
            .into_iter()
            .chain(gateway::server::start_warnings(&cfg))
            .chain(metrics)
        {
            text += &format!("warning: {w}\n");
        }
        for n in in_use {
            text += &format!("note: {n}\n");
        }
        say(&text);
        return ExitCode::SUCCESS;
    }
    match gateway::run(cfg, config, pid_file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            fatal(&e.to_string());
            ExitCode::FAILURE
        }
    }
}

/// The error, the forms of the command in brief and where the rest is (as git and cargo
/// say it): the whole help after every mistyped flag buried the error (an operator review).
fn usage_error(msg: &str) -> ExitCode {
    complain(&format!("{msg}\n{SHORT_USAGE}"));
    ExitCode::from(2)
}

const SHORT_USAGE: &str = "\
usage: gateway [--config PATH] [--pid-file PATH] | gateway --check [--config PATH] | gateway --version
(gateway --help says more)";

/// Writes to stdout. A reader that has gone (`gateway --check | head -1`) is no error of
/// ours: the exit code still says what was found (`println!` panicked there, exit 101).
fn say(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Writes `gateway: {msg}` to stderr, whether or not anyone reads it.
fn complain(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "gateway: {msg}");
}
