//! KV-shaped rows: vLLM's transfer pattern. Descriptor lists over every
//! (region, block) are prepared once (Connection::rebuild); each request is
//! one `make_xfer_req` over its block ids, posted with a notification, and
//! timed from make to completion; `inflight` requests run at once. The raw
//! UCX backend issues one get/put per descriptor instead. The first and last
//! checked requests verify every head chunk of every block they move.

use super::*;
use crate::kv::Geometry;
use crate::mem::{Chunk, Content};
use crate::report::schema::{BlockPattern, KvRow};
use crate::rng::SplitMix64;
use crate::ucx::Request as UcxRequest;

/// Seeds for the contiguous reference transfer are kept apart from the
/// KV rows' own.
const REFERENCE_ROW: usize = 1 << 20;

/// The block ids of one request on both sides (request block k lives in
/// block `local[k]` of the decode cache and `remote[k]` of the prefill cache).
#[derive(Clone)]
struct ReqIds {
    local: Vec<u64>,
    remote: Vec<u64>,
}

/// Chooses request block ids. The cache is split into one part per
/// in-flight slot, so requests in flight at once never share a block (vLLM
/// gives each request its own blocks): consecutive ids at the start of the
/// slot's part, or ids scattered over it (random; the part is twice the
/// request's blocks, see KvPlan::pool_blocks).
struct IdSource {
    pattern: BlockPattern,
    blocks: u64,
    /// Blocks per slot.
    part: u64,
    rng: SplitMix64,
}

impl ReqIds {
    /// The same request `by` blocks further on, on both sides.
    fn shifted(self, by: u64) -> ReqIds {
        ReqIds {
            local: self.local.iter().map(|b| b + by).collect(),
            remote: self.remote.iter().map(|b| b + by).collect(),
        }
    }
}

impl IdSource {
    fn next(&mut self, slot: u64) -> ReqIds {
        let base = slot * self.part;
        match self.pattern {
            BlockPattern::Contiguous => {
                let ids: Vec<u64> = (base..base + self.blocks).collect();
                ReqIds { local: ids.clone(), remote: ids }
            }
            BlockPattern::Random => {
                let pick =
                    |rng: &mut SplitMix64| rng.sample(self.blocks, self.part).into_iter().map(|b| b + base).collect();
                ReqIds { local: pick(&mut self.rng), remote: pick(&mut self.rng) }
            }
        }
    }
}

/// One request in flight.
enum Pending {
    Nixl(XferReq),
    Ucx(Vec<UcxRequest>),
}

/// How requests are issued on one backend.
enum Issuer {
    Nixl { agent: Agent, local: PreppedDlist, remote: PreppedDlist, args: Rc<OptArgs> },
    Ucx { worker: Worker, ep: Endpoint, mem: MemHandle, rkey: RemoteKey, remote_base: u64 },
}

/// Descriptor positions (region, request block) of a request of `isl` tokens.
fn positions(g: &Geometry, kinds: &[crate::kv::LayerKind], isl: u64) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    for (r, first, count) in g.region_ranges(kinds, isl) {
        out.extend((first..first + count).map(|k| (r, k)));
    }
    out
}

impl Session<'_> {
    /// One KV-shaped row: the contiguous reference for the same bytes, then
    /// the checked first request, the timed requests, the checked last one.
    pub(super) fn measure_kv(
        &mut self,
        index: usize,
        first_point: bool,
        op: XferOp,
        isl: u64,
        backend: BackendKind,
    ) -> Result<Row, EngineError> {
        let plan = self.plan;
        let kvp = plan.kv.as_ref().ok_or_else(|| EngineError::Invalid("not a KV plan".into()))?;
        let (g, kinds, pool, layout, remote_layout, timed, check_base) = {
            let kv = self.conn.kv.as_ref().ok_or_else(|| EngineError::Invalid("no KV cache set up".into()))?;
            let k = &kv.setup;
            let timed = if k.timed_blocks == 0 { k.pool_blocks } else { k.timed_blocks };
            (k.geometry.clone(), k.layer_kinds.clone(), k.pool_blocks, kv.layout, kv.remote, timed, k.check_base)
        };
        let shape = g.request(&kinds, isl);
        if shape.descs > MAX_DESCS {
            return Err(EngineError::Invalid(format!(
                "ISL {isl} needs {} descriptors per request (at most {MAX_DESCS})",
                shape.descs
            )));
        }

        // The same bytes as one contiguous descriptor, between the same processes.
        let reference = match backend {
            BackendKind::NixlUcx | BackendKind::NixlLibfabric => {
                self.measure_nixl(REFERENCE_ROW + index, false, op, shape.bytes, shape.bytes)?
            }
            BackendKind::Ucx => self.measure_ucx(REFERENCE_ROW + index, false, op, shape.bytes, shape.bytes)?,
        };
        if !reference.checks.iter().all(|c| c.ok) || reference.notifs_received != reference.notifs_expected {
            return Err(EngineError::Verification(format!(
                "{backend} {op} contiguous reference of {} failed its checks: {:?}",
                Bytes(shape.bytes),
                reference.checks
            )));
        }

        let tag = format!("kvprobe:kv:{index}:{op}:{isl}");
        let pos = positions(&g, &kinds, isl);
        let mut issuer = match backend {
            BackendKind::NixlUcx | BackendKind::NixlLibfabric => {
                let link = self.conn.nixl.as_ref().ok_or_else(|| EngineError::Invalid("no NIXL side".into()))?;
                let p = link.kv_prepped.as_ref().ok_or_else(|| EngineError::Invalid("no prepared KV lists".into()))?;
                let args = Rc::new(OptArgs::with_backend(link.agent.nixl(), &link.backend)?);
                args.set_notification(tag.as_bytes())?;
                if kvp.no_desc_merge {
                    args.set_skip_desc_merge(true)?;
                }
                Issuer::Nixl { agent: link.agent.clone(), local: p.local.clone(), remote: p.remote.clone(), args }
            }
            BackendKind::Ucx => {
                let link = self.conn.ucx.as_ref().ok_or_else(|| EngineError::Invalid("no UCX side".into()))?;
                let missing = || EngineError::Invalid("no UCX KV mapping".into());
                Issuer::Ucx {
                    worker: link.worker.clone(),
                    ep: link.ep.clone(),
                    mem: link.kv_mem.clone().ok_or_else(missing)?,
                    rkey: link.kv_rkey.clone().ok_or_else(missing)?,
                    remote_base: self.conn.target.kv_addr.ok_or_else(missing)?,
                }
            }
        };
        let prep = match (&issuer, &self.conn.nixl) {
            (Issuer::Nixl { .. }, Some(l)) => l.kv_prepped.as_ref().map(|p| p.prep).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let inflight = kvp.inflight.max(1);
        let mut ids = IdSource {
            pattern: kvp.pattern,
            blocks: shape.blocks,
            part: timed / u64::from(inflight),
            rng: SplitMix64::new(seed_for(index, 7)),
        };
        let ctx = KvCtx { g: &g, kinds: &kinds, layout: &layout, remote: &remote_layout, pos: &pos, op, isl, pool };
        let notifs = backend.is_nixl();
        let mut notifs_expected = 0u64;
        let mut checks = Vec::new();
        let mut described = None;

        // First checked request (a TP rank's: in its own area of the cache).
        let first_ids = ids.next(0).shifted(check_base);
        let inject = first_point && plan.inject == Some(Inject::KvMisplaced);
        notifs_expected += u64::from(notifs);
        let expect = notifs.then_some((tag.as_str(), notifs_expected));
        let req = CheckReq { seed: seed_for(index, 1), when: "first", misplace: inject, notifs: expect };
        let (c, d) = self.kv_checked(&mut issuer, &ctx, &first_ids, req)?;
        described = described.or(d);
        checks.push(c);
        let mut lat: Vec<u64> = Vec::new();
        let mut make: Vec<u64> = Vec::new();
        let mut post: Vec<u64> = Vec::new();
        let (mut warm, mut elapsed) = (0u64, Duration::ZERO);
        let mut window = [0u64; 2];
        if checks[0].ok {
            // Warm-up, then the timed loop: `inflight` requests in flight,
            // a new one posted as soon as one completes.
            let timing = plan.timing;
            let warm_start = Instant::now();
            let mut more = |posted: u64| {
                posted < timing.max_iters
                    && (posted < timing.warmup_iters || warm_start.elapsed().as_secs_f64() < timing.warmup_s)
            };
            warm = self.kv_window(&mut issuer, &ctx, &mut ids, u64::from(inflight), &mut more, None)?;
            notifs_expected += if notifs { warm } else { 0 };
            self.sync_point(index as u64)?;
            window[0] = monotonic_ns();
            let start = Instant::now();
            let mut rec = Recorder { lat: &mut lat, make: &mut make, post: &mut post };
            let mut more = |posted: u64| {
                posted < timing.max_iters
                    && (posted < timing.min_iters || start.elapsed().as_secs_f64() < timing.duration_s)
            };
            self.kv_window(&mut issuer, &ctx, &mut ids, u64::from(inflight), &mut more, Some(&mut rec))?;
            elapsed = start.elapsed();
            window[1] = monotonic_ns();
            notifs_expected += if notifs { lat.len() as u64 } else { 0 };
            // Last checked request, on fresh blocks, with a new pattern.
            let last_ids = ids.next(0).shifted(check_base);
            notifs_expected += u64::from(notifs);
            let expect = notifs.then_some((tag.as_str(), notifs_expected));
            let req = CheckReq { seed: seed_for(index, 2), when: "last", misplace: false, notifs: expect };
            let (c, _) = self.kv_checked(&mut issuer, &ctx, &last_ids, req)?;
            checks.push(c);
        }
        let (notifs_received, unexpected) =
            if notifs { self.target_notifs(&tag, notifs_expected, true)? } else { (0, Vec::new()) };

        let requests = lat.len() as u64;
        let latency = stats_from_ns(&mut lat);
        let make_stats = stats_from_ns(&mut make);
        let post_stats = stats_from_ns(&mut post);
        let effective = if latency.p50 > 0.0 { shape.bytes as f64 / (latency.p50 * 1e-6) / 1e9 } else { 0.0 };
        let contiguous_us = reference.latency.p50;
        let contiguous = if contiguous_us > 0.0 { shape.bytes as f64 / (contiguous_us * 1e-6) / 1e9 } else { 0.0 };
        let m = Measured {
            op,
            size: shape.bytes,
            descs: shape.descs,
            block: g.d_block_bytes,
            prep,
            make: Duration::from_secs_f64(make_stats.p50 * 1e-6),
            warmup: warm,
            iterations: requests,
            elapsed,
            latency,
            post: post_stats,
            telemetry: None,
            checks,
            timed_checked: 0,
            timed_corrupt: 0,
            timed_bad_blocks: 0,
            window: (window[1] > 0).then_some(window),
            notifs_expected,
            notifs_received,
            unexpected,
            transport: match (backend, described) {
                (BackendKind::Ucx, Some(info)) => {
                    let lanes = self
                        .conn
                        .ucx
                        .as_ref()
                        .and_then(|l| l.ep.lanes().ok())
                        .unwrap_or_default()
                        .into_iter()
                        .map(|l| format!("{}/{}", l.transport, l.device))
                        .collect();
                    Some(crate::transport::from_request_info(&info, lanes))
                }
                _ => None,
            },
        };
        let mut row = self.row(backend, m);
        row.kv = Some(KvRow {
            geometry: g.clone(),
            isl,
            blocks: shape.blocks,
            sliding_blocks: shape.sliding_blocks,
            pattern: kvp.pattern,
            inflight,
            pool_blocks: pool,
            requests,
            make_us: make_stats,
            effective_gbps: effective,
            contiguous_gbps: contiguous,
            contiguous_us,
            layout_efficiency: if contiguous > 0.0 { effective / contiguous } else { 0.0 },
            ttft_added_ms_p50: latency.p50 / 1e3,
            ttft_added_ms_p99: latency.p99 / 1e3,
        });
        Ok(row)
    }

    /// Keeps `inflight` requests in flight, posting a new one (on the slot
    /// of the one that completed) while `more(posted so far)` says so, then
    /// waits for the rest. Records each request's make, post and total time
    /// (make to observed completion). Returns how many completed.
    fn kv_window(
        &mut self,
        issuer: &mut Issuer,
        ctx: &KvCtx<'_>,
        ids: &mut IdSource,
        inflight: u64,
        more: &mut dyn FnMut(u64) -> bool,
        mut rec: Option<&mut Recorder<'_>>,
    ) -> Result<u64, EngineError> {
        let mut active: Vec<(Pending, Instant, u64)> = Vec::with_capacity(inflight as usize);
        let mut free: Vec<u64> = (0..inflight).rev().collect();
        let (mut posted, mut done) = (0u64, 0u64);
        let mut posting = true;
        let mut spins: u32 = 0;
        loop {
            while posting && !free.is_empty() {
                if !more(posted) {
                    posting = false;
                    break;
                }
                let slot = free.pop().unwrap_or(0);
                let r = ids.next(slot);
                let t0 = Instant::now();
                let (p, made) = issuer.start(ctx, &r, false, false)?;
                let t1 = Instant::now();
                if let Some(rec) = rec.as_deref_mut() {
                    rec.make.push((made - t0).as_nanos() as u64);
                    rec.post.push((t1 - made).as_nanos() as u64);
                }
                active.push((p, t0, slot));
                posted += 1;
            }
            if active.is_empty() {
                break;
            }
            let mut i = 0;
            while i < active.len() {
                if issuer.poll(&mut active[i].0)? {
                    let (_, t0, slot) = active.swap_remove(i);
                    if let Some(rec) = rec.as_deref_mut() {
                        rec.lat.push(t0.elapsed().as_nanos() as u64);
                    }
                    free.push(slot);
                    done += 1;
                } else {
                    i += 1;
                }
            }
            spins = spins.wrapping_add(1);
            if spins % 4096 == 0 {
                if let Some((_, t0, _)) = active.iter().min_by_key(|a| a.1) {
                    if t0.elapsed() > self.xfer_timeout {
                        return Err(EngineError::Invalid(format!(
                            "a KV request of ISL {} did not complete within {:?}",
                            ctx.isl, self.xfer_timeout
                        )));
                    }
                }
                self.beat();
            }
        }
        self.beat();
        Ok(done)
    }

    /// One request with its data checked: the source gets the request's
    /// pattern (per region, block and head), the destination is poisoned,
    /// the request runs alone, the destination checks every chunk it should
    /// have received. Returns the check and, for raw UCX, UCX's description
    /// of how it carried the first descriptor.
    fn kv_checked(
        &mut self,
        issuer: &mut Issuer,
        ctx: &KvCtx<'_>,
        ids: &ReqIds,
        c: CheckReq<'_>,
    ) -> Result<(Check, Option<String>), EngineError> {
        let CheckReq { seed, when, misplace, notifs } = c;
        let kv_buf = Rc::clone(&self.conn.kv.as_ref().ok_or_else(|| EngineError::Invalid("no KV cache".into()))?.buf);
        let local_chunks = ctx
            .g
            .request_chunks(ctx.kinds, ctx.layout, ctx.isl, &ids.local, true, seed)
            .map_err(|e| EngineError::Invalid(e.to_string()))?;
        let run = |s: &mut Self, issuer: &mut Issuer| -> Result<Option<String>, EngineError> {
            let (mut p, _) = issuer.start(ctx, ids, true, misplace)?;
            let start = Instant::now();
            while !issuer.poll(&mut p)? {
                if start.elapsed() > s.xfer_timeout {
                    return Err(EngineError::Invalid(format!("a checked KV request of ISL {} timed out", ctx.isl)));
                }
            }
            Ok(issuer.describe(&p))
        };
        match ctx.op {
            XferOp::Read => {
                self.call(
                    Request::KvFill { isl: ctx.isl, ids: ids.remote.clone(), seed, poison: false },
                    "the target's KV fill",
                )?;
                let poison: Vec<Chunk> =
                    local_chunks.iter().map(|&(off, len, _, _)| Chunk { off, len, content: Content::Poison }).collect();
                // SAFETY: no transfer is in flight (every earlier request completed).
                unsafe { kv_buf.write_chunks(&poison) }?;
                let d = run(self, issuer)?;
                // SAFETY: the request completed; nothing is in flight.
                let v = unsafe { kv_buf.check_chunks(&pattern_chunks(&local_chunks)) }?;
                Ok((check(when, "initiator", v), d))
            }
            XferOp::Write => {
                // SAFETY: no transfer is in flight.
                unsafe { kv_buf.write_chunks(&pattern_chunks(&local_chunks)) }?;
                self.call(
                    Request::KvFill { isl: ctx.isl, ids: ids.remote.clone(), seed, poison: true },
                    "the target's KV poison",
                )?;
                let d = run(self, issuer)?;
                if let Some((tag, expected)) = notifs {
                    // NIXL: the notification arrives after the data; once the
                    // target has it, the bytes are in place.
                    let (got, _) = self.target_notifs(tag, expected, false)?;
                    if got < expected {
                        return Err(EngineError::Verification(format!(
                            "KV WRITE ISL {}: the target saw {got} of {expected} notifications before its data check",
                            ctx.isl
                        )));
                    }
                }
                let v = match self
                    .call(Request::KvVerify { isl: ctx.isl, ids: ids.remote.clone(), seed }, "the target's KV check")?
                {
                    Response::Verified(v) => v,
                    other => return Err(EngineError::Invalid(format!("unexpected answer to KV verify: {other:?}"))),
                };
                Ok((check(when, "target", v), d))
            }
        }
    }
}

/// A request's chunks, each with its pattern.
fn pattern_chunks(chunks: &[(u64, u64, u64, bool)]) -> Vec<Chunk> {
    chunks.iter().map(|&(off, len, seed, _)| Chunk { off, len, content: Content::Pattern(seed) }).collect()
}

/// What a row's requests share.
struct KvCtx<'a> {
    g: &'a Geometry,
    kinds: &'a [crate::kv::LayerKind],
    layout: &'a SideLayout,
    remote: &'a SideLayout,
    pos: &'a [(u32, u64)],
    op: XferOp,
    isl: u64,
    pool: u64,
}

/// One checked request: its pattern seed, which check it is, the self-test
/// fault, and (NIXL) the notification count the target must have first.
struct CheckReq<'a> {
    seed: u64,
    when: &'a str,
    misplace: bool,
    notifs: Option<(&'a str, u64)>,
}

/// Per-request samples of the timed loop, nanoseconds.
struct Recorder<'a> {
    lat: &'a mut Vec<u64>,
    make: &'a mut Vec<u64>,
    post: &'a mut Vec<u64>,
}

impl Issuer {
    /// Makes and posts one request; returns it and when the make ended.
    /// `describe` asks raw UCX for a request on the first descriptor (its
    /// protocol string); `misplace` shifts every prefill block by one (the
    /// self-test fault).
    fn start(
        &mut self,
        ctx: &KvCtx<'_>,
        ids: &ReqIds,
        describe: bool,
        misplace: bool,
    ) -> Result<(Pending, Instant), EngineError> {
        let remote_id = |k: u64| {
            let b = ids.remote[k as usize];
            if misplace { (b + 1) % ctx.pool } else { b }
        };
        match self {
            Issuer::Nixl { agent, local, remote, args } => {
                let pool = ctx.pool;
                let mut lidx = Vec::with_capacity(ctx.pos.len());
                let mut ridx = Vec::with_capacity(ctx.pos.len());
                for &(r, k) in ctx.pos {
                    lidx.push((u64::from(r) * pool + ids.local[k as usize]) as i32);
                    ridx.push((u64::from(r) * pool + remote_id(k)) as i32);
                }
                let bytes = ctx.pos.len() as u64 * ctx.g.d_block_bytes;
                let req = agent.make_xfer_req(ctx.op, local, &lidx, remote, &ridx, bytes, Some(Rc::clone(args)))?;
                let made = Instant::now();
                req.post()?;
                Ok((Pending::Nixl(req), made))
            }
            Issuer::Ucx { ep, mem, rkey, remote_base, .. } => {
                let made = Instant::now();
                let len = ctx.g.d_block_bytes as usize;
                let mut pending = Vec::new();
                for (i, &(r, k)) in ctx.pos.iter().enumerate() {
                    let loff = ctx.layout.desc_offset(ctx.g, r, ids.local[k as usize]) as usize;
                    let raddr = *remote_base + ctx.remote.desc_offset(ctx.g, r, remote_id(k));
                    let force = describe && i == 0;
                    let req = match ctx.op {
                        XferOp::Read => ep.get(mem, loff, len, raddr, rkey, force)?,
                        XferOp::Write => ep.put(mem, loff, len, raddr, rkey, force)?,
                    };
                    if let Some(q) = req {
                        pending.push(q);
                    }
                }
                if ctx.op == XferOp::Write {
                    if let Some(f) = ep.flush()? {
                        pending.push(f);
                    }
                }
                Ok((Pending::Ucx(pending), made))
            }
        }
    }

    /// Polls once; true when the whole request has completed.
    fn poll(&mut self, p: &mut Pending) -> Result<bool, EngineError> {
        match (self, p) {
            (Issuer::Nixl { .. }, Pending::Nixl(req)) => Ok(req.status()? == Status::Done),
            (Issuer::Ucx { worker, .. }, Pending::Ucx(reqs)) => {
                worker.progress();
                // The last one issued ends last; then sweep up the others.
                while let Some(r) = reqs.last() {
                    if !r.is_done()? {
                        return Ok(false);
                    }
                    if reqs.len() == 1 {
                        return Ok(true);
                    }
                    reqs.pop();
                }
                Ok(true)
            }
            _ => Err(EngineError::Invalid("a request polled on the wrong backend".into())),
        }
    }

    /// Raw UCX: the protocol string of the request's first descriptor.
    fn describe(&self, p: &Pending) -> Option<String> {
        match p {
            Pending::Ucx(reqs) => reqs.first().and_then(|r| r.info().ok()),
            Pending::Nixl(_) => None,
        }
    }
}
