//! Finding NIXL's C API library, `libnixl_capi.so`.
//!
//! Search order (first hit wins; every place tried is recorded and printed in
//! reports and errors):
//!
//! 1. `--nixl-lib PATH` (a file, or a directory holding one);
//! 2. `KVPROBE_NIXL_LIB`;
//! 3. `NIXL_PREFIX` (a source install: `lib/`, `lib/x86_64-linux-gnu/`, `lib64/`);
//! 4. the `nixl-cu13` / `nixl-cu12` wheel in the active Python environment
//!    (`VIRTUAL_ENV`, `CONDA_PREFIX`, then `python3`'s `sys.path`);
//! 5. the same wheel in the project's own venv (`.venv` beside the checkout);
//! 6. `/opt/nvidia/nvda_nixl` (NIXL's default install prefix).
//!
//! An explicit choice (1 or 2) that does not exist is an error: kvprobe never
//! silently measures a different NIXL than the one the user named.
//!
//! Wheels keep the library in `site-packages/.nixl_cu1X.mesonpy.libs/`, a
//! private directory the dynamic loader does not search; its RPATH finds the
//! bundled UCX, and its `plugins/` folder holds the backends. kvprobe sets
//! `NIXL_PLUGIN_DIR` to that folder unless the user already set it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The file name of NIXL's C API library.
pub const CAPI_NAME: &str = "libnixl_capi.so";

/// Wheel flavours, newest CUDA first.
const WHEELS: [&str; 2] = ["nixl_cu13", "nixl_cu12"];

/// Default install prefix of NIXL built from source.
pub const OPT_PREFIX: &str = "/opt/nvidia/nvda_nixl";

/// One place that was searched and what was found there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SearchStep {
    /// The place, e.g. `NIXL_PREFIX=/opt/x`.
    pub place: String,
    /// What happened: `not set`, `not found: <path>`, `found: <path>`.
    pub outcome: String,
}

/// Where NIXL was found and how it is configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NixlLocation {
    /// Absolute path of `libnixl_capi.so`.
    pub lib: PathBuf,
    /// Which rule of the search order found it.
    pub found_by: String,
    /// The NIXL version, when it can be told (wheel metadata, bundle VERSIONS
    /// file, pkg-config file); the loaded library may refine it.
    pub version: Option<String>,
    /// Where the version came from.
    pub version_source: Option<String>,
    /// The plugin directory NIXL will use.
    pub plugin_dir: Option<PathBuf>,
    /// True when `NIXL_PLUGIN_DIR` was set by the user (kvprobe left it alone).
    pub plugin_dir_from_env: bool,
    /// Every place searched, in order.
    pub searched: Vec<SearchStep>,
}

/// NIXL could not be found, or an explicitly named library does not exist.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// Nothing found anywhere.
    #[error("NIXL's C API library ({CAPI_NAME}, NIXL >= 1.0) was not found.\nSearched:\n{}\n{}", fmt_steps(.searched), HOW_TO_INSTALL)]
    NotFound {
        /// Every place searched.
        searched: Vec<SearchStep>,
    },
    /// `--nixl-lib` or `KVPROBE_NIXL_LIB` names something that is not there.
    #[error("{what} names {}, but no {CAPI_NAME} is there.\nSearched:\n{}\n{}", .path.display(), fmt_steps(.searched), HOW_TO_INSTALL)]
    ExplicitMissing {
        /// `--nixl-lib` or `KVPROBE_NIXL_LIB`.
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// Every place searched.
        searched: Vec<SearchStep>,
    },
}

impl LocateError {
    /// Every place searched.
    pub fn searched(&self) -> &[SearchStep] {
        match self {
            LocateError::NotFound { searched } | LocateError::ExplicitMissing { searched, .. } => searched,
        }
    }
}

/// How to get NIXL, printed with every "not found" error.
pub const HOW_TO_INSTALL: &str = "How to fix:
  - in this checkout: debug/setup.sh   (makes .venv with `pip install --no-deps nixl-cu12==1.5.1`)
  - in your Python environment: pip install --no-deps nixl-cu12==1.5.1   (nixl-cu13 for CUDA 13)
  - or point kvprobe at the library: --nixl-lib /path/to/libnixl_capi.so (or KVPROBE_NIXL_LIB),
    or at a source install: NIXL_PREFIX=/path/to/prefix
  NIXL >= 1.0 is needed: older releases do not ship libnixl_capi.so.";

fn fmt_steps(steps: &[SearchStep]) -> String {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("  {}. {}: {}", i + 1, s.place, s.outcome))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the search reads from the outside world; [`Inputs::from_env`] fills it
/// from the process, tests fill it by hand.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `--nixl-lib`.
    pub cli: Option<PathBuf>,
    /// `KVPROBE_NIXL_LIB`.
    pub env_lib: Option<PathBuf>,
    /// `NIXL_PREFIX`.
    pub nixl_prefix: Option<PathBuf>,
    /// `VIRTUAL_ENV`.
    pub virtual_env: Option<PathBuf>,
    /// `CONDA_PREFIX`.
    pub conda_prefix: Option<PathBuf>,
    /// The Python interpreter to ask for `sys.path` (None: do not ask).
    pub python: Option<String>,
    /// Candidate project roots whose `.venv` is searched.
    pub project_roots: Vec<PathBuf>,
    /// NIXL's default prefix.
    pub opt_prefix: PathBuf,
    /// `NIXL_PLUGIN_DIR` as set by the user.
    pub plugin_dir_env: Option<PathBuf>,
}

impl Inputs {
    /// Reads the process environment. `cli` is `--nixl-lib`.
    pub fn from_env(cli: Option<PathBuf>) -> Inputs {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let mut roots = Vec::new();
        if let Ok(exe) = std::env::current_exe() {
            // target/{debug,release}/kvprobe -> the checkout; also works for deps/ binaries.
            roots.extend(exe.ancestors().skip(1).take(5).map(Path::to_path_buf));
        }
        roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        Inputs {
            cli,
            env_lib: var("KVPROBE_NIXL_LIB"),
            nixl_prefix: var("NIXL_PREFIX"),
            virtual_env: var("VIRTUAL_ENV"),
            conda_prefix: var("CONDA_PREFIX"),
            python: Some(std::env::var("KVPROBE_PYTHON").unwrap_or_else(|_| "python3".into())),
            project_roots: roots,
            opt_prefix: PathBuf::from(OPT_PREFIX),
            plugin_dir_env: var("NIXL_PLUGIN_DIR"),
        }
    }
}

/// Runs the search. Never loads anything: only files are looked at (and
/// `python3` is asked for its `sys.path`).
pub fn locate(inputs: &Inputs) -> Result<NixlLocation, LocateError> {
    let mut steps = Vec::new();

    for (what, value) in [("--nixl-lib", &inputs.cli), ("KVPROBE_NIXL_LIB", &inputs.env_lib)] {
        match value {
            None => steps.push(step(what, "not set")),
            Some(p) => {
                let place = format!("{what} {}", p.display());
                return match probe_path_or_dir(p) {
                    Some(lib) => {
                        steps.push(step(&place, &format!("found: {}", lib.display())));
                        Ok(finish(lib, what, steps, inputs))
                    }
                    None => {
                        steps.push(step(&place, "not found"));
                        Err(LocateError::ExplicitMissing { what, path: p.clone(), searched: steps })
                    }
                };
            }
        }
    }

    match &inputs.nixl_prefix {
        None => steps.push(step("NIXL_PREFIX", "not set")),
        Some(prefix) => {
            let place = format!("NIXL_PREFIX={}", prefix.display());
            if let Some(lib) = probe_dir(prefix) {
                steps.push(step(&place, &format!("found: {}", lib.display())));
                return Ok(finish(lib, "NIXL_PREFIX", steps, inputs));
            }
            steps.push(step(&place, "no libnixl_capi.so under lib/, lib/x86_64-linux-gnu/, lib64/"));
        }
    }

    // Active Python environment.
    let mut sites: Vec<(String, PathBuf)> = Vec::new();
    for (what, prefix) in [("VIRTUAL_ENV", &inputs.virtual_env), ("CONDA_PREFIX", &inputs.conda_prefix)] {
        match prefix {
            None => steps.push(step(what, "not set")),
            Some(p) => {
                let found = site_packages_of_prefix(p);
                if found.is_empty() {
                    steps.push(step(&format!("{what}={}", p.display()), "no lib/python3*/site-packages"));
                }
                sites.extend(found.into_iter().map(|s| (what.to_string(), s)));
            }
        }
    }
    if let Some(py) = &inputs.python {
        match python_sys_path(py) {
            Ok(paths) => sites.extend(paths.into_iter().map(|s| (format!("{py} sys.path"), s))),
            Err(e) => steps.push(step(&format!("{py} sys.path"), &e)),
        }
    }
    if let Some(found) = search_sites(&sites, &mut steps) {
        return Ok(finish(found.1, &found.0, steps, inputs));
    }

    // The project's own venv.
    let mut venv_sites = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for root in &inputs.project_roots {
        let venv = root.join(".venv");
        if venv.is_dir() && seen.insert(venv.clone()) {
            venv_sites.extend(site_packages_of_prefix(&venv).into_iter().map(|s| ("project venv".to_string(), s)));
        }
    }
    if venv_sites.is_empty() {
        steps.push(step("project venv (.venv beside the checkout)", "none found (run debug/setup.sh)"));
    } else if let Some(found) = search_sites(&venv_sites, &mut steps) {
        return Ok(finish(found.1, &found.0, steps, inputs));
    }

    let place = inputs.opt_prefix.display().to_string();
    if let Some(lib) = probe_dir(&inputs.opt_prefix) {
        steps.push(step(&place, &format!("found: {}", lib.display())));
        return Ok(finish(lib, "default prefix", steps, inputs));
    }
    steps.push(step(&place, "not found"));
    Err(LocateError::NotFound { searched: steps })
}

fn step(place: &str, outcome: &str) -> SearchStep {
    SearchStep { place: place.to_string(), outcome: outcome.to_string() }
}

fn search_sites(sites: &[(String, PathBuf)], steps: &mut Vec<SearchStep>) -> Option<(String, PathBuf)> {
    let mut seen = std::collections::BTreeSet::new();
    for (origin, site) in sites {
        if !seen.insert(site.clone()) {
            continue;
        }
        for wheel in WHEELS {
            let lib = site.join(format!(".{wheel}.mesonpy.libs")).join(CAPI_NAME);
            if lib.is_file() {
                steps.push(step(&format!("{origin}: {}", site.display()), &format!("found: {}", lib.display())));
                return Some((format!("{origin} ({} wheel)", wheel.replace('_', "-")), absolute(&lib)));
            }
        }
        if site.is_dir() {
            steps.push(step(&format!("{origin}: {}", site.display()), "no nixl-cu12/nixl-cu13 wheel"));
        }
    }
    None
}

/// `path` itself if it is a file, else a search of it as a directory.
fn probe_path_or_dir(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(absolute(path));
    }
    if path.is_dir() { probe_dir(path) } else { None }
}

/// Looks for the library in the usual places under a prefix or bundle folder.
fn probe_dir(dir: &Path) -> Option<PathBuf> {
    let mut candidates = vec![
        dir.join(CAPI_NAME),
        dir.join("lib").join(CAPI_NAME),
        dir.join("lib/x86_64-linux-gnu").join(CAPI_NAME),
        dir.join("lib/aarch64-linux-gnu").join(CAPI_NAME),
        dir.join("lib64").join(CAPI_NAME),
    ];
    for wheel in WHEELS {
        // a site-packages directory, or an offline bundle made from a wheel
        candidates.push(dir.join(format!(".{wheel}.mesonpy.libs")).join(CAPI_NAME));
        candidates.push(dir.join(format!("nixl/.{wheel}.mesonpy.libs")).join(CAPI_NAME));
    }
    candidates.into_iter().find(|c| c.is_file()).map(|c| absolute(&c))
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn site_packages_of_prefix(prefix: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for lib in ["lib", "lib64"] {
        let Ok(rd) = std::fs::read_dir(prefix.join(lib)) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("python3")))
            .map(|p| p.join("site-packages"))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        out.extend(dirs);
    }
    out
}

/// Asks a Python interpreter for its `sys.path` (10 s limit).
fn python_sys_path(python: &str) -> Result<Vec<PathBuf>, String> {
    let out = run_with_timeout(
        Command::new(python).args(["-I", "-c", "import sys\nfor p in sys.path:\n    print(p)"]),
        Duration::from_secs(10),
    )?;
    Ok(out
        .lines()
        .filter(|l| l.ends_with("site-packages") || l.ends_with("dist-packages"))
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .collect())
}

/// Runs a command, returning its stdout, or a one-line reason it failed.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("not run ({e})"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut s = String::new();
                if let Some(mut o) = child.stdout.take() {
                    use std::io::Read;
                    let _ = o.read_to_string(&mut s);
                }
                return if status.success() { Ok(s) } else { Err(format!("exited with {status}")) };
            }
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn finish(lib: PathBuf, found_by: &str, searched: Vec<SearchStep>, inputs: &Inputs) -> NixlLocation {
    let (version, version_source) = match version_near(&lib) {
        Some((v, s)) => (Some(v), Some(s)),
        None => (None, None),
    };
    let (plugin_dir, from_env) = match &inputs.plugin_dir_env {
        Some(d) => (Some(d.clone()), true),
        None => {
            let d = lib.parent().map(|p| p.join("plugins")).filter(|p| p.is_dir());
            (d, false)
        }
    };
    NixlLocation {
        lib,
        found_by: found_by.to_string(),
        version,
        version_source,
        plugin_dir,
        plugin_dir_from_env: from_env,
        searched,
    }
}

/// The NIXL version from files near the library: a wheel's `.dist-info`, an
/// offline bundle's `VERSIONS`, or a source install's pkg-config file.
pub fn version_near(lib: &Path) -> Option<(String, String)> {
    let dir = lib.parent()?;
    let up = dir.parent()?;
    for wheel in WHEELS {
        let prefix = format!("{wheel}-");
        if let Ok(rd) = std::fs::read_dir(up) {
            for e in rd.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(rest) = name.strip_prefix(&prefix) {
                    if let Some(v) = rest.strip_suffix(".dist-info") {
                        return Some((v.to_string(), format!("{}/{name}", up.display())));
                    }
                }
            }
        }
    }
    for versions in [up.join("VERSIONS"), up.parent().map(|p| p.join("VERSIONS")).unwrap_or_default()] {
        if let Ok(text) = std::fs::read_to_string(&versions) {
            // "nixl-cu13 1.5.1, libucx-cu13 1.22.0"
            for part in text.split(',') {
                let mut it = part.split_whitespace();
                if let (Some(name), Some(v)) = (it.next(), it.next()) {
                    if name.starts_with("nixl") {
                        return Some((v.to_string(), versions.display().to_string()));
                    }
                }
            }
        }
    }
    for pc in [dir.join("pkgconfig/nixl.pc"), up.join("lib/pkgconfig/nixl.pc")] {
        if let Ok(text) = std::fs::read_to_string(&pc) {
            if let Some(v) = text.lines().find_map(|l| l.strip_prefix("Version:")) {
                return Some((v.trim().to_string(), pc.display().to_string()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    fn empty_inputs(tmp: &Path) -> Inputs {
        Inputs { opt_prefix: tmp.join("opt-nvda-nixl"), ..Inputs::default() }
    }

    #[test]
    fn nothing_found_lists_every_place_and_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let err = locate(&empty_inputs(tmp.path())).unwrap_err();
        let msg = err.to_string();
        for needle in [
            "--nixl-lib",
            "KVPROBE_NIXL_LIB",
            "NIXL_PREFIX",
            "VIRTUAL_ENV",
            "project venv",
            "opt-nvda-nixl",
            "pip install --no-deps nixl-cu12",
        ] {
            assert!(msg.contains(needle), "missing {needle} in:\n{msg}");
        }
        assert!(matches!(err, LocateError::NotFound { .. }));
    }

    #[test]
    fn explicit_path_that_is_missing_is_an_error_even_if_others_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let prefix = tmp.path().join("prefix");
        touch(&prefix.join("lib").join(CAPI_NAME));
        let inputs =
            Inputs { cli: Some(PathBuf::from("/nonexistent")), nixl_prefix: Some(prefix), ..empty_inputs(tmp.path()) };
        let err = locate(&inputs).unwrap_err();
        assert!(matches!(err, LocateError::ExplicitMissing { what: "--nixl-lib", .. }));
        assert!(err.to_string().contains("/nonexistent"));
    }

    #[test]
    fn order_is_cli_then_env_then_prefix_then_venv_then_opt() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let cli = t.join("cli").join(CAPI_NAME);
        let env = t.join("env").join(CAPI_NAME);
        let prefix = t.join("prefix");
        let venv_site = t.join("venv/lib/python3.11/site-packages");
        let proj_site = t.join("proj/.venv/lib/python3.12/site-packages");
        let opt = t.join("opt");
        touch(&cli);
        touch(&env);
        touch(&prefix.join("lib/x86_64-linux-gnu").join(CAPI_NAME));
        touch(&venv_site.join(".nixl_cu12.mesonpy.libs").join(CAPI_NAME));
        std::fs::create_dir_all(venv_site.join("nixl_cu12-1.5.1.dist-info")).unwrap();
        touch(&proj_site.join(".nixl_cu13.mesonpy.libs").join(CAPI_NAME));
        std::fs::create_dir_all(proj_site.join(".nixl_cu13.mesonpy.libs/plugins")).unwrap();
        touch(&opt.join("lib").join(CAPI_NAME));

        let mut inp = Inputs {
            cli: Some(cli.clone()),
            env_lib: Some(env.clone()),
            nixl_prefix: Some(prefix.clone()),
            virtual_env: Some(t.join("venv")),
            project_roots: vec![t.join("proj")],
            opt_prefix: opt.clone(),
            ..Inputs::default()
        };
        assert_eq!(locate(&inp).unwrap().found_by, "--nixl-lib");
        inp.cli = None;
        assert_eq!(locate(&inp).unwrap().found_by, "KVPROBE_NIXL_LIB");
        inp.env_lib = None;
        assert_eq!(locate(&inp).unwrap().found_by, "NIXL_PREFIX");
        inp.nixl_prefix = None;
        let loc = locate(&inp).unwrap();
        assert!(loc.found_by.starts_with("VIRTUAL_ENV"), "{}", loc.found_by);
        assert_eq!(loc.version.as_deref(), Some("1.5.1"));
        inp.virtual_env = None;
        let loc = locate(&inp).unwrap();
        assert!(loc.found_by.starts_with("project venv"), "{}", loc.found_by);
        assert!(loc.plugin_dir.as_ref().unwrap().ends_with("plugins"));
        assert!(!loc.plugin_dir_from_env);
        inp.project_roots.clear();
        assert_eq!(locate(&inp).unwrap().found_by, "default prefix");
    }

    #[test]
    fn user_plugin_dir_is_respected() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("x").join(CAPI_NAME);
        touch(&lib);
        let inp =
            Inputs { cli: Some(lib), plugin_dir_env: Some(PathBuf::from("/my/plugins")), ..empty_inputs(tmp.path()) };
        let loc = locate(&inp).unwrap();
        assert!(loc.plugin_dir_from_env);
        assert_eq!(loc.plugin_dir.unwrap(), PathBuf::from("/my/plugins"));
    }

    #[test]
    fn bundle_versions_file_gives_the_version() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = tmp.path().join("nixl/.nixl_cu13.mesonpy.libs").join(CAPI_NAME);
        touch(&lib);
        std::fs::write(tmp.path().join("VERSIONS"), "nixl-cu13 1.5.1, libucx-cu13 1.22.0\n").unwrap();
        let inp = Inputs { cli: Some(tmp.path().to_path_buf()), ..empty_inputs(tmp.path()) };
        let loc = locate(&inp).unwrap();
        assert_eq!(loc.version.as_deref(), Some("1.5.1"));
    }
}

/// Where UCX's libucp was found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UcxLocation {
    /// Absolute path of libucp.
    pub lib: PathBuf,
    /// Which rule found it.
    pub found_by: String,
    /// Every place searched, in order.
    pub searched: Vec<SearchStep>,
}

/// UCX could not be found.
#[derive(Debug, thiserror::Error)]
#[error("UCX's libucp was not found.\nSearched:\n{}\nHow to fix: install NIXL (its wheel bundles UCX; debug/setup.sh), or `pip install libucx-cu12`, or point --ucx-lib / KVPROBE_UCX_LIB at libucp.so", fmt_steps(.searched))]
pub struct UcxNotFound {
    /// Every place searched.
    pub searched: Vec<SearchStep>,
}

/// Finds libucp, preferring the exact build NIXL uses:
///
/// 1. `cli` (`--ucx-lib`), then `KVPROBE_UCX_LIB`: a file or a folder;
/// 2. a libucp already mapped into this process (NIXL's UCX plugin loaded it);
/// 3. the libucp NIXL's UCX plugin links: its `DT_NEEDED` resolved the way the
///    loader would (the wheel's RPATH points into `nixl_cu1X.libs/`);
/// 4. the `libucx-cu12`/`-cu13` wheel next to the NIXL wheel or in the project venv;
/// 5. the system loader path (`libucp.so.0`).
///
/// An explicit choice that does not exist is an error.
pub fn locate_ucx(cli: Option<PathBuf>, nixl: Option<&NixlLocation>) -> Result<UcxLocation, UcxNotFound> {
    let mut steps = Vec::new();
    let explicit = [
        ("--ucx-lib", cli),
        ("KVPROBE_UCX_LIB", std::env::var_os("KVPROBE_UCX_LIB").filter(|v| !v.is_empty()).map(PathBuf::from)),
    ];
    for (what, value) in explicit {
        match value {
            None => steps.push(step(what, "not set")),
            Some(p) => {
                let found = if p.is_file() { Some(p.clone()) } else { find_libucp_in(&p) };
                return match found {
                    Some(lib) => {
                        steps.push(step(&format!("{what} {}", p.display()), &format!("found: {}", lib.display())));
                        Ok(UcxLocation { lib: absolute(&lib), found_by: what.into(), searched: steps })
                    }
                    None => {
                        steps.push(step(&format!("{what} {}", p.display()), "no libucp there"));
                        Err(UcxNotFound { searched: steps })
                    }
                };
            }
        }
    }
    if let Some(p) = crate::ucx::mapped_libucp() {
        steps.push(step("already loaded in this process", &format!("found: {}", p.display())));
        return Ok(UcxLocation { lib: p, found_by: "already loaded (NIXL's)".into(), searched: steps });
    }
    steps.push(step("already loaded in this process", "none"));
    if let Some(loc) = nixl {
        let plugin = loc
            .plugin_dir
            .clone()
            .unwrap_or_else(|| loc.lib.parent().unwrap_or(Path::new("/")).join("plugins"))
            .join("libplugin_UCX.so");
        let place = format!("what NIXL's UCX plugin links ({})", plugin.display());
        match crate::elf::read_dynamic(&plugin) {
            Ok(d) => match d.needed.iter().find(|n| crate::ucx::is_libucp(n)) {
                Some(name) => match crate::elf::resolve(name, &plugin, &d) {
                    Some(lib) => {
                        steps.push(step(&place, &format!("found: {}", lib.display())));
                        return Ok(UcxLocation {
                            lib: absolute(&lib),
                            found_by: "NIXL's UCX plugin".into(),
                            searched: steps,
                        });
                    }
                    None => steps.push(step(&place, &format!("it needs {name}, which the loader would not find"))),
                },
                None => steps.push(step(&place, "it does not link libucp")),
            },
            Err(e) => steps.push(step(&place, &e.reason)),
        }
        // the libucx wheel beside the NIXL wheel
        if let Some(site) = loc.lib.parent().and_then(Path::parent) {
            if let Some(lib) = find_libucp_in(&site.join("libucx")) {
                steps.push(step(&format!("libucx wheel in {}", site.display()), &format!("found: {}", lib.display())));
                return Ok(UcxLocation { lib: absolute(&lib), found_by: "libucx wheel".into(), searched: steps });
            }
        }
    } else {
        steps.push(step("NIXL's UCX plugin", "NIXL not located"));
    }
    let roots: Vec<PathBuf> = Inputs::from_env(None).project_roots;
    for root in roots {
        for site in site_packages_of_prefix(&root.join(".venv")) {
            if let Some(lib) = find_libucp_in(&site.join("libucx")) {
                steps.push(step("project venv libucx wheel", &format!("found: {}", lib.display())));
                return Ok(UcxLocation {
                    lib: absolute(&lib),
                    found_by: "project venv (libucx wheel)".into(),
                    searched: steps,
                });
            }
        }
    }
    steps.push(step("project venv libucx wheel", "none"));
    match crate::elf::resolve("libucp.so.0", Path::new("/"), &crate::elf::Dynamic::default()) {
        Some(lib) => {
            steps.push(step("system loader path (libucp.so.0)", &format!("found: {}", lib.display())));
            Ok(UcxLocation { lib: absolute(&lib), found_by: "system".into(), searched: steps })
        }
        None => {
            steps.push(step("system loader path (libucp.so.0)", "not found"));
            Err(UcxNotFound { searched: steps })
        }
    }
}

/// A libucp inside a folder: the folder itself, `lib/`, or a wheel's `nixl_cu1X.libs/`.
fn find_libucp_in(dir: &Path) -> Option<PathBuf> {
    let mut dirs = vec![dir.to_path_buf(), dir.join("lib")];
    for wheel in WHEELS {
        dirs.push(dir.join(format!("{wheel}.libs")));
    }
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        let mut hits: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_str().is_some_and(crate::ucx::is_libucp) && p.is_file())
            .collect();
        hits.sort();
        if let Some(p) = hits.into_iter().next() {
            return Some(p);
        }
    }
    None
}
