//! NIXL's LIBFABRIC plugin: whether it can load here and why not, which
//! libfabric it gets, and what carried a LIBFABRIC row.
//!
//! - [`check_plugin`] answers "does `libplugin_LIBFABRIC.so` load, and if not,
//!   exactly why" without loading anything: every library it needs, found
//!   the way the dynamic loader would (transitively), and the symbol versions
//!   it needs from each (NIXL 1.5.1's plugin needs `fi_getinfo@FABRIC_1.10`,
//!   which libfabric 2.5.1 and older do not define).
//! - [`choose_libfabric`] picks the libfabric: `KVPROBE_LIBFABRIC_LIB`, what
//!   the plugin's loader path finds, then the AWS EFA installer's folder.
//!   When the choice is not what the loader would find by itself, the helper
//!   processes [`preload`] it, so the plugin binds to it (the loader matches
//!   an already loaded library by its SONAME).
//! - [`parse_log`] reads what the plugin logs at `NIXL_LOG_LEVEL=INFO` (the
//!   provider of its rails, their fabric, FI_HMEM), and [`transport_of`] turns
//!   it into the row's transport, as UCX_PROTO_INFO does for UCX rows.
//!
//! The provider rule NIXL 1.5 applies (`src/utils/libfabric/libfabric_common.cpp`,
//! `getAvailableNetworkDevices`): providers offering RDM endpoints with
//! MSG|RMA, picked in the order cxi, efa, tcp, sockets; cxi/efa use every
//! domain, tcp/sockets only the first one listed. `shm` is never a rail.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::elf;
use crate::report::schema::{Flag, Transport};

/// The plugin's library name.
pub const LIBFABRIC: &str = "libfabric.so.1";

/// Where the AWS EFA installer puts its libfabric (with the efa provider).
pub const EFA_DIRS: &[&str] = &["/opt/amazon/efa/lib", "/opt/amazon/efa/lib64"];

/// A library the plugin (or one of its libraries) needs that the loader
/// would not find.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingLib {
    /// The DT_NEEDED name (`libcuda.so.1`).
    pub name: String,
    /// The file that needs it.
    pub needed_by: String,
    /// What provides it, and how to get it.
    pub fix: String,
}

/// Symbol versions a library needs from a dependency that the file found
/// does not define (the loader refuses: "version `FABRIC_1.10' not found").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionGap {
    /// The dependency (`libfabric.so.1`).
    pub name: String,
    /// The file found for it.
    pub path: PathBuf,
    /// The file that needs the versions.
    pub needed_by: String,
    /// The versions it lacks (`FABRIC_1.10`).
    pub missing: Vec<String>,
    /// The newest version of the same family it does define (`FABRIC_1.8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<String>,
}

/// Which libfabric the plugin gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibfabricChoice {
    /// The file (None: none found).
    pub path: Option<PathBuf>,
    /// How: `KVPROBE_LIBFABRIC_LIB`, `the plugin's loader path`, `/opt/amazon/efa/lib`.
    pub how: String,
    /// True when the loader would not find this file by itself, so kvprobe's
    /// helpers load it before the plugin.
    pub preload: bool,
    /// Every place tried, with what was there.
    pub searched: Vec<String>,
}

/// Whether the plugin can load, and what is in the way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginCheck {
    /// The plugin file.
    pub plugin: PathBuf,
    /// Libraries the loader would not find (transitively).
    pub missing: Vec<MissingLib>,
    /// Libraries found but too old for what links them.
    pub version_gaps: Vec<VersionGap>,
    /// The libfabric it gets.
    pub libfabric: LibfabricChoice,
}

impl PluginCheck {
    /// Nothing in the way (the loader would succeed, as far as files and
    /// versions tell).
    pub fn loadable(&self) -> bool {
        self.missing.is_empty() && self.version_gaps.is_empty()
    }

    /// One sentence per obstacle, with its fix.
    pub fn reasons(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .missing
            .iter()
            .map(|m| format!("{} not found (needed by {}): {}", m.name, m.needed_by, m.fix))
            .collect();
        out.extend(self.version_gaps.iter().map(|g| {
            format!(
                "{} at {} lacks symbol version{} {} that {} needs{}: {}",
                g.name,
                g.path.display(),
                if g.missing.len() > 1 { "s" } else { "" },
                g.missing.join(", "),
                g.needed_by,
                g.newest.as_ref().map(|n| format!(" (it defines up to {n})")).unwrap_or_default(),
                version_fix(&g.name, &g.missing)
            )
        }));
        out
    }
}

/// How to get a library the LIBFABRIC plugin needs.
pub fn fix_for(name: &str) -> String {
    let base = name.split(".so").next().unwrap_or(name);
    match base {
        "libcuda" => "the NVIDIA driver's user-space library: the plugin links it directly, so it cannot load on a host without an NVIDIA driver (expected on a CPU-only machine); in containers, mount the driver (NVIDIA container toolkit)".into(),
        "libcudart" => format!(
            "the CUDA runtime: install the CUDA toolkit, or `pip install nvidia-cuda-runtime-cu{}` and put its nvidia/cuda_runtime/lib on LD_LIBRARY_PATH",
            name.rsplit('.').next().unwrap_or("12")
        ),
        "libfabric" => "libfabric (>= the version the plugin was built with): the AWS EFA installer puts one with the efa provider in /opt/amazon/efa/lib (kvprobe looks there), or point KVPROBE_LIBFABRIC_LIB at a libfabric.so.1".into(),
        "libhwloc" => "hwloc 2.x: apt-get install libhwloc15 (dnf install hwloc-libs)".into(),
        "libnuma" => "apt-get install libnuma1".into(),
        "libibverbs" | "librdmacm" | "libefa" => "rdma-core: apt-get install ibverbs-providers librdmacm1 (the AWS EFA installer brings its own)".into(),
        "libpsm2" => "apt-get install libpsm2-2 (a dependency of Debian's libfabric)".into(),
        _ => format!("install the package that provides {name}, or put its folder on LD_LIBRARY_PATH"),
    }
}

fn version_fix(name: &str, missing: &[String]) -> String {
    if name.starts_with("libfabric") {
        format!(
            "use a newer libfabric (read off the files: Debian 12's 1.17.0 defines versions up to FABRIC_1.6, Debian 13's 2.1.0 up to FABRIC_1.8, the 2.5.1 in PyPI's mpich 5.0.2 wheel up to FABRIC_1.9), e.g. the AWS EFA installer's, via KVPROBE_LIBFABRIC_LIB; or a NIXL whose plugin needs no more than your libfabric has (this one was linked against {}; NIXL 1.5.0's wheels need FABRIC_1.7)",
            missing.join(", ")
        )
    } else {
        format!("install a newer {name}")
    }
}

/// Picks the libfabric for `plugin`: `KVPROBE_LIBFABRIC_LIB` (a file or a
/// folder holding libfabric.so.1), then what the loader finds from the
/// plugin (its RPATH, LD_LIBRARY_PATH, the cache, the default folders), then
/// the AWS EFA installer's folders. A found library lacking symbol versions
/// the plugin needs is passed over for a later one that has them; when none
/// has, the first found is reported (with its gap, by [`check_plugin`]).
pub fn choose_libfabric(plugin: &Path) -> LibfabricChoice {
    choose_libfabric_from(
        plugin,
        std::env::var_os("KVPROBE_LIBFABRIC_LIB").filter(|v| !v.is_empty()).map(PathBuf::from),
    )
}

/// [`choose_libfabric`] with the value of `KVPROBE_LIBFABRIC_LIB` given.
pub fn choose_libfabric_from(plugin: &Path, explicit: Option<PathBuf>) -> LibfabricChoice {
    let mut c = LibfabricChoice::default();
    if let Some(p) = explicit {
        let file = if p.is_dir() { p.join(LIBFABRIC) } else { p };
        let ok = file.is_file();
        c.searched.push(format!(
            "KVPROBE_LIBFABRIC_LIB {}: {}",
            file.display(),
            if ok { "found" } else { "does not exist" }
        ));
        if ok {
            c.preload = elf::read_dynamic(plugin)
                .ok()
                .and_then(|d| elf::resolve(LIBFABRIC, plugin, &d))
                .is_none_or(|l| !same_file(&l, &file));
            c.path = Some(file);
            c.how = "KVPROBE_LIBFABRIC_LIB".into();
        } else {
            c.how = "KVPROBE_LIBFABRIC_LIB (missing)".into();
        }
        // an explicit choice never falls through to another libfabric
        return c;
    }
    let mut candidates: Vec<(PathBuf, String, bool)> = Vec::new();
    match elf::read_dynamic(plugin) {
        Ok(d) => match elf::resolve(LIBFABRIC, plugin, &d) {
            Some(p) => {
                c.searched.push(format!("the plugin's loader path: {}", p.display()));
                candidates.push((p, "the plugin's loader path".into(), false));
            }
            None => c.searched.push(
                "the plugin's loader path (its RPATH, LD_LIBRARY_PATH, ld.so.cache, /lib, /usr/lib): not found".into(),
            ),
        },
        Err(e) => c.searched.push(format!("the plugin's loader path: cannot read the plugin ({e})")),
    }
    for d in EFA_DIRS {
        let p = Path::new(d).join(LIBFABRIC);
        if p.is_file() {
            c.searched.push(format!("{d}: {}", p.display()));
            if !candidates.iter().any(|(q, _, _)| same_file(q, &p)) {
                candidates.push((p, (*d).to_string(), true));
            }
        } else {
            c.searched.push(format!("{d}: none"));
        }
    }
    let needs = needed_versions(plugin, LIBFABRIC);
    let fits = |p: &Path| needs.is_empty() || elf::missing_versions(plugin, LIBFABRIC, p).is_ok_and(|m| m.is_empty());
    let pick = candidates.iter().find(|(p, _, _)| fits(p)).or(candidates.first()).cloned();
    if let Some((p, how, preload)) = pick {
        c.path = Some(p);
        c.how = how;
        c.preload = preload;
    } else {
        c.how = "not found".into();
    }
    c
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The symbol versions `obj` needs from its dependency `soname`.
fn needed_versions(obj: &Path, soname: &str) -> Vec<String> {
    elf::read_dynamic(obj)
        .ok()
        .and_then(|d| d.version_needs.into_iter().find(|(f, _)| f == soname).map(|(_, v)| v))
        .unwrap_or_default()
}

/// Checks that `plugin` would load: every library it needs, transitively,
/// resolved as the loader would (with `libfabric.so.1` bound to [`choose_libfabric`]'s
/// pick), and every symbol version it needs defined by what was found.
/// Reads files only; loads nothing.
pub fn check_plugin(plugin: &Path) -> PluginCheck {
    let libfabric = choose_libfabric(plugin);
    let mut check = PluginCheck { plugin: plugin.to_path_buf(), libfabric, ..PluginCheck::default() };
    // an explicit libfabric that is not there is never replaced by the loader's
    let explicit_missing = check.libfabric.path.is_none() && check.libfabric.how.starts_with("KVPROBE_LIBFABRIC_LIB");
    if explicit_missing {
        check.missing.push(MissingLib {
            name: LIBFABRIC.into(),
            needed_by: "KVPROBE_LIBFABRIC_LIB".into(),
            fix: format!(
                "KVPROBE_LIBFABRIC_LIB names a file that does not exist ({}); point it at a libfabric.so.1 or a folder holding one, or unset it",
                check.libfabric.searched.first().map_or("", String::as_str)
            ),
        });
    }
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut queue: Vec<PathBuf> = vec![plugin.to_path_buf()];
    // a bounded walk: a plugin's closure is a few dozen files
    while let Some(obj) = queue.pop() {
        if seen.len() > 256 {
            break;
        }
        if seen.iter().any(|s| same_file(s, &obj)) {
            continue;
        }
        seen.push(obj.clone());
        let Ok(d) = elf::read_dynamic(&obj) else { continue };
        let who = obj.file_name().map_or_else(|| obj.display().to_string(), |f| f.to_string_lossy().into_owned());
        for name in &d.needed {
            let found = match (&check.libfabric.path, name.as_str()) {
                (Some(p), LIBFABRIC) => Some(p.clone()),
                (None, LIBFABRIC) if explicit_missing => continue,
                _ => elf::resolve(name, &obj, &d),
            };
            match found {
                Some(p) => {
                    if let Ok(missing) = elf::missing_versions(&obj, name, &p) {
                        if !missing.is_empty() && !check.version_gaps.iter().any(|g| &g.name == name) {
                            check.version_gaps.push(VersionGap {
                                name: name.clone(),
                                newest: newest_version(&p, &missing),
                                path: p.clone(),
                                needed_by: who.clone(),
                                missing,
                            });
                        }
                    }
                    queue.push(p);
                }
                None => {
                    if !check.missing.iter().any(|m| &m.name == name) {
                        check.missing.push(MissingLib {
                            name: name.clone(),
                            needed_by: who.clone(),
                            fix: fix_for(name),
                        });
                    }
                }
            }
        }
    }
    check
}

/// The newest version `lib` defines in the family of `like` (`FABRIC_1.8`
/// for `FABRIC_1.10`), by numeric comparison.
fn newest_version(lib: &Path, like: &[String]) -> Option<String> {
    let family = like.first()?.split('_').next()?.to_string();
    let defs = elf::read_dynamic(lib).ok()?.version_defs;
    defs.into_iter().filter(|v| v.starts_with(&format!("{family}_"))).max_by_key(|v| version_key(v))
}

fn version_key(v: &str) -> Vec<u64> {
    v.rsplit('_').next().unwrap_or("").split('.').map(|x| x.parse().unwrap_or(0)).collect()
}

/// Loads `path` for the whole process (RTLD_NOW | RTLD_GLOBAL) and keeps it,
/// so that the plugin's `libfabric.so.1` binds to it. Call before NIXL loads
/// the LIBFABRIC plugin.
pub fn preload(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| "path holds a NUL byte".to_string())?;
    // SAFETY: `c` is a valid NUL-terminated path; dlopen runs the library's
    // constructors, as loading the plugin would. The handle is never closed:
    // the library stays for the life of the process, which is the point.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if h.is_null() {
        // SAFETY: dlerror returns a thread-local message or NULL.
        let e = unsafe { libc::dlerror() };
        let msg = if e.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: a non-NULL dlerror result is a NUL-terminated string.
            unsafe { std::ffi::CStr::from_ptr(e) }.to_string_lossy().into_owned()
        };
        return Err(format!("cannot load {}: {msg}", path.display()));
    }
    Ok(())
}

/// In a helper process, before the LIBFABRIC backend is created: loads the
/// chosen libfabric when the loader would not find it by itself. Returns the
/// choice.
pub fn prepare(plugin_dir: Option<&Path>) -> Result<LibfabricChoice, String> {
    let Some(dir) = plugin_dir else { return Ok(LibfabricChoice::default()) };
    let plugin = dir.join("libplugin_LIBFABRIC.so");
    if !plugin.is_file() {
        return Ok(LibfabricChoice::default());
    }
    let c = choose_libfabric(&plugin);
    if let (true, Some(p)) = (c.preload, &c.path) {
        preload(p)?;
    }
    Ok(c)
}

/// The libfabric a LIBFABRIC backend bound to, as its own process sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibfabricFacts {
    /// The libfabric mapped into the process (None: not found in /proc/self/maps).
    pub lib: Option<PathBuf>,
    /// How kvprobe chose it ([`LibfabricChoice::how`]).
    pub how: String,
    /// `fi_version()`: the API version it implements (`2.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The provider NIXL's rule picks there, in this environment (FI_PROVIDER applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Its domains the plugin makes rails of (tcp/sockets: the first only).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Their fabric names.
    #[serde(default)]
    pub fabrics: Vec<String>,
    /// Whether that provider offers FI_HMEM (GPU memory) at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmem: Option<bool>,
    /// What could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// In a process whose LIBFABRIC backend exists: which libfabric is mapped,
/// its version, and the rails NIXL's rule picks through it.
pub fn facts_in_process(choice: &LibfabricChoice) -> LibfabricFacts {
    let lib = elf::mapped(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with("libfabric")))
        .or_else(|| choice.path.clone());
    let mut f = LibfabricFacts { lib: lib.clone(), how: choice.how.clone(), ..LibfabricFacts::default() };
    let Some(lib) = lib else {
        f.error = Some("no libfabric mapped in this process".into());
        return f;
    };
    match crate::fabric::Fabric::open(&lib) {
        Ok(fab) => {
            let (major, minor) = fab.version();
            f.version = Some(format!("{major}.{minor}"));
            match fab.nixl_rail_pick() {
                Ok(Some(p)) => {
                    f.provider = Some(p.provider);
                    f.domains = p.domains;
                    f.fabrics = p.fabrics;
                    f.hmem = Some(p.hmem);
                }
                Ok(None) => f.error = Some("no cxi, efa, tcp or sockets provider offers RDM endpoints with RMA".into()),
                Err(e) => f.error = Some(e.to_string()),
            }
        }
        Err(e) => f.error = Some(e.to_string()),
    }
    f
}

/// [`prepare`] for a backend about to be created in a helper process: does
/// something only for `LIBFABRIC`, with the plugin folder of `NIXL_PLUGIN_DIR`
/// (set for every helper by the command that starts it).
pub fn prepare_backend(plugin: &str) -> Result<Option<LibfabricChoice>, String> {
    if plugin != "LIBFABRIC" {
        return Ok(None);
    }
    let dir = std::env::var_os("NIXL_PLUGIN_DIR").map(PathBuf::from);
    prepare(dir.as_deref()).map(Some)
}

/// `kvprobe __fabric-report LIB` in a child process (see cmd/fabric_report.rs
/// for why not in this one): the report, or why it could not be made.
pub fn report_in_child(lib: &Path) -> (Option<crate::fabric::FabricReport>, Option<String>) {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return (None, Some(format!("own executable: {e}"))),
    };
    use std::io::Read;
    use std::process::Stdio;
    let child = std::process::Command::new(exe)
        .arg("__fabric-report")
        .arg(lib)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (None, Some(format!("cannot run kvprobe __fabric-report: {e}"))),
    };
    // both pipes drained while it runs, so a long provider list cannot block it
    let drain = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(p) = p {
                let _ = p.take(4 << 20).read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() > std::time::Duration::from_secs(30) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    // a report printed before the child died (a provider's destructor, say) still counts
    if let Some(r) = out.lines().rev().find_map(|l| serde_json::from_str(l).ok()) {
        return (Some(r), None);
    }
    match status {
        Some(s) if s.success() => (None, Some(format!("no report from kvprobe __fabric-report {}", lib.display()))),
        Some(s) => {
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            (None, Some(format!("loading it failed ({s}): {last}")))
        }
        None => (None, Some("kvprobe __fabric-report did not finish within 30 s".into())),
    }
}

/// Why creating a `plugin` backend failed in a helper, when kvprobe can tell
/// (LIBFABRIC: the plugin's missing libraries and symbol versions, from the
/// `NIXL_PLUGIN_DIR` of this process). On the far host of `kvprobe serve`
/// this names what is missing there.
pub fn backend_failure_hint(plugin: &str) -> Option<String> {
    if plugin != "LIBFABRIC" {
        return None;
    }
    let dir = std::env::var_os("NIXL_PLUGIN_DIR").map(PathBuf::from)?;
    let c = check_plugin(&dir.join("libplugin_LIBFABRIC.so"));
    (!c.loadable()).then(|| {
        format!("NIXL's LIBFABRIC plugin cannot load on {}: {}", crate::hostinfo::hostname(), c.reasons().join("; "))
    })
}

/// The environment that steers libfabric and NIXL's plugin: `FI_*` and
/// `NIXL_LIBFABRIC_*` (each backend parameter can be overridden that way),
/// plus `NIXL_DISABLE_DMABUF`.
pub fn fi_env() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("FI_") || k.starts_with("NIXL_LIBFABRIC_") || k == "NIXL_DISABLE_DMABUF")
        .collect();
    v.sort();
    v
}

/// What the plugin logged about its rails (`NIXL_LOG_LEVEL=INFO`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLog {
    /// Provider of the rails (`Created N rails using provider=tcp`).
    pub provider: String,
    /// How many rails.
    pub rails: u32,
    /// Fabric names of the rails (`192.0.2.0/24` for tcp, `efa` for EFA).
    pub fabrics: Vec<String>,
    /// Whether the rails' provider has FI_HMEM (None: not logged).
    pub hmem: Option<bool>,
    /// The plugin registered GPU memory as host memory (no FI_HMEM).
    pub vram_as_host: bool,
    /// The lines these facts come from (a few).
    pub lines: Vec<String>,
}

/// Reads the plugin's INFO lines out of a helper's log. None when the log
/// holds no rail creation (the plugin never ran, or logging was off).
pub fn parse_log(log: &str) -> Option<PluginLog> {
    let mut p = PluginLog::default();
    let keep = |p: &mut PluginLog, l: &str| {
        let msg = l.split_once("] ").map_or(l, |(_, m)| m).trim().to_string();
        if p.lines.len() < 12 && !p.lines.contains(&msg) {
            p.lines.push(msg);
        }
    };
    for l in log.lines() {
        if let Some(rest) = l.split("Created ").nth(1).filter(|r| r.contains("rails using provider=")) {
            p.rails = rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
            p.provider = rest.rsplit("provider=").next().unwrap_or("").trim().to_string();
            keep(&mut p, l);
        } else if let Some(f) = l.split("fabric_attr->name ").nth(1) {
            let f = f.trim().to_string();
            if !f.is_empty() && !p.fabrics.contains(&f) {
                p.fabrics.push(f);
            }
            keep(&mut p, l);
        } else if l.contains("Using provider with FI_HMEM support") {
            p.hmem = Some(true);
            keep(&mut p, l);
        } else if l.contains("Using provider without FI_HMEM support") {
            if p.hmem.is_none() {
                p.hmem = Some(false);
            }
            keep(&mut p, l);
        } else if l.contains("provider does not support FI_HMEM - falling back to system memory registration") {
            p.vram_as_host = true;
            keep(&mut p, l);
        }
    }
    (!p.provider.is_empty()).then_some(p)
}

/// Whether NIXL 1.5's rail rule (the one kvprobe reproduces) is the rule of
/// NIXL `version`: 1.5.x and earlier; later releases may pick other providers
/// (unknown versions: not assumed).
pub fn nixl_rule_applies(version: Option<&str>) -> bool {
    let Some(v) = version else { return false };
    let mut it = v.split(['.', '-', '+']).map(|x| x.parse::<u32>().ok());
    matches!((it.next().flatten(), it.next().flatten()), (Some(0), Some(_)) | (Some(1), Some(0..=5)))
}

/// What a failed LIBFABRIC setup means, from the lines the plugin logged
/// (a helper's log): None when nothing known is there.
pub fn explain_failure(log: &str) -> Option<String> {
    if log.contains("Memory type 1 is not supported by libfabric backend") {
        return Some(
            "NIXL's LIBFABRIC plugin refused GPU memory (its log: \"Memory type 1 is not supported by libfabric backend\"): it registers VRAM only on rails whose provider offers FI_HMEM, and this libfabric's rail provider does not (`kvprobe doctor`: \"no FI_HMEM\"; efa offers it with GPUDirect RDMA, tcp only in a libfabric built with CUDA support). Measure GPU memory with nixl-ucx (cuda_ipc on one host), or LIBFABRIC on an EFA host".into(),
        );
    }
    if log.contains("No network devices found with any provider")
        || log.contains("Topology discovery failed - no suitable network providers found")
    {
        return Some(
            "NIXL's LIBFABRIC plugin found no provider for its rails (its log: \"No network devices found with any provider\"): it uses only cxi, efa, tcp or sockets; check FI_PROVIDER and `kvprobe doctor`".into(),
        );
    }
    None
}

/// The lane of a provider's domain, in the `transport/device` form of UCX
/// lanes: `tcp/eth0`; EFA domains (`rdmap16s27-rdm`) name their device.
pub fn lane(provider: &str, domain: &str) -> String {
    let dev = domain.strip_suffix("-rdm").or_else(|| domain.strip_suffix("-dgrm")).unwrap_or(domain);
    format!("{provider}/{dev}")
}

/// The transport of a LIBFABRIC row: the plugin's own log says which
/// provider carried it (and whether GPU memory went through FI_HMEM);
/// `domains` (the domains NIXL's rule picks, from the initiator's libfabric)
/// name the devices. `vram`: a side of the row is GPU memory. `intra`: both
/// processes on one host.
pub fn transport_of(log: &PluginLog, domains: &[String], vram: bool, intra: bool) -> Transport {
    let lanes: Vec<String> = if domains.is_empty() {
        log.fabrics.iter().map(|f| format!("{}/{f}", log.provider)).collect()
    } else {
        domains.iter().map(|d| lane(&log.provider, d)).collect()
    };
    let lanes = if lanes.is_empty() { vec![log.provider.clone()] } else { lanes };
    let mut flags = Vec::new();
    let tcp = matches!(log.provider.as_str(), "tcp" | "sockets");
    if vram && (log.vram_as_host || log.hmem == Some(false)) {
        flags.push(Flag {
            kind: "libfabric-no-hmem".into(),
            evidence: format!(
                "GPU memory on a {} rail without FI_HMEM: the plugin registered it as host memory{}",
                log.provider,
                if log.vram_as_host { " (its log: \"falling back to system memory registration\")" } else { "" }
            ),
            fix: "a provider with FI_HMEM (efa with GPUDirect RDMA; a libfabric built with CUDA support) moves GPU memory; over tcp the provider would have to read GPU memory with the CPU: check the data column, and expect crashes or corrupt blocks".into(),
        });
    }
    if tcp {
        flags.push(Flag {
            kind: "libfabric-tcp".into(),
            evidence: format!(
                "NIXL's LIBFABRIC plugin found no cxi or efa provider and fell back to {} ({} rail{} on {})",
                log.provider,
                log.rails,
                if log.rails == 1 { "" } else { "s" },
                lanes.join("+")
            ),
            fix: if intra {
                "between processes of one host LIBFABRIC has no shared-memory or CUDA IPC path: use the UCX backend there (cma/posix, cuda_ipc)".into()
            } else {
                "fine for a test; a cluster needs EFA (the efa provider: AWS EFA installer, FI_PROVIDER unset or efa)".into()
            },
        });
    }
    Transport {
        source: "NIXL log (LIBFABRIC plugin, NIXL_LOG_LEVEL=INFO)".into(),
        protocol: match (log.hmem, vram) {
            (Some(true), true) => "RMA (FI_HMEM)".into(),
            (_, true) if log.vram_as_host || log.hmem == Some(false) => "RMA (GPU memory as host memory)".into(),
            _ => "RMA".into(),
        },
        lanes,
        notif_lanes: Vec::new(),
        endpoint_lanes: Vec::new(),
        count: None,
        detail: log.lines.join(" | "),
        flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
I1206 06:50:20.104232    7343 libfabric_topology.cpp:144] Discovered 1 tcp devices (TCP fallback)
I1206 06:50:20.104855    7343 libfabric_rail.cpp:466] No provider found with FI_HMEM capability for rail 0, retrying without FI_HMEM
I1206 06:50:20.105038    7343 libfabric_rail.cpp:480] Using provider without FI_HMEM support for rail 0
I1206 06:50:20.105056    7343 libfabric_rail.cpp:493] fabric_attr->name 192.0.2.0/24
I1206 06:50:20.112637    7343 libfabric_rail_manager.cpp:232] Created 1 rails using provider=tcp
I1206 06:50:20.112686    7343 libfabric_backend.cpp:473] Initializing Libfabric Backend
";

    #[test]
    fn reads_the_plugins_rail_lines() {
        let p = parse_log(LOG).unwrap();
        assert_eq!(p.provider, "tcp");
        assert_eq!(p.rails, 1);
        assert_eq!(p.fabrics, vec!["192.0.2.0/24".to_string()]);
        assert_eq!(p.hmem, Some(false));
        assert!(!p.vram_as_host);
        assert!(p.lines.iter().any(|l| l == "Created 1 rails using provider=tcp"), "{:?}", p.lines);
        assert!(parse_log("I1206 nothing about rails\n").is_none());
        assert!(parse_log("").is_none());
    }

    #[test]
    fn gpu_memory_without_hmem_is_flagged() {
        let mut p = parse_log(LOG).unwrap();
        let t = transport_of(&p, &["eth0".into()], false, true);
        assert_eq!(t.lanes, vec!["tcp/eth0".to_string()]);
        assert_eq!(t.protocol, "RMA");
        assert!(t.flags.iter().any(|f| f.kind == "libfabric-tcp"));
        assert!(!t.flags.iter().any(|f| f.kind == "libfabric-no-hmem"), "host memory needs no FI_HMEM");
        p.vram_as_host = true;
        let t = transport_of(&p, &[], true, false);
        assert_eq!(t.lanes, vec!["tcp/192.0.2.0/24".to_string()], "fabric names when no domain is known");
        assert!(t.flags.iter().any(|f| f.kind == "libfabric-no-hmem"));
        assert_eq!(t.protocol, "RMA (GPU memory as host memory)");
        // efa rails: RDMA lanes named by their device, no tcp flag
        let efa = PluginLog { provider: "efa".into(), rails: 2, hmem: Some(true), ..PluginLog::default() };
        let t = transport_of(&efa, &["rdmap16s27-rdm".into(), "rdmap32s27-rdm".into()], true, false);
        assert_eq!(t.lanes, vec!["efa/rdmap16s27".to_string(), "efa/rdmap32s27".to_string()]);
        assert!(t.flags.is_empty(), "{:?}", t.flags);
        assert_eq!(t.protocol, "RMA (FI_HMEM)");
    }

    #[test]
    fn the_rail_rule_is_nixl_1_5s() {
        assert!(nixl_rule_applies(Some("1.5.1")));
        assert!(nixl_rule_applies(Some("1.5.0")));
        assert!(nixl_rule_applies(Some("0.8.0")));
        assert!(!nixl_rule_applies(Some("1.6.0")));
        assert!(!nixl_rule_applies(Some("2.0")));
        assert!(!nixl_rule_applies(None));
        assert!(!nixl_rule_applies(Some("main")));
    }

    #[test]
    fn known_plugin_failures_are_explained() {
        let l = "E1206 07:30:14.451785     677 libfabric_backend.cpp:954] Memory type 1 is not supported by libfabric backend.";
        assert!(explain_failure(l).unwrap().contains("FI_HMEM"));
        assert!(
            explain_failure("E1206 x] No network devices found with any provider").unwrap().contains("FI_PROVIDER")
        );
        assert!(explain_failure(LOG).is_none());
    }

    #[test]
    fn fixes_name_the_package() {
        assert!(fix_for("libcuda.so.1").contains("NVIDIA driver"));
        assert!(fix_for("libcudart.so.13").contains("nvidia-cuda-runtime-cu13"));
        assert!(fix_for("libhwloc.so.15").contains("libhwloc15"));
        assert!(fix_for("libfabric.so.1").contains("KVPROBE_LIBFABRIC_LIB"));
        assert!(fix_for("libfoo.so.2").contains("libfoo.so.2"));
        assert_eq!(version_key("FABRIC_1.10"), vec![1, 10]);
        assert!(version_key("FABRIC_1.10") > version_key("FABRIC_1.9"));
    }

    #[test]
    fn a_missing_explicit_libfabric_is_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let plugin = tmp.path().join("libplugin_LIBFABRIC.so");
        std::fs::write(&plugin, b"not elf").unwrap();
        let c = choose_libfabric_from(&plugin, Some(tmp.path().join("nope.so")));
        assert!(c.path.is_none());
        assert!(c.searched[0].contains("does not exist"), "{:?}", c.searched);
    }
}
