//! The two-process transfer engine.
//!
//! - [`target`]: owns a registered buffer, answers control requests, counts
//!   notifications. It never initiates a transfer.
//! - [`initiator`]: connects to a target, loads its NIXL metadata and measures
//!   READ/WRITE rows, checking the data of the first and last transfer of
//!   every row with a fresh pattern.
//!
//! Both run in processes of their own (`kvprobe __target`, `kvprobe
//! __initiator`) that the `sweep` command starts and watches, so a crash inside
//! NIXL or UCX cannot take the results already measured with it.

pub mod initiator;
pub mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::mem::MemError;
use crate::nixl::{AgentConfig, NixlError, XferOp};
use crate::peer::PeerError;
use crate::report::schema::{Row, XferPath};

/// Everything an initiator needs; the `sweep` command builds it and hands it
/// to `kvprobe __initiator` on stdin as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPlan {
    /// Control address of the target.
    pub target_addr: String,
    /// Session token the target expects.
    pub token: String,
    /// NIXL library to load.
    pub nixl_lib: PathBuf,
    /// Operations, in order.
    pub ops: Vec<XferOp>,
    /// Sizes, bytes, in order.
    pub sizes: Vec<u64>,
    /// Bytes per descriptor (None: one descriptor per transfer).
    pub block: Option<u64>,
    /// Request-building path.
    pub xfer_path: XferPath,
    /// Backends to measure, row by row (op, size, backend).
    pub backends: Vec<crate::peer::BackendKind>,
    /// How to build the raw UCX side (when `backends` has `ucx`).
    #[serde(default)]
    pub ucx: Option<crate::peer::UcxSetup>,
    /// Extra NIXL backend parameters (`ucx:`/`libfabric:` scope a key to one plugin).
    pub backend_params: BTreeMap<String, String>,
    /// Agent settings (both sides).
    pub agent: AgentConfig,
    /// Measurement timing.
    pub timing: Timing,
    /// Whether timed transfers carry notifications.
    pub notif_every_transfer: bool,
    /// DRAM buffers on transparent huge pages (false: 4 KiB pages).
    #[serde(default = "crate::peer::yes")]
    pub hugepages: bool,
    /// Raw UCX WRITEs complete locally, one flush ends the timed loop
    /// (ucx_perftest put_bw's meaning; default: a flush per WRITE).
    #[serde(default)]
    pub ucx_local_completion: bool,
    /// Fault injection for kvprobe's self-tests (None in real runs).
    #[serde(default)]
    pub inject: Option<Inject>,
    /// Check every timed transfer's bytes (`--verify all`), not only the two around the loop.
    #[serde(default)]
    pub verify_all: bool,
    /// KV-shaped rows instead of `sizes` (sweep --model).
    #[serde(default)]
    pub kv: Option<KvPlan>,
    /// Plain-TCP link probe per direction before measuring, seconds (0: none).
    #[serde(default)]
    pub link_probe_s: f64,
    /// The target's memory.
    #[serde(default)]
    pub target_mem: crate::mem::MemSpec,
    /// The initiator's memory.
    #[serde(default)]
    pub initiator_mem: crate::mem::MemSpec,
    /// A TP run's barrier (`kvprobe tp`): None in ordinary sweeps.
    #[serde(default)]
    pub sync: Option<SyncSpec>,
}

/// Where a TP run's barrier is and who this initiator is in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncSpec {
    /// The orchestrator's barrier address (loopback).
    pub addr: String,
    /// Its token.
    pub token: String,
    /// This initiator's decode rank.
    pub rank: u32,
}

/// What a KV-shaped sweep measures: one geometry per block size, rows per
/// (operation, input length).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvPlan {
    /// One per block size, in order.
    pub geometries: Vec<crate::kv::Geometry>,
    /// Kind of each layer.
    pub layer_kinds: Vec<crate::kv::LayerKind>,
    /// Input lengths, tokens.
    pub isls: Vec<u64>,
    /// How request block ids are chosen.
    pub pattern: crate::report::schema::BlockPattern,
    /// Requests in flight at once.
    pub inflight: u32,
    /// NIXL: keep make_xfer_req from merging adjacent descriptors.
    #[serde(default)]
    pub no_desc_merge: bool,
    /// A TP run: the decode ranks reading one prefill rank (0: not a TP run).
    /// The cache then holds one extra area per such rank, and each rank's
    /// checked requests use its own area, so no sibling's transfers touch the
    /// blocks it checks (its timed requests share the blocks, as in vLLM).
    #[serde(default)]
    pub check_areas: u32,
    /// This rank's area among them (0-based).
    #[serde(default)]
    pub check_area: u32,
}

impl KvPlan {
    /// Blocks per region for geometry `gi`: the timed requests' blocks, and
    /// one more area as large per rank of a TP run's check areas.
    pub fn pool_blocks(&self, gi: usize) -> u64 {
        self.timed_blocks(gi) * (1 + u64::from(self.check_areas))
    }

    /// Blocks per region the timed requests use (the start of the cache):
    /// room for `inflight` requests of the longest input, twice that for
    /// random ids (so they scatter).
    pub fn timed_blocks(&self, gi: usize) -> u64 {
        let g = &self.geometries[gi];
        let most = self.isls.iter().map(|&n| g.blocks_of(n, false).1).max().unwrap_or(1).max(1);
        let spread = match self.pattern {
            crate::report::schema::BlockPattern::Contiguous => 1,
            crate::report::schema::BlockPattern::Random => 2,
        };
        most * u64::from(self.inflight.max(1)) * spread
    }

    /// The first block of this rank's checked requests (0: they share the
    /// timed requests' blocks).
    pub fn check_base(&self, gi: usize) -> u64 {
        if self.check_areas == 0 { 0 } else { self.timed_blocks(gi) * (1 + u64::from(self.check_area)) }
    }

    /// What the sides build for geometry `gi`.
    pub fn setup(&self, gi: usize) -> crate::peer::KvSetup {
        crate::peer::KvSetup {
            geometry: self.geometries[gi].clone(),
            layer_kinds: self.layer_kinds.clone(),
            pool_blocks: self.pool_blocks(gi),
            timed_blocks: self.timed_blocks(gi),
            check_base: self.check_base(gi),
        }
    }

    /// The largest request (bytes) over every geometry and input length.
    pub fn max_request_bytes(&self) -> u64 {
        self.geometries
            .iter()
            .flat_map(|g| self.isls.iter().map(move |&n| g.request(&self.layer_kinds, n).bytes))
            .max()
            .unwrap_or(0)
    }

    /// Bytes both sides allocate for the largest geometry: (prefill, decode)
    /// KV caches plus the contiguous reference buffer on each side.
    pub fn memory_bytes(&self) -> u64 {
        (0..self.geometries.len())
            .map(|gi| {
                let g = &self.geometries[gi];
                let pool = self.pool_blocks(gi);
                g.side(crate::kv::Side::Prefill, pool).total_bytes()
                    + g.side(crate::kv::Side::Decode, pool).total_bytes()
            })
            .max()
            .unwrap_or(0)
            + 2 * self.max_request_bytes()
    }
}

/// A fault the run must catch (used by kvprobe's own tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Inject {
    /// Flip one target byte in the first checked transfer of the first point.
    CorruptFirst,
    /// Flip one target byte in the last checked transfer of the first point.
    CorruptLast,
    /// Post one warm-up transfer of the first point without its notification.
    MissingNotif,
    /// KV mode: the first checked request of the first point reads (or
    /// writes) each block one block further on at the prefill side.
    KvMisplaced,
    /// `--verify all`: the first timed transfer of the first point
    /// completes, then every other destination block is zeroed before its
    /// check (blocks that arrive as zeros, vLLM issue 27055).
    ZeroBlocks,
}

/// How long to measure.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Timing {
    /// Timed loop runs at least this long (seconds) ...
    pub duration_s: f64,
    /// ... and at least this many transfers ...
    pub min_iters: u64,
    /// ... but never more than this many.
    pub max_iters: u64,
    /// Warm-up lasts at least this long (seconds) ...
    pub warmup_s: f64,
    /// ... and at least this many transfers.
    pub warmup_iters: u64,
    /// One transfer taking longer than this (seconds) is an error.
    pub xfer_timeout_s: f64,
    /// A control request unanswered for this long (seconds) is an error.
    pub peer_timeout_s: f64,
    /// Keep-alive period while measuring (seconds): well inside the
    /// target's idle limit, so a descheduled initiator does not lose it.
    #[serde(default = "one_second")]
    pub keepalive_s: f64,
}

fn one_second() -> f64 {
    1.0
}

/// What the initiator reports to the `sweep` command, one JSON line each.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Connected.
    Started(Started),
    /// About to set a backend up on both sides (after the first).
    Setup {
        /// Which.
        backend: crate::peer::BackendKind,
    },
    /// A backend is set up on both sides; its rows follow.
    Backend(Box<BackendReady>),
    /// About to measure a point.
    Point {
        /// 0-based index.
        index: usize,
        /// Number of points.
        total: usize,
        /// Operation.
        op: XferOp,
        /// Size.
        size: u64,
        /// Backend.
        backend: crate::peer::BackendKind,
    },
    /// Still alive (sent about once a second while a point is measured).
    Heartbeat,
    /// A measured row.
    Row(Box<Row>),
    /// Finished; errors met while releasing NIXL objects, if any.
    Done {
        /// Recorded destructor errors.
        drop_errors: Vec<String>,
    },
    /// The plain-TCP link probe between the two processes.
    Link(crate::report::schema::LinkProbe),
    /// Stopped by an error.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// Facts the initiator learns when it connects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    /// Initiator pid.
    pub initiator_pid: u32,
    /// This host's UCX transport resources (the `ucx_info -d` view).
    #[serde(default)]
    pub resources: Vec<crate::ucx::info::Resource>,
    /// The target as it described itself.
    pub target: crate::report::schema::PeerInfo,
    /// NUMA node of the initiator's buffer.
    #[serde(default)]
    pub buffer_numa: Option<i32>,
}

/// One backend, set up on both sides.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendReady {
    /// Which.
    pub backend: crate::peer::BackendKind,
    /// NIXL: the version the library reports (releases after 1.5.1).
    #[serde(default)]
    pub library_version: Option<String>,
    /// NIXL: plugins the initiator's agent can load.
    #[serde(default)]
    pub plugins: Vec<String>,
    /// NIXL: effective backend parameters on the initiator.
    #[serde(default)]
    pub backend_params: BTreeMap<String, String>,
    /// NIXL: effective backend parameters on the target.
    #[serde(default)]
    pub target_backend_params: BTreeMap<String, String>,
    /// Raw UCX: the initiator's side.
    #[serde(default)]
    pub ucx: Option<UcxInfo>,
    /// NIXL's LIBFABRIC plugin: the libfabric it bound to and the rails NIXL's rule picks there.
    #[serde(default)]
    pub libfabric: Option<crate::fabric_plugin::LibfabricFacts>,
}

/// The initiator's raw UCX side.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UcxInfo {
    /// The libucp loaded (the one NIXL links, normally).
    pub lib: String,
    /// Its version.
    pub version: String,
    /// UCX settings kvprobe applied (NIXL's defaults).
    pub applied: Vec<(String, String)>,
    /// Settings left alone, with the reason (set by the user, unknown to this UCX).
    pub not_applied: Vec<(String, String)>,
    /// The endpoint's lanes (`ucp_ep_query`): transport/device.
    pub endpoint_lanes: Vec<String>,
}

/// Engine failures.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// NIXL call failed.
    #[error(transparent)]
    Nixl(#[from] NixlError),
    /// Control channel failed.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// A UCX call failed.
    #[error(transparent)]
    Ucx(#[from] crate::ucx::UcxError),
    /// Memory.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// Data did not match.
    #[error("data verification failed: {0}")]
    Verification(String),
    /// The target refused the session.
    #[error("handshake refused: {0}")]
    Handshake(String),
    /// Bad plan.
    #[error("{0}")]
    Invalid(String),
    /// A transfer failed because the target went away.
    #[error(
        "lost the target {who}: its control connection closed, so its process ended (crashed, killed, or its host went down); the failed call: {cause}"
    )]
    PeerLost {
        /// Which target: pid, host, address.
        who: String,
        /// The error the transfer returned.
        cause: Box<EngineError>,
    },
}

/// The value of `UCX_TLS` in this process, `None` when unset.
pub fn ucx_tls_env() -> Option<String> {
    std::env::var("UCX_TLS").ok().filter(|s| !s.is_empty())
}

/// The pattern seed for (row, check): distinct for every row and check, so
/// data left over from an earlier transfer never passes.
pub fn seed_for(row: usize, check: u64) -> u64 {
    let x = (row as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ check.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x | 1
}

/// The initiator's NIXL agent name (one agent per initiator process).
pub fn initiator_agent_name() -> String {
    format!("kvprobe-initiator-{}", std::process::id())
}
