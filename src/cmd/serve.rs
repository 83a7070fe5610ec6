//! `kvprobe serve`: the far end of a sweep run from another host (or from
//! this one, for the pack placement).
//!
//! Binds only the address it is given and prints a random session token. For
//! each connection it checks the initiator's hello (token, protocol) within a
//! timeout; an accepted connection is handed to a fresh `kvprobe __target`
//! process, because UCX reads its environment once and a crash inside NIXL or
//! UCX must end only that session. One sweep at a time: a second initiator is
//! refused with a message naming the one being served. The accept loop and
//! the handshakes run on tokio, so a silent or slow client never holds up the
//! next one; the session itself (UCX progress interleaved with control
//! requests) runs in the target process on the blocking channel.

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};
use serde_json::json;

use super::CliError;
use crate::child;
use crate::locate::{self, Inputs};
use crate::nixl::Nixl;
use crate::peer::{self, Request, Response};

/// Arguments of `kvprobe serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to bind: only this one (use this host's address on the network to measure; 0.0.0.0 only if you mean it)
    #[arg(long, default_value = "127.0.0.1:7700", value_name = "ADDR:PORT")]
    pub listen: String,
    /// NIXL C API library (libnixl_capi.so) or a folder holding it [env: KVPROBE_NIXL_LIB]
    #[arg(long, value_name = "PATH")]
    pub nixl_lib: Option<PathBuf>,
    /// A session's target gives up when its initiator sends nothing for this long
    #[arg(long, default_value = "300s", value_parser = crate::units::parse_duration)]
    pub idle_timeout: Duration,
    /// A connection must present its hello within this time
    #[arg(long, default_value = "10s", value_parser = crate::units::parse_duration)]
    pub handshake_timeout: Duration,
    /// Exit after the first session ends
    #[arg(long)]
    pub once: bool,
    /// Stop a session's target after this long, whatever it is doing (a NIXL call that never returns must not hold the slot forever)
    #[arg(long, default_value = "7200s", value_parser = crate::units::parse_duration)]
    pub max_session: Duration,
    /// Where each session's target log goes [default: results/serve-<UTC time>]
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Print JSON lines (listening, session, refused, ended) instead of text
    #[arg(long)]
    pub json: bool,
}

/// The session being served.
#[derive(Debug, Clone)]
struct Active {
    peer: SocketAddr,
    since: Instant,
    pid: u32,
}

/// What every connection handler shares.
struct Shared {
    token: String,
    active: Mutex<Option<Active>>,
    sessions: std::sync::atomic::AtomicUsize,
    out: Mutex<Printer>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    handshake_timeout: Duration,
    max_session: Duration,
}

/// Event lines, as text or JSON.
struct Printer {
    json: bool,
}

impl Printer {
    fn event(&self, v: serde_json::Value, text: String) {
        let line = if self.json { v.to_string() } else { text };
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    }
}

/// Runs `serve` until interrupted (or, with `--once`, until a session ends).
pub fn run(a: ServeArgs) -> Result<ExitCode, CliError> {
    child::install_interrupt_handler();
    let loc = locate::locate(&Inputs::from_env(a.nixl_lib.clone())).map_err(CliError::usage)?;
    // Refuse now, not per session, when NIXL cannot load.
    let nixl = Nixl::open(&loc.lib).map_err(CliError::usage)?;
    let version = nixl.version().or_else(|| loc.version.clone()).unwrap_or_else(|| "unknown version".into());
    drop(nixl);
    let log_dir = super::out_dir(a.log_dir.as_deref(), "serve", SystemTime::now());
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create the log folder {}", log_dir.display()))
        .map_err(CliError::usage)?;
    // As a sweep's helpers get it, without pinning UCX to loopback.
    let env = super::sweep::child_env(&loc, None, false);
    let idle = format!("{}ms", a.idle_timeout.as_millis());
    let lib = loc.lib.display().to_string();
    let mut target_args: Vec<String> = vec!["__target".into(), "--nixl-lib".into(), lib, "--idle-timeout".into(), idle];
    // The raw UCX side uses this host's UCX (the build NIXL links here).
    if let Ok(u) = locate::locate_ucx(None, Some(&loc)) {
        target_args.extend(["--ucx-lib".to_string(), u.lib.display().to_string()]);
    }
    let shared = Arc::new(Shared {
        token: peer::new_token(),
        active: Mutex::new(None),
        sessions: std::sync::atomic::AtomicUsize::new(0),
        out: Mutex::new(Printer { json: a.json }),
        args: target_args,
        max_session: a.max_session,
        env,
        log_dir,
        handshake_timeout: a.handshake_timeout,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("cannot start the async runtime")
        .map_err(CliError::usage)?;
    rt.block_on(serve_loop(a, shared, version))
}

async fn serve_loop(a: ServeArgs, shared: Arc<Shared>, version: String) -> Result<ExitCode, CliError> {
    let listener = tokio::net::TcpListener::bind(&a.listen)
        .await
        .with_context(|| format!("cannot bind {} (is the address this host's, and the port free?)", a.listen))
        .map_err(CliError::usage)?;
    let addr = listener.local_addr().context("local address")?;
    shared.out.lock().map_err(|_| anyhow!("printer"))?.event(
        json!({"event": "listening", "addr": addr.to_string(), "token": shared.token, "nixl": version,
               "logs": shared.log_dir.display().to_string()}),
        format!(
            "kvprobe serve: listening on {addr} (NIXL {version}); one sweep at a time, target logs in {}\n\
             token: {}\n\
             on the other host: kvprobe sweep --peer {addr} --token {}",
            shared.log_dir.display(),
            shared.token,
            shared.token
        ),
    );
    loop {
        if child::interrupted() {
            // The session's target (if any) is stopped by its waiter, and in
            // any case dies with this process (PR_SET_PDEATHSIG).
            return Ok(ExitCode::from(130));
        }
        if a.once && shared.sessions.load(std::sync::atomic::Ordering::SeqCst) > 0 && idle(&shared) {
            return Ok(ExitCode::SUCCESS);
        }
        match tokio::time::timeout(Duration::from_millis(200), listener.accept()).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                // Out of descriptors or similar: report, pause, go on serving.
                eprintln!("kvprobe serve: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Ok((stream, peer_addr))) => {
                let s = Arc::clone(&shared);
                tokio::spawn(async move { handle(s, stream, peer_addr).await });
            }
        }
    }
}

fn idle(s: &Shared) -> bool {
    s.active.lock().map(|a| a.is_none()).unwrap_or(true)
}

/// One connection: hello within the handshake timeout, then refusal or a
/// target process for it.
async fn handle(s: Arc<Shared>, mut stream: tokio::net::TcpStream, peer_addr: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let refuse = |reason: String| {
        let s = Arc::clone(&s);
        async move {
            if let Ok(p) = s.out.lock() {
                p.event(
                    json!({"event": "refused", "peer": peer_addr.to_string(), "reason": reason}),
                    format!("refused {peer_addr}: {reason}"),
                );
            }
        }
    };
    // A hello is a few hundred bytes: anything much larger is not kvprobe.
    let hello =
        tokio::time::timeout(s.handshake_timeout, peer::read_frame_async::<_, Request>(&mut stream, "hello", 64 << 10));
    let req = match hello.await {
        Err(_) => {
            refuse(format!("no hello within {:?}", s.handshake_timeout)).await;
            return;
        }
        Ok(Err(e)) => {
            refuse(format!("bad hello: {e}")).await;
            return;
        }
        Ok(Ok(r)) => r,
    };
    if let Err(reason) = crate::engine::target::check_hello(&req, &s.token) {
        let _ = peer::write_frame_async(&mut stream, &Response::Error { message: reason.clone() }, "refusal").await;
        refuse(reason).await;
        return;
    }
    // One sweep at a time: reserve the slot before starting anything.
    let busy = {
        let Ok(mut a) = s.active.lock() else { return };
        match a.as_ref() {
            Some(cur) => Some(format!(
                "busy: serving a sweep from {} for {:.0} s; one sweep at a time, try again when it ends",
                cur.peer,
                cur.since.elapsed().as_secs_f64()
            )),
            None => {
                *a = Some(Active { peer: peer_addr, since: Instant::now(), pid: 0 });
                None
            }
        }
    };
    if let Some(reason) = busy {
        let _ = peer::write_frame_async(&mut stream, &Response::Error { message: reason.clone() }, "refusal").await;
        refuse(reason).await;
        return;
    }
    let n = s.sessions.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let log = s.log_dir.join(format!("target-{n}.log"));
    let started = (|| -> anyhow::Result<child::Child> {
        let std_stream = stream.into_std().context("control connection")?;
        std_stream.set_nonblocking(false).context("control connection")?;
        let fd = std_stream.as_raw_fd();
        let mut args = s.args.clone();
        args.extend(["--control-fd".to_string(), fd.to_string()]);
        let c =
            child::spawn_with_fd("target", &args, &s.env, Some(&log), fd).context("cannot start a target process")?;
        // The child has its own copy of the connection; this one closes here.
        drop(std_stream);
        Ok(c)
    })();
    let mut c = match started {
        Ok(c) => c,
        Err(e) => {
            if let Ok(mut a) = s.active.lock() {
                *a = None;
            }
            refuse(format!("{e:#}")).await;
            return;
        }
    };
    let pid = c.pid();
    if let Ok(mut a) = s.active.lock() {
        if let Some(a) = a.as_mut() {
            a.pid = pid;
        }
    }
    if let Ok(p) = s.out.lock() {
        p.event(
            json!({"event": "session", "n": n, "peer": peer_addr.to_string(), "pid": pid, "log": log.display().to_string()}),
            format!("session {n}: sweep from {peer_addr}, target pid {pid}, log {}", log.display()),
        );
    }
    let s2 = Arc::clone(&s);
    let max_session = s.max_session;
    let status = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            if let Some(st) = c.wait_timeout(Duration::from_millis(200)) {
                break (Some(st), false);
            }
            if child::interrupted() {
                break (c.kill(), false);
            }
            if start.elapsed() > max_session {
                break (c.kill(), true);
            }
        }
    })
    .await
    .unwrap_or((None, false));
    let (status, overran) = status;
    let mut how = status.map(child::describe).unwrap_or_else(|| "was stopped".into());
    if overran {
        how = format!("was stopped after --max-session {:?} ({how})", s2.max_session);
    }
    if let Ok(mut a) = s2.active.lock() {
        *a = None;
    }
    if let Ok(p) = s2.out.lock() {
        p.event(
            json!({"event": "ended", "n": n, "peer": peer_addr.to_string(), "pid": pid,
                   "success": status.is_some_and(|st| st.success()), "status": how}),
            format!("session {n} from {peer_addr} ended: target {how}"),
        );
    }
}
