//! `kvprobe sweep`: the main job.
//!
//! Starts a target process and an initiator process on this host (both this
//! binary), watches them, and turns their events into `results.json`,
//! `results.csv` (rewritten after every row) and a table. This process never
//! loads NIXL itself: if NIXL or UCX crashes a child, the rows measured so far
//! are on disk and the error names the child and its log.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};

use super::CliError;
use crate::child::{self, Child};
use crate::engine::{Event, SweepPlan, Timing};
use crate::locate::{self, Inputs, NixlLocation};
use crate::mem::{MemKind, MemSpec};
use crate::nixl::{AgentConfig, XferOp};
use crate::peer::{BackendKind, UcxSetup};
use crate::report::schema::{
    BlockPattern, Header, NixlInfo, RunStatus, SCHEMA, Settings, SweepResults, UcxHeader, XferPath, units_legend,
};
use crate::report::{self, progress, style::Style, table};
use crate::transport;
use crate::units::{self, Bytes, SizeError};

/// A parsed `--sizes` list.
#[derive(Debug, Clone)]
pub struct SizeList(pub Vec<u64>);

fn parse_sizes(s: &str) -> Result<SizeList, SizeError> {
    units::parse_size_list(s).map(SizeList)
}

pub(super) fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => {
            let k = k.trim();
            // a scope names the plugin the key is for
            if let Some((scope, key)) = k.split_once(':') {
                if !["ucx", "libfabric"].contains(&scope.to_ascii_lowercase().as_str()) || key.is_empty() {
                    return Err(format!(
                        "'{k}': a scoped key is ucx:KEY or libfabric:KEY (the NIXL plugin it is for); '{scope}' is neither"
                    ));
                }
            }
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

/// Arguments of `kvprobe sweep`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// Transfer sizes, comma-separated, binary units (4K = 4096) [default: 4K,16K,...,256M: every power of 4]
    #[arg(long, value_name = "LIST", value_parser = parse_sizes, conflicts_with_all = ["model", "model_config"])]
    pub sizes: Option<SizeList>,
    /// KV-shaped rows for a model (see `kvprobe kv-shape`): vLLM's pattern, one descriptor per (region, block), a row per ISL
    #[command(flatten)]
    pub kv: super::kv_shape::ModelArgs,
    /// KV mode: prefill TP size
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub p_tp: u32,
    /// KV mode: decode TP size
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub d_tp: u32,
    /// KV mode: input lengths (tokens), comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,20000", value_name = "N,...")]
    pub isl: Vec<u64>,
    /// KV mode: tokens per KV block (vLLM --block-size), comma-separated for several
    #[arg(long, value_delimiter = ',', default_value = "16", value_name = "TOKENS,...")]
    pub kv_block_size: Vec<u32>,
    /// KV mode: request block ids contiguous (fresh cache) or random (scattered, as in a long-running server)
    #[arg(long, default_value = "contiguous", value_name = "contiguous|random")]
    pub block_pattern: String,
    /// KV mode: requests in flight at once
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub inflight: u32,
    /// KV mode: keep NIXL from merging adjacent descriptors (what contiguous block ids cost without NIXL's merge)
    #[arg(long)]
    pub no_desc_merge: bool,
    /// Operations, from the initiator's side (READ pulls, as vLLM's decode does; WRITE pushes)
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "READ,WRITE")]
    pub ops: Vec<XferOp>,
    /// Split every transfer into descriptors of this size (KV blocks are 4-32 KiB) [default: one descriptor]
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size, conflicts_with_all = ["model", "model_config"])]
    pub block_size: Option<u64>,
    /// Backends, comma-separated: nixl-ucx (NIXL with its UCX plugin, vLLM's default; `nixl` for short),
    /// nixl-libfabric (NIXL with its LIBFABRIC plugin: efa, tcp... providers), ucx (UCX's UCP put/get directly,
    /// with NIXL's UCX defaults: nixl-ucx over ucx is NIXL's overhead). Each is measured alone, in turn
    #[arg(long = "backend", value_name = "LIST", value_delimiter = ',', default_value = "nixl-ucx")]
    pub backends: Vec<BackendKind>,
    /// UCX's libucp for the ucx backend [default: the one NIXL's UCX plugin links] [env: KVPROBE_UCX_LIB]
    #[arg(long, value_name = "PATH")]
    pub ucx_lib: Option<PathBuf>,
    /// How requests are built: prepped (prep_xfer_dlist + make_xfer_req, as vLLM) or create (create_xfer_req)
    #[arg(long, value_enum, default_value = "prepped")]
    pub xfer_path: XferPathArg,
    /// NIXL backend parameter, repeatable (e.g. num_threads=4, as vLLM sets for UCX); `ucx:KEY=VALUE` or
    /// `libfabric:KEY=VALUE` applies to that plugin only
    #[arg(long = "backend-param", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub backend_params: Vec<(String, String)>,
    /// Set UCX_TLS for both processes (e.g. shm, tcp, "^tcp"); with --peer, for this host's process only (the far end uses `kvprobe serve`'s environment) [default: as in the environment]
    #[arg(long, value_name = "LIST")]
    pub ucx_tls: Option<String>,
    /// Timed loop length per point (at least --min-iters transfers)
    #[arg(long, default_value = "1s", value_parser = units::parse_duration)]
    pub duration: Duration,
    /// Warm-up length per point (at least --warmup-iters transfers)
    #[arg(long, default_value = "100ms", value_parser = units::parse_duration)]
    pub warmup: Duration,
    /// Fewest warm-up transfers per point
    #[arg(long, default_value_t = 2)]
    pub warmup_iters: u64,
    /// Fewest timed transfers per point
    #[arg(long, default_value_t = 5)]
    pub min_iters: u64,
    /// Most timed transfers per point
    #[arg(long, default_value_t = 1_000_000)]
    pub max_iters: u64,
    /// Notifications only on the two checked transfers of each point (default: every transfer carries one, as in vLLM)
    #[arg(long)]
    pub no_notif: bool,
    /// Run NIXL without its progress thread
    #[arg(long)]
    pub no_progress_thread: bool,
    /// Back DRAM buffers with 4 KiB pages (default: transparent huge pages, as large numpy/PyTorch host buffers get; ucx_perftest's buffers are small pages)
    #[arg(long)]
    pub no_hugepages: bool,
    /// Memory the bytes are read from: dram (host) or vram (GPU). READ reads the target's memory, WRITE the initiator's
    #[arg(long, default_value = "dram", value_name = "dram|vram")]
    pub src_mem: MemKind,
    /// Memory the bytes land in: dram or vram. READ lands in the initiator's memory, WRITE in the target's
    #[arg(long, default_value = "dram", value_name = "dram|vram")]
    pub dst_mem: MemKind,
    /// GPU (CUDA ordinal) of the VRAM side(s): N for both, or SRC,DST [default: 0]
    #[arg(long, value_name = "N[,M]", value_parser = parse_gpus)]
    pub gpu: Option<(u32, u32)>,
    /// Data checks: first-last (a checked transfer before and after each timed loop) or all (every timed
    /// transfer checked, corrupt blocks counted; a correctness run: slower, only the transfers are timed)
    #[arg(long, value_enum, default_value = "first-last")]
    pub verify: VerifyArg,
    /// Leave host buffers pageable (default: a host buffer facing a GPU on this host is page-locked, as
    /// PyTorch's pinned KV staging is, so UCX's cuda_copy can DMA it)
    #[arg(long)]
    pub no_pin: bool,
    /// ucx backend: time WRITEs to local completion and flush once per timed loop, as ucx_perftest put_bw does (default: flush every WRITE, so it has reached the target, as NIXL reports)
    #[arg(long)]
    pub ucx_local_completion: bool,
    /// Do not ask NIXL to capture per-request telemetry
    #[arg(long)]
    pub no_telemetry: bool,
    /// One transfer taking longer than this is an error
    #[arg(long, default_value = "60s", value_parser = units::parse_duration)]
    pub xfer_timeout: Duration,
    /// A control request unanswered for this long is an error
    #[arg(long, default_value = "120s", value_parser = units::parse_duration)]
    pub peer_timeout: Duration,
    /// Measure against `kvprobe serve` at this address (another host: spread; this host: pack) instead of a local target
    #[arg(long, value_name = "HOST:PORT")]
    pub peer: Option<String>,
    /// Stream plain TCP each way for this long first, the link's capacity for the verdict (0: skip) [default: 1s with --peer, else 0]
    #[arg(long, value_name = "DURATION", value_parser = units::parse_duration)]
    pub link_probe: Option<Duration>,
    /// The session token `kvprobe serve` printed [env: KVPROBE_TOKEN]
    #[arg(long, value_name = "TOKEN", requires = "peer")]
    pub token: Option<String>,
    /// Verdict: a path passes at this fraction of its expected rate [default: 0.5 shared memory, 0.7 networks]
    #[arg(long, value_name = "FRACTION")]
    pub pass_at: Option<f64>,
    /// Verdict: below the pass fraction but at least this warns; below fails [default: 0.25 shared memory, 0.4 networks]
    #[arg(long, value_name = "FRACTION")]
    pub warn_at: Option<f64>,
    /// Verdict: the expected large-transfer rate, GB/s (instead of kvprobe's yardsticks, docs/VERDICT.md)
    #[arg(long, value_name = "GB/S")]
    pub expect_gbps: Option<f64>,
    /// Exit 0 even when the verdict is FAIL (default: exit 3, so bring-up scripts can gate on it)
    #[arg(long)]
    pub no_fail: bool,
    /// Output folder [default: results/sweep-<UTC time>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// NIXL C API library (libnixl_capi.so) or a folder holding it [env: KVPROBE_NIXL_LIB]
    #[arg(long, value_name = "PATH")]
    pub nixl_lib: Option<PathBuf>,
    /// Print the results as JSON on stdout instead of the table
    #[arg(long)]
    pub json: bool,
    /// No progress bar
    #[arg(long, short)]
    pub quiet: bool,
    /// (self-test) inject a fault the run must catch: flip a target byte in the first or
    /// the last checked transfer of the first point, or send one transfer without its notification
    #[arg(long, hide = true, value_enum)]
    pub inject: Option<InjectArg>,
    /// (kvprobe tp) start every timed loop on the go of the TP run's barrier at this address
    /// (token in KVPROBE_SYNC_TOKEN), so the decode ranks transfer at the same time
    #[arg(long, hide = true, value_name = "HOST:PORT", requires = "peer")]
    pub sync: Option<String>,
    /// (self-test) the target's idle limit [default: the larger timeout + 30 s]
    #[arg(long, hide = true, value_parser = units::parse_duration)]
    pub target_idle_timeout: Option<Duration>,
}

/// `--gpu N` or `--gpu SRC,DST`.
fn parse_gpus(s: &str) -> Result<(u32, u32), String> {
    let one = |t: &str| t.trim().parse::<u32>().map_err(|_| format!("{t:?} is not a GPU index (0, 1, ...)"));
    match s.split_once(',') {
        Some((a, b)) => Ok((one(a)?, one(b)?)),
        None => one(s).map(|g| (g, g)),
    }
}

/// The memory of each side, from `--src-mem/--dst-mem/--gpu`: (source,
/// destination, target, initiator). READ moves target -> initiator, WRITE
/// initiator -> target, so with different memories on the two ends the
/// sweep must pick one direction.
pub fn mem_sides(
    ops: &[XferOp],
    src: MemKind,
    dst: MemKind,
    gpus: Option<(u32, u32)>,
    pin: bool,
    peer: bool,
) -> Result<(MemSpec, MemSpec, MemSpec, MemSpec), String> {
    let (gs, gd) = gpus.unwrap_or((0, 0));
    if gpus.is_some() && src == MemKind::Dram && dst == MemKind::Dram {
        return Err("--gpu needs GPU memory on a side: --src-mem vram and/or --dst-mem vram".into());
    }
    let mut s = MemSpec { kind: src, gpu: gs, pin: false };
    let mut d = MemSpec { kind: dst, gpu: gd, pin: false };
    // Host memory facing a GPU of this host is page-locked for that GPU
    // (across hosts the host side never meets the GPU's copy engines).
    if pin && !peer {
        if src == MemKind::Dram && dst == MemKind::Vram {
            s = MemSpec { kind: MemKind::Dram, gpu: gd, pin: true };
        }
        if dst == MemKind::Dram && src == MemKind::Vram {
            d = MemSpec { kind: MemKind::Dram, gpu: gs, pin: true };
        }
    }
    let reads = ops.contains(&XferOp::Read);
    let writes = ops.contains(&XferOp::Write);
    if reads && writes && (s.kind != d.kind || s.gpu != d.gpu) {
        return Err(format!(
            "--src-mem {} --dst-mem {} puts different memory on the two ends, so READ (target -> initiator) and WRITE (initiator -> target) need opposite placements: give one direction (--ops read or --ops write)",
            s.describe(),
            d.describe()
        ));
    }
    let (target, initiator) = if reads { (s, d) } else { (d, s) };
    Ok((s, d, target, initiator))
}

/// `--verify` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyArg {
    /// A checked transfer before and one after each point's timed loop.
    FirstLast,
    /// Every timed transfer checked as well: source refilled, destination poisoned, every block read
    /// back (only the transfer itself is timed; NIXL size rows and raw UCX rows).
    All,
}

/// `--inject` values (self-tests of kvprobe's own checks).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum InjectArg {
    /// Corrupt the first checked transfer of the first point.
    CorruptFirst,
    /// Corrupt the last checked transfer of the first point.
    CorruptLast,
    /// One warm-up transfer of the first point carries no notification.
    MissingNotif,
    /// KV mode: the first checked request moves every block one block off at the prefill side.
    KvMisplaced,
    /// With --verify all: every other block of the first timed transfer arrives as zeros.
    ZeroBlocks,
}

impl From<InjectArg> for crate::engine::Inject {
    fn from(a: InjectArg) -> Self {
        match a {
            InjectArg::CorruptFirst => crate::engine::Inject::CorruptFirst,
            InjectArg::CorruptLast => crate::engine::Inject::CorruptLast,
            InjectArg::MissingNotif => crate::engine::Inject::MissingNotif,
            InjectArg::KvMisplaced => crate::engine::Inject::KvMisplaced,
            InjectArg::ZeroBlocks => crate::engine::Inject::ZeroBlocks,
        }
    }
}

/// `--xfer-path` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum XferPathArg {
    /// prep_xfer_dlist + make_xfer_req
    Prepped,
    /// create_xfer_req
    Create,
}

/// The KV plan of `--model`/`--model-config` (None without a model).
fn kv_plan(a: &SweepArgs) -> Result<Option<crate::engine::KvPlan>, CliError> {
    if !a.kv.given() {
        return Ok(None);
    }
    crate::kv::check_isls(&a.isl).map_err(|e| CliError::usage(anyhow!("--isl: {e}")))?;
    if a.inflight == 0 {
        return Err(CliError::usage(anyhow!("--inflight must be at least 1")));
    }
    let pattern: BlockPattern = a.block_pattern.parse().map_err(|e: String| CliError::usage(anyhow!(e)))?;
    let mut geometries = Vec::new();
    let mut kinds = Vec::new();
    let mut block_sizes = a.kv_block_size.clone();
    block_sizes.dedup();
    for &bt in &block_sizes {
        let spec = a.kv.spec(a.p_tp, a.d_tp, bt)?;
        geometries.push(spec.geometry().map_err(CliError::usage)?);
        kinds = spec.model.layer_kinds;
    }
    // A TP rank (`kvprobe tp`): its checked requests get an area of the
    // cache of their own among the decode ranks reading its prefill rank.
    let (check_areas, check_area) = match &a.sync {
        Some(_) => {
            let spec = a.kv.spec(a.p_tp, a.d_tp, block_sizes[0])?;
            let mine = spec.geometry().map_err(CliError::usage)?.p_rank;
            let mut siblings = Vec::new();
            for d in 0..a.d_tp {
                let g = crate::kv::KvSpec { d_rank: d, ..spec.clone() }.geometry().map_err(CliError::usage)?;
                if g.p_rank == mine {
                    siblings.push(d);
                }
            }
            let at = siblings.iter().position(|&d| d == a.kv.d_rank).unwrap_or(0);
            (siblings.len() as u32, at as u32)
        }
        None => (0, 0),
    };
    let plan = crate::engine::KvPlan {
        geometries,
        layer_kinds: kinds,
        isls: a.isl.clone(),
        pattern,
        inflight: a.inflight,
        no_desc_merge: a.no_desc_merge,
        check_areas,
        check_area,
    };
    // Descriptor ids are C ints: region x blocks per region must fit.
    for (gi, g) in plan.geometries.iter().enumerate() {
        let ids = u64::from(g.desc_regions) * plan.pool_blocks(gi);
        if ids > i32::MAX as u64 {
            return Err(CliError::usage(anyhow!(
                "{} descriptors per prepared list ({} regions x {} blocks) exceed NIXL's int indices: use a shorter --isl or a smaller --inflight",
                ids,
                g.desc_regions,
                plan.pool_blocks(gi)
            )));
        }
        for &isl in &plan.isls {
            let d = g.request(&plan.layer_kinds, isl).descs;
            if d > crate::engine::initiator::MAX_DESCS {
                return Err(CliError::usage(anyhow!(
                    "ISL {isl} needs {d} descriptors per request (at most {}): use a larger --kv-block-size",
                    crate::engine::initiator::MAX_DESCS
                )));
            }
        }
    }
    Ok(Some(plan))
}

/// Default sizes: every power of 4 from 4 KiB to 256 MiB.
pub fn default_sizes() -> Vec<u64> {
    units::powers_of_four(4 << 10, 256 << 20)
}

/// Runs the sweep.
pub fn run(a: SweepArgs) -> Result<ExitCode, CliError> {
    let started = SystemTime::now();
    let t_start = Instant::now();
    let sizes = a.sizes.clone().map(|s| s.0).unwrap_or_else(default_sizes);
    // Keep the first occurrence of each op, in the order given.
    let mut ops: Vec<XferOp> = Vec::new();
    for op in &a.ops {
        if !ops.contains(op) {
            ops.push(*op);
        }
    }
    for class in ["shm", "tcp"] {
        let (p, w) = (
            a.pass_at.unwrap_or(crate::verdict::default_fractions(class).0),
            a.warn_at.unwrap_or(crate::verdict::default_fractions(class).1),
        );
        if !(w > 0.0 && w <= p && p <= 10.0) {
            return Err(CliError::usage(anyhow!("need 0 < --warn-at ({w}) <= --pass-at ({p}) <= 10")));
        }
    }
    if a.expect_gbps.is_some_and(|g| !(g > 0.0 && g.is_finite())) {
        return Err(CliError::usage(anyhow!("--expect-gbps must be a positive rate")));
    }
    if a.verify == VerifyArg::All && (a.kv.model.is_some() || a.kv.model_config.is_some()) {
        return Err(CliError::usage(anyhow!(
            "--verify all checks every timed transfer of size rows; KV-shaped rows (--model) check one request before and one after each timed loop, block by block: drop --model, or --verify first-last"
        )));
    }
    if a.inject.is_some_and(|i| matches!(i, InjectArg::ZeroBlocks)) && a.verify != VerifyArg::All {
        return Err(CliError::usage(anyhow!("--inject zero-blocks needs --verify all")));
    }
    let (src_mem, dst_mem, target_mem, initiator_mem) =
        mem_sides(&ops, a.src_mem, a.dst_mem, a.gpu, !a.no_pin, a.peer.is_some())
            .map_err(|e| CliError::usage(anyhow!(e)))?;
    // GPU memory on this host: the driver and the GPU must be there before
    // any helper starts (the error says what was searched and how to fix it).
    let local_gpus: Vec<u32> = [Some(initiator_mem), (a.peer.is_none()).then_some(target_mem)]
        .into_iter()
        .flatten()
        .filter(|m| m.kind == MemKind::Vram || m.pin)
        .map(|m| m.gpu)
        .collect();
    for g in &local_gpus {
        crate::cuda::gpu(*g).map_err(|e| CliError::usage(anyhow!(e)))?;
    }
    crate::cuda::release_all();
    let host_sides = [Some(initiator_mem), a.peer.is_none().then_some(target_mem)]
        .into_iter()
        .flatten()
        .filter(|m| m.kind == MemKind::Dram)
        .count() as u64;
    let kv_plan = kv_plan(&a)?;
    match (a.inject, kv_plan.is_some()) {
        (Some(InjectArg::KvMisplaced), false) => {
            return Err(CliError::usage(anyhow!("--inject kv-misplaced needs a KV sweep (--model)")));
        }
        (Some(i), true) if !matches!(i, InjectArg::KvMisplaced) => {
            return Err(CliError::usage(anyhow!("--inject {i:?} applies to size sweeps, not to --model")));
        }
        _ => {}
    }
    let max = sizes.iter().copied().max().unwrap_or(0);
    if let (Some(k), Some(avail)) = (&kv_plan, crate::hostinfo::mem_available().filter(|_| host_sides > 0)) {
        // both ranks' caches: only the sides in host memory need host memory
        let need = k.memory_bytes() / 2 * host_sides;
        if need.saturating_add(256 << 20) > avail {
            return Err(CliError::usage(anyhow!(
                "these KV caches need {} of memory (both ranks' regions for {} requests in flight plus a contiguous buffer of the largest request on each side), but only {} is available: use fewer/shorter --isl, a smaller --inflight, or contiguous --block-pattern",
                Bytes(need),
                k.inflight,
                Bytes(avail)
            )));
        }
    } else if let Some(avail) = crate::hostinfo::mem_available().filter(|_| host_sides > 0) {
        // each process with host memory holds one buffer of the largest size
        let need = max.saturating_mul(host_sides);
        if need.saturating_add(256 << 20) > avail {
            return Err(CliError::usage(anyhow!(
                "the largest size, {}, needs {} of memory (one buffer in each process), but only {} is available",
                Bytes(max),
                Bytes(need),
                Bytes(avail)
            )));
        }
    }
    let agent = AgentConfig {
        progress_thread: !a.no_progress_thread,
        capture_telemetry: !a.no_telemetry,
        ..AgentConfig::default()
    };
    let xfer_path = match a.xfer_path {
        XferPathArg::Prepped => XferPath::Prepped,
        XferPathArg::Create => XferPath::Create,
    };
    let timing = Timing {
        duration_s: a.duration.as_secs_f64(),
        min_iters: a.min_iters,
        max_iters: a.max_iters,
        warmup_s: a.warmup.as_secs_f64(),
        warmup_iters: a.warmup_iters,
        xfer_timeout_s: a.xfer_timeout.as_secs_f64(),
        peer_timeout_s: a.peer_timeout.as_secs_f64(),
        // a fifth of the target's idle limit (at most 1 s): five chances before it gives up
        keepalive_s: a.target_idle_timeout.map_or(1.0, |d| (d.as_secs_f64() / 5.0).clamp(0.05, 1.0)),
    };
    let mut backends: Vec<BackendKind> = Vec::new();
    for b in &a.backends {
        if !backends.contains(b) {
            backends.push(*b);
        }
    }
    // The target's address and token are filled in once it runs.
    let mut plan = SweepPlan {
        target_addr: String::new(),
        token: String::new(),
        nixl_lib: PathBuf::new(),
        ops: ops.clone(),
        sizes: sizes.clone(),
        block: a.block_size,
        xfer_path,
        backends,
        ucx: None,
        backend_params: a.backend_params.iter().cloned().collect(),
        agent: agent.clone(),
        timing,
        notif_every_transfer: !a.no_notif,
        hugepages: !a.no_hugepages,
        ucx_local_completion: a.ucx_local_completion,
        inject: a.inject.map(Into::into),
        verify_all: a.verify == VerifyArg::All,
        kv: kv_plan,
        link_probe_s: a
            .link_probe
            .unwrap_or(if a.peer.is_some() { Duration::from_secs(1) } else { Duration::ZERO })
            .as_secs_f64(),
        target_mem,
        initiator_mem,
        sync: match &a.sync {
            Some(addr) => Some(crate::engine::SyncSpec {
                addr: addr.clone(),
                token: std::env::var("KVPROBE_SYNC_TOKEN")
                    .map_err(|_| CliError::usage(anyhow!("--sync needs the TP run's token in KVPROBE_SYNC_TOKEN")))?,
                rank: a.kv.d_rank,
            }),
            None => None,
        },
    };
    crate::engine::initiator::validate(&plan).map_err(CliError::usage)?;

    let loc = locate::locate(&Inputs::from_env(a.nixl_lib.clone())).map_err(CliError::usage)?;
    // UCX: the build NIXL links. Needed by the ucx backend; otherwise used to
    // list this host's transports for the transport checks, when found.
    let ucx_loc = match locate::locate_ucx(a.ucx_lib.clone(), Some(&loc)) {
        Ok(u) => Some(u),
        Err(e) if plan.backends.contains(&BackendKind::Ucx) || a.ucx_lib.is_some() => {
            return Err(CliError::usage(e));
        }
        Err(_) => None,
    };
    plan.ucx = ucx_loc.as_ref().map(|u| UcxSetup {
        lib: u.lib.clone(),
        settings: crate::ucx::core::nixl_defaults(crate::topology::has_efa(std::path::Path::new("/"))),
        peer_errors: crate::peer::params_for("UCX", &plan.backend_params)
            .get("ucx_error_handling_mode")
            .is_none_or(|m| m != "none"),
    });

    let out_dir = super::out_dir(a.out.as_deref(), "sweep", started);
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create the output folder {}", out_dir.display()))
        .map_err(CliError::usage)?;

    // NIXL's LIBFABRIC plugin: refused here, before any helper starts, when
    // it cannot load (what is missing, and how to get it).
    if plan.backends.contains(&BackendKind::NixlLibfabric) {
        libfabric_preflight(&loc).map_err(CliError::usage)?;
    }
    let mut env = child_env(&loc, a.ucx_tls.as_deref(), a.peer.is_none());
    if plan.backends.contains(&BackendKind::NixlLibfabric) {
        log_libfabric_rails(&mut env);
    }
    let mut results = SweepResults {
        schema: SCHEMA.into(),
        header: Header {
            kvprobe: crate::version().into(),
            command_line: crate::hostinfo::redacted_args(),
            started_at: crate::hostinfo::rfc3339_utc(started),
            host: crate::hostinfo::host_info(),
            nixl: NixlInfo {
                location: loc.clone(),
                library_version: None,
                plugins: Vec::new(),
                backend_params: BTreeMap::new(),
                backends: BTreeMap::new(),
                libfabric: None,
            },
            ucx_tls: env.iter().find(|(k, _)| k == "UCX_TLS").map(|(_, v)| v.clone()),
            env: env
                .iter()
                .filter(|(k, _)| k.starts_with("UCX_") || k.starts_with("NIXL_"))
                .cloned()
                .chain(crate::fabric_plugin::fi_env().into_iter().filter(|(k, _)| k.starts_with("FI_")))
                .collect(),
            settings: Settings {
                ops,
                sizes,
                block_bytes: plan.block,
                xfer_path: plan.xfer_path,
                backend: plan.backends.iter().filter_map(|b| b.nixl_plugin()).collect::<Vec<_>>().join(","),
                backends: plan.backends.iter().map(|b| b.label().to_string()).collect(),
                backend_params: plan.backend_params.clone(),
                agent: plan.agent.clone(),
                duration_s: timing.duration_s,
                warmup_s: timing.warmup_s,
                warmup_iters: timing.warmup_iters,
                min_iters: timing.min_iters,
                max_iters: timing.max_iters,
                notif_every_transfer: plan.notif_every_transfer,
                hugepages: plan.hugepages,
                ucx_local_completion: plan.ucx_local_completion,
                kv: plan.kv.clone(),
                verdict: crate::verdict::Thresholds {
                    pass: a.pass_at,
                    warn: a.warn_at,
                    expect_gbps: a.expect_gbps,
                    ..crate::verdict::Thresholds::default()
                },
                mem: format!("{} -> {}", src_mem.describe(), dst_mem.describe()),
                src_mem,
                dst_mem,
            },
            initiator_pid: None,
            initiator_buffer_numa: None,
            ucx: ucx_loc.map(|location| UcxHeader { location, raw: None, resources: Vec::new() }),
            target: None,
            link: None,
            memcpy_gbps: None,
            gpus: Vec::new(),
            gpu_copy: None,
            units: units_legend(),
        },
        rows: Vec::new(),
        status: RunStatus::Running,
        errors: Vec::new(),
        warnings: Vec::new(),
        total_seconds: None,
        verdict: None,
    };
    save(&out_dir, &results)?;

    // The shared-memory yardstick, measured before any helper runs.
    results.header.memcpy_gbps = Some(crate::verdict::memcpy_gbps(64 << 20));
    // GPU paths' yardsticks: the GPU's own copy rates, measured the same way.
    if let Some(&g) = local_gpus.first() {
        match crate::cuda::Cuda::open().and_then(|c| c.devices()) {
            Ok(d) => results.header.gpus = d,
            Err(e) => results.warnings.push(format!("GPU facts: {e}")),
        }
        match crate::cuda::copy_rates(g) {
            Ok(c) => results.header.gpu_copy = Some(c),
            Err(e) => results.warnings.push(format!("GPU copy rates: {e}")),
        }
        // The helpers own the GPU from here: no context of ours stays on it
        // (memory, and exclusive-process compute mode).
        crate::cuda::release_all();
    }
    child::install_interrupt_handler();
    plan.nixl_lib = loc.lib.clone();
    if let Err(e) = drive(&a, &mut results, &out_dir, &env, plan) {
        if results.status == RunStatus::Running {
            results.status = RunStatus::Failed;
        }
        results.errors.push(format!("{e:#}"));
    } else if results.status == RunStatus::Running {
        results.status = RunStatus::Complete;
    }
    results.total_seconds = Some(t_start.elapsed().as_secs_f64());
    if !results.rows.is_empty() {
        let facts = crate::verdict::Facts::of_this_host();
        results.verdict =
            Some(crate::verdict::judge(&results, &facts, &results.header.settings.verdict, results.header.memcpy_gbps));
        let series = report::plot::of_results(&results, "");
        if !series.is_empty() {
            let plot = report::plot::Plot {
                title: format!(
                    "kvprobe sweep on {} - UCX_TLS={}{}",
                    results.header.host.hostname,
                    results.header.ucx_tls.as_deref().unwrap_or("(UCX chooses)"),
                    match results.header.settings.src_mem.kind == crate::mem::MemKind::Dram
                        && results.header.settings.dst_mem.kind == crate::mem::MemKind::Dram
                    {
                        true => String::new(),
                        false => format!(" - {}", results.header.settings.mem),
                    }
                ),
                series,
                references: report::plot::references_of(&results, ""),
            };
            if let (_, Some(w)) = report::plot::write(&out_dir, "plot", &plot) {
                results.warnings.push(w);
            }
        }
    }
    save(&out_dir, &results)?;

    let mut stdout = std::io::stdout().lock();
    // Nothing was measured because the processes could not be set up (NIXL
    // does not load, the backend cannot be created, ...): a setup error, exit 2.
    if results.status == RunStatus::Failed && results.header.initiator_pid.is_none() {
        if a.json {
            let _ = writeln!(stdout, "{}", serde_json::to_string_pretty(&results).unwrap_or_default());
        }
        return Err(CliError::usage(anyhow!(
            "setup failed, nothing was measured: {}\n(run folder: {})",
            results.errors.join("\n"),
            out_dir.display()
        )));
    }
    if a.json {
        let _ = writeln!(stdout, "{}", serde_json::to_string_pretty(&results).unwrap_or_default());
    } else {
        let _ = write!(stdout, "{}", table::render(&results, Style::for_stdout()));
        let _ = writeln!(
            stdout,
            "results: {}  ({:.1} s)",
            out_dir.join("results.json").display(),
            t_start.elapsed().as_secs_f64()
        );
    }
    let failed_verdict = results.verdict.as_ref().is_some_and(|v| v.grade == crate::verdict::Grade::Fail);
    Ok(match results.status {
        RunStatus::Complete if failed_verdict && !a.no_fail => ExitCode::from(3),
        RunStatus::Complete => ExitCode::SUCCESS,
        RunStatus::Interrupted => ExitCode::from(130),
        _ => ExitCode::from(1),
    })
}

fn save(dir: &std::path::Path, r: &SweepResults) -> Result<(), CliError> {
    report::write_all(dir, r)
        .with_context(|| format!("cannot write results into {}", dir.display()))
        .map_err(CliError::failed)
}

/// Environment for both children: the plugin folder (unless the user set
/// NIXL_PLUGIN_DIR), UCX_TLS when asked, and the UCX_*/NIXL_* already set.
///
/// `UCX_PROTO_INFO=used` (unless the user set it) makes UCX print, when a
/// worker is released, every protocol it used with a count: the transport
/// truth of NIXL rows (src/transport.rs).
///
/// Both processes run on this host, so UCX's network transports are pinned to
/// loopback (`UCX_NET_DEVICES=lo`) unless the user chose devices: otherwise
/// UCX spreads a TCP transfer over `lo` and a NIC address of this same host
/// (two rails), which touches a NIC for nothing. Shared-memory and CUDA
/// transports are not network devices and are unaffected.
pub(super) fn child_env(loc: &NixlLocation, ucx_tls: Option<&str>, local_target: bool) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> =
        std::env::vars().filter(|(k, _)| k.starts_with("UCX_") || k.starts_with("NIXL_")).collect();
    // Both processes here: network transports over loopback only. With a
    // peer, UCX picks the devices (or the user's UCX_NET_DEVICES does).
    if local_target && !env.iter().any(|(k, _)| k == "UCX_NET_DEVICES") {
        env.push(("UCX_NET_DEVICES".into(), "lo".into()));
    }
    if !env.iter().any(|(k, _)| k == "UCX_PROTO_INFO") {
        env.push(("UCX_PROTO_INFO".into(), "used".into()));
    }
    if !loc.plugin_dir_from_env {
        if let Some(d) = &loc.plugin_dir {
            env.retain(|(k, _)| k != "NIXL_PLUGIN_DIR");
            env.push(("NIXL_PLUGIN_DIR".into(), d.display().to_string()));
        }
    }
    if let Some(t) = ucx_tls {
        env.retain(|(k, _)| k != "UCX_TLS");
        env.push(("UCX_TLS".into(), t.to_string()));
    }
    env.sort();
    env
}

/// Checks that NIXL's LIBFABRIC plugin can load (reading files only: this
/// process never loads NIXL); the error lists every obstacle with its fix.
pub(super) fn libfabric_preflight(loc: &NixlLocation) -> anyhow::Result<()> {
    let dir =
        loc.plugin_dir.clone().unwrap_or_else(|| loc.lib.parent().unwrap_or(std::path::Path::new("/")).join("plugins"));
    let plugin = dir.join("libplugin_LIBFABRIC.so");
    if !plugin.is_file() {
        return Err(anyhow!(
            "this NIXL has no LIBFABRIC plugin ({} does not exist): NIXL's wheels ship it; a source build needs libfabric at build time",
            plugin.display()
        ));
    }
    let c = crate::fabric_plugin::check_plugin(&plugin);
    if c.loadable() {
        // the plugin loads; will NIXL's query find a provider for its rails?
        // (kvprobe knows NIXL 1.5's rule; a later NIXL may pick differently)
        let rule_applies = crate::fabric_plugin::nixl_rule_applies(loc.version.as_deref());
        if let Some(lib) = &c.libfabric.path {
            if let (Some(r), _) = crate::fabric_plugin::report_in_child(lib) {
                if r.nixl_pick.is_none() && !rule_applies {
                    eprintln!(
                        "kvprobe: warning: NIXL 1.5's rule finds no rail provider in libfabric {} ({}), but this NIXL ({}) may pick differently: going ahead",
                        r.version,
                        r.nixl_pick_error.as_deref().unwrap_or("no cxi, efa, tcp or sockets provider"),
                        loc.version.as_deref().unwrap_or("version unknown")
                    );
                } else if r.nixl_pick.is_none() {
                    let provs: std::collections::BTreeSet<&str> =
                        r.providers.iter().map(|p| p.provider.as_str()).collect();
                    return Err(anyhow!(
                        "NIXL's LIBFABRIC backend would find no provider for its rails in libfabric {} [{}]: {}{}; it only builds rails on cxi, efa, tcp or sockets (providers here: {})",
                        r.version,
                        lib.display(),
                        r.nixl_pick_error.unwrap_or_else(|| {
                            "no cxi, efa, tcp or sockets provider offers RDM endpoints with MSG and RMA".into()
                        }),
                        std::env::var("FI_PROVIDER")
                            .map(|v| format!(" (FI_PROVIDER={v} limits libfabric to it)"))
                            .unwrap_or_default(),
                        provs.into_iter().collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
        return Ok(());
    }
    Err(anyhow!(
        "NIXL's LIBFABRIC plugin ({}) cannot load on this host:\n  - {}\nlibfabric searched: {}\n(kvprobe doctor shows the same; --backend nixl-ucx measures without it)",
        plugin.display(),
        c.reasons().join("\n  - "),
        c.libfabric.searched.join("; ")
    ))
}

/// LIBFABRIC rows learn their provider from the plugin's INFO lines
/// (`Created N rails using provider=...`): turned on unless the user chose a
/// NIXL log level.
pub(super) fn log_libfabric_rails(env: &mut Vec<(String, String)>) {
    match env.iter().find(|(k, _)| k == "NIXL_LOG_LEVEL") {
        None => {
            env.push(("NIXL_LOG_LEVEL".into(), "INFO".into()));
            env.sort();
        }
        Some((_, v)) if !["info", "debug", "trace"].contains(&v.to_ascii_lowercase().as_str()) => eprintln!(
            "kvprobe: warning: NIXL_LOG_LEVEL={v} hides the LIBFABRIC plugin's INFO lines, so nixl-libfabric rows will not say what carried them (unset it, or INFO)"
        ),
        Some(_) => {}
    }
}

fn drive(
    a: &SweepArgs,
    results: &mut SweepResults,
    out_dir: &std::path::Path,
    env: &[(String, String)],
    mut plan: SweepPlan,
) -> anyhow::Result<()> {
    let lib = plan.nixl_lib.display().to_string();
    let (mut target, tlog) = match &a.peer {
        Some(peer) => {
            // `kvprobe serve` on the peer runs the target.
            plan.target_addr = peer.clone();
            plan.token =
                a.token.clone().or_else(|| std::env::var("KVPROBE_TOKEN").ok()).ok_or_else(|| {
                    anyhow!("--peer needs the token `kvprobe serve` printed (--token or KVPROBE_TOKEN)")
                })?;
            (None, out_dir.join("target.log"))
        }
        None => {
            let (t, l) = start_target(a, out_dir, env, &lib, &mut plan)?;
            match t {
                Some(t) => (Some(t), l),
                None => {
                    results.status = RunStatus::Interrupted;
                    results.errors.push("interrupted by the user while the target was starting".into());
                    return Ok(());
                }
            }
        }
    };

    // The initiator.
    let ilog = out_dir.join("initiator.log");
    let mut init = child::spawn("initiator", &["__initiator".to_string()], env, true, Some(&ilog))
        .context("cannot start the initiator process")?;
    {
        let mut stdin = init.take_stdin().ok_or_else(|| anyhow!("no stdin for the initiator"))?;
        serde_json::to_writer(&mut stdin, &plan).context("sending the plan")?;
    }
    let events = init.stdout_lines().ok_or_else(|| anyhow!("no stdout from the initiator"))?;

    let points = match &plan.kv {
        Some(k) => k.isls.len() * k.geometries.len(),
        None => plan.sizes.len(),
    };
    let total = (plan.ops.len() * points * plan.backends.len()) as u64;
    let pb = progress::bar(total, a.quiet || a.json);
    // A hung NIXL call emits nothing; anything slower than one transfer timeout
    // plus one control timeout (with margin) without a heartbeat is a hang.
    let watchdog = a.xfer_timeout.saturating_add(a.peer_timeout).saturating_add(Duration::from_secs(30));
    let mut last_event = Instant::now();
    let mut current = String::from("setup");
    let mut finished = false;
    let mut failure: Option<String> = None;
    loop {
        if child::interrupted() {
            results.status = RunStatus::Interrupted;
            results.errors.push(format!("interrupted by the user during {current}; rows measured so far are kept"));
            break;
        }
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                last_event = Instant::now();
                let ev: Event = match serde_json::from_str(&line) {
                    Ok(e) => e,
                    Err(e) => {
                        // Only kvprobe writes to this stream (libraries' stdout goes to the log).
                        failure = Some(format!("garbled message from the initiator ({e}): {line:.200}"));
                        break;
                    }
                };
                match ev {
                    Event::Started(s) => {
                        if let Some(u) = results.header.ucx.as_mut() {
                            u.resources = s.resources;
                        }
                        results.header.target = Some(s.target);
                        results.header.initiator_pid = Some(s.initiator_pid);
                        results.header.initiator_buffer_numa = s.buffer_numa;
                        report::write_all(out_dir, results)?;
                    }
                    Event::Backend(b) => {
                        match b.backend {
                            BackendKind::NixlUcx | BackendKind::NixlLibfabric => {
                                results.header.nixl.library_version = b.library_version;
                                results.header.nixl.plugins = b.plugins;
                                // the first NIXL backend's parameters stay the header's; each keeps its own
                                if results.header.nixl.backends.is_empty() {
                                    results.header.nixl.backend_params = b.backend_params.clone();
                                    if let Some(t) = results.header.target.as_mut() {
                                        t.backend_params = b.target_backend_params.clone();
                                    }
                                }
                                if let Some(p) = b.backend.nixl_plugin() {
                                    results.header.nixl.backends.insert(p.to_string(), b.backend_params);
                                }
                                if b.libfabric.is_some() {
                                    results.header.nixl.libfabric = b.libfabric;
                                }
                            }
                            BackendKind::Ucx => {
                                if let Some(u) = results.header.ucx.as_mut() {
                                    u.raw = b.ucx;
                                }
                            }
                        }
                        report::write_all(out_dir, results)?;
                    }
                    Event::Link(mut l) => {
                        let ip = l.local_addr.rsplit_once(':').map_or(l.local_addr.as_str(), |(h, _)| h);
                        l.local_dev = crate::topology::iface_of_ip(ip.trim_matches(['[', ']']));
                        l.local_dev_mbps = l.local_dev.as_deref().and_then(crate::topology::nic_speed_mbps);
                        results.header.link = Some(l);
                        report::write_all(out_dir, results)?;
                    }
                    Event::Setup { backend } => {
                        current = format!("the setup of {backend}");
                        pb.set_message(current.clone());
                    }
                    Event::Point { op, size, backend, .. } => {
                        current = format!("{backend} {op} {}", Bytes(size));
                        pb.set_message(current.clone());
                    }
                    Event::Heartbeat => {}
                    Event::Row(mut row) => {
                        let read = row.op == XferOp::Read;
                        if let Some(t) = row.transport.as_mut() {
                            t.flags = row_flags(t, read, results);
                        }
                        results.rows.push(*row);
                        report::write_all(out_dir, results)?;
                        pb.inc(1);
                    }
                    Event::Done { drop_errors } => {
                        for e in drop_errors {
                            results.warnings.push(format!("releasing NIXL objects: {e}"));
                        }
                        finished = true;
                        // Everything is measured; a helper that then hangs
                        // while exiting is stopped below, not a failure.
                        break;
                    }
                    Event::Failed { error } => {
                        failure = Some(error);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if last_event.elapsed() > watchdog {
                    failure = Some(format!(
                        "no progress for {watchdog:?} while measuring {current}: the initiator is stuck (a NIXL/UCX call that never returns?); both processes were stopped"
                    ));
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    pb.finish_and_clear();

    if results.status == RunStatus::Interrupted || failure.is_some() && !finished {
        init.kill();
    }
    let istatus = init.wait_timeout(Duration::from_secs(30)).or_else(|| init.kill());
    // UCX printed the protocols NIXL's worker used when the initiator released
    // it (UCX_PROTO_INFO=used): attribute them to the NIXL rows.
    annotate_nixl_rows(results, &std::fs::read_to_string(&ilog).unwrap_or_default());
    report::write_all(out_dir, results)?;
    // After the initiator said goodbye (or died), the target has nothing left to do.
    let tstatus = target.as_mut().and_then(|t| t.wait_timeout(Duration::from_secs(10)).or_else(|| t.kill()));

    if results.status == RunStatus::Interrupted {
        return Ok(());
    }
    if let Some(f) = failure {
        results.status = RunStatus::Failed;
        let mut msg = format!("during {current}: {f}");
        if let (Some(s), Some(t)) = (tstatus.filter(|s| !s.success()), target.as_ref()) {
            msg.push_str(&format!(
                "\n  the target {}; last lines of {}:\n{}",
                child::describe(s),
                tlog.display(),
                indent(&t.log_tail(8))
            ));
        }
        if plan.backends.contains(&BackendKind::NixlLibfabric) {
            let logs = [&tlog, &ilog].map(|p| std::fs::read_to_string(p).unwrap_or_default()).concat();
            if let Some(why) = crate::fabric_plugin::explain_failure(&logs) {
                msg.push_str(&format!("\n  why: {why}"));
            }
        }
        if let Some(peer) = a.peer.as_ref().filter(|_| !f.contains("handshake refused")) {
            msg.push_str(&if a.sync.is_some() {
                format!("\n  the prefill rank's target at {peer} was started by `kvprobe tp`: its log (prefillN.log) is beside this rank's folder")
            } else {
                format!("\n  the target ran under `kvprobe serve` at {peer}: its session log there says more")
            });
        }
        return Err(anyhow!(msg));
    }
    if finished && results.rows.len() as u64 != total {
        results.status = RunStatus::Failed;
        return Err(anyhow!("the initiator finished but reported {} of {total} rows", results.rows.len()));
    }
    if !finished {
        results.status = RunStatus::Failed;
        let how = istatus.map(child::describe).unwrap_or_else(|| "did not exit".into());
        return Err(anyhow!(
            "the initiator process {how} during {current}; last lines of {}:\n{}",
            ilog.display(),
            indent(&init.log_tail(12))
        ));
    }
    if let Some(s) = istatus.filter(|s| !s.success()) {
        results.warnings.push(format!("the initiator {} after reporting every row", child::describe(s)));
    }
    Ok(())
}

/// Starts the local target process; its address goes into the plan. None
/// when the user interrupted while it was starting.
fn start_target(
    a: &SweepArgs,
    out_dir: &std::path::Path,
    env: &[(String, String)],
    lib: &str,
    plan: &mut SweepPlan,
) -> anyhow::Result<(Option<Child>, std::path::PathBuf)> {
    plan.token = crate::peer::new_token();
    // The target gives up when nothing arrives for longer than any wait of
    // the initiator's (the initiator sends keep-alives while it measures).
    let mut tenv = env.to_vec();
    tenv.push(("KVPROBE_TOKEN".into(), plan.token.clone()));
    let idle = match a.target_idle_timeout {
        Some(d) => format!("{}ms", d.as_millis()),
        None => format!("{}s", a.peer_timeout.max(a.xfer_timeout).as_secs_f64().ceil() + 30.0),
    };
    let targs: Vec<String> = ["__target", "--listen", "127.0.0.1:0", "--nixl-lib", lib, "--idle-timeout", &idle]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let tlog = out_dir.join("target.log");
    let mut target =
        child::spawn("target", &targs, &tenv, false, Some(&tlog)).context("cannot start the target process")?;
    let tlines = target.stdout_lines().ok_or_else(|| anyhow!("no stdout from the target"))?;
    match wait_listening(&mut target, &tlines, Duration::from_secs(60))? {
        Some(addr) => {
            plan.target_addr = addr;
            Ok((Some(target), tlog))
        }
        None => Ok((None, tlog)),
    }
}

/// Whether both ends ran on one host.
/// This host's hardware, read once.
fn host_topology() -> &'static crate::topology::Topology {
    static T: std::sync::OnceLock<crate::topology::Topology> = std::sync::OnceLock::new();
    T.get_or_init(|| crate::topology::discover(std::path::Path::new("/")))
}

/// Every flag of a row's transport (`read`: the row is a READ).
fn row_flags(t: &crate::report::schema::Transport, read: bool, r: &SweepResults) -> Vec<crate::report::schema::Flag> {
    let intra = intra_node(r);
    let mut f = transport::flags(t, intra, resources(r));
    f.extend(transport::numa_flags(t, r.header.initiator_buffer_numa, host_topology()));
    let s = &r.header.settings;
    let gpu = transport::GpuEnds {
        src_vram: s.src_mem.kind == crate::mem::MemKind::Vram,
        dst_vram: s.dst_mem.kind == crate::mem::MemKind::Vram,
        get_forced: r.header.env.iter().any(|(k, v)| {
            k == "UCX_CUDA_IPC_ENABLE_GET_ZCOPY"
                && ["y", "yes", "on", "1", "true"].contains(&v.trim().to_ascii_lowercase().as_str())
        }),
    };
    let g = transport::gpu_flags(t, read, intra, resources(r), &gpu);
    // A GPU finding explains the TCP path better than the generic one.
    if !g.is_empty() {
        f.retain(|x| x.kind != "tcp-while-faster-exists");
    }
    f.extend(g);
    f
}

fn intra_node(r: &SweepResults) -> bool {
    r.header.target.as_ref().is_none_or(|t| t.host == r.header.host.hostname)
}

fn resources(r: &SweepResults) -> &[crate::ucx::info::Resource] {
    r.header.ucx.as_ref().map_or(&[], |u| &u.resources[..])
}

/// Fills the transport of every NIXL row from UCX's protocol tables in the
/// initiator's log, and flags it.
fn annotate_nixl_rows(r: &mut SweepResults, log: &str) {
    let Some(pid) = r.header.initiator_pid else { return };
    let tables = transport::parse_proto_tables(log);
    let context = format!("kvprobe-initiator-{pid}");
    let mut found = Vec::new();
    // LIBFABRIC rows: the plugin's own log lines say which provider carried them.
    if let Some(p) = crate::fabric_plugin::parse_log(log) {
        let domains: Vec<String> = match &r.header.nixl.libfabric {
            Some(f) if f.provider.as_deref() == Some(p.provider.as_str()) => f.domains.clone(),
            _ => Vec::new(),
        };
        let s = &r.header.settings;
        let vram = s.src_mem.kind == MemKind::Vram || s.dst_mem.kind == MemKind::Vram;
        let t = crate::fabric_plugin::transport_of(&p, &domains, vram, intra_node(r));
        for (i, row) in r.rows.iter().enumerate() {
            if row.backend == "nixl" && row.plugin == "LIBFABRIC" && row.transport.is_none() {
                found.push((i, t.clone()));
            }
        }
    }
    for (i, row) in r
        .rows
        .iter()
        .enumerate()
        .filter(|(_, row)| row.backend == "nixl" && row.plugin == "UCX" && row.transport.is_none())
    {
        let read = row.op == XferOp::Read;
        if let Some(mut t) = transport::from_proto_tables(&tables, &context, read, &[row.block_bytes, row.size_bytes]) {
            t.flags = row_flags(&t, read, r);
            found.push((i, t));
        }
    }
    for (i, t) in found {
        r.rows[i].transport = Some(t);
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// Waits for the target's "listening" line: its address, or None when the
/// user interrupted.
pub(super) fn wait_listening(
    target: &mut Child,
    lines: &std::sync::mpsc::Receiver<String>,
    limit: Duration,
) -> anyhow::Result<Option<String>> {
    let start = Instant::now();
    loop {
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["event"] == "listening" {
                        if let Some(a) = v["addr"].as_str() {
                            return Ok(Some(a.to_string()));
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let how = target
                    .wait_timeout(Duration::from_secs(5))
                    .map(child::describe)
                    .unwrap_or_else(|| "closed its output".into());
                return Err(anyhow!(
                    "the target process {how} before it was ready; last lines of {}:\n{}",
                    target.log.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                    indent(&target.log_tail(12))
                ));
            }
        }
        if start.elapsed() > limit {
            target.kill();
            return Err(anyhow!("the target process was not ready within {limit:?}"));
        }
        if child::interrupted() {
            target.kill();
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_flags_place_each_side() {
        let (r, w) = (XferOp::Read, XferOp::Write);
        let (v, d) = (MemKind::Vram, MemKind::Dram);
        // same memory both ends: both ops, both sides alike
        let (s, t, tgt, ini) = mem_sides(&[r, w], v, v, Some((1, 1)), true, false).unwrap();
        assert_eq!((s, t), (MemSpec::vram(1), MemSpec::vram(1)));
        assert_eq!((tgt, ini), (MemSpec::vram(1), MemSpec::vram(1)));
        // READ reads the target: source memory is the target's
        let (_, _, tgt, ini) = mem_sides(&[r], v, d, Some((2, 2)), true, false).unwrap();
        assert_eq!(tgt, MemSpec::vram(2));
        assert_eq!(ini, MemSpec { kind: MemKind::Dram, gpu: 2, pin: true }, "host side pinned for that GPU");
        // WRITE reads the initiator
        let (_, _, tgt, ini) = mem_sides(&[w], v, d, None, true, false).unwrap();
        assert_eq!((tgt.kind, ini.kind), (MemKind::Dram, MemKind::Vram));
        // across hosts, or --no-pin: nothing pinned
        assert!(!mem_sides(&[r], v, d, None, true, true).unwrap().3.pin);
        assert!(!mem_sides(&[r], v, d, None, false, false).unwrap().3.pin);
        // mixed memories with both directions, or --gpu without GPU memory: refused with the way out
        assert!(mem_sides(&[r, w], d, v, None, true, false).unwrap_err().contains("--ops"));
        assert!(mem_sides(&[r], d, d, Some((0, 0)), true, false).unwrap_err().contains("--src-mem vram"));
        assert_eq!(parse_gpus("0,3"), Ok((0, 3)));
        assert_eq!(parse_gpus("2"), Ok((2, 2)));
        assert!(parse_gpus("a").is_err());
    }
}
