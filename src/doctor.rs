//! `kvprobe doctor`: what will carry KV traffic on this host and what is
//! wrong, before anything is measured.
//!
//! Two halves. [`gather`] collects facts: NIXL (where, version, which
//! plugins load and, for those that do not, which libraries the loader would
//! not find), UCX (where, version, the transport modules it was built with
//! and their missing libraries, the `ucx_info -d` device view from UCT, the
//! resources a UCP context enables under the user's UCX_TLS/UCX_NET_DEVICES,
//! and a same-host probe: one get and one put between two workers of this
//! process, whose protocol strings say exactly what would carry a same-host
//! transfer), NVML (GPUs and NVLink), sysfs/procfs ([`crate::topology`]) and
//! the environment. [`diagnose`] is a pure function of those facts: it names
//! the carrier of each path and lists findings with severity, evidence and
//! fix. Tests feed it hand-made facts and fixture sysfs trees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::locate::{self, Inputs, NixlLocation, SearchStep};
use crate::mem::HostBuffer;
use crate::nixl::{Agent, AgentConfig, Nixl};
use crate::nvml::{Nvml, NvmlReport};
use crate::report::schema::{Flag, Transport};
use crate::topology::{self, Topology};
use crate::transport::{self, RDMA, SHM};
use crate::ucx::info::{Component, Resource};
use crate::ucx::{Context, Endpoint, MemHandle, RemoteKey, Request, Ucx, Worker};

/// How bad a finding is. The exit code of `doctor` is the worst one:
/// 0 info only, 1 a warning, 2 an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; nothing to fix.
    Info,
    /// KV transfers will work but slower than this hardware allows, or a
    /// setting is risky.
    Warning,
    /// KV transfers will fail, or take a path orders of magnitude slower.
    Error,
}

impl Severity {
    /// Exit code for this severity.
    pub fn exit_code(self) -> u8 {
        match self {
            Severity::Info => 0,
            Severity::Warning => 1,
            Severity::Error => 2,
        }
    }
}

/// One thing doctor found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// Stable identifier (`ucx-no-srd-on-efa`...), for automation.
    pub id: String,
    /// One line.
    pub title: String,
    /// What was seen, with the source (file, API, variable).
    pub evidence: String,
    /// What to do.
    pub fix: String,
}

fn finding(
    severity: Severity,
    id: &str,
    title: impl Into<String>,
    evidence: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding { severity, id: id.into(), title: title.into(), evidence: evidence.into(), fix: fix.into() }
}

/// A NIXL backend plugin and whether it loads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginFacts {
    /// `UCX`, `LIBFABRIC`...
    pub name: String,
    /// The plugin file.
    pub file: Option<PathBuf>,
    /// Whether NIXL could load it.
    pub loads: bool,
    /// Memory types it supports (when it loads).
    pub mem_types: Vec<String>,
    /// NIXL's error (when it does not).
    pub error: Option<String>,
    /// Libraries the plugin needs that the loader would not find.
    pub missing_libs: Vec<String>,
}

/// NIXL as found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NixlFacts {
    /// Where and how it was found.
    pub location: NixlLocation,
    /// Version (the library's own, or the wheel's).
    pub version: Option<String>,
    /// Backend plugins in the plugin folder.
    pub plugins: Vec<PluginFacts>,
}

/// NIXL's LIBFABRIC plugin and the libfabric it gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibfabricFacts {
    /// Whether the plugin can load (files and symbol versions), and which libfabric it binds to.
    pub check: crate::fabric_plugin::PluginCheck,
    /// That libfabric as the library itself reports it: version, providers,
    /// NIXL's pick (when kvprobe could load it).
    #[serde(flatten)]
    pub report: Option<crate::fabric::FabricReport>,
    /// Why kvprobe could not load that libfabric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
    /// FI_*, NIXL_LIBFABRIC_* and NIXL_DISABLE_DMABUF as set.
    pub env: Vec<(String, String)>,
}

/// A UCX loadable module (`<libucp dir>/ucx/libuct_ib_efa.so...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleFacts {
    /// `uct_ib_efa`, `uct_cuda`, `ucm_cuda`...
    pub name: String,
    /// File.
    pub file: PathBuf,
    /// Libraries it needs that the loader would not find: UCX then skips the
    /// module silently.
    pub missing_libs: Vec<String>,
}

/// The same-host probe: two workers of this process, one 1 MiB get and put.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Settings kvprobe applied (NIXL's defaults, loopback for TCP).
    pub settings: Vec<(String, String)>,
    /// Peer error handling (NIXL's default mode) on the endpoint.
    pub peer_errors: bool,
    /// The endpoint's lanes (`ucp_ep_query`).
    pub lanes: Vec<String>,
    /// What carried the get (READ), from `ucp_request_query`.
    pub read: Transport,
    /// What carried the put (WRITE).
    pub write: Transport,
}

/// UCX as found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UcxFacts {
    /// libucp loaded.
    pub lib: PathBuf,
    /// Which search rule found it.
    pub found_by: String,
    /// Every place searched.
    pub searched: Vec<SearchStep>,
    /// `ucp_get_version`.
    pub version: String,
    /// `./configure` flags embedded in libucp (the `ucx_info -b` answer).
    pub configure_flags: Option<String>,
    /// Folder of loadable modules (the build's transports).
    pub modules_dir: PathBuf,
    /// Modules present.
    pub modules: Vec<ModuleFacts>,
    /// UCT components (`uct_query_components`).
    pub components: Vec<Component>,
    /// Transport resources on devices (the `ucx_info -d` view).
    pub resources: Vec<Resource>,
    /// Memory domains that failed to open.
    pub md_errors: Vec<(String, String)>,
    /// `transport/device` a UCP context enables under the environment
    /// (UCX_TLS, UCX_NET_DEVICES...), from `ucp_context_print_info`.
    pub enabled: Vec<String>,
    /// Why no context could be made, if none could.
    pub context_error: Option<String>,
    /// The same-host probe.
    pub probe: Option<Probe>,
    /// Why the probe failed, if it did.
    pub probe_error: Option<String>,
}

/// Everything doctor looked at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Facts {
    /// kvprobe version.
    pub kvprobe: String,
    /// Host name.
    pub host: String,
    /// The root the hardware was read under (`/`, or a fixture).
    pub root: PathBuf,
    /// UCX_*, NIXL_*, LD_PRELOAD and LD_LIBRARY_PATH as set.
    pub env: BTreeMap<String, String>,
    /// NIXL, when found.
    pub nixl: Option<NixlFacts>,
    /// Why NIXL is unusable.
    pub nixl_error: Option<String>,
    /// NIXL's LIBFABRIC plugin, when this NIXL has one.
    #[serde(default)]
    pub libfabric: Option<LibfabricFacts>,
    /// Libraries mapped twice into this process, from different files, once
    /// NIXL and UCX were loaded (`libibverbs`: the wheel's hashed copy and the
    /// system's): family, files.
    #[serde(default)]
    pub duplicate_libs: Vec<(String, Vec<PathBuf>)>,
    /// UCX, when found.
    pub ucx: Option<UcxFacts>,
    /// Why UCX is unusable.
    pub ucx_error: Option<String>,
    /// sysfs/procfs.
    pub topology: Topology,
    /// NVML, when loaded.
    pub nvml: Option<NvmlReport>,
    /// Why NVML was not used.
    pub nvml_error: Option<String>,
    /// The CUDA driver's view of the GPUs (GPUDirect RDMA and dma-buf support), when loaded.
    #[serde(default)]
    pub cuda: Option<CudaFacts>,
    /// Why the CUDA driver was not used.
    #[serde(default)]
    pub cuda_error: Option<String>,
}

/// What the CUDA driver API says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaFacts {
    /// CUDA version the driver supports (`13.0`).
    pub driver: String,
    /// Library file.
    pub library: Option<PathBuf>,
    /// GPUs.
    pub devices: Vec<crate::cuda::CudaDevice>,
}

/// What carries one kind of KV transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carrier {
    /// `same host, host memory`, `same host, GPU memory`, `across hosts`.
    pub path: String,
    /// Transports (and devices) that will carry it, as UCX reports them.
    pub carrier: String,
    /// Worst severity of the findings about this path.
    pub severity: Severity,
}

/// The doctor's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Diagnosis {
    /// What will carry each path.
    pub carriers: Vec<Carrier>,
    /// Findings, worst first.
    pub findings: Vec<Finding>,
    /// The exit code (worst severity).
    pub exit_code: u8,
}

/// Options of [`gather`].
#[derive(Debug, Clone, Default)]
pub struct GatherOptions {
    /// Hardware root (`/` on a real host).
    pub root: PathBuf,
    /// `--nixl-lib`.
    pub nixl_lib: Option<PathBuf>,
    /// `--ucx-lib`.
    pub ucx_lib: Option<PathBuf>,
}

const ENV_PREFIXES: &[&str] = &["UCX_", "NIXL_"];
const ENV_EXTRA: &[&str] = &["LD_PRELOAD", "LD_LIBRARY_PATH"];

/// Collects the facts. Never fails: what cannot be read becomes an `*_error`.
pub fn gather(opts: &GatherOptions) -> Facts {
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| ENV_PREFIXES.iter().any(|p| k.starts_with(p)) || ENV_EXTRA.contains(&k.as_str()))
        .collect();
    let topology = topology::discover(&opts.root);
    let (nvml, nvml_error) = if opts.root != Path::new("/") {
        (None, Some(format!("not queried: the hardware is read from {}, not this host", opts.root.display())))
    } else {
        match Nvml::open().and_then(|n| n.report()) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e.to_string())),
        }
    };
    let (cuda, cuda_error) = if opts.root != Path::new("/") {
        (None, Some(format!("not queried: the hardware is read from {}, not this host", opts.root.display())))
    } else {
        let got = crate::cuda::Cuda::open().and_then(|c| {
            Ok(CudaFacts {
                driver: c.driver_version()?,
                library: c.path().map(Path::to_path_buf),
                devices: c.devices()?,
            })
        });
        match got {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(e.to_string())),
        }
    };
    let (nixl, nixl_error) = match gather_nixl(opts.nixl_lib.clone()) {
        Ok(n) => (Some(n), None),
        Err(e) => (None, Some(e)),
    };
    let libfabric = nixl.as_ref().and_then(gather_libfabric);
    let (ucx, ucx_error) = match gather_ucx(opts.ucx_lib.clone(), nixl.as_ref().map(|n| &n.location), &topology) {
        Ok(u) => (Some(u), None),
        Err(e) => (None, Some(e)),
    };
    // after NIXL and UCX (and UCX's transport modules) are loaded
    let duplicate_libs = duplicate_libs(&std::fs::read_to_string("/proc/self/maps").unwrap_or_default());
    Facts {
        kvprobe: crate::version().into(),
        host: crate::hostinfo::hostname(),
        root: opts.root.clone(),
        env,
        nixl,
        nixl_error,
        libfabric,
        duplicate_libs,
        ucx,
        ucx_error,
        topology,
        nvml,
        nvml_error,
        cuda,
        cuda_error,
    }
}

fn gather_nixl(cli: Option<PathBuf>) -> Result<NixlFacts, String> {
    let loc = locate::locate(&Inputs::from_env(cli)).map_err(|e| e.to_string())?;
    let plugin_dir = plugin_dir_of(&loc);
    // The LIBFABRIC plugin binds to the libfabric kvprobe's helpers would give
    // it (loaded first when the loader would not find it by itself), before
    // NIXL can load any plugin; a failure here shows in the plugin's own facts.
    let _ = crate::fabric_plugin::prepare(Some(&plugin_dir));
    let nixl = Nixl::open(&loc.lib).map_err(|e| e.to_string())?;
    let agent = Agent::new(
        &nixl,
        &format!("kvprobe-doctor-{}", std::process::id()),
        &AgentConfig { progress_thread: false, ..AgentConfig::default() },
    )
    .map_err(|e| e.to_string())?;
    let mut plugins = Vec::new();
    for name in agent.available_plugins().map_err(|e| e.to_string())? {
        let file = plugin_dir.join(format!("libplugin_{name}.so"));
        let file = file.is_file().then_some(file);
        let (loads, mem_types, error) = match agent.plugin_params(&name) {
            Ok(p) => (true, p.mem_types.iter().map(|m| m.to_string()).collect(), None),
            Err(e) => (false, Vec::new(), Some(e.to_string())),
        };
        let missing_libs = match (&file, loads) {
            // the plugin's whole closure and the symbol versions it needs
            (Some(f), false) if name == "LIBFABRIC" => {
                let c = crate::fabric_plugin::check_plugin(f);
                c.missing
                    .iter()
                    .map(|m| m.name.clone())
                    .chain(c.version_gaps.iter().map(|g| format!("{} with {}", g.name, g.missing.join(", "))))
                    .collect()
            }
            (Some(f), false) => crate::elf::missing_needed(f).unwrap_or_default(),
            _ => Vec::new(),
        };
        plugins.push(PluginFacts { name, file, loads, mem_types, error, missing_libs });
    }
    let version = nixl.version().or_else(|| loc.version.clone());
    Ok(NixlFacts { location: loc, version, plugins })
}

/// The family of a library file: `libibverbs-1de1263b.so.1.14.48.0` and
/// `libibverbs.so.1` are both `libibverbs` (wheels add a hash to the name).
fn lib_family(file: &str) -> Option<&str> {
    let stem = file.split(".so").next()?;
    if stem.len() == file.len() || !stem.starts_with("lib") {
        return None;
    }
    // a trailing -<8 hex digits> is a wheel's hash
    Some(match stem.rsplit_once('-') {
        Some((f, h)) if h.len() == 8 && h.chars().all(|c| c.is_ascii_hexdigit()) => f,
        _ => stem,
    })
}

/// Families of the libraries NIXL's processes carry copies of, mapped from
/// more than one file (in /proc/self/maps text).
fn duplicate_libs(maps: &str) -> Vec<(String, Vec<PathBuf>)> {
    const WATCH: &[&str] = &[
        "libibverbs",
        "librdmacm",
        "libnl-3",
        "libnl-route-3",
        "libefa",
        "libmlx5",
        "libfabric",
        "libucp",
        "libucs",
        "libuct",
        "libnuma",
        "libhwloc",
        "libcudart",
    ];
    let mut by: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)).filter(|p| p.starts_with('/')) {
        let file = path.rsplit('/').next().unwrap_or(path);
        let Some(fam) = lib_family(file).filter(|f| WATCH.contains(f)) else { continue };
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
        let v = by.entry(fam.to_string()).or_default();
        if !v.contains(&real) {
            v.push(real);
        }
    }
    by.into_iter().filter(|(_, v)| v.len() > 1).collect()
}

fn plugin_dir_of(loc: &NixlLocation) -> PathBuf {
    loc.plugin_dir.clone().unwrap_or_else(|| loc.lib.parent().unwrap_or(Path::new("/")).join("plugins"))
}

/// The LIBFABRIC plugin's view: whether it loads and why not, and its
/// libfabric read through the library itself (after NIXL loaded the plugin,
/// so kvprobe opens the very file the plugin bound to).
fn gather_libfabric(n: &NixlFacts) -> Option<LibfabricFacts> {
    let plugin = plugin_dir_of(&n.location).join("libplugin_LIBFABRIC.so");
    if !plugin.is_file() {
        return None;
    }
    let check = crate::fabric_plugin::check_plugin(&plugin);
    let lib = crate::fabric::mapped_libfabric().or_else(|| check.libfabric.path.clone());
    let (report, load_error) = match lib {
        Some(l) => crate::fabric_plugin::report_in_child(&l),
        None => (None, None),
    };
    Some(LibfabricFacts { check, report, load_error, env: crate::fabric_plugin::fi_env() })
}

fn gather_ucx(cli: Option<PathBuf>, nixl: Option<&NixlLocation>, topo: &Topology) -> Result<UcxFacts, String> {
    let loc = locate::locate_ucx(cli, nixl).map_err(|e| e.to_string())?;
    let ucx = Ucx::open(&loc.lib).map_err(|e| e.to_string())?;
    let modules_dir = loc.lib.parent().unwrap_or(Path::new("/")).join("ucx");
    let mut modules = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&modules_dir) {
        let mut files: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".so") && n.starts_with("lib"))
            })
            .collect();
        files.sort();
        for file in files {
            let fname = file.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            let name = fname.trim_start_matches("lib").split(".so").next().unwrap_or_default().to_string();
            if name.starts_with("ucx_perftest") || modules.iter().any(|m: &ModuleFacts| m.name == name) {
                continue;
            }
            let missing_libs = crate::elf::missing_needed(&file).unwrap_or_default();
            modules.push(ModuleFacts { name, file, missing_libs });
        }
    }
    let view = crate::ucx::info::device_view(&ucx).map_err(|e| e.to_string())?;
    let (enabled, context_error) = match Context::new(&ucx, "kvprobe-doctor", &[]) {
        Ok(c) => (parse_context_resources(&c.print_info()), None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let mut settings = crate::peer::UcxSetup {
        lib: loc.lib.clone(),
        settings: crate::ucx::core::nixl_defaults(topo.has_efa()),
        peer_errors: true,
    }
    .settings_for(ucx.version_tuple());
    if std::env::var_os("UCX_NET_DEVICES").is_none() {
        // the probe stays on this host: TCP only over loopback
        settings.push(("NET_DEVICES".into(), "lo".into()));
    }
    let (probe, probe_error) = if context_error.is_some() {
        (None, Some("no UCP context could be made".to_string()))
    } else {
        // NIXL's default (peer error handling) first; if UCX cannot connect
        // that way, once more without, to tell the two failures apart
        match probe_same_host(&ucx, &settings, true) {
            Ok(p) => (Some(p), None),
            Err(e) => match probe_same_host(&ucx, &settings, false) {
                Ok(p) => (Some(p), Some(format!("with peer error handling: {e}"))),
                Err(e2) => (None, Some(format!("with peer error handling: {e}; without: {e2}"))),
            },
        }
    };
    let configure_flags = crate::ucx::configure_flags(&loc.lib);
    Ok(UcxFacts {
        lib: loc.lib,
        found_by: loc.found_by,
        searched: loc.searched,
        version: ucx.version(),
        configure_flags,
        modules_dir,
        modules,
        components: view.components,
        resources: view.resources,
        md_errors: view.md_errors,
        enabled,
        context_error,
        probe,
        probe_error,
    })
}

/// `transport/device` of every `resource` line of `ucp_context_print_info`
/// (`#      resource 2  :  md 1  dev 2  flags -- tcp/lo`).
pub fn parse_context_resources(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.trim_start_matches('#').trim_start().starts_with("resource"))
        .filter_map(|l| l.rsplit("-- ").next().filter(|_| l.contains("-- ")))
        .map(|s| s.trim().to_string())
        .filter(|s| s.contains('/'))
        .collect()
}

fn probe_same_host(ucx: &Ucx, settings: &[(String, String)], peer_errors: bool) -> Result<Probe, String> {
    let s = |e: crate::ucx::UcxError| e.to_string();
    let len = 1 << 20;
    let ca = Context::new(ucx, &format!("kvprobe-doctor-a-{}", std::process::id()), settings).map_err(s)?;
    let cb = Context::new(ucx, &format!("kvprobe-doctor-b-{}", std::process::id()), settings).map_err(s)?;
    let (wa, wb) = (Worker::new(&ca).map_err(s)?, Worker::new(&cb).map_err(s)?);
    let ba = Rc::new(HostBuffer::new(len).map_err(|e| e.to_string())?);
    let bb = Rc::new(HostBuffer::new(len).map_err(|e| e.to_string())?);
    let ma = MemHandle::map(&ca, Rc::clone(&ba)).map_err(s)?;
    let mb = MemHandle::map(&cb, Rc::clone(&bb)).map_err(s)?;
    let ep = Endpoint::connect(&wa, &wb.address().map_err(s)?, peer_errors).map_err(s)?;
    let rkey = RemoteKey::unpack(&ep, &mb.pack_rkey().map_err(s)?).map_err(s)?;
    let finish = |req: Option<Request>| -> Result<(), String> {
        let Some(req) = req else { return Ok(()) };
        let start = Instant::now();
        while !req.is_done().map_err(s)? {
            wa.progress();
            wb.progress();
            if start.elapsed() > Duration::from_secs(10) {
                return Err("a 1 MiB transfer between two workers of this process did not end in 10 s".into());
            }
        }
        Ok(())
    };
    let lanes: Vec<String> = ep.lanes().map_err(s)?.iter().map(|l| format!("{}/{}", l.transport, l.device)).collect();
    let get = ep.get(&ma, 0, len, mb.addr() as u64, &rkey, true).map_err(s)?;
    let read_info = get.as_ref().map(|r| r.info()).transpose().map_err(s)?.unwrap_or_default();
    finish(get)?;
    let put = ep.put(&ma, 0, len, mb.addr() as u64, &rkey, true).map_err(s)?;
    let write_info = put.as_ref().map(|r| r.info()).transpose().map_err(s)?.unwrap_or_default();
    finish(put)?;
    finish(ep.flush().map_err(s)?)?;
    Ok(Probe {
        settings: ca.applied.clone(),
        peer_errors,
        read: transport::from_request_info(&read_info, lanes.clone()),
        write: transport::from_request_info(&write_info, lanes.clone()),
        lanes,
    })
}

/// UCX_TLS names UCX knows: transports and aliases (`ucp_tl_aliases[]`,
/// ../shared/reference/ucx.md 3.2).
pub const UCX_TLS_NAMES: &[&str] = &[
    "all",
    "self",
    "tcp",
    "posix",
    "sysv",
    "xpmem",
    "knem",
    "cma",
    "sm",
    "shm",
    "mm",
    "rc_verbs",
    "rc_mlx5",
    "dc_mlx5",
    "ud_verbs",
    "ud_mlx5",
    "gga_mlx5",
    "rc_gda",
    "srd",
    "ib",
    "rc",
    "rc_v",
    "rc_x",
    "ud",
    "ud_v",
    "ud_x",
    "dc",
    "dc_x",
    "cuda",
    "cuda_copy",
    "cuda_ipc",
    "gdr_copy",
    "rocm",
    "rocm_copy",
    "rocm_ipc",
    "rocm_gdr",
    "ze",
    "ze_copy",
    "ze_ipc",
    "ze_gpu",
    "gga",
    "mlx5",
];

/// UCX_LOG_LEVEL values that print per operation.
const UCX_LOUD: &[&str] = &["debug", "trace", "req", "data", "async", "func", "poll"];

fn env<'a>(f: &'a Facts, k: &str) -> Option<&'a str> {
    f.env.get(k).map(String::as_str).filter(|v| !v.is_empty())
}

fn tl_of(entry: &str) -> &str {
    entry.split('/').next().unwrap_or(entry)
}

fn dev_of(entry: &str) -> &str {
    entry.split_once('/').map_or("", |(_, d)| d)
}

fn version_tuple(v: &str) -> (u32, u32) {
    let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Reads the facts and says what will carry KV traffic and what is wrong.
pub fn diagnose(f: &Facts) -> Diagnosis {
    let mut out: Vec<Finding> = Vec::new();
    let t = &f.topology;
    let nvidia: Vec<_> = t.nvidia_gpus().collect();
    let hcas: Vec<_> = t.hcas().collect();
    let has_rdma_hw = t.has_efa() || !hcas.is_empty();

    // ---- NIXL
    match &f.nixl {
        None => out.push(finding(
            Severity::Error,
            "nixl-missing",
            "NIXL cannot be used",
            f.nixl_error.clone().unwrap_or_default(),
            "install NIXL (debug/setup.sh in this checkout, or pip install --no-deps nixl-cu12 / nixl-cu13) or point --nixl-lib at libnixl_capi.so",
        )),
        Some(n) => {
            for p in n.plugins.iter().filter(|p| !p.loads) {
                let why = if p.missing_libs.is_empty() {
                    format!("NIXL: {}", p.error.clone().unwrap_or_default())
                } else {
                    format!("{} needs {}, which the loader does not find", display_opt(&p.file, &p.name), p.missing_libs.join(", "))
                };
                let (sev, fix) = match p.name.as_str() {
                    "UCX" => (Severity::Error, "the UCX plugin is what vLLM's NixlConnector uses by default: repair the NIXL install (its wheel bundles UCX)".to_string()),
                    // LIBFABRIC: its own finding below (libfabric-plugin-unavailable); others are listed, not flagged
                    _ => continue,
                };
                out.push(finding(sev, "nixl-plugin-unloadable", format!("NIXL plugin {} does not load", p.name), why, fix));
            }
            if t.has_efa() && n.plugins.iter().any(|p| p.name == "LIBFABRIC" && p.loads) {
                out.push(finding(
                    Severity::Info,
                    "nixl-efa-prefers-libfabric",
                    "on EFA, NIXL recommends its LIBFABRIC backend over UCX",
                    format!("{} EFA device(s) in /sys/class/infiniband; NIXL prints the same advice when the UCX backend is created", t.rdma.iter().filter(|d| d.efa).count()),
                    "compare both: kvprobe sweep --backend nixl-ucx,nixl-libfabric (or kvprobe compare --backend nixl-ucx --backend nixl-libfabric); vLLM: kv_connector_extra_config={\"backends\":[\"LIBFABRIC\"]}",
                ));
            }
        }
    }
    let mut carriers = Vec::new();
    if let (Some(n), Some(lf)) = (&f.nixl, &f.libfabric) {
        diagnose_libfabric(f, n, lf, &mut out, &mut carriers);
    }
    if !f.duplicate_libs.is_empty() {
        let list: Vec<String> = f
            .duplicate_libs
            .iter()
            .map(|(fam, files)| {
                format!("{fam}: {}", files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "))
            })
            .collect();
        out.push(finding(
            Severity::Warning,
            "duplicate-libraries",
            "two copies of the same library in one NIXL process",
            format!("after loading NIXL and UCX, this process maps {}", list.join("; ")),
            "NIXL's wheel carries its own rdma-core and libnl (hashed names); a UCX module that links a system library (uct_ib_efa -> libefa.so.1 -> libibverbs.so.1 -> libnl) brings the system's copies too. Seen on a Debian host with ibverbs-providers installed: every NIXL process then died with SIGSEGV at exit (rtnl_tc_unregister in libnl-route). Use one rdma-core: NIXL built against the system's (or the EFA installer's), or no system libefa next to the wheel",
        ));
    }
    if let Some(v) = env(f, "NIXL_LOG_LEVEL") {
        if ["debug", "trace"].contains(&v.to_ascii_lowercase().as_str()) {
            out.push(finding(
                Severity::Warning,
                "nixl-debug-logging",
                "NIXL debug logging is on",
                format!("NIXL_LOG_LEVEL={v}"),
                "unset NIXL_LOG_LEVEL (or set WARN) for measurements and serving: debug logging slows transfers 5-10x",
            ));
        }
    }

    // ---- UCX
    match &f.ucx {
        None => out.push(finding(
            Severity::Error,
            "ucx-missing",
            "UCX cannot be used",
            f.ucx_error.clone().unwrap_or_default(),
            "install NIXL (its wheel bundles UCX) or libucx-cu12, or point --ucx-lib at libucp.so",
        )),
        Some(u) => diagnose_ucx(f, u, &mut out, &mut carriers),
    }

    // ---- environment
    if let Some(v) = env(f, "UCX_LOG_LEVEL") {
        if UCX_LOUD.iter().any(|l| v.to_ascii_lowercase().contains(l)) {
            out.push(finding(
                Severity::Warning,
                "ucx-debug-logging",
                "UCX debug logging is on",
                format!("UCX_LOG_LEVEL={v}"),
                "unset UCX_LOG_LEVEL (or set warn) outside debugging: per-operation logging slows every transfer",
            ));
        }
    }
    if let Some(v) = env(f, "UCX_TLS") {
        let unknown: Vec<&str> = v
            .split(',')
            .map(|e| e.trim().trim_start_matches('^').trim_start_matches('\\'))
            .map(|e| e.split(':').next().unwrap_or(e))
            .filter(|e| !e.is_empty() && !UCX_TLS_NAMES.contains(e))
            .collect();
        if !unknown.is_empty() {
            let efa_hint = if unknown.contains(&"efa") { " There is no 'efa' transport: EFA's is 'srd'." } else { "" };
            out.push(finding(
                Severity::Warning,
                "ucx-tls-unknown",
                "UCX_TLS names transports UCX does not have",
                format!("UCX_TLS={v}: {} unknown", unknown.join(", ")),
                format!("use UCX's names (ucx_info -d / this report's transport list): e.g. srd, rc, dc, tcp, sm, cuda_ipc, cuda_copy.{efa_hint}"),
            ));
        }
    }
    for k in ["UCX_RNDV_THRESH", "UCX_MAX_RMA_RAILS", "UCX_IB_PCI_RELAXED_ORDERING", "UCX_RC_FENCE"] {
        if let Some(v) = env(f, k) {
            out.push(finding(
                Severity::Info,
                "nixl-default-overridden",
                format!("{k} is set, so NIXL's own default for it is not applied"),
                format!("{k}={v} (NIXL's UCX backend only sets what the environment leaves unset)"),
                "intended? kvprobe sweep and your serving stack both honour it",
            ));
        }
    }
    if env(f, "LD_PRELOAD").is_some_and(|v| v.split([':', ' ']).any(crate::ucx::is_libucp)) {
        out.push(finding(
            Severity::Warning,
            "ucx-preloaded",
            "a libucp is preloaded",
            format!("LD_PRELOAD={}", env(f, "LD_PRELOAD").unwrap_or_default()),
            "a preloaded UCX replaces the build NIXL bundles for every process; remove it unless it is the same build",
        ));
    }

    // ---- hardware
    for d in &t.rdma {
        for p in d.ports.iter().filter(|p| !p.state.eq_ignore_ascii_case("ACTIVE")) {
            out.push(finding(
                Severity::Warning,
                "rdma-port-not-active",
                format!(
                    "{} port {} is {}",
                    d.name,
                    p.port,
                    if p.state.is_empty() { "in an unknown state" } else { &p.state }
                ),
                format!("/sys/class/infiniband/{}/ports/{}/state: {}", d.name, p.port, p.state),
                "check the cable/switch port and the subnet manager (ibstat); UCX skips devices whose ports are down",
            ));
        }
    }
    if !nvidia.is_empty() && has_rdma_hw {
        let efa_peermem = t.module("efa_nv_peermem");
        let peermem = t.module("nvidia_peermem") || t.module("nv_peer_mem");
        let kernel = topology::kernel_version(&t.kernel);
        let dmabuf_kernel = kernel.is_some_and(|k| k >= (5, 12));
        let open_modules = t.nvidia_driver.as_deref().map(|d| d.contains("Open Kernel Module"));
        let ready_by_module = if t.has_efa() { efa_peermem || peermem } else { peermem };
        // The CUDA driver's own answer, when it loads: dma-buf export per GPU.
        let cuda_dmabuf: Option<bool> = f
            .cuda
            .as_ref()
            .and_then(|c| c.devices.iter().map(|d| d.dma_buf).collect::<Option<Vec<bool>>>())
            .map(|v| v.iter().all(|&x| x));
        if !ready_by_module {
            let ev = format!(
                "GPUs: {}; peer-memory modules loaded: {}; kernel {}; NVIDIA driver: {}{}",
                nvidia.len(),
                if t.modules.iter().any(|m| m.contains("peer")) { t.modules.join(", ") } else { "none".into() },
                t.kernel,
                t.nvidia_driver.clone().unwrap_or_else(|| "unknown (/proc/driver/nvidia/version missing)".into()),
                match cuda_dmabuf {
                    Some(v) => format!("; CUDA: CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = {}", u8::from(v)),
                    None => String::new(),
                }
            );
            if dmabuf_kernel && open_modules != Some(false) && cuda_dmabuf != Some(false) {
                out.push(finding(
                    Severity::Info,
                    "gpudirect-dmabuf",
                    "GPUDirect RDMA relies on dma-buf (no peer-memory module loaded)",
                    ev,
                    "fine on kernel >= 5.12 with the open NVIDIA kernel modules and UCX >= 1.14; if GPU transfers run at host-staged speed, load nvidia_peermem (or efa_nv_peermem on EFA)",
                ));
            } else {
                out.push(finding(
                    Severity::Warning,
                    "gpudirect-not-ready",
                    "GPUDirect RDMA is not available: GPU memory will be staged through host memory",
                    ev,
                    "load nvidia_peermem (modprobe nvidia_peermem; efa_nv_peermem on EFA), or use a kernel >= 5.12 with the open NVIDIA kernel modules for dma-buf",
                ));
            }
        }
        let nic_nodes: Vec<i32> = t.rdma.iter().filter_map(|d| d.numa).collect();
        if !nic_nodes.is_empty() {
            let far: Vec<String> = nvidia
                .iter()
                .filter(|g| g.numa.is_some_and(|n| !nic_nodes.contains(&n)))
                .map(|g| format!("{} (NUMA {})", g.pci, g.numa.unwrap_or(-1)))
                .collect();
            if !far.is_empty() {
                out.push(finding(
                    Severity::Info,
                    "gpu-without-local-nic",
                    "some GPUs have no RDMA NIC on their NUMA node",
                    format!("{}; RDMA NICs are on NUMA node(s) {:?}", far.join(", "), dedup(nic_nodes)),
                    "traffic of these GPUs crosses the CPU interconnect; pin decode/prefill ranks to GPUs near a NIC or set UCX_NET_DEVICES per rank",
                ));
            }
        }
    }
    let narrow: Vec<String> = t
        .gpus
        .iter()
        .filter_map(|g| {
            let l = g.pcie.as_ref().filter(|l| l.narrowed())?;
            Some(format!("{}: x{} of x{} ({})", g.pci, l.width.unwrap_or(0), l.max_width.unwrap_or(0), l.speed))
        })
        .collect();
    if !narrow.is_empty() {
        out.push(finding(
            Severity::Warning,
            "gpu-pcie-narrowed",
            "a GPU's PCIe link runs on fewer lanes than it supports: host<->GPU staging and GPUDirect traffic get that fraction",
            format!("sysfs current_link_width vs max_link_width: {}", narrow.join("; ")),
            "reseat the card or check the slot/riser and BIOS bifurcation settings; lspci -vv shows LnkSta vs LnkCap",
        ));
    }
    if !nvidia.is_empty() && f.nvml.is_none() && f.root == Path::new("/") {
        out.push(finding(
            Severity::Info,
            "nvml-unavailable",
            "NVIDIA GPUs are present but NVML could not be used: NVLink is unknown",
            f.nvml_error.clone().unwrap_or_default(),
            "install the NVIDIA driver's user-space libraries (libnvidia-ml.so.1)",
        ));
    }

    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));
    let exit_code = out.iter().map(|x| x.severity.exit_code()).max().unwrap_or(0);
    Diagnosis { carriers, findings: out, exit_code }
}

/// NIXL's LIBFABRIC plugin: whether it loads and why not, and which
/// provider its rails would use. Informational, except on EFA hosts, where
/// LIBFABRIC is NIXL's recommended backend and its absence costs bandwidth.
fn diagnose_libfabric(
    f: &Facts,
    n: &NixlFacts,
    lf: &LibfabricFacts,
    out: &mut Vec<Finding>,
    carriers: &mut Vec<Carrier>,
) {
    let efa = f.topology.has_efa();
    let sev = if efa { Severity::Warning } else { Severity::Info };
    let loads = n.plugins.iter().any(|p| p.name == "LIBFABRIC" && p.loads);
    let fi_provider = env(f, "FI_PROVIDER").map(|v| format!("; FI_PROVIDER={v}")).unwrap_or_default();
    if !loads {
        let mut reasons = lf.check.reasons();
        if reasons.is_empty() {
            let nixl_err = n.plugins.iter().find(|p| p.name == "LIBFABRIC").and_then(|p| p.error.clone());
            reasons.push(format!(
                "every file and symbol version it needs is there, but NIXL refused it: {} (NIXL_LOG_LEVEL=DEBUG says why)",
                nixl_err.unwrap_or_default()
            ));
        }
        out.push(finding(
            sev,
            "libfabric-plugin-unavailable",
            "NIXL's LIBFABRIC plugin cannot load here",
            format!("{}: {}", lf.check.plugin.display(), reasons.join("; ")),
            if efa {
                "on EFA, LIBFABRIC (efa provider) is NIXL's recommended backend: install the AWS EFA software (libfabric with the efa provider, /opt/amazon/efa/lib) and the CUDA runtime; docs/SETUP.md, 'Getting a NIXL that can use EFA'"
            } else {
                "only needed for --backend nixl-libfabric (the UCX backend, vLLM's default, is unaffected); each reason above says what to install"
            },
        ));
        carriers.push(Carrier {
            path: "NIXL LIBFABRIC".into(),
            carrier: "unavailable (the plugin cannot load)".into(),
            severity: sev,
        });
        return;
    }
    let Some(r) = &lf.report else {
        carriers.push(Carrier {
            path: "NIXL LIBFABRIC".into(),
            carrier: format!("loads; libfabric not readable ({})", lf.load_error.clone().unwrap_or_default()),
            severity: Severity::Info,
        });
        return;
    };
    // kvprobe reproduces NIXL 1.5's rule; a later NIXL may pick otherwise
    let rule = crate::fabric_plugin::nixl_rule_applies(n.version.as_deref());
    let rule_note = if rule {
        String::new()
    } else {
        format!(
            " (NIXL 1.5's rule; this NIXL is {}: its rule may differ)",
            n.version.as_deref().unwrap_or("of unknown version")
        )
    };
    match &r.nixl_pick {
        None => {
            out.push(finding(
                match (rule, efa) {
                    (false, _) => Severity::Info,
                    (true, true) => Severity::Error,
                    (true, false) => Severity::Warning,
                },
                "libfabric-no-rail-provider",
                "NIXL's LIBFABRIC backend will find no provider for its rails",
                format!(
                    "libfabric {} [{}]: {}{fi_provider}; providers here: {}{rule_note}",
                    r.version,
                    r.library.display(),
                    r.nixl_pick_error.clone().unwrap_or_else(|| "no cxi, efa, tcp or sockets provider offers RDM endpoints with MSG and RMA".into()),
                    provider_names(r)
                ),
                "the plugin only builds rails on cxi, efa, tcp or sockets (FI_PROVIDER must allow one of them; shm is never a rail); creating the backend fails otherwise",
            ));
            carriers.push(Carrier { path: "NIXL LIBFABRIC".into(), carrier: "no rail provider".into(), severity: sev });
        }
        Some(p) => {
            let tcp = p.provider == "tcp" || p.provider == "sockets";
            if tcp && efa {
                out.push(finding(
                    Severity::Warning,
                    "libfabric-efa-unused",
                    "this host has EFA, but NIXL's LIBFABRIC backend would run over TCP",
                    format!(
                        "libfabric {} [{}] offers {}{fi_provider}; NIXL's rule (cxi, efa, tcp, sockets) picks {} on {}{rule_note}",
                        r.version,
                        r.library.display(),
                        provider_names(r),
                        p.provider,
                        p.domains.join(", ")
                    ),
                    "use a libfabric with the efa provider (the AWS EFA installer's, /opt/amazon/efa/lib; KVPROBE_LIBFABRIC_LIB) and leave FI_PROVIDER unset or efa",
                ));
            } else if tcp {
                out.push(finding(
                    Severity::Info,
                    "libfabric-tcp",
                    format!("NIXL's LIBFABRIC backend would run over {} here", p.provider),
                    format!(
                        "libfabric {} [{}]: no cxi or efa provider; NIXL's rule takes the first {} domain, {} ({}); FI_HMEM: {}{rule_note}",
                        r.version,
                        r.library.display(),
                        p.provider,
                        p.domains.first().map_or("?", String::as_str),
                        p.fabrics.first().map_or("?", String::as_str),
                        if p.hmem { "yes" } else { "no (GPU memory would be registered as host memory)" }
                    ),
                    "fine to compare backends; for prefill and decode on one host, UCX's shared memory and cuda_ipc are faster than any libfabric rail",
                ));
            }
            if p.rail_providers.iter().any(|x| x != &p.provider) {
                out.push(finding(
                    Severity::Info,
                    "libfabric-rail-provider-differs",
                    "the plugin's rails would be built on another provider than it picked",
                    format!("picked {}, rails on {}", p.provider, p.rail_providers.join(", ")),
                    "expected with utility providers (ofi_rxm over tcp); the rows' transport says what ran",
                ));
            }
            carriers.push(Carrier {
                path: "NIXL LIBFABRIC".into(),
                carrier: format!(
                    "{} on {} (libfabric {}{})",
                    p.provider,
                    p.domains.join(", "),
                    r.version,
                    if p.hmem { ", FI_HMEM" } else { "" }
                ),
                severity: if tcp { sev } else { Severity::Info },
            });
        }
    }
}

fn provider_names(r: &crate::fabric::FabricReport) -> String {
    let mut v: Vec<&str> = r.providers.iter().map(|p| p.provider.as_str()).collect();
    v.sort_unstable();
    v.dedup();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

fn dedup(mut v: Vec<i32>) -> Vec<i32> {
    v.sort_unstable();
    v.dedup();
    v
}

fn display_opt(p: &Option<PathBuf>, name: &str) -> String {
    p.as_ref().map_or_else(|| format!("plugin {name}"), |p| p.display().to_string())
}

fn diagnose_ucx(f: &Facts, u: &UcxFacts, out: &mut Vec<Finding>, carriers: &mut Vec<Carrier>) {
    let t = &f.topology;
    let nvidia = t.nvidia_gpus().count();
    let hcas: Vec<_> = t.hcas().collect();
    let (maj, min) = version_tuple(&u.version);
    let available: Vec<&str> = u.resources.iter().map(|r| r.transport.as_str()).collect();
    let enabled_tls: Vec<&str> = u.enabled.iter().map(|e| tl_of(e)).collect();
    let module = |n: &str| u.modules.iter().find(|m| m.name == n);
    let tls_note = env(f, "UCX_TLS").map(|v| format!(" (UCX_TLS={v})")).unwrap_or_default();

    // modules that cannot load, and what that costs here
    // (modules this host has no hardware for are listed in the UCX section only)
    for m in u.modules.iter().filter(|m| !m.missing_libs.is_empty()) {
        let needed_here = match m.name.as_str() {
            "uct_ib_efa" => t.has_efa(),
            "uct_ib" | "uct_ib_mlx5" => !hcas.is_empty() || t.has_efa(),
            "uct_cuda" | "ucm_cuda" | "uct_cuda_gdrcopy" => nvidia > 0,
            _ => false,
        };
        if !needed_here {
            continue;
        }
        let what = match m.name.as_str() {
            "uct_ib_efa" => "EFA's srd transport",
            "uct_ib" => "every InfiniBand/RoCE/EFA transport",
            "uct_ib_mlx5" => "the mlx5 transports (rc_mlx5, dc_mlx5, ud_mlx5)",
            "uct_cuda" => "cuda_copy and cuda_ipc (GPU memory)",
            "ucm_cuda" => "CUDA memory hooks",
            "uct_cuda_gdrcopy" => "gdr_copy",
            "uct_ib_mlx5_gda" | "uct_ib_mlx5_gdp" => "the GPU-initiated mlx5 transports",
            _ => "this module's transports",
        };
        out.push(finding(
            Severity::Error,
            "ucx-module-unloadable",
            format!("UCX module {} cannot load: no {what}", m.name),
            format!("{} needs {}, which the loader does not find; UCX skips the module without a word", m.file.display(), m.missing_libs.join(", ")),
            match m.name.as_str() {
                "uct_ib_efa" => "install the EFA user-space stack (rdma-core with libefa, from the AWS EFA installer)",
                "uct_cuda" | "ucm_cuda" | "uct_cuda_gdrcopy" => {
                    "make the NVIDIA driver's libraries (libcuda.so.1, libnvidia-ml.so.1) and the CUDA runtime visible to the loader (ldconfig or LD_LIBRARY_PATH)"
                }
                _ => "install rdma-core (libibverbs, libmlx5)",
            },
        ));
    }
    if let Some(e) = &u.context_error {
        out.push(finding(
            Severity::Error,
            "ucx-context-failed",
            "UCX refuses to start with this environment",
            e.clone(),
            "check UCX_TLS and UCX_NET_DEVICES (run with UCX_LOG_LEVEL=info)",
        ));
    }

    // EFA
    if t.has_efa() {
        if (maj, min) < (1, 20) {
            out.push(finding(
                Severity::Error,
                "ucx-too-old-for-efa",
                format!("UCX {} is too old for EFA", u.version),
                format!("this host has EFA; UCX {} loaded from {}", u.version, u.lib.display()),
                "use UCX >= 1.20 (SRD RMA write, flush and the `ib` alias arrived in 1.20; NIXL >= 1.0 wheels bundle 1.23)",
            ));
        } else if !available.contains(&"srd") {
            let why = match module("uct_ib_efa") {
                None => format!("this UCX build has no uct_ib_efa module in {}", u.modules_dir.display()),
                Some(m) if !m.missing_libs.is_empty() => {
                    format!("uct_ib_efa cannot load (needs {})", m.missing_libs.join(", "))
                }
                Some(_) => "uct_ib_efa is present but reports no srd device (see md_errors in --json)".into(),
            };
            out.push(finding(
                Severity::Error,
                "ucx-no-srd-on-efa",
                "this host has EFA but UCX offers no srd transport: traffic between hosts will go over TCP",
                why,
                "make uct_ib_efa load (libefa from the AWS EFA installer), or use NIXL's LIBFABRIC backend",
            ));
        }
    }
    // InfiniBand / RoCE
    let active_hcas: Vec<&str> = hcas
        .iter()
        .filter(|d| d.ports.iter().any(|p| p.state.eq_ignore_ascii_case("ACTIVE")))
        .map(|d| d.name.as_str())
        .collect();
    let ib_tls = ["rc_mlx5", "rc_verbs", "dc_mlx5", "ud_mlx5", "ud_verbs"];
    if !active_hcas.is_empty() && !available.iter().any(|a| ib_tls.contains(a)) {
        out.push(finding(
            Severity::Error,
            "ucx-no-rdma-on-ib",
            "this host has active RDMA HCAs but UCX offers no rc/dc/ud transport",
            format!("active HCAs: {}; UCX transports: {}", active_hcas.join(", "), dedup_str(&available).join(", ")),
            "make UCX's ib modules load (rdma-core: libibverbs, libmlx5) and check /dev/infiniband permissions",
        ));
    }

    // UCX_TLS / UCX_NET_DEVICES hiding what the hardware has
    let hidden: Vec<&str> = dedup_str(&available)
        .into_iter()
        .filter(|a| (SHM.contains(a) || RDMA.contains(a) || *a == "cuda_ipc") && !enabled_tls.contains(a))
        .collect();
    if !hidden.is_empty() && u.context_error.is_none() {
        out.push(finding(
            Severity::Warning,
            "ucx-tls-excludes-fast",
            "the environment hides fast transports this host's UCX has",
            format!(
                "UCX offers {} but a context made with this environment enables only {}{tls_note}{}",
                hidden.join(", "),
                if u.enabled.is_empty() { "nothing".to_string() } else { u.enabled.join(", ") },
                env(f, "UCX_NET_DEVICES").map(|v| format!(" (UCX_NET_DEVICES={v})")).unwrap_or_default()
            ),
            "drop UCX_TLS (UCX picks the best transport itself) or list the fast ones, e.g. UCX_TLS=sm,cuda_ipc,cuda_copy,srd (or rc,dc on InfiniBand),tcp",
        ));
    }
    if let Some(v) = env(f, "UCX_NET_DEVICES") {
        let known: Vec<String> = u
            .resources
            .iter()
            .map(|r| r.device.split(':').next().unwrap_or(&r.device).to_string())
            .chain(t.rdma.iter().map(|d| d.name.clone()))
            .chain(t.net.iter().map(|n| n.name.clone()))
            .collect();
        let absent: Vec<&str> = v
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty() && *d != "all" && !d.contains('*'))
            .filter(|d| !known.iter().any(|k| k == d.split(':').next().unwrap_or(d)))
            .collect();
        if !absent.is_empty() {
            out.push(finding(
                Severity::Error,
                "ucx-net-devices-absent",
                "UCX_NET_DEVICES names devices this host does not have",
                format!("UCX_NET_DEVICES={v}: no {} here (UCX devices: {})", absent.join(", "), dedup_str(&known.iter().map(String::as_str).collect::<Vec<_>>()).join(", ")),
                "name devices as UCX does (mlx5_0:1, rdmap16s27:1, eth0); without a usable network device UCX falls back or fails to connect",
            ));
        }
    }
    if nvidia > 0
        && has_rdma_hw_of(t)
        && env(f, "UCX_IB_GPU_DIRECT_RDMA")
            .is_some_and(|v| ["no", "n", "0", "off"].contains(&v.to_ascii_lowercase().as_str()))
    {
        out.push(finding(
            Severity::Warning,
            "gpudirect-disabled",
            "GPUDirect RDMA is switched off",
            format!("UCX_IB_GPU_DIRECT_RDMA={}", env(f, "UCX_IB_GPU_DIRECT_RDMA").unwrap_or_default()),
            "unset it: GPU memory is then staged through host memory at a fraction of the NIC rate",
        ));
    }

    // ---- same host, host memory: the probe's exact answer
    let probe_flags: Vec<Flag> = match &u.probe {
        Some(p) => {
            let mut fl = transport::flags(&p.read, true, &u.resources);
            fl.extend(transport::flags(&p.write, true, &u.resources));
            fl.dedup_by(|a, b| a.kind == b.kind);
            fl
        }
        None => Vec::new(),
    };
    for fl in &probe_flags {
        out.push(finding(
            if fl.kind == "software-emulation" { Severity::Error } else { Severity::Warning },
            &format!("same-host-{}", fl.kind),
            format!("same-host transfers: {}", fl.kind.replace('-', " ")),
            format!("doctor's probe (two UCX workers, 1 MiB get and put): {}", fl.evidence),
            fl.fix.clone(),
        ));
    }
    if let (Some(p), Some(e)) = (&u.probe, &u.probe_error) {
        if !p.peer_errors {
            out.push(finding(
                Severity::Error,
                "peer-mode-unreachable",
                "with NIXL's default error handling, UCX cannot connect two processes of this host",
                format!("{e}; without peer error handling the same probe works"),
                "the enabled transports have no peer failure handler (posix/sysv alone, for example): add tcp or cma to UCX_TLS, or create NIXL's UCX backend with ucx_error_handling_mode=none",
            ));
        }
    }
    match &u.probe {
        Some(p) => {
            let am: Vec<&String> =
                p.lanes.iter().filter(|l| !p.read.lanes.contains(l) && !p.write.lanes.contains(l)).collect();
            let am_tcp = am.iter().any(|l| tl_of(l) == "tcp");
            let shm_here = available.iter().any(|a| ["posix", "sysv"].contains(a));
            if am_tcp && shm_here {
                out.push(finding(
                    Severity::Warning,
                    "notifications-over-tcp",
                    "NIXL's notifications between processes of one host will go over TCP",
                    format!("endpoint lanes with peer error handling (NIXL's default): {}", p.lanes.join(", ")),
                    "posix/sysv have no peer failure handler, so UCX moves active messages to TCP: about 5x slower per notification, ms tails. Create the UCX backend with ucx_error_handling_mode=none (kvprobe: --backend-param ucx_error_handling_mode=none) if you can live without peer failure detection",
                ));
            }
            let sev = worst(&probe_flags);
            carriers.push(Carrier {
                path: "same host, host memory".into(),
                carrier: format!(
                    "READ {} ({}), WRITE {} ({})",
                    p.read.lanes.join("+"),
                    p.read.protocol,
                    p.write.lanes.join("+"),
                    p.write.protocol
                ),
                severity: sev,
            });
        }
        None => carriers.push(Carrier {
            path: "same host, host memory".into(),
            carrier: format!("unknown: {}", u.probe_error.clone().unwrap_or_default()),
            severity: Severity::Warning,
        }),
    }
    if u.probe.is_none() && u.context_error.is_none() {
        out.push(finding(
            Severity::Warning,
            "probe-failed",
            "doctor could not move 1 MiB between two UCX workers of this process",
            u.probe_error.clone().unwrap_or_default(),
            "run kvprobe sweep --backend ucx to see the failure with logs",
        ));
    }

    // ---- same host, GPU memory
    if nvidia > 0 {
        let nvlink = f.nvml.as_ref().map(|n| n.gpus.iter().any(|g| !g.nvlinks.is_empty()));
        let get_forced = env(f, "UCX_CUDA_IPC_ENABLE_GET_ZCOPY")
            .is_some_and(|v| ["y", "yes", "1", "on"].contains(&v.to_ascii_lowercase().as_str()));
        let ipc = enabled_tls.contains(&"cuda_ipc");
        let (carrier, sev) = if !ipc {
            let why = if available.contains(&"cuda_ipc") {
                format!("cuda_ipc is hidden by the environment{tls_note}")
            } else {
                "UCX offers no cuda_ipc (see the uct_cuda module above)".to_string()
            };
            out.push(finding(
                Severity::Error,
                "no-cuda-ipc",
                "GPU-to-GPU transfers on this host cannot use cuda_ipc",
                why.clone(),
                "make cuda_ipc available: libcuda.so.1 visible to UCX, and UCX_TLS (if set) listing cuda_ipc,cuda_copy",
            ));
            (format!("not cuda_ipc: {why}"), Severity::Error)
        } else if nvlink == Some(false) && !get_forced {
            out.push(finding(
                Severity::Warning,
                "cuda-ipc-get-disabled",
                "READ of GPU memory over cuda_ipc is disabled here (no NVLink): NIXL READs fall back to a path ~1000x slower",
                format!(
                    "NVML: {} GPU(s), none with an active NVLink link; UCX disables cuda_ipc get zero-copy without NVLink (UCX_LOG_LEVEL=debug: \"cuda-ipc get zcopy disabled as no nvlinks detected\"); measured on an H100 without NVLink: READ 0.44 GB/s vs WRITE 954 GB/s (../shared/reference/measured.md)",
                    f.nvml.as_ref().map_or(0, |n| n.gpus.len())
                ),
                "set UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y for both prefill and decode processes (vLLM's NixlConnector READs), or make the transfer a WRITE",
            ));
            ("cuda_ipc for WRITE; READ falls back (no NVLink)".to_string(), Severity::Warning)
        } else {
            (
                format!(
                    "cuda_ipc{}",
                    match nvlink {
                        Some(true) => " over NVLink",
                        Some(false) => " (GET forced on with UCX_CUDA_IPC_ENABLE_GET_ZCOPY)",
                        None => " (NVLink unknown: no NVML)",
                    }
                ),
                Severity::Info,
            )
        };
        carriers.push(Carrier { path: "same host, GPU memory".into(), carrier, severity: sev });
    }

    // ---- across hosts
    let net: Vec<&String> = u.enabled.iter().filter(|e| RDMA.contains(&tl_of(e))).collect();
    let tcp: Vec<&String> = u.enabled.iter().filter(|e| tl_of(e) == "tcp" && dev_of(e) != "lo").collect();
    let (carrier, sev) = if u.context_error.is_some() {
        ("unknown: UCX does not start with this environment".to_string(), Severity::Error)
    } else if !net.is_empty() {
        (net.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "), Severity::Info)
    } else if !tcp.is_empty() {
        let sev = if has_rdma_hw_of(t) { Severity::Error } else { Severity::Warning };
        if !has_rdma_hw_of(t) {
            out.push(finding(
                Severity::Warning,
                "tcp-only",
                "between hosts, KV traffic can only go over TCP",
                format!(
                    "no EFA or InfiniBand/RoCE device in /sys/class/infiniband; NICs: {}",
                    if t.net.is_empty() {
                        "none".to_string()
                    } else {
                        t.net.iter().map(|n| format!("{} {}", n.name, n.speed_mbps.map_or("speed ?".into(), |s| format!("{} Gb/s", s / 1000)))).collect::<Vec<_>>().join(", ")
                    }
                ),
                "fine for one node (pack); for prefill and decode on different hosts expect ~1-3 GB/s and TTFT in seconds: use hosts with EFA or InfiniBand",
            ));
        }
        (tcp.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "), sev)
    } else {
        out.push(finding(
            Severity::Error,
            "no-network-transport",
            "no network transport is enabled: this host cannot exchange KV data with another host",
            format!("enabled: {}{tls_note}", u.enabled.join(", ")),
            "add a network transport to UCX_TLS (srd on EFA, rc/dc on InfiniBand, tcp as the fallback) and check UCX_NET_DEVICES",
        ));
        ("nothing: no network transport enabled".to_string(), Severity::Error)
    };
    carriers.push(Carrier { path: "across hosts".into(), carrier, severity: sev });
}

fn has_rdma_hw_of(t: &Topology) -> bool {
    t.has_efa() || t.hcas().next().is_some()
}

fn dedup_str<'a>(v: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for s in v {
        if !out.contains(s) {
            out.push(s);
        }
    }
    out
}

fn worst(flags: &[Flag]) -> Severity {
    if flags.iter().any(|f| f.kind == "software-emulation") {
        Severity::Error
    } else if flags.is_empty() {
        Severity::Info
    } else {
        Severity::Warning
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_families_ignore_wheel_hashes() {
        assert_eq!(lib_family("libibverbs-1de1263b.so.1.14.48.0"), Some("libibverbs"));
        assert_eq!(lib_family("libibverbs.so.1"), Some("libibverbs"));
        assert_eq!(lib_family("libnl-route-3-3ad497a3.so.200.26.0"), Some("libnl-route-3"));
        assert_eq!(lib_family("libnl-route-3.so.200"), Some("libnl-route-3"));
        assert_eq!(lib_family("kvprobe"), None);
        assert_eq!(lib_family("ld-linux-x86-64.so.2"), None);
    }

    #[test]
    fn two_files_of_one_family_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("libnl-route-3-3ad497a3.so.200.26.0");
        let b = tmp.path().join("libnl-route-3.so.200");
        let c = tmp.path().join("libucp.so.0");
        for p in [&a, &b, &c] {
            std::fs::write(p, b"").unwrap();
        }
        let line = |p: &Path| format!("7f00-7f01 r-xp 00000000 08:01 1234 {}\n", p.display());
        let maps = [line(&a), line(&a), line(&b), line(&c), "7f02-7f03 rw-p 00000000 00:00 0 [heap]\n".into()].concat();
        let d = duplicate_libs(&maps);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].0, "libnl-route-3");
        assert_eq!(d[0].1.len(), 2);
        assert!(duplicate_libs(&[line(&a), line(&c)].concat()).is_empty());
    }
}
