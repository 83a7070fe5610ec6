//! The initiator side: connects, sets the target up, measures every row.
//!
//! Rows are measured for each (op, size) and then each backend, so NIXL and
//! raw UCX rows of the same point sit side by side and NIXL's overhead is
//! their ratio, measured minutes apart at most. Both backends go through one
//! measurement loop ([`Transfer`]); only how a transfer is started and
//! finished differs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::kv::{Side, SideLayout};
use crate::mem::{Buffer, Region, Verify};
use crate::nixl::{
    Agent, Backend, MemType, Nixl, OptArgs, PreppedDlist, RegDescList, Registration, Status, Telemetry, XferDescList,
    XferOp, XferReq,
};
use crate::peer::{
    BackendKind, Channel, KvSetup, NixlReady, PROTOCOL, Request, Response, SyncMsg, TargetReady, TargetSetup, UcxReady,
    UcxSetup, from_hex, to_hex,
};
use crate::report::schema::{Check, PeerInfo, Row, Stats, Transport, XferPath, stats_from_ns};
use crate::ucx::{Context, Endpoint, MemHandle, RemoteKey, Ucx, Worker};
use crate::units::Bytes;

use super::{
    BackendReady, EngineError, Event, Inject, Started, SweepPlan, UcxInfo, initiator_agent_name, seed_for, ucx_tls_env,
};

mod kv;

/// Most descriptors one transfer may have (indices are C ints).
pub const MAX_DESCS: u64 = 1 << 22;

/// The NIXL side of a connection: a local agent holding the target's metadata.
#[derive(Debug)]
pub struct NixlLink {
    /// LIBFABRIC: which libfabric the plugin was given.
    pub libfabric: Option<crate::fabric_plugin::LibfabricChoice>,
    /// Plugins available to the local agent.
    pub plugins: Vec<String>,
    /// Effective local backend parameters.
    pub backend_params: BTreeMap<String, String>,
    /// The target agent's name (as loaded from its metadata).
    pub remote_name: String,
    /// The target's memory (remote descriptors carry its type and device).
    pub remote_mem: crate::mem::MemSpec,
    /// KV mode: the prepared descriptor lists of both caches (made once).
    pub kv_prepped: Option<KvPrepped>,
    /// KV mode: the registration of the local KV regions.
    pub kv_reg: Option<Registration>,
    /// The registration of the local buffer (drops before backend and agent).
    pub reg: Registration,
    /// The local backend.
    pub backend: Backend,
    /// The local agent.
    pub agent: Agent,
}

/// Descriptor lists over every (region, block) of both KV caches, prepared
/// once with `prep_xfer_dlist` as vLLM does; descriptor id = region x pool + block.
#[derive(Debug)]
pub struct KvPrepped {
    /// The decode side's (local).
    pub local: PreppedDlist,
    /// The prefill side's (remote).
    pub remote: PreppedDlist,
    /// Time to build and prepare both.
    pub prep: Duration,
}

/// The raw UCX side: an endpoint to the target's worker and its remote key.
#[derive(Debug)]
pub struct UcxLink {
    /// KV mode: the target KV buffer's remote key.
    pub kv_rkey: Option<RemoteKey>,
    /// The target buffer's remote key.
    pub rkey: RemoteKey,
    /// Endpoint to the target's worker (closed, cancelling anything still
    /// running, before the local memory is unmapped).
    pub ep: Endpoint,
    /// KV mode: the local KV buffer, mapped.
    pub kv_mem: Option<MemHandle>,
    /// The local buffer, mapped.
    pub mem: MemHandle,
    /// The local worker.
    pub worker: Worker,
    /// The local context.
    pub ctx: Context,
    /// The UCX loaded.
    pub ucx: Ucx,
    /// Address of the target's buffer.
    pub remote_addr: u64,
}

/// An initiator connected to a target, with the backends of the setup built
/// on both sides over one buffer each.
pub struct Connection {
    /// Control channel to the target.
    pub ch: Channel,
    /// What the target reported after setup.
    pub target: TargetReady,
    /// Target host name.
    pub target_host: String,
    /// Target process id.
    pub target_pid: u32,
    /// The NIXL side, when built.
    pub nixl: Option<NixlLink>,
    /// The raw UCX side, when built.
    pub ucx: Option<UcxLink>,
    /// KV mode: the decode rank's KV cache.
    pub kv: Option<LocalKv>,
    /// The local buffer (registered with each side; dropped last).
    pub buf: Rc<Buffer>,
}

/// The decode rank's KV cache.
#[derive(Debug)]
pub struct LocalKv {
    /// The buffer holding every region.
    pub buf: Rc<Buffer>,
    /// Where the blocks are.
    pub layout: SideLayout,
    /// The prefill side's layout (for remote addresses).
    pub remote: SideLayout,
    /// Geometry, layer kinds, pool.
    pub setup: KvSetup,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("target_pid", &self.target_pid)
            .field("nixl", &self.nixl.is_some())
            .field("ucx", &self.ucx.is_some())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to the target at `addr`, authenticates with `token`, has it
    /// build `setup`, and builds the same sides locally. `nixl` is needed when
    /// the setup asks for the NIXL backend.
    pub fn open(
        nixl: Option<&Nixl>,
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
        let len = usize::try_from(setup.buffer_bytes).map_err(|_| EngineError::Invalid("size too large".into()))?;
        let buf = Rc::new(Buffer::alloc(len, &setup.initiator_mem, setup.hugepages)?);
        let target = TargetReady {
            buffer_addr: 0,
            buffer_len: 0,
            nixl_lib: String::new(),
            ucx_tls: None,
            nixl: None,
            ucx: None,
            kv_addr: None,
        };
        let mut conn = Connection { ch, target, target_host, target_pid, nixl: None, ucx: None, kv: None, buf };
        conn.rebuild(nixl, setup, peer_timeout)?;
        Ok(conn)
    }

    /// Replaces the backends on both sides by those of `setup`: the local
    /// sides are released first, then the target rebuilds (it releases its
    /// old ones), then the new local sides are built. Measuring one backend
    /// at a time keeps the other's threads (NIXL's progress threads, the
    /// target's UCX progress) from competing for the cores.
    pub fn rebuild(
        &mut self,
        nixl: Option<&Nixl>,
        setup: &TargetSetup,
        peer_timeout: Duration,
    ) -> Result<(), EngineError> {
        if setup.buffer_bytes > self.buf.len() as u64 {
            return Err(EngineError::Invalid("a rebuild cannot grow the buffer".into()));
        }
        self.nixl = None;
        self.ucx = None;
        self.kv = None;
        // UCX printed the protocols the released worker used (UCX_PROTO_INFO)
        // through C stdio: flush it into the log now, so a later failure that
        // ends this process cannot lose the transport of rows already measured.
        // SAFETY: fflush(NULL) flushes every open C output stream.
        unsafe { libc::fflush(std::ptr::null_mut()) };
        if let Some(k) = &setup.kv {
            let layout = k.geometry.side(Side::Decode, k.pool_blocks);
            let len = usize::try_from(layout.total_bytes())
                .map_err(|_| EngineError::Invalid("KV cache too large for this host".into()))?;
            self.kv = Some(LocalKv {
                buf: Rc::new(Buffer::alloc(len, &setup.initiator_mem, setup.hugepages)?),
                layout,
                remote: k.geometry.side(Side::Prefill, k.pool_blocks),
                setup: k.clone(),
            });
        }
        self.target =
            match self.ch.call(&Request::Setup(Box::new(setup.clone())), peer_timeout, "the target's setup")? {
                Response::SetupDone(r) => *r,
                other => return Err(EngineError::Invalid(format!("unexpected answer to setup: {other:?}"))),
            };
        let missing = |what: &str| EngineError::Invalid(format!("the target built no {what} side"));
        if setup.backends.iter().any(|b| b.is_nixl()) {
            let nixl = nixl.ok_or_else(|| EngineError::Invalid("the nixl backend needs NIXL loaded".into()))?;
            let r = self.target.nixl.as_ref().ok_or_else(|| missing("NIXL"))?;
            let mut link = NixlLink::open(nixl, setup, &self.buf, r)?;
            if let Some(kv) = &self.kv {
                let addr = self.target.kv_addr.ok_or_else(|| missing("KV cache"))?;
                link.open_kv(nixl, kv, addr)?;
            }
            self.nixl = Some(link);
        }
        if setup.backends.contains(&BackendKind::Ucx) {
            let u =
                setup.ucx.as_ref().ok_or_else(|| EngineError::Invalid("the ucx backend needs its settings".into()))?;
            let r = self.target.ucx.as_ref().ok_or_else(|| missing("UCX"))?;
            let mut link = UcxLink::open(u, &self.buf, r, self.target.buffer_addr)?;
            if let Some(kv) = &self.kv {
                let packed = r.kv_rkey_hex.as_ref().ok_or_else(|| missing("UCX KV key"))?;
                let packed = from_hex(packed).map_err(|e| EngineError::Invalid(format!("target KV key: {e}")))?;
                link.kv_rkey = Some(RemoteKey::unpack(&link.ep, &packed)?);
                link.kv_mem = Some(MemHandle::map(&link.ctx, Rc::clone(&kv.buf))?);
            }
            // The target connects back, as ucx_perftest's server does, so that
            // UCX polls its interface (see Request::UcxConnect).
            let req = Request::UcxConnect { worker_address_hex: to_hex(&link.worker.address()?) };
            match self.ch.call(&req, peer_timeout, "the target's UCX endpoint back")? {
                Response::Ok => {}
                other => return Err(EngineError::Invalid(format!("unexpected answer to ucx connect: {other:?}"))),
            }
            self.ucx = Some(link);
        }
        Ok(())
    }

    /// NIXL descriptor lists for the first `size` bytes of both buffers, in
    /// blocks of `block` bytes.
    pub fn desc_lists(&self, size: u64, block: u64) -> Result<(XferDescList, XferDescList), EngineError> {
        let link = self.nixl.as_ref().ok_or_else(|| EngineError::Invalid("no NIXL side".into()))?;
        check_split(size, block, self.buf.len() as u64, self.target.buffer_len)?;
        let n = (size / block) as usize;
        let nixl = link.agent.nixl();
        let mut local = XferDescList::new(nixl, MemType::from(self.buf.kind()))?;
        local.add_local_strided(&link.reg, self.buf.addr(), block as usize, n, self.buf.dev_id())?;
        let mut remote = XferDescList::new(nixl, MemType::from(link.remote_mem.kind))?;
        remote.add_strided(self.target.buffer_addr as usize, block as usize, n, link.remote_dev())?;
        Ok((local, remote))
    }

    /// Says goodbye; the target releases everything and exits. Returns the
    /// errors the target met while releasing its NIXL and UCX objects.
    pub fn close(mut self, peer_timeout: Duration) -> Result<Vec<String>, EngineError> {
        match self.ch.call(&Request::Bye, peer_timeout, "the target's goodbye")? {
            Response::Bye { drop_errors } => Ok(drop_errors),
            other => Err(EngineError::Invalid(format!("unexpected answer to bye: {other:?}"))),
        }
    }
}

fn check_split(size: u64, block: u64, local: u64, remote: u64) -> Result<(), EngineError> {
    if block == 0 || size % block != 0 || size > local || size > remote {
        return Err(EngineError::Invalid(format!(
            "cannot split {size} B into {block}-byte descriptors of the buffers"
        )));
    }
    Ok(())
}

impl NixlLink {
    fn open(nixl: &Nixl, setup: &TargetSetup, buf: &Rc<Buffer>, r: &NixlReady) -> Result<NixlLink, EngineError> {
        // before the agent exists: NIXL may load its plugins as it discovers them
        let libfabric = crate::fabric_plugin::prepare_backend(&setup.backend).map_err(EngineError::Invalid)?;
        let agent = Agent::new(nixl, &initiator_agent_name(), &setup.agent)?;
        let plugins = agent.available_plugins()?;
        if !plugins.iter().any(|p| p == &setup.backend) {
            return Err(EngineError::Invalid(format!(
                "NIXL backend plugin '{}' is not available (NIXL can load: {}). Check the plugin directory (NIXL_PLUGIN_DIR) and the plugin's dependencies (kvprobe doctor).",
                setup.backend,
                if plugins.is_empty() { "none".to_string() } else { plugins.join(", ") }
            )));
        }
        let backend = agent.create_backend(&setup.backend, &setup.backend_params).map_err(|e| {
            match crate::fabric_plugin::backend_failure_hint(&setup.backend) {
                Some(h) => EngineError::Invalid(format!("{e}: {h}")),
                None => e.into(),
            }
        })?;
        let backend_params = agent.backend_params(&backend).map(|p| p.params).unwrap_or_default();
        let mut dl = RegDescList::new(nixl, MemType::from(buf.kind()))?;
        dl.add(buf.addr(), buf.len(), buf.dev_id())?;
        let reg = agent.register_owned(Rc::clone(buf), dl, Some(&backend))?;
        let md = from_hex(&r.metadata_hex).map_err(|e| EngineError::Invalid(format!("target metadata: {e}")))?;
        let remote_name = agent.load_remote_metadata(&md)?;
        if remote_name != r.agent_name {
            return Err(EngineError::Invalid(format!(
                "metadata names agent '{remote_name}', expected '{}'",
                r.agent_name
            )));
        }
        Ok(NixlLink {
            libfabric,
            plugins,
            backend_params,
            remote_name,
            remote_mem: setup.target_mem,
            kv_prepped: None,
            kv_reg: None,
            reg,
            backend,
            agent,
        })
    }

    /// The device id of the target's registrations.
    fn remote_dev(&self) -> u64 {
        match self.remote_mem.kind {
            crate::mem::MemKind::Vram => u64::from(self.remote_mem.gpu),
            crate::mem::MemKind::Dram => 0,
        }
    }

    /// KV mode: registers the local regions and prepares the descriptor lists
    /// of both caches over every (region, block), once.
    fn open_kv(&mut self, nixl: &Nixl, kv: &LocalKv, remote_base: u64) -> Result<(), EngineError> {
        let reg = super::target::register_kv(&self.agent, &self.backend, nixl, &kv.buf, &kv.layout)?;
        let g = &kv.setup.geometry;
        let pool = kv.setup.pool_blocks;
        let len = g.d_block_bytes as usize;
        let mut local = XferDescList::new(nixl, MemType::from(kv.buf.kind()))?;
        let mut remote = XferDescList::new(nixl, MemType::from(self.remote_mem.kind))?;
        let (ldev, rdev) = (kv.buf.dev_id(), self.remote_dev());
        for r in 0..g.desc_regions {
            for b in 0..pool {
                local.add_local(&reg, kv.buf.addr() + kv.layout.desc_offset(g, r, b) as usize, len, ldev)?;
                remote.add((remote_base + kv.remote.desc_offset(g, r, b)) as usize, len, rdev)?;
            }
        }
        // prep = NIXL's prep_xfer_dlist of both lists (building them above is kvprobe's own work).
        let t = Instant::now();
        let lp = self.agent.prep_local(&local, Some(&self.backend))?;
        let rp = self.agent.prep_remote(&self.remote_name, &remote, Some(&self.backend))?;
        self.kv_prepped = Some(KvPrepped { local: lp, remote: rp, prep: t.elapsed() });
        self.kv_reg = Some(reg);
        Ok(())
    }
}

impl UcxLink {
    fn open(u: &UcxSetup, buf: &Rc<Buffer>, r: &UcxReady, remote_addr: u64) -> Result<UcxLink, EngineError> {
        let ucx = Ucx::open(&u.lib)?;
        let ctx = Context::new(
            &ucx,
            &format!("kvprobe-ucx-initiator-{}", std::process::id()),
            &u.settings_for(ucx.version_tuple()),
        )?;
        let worker = Worker::new(&ctx)?;
        let mem = MemHandle::map(&ctx, Rc::clone(buf))?;
        let bad = |what: &str, e: String| EngineError::Invalid(format!("target {what}: {e}"));
        let addr = from_hex(&r.worker_address_hex).map_err(|e| bad("worker address", e))?;
        let ep = Endpoint::connect(&worker, &addr, u.peer_errors)?;
        let rkey = RemoteKey::unpack(&ep, &from_hex(&r.rkey_hex).map_err(|e| bad("remote key", e))?)?;
        Ok(UcxLink { kv_rkey: None, kv_mem: None, rkey, ep, mem, worker, ctx, ucx, remote_addr })
    }
}

/// One transfer as the measurement loop sees it.
trait Transfer {
    /// Starts it; `true` when it already finished.
    fn post(&mut self) -> Result<bool, EngineError>;
    /// Waits until it finishes; an error after `limit` from `start`.
    fn wait(&mut self, start: Instant, limit: Duration) -> Result<(), EngineError>;
    /// Ends a timed loop (inside its clock): completes whatever the
    /// transfers left pending at the target.
    fn finish(&mut self, _start: Instant, _limit: Duration) -> Result<(), EngineError> {
        Ok(())
    }
}

/// A NIXL request, reposted each time.
struct NixlXfer<'a>(&'a XferReq);

impl Transfer for NixlXfer<'_> {
    #[inline]
    fn post(&mut self) -> Result<bool, EngineError> {
        Ok(self.0.post()? == Status::Done)
    }
    #[inline]
    fn wait(&mut self, start: Instant, limit: Duration) -> Result<(), EngineError> {
        Ok(self.0.wait_since(start, limit)?)
    }
}

/// A raw UCX transfer: one get or put per descriptor and, for WRITE, an
/// endpoint flush, so that completion means the data is at the target (what
/// NIXL reports for a WRITE). The handles are shared clones, so a transfer
/// borrows nothing from the connection.
struct UcxXfer {
    ep: Endpoint,
    mem: MemHandle,
    rkey: RemoteKey,
    remote_addr: u64,
    op: XferOp,
    block: usize,
    descs: usize,
    pending: Vec<crate::ucx::Request>,
    /// Ask UCX for a request on the first descriptor of the next post and
    /// keep its protocol string.
    describe: bool,
    described: Option<String>,
    /// Flush after every WRITE (remote completion, NIXL's meaning); false:
    /// local completion per WRITE and one flush at the end of the loop
    /// (ucx_perftest put_bw's meaning).
    flush_each: bool,
}

impl UcxXfer {
    fn new(link: &UcxLink, op: XferOp, block: usize, descs: usize, describe: bool) -> UcxXfer {
        UcxXfer {
            ep: link.ep.clone(),
            mem: link.mem.clone(),
            rkey: link.rkey.clone(),
            remote_addr: link.remote_addr,
            op,
            block,
            descs,
            pending: Vec::with_capacity(descs + 1),
            describe,
            described: None,
            flush_each: true,
        }
    }
}

impl Transfer for UcxXfer {
    fn post(&mut self) -> Result<bool, EngineError> {
        for i in 0..self.descs {
            let off = i * self.block;
            let force = self.describe && i == 0;
            let remote = self.remote_addr + off as u64;
            let r = match self.op {
                XferOp::Read => self.ep.get(&self.mem, off, self.block, remote, &self.rkey, force)?,
                XferOp::Write => self.ep.put(&self.mem, off, self.block, remote, &self.rkey, force)?,
            };
            if let Some(r) = r {
                if force {
                    self.described = r.info().ok();
                    self.describe = false;
                }
                self.pending.push(r);
            }
        }
        if self.op == XferOp::Write && self.flush_each {
            if let Some(f) = self.ep.flush()? {
                self.pending.push(f);
            }
        }
        Ok(self.pending.is_empty())
    }

    fn finish(&mut self, start: Instant, limit: Duration) -> Result<(), EngineError> {
        if self.op == XferOp::Write && !self.flush_each {
            if let Some(f) = self.ep.flush()? {
                f.wait_since(start, limit)?;
            }
        }
        Ok(())
    }

    fn wait(&mut self, start: Instant, limit: Duration) -> Result<(), EngineError> {
        // The last operation (or the flush) ends last: wait for it first, then
        // the rest are already done.
        while let Some(r) = self.pending.last() {
            r.wait_since(start, limit)?;
            self.pending.pop();
        }
        Ok(())
    }
}

struct Session<'a> {
    plan: &'a SweepPlan,
    emit: &'a mut dyn FnMut(Event),
    last_beat: Instant,
    peer_timeout: Duration,
    xfer_timeout: Duration,
    conn: Connection,
    /// A TP run's barrier (`kvprobe tp`): every timed loop starts on its go.
    sync: Option<Channel>,
    /// The number of the timed loop about to run (the barrier's point).
    point: u64,
}

/// Runs the whole plan, reporting through `emit`. Returns after the last row,
/// or at the first error (rows already emitted stay valid). On success, the
/// errors the target met while releasing its objects.
pub fn run(plan: &SweepPlan, nixl: Option<&Nixl>, emit: &mut dyn FnMut(Event)) -> Result<Vec<String>, EngineError> {
    validate(plan)?;
    let peer_timeout = Duration::from_secs_f64(plan.timing.peer_timeout_s);
    // KV mode: the plain buffer carries the contiguous reference transfer of
    // a whole request's bytes.
    let buffer_bytes = match &plan.kv {
        Some(k) => k.max_request_bytes(),
        None => plan.sizes.iter().copied().max().unwrap_or(0),
    };
    let setup_kv = |backend: BackendKind, kv: Option<KvSetup>| TargetSetup {
        agent: plan.agent.clone(),
        backend: backend.nixl_plugin().unwrap_or("UCX").to_string(),
        backend_params: crate::peer::params_for(backend.nixl_plugin().unwrap_or("UCX"), &plan.backend_params),
        buffer_bytes,
        backends: vec![backend],
        ucx: plan.ucx.clone(),
        hugepages: plan.hugepages,
        kv,
        target_mem: plan.target_mem,
        initiator_mem: plan.initiator_mem,
        initiator_agent: Some(initiator_agent_name()),
    };
    let setup_for = |backend: BackendKind| setup_kv(backend, plan.kv.as_ref().map(|k| k.setup(0)));
    let first = *plan.backends.first().ok_or_else(|| EngineError::Invalid("no backend".into()))?;
    let mut conn = Connection::open(nixl, &plan.target_addr, &plan.token, &setup_for(first), peer_timeout)?;
    // This host's UCX transports (the device view), from the UCX in use: the
    // raw side's, or the one NIXL links (NIXL's plugin has loaded it).
    let view_ucx = match (&conn.ucx, &plan.ucx) {
        (Some(l), _) => Some(l.ucx.clone()),
        (None, Some(u)) => Ucx::open(&u.lib).ok(),
        (None, None) => None,
    };
    let resources =
        view_ucx.and_then(|u| crate::ucx::info::device_view(&u).ok()).map(|v| v.resources).unwrap_or_default();
    emit(Event::Started(Started {
        // GPU memory has no NUMA node of its own to look up
        buffer_numa: (conn.buf.kind() == crate::mem::MemKind::Dram)
            .then(|| crate::mem::numa_node_of(conn.buf.addr()))
            .flatten(),
        initiator_pid: std::process::id(),
        resources,
        target: PeerInfo {
            addr: plan.target_addr.clone(),
            host: conn.target_host.clone(),
            pid: conn.target_pid,
            nixl_lib: conn.target.nixl_lib.clone(),
            ucx_tls: conn.target.ucx_tls.clone(),
            backend_params: conn.target.nixl.as_ref().map(|n| n.backend_params.clone()).unwrap_or_default(),
        },
    }));

    // The link probe only feeds the verdict: when it fails (a firewall
    // between the hosts, say), the sweep goes on and the verdict falls back
    // to the NIC's rating.
    if plan.link_probe_s > 0.0 {
        match link_probe(&mut conn, plan, peer_timeout) {
            Ok(l) => emit(Event::Link(l)),
            Err(e @ EngineError::Peer(_)) => return Err(e),
            Err(e) => eprintln!("kvprobe: link probe skipped: {e}"),
        }
    }
    let sync = match &plan.sync {
        Some(spec) => Some(sync_connect(spec, peer_timeout)?),
        None => None,
    };
    let mut s = Session {
        plan,
        emit,
        last_beat: Instant::now(),
        peer_timeout,
        xfer_timeout: Duration::from_secs_f64(plan.timing.xfer_timeout_s),
        conn,
        sync,
        point: 0,
    };
    if let Some(kvp) = &plan.kv {
        let total = plan.ops.len() * kvp.isls.len() * kvp.geometries.len() * plan.backends.len();
        let mut index = 0;
        for (bi, &backend) in plan.backends.iter().enumerate() {
            let mut first_point = true;
            for gi in 0..kvp.geometries.len() {
                if bi > 0 || gi > 0 {
                    (s.emit)(Event::Setup { backend });
                    s.conn.rebuild(nixl, &setup_kv(backend, Some(kvp.setup(gi))), peer_timeout)?;
                }
                if gi == 0 {
                    let ready = s.backend_ready(backend, nixl)?;
                    (s.emit)(Event::Backend(Box::new(ready)));
                }
                for &op in &plan.ops {
                    for &isl in &kvp.isls {
                        let size = kvp.geometries[gi].request(&kvp.layer_kinds, isl).bytes;
                        (s.emit)(Event::Point { index, total, op, size, backend });
                        let row = s.measure_kv(index, first_point, op, isl, backend).map_err(|e| s.explain_loss(e))?;
                        first_point = false;
                        s.emit_checked(row, &format!("{backend} {op} ISL {isl}"))?;
                        index += 1;
                    }
                }
            }
        }
        let target_drop_errors = s.conn.close(peer_timeout)?;
        return Ok(target_drop_errors.into_iter().map(|e| format!("target: {e}")).collect());
    }
    let total = plan.ops.len() * plan.sizes.len() * plan.backends.len();
    let mut index = 0;
    for (bi, &backend) in plan.backends.iter().enumerate() {
        if bi > 0 {
            (s.emit)(Event::Setup { backend });
            s.conn.rebuild(nixl, &setup_for(backend), peer_timeout)?;
        }
        let ready = s.backend_ready(backend, nixl)?;
        (s.emit)(Event::Backend(Box::new(ready)));
        let mut first_point = true;
        for &op in &plan.ops {
            for &size in &plan.sizes {
                (s.emit)(Event::Point { index, total, op, size, backend });
                let row = s.measure(index, first_point, op, size, backend).map_err(|e| s.explain_loss(e))?;
                first_point = false;
                s.emit_checked(row, &format!("{backend} {op} {size} B"))?;
                index += 1;
            }
        }
    }
    let target_drop_errors = s.conn.close(peer_timeout)?;
    Ok(target_drop_errors.into_iter().map(|e| format!("target: {e}")).collect())
}

/// Joins a TP run's barrier: connects to the orchestrator and says which
/// decode rank this is.
fn sync_connect(spec: &super::SyncSpec, timeout: Duration) -> Result<Channel, EngineError> {
    let mut ch = Channel::connect(&spec.addr, Duration::from_secs(10))?;
    ch.send(&SyncMsg::Hello { token: spec.token.clone(), rank: spec.rank }, "the TP run's hello")?;
    match ch.recv::<SyncMsg>(Some(timeout), "the TP run's welcome")? {
        SyncMsg::Welcome => Ok(ch),
        SyncMsg::Stop { reason } => Err(EngineError::Handshake(format!("the TP run refused this rank: {reason}"))),
        other => Err(EngineError::Handshake(format!("the TP run answered {other:?}"))),
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of a host,
/// so the ranks of a TP run can be lined up.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec we own; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Streams plain TCP both ways between the two processes, over the control
/// connection's route: what one TCP stream gets from this network.
fn link_probe(
    conn: &mut Connection,
    plan: &SweepPlan,
    peer_timeout: Duration,
) -> Result<crate::report::schema::LinkProbe, EngineError> {
    let duration = Duration::from_secs_f64(plan.link_probe_s.min(30.0));
    let (local, remote) = conn.ch.addrs().map_err(|e| EngineError::Invalid(format!("control address: {e}")))?;
    let mut rate = |to_target: bool| -> Result<f64, EngineError> {
        let req = Request::LinkProbe { to_target, duration_ms: duration.as_millis() as u64 };
        let port = match conn.ch.call(&req, peer_timeout, "the target's link probe")? {
            Response::ProbeReady { port } => port,
            other => return Err(EngineError::Invalid(format!("unexpected answer to link probe: {other:?}"))),
        };
        let io = |e: std::io::Error| EngineError::Invalid(format!("link probe to {}: {e}", remote.ip()));
        let mut s = std::net::TcpStream::connect_timeout(&SocketAddr::new(remote.ip(), port), Duration::from_secs(10))
            .map_err(io)?;
        let mine = if to_target {
            crate::peer::probe_send(&mut s, duration).map_err(io)?;
            None
        } else {
            Some(crate::peer::probe_recv(&mut s, duration + Duration::from_secs(10)).map_err(io)?)
        };
        let theirs = match conn.ch.recv::<Response>(Some(peer_timeout + duration), "the link probe's result")? {
            Response::ProbeDone { bytes, seconds } => (bytes, seconds),
            Response::Error { message } => return Err(EngineError::Invalid(message)),
            other => return Err(EngineError::Invalid(format!("unexpected link probe result: {other:?}"))),
        };
        // The receiver's clock: first to last byte.
        let (bytes, secs) = mine.unwrap_or(theirs);
        Ok(crate::units::gbps(bytes as f64, secs))
    };
    let to_target_gbps = rate(true)?;
    let from_target_gbps = rate(false)?;
    Ok(crate::report::schema::LinkProbe {
        local_addr: local.to_string(),
        target_addr: remote.to_string(),
        to_target_gbps,
        from_target_gbps,
        duration_s: duration.as_secs_f64(),
        local_dev: None,
        local_dev_mbps: None,
    })
}

/// Checks a plan before anything starts; the message names the flag.
pub fn validate(plan: &SweepPlan) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::Invalid(m));
    if plan.sizes.is_empty() || plan.ops.is_empty() {
        return bad("nothing to measure: no sizes (--sizes) or no operations (--ops)".into());
    }
    if plan.backends.is_empty() {
        return bad("no backend to measure (--backend)".into());
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

/// One checked transfer: what to move, which pattern, what to expect.
#[derive(Clone, Copy)]
struct CheckSpec<'a> {
    op: XferOp,
    size: u64,
    seed: u64,
    when: &'a str,
    tag: &'a str,
    /// Notifications the target should have for `tag` once this transfer is
    /// done (None: the transfer carries none, as with raw UCX).
    notifs_so_far: Option<u64>,
    /// Flip a target byte (self-test).
    inject: bool,
    /// Check block by block (bytes per block; 0: as one block).
    block: u64,
    /// Zero every other destination block after the transfer (self-test, `--inject zero-blocks`).
    zero: bool,
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
    transport: Option<Transport>,
    /// `--verify all`: timed transfers checked, those that arrived wrong, their bad blocks.
    timed_checked: u64,
    timed_corrupt: u64,
    timed_bad_blocks: u64,
    /// CLOCK_MONOTONIC ns at the timed loop's start and end (TP runs line ranks up by it).
    window: Option<[u64; 2]>,
}

impl Session<'_> {
    /// Emits a measured row, then fails the run if its data or notifications
    /// were wrong (the row stays on disk with what went wrong).
    fn emit_checked(&mut self, row: Row, what: &str) -> Result<(), EngineError> {
        let verified = row.verified;
        let notifs_ok = row.notifs_received == row.notifs_expected && row.unexpected_notifs.is_empty();
        let bad = format!("{what}: {:?}", row.checks.iter().filter(|c| !c.ok).collect::<Vec<_>>());
        let notif_msg = format!(
            "{what}: the target received {} notifications where {} were sent{}",
            row.notifs_received,
            row.notifs_expected,
            if row.unexpected_notifs.is_empty() {
                String::new()
            } else {
                format!(", and unexpected messages {:?}", row.unexpected_notifs)
            }
        );
        (self.emit)(Event::Row(Box::new(row)));
        if !verified {
            return Err(EngineError::Verification(bad));
        }
        if !notifs_ok {
            return Err(EngineError::Verification(notif_msg));
        }
        Ok(())
    }

    /// A transfer error when the target is gone says so: NIXL and UCX report a
    /// dead peer as a generic backend error.
    fn explain_loss(&self, e: EngineError) -> EngineError {
        if matches!(e, EngineError::Peer(_) | EngineError::PeerLost { .. }) {
            return e;
        }
        if self.conn.ch.peer_closed(Duration::from_millis(200)) {
            let who =
                format!("(pid {} on {} at {})", self.conn.target_pid, self.conn.target_host, self.plan.target_addr);
            return EngineError::PeerLost { who, cause: Box::new(e) };
        }
        e
    }

    /// Tells the watcher this process is alive, at most about once a second.
    #[inline]
    fn beat(&mut self) {
        if self.last_beat.elapsed().as_secs_f64() >= self.plan.timing.keepalive_s {
            (self.emit)(Event::Heartbeat);
            // A failed send means the target is gone; the next request says so.
            let _ = self.conn.ch.send(&Request::KeepAlive, "keep-alive");
            self.last_beat = Instant::now();
        }
    }

    /// A TP run: says this rank is ready to time loop `point` and waits for
    /// the orchestrator's go, as long as it takes (the orchestrator bounds
    /// it), keeping the target and the watcher informed. Without a barrier,
    /// returns at once.
    fn sync_point(&mut self, point: u64) -> Result<(), EngineError> {
        if self.sync.is_none() {
            return Ok(());
        }
        let limit = self.peer_timeout;
        if let Some(ch) = self.sync.as_mut() {
            ch.send(&SyncMsg::Ready { point }, "ready")?;
        }
        loop {
            let ready = match self.sync.as_ref() {
                Some(ch) => ch.readable(Duration::from_millis(50))?,
                None => return Ok(()),
            };
            if ready {
                let msg = match self.sync.as_mut() {
                    Some(ch) => ch.recv::<SyncMsg>(Some(limit), "the TP run's go")?,
                    None => return Ok(()),
                };
                return match msg {
                    SyncMsg::Go => Ok(()),
                    SyncMsg::Stop { reason } => Err(EngineError::Invalid(format!("the TP run stopped: {reason}"))),
                    other => Err(EngineError::Invalid(format!("the TP run sent {other:?} instead of go"))),
                };
            }
            // no limit of its own: the orchestrator bounds every barrier and
            // says stop (or its connection closes, and the next look says so)
            self.beat();
        }
    }

    fn call(&mut self, req: Request, what: &str) -> Result<Response, EngineError> {
        Ok(self.conn.ch.call(&req, self.peer_timeout, what)?)
    }

    fn target_verify(&mut self, len: u64, seed: u64, block: u64) -> Result<Verify, EngineError> {
        match self.call(Request::Verify { off: 0, len, seed, block }, "the target's data check")? {
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
    fn once(&self, t: &mut dyn Transfer) -> Result<(), EngineError> {
        let start = Instant::now();
        if !t.post()? {
            t.wait(start, self.xfer_timeout)?;
        }
        Ok(())
    }

    /// Moves data with `t` and checks it: the owner writes a fresh pattern,
    /// the destination is poisoned first, the reader checks every byte.
    fn checked_transfer(&mut self, t: &mut dyn Transfer, c: &CheckSpec<'_>) -> Result<Check, EngineError> {
        Ok(self.checked_transfer_timed(t, c)?.0)
    }

    /// [`Self::checked_transfer`], also returning how long the transfer
    /// itself took (post to completion) and its post call.
    fn checked_transfer_timed(
        &mut self,
        t: &mut dyn Transfer,
        c: &CheckSpec<'_>,
    ) -> Result<(Check, Duration, Duration), EngineError> {
        let CheckSpec { op, size, seed, when, tag, notifs_so_far, inject, block, zero } = *c;
        let n = size as usize;
        // every other block (or the second half of a single one) arrives as zeros
        let zeroed = |size: u64| -> Vec<(u64, u64)> {
            if block == 0 || block >= size {
                return vec![(size / 2, size - size / 2)];
            }
            (0..size.div_ceil(block)).filter(|k| k % 2 == 1).map(|k| (k * block, block.min(size - k * block))).collect()
        };
        let timed = |this: &Self, t: &mut dyn Transfer| -> Result<(Duration, Duration), EngineError> {
            let s = Instant::now();
            let done = t.post()?;
            let p = s.elapsed();
            if !done {
                t.wait(s, this.xfer_timeout)?;
            }
            Ok((s.elapsed(), p))
        };
        match op {
            XferOp::Read => {
                self.call(Request::Fill { off: 0, len: size, seed }, "the target's fill")?;
                if inject {
                    self.call(Request::Corrupt { off: size / 2 }, "the target's fault injection")?;
                }
                // SAFETY: no transfer is in flight: the previous one completed
                // (once() waits) and this process posts one at a time.
                unsafe { self.conn.buf.poison(0, n) }?;
                let (took, post) = timed(self, t)?;
                if zero {
                    for (o, l) in zeroed(size) {
                        // SAFETY: the READ completed; nothing else is in flight.
                        unsafe { self.conn.buf.zero(o as usize, l as usize) }?;
                    }
                }
                // SAFETY: the READ completed in timed(); nothing else is in flight.
                let v = unsafe { self.conn.buf.verify_blocks(0, n, block as usize, seed) }?;
                Ok((check(when, "initiator", v), took, post))
            }
            XferOp::Write => {
                // SAFETY: no transfer is in flight (one at a time, each waited for).
                unsafe { self.conn.buf.fill(0, n, seed) }?;
                self.call(Request::Poison { off: 0, len: size }, "the target's poison")?;
                let (took, post) = timed(self, t)?;
                if let Some(expected) = notifs_so_far {
                    // NIXL: the notification arrives after the data; once the
                    // target has it, the bytes are in place. (Raw UCX: the
                    // flush inside the transfer already guaranteed that.)
                    let (got, _) = self.target_notifs(tag, expected, false)?;
                    if got < expected {
                        return Err(EngineError::Verification(format!(
                            "WRITE {size} B: the target saw {got} of {expected} notifications before its data check"
                        )));
                    }
                }
                if inject {
                    self.call(Request::Corrupt { off: size / 2 }, "the target's fault injection")?;
                }
                if zero {
                    for (off, len) in zeroed(size) {
                        self.call(Request::Zero { off, len }, "the target's fault injection")?;
                    }
                }
                let v = self.target_verify(size, seed, block)?;
                Ok((check(when, "target", v), took, post))
            }
        }
    }

    /// `--verify all`: the timed loop as checked transfers. Each one gets a
    /// fresh pattern in the source and a poisoned destination, and every
    /// block is read back; only the transfers are timed (so the GB/s is of
    /// transfers into cold, just-written memory), and `--duration` bounds the
    /// wall time. The first checked transfer warmed the path: no warm-up.
    /// `notifs` counts the notifications the target has for this point.
    fn run_verified_loops(
        &mut self,
        t: &mut dyn Transfer,
        base: &CheckSpec<'_>,
        index: usize,
        zero_first: bool,
        mut notifs: Option<&mut u64>,
        m: &mut Measured,
    ) -> Result<(), EngineError> {
        let timing = self.plan.timing;
        let cap = timing.max_iters.min(1 << 20) as usize;
        let mut lat: Vec<u64> = Vec::with_capacity(cap.min(1 << 16));
        let mut post: Vec<u64> = Vec::with_capacity(cap.min(1 << 16));
        self.sync_point(self.point)?;
        let t0 = monotonic_ns();
        let wall = Instant::now();
        let mut busy = Duration::ZERO;
        loop {
            let k = lat.len() as u64;
            let so_far = notifs.as_deref_mut().map(|n| {
                *n += 1;
                *n
            });
            let spec = CheckSpec {
                seed: seed_for(index, 16 + k),
                when: "timed",
                notifs_so_far: so_far.filter(|_| base.notifs_so_far.is_some()),
                inject: false,
                zero: zero_first && k == 0,
                ..*base
            };
            let (c, took, p) = self.checked_transfer_timed(t, &spec)?;
            busy += took;
            lat.push(took.as_nanos() as u64);
            post.push(p.as_nanos() as u64);
            m.timed_checked += 1;
            if !c.ok {
                m.timed_corrupt += 1;
                m.timed_bad_blocks += c.bad_blocks;
                if m.timed_corrupt == 1 {
                    m.checks.push(c);
                }
            }
            self.beat();
            let n = lat.len() as u64;
            if n >= timing.max_iters || (n >= timing.min_iters && wall.elapsed().as_secs_f64() >= timing.duration_s) {
                break;
            }
        }
        m.elapsed = busy;
        m.window = Some([t0, monotonic_ns()]);
        m.iterations = lat.len() as u64;
        m.latency = stats_from_ns(&mut lat);
        m.post = stats_from_ns(&mut post);
        Ok(())
    }

    /// Warm-up then the timed loop (one transfer in flight, back to back);
    /// `first_alt` replaces the first warm-up transfer (fault injection).
    fn run_loops(
        &mut self,
        t: &mut dyn Transfer,
        first_alt: Option<&mut dyn Transfer>,
        m: &mut Measured,
    ) -> Result<(), EngineError> {
        let timing = self.plan.timing;
        let warm_start = Instant::now();
        let mut alt = first_alt;
        while m.warmup < timing.warmup_iters || warm_start.elapsed().as_secs_f64() < timing.warmup_s {
            match alt.take() {
                Some(a) => self.once(a)?,
                None => self.once(t)?,
            }
            self.beat();
            m.warmup += 1;
            if m.warmup >= timing.max_iters {
                break;
            }
        }
        let cap = timing.max_iters.min(1 << 20) as usize;
        let mut lat: Vec<u64> = Vec::with_capacity(cap);
        let mut post: Vec<u64> = Vec::with_capacity(cap);
        self.sync_point(self.point)?;
        let t0 = monotonic_ns();
        let start = Instant::now();
        loop {
            let s = Instant::now();
            let done = t.post()?;
            let p = Instant::now();
            if !done {
                t.wait(s, self.xfer_timeout)?;
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
        t.finish(Instant::now(), self.xfer_timeout)?;
        m.elapsed = start.elapsed();
        m.window = Some([t0, monotonic_ns()]);
        m.iterations = lat.len() as u64;
        m.latency = stats_from_ns(&mut lat);
        m.post = stats_from_ns(&mut post);
        Ok(())
    }

    /// What the backend just set up is, for the report.
    fn backend_ready(&self, backend: BackendKind, nixl: Option<&Nixl>) -> Result<BackendReady, EngineError> {
        let mut r = BackendReady {
            backend,
            library_version: None,
            plugins: Vec::new(),
            backend_params: BTreeMap::new(),
            target_backend_params: BTreeMap::new(),
            ucx: None,
            libfabric: None,
        };
        if let Some(n) = &self.conn.nixl {
            r.libfabric = n.libfabric.as_ref().map(crate::fabric_plugin::facts_in_process);
            r.library_version = nixl.and_then(Nixl::version);
            r.plugins = n.plugins.clone();
            r.backend_params = n.backend_params.clone();
            r.target_backend_params =
                self.conn.target.nixl.as_ref().map(|t| t.backend_params.clone()).unwrap_or_default();
        }
        if let Some(l) = &self.conn.ucx {
            r.ucx = Some(UcxInfo {
                lib: l.ucx.path().display().to_string(),
                version: l.ucx.version(),
                applied: l.ctx.applied.clone(),
                not_applied: l.ctx.not_applied.clone(),
                endpoint_lanes: l.ep.lanes()?.into_iter().map(|x| format!("{}/{}", x.transport, x.device)).collect(),
            });
        }
        Ok(r)
    }

    fn measure(
        &mut self,
        index: usize,
        first: bool,
        op: XferOp,
        size: u64,
        backend: BackendKind,
    ) -> Result<Row, EngineError> {
        let block = self.plan.block.map_or(size, |b| b.min(size));
        let m = match backend {
            BackendKind::NixlUcx | BackendKind::NixlLibfabric => self.measure_nixl(index, first, op, size, block)?,
            BackendKind::Ucx => self.measure_ucx(index, first, op, size, block)?,
        };
        Ok(self.row(backend, m))
    }

    fn measure_nixl(
        &mut self,
        index: usize,
        first_point: bool,
        op: XferOp,
        size: u64,
        block: u64,
    ) -> Result<Measured, EngineError> {
        self.point = index as u64;
        let plan = self.plan;
        let descs = size / block;
        let tag = format!("kvprobe:{index}:{op}:{size}");
        let inject_missing = first_point && plan.inject == Some(Inject::MissingNotif);
        let link = self.conn.nixl.as_ref().ok_or_else(|| EngineError::Invalid("no NIXL side".into()))?;
        let (agent, nbackend, remote_name) = (link.agent.clone(), link.backend.clone(), link.remote_name.clone());
        let nixl = agent.nixl().clone();

        let with_notif = Rc::new(OptArgs::with_backend(&nixl, &nbackend)?);
        with_notif.set_notification(tag.as_bytes())?;
        let plain = Rc::new(OptArgs::with_backend(&nixl, &nbackend)?);
        // A request without a notification: the timed one with --no-notif, and
        // the fault injected by --inject missing-notif.
        let want_plain = !plan.notif_every_transfer || inject_missing;

        // Build the request(s). prep = descriptor lists (+ prep_xfer_dlist on
        // the prepped path); make = make_xfer_req / create_xfer_req.
        let t0 = Instant::now();
        let (local, remote) = self.conn.desc_lists(size, block)?;
        let (check_req, plain_req, prep, make) = match plan.xfer_path {
            XferPath::Ucp => return Err(EngineError::Invalid("the ucp path is raw UCX's, not NIXL's".into())),
            XferPath::Prepped => {
                let lp = agent.prep_local(&local, Some(&nbackend))?;
                let rp = agent.prep_remote(&remote_name, &remote, Some(&nbackend))?;
                let prep = t0.elapsed();
                let idx: Vec<i32> = (0..descs as i32).collect();
                let t = Instant::now();
                let c = agent.make_xfer_req(op, &lp, &idx, &rp, &idx, size, Some(Rc::clone(&with_notif)))?;
                let make = t.elapsed();
                let p = if want_plain {
                    Some(agent.make_xfer_req(op, &lp, &idx, &rp, &idx, size, Some(Rc::clone(&plain)))?)
                } else {
                    None
                };
                (c, p, prep, make)
            }
            XferPath::Create => {
                let prep = t0.elapsed();
                let t = Instant::now();
                let c = agent.create_xfer_req(op, &local, &remote, &remote_name, Some(Rc::clone(&with_notif)))?;
                let make = t.elapsed();
                let p = if want_plain {
                    Some(agent.create_xfer_req(op, &local, &remote, &remote_name, Some(Rc::clone(&plain)))?)
                } else {
                    None
                };
                (c, p, prep, make)
            }
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
            notifs_so_far: Some(m.notifs_expected),
            inject: first_point && plan.inject == Some(Inject::CorruptFirst),
            block: if descs > 1 { block } else { 0 },
            zero: false,
        };
        m.checks.push(self.checked_transfer(&mut NixlXfer(&check_req), &spec)?);
        if !m.checks[0].ok {
            // Stop here: the numbers of a path that corrupts data mean nothing.
            let (received, unexpected) = self.target_notifs(&tag, m.notifs_expected, true)?;
            m.notifs_received = received;
            m.unexpected = unexpected;
            return Ok(m);
        }

        let timed_req: &XferReq = match (&plain_req, plan.notif_every_transfer) {
            (Some(p), false) => p,
            _ => &check_req,
        };
        let mut alt = match (&plain_req, inject_missing) {
            // counted as if it carried its notification: the target must come up one short
            (Some(p), true) => Some(NixlXfer(p)),
            _ => None,
        };
        if plan.verify_all {
            // every timed transfer is a checked one, carrying its notification
            let base = CheckSpec { seed: 0, notifs_so_far: Some(0), ..spec };
            let zero = first_point && plan.inject == Some(Inject::ZeroBlocks);
            let mut notifs = m.notifs_expected;
            self.run_verified_loops(&mut NixlXfer(&check_req), &base, index, zero, Some(&mut notifs), &mut m)?;
            m.notifs_expected = notifs;
        } else {
            self.run_loops(&mut NixlXfer(timed_req), alt.as_mut().map(|a| a as &mut dyn Transfer), &mut m)?;
            if plan.notif_every_transfer {
                m.notifs_expected += m.warmup + m.iterations;
            }
        }

        // Last checked transfer, with a new pattern.
        m.notifs_expected += 1;
        let spec = CheckSpec {
            op,
            size,
            seed: seed_for(index, 2),
            when: "last",
            tag: &tag,
            notifs_so_far: Some(m.notifs_expected),
            inject: first_point && plan.inject == Some(Inject::CorruptLast),
            block: if descs > 1 { block } else { 0 },
            zero: false,
        };
        m.checks.push(self.checked_transfer(&mut NixlXfer(&check_req), &spec)?);
        m.telemetry = check_req.telemetry().ok().flatten();
        let (received, unexpected) = self.target_notifs(&tag, m.notifs_expected, true)?;
        m.notifs_received = received;
        m.unexpected = unexpected;
        Ok(m)
    }

    fn measure_ucx(
        &mut self,
        index: usize,
        first_point: bool,
        op: XferOp,
        size: u64,
        block: u64,
    ) -> Result<Measured, EngineError> {
        self.point = index as u64;
        let plan = self.plan;
        let descs = size / block;
        check_split(size, block, self.conn.buf.len() as u64, self.conn.target.buffer_len)?;
        let link = self.conn.ucx.as_ref().ok_or_else(|| EngineError::Invalid("no UCX side".into()))?;
        let endpoint_lanes: Vec<String> =
            link.ep.lanes()?.into_iter().map(|l| format!("{}/{}", l.transport, l.device)).collect();
        // The checked transfers ask UCX how it carries the first descriptor.
        let mut check_xfer = UcxXfer::new(link, op, block as usize, descs as usize, true);
        let mut timed = UcxXfer::new(link, op, block as usize, descs as usize, false);
        timed.flush_each = !plan.ucx_local_completion;
        let mut m = Measured { op, size, descs, block, ..Measured::default() };

        let spec = CheckSpec {
            op,
            size,
            seed: seed_for(index, 1),
            when: "first",
            tag: "",
            notifs_so_far: None,
            inject: first_point && plan.inject == Some(Inject::CorruptFirst),
            block: if descs > 1 { block } else { 0 },
            zero: false,
        };
        m.checks.push(self.checked_transfer(&mut check_xfer, &spec)?);
        m.transport =
            Some(crate::transport::from_request_info(check_xfer.described.as_deref().unwrap_or(""), endpoint_lanes));
        if !m.checks[0].ok {
            return Ok(m);
        }
        if plan.verify_all {
            let base = CheckSpec { seed: 0, notifs_so_far: None, ..spec };
            let zero = first_point && plan.inject == Some(Inject::ZeroBlocks);
            self.run_verified_loops(&mut check_xfer, &base, index, zero, None, &mut m)?;
        } else {
            self.run_loops(&mut timed, None, &mut m)?;
        }
        let spec = CheckSpec {
            op,
            size,
            seed: seed_for(index, 2),
            when: "last",
            tag: "",
            notifs_so_far: None,
            inject: first_point && plan.inject == Some(Inject::CorruptLast),
            block: if descs > 1 { block } else { 0 },
            zero: false,
        };
        m.checks.push(self.checked_transfer(&mut check_xfer, &spec)?);
        Ok(m)
    }

    fn row(&self, backend: BackendKind, m: Measured) -> Row {
        let secs = m.elapsed.as_secs_f64();
        Row {
            backend: backend.engine().to_string(),
            plugin: backend.nixl_plugin().unwrap_or("UCP").to_string(),
            op: m.op,
            size_bytes: m.size,
            descs: m.descs,
            block_bytes: m.block,
            xfer_path: if backend.is_nixl() { self.plan.xfer_path } else { XferPath::Ucp },
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
            verified: m.checks.len() == 2 && m.checks.iter().all(|c| c.ok) && m.timed_corrupt == 0,
            verify: if self.plan.verify_all { "all" } else { "first-last" }.into(),
            checked_transfers: m.checks.iter().filter(|c| c.when != "timed").count() as u64 + m.timed_checked,
            corrupt_transfers: m.checks.iter().filter(|c| c.when != "timed" && !c.ok).count() as u64 + m.timed_corrupt,
            corrupt_blocks: m.checks.iter().filter(|c| c.when != "timed").map(|c| c.bad_blocks).sum::<u64>()
                + m.timed_bad_blocks,
            checks: m.checks,
            notifs_expected: m.notifs_expected,
            notifs_received: m.notifs_received,
            unexpected_notifs: m.unexpected,
            transport: m.transport,
            kv: None,
            window_ns: self.sync.is_some().then_some(m.window).flatten(),
        }
    }
}

fn check(when: &str, side: &str, v: Verify) -> Check {
    Check {
        when: when.into(),
        side: side.into(),
        ok: v.ok(),
        mismatched_bytes: v.mismatched_bytes,
        first_bad_offset: v.first_bad_offset,
        bad_blocks: v.bad_blocks,
    }
}
