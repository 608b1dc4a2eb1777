//! Upgrade in place (`SIGUSR2`): a new process, from the binary and config file as they are
//! now, takes over the listening sockets themselves and the circuits, and the old one drains
//! once it serves.
//!
//! The sockets are handed over by inheritance, as NGINX's binary upgrade does: the old
//! process starts the new one with its listeners' descriptors open and their numbers in
//! `GATEWAY_UPGRADE`. The kernel keeps one socket, and one accept queue, for both
//! processes, so no client is refused or reset in between: the new process accepts beside
//! the old, then alone. A binding of its own would be a second socket in the port's
//! `SO_REUSEPORT` group, and the old one's queue, with the connections in it, would be
//! reset when it closed. The new process says it serves through a pipe; one that exits
//! first (a bad config, a port it cannot bind) leaves the old one serving as before.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::state::Shared;

/// The variable that hands the sockets over:
/// `parent=PID;listen=FD,FD;admin=FD;ready=FD;state=FD`.
pub const ENV: &str = "GATEWAY_UPGRADE";

/// How long the old process waits for the new one to serve before it stops it.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// The most a new process says through the ready pipe: below `PIPE_BUF` (4096 on Linux),
/// so that one write arrives in one read.
const SAID_MAX: usize = 4000;

/// How long a new process waits for the old one's circuits before it starts without them.
pub const STATE_WITHIN: Duration = Duration::from_secs(5);

/// What a new process was handed by the one it replaces (nothing for a plain start).
#[derive(Default)]
pub struct Inherited {
    /// The old process's ID: the one to tell, and the one the log names.
    pub parent: Option<u32>,
    listen: Vec<OwnedFd>,
    admin: Option<OwnedFd>,
    ready: Option<OwnedFd>,
    /// The read end of the pipe the old process writes its circuits into.
    state: Option<OwnedFd>,
    /// How many of the `listen` sockets were taken: the old process's workers from this
    /// index on hold sockets nobody accepts from once they close theirs.
    adopted: usize,
}

impl Inherited {
    /// Reads [`ENV`]. Its descriptors are taken only if the process that set it is our
    /// parent, and each only if it is what it should be (a listening TCP socket, a pipe):
    /// a variable left in an environment by mistake never takes a descriptor that is
    /// something else.
    pub fn from_env() -> Inherited {
        let Some(text) = std::env::var_os(ENV) else {
            return Inherited::default();
        };
        let text = text.to_string_lossy();
        let mut parent = None;
        let (mut listen, mut admin, mut ready, mut state) = (Vec::new(), None, None, None);
        for part in text.split(';') {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let fds = || value.split(',').filter_map(|v| v.parse::<RawFd>().ok());
            match key {
                "parent" => parent = value.parse::<u32>().ok(),
                "listen" => listen = fds().collect(),
                "admin" => admin = fds().next(),
                "ready" => ready = fds().next(),
                "state" => state = fds().next(),
                _ => {}
            }
        }
        // SAFETY: getppid(2) cannot fail.
        let ppid = unsafe { libc::getppid() } as u32;
        if parent != Some(ppid) {
            log::warn!("{ENV} is set but not by this process's parent ({ppid}); ignored");
            return Inherited::default();
        }
        let own = |fd: RawFd, ok: fn(RawFd) -> bool| {
            // SAFETY: the parent handed this descriptor to us, open, for us alone (checked
            // to be of the kind it says before it is owned).
            ok(fd).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        };
        Inherited {
            parent,
            listen: listen
                .into_iter()
                .filter_map(|fd| own(fd, listening))
                .collect(),
            admin: admin.and_then(|fd| own(fd, listening)),
            ready: ready.and_then(|fd| own(fd, is_pipe)),
            state: state.and_then(|fd| own(fd, is_pipe)),
            adopted: 0,
        }
    }

    /// The old process's circuits ([`Shared::export_breakers`]), read whole within
    /// [`STATE_WITHIN`]; None for a plain start, or when they did not come whole.
    pub fn breakers(&mut self) -> Option<String> {
        let mut pipe = std::fs::File::from(self.state.take()?);
        let deadline = std::time::Instant::now() + STATE_WITHIN;
        let mut text = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let read = wait_readable(pipe.as_raw_fd(), left).and_then(|()| pipe.read(&mut chunk));
            match read {
                Ok(0) => return String::from_utf8(text).ok(),
                Ok(n) => text.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("upgrade: the old process's circuits did not come whole ({e}); every circuit starts closed");
                    return None;
                }
            }
        }
    }

    /// Whether a listener bound to `addr` was handed over (for `listen` or `admin`).
    pub fn holds(&self, addr: SocketAddr) -> bool {
        self.listen.iter().chain(&self.admin).any(|fd| {
            socket2::SockRef::from(fd)
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .is_some_and(|a| same_address(a, addr))
        })
    }

    /// The inherited listeners bound to `addr` (any port of its IP when its port is 0, as
    /// at the first start), as many as `want`; the others are closed here. Empty when
    /// `listen` changed: then the new address is bound afresh, and the old one is let go
    /// with the old process.
    pub fn take_listeners(&mut self, addr: SocketAddr, want: usize) -> Vec<TcpListener> {
        let mut taken = Vec::new();
        for fd in self.listen.drain(..) {
            let l = TcpListener::from(fd);
            if taken.len() < want && l.local_addr().is_ok_and(|a| same_address(a, addr)) {
                taken.push(l);
            }
        }
        self.adopted = taken.len();
        taken
    }

    /// The inherited admin listener, if it is bound to `addr`.
    pub fn take_admin(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let l = TcpListener::from(self.admin.take()?);
        l.local_addr()
            .is_ok_and(|a| same_address(a, addr))
            .then_some(l)
    }

    /// Closes what was handed over and not taken (an address the config no longer names):
    /// kept open, it would queue clients nobody accepts once the old process is gone.
    pub fn close_unused(&mut self) {
        self.listen.clear();
        self.admin = None;
    }

    /// Tells the old process why this one will not serve (a config that does not load, a
    /// port it cannot bind), for its log and `/admin/config`: "exited before serving" sent
    /// the operator to this process's own log lines (an operator review). One write of at
    /// most [`SAID_MAX`] bytes, which a pipe delivers whole.
    pub fn cannot_serve(&mut self, why: &str) {
        if let Some(fd) = self.ready.take() {
            let mut text = format!("failed {}", why.replace('\n', "; "));
            if text.len() > SAID_MAX {
                let mut end = SAID_MAX;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
            if let Err(e) = std::fs::File::from(fd).write_all(text.as_bytes()) {
                log::warn!("upgrade: cannot tell the old process why this one stops: {e}");
            }
        }
    }

    /// Tells the old process that this one serves, and how many of its sockets it took:
    /// it drains from now on.
    pub fn serving(&mut self) {
        if let Some(fd) = self.ready.take() {
            let mut pipe = std::fs::File::from(fd);
            if let Err(e) = pipe.write_all(format!("ready {}", self.adopted).as_bytes()) {
                log::warn!("upgrade: cannot tell the old process that this one serves: {e}");
            }
        }
    }
}

/// Whether `bound` is what the config's `want` asks for (port 0: any port).
fn same_address(bound: SocketAddr, want: SocketAddr) -> bool {
    bound.ip() == want.ip() && (want.port() == 0 || bound.port() == want.port())
}

/// A listening TCP socket.
fn listening(fd: RawFd) -> bool {
    use crate::io::socket_opt;
    socket_opt(fd, libc::SO_ACCEPTCONN) == Some(1)
        && socket_opt(fd, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
}

/// A pipe (the ready signal's, the circuits').
fn is_pipe(fd: RawFd) -> bool {
    // SAFETY: fstat into a struct we own; a closed descriptor just fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::fstat(fd, &mut st) };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
}

/// The old side: what a new process is started from and handed. Its descriptors are
/// duplicates of the workers' and the admin's listeners, held until the drain begins
/// (then let go, so that a drain without an upgrade closes the sockets and refuses new
/// clients as before).
pub struct Handover {
    exe: PathBuf,
    args: Vec<OsString>,
    listen: Vec<OwnedFd>,
    admin: Option<OwnedFd>,
    busy: Arc<AtomicBool>,
    /// The new process while it runs and is not reaped (0: none): a stop asked of this
    /// process before the new one took over stops that one too.
    child: Arc<Mutex<u32>>,
}

impl Handover {
    /// Duplicates of `listen` and `admin`, and the program ([`program`]) and arguments of
    /// this start.
    pub fn new(
        exe: PathBuf,
        args: Vec<OsString>,
        listen: &[TcpListener],
        admin: Option<&TcpListener>,
    ) -> std::io::Result<Handover> {
        let dup = |l: &TcpListener| l.try_clone().map(OwnedFd::from);
        Ok(Handover {
            exe,
            args,
            listen: listen.iter().map(dup).collect::<Result<_, _>>()?,
            admin: admin.map(dup).transpose()?,
            busy: Arc::new(AtomicBool::new(false)),
            child: Arc::new(Mutex::new(0)),
        })
    }

    /// A stop (`SIGTERM`, `SIGINT`, `SIGQUIT`) came before the new process took over: it is
    /// stopped too, as the service is (a review: the new process took over after the old
    /// one had drained for a `SIGTERM`, and went on serving). Set `Shared::stopping` first.
    pub fn stop_child(&self) {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if *child != 0 {
            log::warn!(
                "upgrade: stopping process {} too: this stop came before it took over",
                *child
            );
            // SAFETY: kill(2) on our own child, not yet reaped (the lock keeps it so).
            unsafe { libc::kill(*child as i32, libc::SIGTERM) };
        }
    }

    /// Starts the new process and a thread that waits for it: once it serves, `handed_over`
    /// is set and `SIGWINCH` sent to this process, whose signal loop then drains it. Does
    /// nothing (but say so) while another upgrade is under way or the process stops.
    pub fn begin(&self, shared: &Arc<Shared>) {
        if shared.is_stopping() {
            log::warn!("upgrade: this process is stopping; SIGUSR2 ignored");
            return;
        }
        if self.busy.swap(true, Ordering::SeqCst) {
            log::warn!("upgrade: one is under way already; SIGUSR2 ignored");
            return;
        }
        if let Err(e) = self.spawn(shared) {
            let why = format!("cannot start {}: {e}", self.exe.display());
            shared.upgrades.failed(&why, "still serving here");
            self.busy.store(false, Ordering::SeqCst);
        }
    }

    fn spawn(&self, shared: &Arc<Shared>) -> std::io::Result<()> {
        let (read, write) = pipe()?;
        let (state_read, state_write) = pipe()?;
        let listen: Vec<RawFd> = self.listen.iter().map(AsRawFd::as_raw_fd).collect();
        let admin = self.admin.as_ref().map(AsRawFd::as_raw_fd);
        let list = |fds: &[RawFd]| {
            fds.iter()
                .map(|fd| fd.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let value = format!(
            "parent={};listen={};admin={};ready={};state={}",
            std::process::id(),
            list(&listen),
            admin.map(|fd| fd.to_string()).unwrap_or_default(),
            write.as_raw_fd(),
            state_read.as_raw_fd()
        );
        let mut open: Vec<RawFd> = listen;
        open.extend(admin);
        open.extend([write.as_raw_fd(), state_read.as_raw_fd()]);
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args).env(ENV, value);
        // SAFETY: between fork and exec only async-signal-safe calls: close_range(2) and
        // fcntl(2) on descriptors of the child's own copy of the table.
        unsafe {
            cmd.pre_exec(move || {
                // Every descriptor is close-on-exec already (std, socket2 and monoio open
                // them so); made sure of, so that no client connection can outlive the old
                // process in the new one.
                libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as i32);
                for &fd in &open {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        drop((write, state_read));
        let pid = child.id();
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = pid;
        log::info!(
            "upgrade: started {} as process {pid}; this one ({}) serves until it does",
            self.exe.display(),
            std::process::id()
        );
        let (busy, shared, held) = (self.busy.clone(), shared.clone(), self.child.clone());
        // To give this process's sockets their share back if the new one fails: the
        // program it attached (`steer_to_first`) outlives it, for the whole group.
        let ours = self.listen.len();
        let first = self.listen.first().and_then(|fd| fd.try_clone().ok());
        std::thread::Builder::new()
            .name("upgrade".into())
            .spawn(move || {
                // The circuits as they are now, from a thread of their own: a new process
                // that does not read them (stalled, or not ours) must not hold up the wait
                // below and its limit (a review). One that exits or is stopped ends it.
                let circuits = shared.export_breakers();
                let _ = std::thread::Builder::new()
                    .name("upgrade-state".into())
                    .spawn(move || {
                        let _ = std::fs::File::from(state_write).write_all(circuits.as_bytes());
                    });
                let mut read = std::fs::File::from(read);
                // `ready N`: it took our first N listeners; `failed WHY`: it will not
                // serve ([`Inherited::cannot_serve`]). One read: a write of at most
                // `SAID_MAX` bytes to a pipe arrives whole, and the write end may stay open
                // in a process the new one started.
                let mut said = vec![0u8; SAID_MAX];
                let mut timed_out = false;
                let mut its_reason = None;
                let ready = match wait_readable(read.as_raw_fd(), READY_WITHIN)
                    .and_then(|()| read.read(&mut said))
                {
                    Ok(n) if said[..n].starts_with(b"ready") => {
                        let taken = std::str::from_utf8(&said[5..n])
                            .ok()
                            .and_then(|t| t.trim().parse().ok())
                            .unwrap_or(0);
                        shared.listeners_taken.store(taken, Ordering::SeqCst);
                        true
                    }
                    Ok(n) if said[..n].starts_with(b"failed ") => {
                        its_reason = Some(String::from_utf8_lossy(&said[7..n]).into_owned());
                        false
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        let why = format!(
                            "process {pid} did not serve within {}s",
                            READY_WITHIN.as_secs()
                        );
                        shared.upgrades.failed(&why, "stopping it, still serving here");
                        let _ = child.kill();
                        timed_out = true;
                        false
                    }
                    _ => false,
                };
                // Unless a stop came first (the signal loop then stops the new process).
                if ready && shared.hand_over() {
                    log::info!(
                        "upgrade: process {pid} serves; draining this one ({})",
                        std::process::id()
                    );
                    // SAFETY: kill(2) to this very process.
                    unsafe { libc::kill(libc::getpid(), libc::SIGWINCH) };
                }
                // Reaped when it exits, even while this process still drains (a review
                // saw one upgraded again in the meantime linger as a zombie); forgotten
                // before it is reaped, so that `stop_child` never signals a reused PID.
                exited(pid);
                *held.lock().unwrap_or_else(|e| e.into_inner()) = 0;
                let status = child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                if !ready && shared.is_stopping() {
                    log::info!("upgrade: process {pid} stopped with this one ({status})");
                } else if !ready {
                    // One stopped for its time was counted then.
                    let failure = match (timed_out, its_reason) {
                        (true, _) => None,
                        (false, Some(reason)) => Some((
                            format!("process {pid} could not serve: {reason}"),
                            "still serving here",
                        )),
                        (false, None) => Some((
                            format!("process {pid} exited ({status}) before serving"),
                            "its log says why; still serving here",
                        )),
                    };
                    // Its program may send every connection to fewer sockets than this
                    // process has (a review: workers idle until the next upgrade).
                    if let Some(fd) = first {
                        if let Err(e) = steer_to_first(&TcpListener::from(fd), ours) {
                            log::warn!("upgrade: cannot spread new connections over this process's {ours} sockets again: {e}");
                        }
                    }
                    busy.store(false, Ordering::SeqCst);
                    // Said once the next SIGUSR2 can start an upgrade: one sent as the
                    // failure is seen was ignored as "under way already" (a review).
                    if let Some((why, then)) = failure {
                        shared.upgrades.failed(&why, then);
                    }
                }
            })?;
        Ok(())
    }

    /// Lets go of the duplicates (the drain begins: the sockets close with the workers').
    pub fn release(&mut self) {
        self.listen.clear();
        self.admin = None;
    }
}

/// How long a worker of the old process whose socket the new one did not take goes on
/// taking connections from it after the hand-over: a client's handshake that began before
/// [`steer_to_first`] may complete up to a round trip later, and a socket closed with it
/// pending would reset it.
pub const LINGER: Duration = Duration::from_secs(1);

/// Sends every new connection of the listeners' `SO_REUSEPORT` group to its first `n`
/// sockets, at random (a classic BPF program, `SO_ATTACH_REUSEPORT_CBPF`, for the whole
/// group): a new process with fewer workers than the old one had takes the group's first
/// sockets, and the old one's other sockets, closed with it, must get no new clients to
/// reset meanwhile (without it, a connection in 100 000 was reset at such an upgrade).
/// The group's order is the order its sockets joined, and a socket that leaves is
/// replaced by the last, so the first `n` stay this process's own.
pub fn steer_to_first(listener: &TcpListener, n: usize) -> std::io::Result<()> {
    const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut code = [
        op(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32,
        ),
        op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n.max(1) as u32),
        op(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: setsockopt(2) with a pointer to a sock_fprog whose program outlives the call.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Waits until the child `pid` has exited, without reaping it.
fn exited(pid: u32) {
    loop {
        // SAFETY: an all-zero siginfo_t is valid for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) on our own child; WNOWAIT leaves it to be reaped.
        let r = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// The program as this process was started: `argv[0]` made absolute without following a
/// symbolic link (a link switched to another version runs that version, as NGINX's
/// upgrade re-runs `argv[0]`; `/proc/self/exe` names the file behind the link, and the
/// deleted file after `install` replaced it), looked up on `PATH` when it names no
/// directory; this image's path if it cannot be found.
pub fn program() -> std::io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if let Some(arg0) = std::env::args_os().next().filter(|a| !a.is_empty()) {
        if arg0.as_bytes().contains(&b'/') {
            return std::path::absolute(arg0);
        }
        let paths = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(&arg0);
            if executable(&candidate) {
                return std::path::absolute(candidate);
            }
        }
    }
    std::env::current_exe()
}

/// A file this process may execute.
fn executable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access(2) on a NUL-terminated path we own.
    path.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
}

/// A pipe whose ends are close-on-exec (the write end is made inheritable in the child).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just opened by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits until `fd` is readable (data or EOF), at most `within`.
fn wait_readable(fd: RawFd, within: Duration) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n > 0 {
            return Ok(());
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_matches_its_address_or_any_port_of_its_ip() {
        let a: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        assert!(same_address(a, a));
        assert!(same_address(a, "127.0.0.1:0".parse().unwrap()));
        assert!(!same_address(a, "127.0.0.1:8001".parse().unwrap()));
        assert!(!same_address(a, "0.0.0.0:8000".parse().unwrap()));
    }

    #[test]
    fn only_listening_sockets_and_pipes_are_taken() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (r, w) = pipe().unwrap();
        assert!(listening(l.as_raw_fd()));
        assert!(!listening(c.as_raw_fd()));
        assert!(!listening(r.as_raw_fd()));
        assert!(is_pipe(w.as_raw_fd()));
        assert!(!is_pipe(l.as_raw_fd()));
    }
}
