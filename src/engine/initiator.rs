//! The initiator side: connects, sets the target up, measures every row.

use std::rc::Rc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use crate::mem::{HostBuffer, Region, Verify};
use crate::nixl::{
    Agent, Backend, MemType, Nixl, OptArgs, RegDescList, Registration, Status, XferDescList, XferOp, XferReq,
};
use crate::peer::{Channel, PROTOCOL, Request, Response, TargetReady, TargetSetup, from_hex};
use crate::report::schema::{Check, PeerInfo, Row, XferPath, stats_from_ns};

use super::{EngineError, Event, Inject, Started, SweepPlan, seed_for, ucx_tls_env};
use crate::nixl::Telemetry;
use crate::report::schema::Stats;
use crate::units::Bytes;

/// Most descriptors one transfer may have (indices are C ints).
pub const MAX_DESCS: u64 = 1 << 22;

/// An initiator connected to a target: both agents set up, the target's
/// metadata loaded, one buffer registered on each side.
pub struct Connection {
    /// Control channel to the target.
    pub ch: Channel,
    /// What the target reported after setup.
    pub target: TargetReady,
    /// Target host name.
    pub target_host: String,
    /// Target process id.
    pub target_pid: u32,
    /// Plugins available to the local agent.
    pub plugins: Vec<String>,
    /// Effective local backend parameters.
    pub backend_params: BTreeMap<String, String>,
    /// The target agent's name (as loaded from its metadata).
    pub remote_name: String,
    // Drop order: registration, buffer, backend, agent.
    /// The registration of `buf`.
    pub reg: Registration,
    /// The local registered buffer.
    pub buf: Rc<HostBuffer>,
    /// The local backend.
    pub backend: Backend,
    /// The local agent.
    pub agent: Agent,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.target.agent_name)
            .field("remote_name", &self.remote_name)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to the target at `addr`, authenticates with `token`, has it
    /// build `setup`, builds the same locally and loads the target's metadata.
    pub fn open(
        nixl: &Nixl,
        addr: &str,
        token: &str,
        setup: &TargetSetup,
        peer_timeout: Duration,
    ) -> Result<Connection, EngineError> {
        let mut ch = Channel::connect(addr, Duration::from_secs(10))?;
        let hello =
            Request::Hello { token: token.to_string(), protocol: PROTOCOL, kvprobe: crate::version().to_string() };
        let (target_host, target_pid) = match ch.call(&hello, peer_timeout, "the target's hello") {
            Ok(Response::Hello { host, pid, .. }) => (host, pid),
            Ok(other) => return Err(EngineError::Handshake(format!("unexpected answer {other:?}"))),
            Err(crate::peer::PeerError::Remote(m)) => return Err(EngineError::Handshake(m)),
            Err(e) => return Err(e.into()),
        };
        let target = match ch.call(&Request::Setup(setup.clone()), peer_timeout, "the target's setup")? {
            Response::SetupDone(r) => r,
            other => return Err(EngineError::Invalid(format!("unexpected answer to setup: {other:?}"))),
        };
        let agent = Agent::new(nixl, &format!("kvprobe-initiator-{}", std::process::id()), &setup.agent)?;
        let plugins = agent.available_plugins()?;
        if !plugins.iter().any(|p| p == &setup.backend) {
            return Err(EngineError::Invalid(format!(
                "NIXL backend plugin '{}' is not available (NIXL can load: {}). Check the plugin directory (NIXL_PLUGIN_DIR) and the plugin's dependencies.",
                setup.backend,
                if plugins.is_empty() { "none".to_string() } else { plugins.join(", ") }
            )));
        }
        let backend = agent.create_backend(&setup.backend, &setup.backend_params)?;
        let backend_params = agent.backend_params(&backend).map(|p| p.params).unwrap_or_default();
        let len = usize::try_from(setup.buffer_bytes).map_err(|_| EngineError::Invalid("size too large".into()))?;
        let buf = Rc::new(HostBuffer::new(len)?);
        let mut dl = RegDescList::new(nixl, MemType::Dram)?;
        dl.add(buf.addr(), buf.len(), 0)?;
        let reg = agent.register_owned(Rc::clone(&buf), dl, Some(&backend))?;
        let md = from_hex(&target.metadata_hex).map_err(|e| EngineError::Invalid(format!("target metadata: {e}")))?;
        let remote_name = agent.load_remote_metadata(&md)?;
        if remote_name != target.agent_name {
            return Err(EngineError::Invalid(format!(
                "metadata names agent '{remote_name}', expected '{}'",
                target.agent_name
            )));
        }
        Ok(Connection {
            ch,
            target,
            target_host,
            target_pid,
            plugins,
            backend_params,
            remote_name,
            reg,
            buf,
            backend,
            agent,
        })
    }

    /// Descriptor lists for the first `size` bytes of both buffers, in
    /// blocks of `block` bytes.
    pub fn desc_lists(&self, size: u64, block: u64) -> Result<(XferDescList, XferDescList), EngineError> {
        if block == 0 || size % block != 0 || size > self.buf.len() as u64 || size > self.target.buffer_len {
            return Err(EngineError::Invalid(format!(
                "cannot split {size} B into {block}-byte descriptors of the registered buffers"
            )));
        }
        let n = (size / block) as usize;
        let nixl = self.agent.nixl();
        let mut local = XferDescList::new(nixl, MemType::Dram)?;
        local.add_local_strided(&self.reg, self.buf.addr(), block as usize, n, 0)?;
        let mut remote = XferDescList::new(nixl, MemType::Dram)?;
        remote.add_strided(self.target.buffer_addr as usize, block as usize, n, 0)?;
        Ok((local, remote))
    }

    /// Says goodbye; the target releases everything and exits.
    /// Says goodbye; the target releases everything and exits. Returns the
    /// errors the target met while releasing its NIXL objects.
    pub fn close(mut self, peer_timeout: Duration) -> Result<Vec<String>, EngineError> {
        match self.ch.call(&Request::Bye, peer_timeout, "the target's goodbye")? {
            Response::Bye { drop_errors } => Ok(drop_errors),
            other => Err(EngineError::Invalid(format!("unexpected answer to bye: {other:?}"))),
        }
    }
}

struct Session<'a> {
    plan: &'a SweepPlan,
    emit: &'a mut dyn FnMut(Event),
    last_beat: Instant,
    peer_timeout: Duration,
    xfer_timeout: Duration,
    conn: Connection,
}

/// Runs the whole plan, reporting through `emit`. Returns after the last row,
/// or at the first error (rows already emitted stay valid). On success, the
/// errors the target met while releasing its NIXL objects.
pub fn run(plan: &SweepPlan, nixl: &Nixl, emit: &mut dyn FnMut(Event)) -> Result<Vec<String>, EngineError> {
    validate(plan)?;
    let peer_timeout = Duration::from_secs_f64(plan.timing.peer_timeout_s);
    let setup = TargetSetup {
        agent: plan.agent.clone(),
        backend: plan.backend.clone(),
        backend_params: plan.backend_params.clone(),
        buffer_bytes: plan.sizes.iter().copied().max().unwrap_or(0),
    };
    let conn = Connection::open(nixl, &plan.target_addr, &plan.token, &setup, peer_timeout)?;
    emit(Event::Started(Started {
        initiator_pid: std::process::id(),
        library_version: nixl.version(),
        plugins: conn.plugins.clone(),
        backend_params: conn.backend_params.clone(),
        target: PeerInfo {
            addr: plan.target_addr.clone(),
            host: conn.target_host.clone(),
            pid: conn.target_pid,
            nixl_lib: conn.target.nixl_lib.clone(),
            ucx_tls: conn.target.ucx_tls.clone(),
            backend_params: conn.target.backend_params.clone(),
        },
    }));

    let mut s = Session {
        plan,
        emit,
        last_beat: Instant::now(),
        peer_timeout,
        xfer_timeout: Duration::from_secs_f64(plan.timing.xfer_timeout_s),
        conn,
    };
    let total = plan.ops.len() * plan.sizes.len();
    let mut index = 0;
    for &op in &plan.ops {
        for &size in &plan.sizes {
            (s.emit)(Event::Point { index, total, op, size });
            let row = s.measure(index, op, size)?;
            let verified = row.verified;
            let notifs_ok = row.notifs_received == row.notifs_expected && row.unexpected_notifs.is_empty();
            let what = format!("{op} {size} B: {:?}", row.checks.iter().filter(|c| !c.ok).collect::<Vec<_>>());
            let notif_msg = format!(
                "{op} {size} B: the target received {} notifications where {} were sent{}",
                row.notifs_received,
                row.notifs_expected,
                if row.unexpected_notifs.is_empty() {
                    String::new()
                } else {
                    format!(", and unexpected messages {:?}", row.unexpected_notifs)
                }
            );
            (s.emit)(Event::Row(Box::new(row)));
            if !verified {
                return Err(EngineError::Verification(what));
            }
            if !notifs_ok {
                return Err(EngineError::Verification(notif_msg));
            }
            index += 1;
        }
    }
    let target_drop_errors = s.conn.close(peer_timeout)?;
    Ok(target_drop_errors.into_iter().map(|e| format!("target: {e}")).collect())
}

/// Checks a plan before anything starts; the message names the flag.
pub fn validate(plan: &SweepPlan) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::Invalid(m));
    if plan.sizes.is_empty() || plan.ops.is_empty() {
        return bad("nothing to measure: no sizes (--sizes) or no operations (--ops)".into());
    }
    if let Some(b) = plan.block {
        if b == 0 {
            return bad("--block-size must be greater than zero".into());
        }
        for &s in &plan.sizes {
            if s > b && s % b != 0 {
                return bad(format!("size {} is not a multiple of --block-size {}", Bytes(s), Bytes(b)));
            }
            if s / b > MAX_DESCS {
                return bad(format!(
                    "size {} in blocks of {} (--block-size) would need {} descriptors per transfer (at most {MAX_DESCS})",
                    Bytes(s),
                    Bytes(b),
                    s / b
                ));
            }
        }
    }
    let t = &plan.timing;
    if !(t.duration_s >= 0.0 && t.warmup_s >= 0.0 && t.xfer_timeout_s > 0.0 && t.peer_timeout_s > 0.0) {
        return bad("--duration and --warmup must be non-negative, --xfer-timeout and --peer-timeout positive".into());
    }
    if t.min_iters == 0 || t.max_iters < t.min_iters {
        return bad(format!("need 1 <= --min-iters ({}) <= --max-iters ({})", t.min_iters, t.max_iters));
    }
    Ok(())
}

impl Session<'_> {
    /// Tells the watcher this process is alive, at most about once a second.
    #[inline]
    fn beat(&mut self) {
        if self.last_beat.elapsed() >= Duration::from_secs(1) {
            (self.emit)(Event::Heartbeat);
            // A failed send means the target is gone; the next request says so.
            let _ = self.conn.ch.send(&Request::KeepAlive, "keep-alive");
            self.last_beat = Instant::now();
        }
    }

    fn call(&mut self, req: Request, what: &str) -> Result<Response, EngineError> {
        Ok(self.conn.ch.call(&req, self.peer_timeout, what)?)
    }

    fn target_verify(&mut self, len: u64, seed: u64) -> Result<Verify, EngineError> {
        match self.call(Request::Verify { off: 0, len, seed }, "the target's data check")? {
            Response::Verified(v) => Ok(v),
            other => Err(EngineError::Invalid(format!("unexpected answer to verify: {other:?}"))),
        }
    }

    /// Waits until the target has `count` notifications for `tag`; with
    /// `settle`, looks once more after a pause to catch duplicates. Returns
    /// the count and any message no kvprobe transfer sent.
    fn target_notifs(&mut self, tag: &str, count: u64, settle: bool) -> Result<(u64, Vec<String>), EngineError> {
        // Every transfer counted here has completed, and NIXL sends its
        // notification on completion: 10 s is plenty even on a loaded host.
        let timeout_ms = (self.xfer_timeout.min(Duration::from_secs(10)).as_millis() as u64).max(1000);
        let settle_ms = if settle { 20 } else { 0 };
        let r = self.conn.ch.call(
            &Request::WaitNotifs { tag: tag.to_string(), count, timeout_ms, settle_ms },
            self.peer_timeout.saturating_add(Duration::from_millis(timeout_ms + settle_ms)),
            "the target's notification count",
        )?;
        match r {
            Response::Notifs { received, unexpected } => Ok((received, unexpected)),
            other => Err(EngineError::Invalid(format!("unexpected answer to notification wait: {other:?}"))),
        }
    }

    /// Posts once and waits for completion.
    fn once(&self, req: &XferReq) -> Result<(), EngineError> {
        let start = Instant::now();
        if req.post()? == Status::InProgress {
            req.wait_since(start, self.xfer_timeout)?;
        }
        Ok(())
    }

    /// Moves data with `req` and checks it: the owner writes a fresh pattern,
    /// the destination is poisoned first, the reader checks every byte.
    fn checked_transfer(&mut self, req: &XferReq, c: &CheckSpec<'_>) -> Result<Check, EngineError> {
        let CheckSpec { op, size, seed, when, tag, notifs_so_far, inject } = *c;
        let n = size as usize;
        match op {
            XferOp::Read => {
                self.call(Request::Fill { off: 0, len: size, seed }, "the target's fill")?;
                if inject {
                    self.call(Request::Corrupt { off: size / 2 }, "the target's fault injection")?;
                }
                // SAFETY: no transfer is in flight: the previous one completed
                // (once() waits) and this process posts one at a time.
                unsafe { self.conn.buf.poison(0, n) }?;
                self.once(req)?;
                // SAFETY: the READ completed in once(); nothing else is in flight.
                let v = unsafe { self.conn.buf.verify(0, n, seed) }?;
                Ok(check(when, "initiator", v))
            }
            XferOp::Write => {
                // SAFETY: no transfer is in flight (one at a time, each waited for).
                unsafe { self.conn.buf.fill(0, n, seed) }?;
                self.call(Request::Poison { off: 0, len: size }, "the target's poison")?;
                self.once(req)?;
                // The notification arrives after the data: once the target has
                // it, the bytes are in place.
                let (got, _) = self.target_notifs(tag, notifs_so_far, false)?;
                if got < notifs_so_far {
                    return Err(EngineError::Verification(format!(
                        "WRITE {size} B: the target saw {got} of {notifs_so_far} notifications before its data check"
                    )));
                }
                if inject {
                    self.call(Request::Corrupt { off: size / 2 }, "the target's fault injection")?;
                }
                let v = self.target_verify(size, seed)?;
                Ok(check(when, "target", v))
            }
        }
    }

    fn measure(&mut self, index: usize, op: XferOp, size: u64) -> Result<Row, EngineError> {
        let plan = self.plan;
        let block = plan.block.map_or(size, |b| b.min(size));
        let descs = size / block;
        let tag = format!("kvprobe:{index}:{op}:{size}");
        let nixl = self.conn.agent.nixl().clone();
        let first_point = index == 0;
        let inject_missing = first_point && plan.inject == Some(Inject::MissingNotif);

        let with_notif = Rc::new(OptArgs::with_backend(&nixl, &self.conn.backend)?);
        with_notif.set_notification(tag.as_bytes())?;
        let plain = Rc::new(OptArgs::with_backend(&nixl, &self.conn.backend)?);
        // A request without a notification: the timed one with --no-notif, and
        // the fault injected by --inject missing-notif.
        let want_plain = !plan.notif_every_transfer || inject_missing;

        // Build the request(s). prep = descriptor lists (+ prep_xfer_dlist on
        // the prepped path); make = make_xfer_req / create_xfer_req.
        let t0 = Instant::now();
        let (local, remote) = self.conn.desc_lists(size, block)?;
        let (check_req, plain_req, prep, make) = match plan.xfer_path {
            XferPath::Prepped => {
                let lp = self.conn.agent.prep_local(&local, Some(&self.conn.backend))?;
                let rp = self.conn.agent.prep_remote(&self.conn.remote_name, &remote, Some(&self.conn.backend))?;
                let prep = t0.elapsed();
                let idx: Vec<i32> = (0..descs as i32).collect();
                let t = Instant::now();
                let c = self.conn.agent.make_xfer_req(op, &lp, &idx, &rp, &idx, size, Some(Rc::clone(&with_notif)))?;
                let make = t.elapsed();
                let p = if want_plain {
                    Some(self.conn.agent.make_xfer_req(op, &lp, &idx, &rp, &idx, size, Some(Rc::clone(&plain)))?)
                } else {
                    None
                };
                (c, p, prep, make)
            }
            XferPath::Create => {
                let prep = t0.elapsed();
                let name = self.conn.remote_name.clone();
                let t = Instant::now();
                let c = self.conn.agent.create_xfer_req(op, &local, &remote, &name, Some(Rc::clone(&with_notif)))?;
                let make = t.elapsed();
                let p = if want_plain {
                    Some(self.conn.agent.create_xfer_req(op, &local, &remote, &name, Some(Rc::clone(&plain)))?)
                } else {
                    None
                };
                (c, p, prep, make)
            }
        };
        let timed: &XferReq = match (&plain_req, plan.notif_every_transfer) {
            (Some(p), false) => p,
            _ => &check_req,
        };
        let mut m = Measured { op, size, descs, block, prep, make, ..Measured::default() };

        // First checked transfer.
        m.notifs_expected = 1;
        let spec = CheckSpec {
            op,
            size,
            seed: seed_for(index, 1),
            when: "first",
            tag: &tag,
            notifs_so_far: m.notifs_expected,
            inject: first_point && plan.inject == Some(Inject::CorruptFirst),
        };
        m.checks.push(self.checked_transfer(&check_req, &spec)?);
        if !m.checks[0].ok {
            // Stop here: the numbers of a path that corrupts data mean nothing.
            let (received, unexpected) = self.target_notifs(&tag, m.notifs_expected, true)?;
            m.notifs_received = received;
            m.unexpected = unexpected;
            return Ok(self.row(m));
        }

        // Warm-up.
        let timing = &plan.timing;
        let warm_start = Instant::now();
        while m.warmup < timing.warmup_iters || warm_start.elapsed().as_secs_f64() < timing.warmup_s {
            match (&plain_req, inject_missing && m.warmup == 0) {
                // counted below as if it carried its notification: the target must come up one short
                (Some(p), true) => self.once(p)?,
                _ => self.once(timed)?,
            }
            self.beat();
            m.warmup += 1;
            if m.warmup >= timing.max_iters {
                break;
            }
        }

        // Timed loop: one transfer in flight, back to back.
        let cap = timing.max_iters.min(1 << 20) as usize;
        let mut lat: Vec<u64> = Vec::with_capacity(cap);
        let mut post: Vec<u64> = Vec::with_capacity(cap);
        let start = Instant::now();
        loop {
            let s = Instant::now();
            let st = timed.post()?;
            let p = Instant::now();
            if st == Status::InProgress {
                timed.wait_since(s, self.xfer_timeout)?;
            }
            let e = Instant::now();
            lat.push((e - s).as_nanos() as u64);
            post.push((p - s).as_nanos() as u64);
            let n = lat.len() as u64;
            if n % 64 == 0 || e - s > Duration::from_millis(100) {
                self.beat();
            }
            if n >= timing.max_iters || (n >= timing.min_iters && start.elapsed().as_secs_f64() >= timing.duration_s) {
                break;
            }
        }
        m.elapsed = start.elapsed();
        m.iterations = lat.len() as u64;
        m.latency = stats_from_ns(&mut lat);
        m.post = stats_from_ns(&mut post);
        if plan.notif_every_transfer {
            m.notifs_expected += m.warmup + m.iterations;
        }

        // Last checked transfer, with a new pattern.
        m.notifs_expected += 1;
        let spec = CheckSpec {
            op,
            size,
            seed: seed_for(index, 2),
            when: "last",
            tag: &tag,
            notifs_so_far: m.notifs_expected,
            inject: first_point && plan.inject == Some(Inject::CorruptLast),
        };
        m.checks.push(self.checked_transfer(&check_req, &spec)?);
        m.telemetry = check_req.telemetry().ok().flatten();
        let (received, unexpected) = self.target_notifs(&tag, m.notifs_expected, true)?;
        m.notifs_received = received;
        m.unexpected = unexpected;
        Ok(self.row(m))
    }

    fn row(&self, m: Measured) -> Row {
        let secs = m.elapsed.as_secs_f64();
        Row {
            backend: "nixl".into(),
            plugin: self.plan.backend.clone(),
            op: m.op,
            size_bytes: m.size,
            descs: m.descs,
            block_bytes: m.block,
            xfer_path: self.plan.xfer_path,
            iterations: m.iterations,
            warmup_iterations: m.warmup,
            elapsed_s: secs,
            gbps: crate::units::gbps(m.size as f64 * m.iterations as f64, secs),
            latency_us: m.latency,
            post_us: m.post,
            prep_us: m.prep.as_secs_f64() * 1e6,
            make_us: m.make.as_secs_f64() * 1e6,
            telemetry: m.telemetry,
            ucx_tls: ucx_tls_env(),
            verified: m.checks.len() == 2 && m.checks.iter().all(|c| c.ok),
            checks: m.checks,
            notifs_expected: m.notifs_expected,
            notifs_received: m.notifs_received,
            unexpected_notifs: m.unexpected,
        }
    }
}

/// What one point measured, before it becomes a [`Row`].
#[derive(Default)]
struct Measured {
    op: XferOp,
    size: u64,
    descs: u64,
    block: u64,
    prep: Duration,
    make: Duration,
    warmup: u64,
    iterations: u64,
    elapsed: Duration,
    latency: Stats,
    post: Stats,
    telemetry: Option<Telemetry>,
    checks: Vec<Check>,
    notifs_expected: u64,
    notifs_received: u64,
    unexpected: Vec<String>,
}

/// One checked transfer: what to move, which pattern, what to expect.
#[derive(Clone, Copy)]
struct CheckSpec<'a> {
    op: XferOp,
    size: u64,
    seed: u64,
    when: &'a str,
    tag: &'a str,
    /// Notifications the target should have for `tag` once this transfer is done.
    notifs_so_far: u64,
    /// Flip a target byte (self-test).
    inject: bool,
}

fn check(when: &str, side: &str, v: Verify) -> Check {
    Check {
        when: when.into(),
        side: side.into(),
        ok: v.ok(),
        mismatched_bytes: v.mismatched_bytes,
        first_bad_offset: v.first_bad_offset,
    }
}
