//! The target side: serves one initiator session, or several over one NIXL
//! agent (a prefill rank read by several decode ranks, `kvprobe tp`).
//!
//! It owns one buffer, exposed through NIXL (an agent with a registration)
//! and/or raw UCX (a context, a worker and a memory map whose remote key the
//! initiator gets). It never starts a transfer. With a UCX side it keeps its
//! worker progressing while it waits for the next control request, since some
//! transports (TCP, emulated RMA) need the target to make progress.
//!
//! Shared sessions ([`serve_sessions`]) have one agent, one backend and one
//! KV cache between them (the prefill rank's), and a plain buffer each. The
//! sessions' timed requests share blocks, as vLLM's decode ranks do; their
//! checked requests use an area of the cache each (`KvPlan::check_areas`),
//! so a check never meets a sibling's transfer and still covers whole
//! prefill blocks (the heads outside the slice must stay poison).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::kv::{Side, SideLayout};
use crate::mem::{Buffer, Chunk, Content, Region};
use crate::nixl::{Agent, Backend, MemType, Nixl, NotifMap, RegDescList, Registration};
use crate::peer::{
    BackendKind, Channel, KvSetup, NixlReady, PROTOCOL, PeerError, Request, Response, TargetReady, TargetSetup,
    UcxReady, UcxSetup, from_hex, to_hex,
};
use crate::ucx::{Context, Endpoint, MemHandle, Ucx, Worker};

use super::{EngineError, ucx_tls_env};

/// The NIXL side of one session: its buffer's registration and the agent
/// (shared between the sessions of a shared target). Field order is drop
/// order: the registration goes before the agent it belongs to.
struct NixlSide {
    _reg: Registration,
    core: Rc<NixlCore>,
}

/// The agent, its backend, the KV registration and the notifications seen,
/// counted per (sending agent, tag).
struct NixlCore {
    _kv_reg: Option<Registration>,
    notifs: RefCell<NotifMap>,
    counts: RefCell<HashMap<(String, String), u64>>,
    backend: Backend,
    agent: Agent,
}

impl NixlCore {
    /// Takes every notification NIXL holds into the counts; returns messages
    /// no kvprobe transfer sent (at most 16).
    fn collect(&self) -> Result<Vec<String>, EngineError> {
        let mut unexpected = Vec::new();
        let got = self.notifs.borrow_mut().fetch(&self.agent)?;
        let mut counts = self.counts.borrow_mut();
        for (agent, msgs) in got {
            for m in msgs {
                let m = String::from_utf8_lossy(&m).into_owned();
                if m.starts_with("kvprobe:") {
                    *counts.entry((agent.clone(), m)).or_default() += 1;
                } else if unexpected.len() < 16 {
                    unexpected.push(m);
                }
            }
        }
        Ok(unexpected)
    }

    /// Notifications counted for `tag`: from `from` only, or from anyone.
    fn count(&self, from: Option<&str>, tag: &str) -> u64 {
        self.counts.borrow().iter().filter(|((a, t), _)| t == tag && from.is_none_or(|f| f == a)).map(|(_, n)| *n).sum()
    }
}

/// What the sessions of a shared target have in common: the first setup
/// builds it, later ones must ask for the same and reuse it.
#[derive(Default)]
struct Shared {
    /// The setup's target-side terms (backend, parameters, memory, the
    /// prefill rank's KV layout), as JSON: every session's must match.
    key: Option<String>,
    nixl: Option<Rc<NixlCore>>,
    kv: Option<(Rc<Buffer>, SideLayout)>,
}

impl Shared {
    /// The part of a setup the sessions share, as a comparable string.
    fn key_of(setup: &TargetSetup) -> String {
        let kv = setup.kv.as_ref().map(|k| {
            let g = &k.geometry;
            // where the decode rank's slice starts is the session's own
            let layout = SideLayout { desc_offset: 0, ..g.side(Side::Prefill, k.pool_blocks) };
            (layout, g.p_rank, g.p_tp, g.d_tp, &g.model, &k.layer_kinds)
        });
        serde_json::json!({
            "agent": setup.agent,
            "backend": setup.backend,
            "params": setup.backend_params,
            "backends": setup.backends,
            "mem": setup.target_mem,
            "hugepages": setup.hugepages,
            "kv": kv,
        })
        .to_string()
    }
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
    /// The initiator's NIXL agent (its notifications are this session's).
    initiator_agent: Option<String>,
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
    send_hello(ch)?;
    let mut state: Option<State> = None;
    loop {
        let worker = state.as_ref().and_then(|s| s.ucx.as_ref()).map(|u| u.worker.clone());
        let req = match next_request(ch, worker.as_ref(), idle) {
            Ok(r) => r,
            // The initiator went away: nothing more to do.
            Err(PeerError::Closed { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if step(ch, req, &mut state, nixl, own_ucx, None)? {
            return Ok(());
        }
    }
}

/// The target's answer to an accepted hello: who and where it is.
fn send_hello(ch: &mut Channel) -> Result<(), PeerError> {
    ch.send(
        &Response::Hello {
            kvprobe: crate::version().to_string(),
            host: crate::hostinfo::hostname(),
            pid: std::process::id(),
        },
        "hello",
    )
}

/// Answers one request of a session; true when the session has ended (bye).
fn step(
    ch: &mut Channel,
    req: Request,
    state: &mut Option<State>,
    nixl: &Nixl,
    own_ucx: Option<&std::path::Path>,
    shared: Option<&mut Shared>,
) -> Result<bool, EngineError> {
    match req {
        Request::KeepAlive => return Ok(false),
        Request::LinkProbe { to_target, duration_ms } => {
            let resp = match link_probe(ch, to_target, Duration::from_millis(duration_ms)) {
                Ok((bytes, seconds)) => Response::ProbeDone { bytes, seconds },
                Err(e) => Response::Error { message: format!("link probe: {e}") },
            };
            ch.send(&resp, "the link probe's result")?;
            return Ok(false);
        }
        Request::Bye => {
            drop(state.take());
            let mut drop_errors = crate::nixl::error::take_drop_errors();
            drop_errors.extend(crate::ucx::error::take_drop_errors());
            ch.send(&Response::Bye { drop_errors }, "bye")?;
            return Ok(true);
        }
        _ => {}
    }
    let resp = match handle(req, state, nixl, own_ucx, shared) {
        Ok(r) => r,
        Err(e) => Response::Error { message: e.to_string() },
    };
    ch.send(&resp, "a response")?;
    Ok(false)
}

/// Serves several sessions whose hellos were checked, in one thread, over
/// one NIXL agent and one KV cache (see [`Shared`]): a prefill rank that
/// several decode ranks read. Returns when every session has ended; a
/// session that fails or goes quiet for `idle` ends alone and is reported
/// at the end. Raw UCX is not served here (it needs an endpoint and
/// progress per session).
pub fn serve_sessions(chs: Vec<Channel>, nixl: &Nixl, idle: Duration) -> Result<(), EngineError> {
    struct Live {
        ch: Channel,
        state: Option<State>,
        last: Instant,
    }
    let mut live: Vec<Option<Live>> = Vec::new();
    for mut ch in chs {
        send_hello(&mut ch)?;
        live.push(Some(Live { ch, state: None, last: Instant::now() }));
    }
    let mut shared = Shared::default();
    let mut failures = Vec::new();
    while live.iter().any(Option::is_some) {
        let mut busy = false;
        for (i, slot) in live.iter_mut().enumerate() {
            let Some(l) = slot.as_mut() else { continue };
            let ended = match l.ch.readable(Duration::ZERO) {
                Ok(false) if l.last.elapsed() > idle => {
                    Err(EngineError::Peer(PeerError::Timeout { what: "the next request".into(), timeout: idle }))
                }
                Ok(false) => Ok(false),
                Ok(true) => {
                    busy = true;
                    l.last = Instant::now();
                    match l.ch.recv::<Request>(Some(idle), "the next request") {
                        Ok(Request::Setup(s)) if s.backends.contains(&BackendKind::Ucx) => {
                            let message = "the raw ucx backend cannot be shared between sessions: measure it with one initiator per target".to_string();
                            l.ch.send(&Response::Error { message }, "a refusal")
                                .map(|_| false)
                                .map_err(EngineError::from)
                        }
                        Ok(req) => step(&mut l.ch, req, &mut l.state, nixl, None, Some(&mut shared)),
                        Err(PeerError::Closed { .. }) => Ok(true),
                        Err(e) => Err(e.into()),
                    }
                }
                Err(e) => Err(e.into()),
            };
            match ended {
                Ok(false) => {}
                Ok(true) => *slot = None,
                Err(e) => {
                    failures.push(format!("session {i}: {e}"));
                    *slot = None;
                }
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    drop(shared);
    if failures.is_empty() { Ok(()) } else { Err(EngineError::Invalid(failures.join("; "))) }
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
    shared: Option<&mut Shared>,
) -> Result<Response, EngineError> {
    if let Request::Setup(setup) = &req {
        *state = None;
        let (st, ready) = setup_target(setup, nixl, own_ucx, shared)?;
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
            let batch: Vec<Chunk> = chunks
                .into_iter()
                .map(|(off, len, chunk_seed, _)| Chunk {
                    off,
                    len,
                    content: if poison { Content::Poison } else { Content::Pattern(chunk_seed) },
                })
                .collect();
            // SAFETY: see above (no transfer in flight during control requests).
            unsafe { kv.buf.write_chunks(&batch) }?;
            Ok(Response::Ok)
        }
        Request::KvVerify { isl, ids, seed } => {
            let kv = s.kv.as_ref().ok_or_else(|| EngineError::Invalid("no KV cache on the target".into()))?;
            let g = &kv.setup.geometry;
            // The decode slice carries the pattern; the prefill block's other
            // heads were poisoned and must still be (nothing spilled over).
            let chunks = g.request_chunks(&kv.setup.layer_kinds, &kv.layout, isl, &ids, false, seed).map_err(bad_kv)?;
            let batch: Vec<Chunk> = chunks
                .into_iter()
                .map(|(off, len, chunk_seed, in_slice)| Chunk {
                    off,
                    len,
                    content: if in_slice { Content::Pattern(chunk_seed) } else { Content::Poison },
                })
                .collect();
            // SAFETY: see above.
            Ok(Response::Verified(unsafe { kv.buf.check_chunks(&batch) }?))
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
                s.nixl.as_ref().ok_or_else(|| EngineError::Invalid("no NIXL side to count notifications on".into()))?;
            let from = s.initiator_agent.as_deref();
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            let mut unexpected = Vec::new();
            let mut settled = false;
            loop {
                for m in n.core.collect()? {
                    if unexpected.len() < 16 {
                        unexpected.push(m);
                    }
                }
                let got = n.core.count(from, &tag);
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
    mut shared: Option<&mut Shared>,
) -> Result<(State, TargetReady), EngineError> {
    if let Some(sh) = shared.as_deref_mut() {
        let key = Shared::key_of(setup);
        match &sh.key {
            Some(k) if *k != key => {
                return Err(EngineError::Invalid(
                    "this target is shared by several decode ranks and this session asked for another setup than the first (backend, parameters, memory or the prefill rank's KV layout differ): every session of a shared target must measure the same prefill rank".into(),
                ));
            }
            Some(_) => {}
            None => sh.key = Some(key),
        }
    }
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
            let existing = shared.as_deref().and_then(|sh| sh.kv.as_ref()).map(|(b, _)| Rc::clone(b));
            let kbuf = match existing {
                Some(b) => b,
                None => {
                    let len = usize::try_from(layout.total_bytes())
                        .map_err(|_| EngineError::Invalid("KV cache too large for this host".into()))?;
                    let b = Rc::new(Buffer::alloc(len, &setup.target_mem, setup.hugepages)?);
                    if let Some(sh) = shared.as_deref_mut() {
                        sh.kv = Some((Rc::clone(&b), layout));
                    }
                    b
                }
            };
            ready.kv_addr = Some(kbuf.addr() as u64);
            Some(KvSide { buf: kbuf, layout, setup: k.clone() })
        }
        None => None,
    };
    let mut state =
        State { nixl: None, ucx: None, kv: None, buf: Rc::clone(&buf), initiator_agent: setup.initiator_agent.clone() };
    if setup.backends.iter().any(|b| b.is_nixl()) {
        let existing = shared.as_deref().and_then(|sh| sh.nixl.clone());
        let core = match existing {
            Some(c) => c,
            None => {
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
                let kv_reg = match &kv {
                    Some(k) => Some(register_kv(&agent, &backend, nixl, &k.buf, &k.layout)?),
                    None => None,
                };
                let notifs = RefCell::new(NotifMap::new(nixl)?);
                let c = Rc::new(NixlCore { _kv_reg: kv_reg, notifs, counts: RefCell::default(), backend, agent });
                if let Some(sh) = shared {
                    sh.nixl = Some(Rc::clone(&c));
                }
                c
            }
        };
        let effective = core.agent.backend_params(&core.backend).map(|p| p.params).unwrap_or_default();
        let mut dl = RegDescList::new(nixl, MemType::from(buf.kind()))?;
        dl.add(buf.addr(), buf.len(), buf.dev_id())?;
        let reg = core.agent.register_owned(Rc::clone(&buf), dl, Some(&core.backend))?;
        // after this session's registration, so its metadata holds it
        let md = core.agent.local_metadata()?;
        ready.nixl = Some(NixlReady {
            agent_name: core.agent.name().to_string(),
            metadata_hex: to_hex(&md),
            backend_params: effective,
        });
        state.nixl = Some(NixlSide { _reg: reg, core });
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
