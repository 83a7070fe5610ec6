//! The target side: serves one initiator session.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::mem::{HostBuffer, Region};
use crate::nixl::{Agent, Backend, MemType, Nixl, NotifMap, RegDescList, Registration};
use crate::peer::{Channel, PROTOCOL, PeerError, Request, Response, TargetReady, TargetSetup, to_hex};

use super::{EngineError, ucx_tls_env};

/// What the target built during setup. Field order is drop order: the
/// registration goes before the backend and agent it belongs to.
struct State {
    _reg: Registration,
    buf: Rc<HostBuffer>,
    notifs: NotifMap,
    counts: HashMap<String, u64>,
    _backend: Backend,
    agent: Agent,
}

/// Serves one session on `ch`: handshake, then requests until `Bye`, the
/// initiator closing the connection, or `idle` without a request.
pub fn serve(ch: &mut Channel, token: &str, nixl: &Nixl, idle: Duration) -> Result<(), EngineError> {
    match ch.recv::<Request>(Some(idle), "the initiator's hello")? {
        Request::Hello { token: t, protocol, kvprobe } => {
            if t != token {
                let _ = ch.send(&Response::Error { message: "wrong session token".into() }, "refusal");
                return Err(EngineError::Handshake("the initiator presented a wrong session token".into()));
            }
            if protocol != PROTOCOL {
                let message = format!(
                    "protocol {protocol} (kvprobe {kvprobe}) is not {PROTOCOL} (kvprobe {})",
                    env!("CARGO_PKG_VERSION")
                );
                let _ = ch.send(&Response::Error { message: message.clone() }, "refusal");
                return Err(EngineError::Handshake(message));
            }
            ch.send(
                &Response::Hello {
                    kvprobe: crate::version().to_string(),
                    host: crate::hostinfo::hostname(),
                    pid: std::process::id(),
                },
                "hello",
            )?;
        }
        other => {
            return Err(EngineError::Handshake(format!("expected hello, got {other:?}")));
        }
    }

    let mut state: Option<State> = None;
    loop {
        let req = match ch.recv::<Request>(Some(idle), "the next request") {
            Ok(r) => r,
            // The initiator went away: nothing more to do.
            Err(PeerError::Closed { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match req {
            Request::KeepAlive => continue,
            Request::Bye => {
                drop(state.take());
                let drop_errors = crate::nixl::error::take_drop_errors();
                ch.send(&Response::Bye { drop_errors }, "bye")?;
                return Ok(());
            }
            _ => {}
        }
        let resp = match handle(req, &mut state, nixl) {
            Ok(r) => r,
            Err(e) => Response::Error { message: e.to_string() },
        };
        ch.send(&resp, "a response")?;
    }
}

fn handle(req: Request, state: &mut Option<State>, nixl: &Nixl) -> Result<Response, EngineError> {
    if let Request::Setup(setup) = &req {
        *state = None;
        let (st, ready) = setup_target(setup, nixl)?;
        *state = Some(st);
        return Ok(Response::SetupDone(ready));
    }
    let s = state.as_mut().ok_or_else(|| EngineError::Invalid("the target is not set up yet".into()))?;
    // SAFETY (for the buffer accesses below): the control protocol is strictly
    // request/response and the initiator sends Fill, Poison, Corrupt and
    // Verify only between transfers, never while one it posted is in flight
    // (engine/initiator.rs, checked_transfer), so no transfer touches the
    // buffer while these run.
    match req {
        Request::Setup(_) | Request::KeepAlive | Request::Bye => {
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
        Request::Corrupt { off } => {
            // SAFETY: see above.
            unsafe { s.buf.corrupt(off as usize) }?;
            Ok(Response::Ok)
        }
        Request::Verify { off, len, seed } => {
            // SAFETY: see above.
            Ok(Response::Verified(unsafe { s.buf.verify(off as usize, len as usize, seed) }?))
        }
        Request::WaitNotifs { tag, count, timeout_ms, settle_ms } => {
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            let mut unexpected = Vec::new();
            let mut settled = false;
            loop {
                for (_agent, msgs) in s.notifs.fetch(&s.agent)? {
                    for m in msgs {
                        let m = String::from_utf8_lossy(&m).into_owned();
                        if m.starts_with("kvprobe:") {
                            *s.counts.entry(m).or_default() += 1;
                        } else if unexpected.len() < 16 {
                            unexpected.push(m);
                        }
                    }
                }
                let got = s.counts.get(&tag).copied().unwrap_or(0);
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

fn setup_target(setup: &TargetSetup, nixl: &Nixl) -> Result<(State, TargetReady), EngineError> {
    let len = usize::try_from(setup.buffer_bytes).map_err(|_| EngineError::Invalid("buffer too large".into()))?;
    let name = format!("kvprobe-target-{}", std::process::id());
    let agent = Agent::new(nixl, &name, &setup.agent)?;
    let backend = agent.create_backend(&setup.backend, &setup.backend_params)?;
    let effective = agent.backend_params(&backend).map(|p| p.params).unwrap_or_else(|_| BTreeMap::new());
    let buf = Rc::new(HostBuffer::new(len)?);
    let mut dl = RegDescList::new(nixl, MemType::Dram)?;
    dl.add(buf.addr(), buf.len(), 0)?;
    let reg = agent.register_owned(Rc::clone(&buf), dl, Some(&backend))?;
    let md = agent.local_metadata()?;
    let notifs = NotifMap::new(nixl)?;
    let ready = TargetReady {
        agent_name: name,
        metadata_hex: to_hex(&md),
        buffer_addr: buf.addr() as u64,
        buffer_len: buf.len() as u64,
        nixl_lib: nixl.path().display().to_string(),
        backend_params: effective,
        ucx_tls: ucx_tls_env(),
    };
    Ok((State { _reg: reg, buf, notifs, counts: HashMap::new(), _backend: backend, agent }, ready))
}
