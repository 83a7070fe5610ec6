//! The target side: serves one initiator session.
//!
//! It owns one buffer, exposed through NIXL (an agent with a registration)
//! and/or raw UCX (a context, a worker and a memory map whose remote key the
//! initiator gets). It never starts a transfer. With a UCX side it keeps its
//! worker progressing while it waits for the next control request, since some
//! transports (TCP, emulated RMA) need the target to make progress.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::kv::{Side, SideLayout};
use crate::mem::{Buffer, Region, Verify};
use crate::nixl::{Agent, Backend, MemType, Nixl, NotifMap, RegDescList, Registration};
use crate::peer::{
    BackendKind, Channel, KvSetup, NixlReady, PROTOCOL, PeerError, Request, Response, TargetReady, TargetSetup,
    UcxReady, UcxSetup, from_hex, to_hex,
};
use crate::ucx::{Context, Endpoint, MemHandle, Ucx, Worker};

use super::{EngineError, ucx_tls_env};

/// The NIXL side. Field order is drop order: the registration goes before the
/// backend and agent it belongs to.
struct NixlSide {
    _kv_reg: Option<Registration>,
    _reg: Registration,
    notifs: NotifMap,
    counts: HashMap<String, u64>,
    _backend: Backend,
    agent: Agent,
}

/// The raw UCX side (endpoint back to the initiator, memory map, then
/// worker, then context).
struct UcxSide {
    back: Option<Endpoint>,
    peer_errors: bool,
    _kv_mem: Option<MemHandle>,
    _mem: MemHandle,
    worker: Worker,
    _ctx: Context,
}

/// The prefill rank's KV cache (KV mode).
struct KvSide {
    buf: Rc<Buffer>,
    layout: SideLayout,
    setup: KvSetup,
}

/// What the target built during setup; the buffers go last.
struct State {
    nixl: Option<NixlSide>,
    ucx: Option<UcxSide>,
    kv: Option<KvSide>,
    buf: Rc<Buffer>,
}

/// Checks an initiator's hello: the session token and the protocol version.
/// The refusal says what is wrong (and goes to the initiator as is).
pub fn check_hello(req: &Request, token: &str) -> Result<(), String> {
    match req {
        Request::Hello { token: t, protocol, kvprobe } => {
            if !crate::peer::tokens_match(t, token) {
                return Err("wrong session token (use the token `kvprobe serve` printed)".into());
            }
            if *protocol != PROTOCOL {
                return Err(format!(
                    "protocol {protocol} (kvprobe {kvprobe}) is not {PROTOCOL} (kvprobe {}): run the same kvprobe version on both hosts",
                    env!("CARGO_PKG_VERSION")
                ));
            }
            Ok(())
        }
        other => Err(format!("expected hello, got {}", other.kind())),
    }
}

/// Serves one session on `ch`: handshake, then requests until `Bye`, the
/// initiator closing the connection, or `idle` without a request.
pub fn serve(ch: &mut Channel, token: &str, nixl: &Nixl, idle: Duration) -> Result<(), EngineError> {
    let req = ch.recv::<Request>(Some(idle), "the initiator's hello")?;
    if let Err(message) = check_hello(&req, token) {
        let _ = ch.send(&Response::Error { message: message.clone() }, "refusal");
        return Err(EngineError::Handshake(message));
    }
    serve_greeted(ch, nixl, idle, None)
}

/// Serves a session whose hello was already checked (by `kvprobe serve`):
/// answers the hello, then serves requests. `own_ucx`: the libucp of this
/// host to use for the raw UCX side, instead of the path the initiator
/// names (across hosts the initiator's path means nothing here).
pub fn serve_greeted(
    ch: &mut Channel,
    nixl: &Nixl,
    idle: Duration,
    own_ucx: Option<&std::path::Path>,
) -> Result<(), EngineError> {
    ch.send(
        &Response::Hello {
            kvprobe: crate::version().to_string(),
            host: crate::hostinfo::hostname(),
            pid: std::process::id(),
        },
        "hello",
    )?;
    let mut state: Option<State> = None;
    loop {
        let worker = state.as_ref().and_then(|s| s.ucx.as_ref()).map(|u| u.worker.clone());
        let req = match next_request(ch, worker.as_ref(), idle) {
            Ok(r) => r,
            // The initiator went away: nothing more to do.
            Err(PeerError::Closed { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match req {
            Request::KeepAlive => continue,
            Request::LinkProbe { to_target, duration_ms } => {
                let resp = match link_probe(ch, to_target, Duration::from_millis(duration_ms)) {
                    Ok((bytes, seconds)) => Response::ProbeDone { bytes, seconds },
                    Err(e) => Response::Error { message: format!("link probe: {e}") },
                };
                ch.send(&resp, "the link probe's result")?;
                continue;
            }
            Request::Bye => {
                drop(state.take());
                let mut drop_errors = crate::nixl::error::take_drop_errors();
                drop_errors.extend(crate::ucx::error::take_drop_errors());
                ch.send(&Response::Bye { drop_errors }, "bye")?;
                return Ok(());
            }
            _ => {}
        }
        let resp = match handle(req, &mut state, nixl, own_ucx) {
            Ok(r) => r,
            Err(e) => Response::Error { message: e.to_string() },
        };
        ch.send(&resp, "a response")?;
    }
}

/// The next control request. Without a UCX worker this blocks in the read;
/// with one it progresses the worker and looks at the socket every 64
/// progress calls, so the worker never stalls while the initiator transfers.
fn next_request(ch: &mut Channel, worker: Option<&Worker>, idle: Duration) -> Result<Request, PeerError> {
    let Some(w) = worker else {
        return ch.recv::<Request>(Some(idle), "the next request");
    };
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            w.progress();
        }
        if ch.readable(Duration::ZERO)? {
            // A message has begun to arrive; the rest follows at once.
            return ch.recv::<Request>(Some(idle), "the next request");
        }
        if start.elapsed() > idle {
            return Err(PeerError::Timeout { what: "the next request".into(), timeout: idle });
        }
    }
}

/// The target's half of a link probe: a listener on the control address
/// (only that address), `ProbeReady`, one connection, then streaming or
/// receiving. Every wait is bounded.
fn link_probe(ch: &mut Channel, to_target: bool, duration: Duration) -> Result<(u64, f64), EngineError> {
    let io = |what: &str, e: std::io::Error| EngineError::Invalid(format!("{what}: {e}"));
    let duration = duration.min(Duration::from_secs(30));
    let (local, _) = ch.addrs().map_err(|e| io("control address", e))?;
    let listener = std::net::TcpListener::bind((local.ip(), 0)).map_err(|e| io("probe listener", e))?;
    let port = listener.local_addr().map_err(|e| io("probe listener", e))?.port();
    ch.send(&Response::ProbeReady { port }, "probe port")?;
    listener.set_nonblocking(true).map_err(|e| io("probe listener", e))?;
    let start = Instant::now();
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(io("probe connection", e)),
        }
    };
    s.set_nonblocking(false).map_err(|e| io("probe connection", e))?;
    if to_target {
        crate::peer::probe_recv(&mut s, duration + Duration::from_secs(10)).map_err(|e| io("probe receive", e))
    } else {
        crate::peer::probe_send(&mut s, duration).map_err(|e| io("probe send", e))
    }
}

fn handle(
    req: Request,
    state: &mut Option<State>,
    nixl: &Nixl,
    own_ucx: Option<&std::path::Path>,
) -> Result<Response, EngineError> {
    if let Request::Setup(setup) = &req {
        *state = None;
        let (st, ready) = setup_target(setup, nixl, own_ucx)?;
        *state = Some(st);
        return Ok(Response::SetupDone(Box::new(ready)));
    }
    let s = state.as_mut().ok_or_else(|| EngineError::Invalid("the target is not set up yet".into()))?;
    // SAFETY (for the buffer accesses below): the control protocol is strictly
    // request/response and the initiator sends Fill, Poison, Corrupt and
    // Verify only between transfers, never while one it posted is in flight
    // (engine/initiator.rs, checked_transfer), so no transfer touches the
    // buffer while these run.
    match req {
        Request::Setup(_) | Request::KeepAlive | Request::Bye | Request::LinkProbe { .. } => {
            Err(EngineError::Invalid("setup, keep-alive and bye are handled by the session loop".into()))
        }
        Request::Fill { off, len, seed } => {
            // SAFETY: see above.
            unsafe { s.buf.fill(off as usize, len as usize, seed) }?;
            Ok(Response::Ok)
        }
        Request::Poison { off, len } => {
            // SAFETY: see above.
            unsafe { s.buf.poison(off as usize, len as usize) }?;
            Ok(Response::Ok)
        }
        Request::KvFill { isl, ids, seed, poison } => {
            let kv = s.kv.as_ref().ok_or_else(|| EngineError::Invalid("no KV cache on the target".into()))?;
            let g = &kv.setup.geometry;
            let chunks = g.request_chunks(&kv.setup.layer_kinds, &kv.layout, isl, &ids, false, seed).map_err(bad_kv)?;
            for (off, len, chunk_seed, _) in chunks {
                // SAFETY: see above (no transfer in flight during control requests).
                unsafe {
                    if poison {
                        kv.buf.poison(off as usize, len as usize)
                    } else {
                        kv.buf.fill_as(off as usize, len as usize, 0, chunk_seed)
                    }
                }?;
            }
            Ok(Response::Ok)
        }
        Request::KvVerify { isl, ids, seed } => {
            let kv = s.kv.as_ref().ok_or_else(|| EngineError::Invalid("no KV cache on the target".into()))?;
            let g = &kv.setup.geometry;
            let mut v = Verify::clean();
            // The decode slice carries the pattern; the prefill block's other
            // heads were poisoned and must still be (nothing spilled over).
            let chunks = g.request_chunks(&kv.setup.layer_kinds, &kv.layout, isl, &ids, false, seed).map_err(bad_kv)?;
            for (off, len, chunk_seed, in_slice) in chunks {
                // SAFETY: see above.
                v.merge(unsafe {
                    if in_slice {
                        kv.buf.verify_as(off as usize, len as usize, 0, chunk_seed)
                    } else {
                        kv.buf.verify_poison(off as usize, len as usize)
                    }
                }?);
            }
            Ok(Response::Verified(v))
        }
        Request::UcxConnect { worker_address_hex } => {
            let u = s.ucx.as_mut().ok_or_else(|| EngineError::Invalid("no raw UCX side to connect".into()))?;
            let addr = from_hex(&worker_address_hex)
                .map_err(|e| EngineError::Invalid(format!("initiator worker address: {e}")))?;
            u.back = None;
            u.back = Some(Endpoint::connect(&u.worker, &addr, u.peer_errors)?);
            Ok(Response::Ok)
        }
        Request::Corrupt { off } => {
            // SAFETY: see above.
            unsafe { s.buf.corrupt(off as usize) }?;
            Ok(Response::Ok)
        }
        Request::Verify { off, len, seed, block } => {
            // SAFETY: see above.
            Ok(Response::Verified(unsafe { s.buf.verify_blocks(off as usize, len as usize, block as usize, seed) }?))
        }
        Request::Zero { off, len } => {
            // SAFETY: see above.
            unsafe { s.buf.zero(off as usize, len as usize) }?;
            Ok(Response::Ok)
        }
        Request::WaitNotifs { tag, count, timeout_ms, settle_ms } => {
            let n =
                s.nixl.as_mut().ok_or_else(|| EngineError::Invalid("no NIXL side to count notifications on".into()))?;
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            let mut unexpected = Vec::new();
            let mut settled = false;
            loop {
                for (_agent, msgs) in n.notifs.fetch(&n.agent)? {
                    for m in msgs {
                        let m = String::from_utf8_lossy(&m).into_owned();
                        if m.starts_with("kvprobe:") {
                            *n.counts.entry(m).or_default() += 1;
                        } else if unexpected.len() < 16 {
                            unexpected.push(m);
                        }
                    }
                }
                let got = n.counts.get(&tag).copied().unwrap_or(0);
                if got >= count && !settled && settle_ms > 0 {
                    // Look once more after a pause: late duplicates count too.
                    settled = true;
                    std::thread::sleep(Duration::from_millis(settle_ms));
                    continue;
                }
                if got >= count || Instant::now() >= deadline {
                    return Ok(Response::Notifs { received: got, unexpected });
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Request::Hello { .. } => Err(EngineError::Invalid("hello sent twice".into())),
    }
}

fn setup_target(
    setup: &TargetSetup,
    nixl: &Nixl,
    own_ucx: Option<&std::path::Path>,
) -> Result<(State, TargetReady), EngineError> {
    let len = usize::try_from(setup.buffer_bytes).map_err(|_| EngineError::Invalid("buffer too large".into()))?;
    let buf = Rc::new(Buffer::alloc(len, &setup.target_mem, setup.hugepages)?);
    let mut ready = TargetReady {
        buffer_addr: buf.addr() as u64,
        buffer_len: buf.len() as u64,
        nixl_lib: nixl.path().display().to_string(),
        ucx_tls: ucx_tls_env(),
        nixl: None,
        ucx: None,
        kv_addr: None,
    };
    let kv = match &setup.kv {
        Some(k) => {
            let layout = k.geometry.side(Side::Prefill, k.pool_blocks);
            let len = usize::try_from(layout.total_bytes())
                .map_err(|_| EngineError::Invalid("KV cache too large for this host".into()))?;
            let kbuf = Rc::new(Buffer::alloc(len, &setup.target_mem, setup.hugepages)?);
            ready.kv_addr = Some(kbuf.addr() as u64);
            Some(KvSide { buf: kbuf, layout, setup: k.clone() })
        }
        None => None,
    };
    let mut state = State { nixl: None, ucx: None, kv: None, buf: Rc::clone(&buf) };
    if setup.backends.iter().any(|b| b.is_nixl()) {
        let name = format!("kvprobe-target-{}", std::process::id());
        // before the agent exists: NIXL may load its plugins as it discovers them
        crate::fabric_plugin::prepare_backend(&setup.backend).map_err(EngineError::Invalid)?;
        let agent = Agent::new(nixl, &name, &setup.agent)?;
        let backend = agent.create_backend(&setup.backend, &setup.backend_params).map_err(|e| {
            match crate::fabric_plugin::backend_failure_hint(&setup.backend) {
                Some(h) => EngineError::Invalid(format!("{e}: {h}")),
                None => e.into(),
            }
        })?;
        let effective = agent.backend_params(&backend).map(|p| p.params).unwrap_or_default();
        let mut dl = RegDescList::new(nixl, MemType::from(buf.kind()))?;
        dl.add(buf.addr(), buf.len(), buf.dev_id())?;
        let reg = agent.register_owned(Rc::clone(&buf), dl, Some(&backend))?;
        let kv_reg = match &kv {
            Some(k) => Some(register_kv(&agent, &backend, nixl, &k.buf, &k.layout)?),
            None => None,
        };
        let md = agent.local_metadata()?;
        let notifs = NotifMap::new(nixl)?;
        ready.nixl = Some(NixlReady { agent_name: name, metadata_hex: to_hex(&md), backend_params: effective });
        state.nixl =
            Some(NixlSide { _kv_reg: kv_reg, _reg: reg, notifs, counts: HashMap::new(), _backend: backend, agent });
    }
    if setup.backends.contains(&BackendKind::Ucx) {
        let u = setup.ucx.as_ref().ok_or_else(|| EngineError::Invalid("the ucx backend needs its settings".into()))?;
        let mut u = u.clone();
        if let Some(p) = own_ucx {
            u.lib = p.to_path_buf();
        }
        let (side, r) = setup_ucx(&u, &buf, kv.as_ref().map(|k| &k.buf))?;
        ready.ucx = Some(r);
        state.ucx = Some(side);
    }
    state.kv = kv;
    Ok((state, ready))
}

/// Registers every KV region of `buf` (one descriptor each, as vLLM
/// registers one region per KV tensor).
pub(super) fn register_kv(
    agent: &Agent,
    backend: &Backend,
    nixl: &Nixl,
    buf: &Rc<Buffer>,
    layout: &SideLayout,
) -> Result<Registration, EngineError> {
    let mut dl = RegDescList::new(nixl, MemType::from(buf.kind()))?;
    for (off, len) in layout.regions() {
        dl.add(buf.addr() + off as usize, len as usize, buf.dev_id())?;
    }
    Ok(agent.register_owned(Rc::clone(buf), dl, Some(backend))?)
}

fn bad_kv(e: crate::kv::KvError) -> EngineError {
    EngineError::Invalid(e.to_string())
}

fn setup_ucx(u: &UcxSetup, buf: &Rc<Buffer>, kv: Option<&Rc<Buffer>>) -> Result<(UcxSide, UcxReady), EngineError> {
    let ucx = Ucx::open(&u.lib)?;
    let ctx = Context::new(
        &ucx,
        &format!("kvprobe-ucx-target-{}", std::process::id()),
        &u.settings_for(ucx.version_tuple()),
    )?;
    let worker = Worker::new(&ctx)?;
    let mem = MemHandle::map(&ctx, Rc::clone(buf))?;
    let kv_mem = match kv {
        Some(k) => Some(MemHandle::map(&ctx, Rc::clone(k))?),
        None => None,
    };
    let ready = UcxReady {
        worker_address_hex: to_hex(&worker.address()?),
        rkey_hex: to_hex(&mem.pack_rkey()?),
        kv_rkey_hex: match &kv_mem {
            Some(m) => Some(to_hex(&m.pack_rkey()?)),
            None => None,
        },
        lib: ucx.path().display().to_string(),
        version: ucx.version(),
        applied: ctx.applied.clone(),
    };
    Ok((UcxSide { back: None, peer_errors: u.peer_errors, _kv_mem: kv_mem, _mem: mem, worker, _ctx: ctx }, ready))
}
