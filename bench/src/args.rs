//! Command-line parsing for the `run` (default) and `plot` modes: flags, durations, and the target URL.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage:
  loadgen --url http://HOST[:PORT]/PATH [options]
  loadgen plot --out plot.svg [--title T] RESULT.json|RESULT.hgrm ...

run options:
  --url URL            target (http only), required
  --connections N      keep-alive connections, spread over threads (default 64)
  --threads N          runtime threads (default 1)
  --cores LIST         pin thread i to core LIST[i % len], e.g. 0,1 (default: no pinning)
  --duration D         measured period, e.g. 10s, 500ms, 1m (default 10s)
  --warmup D           unrecorded period before measuring (default 2s)
  --rate R             0 = closed loop; >0 = open loop at R req/s in total (default 0)
  --method M           request method (default GET)
  --body-size N        request body bytes (default 0)
  --header 'N: V'      extra request header, repeatable
  --label L            name used in output and file names (default loadgen)
  --out-dir DIR        write DIR/<label>.hgrm and DIR/<label>.json
  --timeout D          per-request (and per-connect) timeout (default 5s)
";

/// A parsed `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host header value (host[:port] as written).
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with '/'.
    pub path: String,
}

/// Everything a load run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub url: String,
    pub target: Target,
    pub addr: SocketAddr,
    pub connections: usize,
    pub threads: usize,
    pub cores: Vec<usize>,
    pub duration: Duration,
    pub warmup: Duration,
    pub rate: f64,
    pub method: String,
    pub body_size: usize,
    pub headers: Vec<(String, String)>,
    pub label: String,
    pub out_dir: Option<PathBuf>,
    pub timeout: Duration,
}

/// Options of `loadgen plot`.
#[derive(Debug, Clone)]
pub struct PlotConfig {
    pub out: PathBuf,
    pub title: String,
    pub inputs: Vec<PathBuf>,
}

#[derive(Debug)]
pub enum Command {
    Run(Box<RunConfig>),
    Plot(PlotConfig),
    Help,
}

/// Parse arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Command, String> {
    match args.first().map(String::as_str) {
        Some("plot") => parse_plot(&args[1..]).map(Command::Plot),
        Some("run") => parse_run(&args[1..]).map(|c| Command::Run(Box::new(c))),
        Some("-h" | "--help" | "help") => Ok(Command::Help),
        _ => parse_run(args).map(|c| Command::Run(Box::new(c))),
    }
}

fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, String> {
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn number<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{flag}: invalid number {s:?}"))
}

fn parse_run(args: &[String]) -> Result<RunConfig, String> {
    let mut url = None;
    let mut connections = 64usize;
    let mut threads = 1usize;
    let mut cores = Vec::new();
    let mut duration = Duration::from_secs(10);
    let mut warmup = Duration::from_secs(2);
    let mut rate = 0f64;
    let mut method = "GET".to_string();
    let mut body_size = 0usize;
    let mut headers = Vec::new();
    let mut label = "loadgen".to_string();
    let mut out_dir = None;
    let mut timeout = Duration::from_secs(5);

    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (flag, None),
        };
        let val = |i: &mut usize| -> Result<String, String> {
            match inline {
                Some(v) => Ok(v.to_string()),
                None => value(args, i, flag).map(str::to_string),
            }
        };
        match flag {
            "--url" | "-u" => url = Some(val(&mut i)?),
            "--connections" | "-c" => connections = number(&val(&mut i)?, flag)?,
            "--threads" | "-t" => threads = number(&val(&mut i)?, flag)?,
            "--cores" => {
                cores = val(&mut i)?
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| number(s, flag))
                    .collect::<Result<_, _>>()?
            }
            "--duration" | "-d" => duration = parse_duration(&val(&mut i)?)?,
            "--warmup" => warmup = parse_duration(&val(&mut i)?)?,
            "--rate" | "-R" => rate = number(&val(&mut i)?, flag)?,
            "--method" | "-m" => method = val(&mut i)?.to_ascii_uppercase(),
            "--body-size" => body_size = number(&val(&mut i)?, flag)?,
            "--header" | "-H" => {
                let h = val(&mut i)?;
                let (n, v) = h
                    .split_once(':')
                    .ok_or_else(|| format!("--header: expected 'Name: value', got {h:?}"))?;
                let n = n.trim();
                if n.is_empty() || n.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(format!("--header: invalid header name {n:?}"));
                }
                if v.contains(['\r', '\n']) {
                    return Err("--header: value must not contain CR or LF".into());
                }
                headers.push((n.to_string(), v.trim().to_string()));
            }
            "--label" | "-l" => label = val(&mut i)?,
            "--out-dir" | "-o" => out_dir = Some(PathBuf::from(val(&mut i)?)),
            "--timeout" => timeout = parse_duration(&val(&mut i)?)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
        i += 1;
    }

    let url = url.ok_or("--url is required")?;
    let target = parse_url(&url)?;
    if connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if threads > connections {
        return Err(format!(
            "--threads ({threads}) must not exceed --connections ({connections})"
        ));
    }
    if duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    if timeout.is_zero() {
        return Err("--timeout must be positive".into());
    }
    if !rate.is_finite() || rate < 0.0 {
        return Err("--rate must be a non-negative number".into());
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("--method: invalid method {method:?}"));
    }
    if label.is_empty() || label.contains(['/', '\\']) {
        return Err("--label must be non-empty and contain no path separators".into());
    }
    let addr = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .next()
        .ok_or_else(|| format!("no address for {}", target.host))?;
    Ok(RunConfig {
        url,
        target,
        addr,
        connections,
        threads,
        cores,
        duration,
        warmup,
        rate,
        method,
        body_size,
        headers,
        label,
        out_dir,
        timeout,
    })
}

fn parse_plot(args: &[String]) -> Result<PlotConfig, String> {
    let mut out = None;
    let mut title = "Latency by percentile".to_string();
    let mut inputs = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--out" | "-o" => out = Some(PathBuf::from(value(args, &mut i, "--out")?)),
            "--title" => title = value(args, &mut i, "--title")?.to_string(),
            s if s.starts_with('-') => return Err(format!("unknown argument {s:?}")),
            s => inputs.push(PathBuf::from(s)),
        }
        i += 1;
    }
    let out = out.ok_or("plot: --out is required")?;
    if inputs.is_empty() {
        return Err("plot: at least one input file is required".into());
    }
    Ok(PlotConfig { out, title, inputs })
}

/// Parse `10s`, `500ms`, `2m`, `1.5s`, `250us`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?}")),
    };
    if !secs.is_finite() || secs > 1e7 {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse `http://host[:port][/path][?query]`.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported: {url:?}"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let path = match path.split_once('#') {
        Some((p, _)) => p.to_string(),
        None => path,
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("invalid host in URL {url:?}"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("invalid IPv6 host in {url:?}"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => number(p, "port")?,
            None if after.is_empty() => 80,
            None => return Err(format!("invalid authority in {url:?}")),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), number(p, "port")?),
            None => (authority.to_string(), 80),
        }
    };
    if host.is_empty() || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("invalid URL {url:?}"));
    }
    Ok(Target {
        authority: authority.to_string(),
        host,
        port,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8000/v1/proxy/x?y=1").unwrap();
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.port, 8000);
        assert_eq!(t.path, "/v1/proxy/x?y=1");
        assert_eq!(t.authority, "127.0.0.1:8000");
        let t = parse_url("http://localhost").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let t = parse_url("http://[::1]:9/a").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        let t = parse_url("http://h?q").unwrap();
        assert_eq!(t.path, "/?q");
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:notaport/").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn run_flags() {
        let args = strings(&[
            "--url=http://127.0.0.1:1/p",
            "-c",
            "8",
            "--threads",
            "2",
            "--cores",
            "0,1",
            "--rate",
            "1000",
            "--header",
            "X-A: b c",
            "--method",
            "post",
        ]);
        let Command::Run(c) = parse(&args).unwrap() else {
            panic!("expected run")
        };
        assert_eq!(c.connections, 8);
        assert_eq!(c.threads, 2);
        assert_eq!(c.cores, vec![0, 1]);
        assert_eq!(c.rate, 1000.0);
        assert_eq!(c.method, "POST");
        assert_eq!(c.headers, vec![("X-A".to_string(), "b c".to_string())]);
        assert!(parse(&strings(&["--connections", "0", "--url", "http://a/"])).is_err());
        assert!(parse(&strings(&["--bogus"])).is_err());
        assert!(parse(&strings(&["--url"])).is_err());
    }

    #[test]
    fn plot_flags() {
        let Command::Plot(p) = parse(&strings(&["plot", "--out", "x.svg", "a.json"])).unwrap()
        else {
            panic!("expected plot")
        };
        assert_eq!(p.inputs.len(), 1);
        assert!(parse(&strings(&["plot", "a.json"])).is_err());
    }
}
