//! The results schema: `results.json` is exactly these structs serialized.
//! Documented field by field in `docs/SCHEMA.md`; bump [`SCHEMA`] on any
//! incompatible change.
//!
//! Units: sizes in bytes; rates in GB/s = 1e9 bytes per second; times in
//! microseconds unless the field name says otherwise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::locate::NixlLocation;
use crate::nixl::{Telemetry, XferOp};

/// Schema identifier written into every results file.
pub const SCHEMA: &str = "kvprobe.sweep/1";

/// A whole sweep: header, one row per (backend, op, size), and the run status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepResults {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Where and how the sweep ran.
    pub header: Header,
    /// Measured rows, in the order they were measured.
    pub rows: Vec<Row>,
    /// `running` while in progress; `complete`, `failed` or `interrupted` at the end.
    pub status: RunStatus,
    /// What went wrong, when `status` is not `complete`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Problems that did not affect the measurement (e.g. an error while
    /// releasing a NIXL object at the end).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Wall time of the whole sweep, seconds (set at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_seconds: Option<f64>,
    /// PASS / WARN / FAIL per path with the reasons (set at the end, when
    /// rows were measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<crate::verdict::Verdict>,
}

/// State of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Still measuring (a file left in this state means the process died).
    Running,
    /// Every planned row measured and verified.
    Complete,
    /// Stopped by an error or a verification failure.
    Failed,
    /// Stopped by the user (Ctrl-C).
    Interrupted,
}

/// Everything needed to reproduce or compare a sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// kvprobe version and git revision.
    pub kvprobe: String,
    /// The command line, as typed.
    pub command_line: Vec<String>,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// The machine.
    pub host: HostInfo,
    /// The NIXL library used (path, version, how it was found).
    pub nixl: NixlInfo,
    /// UCX_TLS given to both processes; `null` when unset (UCX picks).
    pub ucx_tls: Option<String>,
    /// UCX_* and NIXL_* variables in force for both processes.
    pub env: BTreeMap<String, String>,
    /// The settings of the sweep.
    pub settings: Settings,
    /// PID of the initiator process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator_pid: Option<u32>,
    /// NUMA node of the initiator's buffer (what the `numa-mismatch` flag
    /// compares the network device's node with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator_buffer_numa: Option<i32>,
    /// UCX: where its libucp is, what the raw UCX side applied, and the
    /// transports this host's UCX offers (None when UCX was not found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ucx: Option<UcxHeader>,
    /// The target process (peer) as it described itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PeerInfo>,
    /// The plain-TCP link probe, when run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkProbe>,
    /// This host's single-thread memcpy rate, GB/s, measured before the run
    /// (the yardstick of shared-memory paths).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memcpy_gbps: Option<f64>,
    /// GPUs of this host as the CUDA driver reports them (sweeps with GPU memory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<crate::cuda::CudaDevice>,
    /// Copy rates of the GPU in use, measured before the run (sweeps with GPU memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_copy: Option<GpuCopy>,
    /// Unit conventions, spelled out for readers of the file.
    pub units: BTreeMap<String, String>,
}

/// A GPU's own copy rates (GB/s = 1e9 B/s), the yardsticks of GPU paths:
/// device-to-device for cuda_ipc on one GPU, page-locked host-to-device for
/// cuda_copy staging.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GpuCopy {
    /// CUDA ordinal.
    pub gpu: u32,
    /// `cuMemcpyDtoD`, 256 MiB.
    pub dtod_gbps: f64,
    /// `cuMemcpyHtoD` from page-locked host memory, 256 MiB.
    pub htod_gbps: f64,
}

/// Facts about the host.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HostInfo {
    /// Host name.
    pub hostname: String,
    /// `uname -r`.
    pub kernel: String,
    /// CPU model name.
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Physical memory, bytes.
    pub mem_bytes: u64,
}

/// The NIXL in use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NixlInfo {
    /// Where it was found and how.
    pub location: NixlLocation,
    /// Version reported by the library itself (releases after 1.5.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library_version: Option<String>,
    /// Backend plugins the initiator's agent can load.
    #[serde(default)]
    pub plugins: Vec<String>,
    /// Effective parameters of the (first) NIXL backend on the initiator.
    #[serde(default)]
    pub backend_params: BTreeMap<String, String>,
    /// Effective parameters of every NIXL backend measured, by plugin (`UCX`, `LIBFABRIC`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, BTreeMap<String, String>>,
    /// The LIBFABRIC plugin's libfabric and the rails NIXL's rule picks (with `nixl-libfabric`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libfabric: Option<crate::fabric_plugin::LibfabricFacts>,
}

/// UCX facts of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UcxHeader {
    /// Where libucp was found and how.
    pub location: crate::locate::UcxLocation,
    /// The raw UCX side of the initiator (with `--backend ucx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<crate::engine::UcxInfo>,
    /// This host's UCX transport resources (transport, device, kind).
    #[serde(default)]
    pub resources: Vec<crate::ucx::info::Resource>,
}

/// The peer process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Control address.
    pub addr: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// NIXL library it loaded.
    pub nixl_lib: String,
    /// Its UCX_TLS (None: unset).
    pub ucx_tls: Option<String>,
    /// Its effective backend parameters.
    pub backend_params: BTreeMap<String, String>,
}

/// How transfer requests are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XferPath {
    /// `prep_xfer_dlist` for both sides once per size, then `make_xfer_req`
    /// by index: the path vLLM's NixlConnector uses.
    #[default]
    Prepped,
    /// `create_xfer_req` from two descriptor lists.
    Create,
    /// Raw UCX: `ucp_get_nbx` / `ucp_put_nbx` per descriptor (+ `ucp_ep_flush_nbx` for WRITE).
    Ucp,
}

impl std::fmt::Display for XferPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XferPath::Prepped => "prepped",
            XferPath::Create => "create",
            XferPath::Ucp => "ucp",
        })
    }
}

/// Sweep settings as resolved (defaults filled in).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Operations, in order.
    pub ops: Vec<XferOp>,
    /// Transfer sizes, bytes.
    pub sizes: Vec<u64>,
    /// Bytes per descriptor (None: one descriptor per transfer).
    pub block_bytes: Option<u64>,
    /// Request-building path.
    pub xfer_path: XferPath,
    /// The NIXL backend plugins measured, comma-separated (`UCX`, `UCX,LIBFABRIC`; empty: raw UCX only).
    pub backend: String,
    /// Every backend measured, in order (`nixl-ucx`, `nixl-libfabric`, `ucx`).
    #[serde(default)]
    pub backends: Vec<String>,
    /// Backend parameters given by the user (`ucx:` / `libfabric:` scope one to that plugin).
    pub backend_params: BTreeMap<String, String>,
    /// Agent settings.
    pub agent: crate::nixl::AgentConfig,
    /// Timed-loop target duration per row, seconds.
    pub duration_s: f64,
    /// Minimum warm-up time per row, seconds.
    pub warmup_s: f64,
    /// Minimum warm-up transfers per row.
    pub warmup_iters: u64,
    /// Minimum timed transfers per row.
    pub min_iters: u64,
    /// Maximum timed transfers per row.
    pub max_iters: u64,
    /// Whether every timed transfer carries a notification (as in vLLM).
    pub notif_every_transfer: bool,
    /// The memory of both sides, `src -> dst` (`dram -> vram (GPU 0)`).
    pub mem: String,
    /// Memory the bytes are read from.
    #[serde(default)]
    pub src_mem: crate::mem::MemSpec,
    /// Memory the bytes are written to.
    #[serde(default)]
    pub dst_mem: crate::mem::MemSpec,
    /// DRAM buffers on transparent huge pages (`madvise`); false: 4 KiB pages.
    #[serde(default = "crate::peer::yes")]
    pub hugepages: bool,
    /// Raw UCX WRITEs timed to local completion with one flush at the end of
    /// each timed loop (ucx_perftest put_bw's meaning); false: every WRITE is
    /// flushed, so it has reached the target (NIXL's meaning).
    #[serde(default)]
    pub ucx_local_completion: bool,
    /// KV mode (`sweep --model`): geometries per block size, input lengths,
    /// block pattern, requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<crate::engine::KvPlan>,
    /// Verdict thresholds.
    #[serde(default)]
    pub verdict: crate::verdict::Thresholds,
}

/// Summary statistics of a set of durations, microseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq)]
pub struct Stats {
    /// Median (nearest rank).
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// One check of the data pattern.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// `first` (before the timed loop) or `last` (after it).
    pub when: String,
    /// Which side read the data back: `initiator` (READ) or `target` (WRITE).
    pub side: String,
    /// True when every byte matched.
    pub ok: bool,
    /// Bytes that differed.
    pub mismatched_bytes: u64,
    /// First differing offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_offset: Option<u64>,
    /// Blocks (descriptors) with a differing byte.
    #[serde(default)]
    pub bad_blocks: u64,
}

/// One measured point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The engine: `nixl` or `ucx` (raw UCP). [`Row::label`] names the backend as the CLI does.
    pub backend: String,
    /// NIXL backend plugin that moved the bytes (`UCX`, `LIBFABRIC`; `UCP` for raw UCX rows).
    pub plugin: String,
    /// READ or WRITE, from the initiator's side.
    pub op: XferOp,
    /// Bytes per transfer.
    pub size_bytes: u64,
    /// Descriptors per transfer.
    pub descs: u64,
    /// Bytes per descriptor.
    pub block_bytes: u64,
    /// Request-building path.
    pub xfer_path: XferPath,
    /// Timed transfers.
    pub iterations: u64,
    /// Warm-up transfers before them.
    pub warmup_iterations: u64,
    /// Wall time of the timed loop, seconds.
    pub elapsed_s: f64,
    /// size_bytes x iterations / elapsed_s / 1e9 (decimal GB/s).
    pub gbps: f64,
    /// Per-transfer latency, post to observed completion, microseconds.
    pub latency_us: Stats,
    /// Duration of the post call alone, microseconds.
    pub post_us: Stats,
    /// Time to build both descriptor lists and, on the prepped path, to
    /// `prep_xfer_dlist` them (vLLM does this once, at registration), microseconds.
    pub prep_us: f64,
    /// Time of the `make_xfer_req` (prepped path) or `create_xfer_req` (create
    /// path) call: the per-request cost, microseconds.
    pub make_us: f64,
    /// NIXL's own telemetry of the last checked transfer (None when off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<Telemetry>,
    /// UCX_TLS in force (None: unset, UCX chooses).
    pub ucx_tls: Option<String>,
    /// True when every data check passed.
    pub verified: bool,
    /// `first-last`: a checked transfer before and after the timed loop;
    /// `all` (`--verify all`): every timed transfer checked too.
    #[serde(default = "first_last")]
    pub verify: String,
    /// Transfers whose bytes were checked (destination poisoned first, every byte read back).
    #[serde(default)]
    pub checked_transfers: u64,
    /// Of those, transfers that delivered a wrong byte.
    #[serde(default)]
    pub corrupt_transfers: u64,
    /// Blocks (descriptors) that arrived wrong, summed over the checked transfers.
    #[serde(default)]
    pub corrupt_blocks: u64,
    /// The data checks around the timed loop (`first`, `last`) and, with
    /// `--verify all`, the first timed transfer that arrived wrong (`timed`).
    pub checks: Vec<Check>,
    /// Notifications the target should have received for this row.
    pub notifs_expected: u64,
    /// Notifications it did receive (counted again after a short pause, so
    /// late duplicates show as a surplus).
    pub notifs_received: u64,
    /// Messages the target received that no kvprobe transfer sent (should
    /// never happen; any makes the row fail).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unexpected_notifs: Vec<String>,
    /// What carried the bytes, as UCX itself reports it, and what is wrong
    /// with it. None only when UCX said nothing (the process died first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// KV-shaped rows: the geometry and what one request costs. In these rows
    /// `size_bytes` is the bytes of one request, `descs` its descriptors,
    /// `block_bytes` the bytes per descriptor, `latency_us` the time of one
    /// request (make_xfer_req + post + completion) and `gbps` the aggregate
    /// rate over the timed loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv: Option<KvRow>,
    /// A TP run's rank (`kvprobe tp`): CLOCK_MONOTONIC nanoseconds at the
    /// timed loop's start and end, the same clock on every process of the
    /// host, so the concurrent ranks' loops can be lined up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ns: Option<[u64; 2]>,
}

impl Row {
    /// The backend as the command line names it: `nixl-ucx`, `nixl-libfabric`, `ucx`
    /// (rows of other plugins: `nixl-<plugin>`).
    pub fn label(&self) -> String {
        match crate::peer::BackendKind::of_row(&self.backend, &self.plugin) {
            Some(b) => b.label().to_string(),
            None => format!("{}-{}", self.backend, self.plugin.to_ascii_lowercase()),
        }
    }
}

/// A plain TCP stream between the two processes over the control
/// connection's route: the capacity the network gives one TCP stream, the
/// yardstick for TCP rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkProbe {
    /// The initiator's address on the route.
    pub local_addr: String,
    /// The target's address.
    pub target_addr: String,
    /// Initiator to target (the WRITE direction), GB/s (1e9 bytes/s).
    pub to_target_gbps: f64,
    /// Target to initiator (the READ direction), GB/s.
    pub from_target_gbps: f64,
    /// Streaming time per direction, seconds.
    pub duration_s: f64,
    /// The local network interface of the route, and its rated speed
    /// (sysfs, Mb/s), filled in by the orchestrator.
    #[serde(default)]
    pub local_dev: Option<String>,
    /// Rated speed of that interface, Mb/s (None: unknown or virtual).
    #[serde(default)]
    pub local_dev_mbps: Option<u64>,
}

/// The KV-specific part of a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvRow {
    /// Per-rank geometry (model, dtype, layout, TP, block sizes, regions).
    pub geometry: crate::kv::Geometry,
    /// Input length, tokens.
    pub isl: u64,
    /// Blocks per full-attention region (and per sliding region).
    pub blocks: u64,
    /// Blocks per sliding-window region.
    pub sliding_blocks: u64,
    /// Block ids: contiguous or random.
    pub pattern: BlockPattern,
    /// Requests in flight at once.
    pub inflight: u32,
    /// Blocks per registered region (the cache the request ids come from).
    pub pool_blocks: u64,
    /// Requests timed.
    pub requests: u64,
    /// make_xfer_req per request, microseconds (NIXL; zero for raw UCX).
    pub make_us: Stats,
    /// Bytes of one request over its median time, GB/s (1e9 bytes/s).
    pub effective_gbps: f64,
    /// The same bytes as one contiguous descriptor, same run, GB/s.
    pub contiguous_gbps: f64,
    /// Median time of that contiguous transfer, microseconds.
    pub contiguous_us: f64,
    /// effective_gbps / contiguous_gbps.
    pub layout_efficiency: f64,
    /// Time the transfer adds to time-to-first-token at this ISL (the
    /// request's median and p99), milliseconds.
    pub ttft_added_ms_p50: f64,
    /// p99 of the same.
    pub ttft_added_ms_p99: f64,
}

/// How a request's block ids are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BlockPattern {
    /// Consecutive ids (a fresh cache): neighbouring blocks are adjacent in memory.
    #[default]
    Contiguous,
    /// Ids scattered over the cache, as in a long-running server.
    Random,
}

impl std::str::FromStr for BlockPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "contiguous" => Ok(BlockPattern::Contiguous),
            "random" => Ok(BlockPattern::Random),
            other => Err(format!("unknown block pattern '{other}' (contiguous, random)")),
        }
    }
}

impl std::fmt::Display for BlockPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlockPattern::Contiguous => "contiguous",
            BlockPattern::Random => "random",
        })
    }
}

/// What carried a row's bytes (transport truth).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Transport {
    /// Where this comes from: `ucp_request_query` (raw UCX: the request of the
    /// first checked transfer) or `UCX_PROTO_INFO` (NIXL: UCX's table of the
    /// protocols its worker used, with counts, printed when NIXL releases it).
    pub source: String,
    /// UCX's description of the protocol for this operation and size
    /// (`zero-copy`, `copy-in`, `software emulation`...).
    pub protocol: String,
    /// Transport/device pairs that carried the data (`cma/memory`, `tcp/lo`,
    /// `rc_mlx5/mlx5_0:1`...), with their share when UCX splits a transfer.
    pub lanes: Vec<String>,
    /// Transport/device pairs that carried NIXL's notifications (active
    /// messages); empty for raw UCX, which sends none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notif_lanes: Vec<String>,
    /// The endpoint's lanes (`ucp_ep_query`; raw UCX only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_lanes: Vec<String>,
    /// How many times UCX used this protocol in the process (UCX_PROTO_INFO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// UCX's own words: the request string, or the table row.
    pub detail: String,
    /// What kvprobe finds wrong with this path (empty: nothing).
    #[serde(default)]
    pub flags: Vec<Flag>,
}

/// A problem with the path a row took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    /// `software-emulation`, `tcp-while-faster-exists`, `notifications-over-tcp`,
    /// `numa-mismatch`, `unknown-transport`.
    pub kind: String,
    /// What was seen.
    pub evidence: String,
    /// What to do about it.
    pub fix: String,
}

/// The unit legend written into every header.
pub fn units_legend() -> BTreeMap<String, String> {
    [
        ("gbps", "GB/s = 1e9 bytes per second (decimal). ucx_perftest's MB/s is MiB/s: x1.048576e-3 to compare."),
        ("*_us", "microseconds"),
        ("size_bytes", "bytes"),
        ("latency_us", "per transfer, from the post call to the status poll that saw it complete"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Nearest-rank statistics of durations given in nanoseconds.
pub fn stats_from_ns(samples: &mut [u64]) -> Stats {
    if samples.is_empty() {
        return Stats::default();
    }
    samples.sort_unstable();
    let n = samples.len();
    let rank = |p: f64| {
        let r = ((p / 100.0) * n as f64).ceil() as usize;
        samples[r.clamp(1, n) - 1] as f64 / 1e3
    };
    let sum: u128 = samples.iter().map(|&x| u128::from(x)).sum();
    Stats {
        p50: rank(50.0),
        p99: rank(99.0),
        min: samples[0] as f64 / 1e3,
        max: samples[n - 1] as f64 / 1e3,
        mean: sum as f64 / n as f64 / 1e3,
    }
}

/// The default of `Row::verify` (files written before `--verify`).
fn first_last() -> String {
    "first-last".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        let s = stats_from_ns(&mut v);
        assert_eq!(s.p50, 50.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 100.0);
        assert!((s.mean - 50.5).abs() < 1e-9);
        let mut one = vec![7000];
        let s = stats_from_ns(&mut one);
        assert_eq!((s.p50, s.p99), (7.0, 7.0));
        assert_eq!(stats_from_ns(&mut []), Stats::default());
    }
}
