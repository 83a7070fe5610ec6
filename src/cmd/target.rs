//! `kvprobe __target`: the target process of a sweep (started by `sweep`).
//!
//! Loads NIXL, binds the control address, prints one JSON line
//! `{"event":"listening","addr":"IP:PORT"}` on stdout, serves one session and
//! exits. The session token comes from `KVPROBE_TOKEN`. With `--sessions N`
//! (`kvprobe tp`: a prefill rank read by N decode ranks) it accepts N
//! initiators and serves them together over one NIXL agent and KV cache.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};

use super::CliError;
use crate::nixl::Nixl;
use crate::peer::Channel;

/// Arguments of `__target`.
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// Control address to bind (only this address).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// NIXL C API library to load.
    #[arg(long)]
    pub nixl_lib: PathBuf,
    /// Give up when no initiator connects, or it sends nothing, for this long.
    #[arg(long, default_value = "300s", value_parser = crate::units::parse_duration)]
    pub idle_timeout: Duration,
    /// A connection `kvprobe serve` accepted and greeted, inherited as this
    /// file descriptor (instead of listening).
    #[arg(long, value_name = "FD")]
    pub control_fd: Option<i32>,
    /// This host's libucp for the raw UCX side (serve's targets: the
    /// initiator's path is another host's).
    #[arg(long, value_name = "PATH")]
    pub ucx_lib: Option<PathBuf>,
    /// Initiators to accept and serve together over one NIXL agent and KV cache.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub sessions: u32,
}

/// Runs the target.
pub fn run(a: TargetArgs) -> Result<ExitCode, CliError> {
    if let Some(fd) = a.control_fd {
        return run_greeted(&a, fd);
    }
    let mut out = crate::child::private_stdout().context("setting up the event stream").map_err(CliError::usage)?;
    let token = std::env::var("KVPROBE_TOKEN").map_err(|_| CliError::usage(anyhow!("KVPROBE_TOKEN is not set")))?;
    let nixl = Nixl::open(&a.nixl_lib).map_err(CliError::usage)?;
    let listener = TcpListener::bind(&a.listen)
        .with_context(|| format!("cannot bind the control address {}", a.listen))
        .map_err(CliError::usage)?;
    let addr = listener.local_addr().context("local address")?;
    writeln!(out, "{}", serde_json::json!({"event": "listening", "addr": addr.to_string()})).context("stdout")?;
    drop(out);
    listener.set_nonblocking(true).context("listener")?;
    let mut chs = Vec::new();
    while chs.len() < a.sessions as usize {
        let start = Instant::now();
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > a.idle_timeout {
                        return Err(CliError::failed(anyhow!(
                            "{} of {} initiators connected within {:?}",
                            chs.len(),
                            a.sessions,
                            a.idle_timeout
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(CliError::failed(anyhow!("accept: {e}"))),
            }
        };
        stream.set_nonblocking(false).context("stream")?;
        chs.push(Channel::new(stream).map_err(CliError::failed)?);
    }
    drop(listener);
    if a.sessions == 1 {
        let mut ch = chs.pop().ok_or_else(|| CliError::failed(anyhow!("no connection")))?;
        crate::engine::target::serve(&mut ch, &token, &nixl, a.idle_timeout).map_err(CliError::failed)?;
    } else {
        // Every hello is checked before any session is served.
        for ch in &mut chs {
            let req = ch
                .recv::<crate::peer::Request>(Some(a.idle_timeout), "an initiator's hello")
                .map_err(CliError::failed)?;
            if let Err(message) = crate::engine::target::check_hello(&req, &token) {
                let _ = ch.send(&crate::peer::Response::Error { message: message.clone() }, "refusal");
                return Err(CliError::failed(anyhow!("handshake refused: {message}")));
            }
        }
        crate::engine::target::serve_sessions(chs, &nixl, a.idle_timeout).map_err(CliError::failed)?;
    }
    for e in crate::nixl::error::take_drop_errors() {
        eprintln!("kvprobe target: while releasing NIXL objects: {e}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Serves the connection `kvprobe serve` handed over (its hello is checked).
fn run_greeted(a: &TargetArgs, fd: i32) -> Result<ExitCode, CliError> {
    use std::os::fd::FromRawFd;
    // Whatever UCX or NIXL print to stdout goes to the session log (stderr);
    // nobody reads this process's stdout.
    drop(crate::child::private_stdout().context("redirecting stdout").map_err(CliError::usage)?);
    if fd < 3 {
        return Err(CliError::usage(anyhow!("--control-fd {fd} is not a handed-over connection")));
    }
    // SAFETY: `kvprobe serve` passed this descriptor (an accepted TCP
    // connection) for this process alone; nothing else here owns it.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    stream.set_nonblocking(false).context("control connection")?;
    let nixl = Nixl::open(&a.nixl_lib).map_err(CliError::usage)?;
    let mut ch = Channel::new(stream).map_err(CliError::failed)?;
    crate::engine::target::serve_greeted(&mut ch, &nixl, a.idle_timeout, a.ucx_lib.as_deref())
        .map_err(CliError::failed)?;
    for e in crate::nixl::error::take_drop_errors() {
        eprintln!("kvprobe target: while releasing NIXL objects: {e}");
    }
    Ok(ExitCode::SUCCESS)
}
