//! Helper processes (`kvprobe __target`, `kvprobe __initiator`) that never
//! outlive the process that started them.
//!
//! - Each child asks the kernel to SIGKILL it when its parent dies
//!   (`PR_SET_PDEATHSIG`), and exits at once if the parent is already gone
//!   (the race between fork and prctl).
//! - Each child gets its own process group, so a Ctrl-C at the terminal
//!   reaches only the `sweep` process, which then stops the children itself,
//!   by PID, and keeps what was measured.
//! - Dropping a [`Child`] kills and reaps it if it is still running.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// A helper process this process started.
#[derive(Debug)]
pub struct Child {
    inner: std::process::Child,
    /// `target` or `initiator`.
    pub name: &'static str,
    /// Where its stderr goes.
    pub log: Option<PathBuf>,
    status: Option<ExitStatus>,
}
/// Makes `cmd`'s process die with this one (`PR_SET_PDEATHSIG` SIGKILL,
/// and an exit at once if this process is already gone) and lead a process
/// group of its own, for children that are not kvprobe helpers (the matrix's
/// Ray driver, its pairs' sweeps).
pub fn dies_with_parent(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: getpid is async-signal-safe; read before fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe syscalls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Sends `sig` to the process group `child` leads (a child started with
/// [`dies_with_parent`] or [`spawn`]: a group of its own), so whatever it
/// started gets the signal too. Call it only while `child` has not been
/// waited for, so its id still names it.
pub fn signal_group(child: &std::process::Child, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; the group is the
    // child's own (process_group(0) before exec), not waited for yet.
    unsafe { libc::kill(-(child.id() as i32), sig) };
}

/// Starts this same binary with `args`, extra environment `env`, stdout piped,
/// stdin piped when `stdin`, stderr appended to `log` (or inherited).
pub fn spawn(
    name: &'static str,
    args: &[String],
    env: &[(String, String)],
    stdin: bool,
    log: Option<&Path>,
) -> std::io::Result<Child> {
    spawn_exe(&std::env::current_exe()?, name, args, env, stdin, log, None)
}

/// As [`spawn`], and the child inherits the open file descriptor `fd` under
/// its own number (a connection `kvprobe serve` hands to a target process).
pub fn spawn_with_fd(
    name: &'static str,
    args: &[String],
    env: &[(String, String)],
    log: Option<&Path>,
    fd: std::os::fd::RawFd,
) -> std::io::Result<Child> {
    spawn_exe(&std::env::current_exe()?, name, args, env, false, log, Some(fd))
}

/// As [`spawn`], for another kvprobe executable (benches and tests run from
/// binaries of their own).
pub fn spawn_exe(
    exe: &Path,
    name: &'static str,
    args: &[String],
    env: &[(String, String)],
    stdin: bool,
    log: Option<&Path>,
    keep_fd: Option<std::os::fd::RawFd>,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(args).stdout(Stdio::piped()).stdin(if stdin { Stdio::piped() } else { Stdio::null() });
    for (k, v) in env {
        cmd.env(k, v);
    }
    match log {
        Some(p) => {
            let f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(p)?;
            cmd.stderr(Stdio::from(f));
        }
        None => {
            cmd.stderr(Stdio::inherit());
        }
    }
    cmd.process_group(0);
    // SAFETY: getpid is async-signal-safe; read before fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe syscalls (prctl, getppid, fcntl, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Keep the handed-over descriptor open across exec.
            if let Some(fd) = keep_fd {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let inner = cmd.spawn()?;
    Ok(Child { inner, name, log: log.map(Path::to_path_buf), status: None })
}

impl Child {
    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// Takes its stdin (to write the plan and close it).
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.inner.stdin.take()
    }

    /// Reads its stdout line by line on a thread; the receiver yields lines and
    /// disconnects at EOF.
    pub fn stdout_lines(&mut self) -> Option<Receiver<String>> {
        let out = self.inner.stdout.take()?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        Some(rx)
    }

    /// Its exit status if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.inner.try_wait() {
                self.status = Some(s);
            }
        }
        self.status
    }

    /// Waits up to `limit` for it to exit.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs it (by the PID this process got from spawning it) and reaps it.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_status().is_none() {
            let _ = self.inner.kill();
            if let Ok(s) = self.inner.wait() {
                self.status = Some(s);
            }
        }
        self.status
    }

    /// The last `n` lines of its log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let Some(p) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Describes an exit status in words (`exited with 1`, `killed by signal 9 (SIGKILL)`).
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                libc::SIGKILL => "SIGKILL",
                libc::SIGSEGV => "SIGSEGV",
                libc::SIGABRT => "SIGABRT (NIXL/UCX aborted)",
                libc::SIGBUS => "SIGBUS",
                libc::SIGTERM => "SIGTERM",
                libc::SIGINT => "SIGINT",
                _ => "signal",
            };
            format!("killed by signal {sig} ({name})")
        }
        None => "ended".into(),
    }
}

/// In a helper process: keeps a private copy of stdout for kvprobe's own
/// messages to its parent and points file descriptor 1 at stderr, so whatever
/// NIXL, UCX or anything else prints to stdout (UCX_PROTO_INFO tables, for
/// one) lands in the log instead of corrupting the message stream.
pub fn private_stdout() -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: dup of fd 1 returns a new descriptor we own (checked below).
    let fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fds 1 and 2 are open in a helper (the parent set them up);
    // dup2 atomically replaces 1.
    if unsafe { libc::dup2(2, 1) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// Set by SIGINT/SIGTERM once [`install_interrupt_handler`] ran.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to a flag, so the run can stop cleanly.
pub fn install_interrupt_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an
        // atomic (async-signal-safe); sa_mask empty, no flags.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Whether SIGINT/SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
